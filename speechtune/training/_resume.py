"""Continuing a training run: what may change between the saved run and the resumed one."""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from speechtune.config import (
    RecipeConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    flatten,
)

log = logging.getLogger("speechtune.training._loop")  # the messages users already know


def schedule_epochs(t: TrainConfig) -> int:
    """The lr schedule's horizon in epochs: ``train.schedule_epochs``, or ``train.epochs`` when unset."""
    return t.schedule_epochs if t.schedule_epochs is not None else t.epochs


_EPOCH_KEYS = ("train.epochs", "train.schedule_epochs")


def check_resume_config(cfg: RecipeConfig, path: Path) -> None:
    """Resuming with other hyperparameters would silently mix two runs: refuse, naming the keys.

    One change is accepted: a larger ``train.epochs`` (training continues where the saved run
    ended; multi-fidelity promotion relies on it). ``train.schedule_epochs`` may then differ as
    long as the schedule's horizon does not; when the horizon moves (e.g. neither run set
    ``schedule_epochs``) the continuation is allowed but is not the same as one straight run,
    which is logged. With the epochs unchanged, a schedule horizon that moves is refused.
    """
    if not path.is_file():
        return
    saved_cfg = config_from_dict(yaml.safe_load(path.read_text()), str(path))
    saved = flatten(config_to_dict(saved_cfg))
    now = flatten(config_to_dict(cfg))
    changed = sorted(
        k for k in set(saved) | set(now) if k not in _EPOCH_KEYS and saved.get(k) != now.get(k)
    )
    old_e, new_e = saved_cfg.train.epochs, cfg.train.epochs
    old_h, new_h = schedule_epochs(saved_cfg.train), schedule_epochs(cfg.train)
    if new_e < old_e:
        changed.append("train.epochs")
    if new_e == old_e and old_h != new_h:
        changed.append("train.schedule_epochs")
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:10])
        raise ValueError(
            f"cannot resume {path.parent}: the config differs from the one it was started with ({diffs}). "
            "Only a larger train.epochs may change when continuing a run. "
            "Use a new output directory, or resume with the original config."
        )
    if new_e > old_e and old_h != new_h:
        log.warning(
            "continuing %s from %d to %d epochs with the lr schedule's horizon moved from %d to %d epochs: "
            "the result differs from one straight %d-epoch run (set train.schedule_epochs=%d from the start "
            "for an exact continuation)",
            path.parent,
            old_e,
            new_e,
            old_h,
            new_h,
            new_e,
            new_e,
        )
