"""The ``edge`` section in a training run: QAT before it, pruning and int8/int4 after it, and the
figures an edge study trades WER against (size on disk, one-thread CPU latency, sparsity).

Where the files go: training keeps its best model as usual; with ``edge.quantize`` set that
float (or QAT) model is ``model_float.pt`` and ``model.pt`` is the int8 (or int4) model made
from it after training, so that everything downstream (``metrics.json``, ``evaluate``, ``export``,
``transcribe``, the workflow) measures and ships the quantised model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechtune.config import EdgeConfig, RecipeConfig
from speechtune.data import Manifest
from speechtune.inference import (
    INT4_STAGE,
    INT8_STAGE,
    QAT_STAGE,
    Recognizer,
    measure_cpu_latency,
    prepare_qat,
    quantize_model,
    quantize_weight_int4,
)
from speechtune.metrics import parameter_count
from speechtune.models import build_model
from speechtune.training._batching import BucketBatchSampler
from speechtune.training._checkpoint import save_atomic
from speechtune.training._collate import collate
from speechtune.training._pruning import measured_sparsity, prune_to

#: The float (or QAT) model a quantising run selects, beside the int8 ``model.pt``.
FLOAT_MODEL = "model_float.pt"
#: Dev utterances timed for ``cpu_latency_ms_per_audio_s``.
LATENCY_UTTERANCES = 8


def best_model_path(out_dir: Path, edge: EdgeConfig) -> Path:
    """Where training writes its best epoch: ``model.pt``, or ``model_float.pt`` when
    ``model.pt`` is to be the int8 or int4 model."""
    return out_dir / (FLOAT_MODEL if edge.quantize != "none" else "model.pt")


def prepare_training(recognizer: Recognizer, edge: EdgeConfig) -> None:
    """Fake-quantise the model for ``qat_int8`` (in place; its Parameters stay the same objects,
    so an optimizer built before keeps training them). Other settings change nothing."""
    if edge.quantize == "qat_int8":
        device = recognizer.device
        prepare_qat(recognizer.model, edge.observer)
        # Any observer made on the CPU follows the model (Parameters stay the same objects).
        recognizer.model.to(device)
        recognizer.quantization = QAT_STAGE


def _calibration(
    cfg: RecipeConfig,
    train_set: Manifest,
    train_feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    rec: Recognizer,
) -> Callable[[nn.Module], None]:
    """A function that runs ``edge.calibration_batches`` seeded training batches through a model."""
    ids = [u.id for u in train_set]
    durations = {u.id: u.duration for u in train_set}
    sampler = BucketBatchSampler(
        [u.duration for u in train_set],
        cfg.train.batch_size,
        num_buckets=cfg.train.num_buckets,
        bucketed=cfg.train.bucketed,
        seed=cfg.seed,
    )
    # Epoch 0 is an order no training epoch uses (they count from 1); no SpecAugment: the
    # ranges are those of the inputs the model will see when it serves.
    sampler.set_epoch(0)
    batches = list(sampler)[: cfg.edge.calibration_batches]
    cpu = torch.device("cpu")

    def calibrate(model: nn.Module) -> None:
        for idx in batches:
            b = collate([ids[i] for i in idx], train_feats, targets, durations, cpu)
            model.encode(rec.normalize(b.feats), b.feat_lens)  # type: ignore[operator]

    return calibrate


@torch.no_grad()
def finalize_model(
    best_path: Path,
    model_path: Path,
    cfg: RecipeConfig,
    train_set: Manifest,
    train_feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
) -> None:
    """Make the selected model the one to ship: pruned to ``edge.prune_sparsity`` and quantised
    (int8, or int4 weights). With ``edge.sparse_storage`` the files store pruned weights sparse.

    The best epoch may predate the end of the pruning ramp (or, with ``train.average_best``,
    be an average of differently pruned epochs): it is then pruned to the target in one shot,
    and the dev WER reported for ``model.pt`` is measured after that. A no-op without edge
    settings.
    """
    edge = cfg.edge
    if edge.prune_sparsity <= 0 and edge.quantize == "none":
        return
    rec = Recognizer.load(best_path, "cpu")
    if edge.prune_sparsity > 0:
        before = measured_sparsity(rec.model)
        prune_to(rec.model, edge.prune_sparsity)
        if measured_sparsity(rec.model) != before:
            save_atomic(rec.to_payload(), best_path)
    if edge.quantize == "none":
        return
    if edge.quantize == "weight_int4":
        quantize_weight_int4(rec.model, edge.int4_group_size)
        rec.quantization = INT4_STAGE
        save_atomic(rec.to_payload(), model_path)
        return
    calibrate = None
    if edge.quantize == "static_int8":
        feats = {u.id: train_feats[u.id].cpu() for u in train_set}
        calibrate = _calibration(cfg, train_set, feats, targets, rec)
    quantize_model(rec.model, edge.quantize, edge.observer, calibrate)
    rec.quantization = INT8_STAGE
    save_atomic(rec.to_payload(), model_path)


def edge_metrics(model_path: Path, dev_set: Manifest, cfg: RecipeConfig) -> dict[str, Any]:
    """``model_size_mb``, ``cpu_latency_ms_per_audio_s`` and, when pruning, ``sparsity``.

    ``sparsity`` is measured on the float weights of the shipped model (``model_float.pt``
    for a quantised one: int8 rounding may zero a few more). A quantised model also reports
    the ``num_parameters`` of its float architecture: its int8 and int4 layers hold no
    Parameters. ``model_size_mb`` is the file's size: with ``edge.sparse_storage`` pruned
    weights count at their sparse size.
    """
    rec = Recognizer.load(model_path, "cpu")
    out: dict[str, Any] = {
        # MB = 10^6 bytes; the file holds config and tokenizer too (a few kB).
        "model_size_mb": model_path.stat().st_size / 1e6,
        "cpu_latency_ms_per_audio_s": measure_cpu_latency(rec, dev_set, LATENCY_UTTERANCES),
    }
    if cfg.edge.prune_sparsity > 0:
        float_path = best_model_path(model_path.parent, cfg.edge)
        float_model = rec.model if float_path == model_path else Recognizer.load(float_path).model
        out["sparsity"] = measured_sparsity(float_model)
    if cfg.edge.quantize != "none":
        float_arch = build_model(
            cfg.model, cfg.features.n_mels, rec.model.vocab_size, cfg.features.hop_ms
        )
        out["num_parameters"] = parameter_count(float_arch)
    return out
