"""From architecture weights to a discrete architecture, and from that to a recipe."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import yaml

from speechtune.config import RecipeConfig, config_from_dict, config_to_dict


def derive_architecture(
    weights: Sequence[Sequence[float]], ops: Sequence[str], exclude: Sequence[str] = ()
) -> list[str]:
    """The argmax op of every block (among ops not in ``exclude``), never ``zero`` in every block.

    DARTS derives each edge's strongest op. A block may derive ``zero`` (it is dropped, and the
    encoder is shallower), but an encoder of zeros only maps features straight to the CTC head;
    then the block whose best non-zero op has the largest weight gets that op instead.

    Args:
        weights: ``softmax(alpha)``, ``[blocks][ops]``.
        ops: The op names of the columns.
        exclude: Ops never derived (the guard excludes parameter-free ops after a collapse).

    Returns:
        One op name per block.
    """
    allowed = [k for k, op in enumerate(ops) if op not in exclude]
    if not allowed:
        raise ValueError(f"every candidate op is excluded ({', '.join(exclude)})")
    arch = [ops[max(allowed, key=lambda k: row[k])] for row in weights]
    if not all(op == "zero" for op in arch):
        return arch
    nonzero = [k for k in allowed if ops[k] != "zero"]
    if not nonzero:
        raise ValueError("the candidate ops are all 'zero'; nothing can be derived")
    best_block = max(range(len(weights)), key=lambda b: max(weights[b][k] for k in nonzero))
    best_op = max(nonzero, key=lambda k: weights[best_block][k])
    arch[best_block] = ops[best_op]
    return arch


def derived_recipe(base: RecipeConfig, ops: Sequence[str]) -> RecipeConfig:
    """``base`` with a searched encoder of ``ops`` (validated like any recipe)."""
    model = dataclasses.replace(
        base.model, encoder="searched", num_layers=len(ops), block_ops=",".join(ops)
    )
    # Through the loader, so that a derived recipe obeys every rule a written one does.
    return config_from_dict(config_to_dict(dataclasses.replace(base, model=model)))


def write_recipe(cfg: RecipeConfig, path: Path, header: str = "") -> None:
    """Write ``cfg`` as a complete recipe YAML (``speechtune train --config`` reads it)."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text)
