"""DARTS vs weight-sharing search vs the tuner's own multi-fidelity search, at equal compute.

One discrete space for all three: one op per encoder block (``model.block_ops`` of a searched
encoder) over the same base recipe (``--darts-config``'s recipe and overrides).

1. **DARTS** (``--darts-config``): first-order DARTS with the collapse guard; its CPU time sets
   the budget of the other two.
2. **Weight sharing** (``--ws-config``): single-path supernet training for as many epochs as fit
   in that budget (measured epoch by epoch), then every sampled architecture is ranked by its
   shared-weight dev loss; the top one is derived (its ranking time counts too).
3. **The tuner** (``speechtune.tuning.search.MultiFidelitySearch``, strategy ``--strategy``):
   one categorical per block, rungs of ``--rungs`` epochs (a promoted config continues its
   checkpoint), dev loss ranks the lower rungs and dev WER the top one; it runs until it has
   spent the same CPU time.
4. Each winner is retrained from scratch with every seed of ``--seeds`` (and, with
   ``--baseline``, the base recipe's own Conformer at the same width): dev WER mean +- standard
   error, parameters, 1-thread CPU latency, CPU hours of search and of retraining.
5. Shared-weight ranks against stand-alone training: the weight-sharing supernet scores every
   architecture the tuner trained, and Spearman's rho (bootstrap 90% interval) compares them
   with the tuner's stand-alone dev loss at each rung (the lowest rung holds unselected,
   random architectures; the top rung only promoted ones).

CPU time is this process's (``time.process_time``, all threads); run it at one thread on an
otherwise idle machine for comparable figures. Everything is selected on the dev split.

    nice -n 19 python benchmarks/nas_compare.py --threads 1 --out runs/nas_compare \\
        --record benchmarks/data/nas_compare.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout works too

import torch  # noqa: E402

from speechtune.config import RecipeConfig, RunOptions  # noqa: E402
from speechtune.nas import (  # noqa: E402
    NasConfig,
    derived_recipe,
    evaluate_path,
    load_nas_config,
    load_search_data,
    retrain_arch,
    sample_architectures,
    spearman,
    train_darts,
    train_weight_sharing,
)
from speechtune.training import train  # noqa: E402
from speechtune.tuning.search import Fidelity, MultiFidelitySearch  # noqa: E402
from speechtune.tuning.space import parse_space  # noqa: E402


def _cpu() -> float:
    return time.process_time()


def run_darts(cfg: NasConfig, data: Any) -> dict[str, Any]:
    """DARTS; the derived architecture and the CPU seconds it took."""
    run = train_darts(cfg, data, print)
    return {
        "arch": run.arch,
        "cpu_seconds": run.cpu_seconds,
        "stop_reason": run.stop_reason,
        "op_weights": run.op_weights.to_json(),
        "history": run.history,
    }


def run_weight_sharing(cfg: NasConfig, data: Any, budget: float) -> tuple[dict[str, Any], Any]:
    """Single-path training epoch by epoch while the budget (minus ranking) lasts, then ranking."""
    c0 = _cpu()
    # Calibration (counted in the budget): one epoch to time an epoch, one shared-weight dev
    # evaluation to time the ranking of every sampled architecture.
    one_epoch = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, epochs=1))
    run = train_weight_sharing(one_epoch, data, print)
    epoch_cost = _cpu() - c0
    archs = sample_architectures(
        cfg.search.ops, cfg.search.num_blocks, cfg.weight_sharing.num_samples, cfg.search.seed
    )
    t = _cpu()
    evaluate_path(run.supernet, data, cfg, archs[0])
    rank_cost = (_cpu() - t) * len(archs)
    spent = _cpu() - c0
    epochs = max(1, int((budget - spent - rank_cost) / max(epoch_cost, 1e-9)))
    # Train from the start with that many epochs (the lr schedule spans them all).
    full = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, epochs=epochs))
    run = train_weight_sharing(full, data, print)
    scored = []
    for arch in archs:
        scores = evaluate_path(run.supernet, data, cfg, arch)
        scored.append({"arch": arch, "shared": scores})
    scored.sort(key=lambda c: c["shared"]["dev_loss"])
    return {
        "arch": scored[0]["arch"],
        "epochs": epochs,
        "cpu_seconds": _cpu() - c0,
        "candidates": scored,
        "history": run.history,
    }, run.supernet


def run_tuner(
    base: RecipeConfig,
    cfg: NasConfig,
    budget: float,
    rungs: list[int],
    strategy: str,
    out: Path,
    opts: RunOptions,
) -> dict[str, Any]:
    """The tuner's multi-fidelity engine over one categorical per block, until ``budget`` CPU s."""
    space = parse_space(
        {f"block{i + 1}": list(cfg.search.ops) for i in range(cfg.search.num_blocks)}
    )
    fidelity = Fidelity.from_budgets("train.epochs", rungs, eta=3)
    search = MultiFidelitySearch(space, fidelity, strategy=strategy, seed=cfg.search.seed)
    top = max(rungs)
    c0 = _cpu()
    jobs: list[dict[str, Any]] = []
    while _cpu() - c0 < budget:
        job = search.ask()
        if job is None:
            break
        ops = [job.config[f"block{i + 1}"] for i in range(cfg.search.num_blocks)]
        if all(op == "zero" for op in ops):  # no encoder at all: not a member of the space
            search.tell(job, None, cost=0.0)
            continue
        recipe = derived_recipe(base, ops)
        epochs = int(job.config["train.epochs"])
        # Every rung follows the top rung's schedule, so a promoted job continues its parent.
        recipe = dataclasses.replace(
            recipe, train=dataclasses.replace(recipe.train, epochs=epochs, schedule_epochs=top)
        )
        run_dir = out / f"job{job.number}"
        if job.parent is not None:
            shutil.copytree(out / f"job{job.parent}", run_dir, dirs_exist_ok=True)
        t = _cpu()
        result = train(
            recipe,
            dataclasses.replace(opts, output_dir=str(run_dir), resume=job.parent is not None),
        )
        m = result.metrics or (result.history[-1] if result.history else {})
        metric = "wer" if epochs == top else "dev_loss"
        value = m.get(metric)
        search.tell(job, float(value) if value is not None else None)
        jobs.append(
            {"number": job.number, "rung": job.rung, "epochs": epochs, "arch": ops,
             "parent": job.parent, "wer": m.get("wer"), "dev_loss": m.get("dev_loss"),
             "cpu_seconds": _cpu() - t}
        )  # fmt: skip
        print(f"tuner job {job.number} rung {job.rung} {','.join(ops)}: {metric} {value}")
    best = search.best()
    if best is None:  # nothing reached the top rung: the best of the highest rung reached
        reached = max(j["rung"] for j in jobs)
        pick = min((j for j in jobs if j["rung"] == reached), key=lambda j: j["dev_loss"])
        arch = pick["arch"]
    else:
        arch = [best[0][f"block{i + 1}"] for i in range(cfg.search.num_blocks)]
    return {"arch": arch, "cpu_seconds": _cpu() - c0, "jobs": jobs, "strategy": strategy}


def _mean_se(values: list[float]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "se": None}
    se = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "se": se}


def retrain(
    name: str,
    base: RecipeConfig,
    arch: list[str] | None,
    seeds: list[int],
    out: Path,
    opts: RunOptions,
) -> dict[str, Any]:
    """Train ``arch`` (None: the base recipe itself) from scratch once per seed."""
    runs = []
    for seed in seeds:
        run_dir = out / name / f"seed{seed}"
        if arch is not None:
            runs.append(retrain_arch(base, arch, run_dir, seed, None, opts, None))
        else:
            c0 = _cpu()
            result = train(
                dataclasses.replace(base, seed=seed),
                dataclasses.replace(opts, output_dir=str(run_dir)),
            )
            m = result.metrics
            runs.append({"seed": seed, "status": result.status, "wer": m.get("wer"),
                         "num_parameters": m.get("num_parameters"),
                         "cpu_latency_ms_per_audio_s": m.get("cpu_latency_ms_per_audio_s"),
                         "cpu_seconds": _cpu() - c0})  # fmt: skip
        print(f"retrain {name} seed {seed}: dev WER {runs[-1]['wer']}")
    return {
        "arch": arch,
        "runs": runs,
        "wer": _mean_se([r["wer"] for r in runs]),
        "num_parameters": runs[0]["num_parameters"],
        "cpu_latency_ms_per_audio_s": _mean_se([r["cpu_latency_ms_per_audio_s"] for r in runs]),
        "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
    }


def rank_agreement(
    supernet: Any, data: Any, cfg: NasConfig, jobs: list[dict[str, Any]]
) -> dict[str, Any]:
    """Spearman between shared-weight and stand-alone dev loss, per rung of the tuner's jobs."""
    out: dict[str, Any] = {}
    shared: dict[tuple[str, ...], float] = {}
    for rung in sorted({j["rung"] for j in jobs}):
        pairs = [j for j in jobs if j["rung"] == rung and j["dev_loss"] is not None]
        for j in pairs:
            key = tuple(j["arch"])
            if key not in shared:
                shared[key] = evaluate_path(supernet, data, cfg, list(key))["dev_loss"]
        xs = [shared[tuple(j["arch"])] for j in pairs]
        ys = [float(j["dev_loss"]) for j in pairs]
        epochs = pairs[0]["epochs"] if pairs else None
        out[f"rung{rung}"] = {"epochs": epochs, **spearman(xs, ys)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--darts-config", default="conf/nas_darts.yaml")
    p.add_argument("--ws-config", default="conf/nas_weight_sharing.yaml")
    p.add_argument("--set", nargs="*", default=[], help="NAS-file overrides for both configs")
    p.add_argument(
        "--rungs",
        type=int,
        nargs="+",
        default=None,
        help="tuner epochs per rung (default: 1/9, 1/3, 1 of train.epochs)",
    )
    p.add_argument("--strategy", default="speechtune")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument(
        "--baseline", action="store_true", help="also retrain the base recipe's own encoder"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=".cache/speechtune")
    p.add_argument("--out", default="runs/nas_compare")
    p.add_argument("--record", default="benchmarks/data/nas_compare.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    darts_cfg = load_nas_config(args.darts_config, args.set)
    ws_cfg = load_nas_config(args.ws_config, args.set)
    base = darts_cfg.recipe
    if ws_cfg.recipe != base or ws_cfg.search.ops != darts_cfg.search.ops:
        raise SystemExit("the two NAS configs must share the recipe, overrides and ops")
    opts = RunOptions(output_dir=str(out), device=args.device, cache_dir=args.cache_dir,
                      num_threads=args.threads, progress=False)  # fmt: skip
    t0 = time.perf_counter()
    data = load_search_data(base, args.cache_dir, torch.device(args.device))
    record: dict[str, Any] = {"command": " ".join(sys.argv), "threads": args.threads,
                              "device": args.device, "seeds": args.seeds,
                              "ops": darts_cfg.search.ops, "num_blocks": darts_cfg.search.num_blocks,
                              "train_epochs": base.train.epochs}  # fmt: skip

    def save() -> None:  # after every stage: a run cut short keeps what it measured
        record["wall_seconds"] = time.perf_counter() - t0
        Path(args.record).parent.mkdir(parents=True, exist_ok=True)
        Path(args.record).write_text(json.dumps(record, indent=2, default=float))

    record["darts"] = run_darts(darts_cfg, data)
    save()
    budget = record["darts"]["cpu_seconds"]
    print(f"DARTS: {','.join(record['darts']['arch'])} in {budget:.0f} CPU s (the budget)")
    ws, supernet = run_weight_sharing(ws_cfg, data, budget)
    record["weight_sharing"] = ws
    save()
    print(f"weight sharing: {','.join(ws['arch'])} in {ws['cpu_seconds']:.0f} CPU s")
    e = base.train.epochs
    rungs = args.rungs or sorted({max(1, e // 9), max(1, e // 3), e})
    record["tuner"] = run_tuner(base, darts_cfg, budget, rungs, args.strategy, out / "tuner", opts)
    print(
        f"tuner: {','.join(record['tuner']['arch'])} in {record['tuner']['cpu_seconds']:.0f} CPU s"
    )
    record["rank_agreement"] = rank_agreement(supernet, data, ws_cfg, record["tuner"]["jobs"])
    save()
    print(f"shared-weight vs stand-alone Spearman: {json.dumps(record['rank_agreement'])}")

    record["retrain"] = {}
    for name in ("darts", "weight_sharing", "tuner"):
        record["retrain"][name] = retrain(
            name, base, record[name]["arch"], args.seeds, out / "retrain", opts
        )
        save()
    if args.baseline:
        record["retrain"]["baseline"] = retrain(
            "baseline", base, None, args.seeds, out / "retrain", opts
        )
    save()
    print(table(record))


def table(record: dict[str, Any]) -> str:
    """The Markdown table of a record."""
    rows = [
        "| method | block_ops | dev WER (mean ± se) | params | CPU latency ms/audio s "
        "| search CPU h | retrain CPU h |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in record["retrain"].items():
        wer = r["wer"]
        se = f" ± {wer['se']:.3f}" if wer["se"] is not None else ""
        search = record.get(name, {}).get("cpu_seconds")
        arch = ",".join(r["arch"]) if r["arch"] else "(base recipe)"
        rows.append(
            f"| {name} | {arch} | {wer['mean']:.3f}{se} | {r['num_parameters']:,} | "
            f"{r['cpu_latency_ms_per_audio_s']['mean']:.1f} | "
            f"{'-' if search is None else f'{search / 3600:.3f}'} | {r['cpu_seconds'] / 3600:.3f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
