"""Sparse storage of pruned weights in a ``model.pt`` (``edge.sparse_storage``).

A pruned weight is mostly exact zeros, which a dense tensor stores like any other value. Here
such a weight is stored as a bitmask of its nonzero entries (``np.packbits``: one bit per
entry, a uint8 tensor) and the nonzero values in the weight's own dtype. At sparsity ``s`` an
fp32 weight costs ``(1 - s) + 1/32`` of its dense size: 13 % at 0.9.

What is encoded: every tensor of two or more dimensions in the state dict (weights, not
biases or norms) whose encoding is smaller than it: float weights, and the int8 weights of
``dynamic_int8``/``static_int8``/``qat_int8`` layers (torch quantised tensors, also inside
the ``(weight, bias)`` tuples of int8 Linear layers: their int8 codes are encoded, the scales
and zero points kept; per-channel symmetric int8 keeps a pruned zero as code 0, so an int8
weight at sparsity ``s`` costs ``(1 - s) + 1/8`` of its int8 size). The rule needs no list of
pruned layers: the encoding is lossless for any tensor, so an unpruned one that happens to be
mostly zeros may as well be encoded too. The weight comes back bit for bit: NaNs are values, and the positions
of any ``-0.0`` are kept apart (pruning leaves +0.0, so there are usually none).

``weight_int4`` layers (their ``packed`` buffer, two 4-bit codes a byte) are encoded per code:
a zero weight there is its group's zero-point code, not a zero, so each code is first XORed
with its group's zero point (the layer's ``zero`` buffer, which stays dense), which turns every
pruned weight into a 0; then the bitmask marks the nonzero codes and those are stored packed two
a byte. At sparsity ``s`` that costs ``1/4 + (1 - s)`` of the packed size (0.35 at 0.9). The
group of a code is read from the buffers' sizes alone; any rule decodes exactly, since encoding
and decoding apply the same one.

The encoded tensors move out of the payload's ``model`` state dict into its ``sparse_model``
entry (plain dicts, lists and tensors: it loads with ``weights_only=True``), and
:func:`decode_payload` puts them back when a file is read, so every reader sees a dense state
dict.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

#: The payload entry that holds the encoded weights.
SPARSE_KEY = "sparse_model"

#: Dtypes whose tensors are encoded (int8: the codes of a quantised tensor).
_ENCODED = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int8)


def _encode_plain(tensor: torch.Tensor) -> dict[str, Any] | None:
    """Bitmask + nonzero values of a plain (not quantised) tensor, or None when not smaller."""
    if tensor.dtype not in _ENCODED or tensor.dim() < 2:
        return None
    flat = tensor.detach().cpu().contiguous().flatten()
    nonzero = flat != 0  # NaN included
    negative_zeros = (
        torch.nonzero(~nonzero & torch.signbit(flat)).flatten()
        if flat.is_floating_point()
        else torch.zeros(0, dtype=torch.long)
    )
    count = int(nonzero.sum())
    itemsize = flat.element_size()
    encoded = count * itemsize + (flat.numel() + 7) // 8 + 8 * negative_zeros.numel()
    if encoded >= flat.numel() * itemsize:
        return None
    mask = torch.from_numpy(np.packbits(nonzero.numpy()))
    # Boolean indexing copies: the values own a storage of their size, which torch.save writes.
    entry: dict[str, Any] = {"shape": list(tensor.shape), "mask": mask, "values": flat[nonzero]}
    if negative_zeros.numel():
        entry["negative_zeros"] = negative_zeros
    return entry


def _quantization(tensor: torch.Tensor) -> dict[str, Any] | None:
    """The scales and zero points of a qint8 tensor, or None for a scheme not handled."""
    if tensor.dtype != torch.qint8:
        return None
    scheme = tensor.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return {"scale": float(tensor.q_scale()), "zero_point": int(tensor.q_zero_point())}
    if scheme in (torch.per_channel_affine, torch.per_channel_symmetric):
        return {
            "scales": tensor.q_per_channel_scales(),
            "zero_points": tensor.q_per_channel_zero_points(),
            "axis": int(tensor.q_per_channel_axis()),
        }
    return None


def encode_tensor(tensor: torch.Tensor) -> dict[str, Any] | None:
    """The bitmask and nonzero values of ``tensor``, or None when dense storage is smaller.

    Args:
        tensor: any tensor; float and int8 ones, and qint8 quantised ones (their int8 codes),
            of two or more dimensions are encoded.

    Returns:
        ``{"shape": [...], "mask": uint8 packed bits (big-endian bit order, as np.packbits),
        "values": the nonzero entries in row-major order}``, with ``"negative_zeros"`` (flat
        int64 positions) when the tensor holds any ``-0.0`` and ``"quantized"`` (scales and
        zero points) for a quantised tensor; or None.
    """
    if not tensor.is_quantized:
        return _encode_plain(tensor)
    quantization = _quantization(tensor)
    entry = _encode_plain(tensor.int_repr()) if quantization is not None else None
    if entry is not None:
        entry["quantized"] = quantization
    return entry


def decode_tensor(entry: dict[str, Any]) -> torch.Tensor:
    """The dense tensor an :func:`encode_tensor` entry stands for (bit-identical).

    Raises:
        ValueError: the mask's count of set bits does not match the number of values.
    """
    shape = [int(n) for n in entry["shape"]]
    values: torch.Tensor = entry["values"]
    numel = int(np.prod(shape)) if shape else 1
    bits = np.unpackbits(entry["mask"].numpy(), count=numel).astype(bool)
    nonzero = torch.from_numpy(bits)
    if int(nonzero.sum()) != values.numel():
        raise ValueError(
            f"a sparse weight's mask has {int(nonzero.sum())} set bits for {values.numel()} values"
        )
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[nonzero] = values
    if "negative_zeros" in entry:
        dense[entry["negative_zeros"]] = -0.0
    dense = dense.reshape(shape)
    q = entry.get("quantized")
    if q is None:
        return dense
    if "axis" in q:
        return torch._make_per_channel_quantized_tensor(
            dense, q["scales"], q["zero_points"], q["axis"]
        )
    return torch._make_per_tensor_quantized_tensor(dense, q["scale"], q["zero_point"])


#: The buffers of a ``weight_int4`` layer (``speechtune.inference._int4``).
INT4_PACKED, INT4_ZERO = ".packed", ".zero"


def _int4_zero_per_code(zero: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Each code's zero point: ``zero`` is ``[rows, groups]`` and the codes run group by group;
    the group size is ``n_codes // zero.numel()`` (a padded last code, when the count is odd,
    gets 0)."""
    flat = zero.detach().cpu().flatten().to(torch.uint8)
    per_code = flat.repeat_interleave(max(1, n_codes // max(1, flat.numel())))[:n_codes]
    return torch.cat((per_code, torch.zeros(n_codes - per_code.numel(), dtype=torch.uint8)))


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    wide = packed.detach().cpu().to(torch.uint8)
    return torch.stack((wide & 15, wide >> 4), dim=-1).flatten()


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    if codes.numel() % 2:
        codes = torch.cat((codes, torch.zeros(1, dtype=torch.uint8)))
    return codes[0::2] | (codes[1::2] << 4)


def encode_int4(packed: torch.Tensor, zero: torch.Tensor) -> dict[str, Any] | None:
    """The nonzero codes of a ``weight_int4`` layer's ``packed`` buffer relative to its zero
    points (see the module docstring), or None when dense storage is smaller."""
    if packed.dtype != torch.uint8 or packed.dim() != 1 or zero.dtype != torch.uint8:
        return None
    codes = _unpack_nibbles(packed)
    delta = codes ^ _int4_zero_per_code(zero, codes.numel())
    nonzero = delta != 0
    count = int(nonzero.sum())
    if (count + 1) // 2 + (codes.numel() + 7) // 8 >= packed.numel():
        return None
    mask = torch.from_numpy(np.packbits(nonzero.numpy()))
    return {
        "int4": {"n_codes": codes.numel(), "count": count},
        "mask": mask,
        "values": _pack_nibbles(delta[nonzero]),
    }


def decode_int4(entry: dict[str, Any], zero: torch.Tensor) -> torch.Tensor:
    """The ``packed`` buffer an :func:`encode_int4` entry stands for (bit-identical).

    Raises:
        ValueError: the mask's count of set bits does not match the stored count.
    """
    n_codes, count = int(entry["int4"]["n_codes"]), int(entry["int4"]["count"])
    nonzero = torch.from_numpy(np.unpackbits(entry["mask"].numpy(), count=n_codes).astype(bool))
    if int(nonzero.sum()) != count:
        raise ValueError(
            f"an int4 weight's mask has {int(nonzero.sum())} set bits for {count} codes"
        )
    delta = torch.zeros(n_codes, dtype=torch.uint8)
    delta[nonzero] = _unpack_nibbles(entry["values"])[:count]
    return _pack_nibbles(delta ^ _int4_zero_per_code(zero, n_codes))


def _encode_value(value: Any) -> dict[str, Any] | None:
    """A state dict value encoded: a tensor, or a tuple holding tensors (int8 Linear layers
    keep ``(weight, bias)``); None when nothing in it is worth encoding."""
    if isinstance(value, torch.Tensor):
        return encode_tensor(value)
    if isinstance(value, tuple):
        items = [encode_tensor(v) if isinstance(v, torch.Tensor) else None for v in value]
        if any(items):
            return {
                "tuple": [
                    {"raw": v} if item is None else {"encoded": item}
                    for v, item in zip(value, items)
                ]
            }
    return None


def _decode_value(entry: dict[str, Any]) -> Any:
    if "tuple" in entry:
        return tuple(
            decode_tensor(item["encoded"]) if "encoded" in item else item["raw"]
            for item in entry["tuple"]
        )
    return decode_tensor(entry)


def _like(state: dict[str, Any]) -> OrderedDict[str, Any]:
    """An empty state dict with the ``_metadata`` of ``state``: the module versions that
    ``load_state_dict`` passes on (torch's int8 Linear reads its older key layout without it)."""
    out: OrderedDict[str, Any] = OrderedDict()
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def _int4_zero_of(state: Mapping[str, Any], key: str) -> torch.Tensor | None:
    """The ``zero`` buffer beside ``key`` when ``key`` is an int4 layer's ``packed`` buffer."""
    if not key.endswith(INT4_PACKED):
        return None
    zero = state.get(key[: -len(INT4_PACKED)] + INT4_ZERO)
    return (
        zero if isinstance(zero, torch.Tensor) and isinstance(state[key], torch.Tensor) else None
    )


def encode_state_dict(
    state: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Split ``state`` into the entries kept dense and the encoded ones (by key)."""
    dense = _like(state)
    sparse: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        zero = _int4_zero_of(state, key)
        entry = encode_int4(value, zero) if zero is not None else _encode_value(value)
        if entry is None:
            dense[key] = value
        else:
            sparse[key] = entry
    return dense, sparse


def encode_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``model.pt`` payload whose mostly-zero weights are stored sparse."""
    dense, sparse = encode_state_dict(payload["model"])
    if not sparse:
        return payload
    return {**payload, "model": dense, SPARSE_KEY: sparse}


def decode_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its sparse weights dense again in ``model`` (unchanged without any).

    Raises:
        ValueError: a malformed sparse entry.
    """
    sparse = payload.get(SPARSE_KEY)
    if sparse is None:
        return payload
    if not isinstance(sparse, dict) or not isinstance(payload.get("model"), dict):
        raise ValueError(f"its {SPARSE_KEY!r} entry is not a dict of sparse weights")
    model_dense = payload["model"]
    try:
        decoded = {
            key: (
                decode_int4(entry, model_dense[key[: -len(INT4_PACKED)] + INT4_ZERO])
                if "int4" in entry
                else _decode_value(entry)
            )
            for key, entry in sparse.items()
        }
    except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ValueError(f"its {SPARSE_KEY!r} entry is malformed ({exc})") from exc
    out = {k: v for k, v in payload.items() if k != SPARSE_KEY}
    model = _like(payload["model"])
    model.update(payload["model"])
    model.update(decoded)
    out["model"] = model
    return out
