"""One NAS run, start to end: data, supernet search, derivation, retraining, outputs.

What lands in the run directory:

* ``derived.yaml``: the derived architecture as a complete recipe (``speechtune train`` reads it);
* ``op_weights.json`` / ``op_weights.png`` (DARTS): ``softmax(alpha)`` of every block per epoch;
* ``candidates.json`` (weight sharing): every sampled architecture's shared-weight scores and,
  for those trained alone, their stand-alone scores;
* ``retrain/<name>/``: ordinary training runs (``model.pt``, ``metrics.json``...);
* ``summary.json``: the method, the architecture, why the search stopped, compute, Spearman,
  and the retrained metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechtune.config import RecipeConfig, RunOptions
from speechtune.data import PreparedData
from speechtune.nas._config import NasConfig
from speechtune.nas._data import SearchData, load_search_data
from speechtune.nas._derive import derived_recipe, write_recipe
from speechtune.nas._rank import sample_architectures, spearman
from speechtune.nas._train import evaluate_path, train_darts, train_weight_sharing
from speechtune.training import resolve_device, train

log = logging.getLogger(__name__)

#: Metrics copied from a retrained run's metrics.json into the summary.
_KEPT = ("wer", "cer", "dev_loss", "num_parameters", "cpu_latency_ms_per_audio_s")


@dataclass
class NasResult:
    """What :func:`run_nas` found and measured (also written to ``summary.json``)."""

    method: str
    arch: list[str]
    recipe: RecipeConfig
    summary: dict[str, Any] = field(default_factory=dict)


def retrain_arch(
    recipe: RecipeConfig,
    ops: Sequence[str],
    out_dir: Path,
    seed: int,
    epochs: int | None,
    opts: RunOptions,
    data: PreparedData | None,
) -> dict[str, Any]:
    """Train architecture ``ops`` from scratch with the ordinary trainer; its dev metrics.

    Args:
        recipe: The base recipe.
        ops: One op per block.
        out_dir: The run's output directory.
        seed: The run's ``seed``.
        epochs: ``train.epochs`` (None: the recipe's).
        opts: Device, cache and threads (``output_dir`` is replaced by ``out_dir``).
        data: Prepared manifests, or None to prepare the recipe's corpus (cached).
    """
    cfg = derived_recipe(recipe, ops)
    cfg = dataclasses.replace(cfg, seed=seed)
    if epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, dataclasses.replace(opts, output_dir=str(out_dir)), data=data)
    m = result.metrics
    return {
        "arch": list(ops),
        "seed": seed,
        "status": result.status,
        **{k: m.get(k) for k in _KEPT},
        "cpu_seconds": time.process_time() - c0,
        "wall_seconds": time.perf_counter() - t0,
    }


def _mean_se(values: Sequence[float]) -> dict[str, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "se": None}
    se = statistics.stdev(vals) / len(vals) ** 0.5 if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "se": se}


def _weight_sharing_search(
    cfg: NasConfig,
    data: SearchData,
    run_dir: Path,
    opts: RunOptions,
    prepared: PreparedData | None,
    say: Callable[[str], None],
) -> tuple[list[str], dict[str, Any]]:
    """Train the supernet with single paths, rank sampled architectures, retrain the top ones."""
    ws = cfg.weight_sharing
    run = train_weight_sharing(cfg, data, say)
    t0, c0 = time.perf_counter(), time.process_time()
    archs = sample_architectures(
        cfg.search.ops, cfg.search.num_blocks, ws.num_samples, cfg.search.seed
    )
    candidates: list[dict[str, Any]] = []
    for arch in archs:
        scores = evaluate_path(run.supernet, data, cfg, arch)
        candidates.append({"arch": arch, "shared": scores})
    metric = ws.rank_metric
    candidates.sort(key=lambda c: (c["shared"][metric], c["shared"]["dev_loss"]))
    for rank, c in enumerate(candidates, start=1):
        c["shared_rank"] = rank
    rank_cpu = time.process_time() - c0
    say(
        f"ranked {len(candidates)} architectures by shared-weight {metric}; best "
        f"{','.join(candidates[0]['arch'])} ({candidates[0]['shared'][metric]:.4f})"
    )
    top = candidates[: ws.top_k]
    # An unbiased sample for the rank correlation: drawn from those not in the top (seeded).
    rest = candidates[ws.top_k :]
    corr = random.Random(cfg.search.seed + 1).sample(rest, min(ws.correlation_samples, len(rest)))
    standalone_cpu = 0.0
    # The top ones are trained alone when there is a choice among them (top_k > 1); the random
    # ones whenever asked for, to measure the ranking. Stand-alone runs use the first seed.
    for c in (top if ws.top_k > 1 else []) + corr:
        name = "ws_" + "-".join(c["arch"])
        c["standalone"] = retrain_arch(
            cfg.recipe, c["arch"], run_dir / "standalone" / name, cfg.retrain.seeds[0],
            cfg.retrain.epochs, opts, prepared,
        )  # fmt: skip
        standalone_cpu += c["standalone"]["cpu_seconds"]
        say(f"stand-alone {','.join(c['arch'])}: dev WER {c['standalone']['wer']}")
    trained = [c for c in candidates if "standalone" in c]
    best = min(top, key=lambda c: c["standalone"][metric]) if ws.top_k > 1 else top[0]
    (run_dir / "candidates.json").write_text(json.dumps(candidates, indent=2))
    info = {
        "supernet_history": run.history,
        "stop_reason": run.stop_reason,
        "supernet_cpu_seconds": run.cpu_seconds,
        "ranking_cpu_seconds": rank_cpu,
        "standalone_cpu_seconds": standalone_cpu,
        "search_cpu_seconds": run.cpu_seconds + rank_cpu + standalone_cpu,
        "search_wall_seconds": run.wall_seconds + time.perf_counter() - t0,
        "num_candidates": len(candidates),
        "rank_metric": metric,
        "top_k": [c["arch"] for c in top],
        "spearman_all_trained": spearman(
            [c["shared"][metric] for c in trained], [c["standalone"][metric] for c in trained]
        ),
        "spearman_random_sample": spearman(
            [c["shared"][metric] for c in corr], [c["standalone"][metric] for c in corr]
        ),
    }
    return list(best["arch"]), info


def run_nas(
    cfg: NasConfig,
    run_dir: str | Path,
    opts: RunOptions | None = None,
    data: PreparedData | None = None,
    progress: Callable[[str], None] | None = None,
) -> NasResult:
    """Search the encoder's blocks with ``cfg.method``, derive a recipe, optionally retrain it.

    Args:
        cfg: The validated NAS config (:func:`load_nas_config`).
        run_dir: Output directory (see the module docstring for what it holds).
        opts: Device, cache dir and threads (``output_dir`` is ignored: ``run_dir`` is used).
        data: Prepared manifests (skips corpus preparation; tests pass their corpus).
        progress: Receives one line per epoch and stage (default: the log).

    Returns:
        The derived architecture, its recipe and the summary.
    """
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    opts = opts or RunOptions()
    opts = dataclasses.replace(opts, progress=False)  # one line per epoch, not progress bars
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    say = progress or log.info
    device = resolve_device(opts.device)
    t0, c0 = time.perf_counter(), time.process_time()
    search_data = load_search_data(cfg.recipe, opts.cache_dir, device, data)
    summary: dict[str, Any] = {"method": cfg.method, "source": cfg.source}
    if cfg.method == "darts":
        run = train_darts(cfg, search_data, say)
        run.op_weights.write(out / "op_weights.json", out / "op_weights.png")
        arch = run.arch
        summary.update(
            supernet_history=run.history,
            stop_reason=run.stop_reason,
            search_cpu_seconds=run.cpu_seconds,
            search_wall_seconds=run.wall_seconds,
            final_op_weights=run.op_weights.epochs[-1]["weights"],
        )
    else:
        arch, info = _weight_sharing_search(cfg, search_data, out, opts, data, say)
        summary.update(info)
    recipe = derived_recipe(cfg.recipe, arch)
    write_recipe(
        recipe,
        out / "derived.yaml",
        f"Derived by `speechtune nas` ({cfg.method}) from {cfg.source or 'a NAS config'}.\n"
        f"block_ops: {','.join(arch)}",
    )
    summary["arch"] = arch
    summary["block_ops"] = ",".join(arch)
    say(f"derived architecture: {','.join(arch)} -> {out / 'derived.yaml'}")
    if cfg.retrain.enabled:
        runs = []
        for seed in cfg.retrain.seeds:
            runs.append(
                retrain_arch(
                    cfg.recipe,
                    arch,
                    out / "retrain" / f"seed{seed}",
                    seed,
                    cfg.retrain.epochs,
                    opts,
                    data,
                )  # fmt: skip
            )
            say(f"retrained seed {seed}: dev WER {runs[-1]['wer']}")
        summary["retrain"] = {
            "runs": runs,
            "wer": _mean_se([r["wer"] for r in runs]),
            "num_parameters": runs[0]["num_parameters"],
            "cpu_latency_ms_per_audio_s": _mean_se(
                [r["cpu_latency_ms_per_audio_s"] for r in runs]
            ),
            "cpu_seconds": sum(r["cpu_seconds"] for r in runs),
        }
    summary["total_cpu_seconds"] = time.process_time() - c0
    summary["total_wall_seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return NasResult(cfg.method, arch, recipe, summary)
