"""Batches of cached features and token ids on the device, and the precision they run in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """A padded batch on the device."""

    feats: torch.Tensor  # [B, T, F]
    feat_lens: torch.Tensor
    targets: torch.Tensor  # [B, U], padded with -1
    target_lens: torch.Tensor
    audio_seconds: float


def collate(
    ids: Sequence[str],
    feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    durations: dict[str, float],
    device: torch.device,
) -> Batch:
    """The utterances ``ids`` as one padded batch (targets padded with -1) on ``device``."""
    f = [feats[i] for i in ids]
    t = [targets[i] for i in ids]
    flens = torch.tensor([x.shape[0] for x in f])
    x = torch.zeros(len(f), int(flens.max()), f[0].shape[1])
    for k, v in enumerate(f):
        x[k, : v.shape[0]] = v
    tlens = torch.tensor([len(v) for v in t])
    y = torch.full((len(t), max(1, int(tlens.max()))), -1, dtype=torch.long)
    for k, tokens in enumerate(t):
        y[k, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    nb = device.type == "cuda"
    return Batch(
        x.to(device, non_blocking=nb),
        flens.to(device),
        y.to(device, non_blocking=nb),
        tlens.to(device),
        sum(durations[i] for i in ids),
    )


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast where the recipe's ``train.precision`` asks for it and the device suits it."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type != "cuda":
        # bf16 autocast on CPU is slow and numerically worse than fp32 for these small models.
        use_bf16 = False
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
