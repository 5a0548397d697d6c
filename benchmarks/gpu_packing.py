"""GPU packing: trials per hour at a low fidelity, one trial at a time vs N packed worker processes.

The same K configs (a fixed, seeded list, enqueued in every mode) train a small AN4 model
(a fraction of the training split, 1-2 epochs) in each mode:

* ``sequential``: one ``speechtune worker`` process, one trial at a time;
* ``packed-N``: N worker processes on the same GPU at once (``--gpu-slots N``).

For each mode it reports trials completed per hour (over the whole wall time, worker start-up
included, and over the span in which trials ran), the speed-up over one-at-a-time, the GPU busy
fraction (NVML ``utilization.gpu``; whole run and trial span) and the peak GPU memory; per config
it compares the dev WER across modes (the search results must agree). Features are computed once
before any timing into a shared cache, so every mode starts warm. Workers may finish up to N-1
extra (sampled) trials past the K enqueued ones; they count towards throughput, not agreement.

    python benchmarks/gpu_packing.py --an4-dir /path/to/an4 --device cuda --workers 4 8 --out runs/bench_gpu_packing
    python benchmarks/gpu_packing.py --device cpu --smoke            # CPU smoke test, ~1-2 min

Writes ``<out>/gpu_packing.json`` (rewritten after every mode, so a cut-off run keeps what it got).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # an uninstalled checkout (the GPU machine) works too

import yaml  # noqa: E402

log = logging.getLogger("gpu_packing")

#: The low fidelity: a small conformer, CTC only, a fraction of AN4, few epochs. Every searched
#: key below leaves the compute of a trial unchanged, so extra trials cost the same as enqueued ones.
FIDELITY = {
    "model.encoder": "conformer",
    "model.d_model": 144,
    "model.num_layers": 4,
    "model.num_heads": 4,
    "model.ff_dim": 576,
    "model.head": "ctc",
    "train.batch_size": 16,
    "train.epochs": 2,
    "train.flatline_patience": 0,
    "schedule.warmup_steps": 50,
    "data.proxy_fraction": 1.0,
}
SMOKE = {
    "model.d_model": 48,
    "model.num_layers": 1,
    "model.ff_dim": 96,
    "model.conv_kernel": 7,
    "train.epochs": 1,
    "data.proxy_fraction": 0.12,
}
SPACE = {
    "optim.lr": {"type": "float", "low": 5.0e-4, "high": 5.0e-3, "log": True},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.2},
    "specaugment.time_mask_width": {"type": "int", "low": 10, "high": 40},
}


def fixed_configs(k: int, seed: int = 0) -> list[dict[str, Any]]:
    """K configs of :data:`SPACE`, the same for every mode (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        out.append(
            {
                "optim.lr": round(10 ** rng.uniform(-3.3, -2.3), 6),
                "model.dropout": round(rng.uniform(0.0, 0.2), 4),
                "specaugment.time_mask_width": rng.randint(10, 40),
            }
        )
    return out


def write_spec(path: Path, an4_dir: Path, overrides: dict[str, Any], name: str, k: int) -> Path:
    doc = {
        "recipe": str(ROOT / "conf" / "an4.yaml"),
        "overrides": {"data.root": str(an4_dir), **overrides},
        "space": SPACE,
        # random + no pruner: every trial trains the same epochs, so modes compare like for like.
        "study": {"name": name, "sampler": "random", "pruner": "none", "n_trials": k, "seed": 0},
        "objective": {"kind": "recipe", "metric": "wer", "seeds": [42]},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def warm_feature_cache(spec: Any, cache_dir: Path) -> dict[str, Any]:
    """Compute the trials' features once (CPU), exactly as a trial's ``train()`` sets them up.

    Mirrors the data/feature lines of :func:`speechtune.training.train` so that the cache keys
    (feature config + manifest fingerprint) are the ones the trials will ask for.
    """
    import torch

    from speechtune.config import RunOptions, config_from_dict
    from speechtune.data import (
        build_tokenizer,
        corpus_charset,
        prepare_data,
        require_tunable,
        validate_manifest,
    )
    from speechtune.training._loop import _features

    t0 = time.perf_counter()
    cfg = config_from_dict({**spec.base_recipe, "seed": 42}, "benchmark recipe")
    data = prepare_data(cfg.data, cfg.features.sample_rate, str(cache_dir), False)
    train_set, dev_set = (
        require_tunable(data.train, "training"),
        require_tunable(data.dev, "model selection"),
    )
    alphabet = " ".join(sorted(corpus_charset(cfg.data) - {" "}))
    tokenizer = build_tokenizer(
        cfg.tokenizer.kind, [u.text for u in train_set] + [alphabet], cfg.tokenizer.vocab_size
    )
    dev_set, _ = validate_manifest(dev_set, charset=tokenizer.charset, skip_bad=cfg.data.skip_bad)
    opts = RunOptions(
        output_dir=str(cache_dir / "warm"), device="cpu", cache_dir=str(cache_dir), progress=False
    )
    feats = {
        name: _features(m, cfg, opts, torch.device("cpu"))
        for name, m in (("train", train_set), ("dev", dev_set))
    }
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "train_utts": len(feats["train"]),
        "dev_utts": len(feats["dev"]),
        "train_audio_s": round(sum(u.duration for u in train_set), 1),
    }


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        gpu: dict[str, Any] = {}
        trial_dir = t.user_attrs.get("trial_dir")
        if trial_dir and (Path(trial_dir) / "gpu.json").is_file():
            gpu = json.loads((Path(trial_dir) / "gpu.json").read_text())
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "wer": t.values[0] if t.state == TrialState.COMPLETE and t.values else None,
                "start": t.datetime_start.timestamp() if t.datetime_start else None,
                "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
                "reason": t.user_attrs.get("reason"),
                **gpu,
            }
        )
    return rows


def run_mode(
    name: str,
    n_workers: int,
    args: argparse.Namespace,
    spec_path: Path,
    configs: list[dict[str, Any]],
    deadline: float,
) -> dict[str, Any]:
    from speechtune.reports import write_study_outputs
    from speechtune.tuning.backends import PackedBackend, run_study
    from speechtune.tuning.spec import load_tuning

    run_dir = Path(args.out) / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = _renamed(load_tuning(spec_path), f"gpu-packing-{name}")
    # N workers share the cores instead of each spinning up a thread per core (CPU-side ops of a
    # GPU trial too: 8 processes x 16 OpenMP threads would oversubscribe the machine).
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    extra = ["--cache-dir", str(args.cache_dir), "--no-tracking", "--no-report", "--quiet"]
    gpu_slots = (
        n_workers if args.device != "cpu" else None
    )  # N slots: the slots never limit N workers
    timeout = max(10.0, deadline - time.monotonic())
    log.info(
        "mode %s: %d worker(s), %d configs, time left %.0f s",
        name,
        n_workers,
        len(configs),
        timeout,
    )
    error = None
    t_launch = time.time()
    try:
        backend = PackedBackend(
            n_workers,
            device=args.device,
            gpu_slots=gpu_slots,
            enqueue=configs,
            extra_argv=extra,
            timeout_s=timeout,
            monitor_interval_s=args.monitor_interval,
            env=env,
        )
        study = run_study(
            spec,
            None,
            run_dir,
            backend=backend,
            n_trials=len(configs),
            outputs=write_study_outputs,
            progress=False,
        )
    except RuntimeError as exc:  # a worker failed or was cut off: report what finished
        error = str(exc)
        log.error("mode %s: %s", name, exc)
        import optuna

        from speechtune.tuning.study import make_storage, storage_url

        url = storage_url("journal", run_dir.resolve())
        study = optuna.load_study(study_name=spec.study.name, storage=make_storage(url, run_dir))
    rows = _trial_rows(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    wall = float(study.user_attrs.get("wall_s") or (time.time() - t_launch))
    gpu = study.user_attrs.get("gpu_utilization") or {}
    span = (min(r["start"] for r in done), max(r["end"] for r in done)) if done else None
    busy_span = _busy_between(study.user_attrs.get("gpu_timeline") or [], span)
    trial_s = [r["end"] - r["start"] for r in done]
    return {
        "mode": name,
        "workers": n_workers,
        "k_configs": len(configs),
        "completed": len(done),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "wall_s": round(wall, 2),
        "trials_per_hour": round(3600 * len(done) / wall, 1) if wall > 0 else None,
        "trial_span_s": round(span[1] - span[0], 2) if span else None,
        "trials_per_hour_in_span": round(3600 * len(done) / (span[1] - span[0]), 1)
        if span and span[1] > span[0]
        else None,
        "trial_seconds_median": round(statistics.median(trial_s), 2) if trial_s else None,
        "gpu_available": gpu.get("available"),
        "gpu_reason": gpu.get("reason"),
        "gpu_busy_fraction": gpu.get("gpu_busy_fraction"),
        "gpu_busy_fraction_in_span": busy_span,
        "gpu_mem_peak_mb": gpu.get("gpu_mem_peak_mb"),
        "trial_gpu_mem_peak_mb": max(
            (r["gpu_mem_peak_mb"] for r in done if r.get("gpu_mem_peak_mb")), default=None
        ),
        "gpu": gpu,
        "error": error,
        "trials": rows,
    }


def _busy_between(timeline: list[list[float]], span: tuple[float, float] | None) -> float | None:
    if not span or not timeline:
        return None
    values = [u for t, u in timeline if span[0] <= t <= span[1]]
    return round(statistics.fmean(values) / 100.0, 4) if values else None


def _renamed(spec: Any, name: str) -> Any:
    import dataclasses

    raw = dict(spec.raw)
    raw["study"] = {**raw.get("study", {}), "name": name}
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, name=name), raw=raw)


def agreement(modes: list[dict[str, Any]], configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per enqueued config, the dev WER of each mode, and how far the packed modes are from sequential."""

    def key(params: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(round(float(params[k]), 6) for k in sorted(SPACE))

    by_mode = {}
    for m in modes:
        by_mode[m["mode"]] = {}
        for r in m["trials"]:
            if r["wer"] is not None and r["params"]:
                by_mode[m["mode"]].setdefault(key(r["params"]), r["wer"])
    per_config = []
    for i, c in enumerate(configs):
        row = {"config": i, **c}
        for mode, wers in by_mode.items():
            row[mode] = wers.get(key(c))
        per_config.append(row)
    summary: dict[str, Any] = {}
    base = "sequential"
    for mode in by_mode:
        if mode == base:
            continue
        pairs = [
            (r[base], r[mode])
            for r in per_config
            if r.get(base) is not None and r.get(mode) is not None
        ]
        diffs = [abs(a - b) for a, b in pairs]
        # The best config among those both modes ran (a cheaper baseline runs only the first few).
        both = [r for r in per_config if r.get(base) is not None and r.get(mode) is not None]
        best_base = min(both, key=lambda r: r[base])["config"] if both else None
        best_mode = min(both, key=lambda r: r[mode])["config"] if both else None
        summary[mode] = {
            "configs_compared": len(pairs),
            "identical": sum(d == 0 for d in diffs),
            "max_abs_wer_diff": round(max(diffs), 4) if diffs else None,
            "mean_abs_wer_diff": round(statistics.fmean(diffs), 4) if diffs else None,
            "spearman": _spearman(pairs),
            "same_best_config": best_base == best_mode if pairs else None,
        }
    return {"per_config": per_config, "vs_sequential": summary}


def _spearman(pairs: list[tuple[float, float]]) -> float | None:
    if len(pairs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):  # average ranks of ties
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    a, b = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
    return round(num / den, 4) if den else None


def print_table(modes: list[dict[str, Any]], agree: dict[str, Any]) -> None:
    base = next((m for m in modes if m["mode"] == "sequential"), None)
    head = (
        f"{'mode':<12}{'workers':>8}{'done':>6}{'wall s':>9}{'trials/h':>10}{'speed-up':>10}"
        f"{'in-span/h':>11}{'speed-up':>10}{'busy':>7}{'busy span':>11}{'mem MiB':>9}{'WER diff':>10}"
    )
    print(head)
    print("-" * len(head))
    for m in modes:
        su = (
            m["trials_per_hour"] / base["trials_per_hour"]
            if base and base["trials_per_hour"] and m["trials_per_hour"]
            else None
        )
        su2 = (
            m["trials_per_hour_in_span"] / base["trials_per_hour_in_span"]
            if base and base["trials_per_hour_in_span"] and m["trials_per_hour_in_span"]
            else None
        )
        diff = agree["vs_sequential"].get(m["mode"], {}).get("max_abs_wer_diff")
        print(
            f"{m['mode']:<12}{m['workers']:>8}{m['completed']:>6}{m['wall_s']:>9.1f}{_f(m['trials_per_hour'], 1):>10}"
            f"{_f(su, 2, 'x'):>10}{_f(m['trials_per_hour_in_span'], 1):>11}{_f(su2, 2, 'x'):>10}"
            f"{_f(m['gpu_busy_fraction'], 2):>7}{_f(m['gpu_busy_fraction_in_span'], 2):>11}"
            f"{_f(m['gpu_mem_peak_mb'], 0):>9}{_f(diff, 4):>10}"
        )


def _f(value: float | None, digits: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--an4-dir",
        default=str(ROOT.parent / "shared" / "data" / "an4"),
        help="local AN4 distribution",
    )
    ap.add_argument("--device", default="auto", help="auto, cuda or cpu (workers' --device)")
    ap.add_argument(
        "--workers", type=int, nargs="+", default=[4, 8], help="packed worker counts to compare"
    )
    ap.add_argument(
        "--configs", type=int, default=None, help="K configs per mode (default 16; smoke 4)"
    )
    ap.add_argument(
        "--sequential-configs",
        type=int,
        default=None,
        help="run only the first N of the K configs one at a time (default K): a cheaper baseline; "
        "trials/hour and the WER agreement use what each mode ran",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more recipe overrides (sizes of a trial)",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny settings for a CPU check")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540.0,
        help="stop starting work after this long (all modes)",
    )
    ap.add_argument(
        "--monitor-interval", type=float, default=0.25, help="GPU sampling interval (s)"
    )
    ap.add_argument(
        "--cache-dir", default=None, help="feature cache shared by all modes (default <out>/cache)"
    )
    ap.add_argument("--out", default="runs/bench_gpu_packing")
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    out = Path(args.out).resolve()
    args.out = str(out)
    args.cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else out / "cache"
    k = args.configs or (4 if args.smoke else 16)
    if args.smoke and args.workers == [4, 8]:
        args.workers = [2]
    overrides: dict[str, Any] = {**FIDELITY, **(SMOKE if args.smoke else {})}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)

    from speechtune.tuning.spec import load_tuning

    spec_path = write_spec(
        out / "tuning.yaml", Path(args.an4_dir).resolve(), overrides, "gpu-packing", k
    )
    spec = load_tuning(spec_path)
    warm = warm_feature_cache(spec, args.cache_dir)
    log.info("features cached in %.1f s: %s", warm["seconds"], warm)
    configs = fixed_configs(k)
    record: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": args.device,
        "device_name": _device_name(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "smoke": args.smoke,
        "k_configs": k,
        "overrides": overrides,
        "warm_cache": warm,
        "configs": configs,
        "modes": [],
    }
    modes: list[dict[str, Any]] = []
    for name, n in [("sequential", 1), *((f"packed-{n}", n) for n in args.workers)]:
        if time.monotonic() > deadline - 10:
            log.error("budget spent: mode %s not run", name)
            record.setdefault("not_run", []).append(name)
            continue
        mode_configs = (
            configs[: args.sequential_configs]
            if name == "sequential" and args.sequential_configs
            else configs
        )
        modes.append(run_mode(name, n, args, spec_path, mode_configs, deadline))
        record["modes"] = modes
        record["agreement"] = agreement(modes, configs)
        _write(out, record)
    record["total_s"] = round(time.monotonic() - t_start, 1)
    _write(out, record)
    print()
    print_table(modes, record.get("agreement", {"vs_sequential": {}}))
    print(f"\nper-config dev WER: {json.dumps(record.get('agreement', {}).get('per_config', []))}")
    print(
        f"agreement vs sequential: {json.dumps(record.get('agreement', {}).get('vs_sequential', {}))}"
    )
    print(f"wrote {out / 'gpu_packing.json'} ({record['total_s']} s)")
    ok = (
        modes
        and all(m["completed"] >= m["k_configs"] and m["error"] is None for m in modes)
        and not record.get("not_run")
    )
    return 0 if ok else 1


def _device_name() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
            return name.decode() if isinstance(name, bytes) else str(name)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return platform.processor() or platform.machine()


def _write(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "gpu_packing.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(out / "gpu_packing.json")


if __name__ == "__main__":
    sys.exit(main())
