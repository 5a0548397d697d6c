"""Rules of ``model.block_ops``, the per-block ops of the searched encoder."""

from __future__ import annotations

from typing import Any

from speechtune.config._schema import BLOCK_OPS, ModelConfig


def block_ops_problems(m: ModelConfig) -> list[tuple[str, str, Any]]:
    """``(key, rule, value)`` for each rule ``model.block_ops`` breaks (encoder=searched only):
    known ops, none empty, one per ``model.num_layers``, and heads dividing d_model for mhsa."""
    if m.encoder != "searched":
        return []
    ops = [op.strip() for op in m.block_ops.split(",")]
    allowed = ", ".join(BLOCK_OPS)
    if not m.block_ops.strip() or not all(ops):
        rule = (
            f"must list one op per block, comma-separated (e.g. 'mhsa,conv15,ff'); ops: {allowed}"
        )
        return [("model.block_ops", rule, m.block_ops)]
    bad = [op for op in ops if op not in BLOCK_OPS]
    if bad:
        return [("model.block_ops", f"unknown op {bad[0]!r}; ops: {allowed}", m.block_ops)]
    out: list[tuple[str, str, Any]] = []
    if len(ops) != m.num_layers:
        rule = f"has {len(ops)} op(s) but model.num_layers={m.num_layers}; give one op per block"
        out.append(("model.block_ops", rule, m.block_ops))
    if "mhsa" in ops and m.d_model % m.num_heads:
        rule = f"must be divisible by model.num_heads={m.num_heads} (the mhsa op)"
        out.append(("model.d_model", rule, m.d_model))
    return out
