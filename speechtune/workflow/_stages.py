"""The eight stages of the production workflow, each a function of a :class:`~._context.Context`.

Every stage returns its typed result (:mod:`._results`, recorded in ``state.json``) and is safe to
run again after an interruption: studies resume from their storage, trainings continue from
``last.pt`` and a finished training is read back from its record (:data:`~._context.RUN_RECORD`)
instead of rerun. Stages 1 to 6 never see the golden set (the runner guards it); stage 7 is the
first to read it. The searches (stages 3 and 4) are in :mod:`._search`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from speechtune._urls import mask_url
from speechtune.config import config_from_dict, config_to_dict
from speechtune.data import Manifest, proxy_subset
from speechtune.tuning.objectives import merge_config
from speechtune.workflow._context import (
    RUN_RECORD,
    Context,
    WorkflowError,
    dev_metrics,
    train_once,
)
from speechtune.workflow._gate import file_sha256, gate_model
from speechtune.workflow._golden import leakage, load_golden
from speechtune.workflow._results import (
    BaselineResult,
    Candidate,
    DataSummary,
    ExportResult,
    FailedRun,
    FullBaseline,
    FullResult,
    GateResult,
    GoldenInfo,
    Params,
    ProxyResult,
    RunRecord,
    SearchResult,
    SeedTestResult,
    StageResult,
    TunedRun,
    ValidateResult,
)
from speechtune.workflow._search import stage_coarse, stage_fine, weak_proxy_warnings
from speechtune.workflow._stats import mean_std, seed_noise_test

__all__ = ["STAGE_DIRS", "STAGE_FUNCTIONS", "check_data_unchanged", "weak_proxy_warnings"]

log = logging.getLogger(__name__)


def _describe(manifest: Manifest) -> DataSummary:
    return DataSummary(
        utterances=len(manifest),
        hours=round(manifest.hours, 4),
        speakers=len(manifest.speakers),
        groups=tuple(manifest.groups),
        fingerprint=manifest.fingerprint(),
    )


# ---------------------------------------------------------------------------------------------
# 1 proxy data
# ---------------------------------------------------------------------------------------------
def stage_proxy(ctx: Context) -> ProxyResult:
    """Carve dev (speaker-disjoint) and the stratified proxy subset; write the three manifests."""

    data = ctx.data()
    p = ctx.spec.proxy
    seed = config_from_dict(ctx.proxy_recipe(), "the workflow's recipe").data.split_seed
    if p.hours is not None:
        proxy = proxy_subset(data.train, hours=p.hours, seed=seed)
    else:
        proxy = proxy_subset(data.train, fraction=p.fraction or 1.0, seed=seed)
    if len(proxy) == 0:
        raise WorkflowError(
            f"the proxy subset is empty (proxy: {dataclasses.asdict(p)}); raise proxy.fraction or proxy.hours"
        )
    out = ctx.run_dir / "data"
    paths = {
        "train_full": out / "train_full.jsonl",
        "proxy": out / "train_proxy.jsonl",
        "dev": out / "dev.jsonl",
    }
    for key, manifest in (("train_full", data.train), ("proxy", proxy), ("dev", data.dev)):
        manifest.to_jsonl(paths[key])
    return ProxyResult(
        fraction=p.fraction if p.hours is None else None,
        hours=p.hours,
        seed=seed,
        train_full=_describe(data.train),
        proxy=_describe(proxy),
        dev=_describe(data.dev),
        manifests={k: str(v) for k, v in paths.items()},
        manifest_sha256={k: file_sha256(v) for k, v in paths.items()},
        skipped_utterances=tuple(b.id for b in data.report.skipped),
    )


def check_data_unchanged(ctx: Context) -> None:
    """A resumed workflow must see the data stage 1 recorded (same train and dev utterances)."""
    recorded = ctx.state.result("proxy", ProxyResult)
    data = ctx.data()
    for key, manifest, summary in (
        ("train_full", data.train, recorded.train_full),
        ("dev", data.dev, recorded.dev),
    ):
        if manifest.fingerprint() != summary.fingerprint:
            raise WorkflowError(
                f"the {key} data changed since stage 1 ran (fingerprint {manifest.fingerprint()} != "
                f"{summary.fingerprint}); rerun with --from-stage proxy, or use a new --run-dir"
            )


# ---------------------------------------------------------------------------------------------
# 2 baseline
# ---------------------------------------------------------------------------------------------
def stage_baseline(ctx: Context) -> BaselineResult:
    """The recipe defaults (the tuning YAML's base recipe) on the proxy data, first validation seed."""
    seed = ctx.spec.validation.seeds[0]
    run = train_once(ctx, ctx.proxy_recipe(), {}, ctx.run_dir / "baseline" / f"seed{seed}", seed)
    if run.value is None:
        log.warning("the baseline did not train (%s): %s", run.status, run.reason)
    return BaselineResult(
        run_dir=run.run_dir,
        seed=seed,
        status=run.status,
        reason=run.reason,
        dev=dev_metrics(run.metrics),
        value=run.value,
    )


# ---------------------------------------------------------------------------------------------
# 5 validation
# ---------------------------------------------------------------------------------------------
def _candidates(ctx: Context) -> list[tuple[str, Params]]:
    """The baseline, then the best distinct configs of both searches (by their search value)."""
    pool: list[tuple[float, str, Params]] = []
    for stage in ("coarse", "fine"):
        for t in ctx.state.result(stage, SearchResult).top:
            pool.append((t.value, f"{stage}-{t.trial}", t.params))
    pool.sort(key=lambda x: x[0])
    seen: set[str] = set()
    out: list[tuple[str, Params]] = [("baseline", {})]
    for _, name, params in pool:
        key = json.dumps(params, sort_keys=True, default=str)
        if key in seen:
            continue  # a warm-started fine trial is its coarse trial
        seen.add(key)
        out.append((name, params))
        if len(out) > ctx.spec.validation.top_k:
            break
    return out


def stage_validate(ctx: Context) -> ValidateResult:
    """The top-k configs and the baseline, each trained with every validation seed (fresh seeds)."""

    v = ctx.spec.validation
    recipe = ctx.proxy_recipe()
    baseline = ctx.state.result("baseline", BaselineResult)
    candidates = []
    for name, params in _candidates(ctx):
        runs = []
        for seed in v.seeds:
            if name == "baseline" and seed == baseline.seed:
                runs.append(
                    RunRecord.from_dict(
                        json.loads((Path(baseline.run_dir) / RUN_RECORD).read_text())
                    )
                )
                continue
            runs.append(
                train_once(
                    ctx, recipe, params, ctx.run_dir / "validate" / name / f"seed{seed}", seed
                )
            )
        values = [r.value for r in runs if r.value is not None]
        mean, std = mean_std(values) if values else (None, None)
        candidates.append(
            Candidate(
                name=name,
                params=params,
                values=tuple(values),
                seeds=tuple(r.seed for r in runs if r.value is not None),
                failed=tuple(
                    FailedRun(seed=r.seed, status=r.status, reason=r.reason)
                    for r in runs
                    if r.value is None
                ),
                mean=mean,
                std=std,
            )
        )
    ranked = [(c.mean, c) for c in candidates if c.mean is not None]
    if not ranked:
        raise WorkflowError(
            "no validation run trained (every candidate failed with every seed); see "
            + str(ctx.run_dir / "validate")
        )
    # The winner by mean over seeds; ties go to the candidate listed first (baseline, then search order).
    winner = min(ranked, key=lambda scored: scored[0])[1]
    base = candidates[0]
    if winner is base:
        test = SeedTestResult(
            method="none",
            statistic=None,
            p_value=None,
            alpha=v.alpha,
            significant=False,
            statement=(
                "the baseline has the lowest mean: no searched config beat the recipe defaults on the validation seeds."
            ),
        )
    else:
        test = SeedTestResult.from_dict(
            seed_noise_test(winner.values, base.values, alpha=v.alpha).as_dict()
        )
    return ValidateResult(
        seeds=tuple(v.seeds),
        alpha=v.alpha,
        candidates=tuple(candidates),
        winner=winner.name,
        test=test,
    )


# ---------------------------------------------------------------------------------------------
# 6 full training
# ---------------------------------------------------------------------------------------------
def stage_full(ctx: Context) -> FullResult:
    """The winner on all the training data at the top fidelity."""
    val = ctx.state.result("validate", ValidateResult)
    winner = val.winner_candidate()
    if winner is None:
        raise WorkflowError(
            f"the validation winner {val.winner!r} is not among its candidates; rerun --from-stage validate"
        )
    seed = ctx.spec.full.seed if ctx.spec.full.seed is not None else ctx.spec.validation.seeds[0]
    recipe = ctx.full_recipe()
    run = train_once(ctx, recipe, winner.params, ctx.run_dir / "full", seed)
    if run.value is None:
        raise WorkflowError(
            f"full training of {winner.name} failed ({run.status}): {run.reason}; see {run.run_dir}"
        )
    cfg = config_from_dict({**_merged(recipe, winner.params), "seed": seed})
    result = FullResult(
        run_dir=run.run_dir,
        candidate=winner.name,
        params=winner.params,
        seed=seed,
        epochs=cfg.train.epochs,
        dev=dev_metrics(run.metrics),
        value=run.value,
        model=str(Path(run.run_dir) / "model.pt"),
    )
    if not ctx.spec.full.baseline or winner.name == "baseline":
        return result
    # What the untuned recipe reaches when trained the same way: the honest yardstick for the winner.
    base = train_once(ctx, recipe, {}, ctx.run_dir / "full_baseline", seed)
    baseline = FullBaseline(
        run_dir=base.run_dir,
        status=base.status,
        reason=base.reason,
        dev=dev_metrics(base.metrics),
        value=base.value,
    )
    result = dataclasses.replace(result, baseline=baseline)
    if base.value is None or base.value >= run.value:
        return result
    # Selection on dev, as everywhere before the gate: the better of the two goes on.
    tuned = TunedRun(
        run_dir=result.run_dir,
        candidate=result.candidate,
        params=result.params,
        dev=result.dev,
        value=result.value,
        model=result.model,
    )
    warning = (
        f"the tuned winner ({winner.name}, dev {ctx.state.record.metric_name} {run.value:.4f}) did worse at full "
        f"fidelity than the recipe's defaults ({base.value:.4f}): the baseline goes to the gate instead. The proxy "
        "ranked configs unlike full training; a larger proxy (more data or epochs) or `speechtune correlate` on the "
        "studies can tell why."
    )
    return dataclasses.replace(
        result,
        run_dir=base.run_dir,
        candidate="baseline",
        params={},
        dev=baseline.dev,
        value=base.value,
        model=str(Path(base.run_dir) / "model.pt"),
        tuned=tuned,
        warnings=(warning,),
    )


def _merged(recipe: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:

    return merge_config(recipe, params)


# ---------------------------------------------------------------------------------------------
# 7 gating and 8 export
# ---------------------------------------------------------------------------------------------
def registry(ctx: Context) -> Any:
    """The model registry of the gate (``gating.model_name`` in the tracking store)."""
    from speechtune.track import ModelRegistry

    uri = ctx.tracking_uri or ctx.spec.gating.tracking_uri
    return ModelRegistry(uri, ctx.spec.gating.model_name, store_dir=ctx.spec.gating.registry_dir)


def _lineage(ctx: Context, golden: GoldenInfo) -> dict[str, Any]:
    from speechtune.track import code_version

    st = ctx.state
    proxy = st.result("proxy", ProxyResult)
    full = st.result("full", FullResult)
    studies = {s: st.result(s, SearchResult) for s in ("coarse", "fine")}
    workflow = {
        "name": ctx.spec.name,
        "run_uid": ctx.run_uid,
        "run_dir": str(ctx.run_dir),
        "config": str(ctx.spec.path),
        "config_hash": ctx.spec.digest(),
    }
    cost = st.record.cost_total
    return {
        "workflow": workflow,
        "config": config_to_dict(
            config_from_dict({**_merged(ctx.full_recipe(), full.params), "seed": full.seed})
        ),
        "params": dict(full.params),
        "data": {
            "manifests": dict(proxy.manifests),
            "manifest_sha256": dict(proxy.manifest_sha256),
            "fingerprints": {
                k: getattr(proxy, k).fingerprint for k in ("train_full", "proxy", "dev")
            },
            "golden": golden.to_dict(),
        },
        "studies": {
            s: {"name": r.study, "storage": mask_url(r.storage)} for s, r in studies.items()
        },
        "validation": st.result("validate", ValidateResult).to_dict(),
        "metrics": {"dev": full.dev.to_dict()},
        "code_version": code_version(),
        "cost": cost.as_dict() if cost is not None else None,
    }


def stage_gate(ctx: Context) -> GateResult:
    """Golden-set evaluation, registry, and promotion by margin."""

    g = ctx.spec.gating
    full = ctx.state.result("full", FullResult)
    golden, source = load_golden(ctx)
    data = ctx.data()
    leak = leakage(golden, data.train, data.dev)
    if not leak.ok:
        raise WorkflowError(
            f"the golden set is not held out: {len(leak.shared_audio)} of its utterances have audio files that are "
            f"also in the training or dev data (e.g. {', '.join(leak.shared_audio[:5])}); "
            "gating on it would flatter the model"
        )
    gate_dir = ctx.run_dir / "gate"
    gate_dir.mkdir(parents=True, exist_ok=True)
    golden_info = GoldenInfo(
        source=source,
        utterances=len(golden),
        hours=round(golden.hours, 4),
        fingerprint=golden.fingerprint(),
        shared_speakers=tuple(leak.shared_speakers),
    )
    lineage = _lineage(ctx, golden_info)
    cost = ctx.state.record.cost_total
    commit = lineage["code_version"].get("git_commit") or lineage["code_version"].get("package")
    outcome = gate_model(
        Path(full.run_dir),
        golden,
        registry(ctx),
        metric=g.metric,
        margin=g.margin,
        device=_eval_device(ctx.device),
        work_dir=gate_dir,
        params=full.params,
        dev=full.dev.to_dict(),
        cost=cost.as_dict() if cost is not None else {},
        tags={
            "speechtune.workflow": ctx.spec.name,
            "speechtune.workflow_run": ctx.run_uid,
            "speechtune.study": ctx.state.result("fine", SearchResult).study,
            "speechtune.code_version": str(commit),
            "speechtune.golden_fingerprint": str(golden_info.fingerprint),
            "speechtune.train_fingerprint": lineage["data"]["fingerprints"]["train_full"],
        },
        lineage=lineage,
        run_name=f"{ctx.spec.name}-{ctx.run_uid}",
    )
    head = {
        "golden": golden_info.to_dict(),
        "gate_metric": g.metric,
        "margin": g.margin,
        "model_name": g.model_name,
    }
    return GateResult.from_dict({**head, **outcome})


def _eval_device(device: str) -> str:
    import torch

    return device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def stage_export(ctx: Context) -> ExportResult:
    """The final model with its front end as TorchScript or ONNX, attached to the registered version.

    A streaming model (``model.chunk_ms > 0``) also gets its chunk step (state in and out, as
    ``speechtune export`` writes it), attached beside it: what a device that decodes live runs.
    """
    from speechtune.inference import Recognizer, export_model, export_streaming

    fmt = ctx.spec.export_format
    if fmt == "none":
        return ExportResult(format="none", path=None, size=0)
    full = ctx.state.result("full", FullResult)
    out_dir = ctx.run_dir / "export"
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a half-written export of an interrupted attempt
    path = export_model(full.model, out_dir, fmt)
    stream_path = None
    if Recognizer.load(full.model, "cpu").model.streaming.enabled:
        try:
            stream_path = export_streaming(full.model, out_dir, fmt)
        except ValueError as exc:  # e.g. ONNX of an int8 model: the whole-utterance file stands
            log.warning("export: no streaming chunk step for %s: %s", full.model, exc)
    gate = ctx.state.result("gate", GateResult)
    reg = registry(ctx)
    version = next((v for v in reg.versions() if v.version == gate.registered_version), None)
    uri = reg.attach(version, path) if version is not None else None
    stream_uri = None
    if version is not None and stream_path is not None:
        # the version's export tag keeps naming the whole-utterance model
        stream_uri = reg.attach(version, stream_path, tag=False)
    # registry_uri is recorded as null when no version was registered to attach the export to.
    return ExportResult(
        format=fmt,
        path=str(path),
        size=path.stat().st_size,
        registry_uri=uri,
        stream_path=None if stream_path is None else str(stream_path),
        stream_registry_uri=stream_uri,
        nulls=frozenset({"registry_uri"}),
    )


#: Stage name -> the directory (under the run directory) that holds its outputs.
STAGE_DIRS: dict[str, tuple[str, ...]] = {
    "proxy": ("data",),
    **{s: (s,) for s in ("baseline", "coarse", "fine", "validate", "gate", "export")},
    "full": ("full", "full_baseline"),
}

#: Stage name -> function, in order.
STAGE_FUNCTIONS: dict[str, Callable[[Context], StageResult]] = {
    "proxy": stage_proxy,
    "baseline": stage_baseline,
    "coarse": stage_coarse,
    "fine": stage_fine,
    "validate": stage_validate,
    "full": stage_full,
    "gate": stage_gate,
    "export": stage_export,
}
