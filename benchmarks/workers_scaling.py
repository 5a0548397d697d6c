"""Throughput of trivial trials with 1, 2, 4, 8 ``speechtune worker`` processes on PostgreSQL.

Starts its own private PostgreSQL cluster (``tests/helpers/pg_server.py``, run as the ``postgres`` OS
user), then for each worker count a fresh database and study whose objective is a trivial Python
function (``objective.kind: python``, ``--function tests.helpers.workers:quick_objective``), and
runs N real worker processes to ``--trials`` complete trials. It reports

* ``wall``: seconds from starting the workers to the last one exiting (process start-up and the
  imports included), and trials/s over it;
* ``steady``: trials/s between the first trial's start and the last trial's end, as recorded in
  the database (what a long study sees).

Trivial trials measure the coordination cost (sampler + storage round trips), not training: with
real trials lasting minutes, N workers give N times the throughput long before the database
matters. Usage:

    python benchmarks/workers_scaling.py [--trials 200] [--workers 1 2 4 8] [--sampler random] \\
        [--out runs/workers_scaling.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(
    0, str(REPO)
)  # tests/helpers/pg_server.py and tests/helpers/workers.py, imported by path

import optuna  # noqa: E402

from tests.helpers.pg_server import PgServer  # noqa: E402
from tests.helpers.workers import Procs, python_spec, speechtune_argv  # noqa: E402


def run_one(
    pg: PgServer, n_workers: int, n_trials: int, sampler: str, work: Path
) -> dict[str, float]:
    """One study to ``n_trials`` with ``n_workers`` worker processes; its timings."""
    name = f"scale{n_workers}"
    url = pg.create_database(f"{name}_{int(time.time() * 1000) % 10**9}")
    cfg = python_spec(work / f"{name}.yaml", name=name, n_trials=n_trials, sampler=sampler)
    procs = Procs(work)
    try:
        t0 = time.perf_counter()
        workers = [
            procs.start(
                f"{name}-w{i}",
                speechtune_argv(
                    "worker",
                    "--study",
                    name,
                    "--config",
                    str(cfg),
                    "--run-dir",
                    str(work / f"{name}-w{i}"),
                    "--function",
                    "tests.helpers.workers:quick_objective",
                    "--no-tracking",
                    "--no-report",
                    "--quiet",
                ),
                env={"SPEECHTUNE_STORAGE": url},  # the URL holds the password: not on argv
            )
            for i in range(n_workers)
        ]
        codes = [procs.wait(w, 1800) for w in workers]
        wall = time.perf_counter() - t0
        if any(codes):
            raise RuntimeError(
                f"worker exit codes {codes}; "
                f"log: {procs.log(workers[codes.index(next(c for c in codes if c))])[-2000:]}"
            )
    finally:
        procs.close()
    storage = optuna.storages.RDBStorage(url)
    done = optuna.load_study(study_name=name, storage=storage).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    storage.engine.dispose()
    first = min(t.datetime_start for t in done)
    last = max(t.datetime_complete for t in done)
    steady_s = (last - first).total_seconds()
    return {
        "workers": n_workers,
        "trials": len(done),
        "wall_s": round(wall, 2),
        "wall_trials_per_s": round(len(done) / wall, 2),
        "steady_s": round(steady_s, 2),
        "steady_trials_per_s": round(len(done) / steady_s, 2) if steady_s > 0 else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--trials", type=int, default=200, help="complete trials per study (default: %(default)s)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument(
        "--sampler",
        default="random",
        help="random (coordination cost only) or tpe (default: %(default)s)",
    )
    ap.add_argument(
        "--out", default="runs/workers_scaling.json", help="JSON results (default: %(default)s)"
    )
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="workers-scaling-") as tmp, PgServer.start_new() as pg:
        for n in args.workers:
            rows.append(run_one(pg, n, args.trials, args.sampler, Path(tmp)))
            r = rows[-1]
            print(
                f"{n} workers: {r['trials']} trials, wall {r['wall_s']} s, steady {r['steady_trials_per_s']} trials/s",
                flush=True,
            )
    print()
    print(
        f"{'workers':>7} {'trials':>6} {'wall s':>7} {'trials/s (wall)':>15} {'trials/s (steady)':>17}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['trials']:>6} {r['wall_s']:>7} "
            f"{r['wall_trials_per_s']:>15} {r['steady_trials_per_s']:>17}"
        )
    result = {
        "benchmark": "workers_scaling",
        "storage": "postgresql (private cluster, fsync off)",
        "sampler": args.sampler,
        "objective": "trivial python function (1 reported epoch)",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
