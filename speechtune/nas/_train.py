"""Training the supernet: first-order DARTS, and single-path weight sharing.

**DARTS** (Liu et al., 2019, first-order variant): every step, one Adam step on the
architecture weights ``alpha`` with a dev batch (the network weights fixed), then one step on the
network weights with a training batch (``alpha`` fixed). The second-order variant (unrolling one
weight step to estimate how alpha's change moves the trained weights) costs about twice as much
and is left out; Liu et al. report first-order DARTS a little worse but usable.

**Weight sharing** (Guo et al., 2020, "Single Path One-Shot NAS"): every training batch runs
one path drawn uniformly (one op per block), so that every architecture of the space gets
trained weights to be ranked with afterwards, without a controller or alpha.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from speechtune.features import SpecAugment
from speechtune.inference import Recognizer
from speechtune.models import PARAMETER_FREE_OPS
from speechtune.nas._config import NasConfig
from speechtune.nas._data import SearchData, specaugment
from speechtune.nas._derive import derive_architecture
from speechtune.nas._guard import CollapseGuard, OpWeightsLog
from speechtune.nas._supernet import Supernet
from speechtune.training import Batch, build_optimizer, evaluate_dev, lr_at, set_lr

log = logging.getLogger(__name__)


@dataclass
class SupernetRun:
    """A trained supernet and what its training recorded."""

    supernet: Supernet
    op_weights: OpWeightsLog
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""
    arch: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class _Trainer:
    """The weight side of supernet training: optimiser, lr schedule, SpecAugment, clipping."""

    def __init__(self, supernet: Supernet, data: SearchData, cfg: NasConfig) -> None:
        recipe = supernet.recipe
        self.supernet = supernet
        self.data = data
        self.recipe = recipe
        self.batch_size = recipe.train.batch_size
        steps = data.num_batches(data.train, self.batch_size) * cfg.search.epochs
        self.total_steps = max(1, steps)
        self.optimizer = build_optimizer(
            [{"params": list(supernet.weight_parameters())}], recipe.optim, recipe.optim.lr
        )
        self.specaug: SpecAugment | None = specaugment(recipe, data.device)
        self.generator = torch.Generator(device=data.device).manual_seed(cfg.search.seed + 1)
        self.step = 0

    def loss(self, batch: Batch, augment: bool) -> torch.Tensor:
        x = self.data.cmvn(batch.feats) if self.data.cmvn is not None else batch.feats
        if augment and self.specaug is not None:
            x = self.specaug(x, batch.feat_lens, generator=self.generator)
        out = self.supernet(x, batch.feat_lens, batch.targets, batch.target_lens)
        loss = out["loss"]
        assert loss is not None  # the loss is always computed
        return loss

    def weight_step(self, batch: Batch) -> float:
        """One optimiser step on the network weights (in the supernet's current mode)."""
        lr = lr_at(
            self.step, self.recipe.schedule, self.recipe.optim.lr, self.total_steps,
            self.recipe.model.d_model,
        )  # fmt: skip
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch, augment=True)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(f"the supernet's training loss is {value} at step {self.step}")
        loss.backward()
        clip = self.recipe.train.grad_clip
        torch.nn.utils.clip_grad_norm_(
            self.supernet.weight_parameters(), clip if clip is not None else float("inf")
        )
        self.optimizer.step()
        self.step += 1
        return value

    def evaluate(self) -> dict[str, float]:
        """Dev loss, WER and CER of the supernet in its current mode (greedy CTC)."""
        rec = Recognizer(self.recipe, self.data.tokenizer, self.data.cmvn, self.supernet.model)
        dev = evaluate_dev(
            rec, self.data.dev, self.data.feats, self.data.targets, self.recipe,
            self.data.device, full_decode=False,
        )  # fmt: skip
        self.supernet.model.train()
        return {
            "dev_loss": float(dev["dev_loss"]),
            "wer": float(dev["wer"]),
            "cer": float(dev["cer"]),
        }


def _seeded_supernet(cfg: NasConfig, data: SearchData) -> tuple[Supernet, _Trainer]:
    """A supernet initialised from ``search.seed`` (both searches start alike) and its trainer."""
    torch.manual_seed(cfg.search.seed)
    supernet = Supernet(
        cfg.recipe, cfg.search.ops, cfg.search.num_blocks,
        cfg.recipe.features.n_mels, data.tokenizer.vocab_size,
    ).to(data.device)  # fmt: skip
    return supernet, _Trainer(supernet, data, cfg)


def _cycle(make: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """Batches of ``make(epoch)`` for epoch 1, 2, ... without end (dev batches for alpha)."""
    epoch = 1
    while True:
        yield from make(epoch)
        epoch += 1


def _beta_decay(alpha: torch.Tensor) -> torch.Tensor:
    """Beta-Decay (Ye et al., 2022): the mean over blocks of ``logsumexp(alpha)``.

    Its gradient is ``softmax(alpha)``: it pulls the strongest ops hardest, which keeps the
    softmax from saturating early on whichever op (often skip) happens to lead.
    """
    return torch.logsumexp(alpha, dim=-1).mean()


def train_darts(
    cfg: NasConfig, data: SearchData, progress: Callable[[str], None] | None = None
) -> SupernetRun:
    """First-order DARTS over ``cfg.search``'s space, with the collapse guard.

    Args:
        cfg: The NAS config (``search``, ``darts`` sections).
        data: The prepared train and dev data.
        progress: Receives one line per epoch.

    Returns:
        The trained supernet, its op weights per epoch, and the derived architecture: the
        argmax of the last epoch, or of the last epoch before a collapse the guard stopped.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    supernet, trainer = _seeded_supernet(cfg, data)
    d = cfg.darts
    # DARTS' architecture optimiser: Adam, betas (0.5, 0.999), weight decay 1e-3.
    arch_opt = torch.optim.Adam(
        [supernet.alpha], lr=d.arch_lr, betas=(0.5, 0.999), weight_decay=d.arch_weight_decay
    )
    bs = trainer.batch_size
    dev_batches = _cycle(lambda e: data.batches(data.dev, bs, cfg.search.seed + 7, e))
    guard = CollapseGuard(d.guard.max_parameter_free, d.guard.stable_epochs)
    ops_log = OpWeightsLog(list(cfg.search.ops))
    run = SupernetRun(supernet, ops_log)
    supernet.use_mixed()
    ops_log.record(0, supernet.op_weights().tolist())
    for epoch in range(1, cfg.search.epochs + 1):
        supernet.train()
        losses = []
        search_alpha = epoch > d.warmup_epochs
        for batch in data.batches(data.train, bs, cfg.search.seed, epoch):
            if search_alpha:
                # alpha step on a dev batch, weights fixed (their grads are zeroed before use).
                supernet.use_mixed()
                arch_opt.zero_grad(set_to_none=True)
                loss = trainer.loss(next(dev_batches), augment=False)
                if d.beta_decay > 0:
                    loss = loss + d.beta_decay * _beta_decay(supernet.alpha)
                loss.backward()
                arch_opt.step()
            supernet.use_mixed()
            losses.append(trainer.weight_step(batch))
            supernet.alpha.grad = None  # the weight step's alpha gradient is not a dev signal
        supernet.use_mixed()
        dev = trainer.evaluate()
        weights = supernet.op_weights().tolist()
        ops_log.record(epoch, weights, train_loss=sum(losses) / max(len(losses), 1), **dev)
        arch = ops_log.epochs[-1]["argmax"]
        run.history.append(
            {"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1), **dev}
        )
        decision = guard.update(arch) if search_alpha else None
        if progress:
            progress(
                f"darts epoch {epoch}/{cfg.search.epochs}  train_loss {run.history[-1]['train_loss']:.3f}  "
                f"dev_loss {dev['dev_loss']:.3f}  WER {dev['wer']:.3f}  argmax {','.join(arch)}"
            )
        if decision is not None and decision.stop:
            run.stop_reason = f"guard after epoch {epoch}: {decision.reason}"
            if decision.collapsed:
                # The last architecture before the collapse; collapsed from the first searching
                # epoch on, the strongest op with weights of every block.
                run.arch = guard.last_healthy or derive_architecture(
                    supernet.op_weights().tolist(), cfg.search.ops, exclude=PARAMETER_FREE_OPS
                )
            break
    if not run.arch:
        run.arch = derive_architecture(supernet.op_weights().tolist(), cfg.search.ops)
    if not run.stop_reason:
        run.stop_reason = f"completed {cfg.search.epochs} epochs"
    run.cpu_seconds = time.process_time() - c0
    run.wall_seconds = time.perf_counter() - t0
    return run


def random_path(num_blocks: int, num_ops: int, rng: random.Random) -> list[int]:
    """One op index per block, uniformly."""
    return [rng.randrange(num_ops) for _ in range(num_blocks)]


def train_weight_sharing(
    cfg: NasConfig, data: SearchData, progress: Callable[[str], None] | None = None
) -> SupernetRun:
    """Train the supernet with a uniformly drawn single path per batch (SPOS).

    Args:
        cfg: The NAS config (``search`` section).
        data: The prepared train and dev data.
        progress: Receives one line per epoch.

    Returns:
        The trained supernet (``op_weights`` stays empty: there is no alpha to record).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    supernet, trainer = _seeded_supernet(cfg, data)
    rng = random.Random(cfg.search.seed)
    run = SupernetRun(supernet, OpWeightsLog(list(cfg.search.ops)))
    n_ops, n_blocks = len(cfg.search.ops), cfg.search.num_blocks
    for epoch in range(1, cfg.search.epochs + 1):
        supernet.train()
        losses = []
        for batch in data.batches(data.train, trainer.batch_size, cfg.search.seed, epoch):
            supernet.use_path(random_path(n_blocks, n_ops, rng))
            losses.append(trainer.weight_step(batch))
        row = {"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1)}
        run.history.append(row)
        if progress:
            progress(
                f"weight-sharing epoch {epoch}/{cfg.search.epochs}  train_loss {row['train_loss']:.3f}"
            )
    run.stop_reason = f"completed {cfg.search.epochs} epochs"
    run.cpu_seconds = time.process_time() - c0
    run.wall_seconds = time.perf_counter() - t0
    return run


def evaluate_path(
    supernet: Supernet, data: SearchData, cfg: NasConfig, ops: list[str]
) -> dict[str, float]:
    """Dev loss, WER and CER of architecture ``ops`` with the supernet's shared weights."""
    supernet.use_path([cfg.search.ops.index(op) for op in ops])
    trainer_recipe = supernet.recipe
    rec = Recognizer(trainer_recipe, data.tokenizer, data.cmvn, supernet.model)
    dev = evaluate_dev(
        rec, data.dev, data.feats, data.targets, trainer_recipe, data.device, full_decode=False
    )
    return {"dev_loss": float(dev["dev_loss"]), "wer": float(dev["wer"]), "cer": float(dev["cer"])}
