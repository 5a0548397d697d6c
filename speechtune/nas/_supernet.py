"""The supernet: an ASR model whose every encoder block holds all candidate ops.

Two ways to run it (Liu et al., 2019, "DARTS"; Guo et al., 2020, "Single Path One-Shot"):

* **mixed** (DARTS): each block computes ``x + dropout(sum_k w_k op_k(LN(x)))`` with
  ``w = softmax(alpha[block])``; the architecture weights ``alpha`` get gradients;
* **single path** (weight sharing): each block runs one op, chosen per batch; every candidate
  architecture is a path through the same shared weights.

The ops are :data:`speechtune.models.SEARCH_OPS`, the very modules the discrete ``searched``
encoder builds, so a derived architecture is what the search scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from speechtune.config import RecipeConfig
from speechtune.models import SEARCH_OPS, ASRModel, SearchedEncoder, build_model


class MixedBlock(nn.Module):
    """One encoder block with every candidate op; see the module docstring for its two modes.

    Args:
        ops: Candidate op names.
        d_model, ff_dim, num_heads, dropout: Sizes of the ops (as in the recipe's model section).
    """

    def __init__(
        self, ops: Sequence[str], d_model: int, ff_dim: int, num_heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.op_names = list(ops)
        self.norm = nn.LayerNorm(d_model)
        self.ops = nn.ModuleList(SEARCH_OPS[op](d_model, ff_dim, num_heads, dropout) for op in ops)
        self.dropout = nn.Dropout(dropout)
        # Set by the Supernet before each forward: the mixing weights (mixed mode) or the index
        # of the one op to run (single-path mode).
        self.weights: torch.Tensor | None = None
        self.path: int | None = None

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.path is not None:
            if self.op_names[self.path] == "zero":
                return x
            return x + self.dropout(self.ops[self.path](self.norm(x), valid))
        if self.weights is None:
            raise RuntimeError("MixedBlock needs weights or a path (set by the Supernet)")
        y = self.norm(x)
        mixed = torch.zeros_like(x)
        for k, (name, op) in enumerate(zip(self.op_names, self.ops)):
            if name != "zero":  # zero adds nothing, but its weight still takes share from the rest
                mixed = mixed + self.weights[k] * op(y, valid)
        return x + self.dropout(mixed)


class Supernet(nn.Module):
    """The supernet ASR model and its architecture weights ``alpha [num_blocks, num_ops]``.

    Args:
        cfg: The base recipe (data, features and the model's sizes and head are used).
        ops: Candidate op names of every block.
        num_blocks: Encoder blocks.
        input_dim: Feature dimension.
        vocab_size: Output classes (the tokenizer's).
    """

    def __init__(
        self,
        cfg: RecipeConfig,
        ops: Sequence[str],
        num_blocks: int,
        input_dim: int,
        vocab_size: int,
    ) -> None:
        super().__init__()
        self.op_names = list(ops)
        self.num_blocks = num_blocks
        m = cfg.model
        # The ordinary ASR model around a placeholder encoder, whose blocks are then replaced by
        # mixed ones: subsampling, heads and losses are those of the recipe.
        model_cfg = dataclasses.replace(
            m, encoder="searched", num_layers=num_blocks, block_ops=",".join(["skip"] * num_blocks)
        )
        self.recipe = dataclasses.replace(cfg, model=model_cfg)
        self.model: ASRModel = build_model(model_cfg, input_dim, vocab_size, cfg.features.hop_ms)
        blocks = [
            MixedBlock(ops, m.d_model, m.ff_dim, m.num_heads, m.dropout) for _ in range(num_blocks)
        ]
        self.model.encoder = SearchedEncoder(blocks, m.d_model, m.dropout)
        # Zeros: every op starts with the same weight (DARTS initialises 1e-3 * randn; equal
        # weights make the recorded trajectory start from an unbiased point).
        self.alpha = nn.Parameter(torch.zeros(num_blocks, len(ops)))

    @property
    def blocks(self) -> list[MixedBlock]:
        """The mixed blocks, bottom first."""
        encoder = self.model.encoder
        assert isinstance(encoder, SearchedEncoder)  # set in __init__
        return [b for b in encoder.layers if isinstance(b, MixedBlock)]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """The network weights (everything but ``alpha``)."""
        return self.model.parameters()

    def op_weights(self) -> torch.Tensor:
        """``softmax(alpha)`` per block, ``[num_blocks, num_ops]`` (detached, on the CPU)."""
        return torch.softmax(self.alpha.detach(), dim=-1).cpu()

    def use_mixed(self) -> None:
        """Mixed mode: each block weighs its ops by ``softmax(alpha)`` (with gradients).

        Call before every forward pass: the weights are recomputed from ``alpha`` so that the
        graph of this pass reaches ``alpha``.
        """
        weights = torch.softmax(self.alpha, dim=-1)
        for i, block in enumerate(self.blocks):
            block.path = None
            block.weights = weights[i]

    def use_path(self, path: Sequence[int]) -> None:
        """Single-path mode: block ``i`` runs op ``path[i]`` only."""
        if len(path) != self.num_blocks:
            raise ValueError(f"a path needs {self.num_blocks} op indices, got {len(path)}")
        for block, k in zip(self.blocks, path):
            block.weights = None
            block.path = int(k)

    def path_ops(self, path: Sequence[int]) -> list[str]:
        """The op names of ``path``."""
        return [self.op_names[int(k)] for k in path]

    def forward(
        self,
        feats: torch.Tensor,
        feat_lens: torch.Tensor,
        targets: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> dict[str, torch.Tensor | None]:
        """The ASR losses in the current mode (see :meth:`use_mixed`, :meth:`use_path`)."""
        return self.model(feats, feat_lens, targets, target_lens)
