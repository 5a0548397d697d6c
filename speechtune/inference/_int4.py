"""Weight-only int4 of a speech model (``edge.quantize: weight_int4``), stored packed.

After training, the weight of every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` is cut into
groups of ``edge.int4_group_size`` consecutive inputs per output row (a conv's row is its
flattened input channels x kernel); each group gets an fp16 scale and
a 4-bit zero point, and its entries become unsigned 4-bit codes, two to a byte::

    w ~= (q - zero) * scale,    q in 0..15,    scale = (max(w, 0) - min(w, 0)) / 15

The range always holds 0, so a zero weight (a pruned one) stays exactly zero. The model file
holds only the packed codes, scales and zero points: 19 bytes per 32 fp32 weights (128 bytes),
about 6.7x smaller with groups of 32, 7.3x with 64. The layers dequantise their weight to float
in each forward (:class:`Int4Linear`, :class:`Int4Conv1d`, :class:`Int4Conv2d`): int4 saves
disk and download, not compute. Biases, norms, embeddings and LSTM/GRU weights stay float.

Why not torchao: torchao 0.18 installs beside torch 2.13, but its CPU int4 weight-only path
(``IntxWeightOnlyConfig(weight_dtype=torch.int4)``) stores each int4 value in a whole int8
(``IntxUnpackedToInt8Tensor``), so the file shrinks about 4x, not 7x; its packed int4 formats
need CUDA or extra kernel packages (``Int4WeightOnlyConfig`` asks for ``mslk`` on the CPU); and
every reader of a ``model.pt`` would need torchao to rebuild its tensor subclasses. These layers
are plain torch: a ``model.pt`` holds uint8/fp16 buffers (``torch.load(weights_only=True)``)
and the dequantisation traces into TorchScript and ONNX as ordinary ops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

#: The ``quantization`` entry of a weight_int4 model file.
INT4_STAGE = "int4"
#: Exact types converted (not subclasses: e.g. MultiheadAttention's out_proj is read as a Linear).
INT4_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Largest code of an unsigned 4-bit value.
QMAX = 15


def _group_layout(shape: torch.Size, group_size: int) -> tuple[int, int, int]:
    """``(rows, group, groups per row)`` of a weight: rows are outputs, a row shorter than
    ``group_size`` is one group (a depthwise conv's kernel of 7 is not padded to 32)."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    group = min(group_size, cols)
    return rows, group, math.ceil(cols / group)


def quantize_int4(weight: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """Group-wise asymmetric int4 codes of ``weight``, packed two to a byte.

    Args:
        weight: a float weight ``[out, ...]``; groups run along the flattened inputs of a row
            (the last row's group is zero-padded).
        group_size: entries per scale and zero point.

    Returns:
        ``packed`` (uint8, two codes a byte, low nibble first), ``scale`` (fp16
        ``[out, groups]``) and ``zero`` (uint8 ``[out, groups]``, in 0..15).
    """
    rows, group, n_groups = _group_layout(weight.shape, group_size)
    flat = weight.detach().float().reshape(rows, -1)
    flat = F.pad(flat, (0, group * n_groups - flat.shape[1]))  # zeros widen no range
    grouped = flat.reshape(rows, n_groups, group)
    lo = grouped.amin(-1).clamp(max=0.0)
    hi = grouped.amax(-1).clamp(min=0.0)
    # Rounded up to fp16 (its relative step is 2^-11) so the codes reach both ends of the range
    # with the scale the file keeps; an all-zero group gets any positive scale.
    scale = ((hi - lo) / QMAX * (1 + 2**-10)).clamp(min=torch.finfo(torch.float16).tiny)
    scale = scale.to(torch.float16)
    s = scale.float()
    zero = torch.round(-lo / s).clamp(0, QMAX)
    q = (torch.round(grouped / s.unsqueeze(-1)) + zero.unsqueeze(-1)).clamp(0, QMAX)
    codes = q.to(torch.uint8).flatten()
    if codes.numel() % 2:
        codes = F.pad(codes, (0, 1))
    packed = codes[0::2] | (codes[1::2] << 4)
    return {"packed": packed, "scale": scale, "zero": zero.to(torch.uint8)}


def dequantize_int4(
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    shape: tuple[int, ...],
    group_size: int,
) -> torch.Tensor:
    """The float32 weight of shape ``shape`` that :func:`quantize_int4` codes stand for."""
    rows, group, n_groups = _group_layout(torch.Size(shape), group_size)
    # Arithmetic rather than bitwise ops: ONNX opset 17 (the exporter's) has no BitwiseAnd.
    wide = packed.to(torch.int32)
    codes = torch.stack((wide % 16, wide // 16), dim=-1).flatten()
    codes = codes[: rows * n_groups * group].reshape(rows, n_groups, group)
    w = (codes.float() - zero.float().unsqueeze(-1)) * scale.float().unsqueeze(-1)
    cols = math.prod(shape[1:])
    return w.reshape(rows, n_groups * group)[:, :cols].reshape(shape)


class _Int4Weight(nn.Module):
    """Holds a layer's packed int4 weight and float bias as buffers (no Parameters: nothing
    trains an int4 model)."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear | nn.Conv1d | nn.Conv2d, group_size: int) -> None:
        super().__init__()
        self.weight_shape = tuple(layer.weight.shape)
        self.group_size = group_size
        for name, value in quantize_int4(layer.weight, group_size).items():
            self.register_buffer(name, value)
        bias = None if layer.bias is None else layer.bias.detach().clone()
        self.register_buffer("bias", bias)

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight (recomputed on each call: only the packed codes are kept)."""
        return dequantize_int4(
            self.packed, self.scale, self.zero, self.weight_shape, self.group_size
        )

    def extra_repr(self) -> str:
        return f"weight_shape={self.weight_shape}, group_size={self.group_size}"


class Int4Linear(_Int4Weight):
    """An ``nn.Linear`` with a packed int4 weight (see the module docstring).

    Args:
        layer: the trained float layer.
        group_size: inputs per scale and zero point.
    """

    def __init__(self, layer: nn.Linear, group_size: int) -> None:
        super().__init__(layer, group_size)
        # Read by the model's code (beam search asks the decoder's output layer its size).
        self.in_features = layer.in_features
        self.out_features = layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype), bias)


class _Int4Conv(_Int4Weight):
    """A zero-padded convolution with a packed int4 weight; subclasses name the functional op."""

    _conv: Callable[..., torch.Tensor]

    def __init__(self, layer: nn.Conv1d | nn.Conv2d, group_size: int) -> None:
        super().__init__(layer, group_size)
        self.in_channels = layer.in_channels
        self.out_channels = layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride = layer.stride
        self.padding = layer.padding
        self.dilation = layer.dilation
        self.groups = layer.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        weight = self.dequantized_weight().to(x.dtype)
        conv = type(self)._conv
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Int4Conv1d(_Int4Conv):
    """An ``nn.Conv1d`` (zero padding) with a packed int4 weight.

    Args:
        layer: the trained float layer.
        group_size: entries of a row (``in_channels / groups * kernel_size``) per scale.
    """

    _conv = F.conv1d


class Int4Conv2d(_Int4Conv):
    """An ``nn.Conv2d`` (zero padding) with a packed int4 weight (the subsampling front end).

    Args:
        layer: the trained float layer.
        group_size: entries of a row (``in_channels / groups * kh * kw``) per scale.
    """

    _conv = F.conv2d


def _int4_layer(layer: nn.Module, group_size: int) -> nn.Module | None:
    """The int4 replacement of ``layer``, or None for a layer that stays float."""
    if type(layer) is nn.Linear:
        return Int4Linear(layer, group_size)
    # Other padding modes pad in Python before the conv; they are not in the recipe's models.
    if type(layer) is nn.Conv1d and layer.padding_mode == "zeros":
        return Int4Conv1d(layer, group_size)
    if type(layer) is nn.Conv2d and layer.padding_mode == "zeros":
        return Int4Conv2d(layer, group_size)
    return None


@torch.no_grad()
def quantize_weight_int4(model: nn.Module, group_size: int) -> nn.Module:
    """Swap ``model``'s Linear, Conv1d and Conv2d layers for int4 ones (in place, eval mode).

    Also rebuilds the module structure of a saved int4 model from a freshly built float one:
    the codes made from its initial weights are placeholders that its state dict overwrites.

    Args:
        model: a trained float model.
        group_size: ``edge.int4_group_size``.

    Returns:
        ``model``, with int4 layers.

    Raises:
        ValueError: ``group_size`` is not positive.
    """
    if group_size < 1:
        raise ValueError(f"edge.int4_group_size must be >= 1, but got {group_size}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _int4_layer(child, group_size)
            if replacement is not None:
                setattr(parent, name, replacement)
    return model.eval()
