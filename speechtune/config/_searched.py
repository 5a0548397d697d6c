"""Rules of ``model.block_ops``, the per-block ops of the searched encoder.

``model.block_ops`` is one comma-separated string (``"conv15,mhsa,ff"``); a tuning space may
instead give one key per block (``model.block_ops.1``, ``model.block_ops.2``, ...), which
:func:`join_block_ops` joins into it (and into ``model.num_layers``) on the way to a recipe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


#: Per-block keys of the searched encoder: ``model.block_ops.1``, ``model.block_ops.2``, ...
BLOCK_KEY_PREFIX = "model.block_ops."


def is_block_key(key: str) -> bool:
    """Whether a dotted key is a per-block op key (``model.block_ops.<i>``), well-formed or not."""
    return key.startswith(BLOCK_KEY_PREFIX)


def _block_number(suffix: str) -> int | None:
    """The block number of a key's suffix (``"3"`` -> 3); None unless a positive integer."""
    if not (suffix.isascii() and suffix.isdigit()) or suffix.startswith("0"):
        return None
    return int(suffix)


def block_key_problems(keys: Iterable[str]) -> list[tuple[str, str, Any]]:
    """``(key, rule, value)`` for per-block keys numbered badly: not 1, 2, ... with no gap.

    Args:
        keys: Dotted per-block keys (``model.block_ops.<i>``), in any order.

    Returns:
        One problem per key whose number is not a positive integer, else one for the first
        gap (naming the key after it), else none.
    """
    out: list[tuple[str, str, Any]] = []
    numbers: dict[int, str] = {}
    for key in keys:
        number = _block_number(key[len(BLOCK_KEY_PREFIX) :])
        if number is None:
            rule = (
                "a block number must be a whole number from 1 (model.block_ops.1, "
                "model.block_ops.2, ...: one op per encoder block, bottom first)"
            )
            out.append((key, rule, key[len(BLOCK_KEY_PREFIX) :]))
        else:
            numbers[number] = key
    if out:
        return out
    for expected, number in enumerate(sorted(numbers), start=1):
        if number != expected:
            rule = (
                f"block {expected} is missing: number the per-block keys 1, 2, 3, ... with no gap"
            )
            return [(numbers[number], rule, sorted(numbers))]
    return []


def join_block_ops(data: Any) -> tuple[Any, list[tuple[str, str, Any]]]:
    """A nested recipe whose per-block ops (``model.block_ops.<i>``) become ``model.block_ops``.

    Dotted per-block keys (a tuning space's ``model.block_ops.1``, ``--set
    model.block_ops.2=ff``) unflatten to a mapping under ``model.block_ops``; this joins it, in
    block order, into the comma-separated string and sets ``model.num_layers`` to the number of
    blocks. Every path from a flat config to a recipe goes through
    :func:`~speechtune.config.config_from_dict`, which calls this first, so a trial, a
    ``best.yaml`` and a validated space all see the same recipe.

    Args:
        data: A nested recipe mapping (anything else is returned unchanged).

    Returns:
        The recipe with ``model.block_ops`` joined (a copy; ``data`` is not changed) and the
        ``(key, rule, value)`` problems: badly numbered blocks, an unknown op, or blocks with an
        encoder other than ``searched``. With problems the per-block mapping is dropped, so
        that each problem is reported once, under its own key.
    """
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping) or not isinstance(model.get("block_ops"), Mapping):
        return data, []
    blocks = {f"{BLOCK_KEY_PREFIX}{k}": v for k, v in model["block_ops"].items()}
    problems = block_key_problems(blocks)
    if not problems:
        allowed = ", ".join(BLOCK_OPS)
        for key, op in blocks.items():
            if not isinstance(op, str) or op.strip() not in BLOCK_OPS:
                problems.append((key, f"unknown op {op!r}; ops: {allowed}", op))
    encoder = model.get("encoder", ModelConfig().encoder)
    if encoder != "searched" and blocks:
        first = next(iter(blocks))
        rule = (
            f"per-block ops build the searched encoder, but model.encoder is {encoder!r}; "
            "set model.encoder: searched"
        )
        problems.append((first, rule, blocks[first]))
    rest = {k: v for k, v in model.items() if k != "block_ops"}
    if problems:
        return {**data, "model": rest}, problems
    if not blocks:  # an empty mapping: no ops, which the rules of the string report
        return {**data, "model": {**rest, "block_ops": ""}}, []
    ordered = [blocks[k].strip() for k in sorted(blocks, key=lambda k: int(k.split(".")[-1]))]
    joined = {**rest, "block_ops": ",".join(ordered), "num_layers": len(ordered)}
    return {**data, "model": joined}, []


def split_block_ops(flat: Mapping[str, Any]) -> dict[str, Any]:
    """A flat config with ``model.block_ops`` also as per-block keys (the inverse of the join).

    A ``best.yaml`` (or a trial's config) holds the joined string; a space of per-block keys
    (``model.block_ops.1``, ...) can read it only per block. Keys already present are kept.

    Args:
        flat: A flat config (dotted keys).

    Returns:
        A copy with ``model.block_ops.<i>`` for each op of a non-empty ``model.block_ops`` string.
    """
    out = dict(flat)
    joined = flat.get("model.block_ops")
    if isinstance(joined, str) and joined.strip():
        for i, op in enumerate(joined.split(","), start=1):
            out.setdefault(f"{BLOCK_KEY_PREFIX}{i}", op.strip())
    return out
