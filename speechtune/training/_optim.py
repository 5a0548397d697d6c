"""Optimisers built from :class:`~speechtune.config._schema.OptimConfig`, and lr scaling.

Each optimiser reads only some fields of ``OptimConfig``; :data:`OPTIMIZER_PARAMS` says which,
so a tuner can make ``optim.beta1`` conditional on ``optim.name in (adam, adamw)`` instead of
searching over knobs that have no effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from speechtune.config import OptimConfig
from speechtune.models import FRONTEND, layer_of

__all__ = [
    "OPTIMIZER_PARAMS",
    "build_optimizer",
    "effective_batch",
    "layer_lr_groups",
    "scale_lr",
    "set_lr",
]

# The OptimConfig fields each optimiser uses (besides ``lr``, which every optimiser uses).
OPTIMIZER_PARAMS: dict[str, tuple[str, ...]] = {
    "adam": ("beta1", "beta2", "eps", "weight_decay"),
    "adamw": ("beta1", "beta2", "eps", "weight_decay"),
    "sgd": ("momentum", "nesterov", "weight_decay"),
    # Adafactor estimates second moments from factored row/column statistics with its own
    # decay schedule (beta2_decay) and no first moment, so betas and eps do not apply.
    "adafactor": ("weight_decay",),
}

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _adam(params: Params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def _adamw(params: Params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        params, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def _sgd(params: Params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.nesterov and cfg.momentum <= 0.0:
        raise ValueError(
            f"optim.nesterov=true requires optim.momentum > 0, but got momentum={cfg.momentum}."
        )
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _adafactor(params: Params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adafactor(params, lr=lr, weight_decay=cfg.weight_decay)


_BUILDERS: dict[str, Callable[[Params, OptimConfig, float], torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
    "adafactor": _adafactor,
}


# Batch-size ratio -> lr multiplier; keys mirror config._schema.LR_SCALING.
_LR_SCALING_RULES: dict[str, Callable[[float], float]] = {
    "none": lambda ratio: 1.0,
    "linear": lambda ratio: ratio,
    "sqrt": math.sqrt,
}


def build_optimizer(params: Params, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """Build the optimiser named by ``cfg.name``.

    Fields used per optimiser (see :data:`OPTIMIZER_PARAMS`):

    * ``adam`` / ``adamw``: ``beta1``, ``beta2``, ``eps``, ``weight_decay`` (AdamW decouples it);
    * ``sgd``: ``momentum``, ``nesterov`` (needs ``momentum > 0``), ``weight_decay``;
    * ``adafactor`` (``torch.optim.Adafactor``): ``weight_decay`` only.

    Args:
        params: Parameters or parameter groups to optimise.
        cfg: The optimiser configuration.
        lr: Initial learning rate (the schedule sets it every step; usually the peak lr after
            :func:`scale_lr`). ``cfg.lr`` is not read here so that callers control scaling.

    Returns:
        The optimiser.

    Raises:
        ValueError: On an unknown optimiser name or an inconsistent combination of fields.
    """
    builder = _BUILDERS.get(cfg.name)
    if builder is None:
        raise ValueError(f"optim.name must be one of {sorted(_BUILDERS)}, but got {cfg.name!r}.")
    if not lr > 0.0:
        raise ValueError(f"learning rate must be > 0, but got lr={lr}.")
    return builder(params, cfg, lr)


def effective_batch(batch_size: int, grad_accum: int, devices: int) -> int:
    """Utterances contributing to one optimiser step.

    Args:
        batch_size: Utterances per device per forward pass.
        grad_accum: Forward passes accumulated per optimiser step.
        devices: Data-parallel devices.

    Returns:
        ``batch_size * grad_accum * devices``.

    Raises:
        ValueError: If any argument is below 1.
    """
    args = (("batch_size", batch_size), ("grad_accum", grad_accum), ("devices", devices))
    for name, value in args:
        if value < 1:
            raise ValueError(f"{name} must be >= 1, but got {name}={value}.")
    return batch_size * grad_accum * devices


def scale_lr(lr: float, effective_batch: int, reference_batch: int, rule: str) -> float:
    """Scale a learning rate tuned at ``reference_batch`` to ``effective_batch``.

    Args:
        lr: Learning rate at the reference batch size.
        effective_batch: The batch size actually used per optimiser step.
        reference_batch: The batch size ``lr`` was chosen for.
        rule: ``"none"`` (unchanged), ``"linear"`` (Goyal et al., 2017: ``lr * eb / ref``) or
            ``"sqrt"`` (``lr * sqrt(eb / ref)``, common for Adam-style optimisers).

    Returns:
        The scaled learning rate.

    Raises:
        ValueError: On an unknown rule or non-positive batch sizes.
    """
    factor = _LR_SCALING_RULES.get(rule)
    if factor is None:
        raise ValueError(
            f"train.lr_scaling must be one of {sorted(_LR_SCALING_RULES)}, but got {rule!r}."
        )
    if effective_batch < 1 or reference_batch < 1:
        raise ValueError(
            "batch sizes must be >= 1, but got "
            f"effective_batch={effective_batch}, reference_batch={reference_batch}."
        )
    return lr * factor(effective_batch / reference_batch)


def layer_lr_groups(model: nn.Module, num_layers: int, decay: float) -> list[dict[str, Any]]:
    """Parameter groups for layer-wise learning-rate decay, trainable parameters only.

    Encoder layer ``i`` (0 is the bottom) of ``num_layers`` trains at ``lr * decay**(num_layers
    - i)``, the front end at ``decay**(num_layers + 1)`` and everything above the encoder
    layers (heads, decoder) at ``lr``: the lower a layer, the more general what it learnt in
    pretraining, and the less it should move. Frozen parameters (``requires_grad`` off) are in
    no group, so neither updates nor weight decay reach them.

    Args:
        model: An ASR model (names as :func:`~speechtune.models.layer_of` reads them).
        num_layers: Encoder layers ``N``.
        decay: In (0, 1]; 1 puts every trainable parameter in one group at the full rate.

    Returns:
        Groups ``{"params": [...], "lr_scale": s}``, the full-rate group first (the epoch line
        logs group 0's rate); :func:`set_lr` applies the scales.

    Raises:
        ValueError: ``decay`` outside (0, 1].
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"finetune.layer_lr_decay must be in (0, 1], but got {decay}.")
    groups: dict[float, list[torch.Tensor]] = {1.0: []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        depth = layer_of(name)
        if depth is None or decay == 1.0:
            scale = 1.0
        elif depth == FRONTEND:
            scale = decay ** (num_layers + 1)
        else:
            scale = decay ** (num_layers - depth)
        groups.setdefault(scale, []).append(param)
    return [{"params": ps, "lr_scale": s} for s, ps in groups.items() if ps]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's rate to ``lr`` times its ``lr_scale`` (1 without one).

    The schedule is a function of the step that gives the full rate; scaling it per group keeps
    warm-up, decay and plateau reductions the same for every layer.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
