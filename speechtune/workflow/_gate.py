"""Stage 7's decision: the challenger and the registry's champion on the same golden set.

Both models are measured now, on the same golden utterances (a champion's metric recorded on
an older golden set would not compare). The challenger is always registered (alias
``challenger``) with its lineage; it takes the alias ``champion`` only when it is better by at
least the margin, or when there is no champion yet.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from speechtune.data import Manifest


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (manifests and models: what the registry's lineage pins down)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def golden_metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an evaluation kept for gating: WER, CER, worst and per-group WER, size of the set."""
    return {
        k: result[k]
        for k in ("wer", "cer", "worst_group_wer", "worst_group", "group_wer", "utterances")
        if k in result
    }


def decide(
    challenger: Mapping[str, Any], champion: Mapping[str, Any] | None, metric: str, margin: float
) -> tuple[bool, str]:
    """Promote or not, and the sentence that says why (lower ``metric`` is better)."""
    new = float(challenger[metric])
    if champion is None:
        return (
            True,
            f"no champion was registered: the challenger ({metric} {new:.4f} on golden) becomes the first champion.",
        )
    old = float(champion[metric])
    gain = old - new
    version = champion.get("version")
    if gain >= margin:
        return True, (
            f"promoted: golden {metric} {new:.4f} vs champion v{version} {old:.4f}, better by {gain:.4f} "
            f">= the margin {margin:.4f}."
        )
    how = "worse" if gain < 0 else "better only"
    return False, (
        f"not promoted: golden {metric} {new:.4f} vs champion v{version} {old:.4f} is {how} by {abs(gain):.4f}; "
        f"promotion needs an improvement of at least {margin:.4f}. Registered as challenger only."
    )


def registry_metrics(
    dev: Mapping[str, Any], golden: Mapping[str, Any], cost: Mapping[str, Any]
) -> dict[str, float]:
    """Flat MLflow metrics of a registered model.

    Dev and golden metrics (overall, worst and per group), and the workflow's cost.
    """
    out: dict[str, float] = {}
    for prefix, metrics in (("dev", dev), ("golden", golden)):
        for k in ("wer", "cer", "worst_group_wer"):
            if isinstance(metrics.get(k), (int, float)):
                out[f"{prefix}_{k}"] = float(metrics[k])
        for group, value in (metrics.get("group_wer") or {}).items():
            out[f"{prefix}_wer.{group}"] = float(value)
    for k in ("gpu_hours", "cpu_core_hours", "energy_kwh", "co2e_g", "money", "wall_s"):
        if isinstance(cost.get(k), (int, float)):
            out[f"workflow_{k}"] = float(cost[k])
    return out


def gate_model(
    model_dir: Path,
    golden: Manifest,
    registry: Any,
    *,
    metric: str,
    margin: float,
    device: str,
    work_dir: Path,
    params: Mapping[str, Any],
    dev: Mapping[str, Any],
    cost: Mapping[str, Any],
    tags: Mapping[str, str],
    lineage: Mapping[str, Any],
    run_name: str,
) -> dict[str, Any]:
    """Evaluate ``model_dir/model.pt`` and the champion on ``golden``; register; move the aliases.

    Args:
        model_dir: the challenger's training directory (``model.pt``, ``config.yaml``, ``metrics.json``).
        golden: the golden set (split ``golden``).
        registry: a :class:`speechtune.track.ModelRegistry`.
        metric: ``wer``, ``cer`` or ``worst_group_wer`` (lower is better).
        margin: the improvement over the champion needed to promote (absolute).
        device: where to run the evaluations.
        work_dir: where the champion is downloaded and ``decision.json`` written.
        params, dev, cost: logged with the version (the winner's config, its dev metrics, the workflow's cost).
        tags, lineage, run_name: the version's tags, its ``lineage.json`` and MLflow run name.

    Returns:
        ``challenger`` and ``champion`` golden metrics, ``registered_version``, ``promoted``,
        ``decision`` and the masked ``tracking_uri``. A model already registered (same bytes)
        is not registered again: a rerun after an interruption finds its version.
    """
    from speechtune.inference import evaluate_model
    from speechtune.track import mask_uri

    model_dir, work_dir = Path(model_dir), Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    challenger = golden_metrics(
        evaluate_model(model_dir / "model.pt", golden, device=device, name="golden")
    )
    # The model's bytes identify it: a retrained model is a new version, the same one is not.
    model_sha = file_sha256(model_dir / "model.pt")
    existing = registry.find_version("speechtune.model_sha256", model_sha)
    champ = registry.champion()
    champion = None
    if champ is not None and existing is not None and champ.version == existing.version:
        champion = {"version": champ.version, **challenger}
        promote, decision = (
            True,
            f"this model is already the champion (version {champ.version}): nothing to change.",
        )
    else:
        if champ is not None:
            champ_dir = registry.download(champ, work_dir / f"champion-v{champ.version}")
            champion = {
                "version": champ.version,
                **golden_metrics(
                    evaluate_model(champ_dir / "model.pt", golden, device=device, name="golden")
                ),
            }
        promote, decision = decide(challenger, champion, metric, margin)
    if existing is None:
        version = registry.register(
            model_dir,
            params=params,
            metrics=registry_metrics(dev, challenger, cost),
            tags={
                **tags,
                "speechtune.model_sha256": model_sha,
                "speechtune.decision": decision[:4900],
            },
            lineage={**lineage, "golden_metrics": challenger, "decision": decision},
            run_name=run_name,
            description=decision,
        )
    else:
        version = existing
    registry.set_alias("challenger", version.version)
    if promote:
        registry.set_alias("champion", version.version)
    (work_dir / "decision.json").write_text(
        json.dumps(
            {"version": version.version, "promoted": promote, "decision": decision}, indent=2
        )
    )
    return {
        "challenger": challenger,
        "champion": champion,
        "tracking_uri": mask_uri(registry.tracking_uri),
        "registered_version": version.version,
        "promoted": promote,
        "decision": decision,
    }
