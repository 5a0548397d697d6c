"""Streaming Conformer pieces: the chunk spec, chunked attention masks and the per-layer caches.

A streaming encoder (``model.chunk_ms > 0``) splits its frames (after subsampling) into chunks of
``chunk`` frames. Frame ``i`` attends to frame ``j`` when ``j``'s chunk is ``i``'s chunk or one
of the ``left_chunks`` chunks before it (all earlier chunks for ``left_chunks = -1``), and its
depthwise convolutions are causal. A chunk's output then depends on no later chunk, so decoding
chunk by chunk with cached keys, values and convolution inputs gives the masked full-sequence
output (WeNet's U2, Zhang et al., 2021, "Unified Streaming and Non-streaming Two-pass ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Largest chunk (encoder frames) of dynamic chunk training, as in WeNet (1 s at 40 ms frames).
DYNAMIC_MAX_CHUNK = 25


@dataclass(frozen=True)
class StreamingSpec:
    """How a Conformer encoder limits its context.

    Attributes:
        chunk: Chunk size in encoder frames; 0 is full context (no mask, 'same' convolutions).
        left_chunks: Previous chunks each frame sees; -1 is all of them.
        dynamic: Train with a random chunk size per batch (eval uses ``chunk``).
    """

    chunk: int = 0
    left_chunks: int = -1
    dynamic: bool = False

    @property
    def enabled(self) -> bool:
        """Whether the encoder streams (chunked attention, causal convolution)."""
        return self.chunk > 0

    @property
    def left_frames(self) -> int | None:
        """Encoder frames of left context kept per layer: ``None`` when unbounded."""
        return None if self.left_chunks < 0 else self.left_chunks * self.chunk


def chunk_frames(chunk_ms: float, hop_ms: float, subsampling: int) -> int:
    """Encoder frames in a chunk of ``chunk_ms`` of input audio (rounded down; 0 stays 0).

    An encoder frame lasts ``hop_ms * subsampling``; a positive chunk shorter than that is one
    frame (the config loader refuses it before it gets here).
    """
    if chunk_ms <= 0:
        return 0
    # The small epsilon keeps 640 ms / 40 ms at 16 despite binary rounding of the quotient.
    return max(1, math.floor(chunk_ms / (hop_ms * subsampling) + 1e-6))


def streaming_spec(
    chunk_ms: float, left_chunks: int, dynamic: bool, hop_ms: float, subsampling: int
) -> StreamingSpec:
    """The :class:`StreamingSpec` of the ``model.chunk_ms``/``left_chunks``/``dynamic_chunk`` keys."""
    return StreamingSpec(chunk_frames(chunk_ms, hop_ms, subsampling), left_chunks, dynamic)


def chunk_mask(length: int, chunk: int, left_chunks: int, device: torch.device) -> torch.Tensor:
    """``[length, length]`` boolean: query ``i`` may attend to key ``j``.

    True when ``j``'s chunk is ``i``'s chunk or one of the ``left_chunks`` before it (any earlier
    chunk for ``left_chunks < 0``).
    """
    idx = torch.arange(length, device=device) // chunk
    q, k = idx[:, None], idx[None, :]
    allowed = k <= q
    if left_chunks >= 0:
        allowed = allowed & (k >= q - left_chunks)
    return allowed


def attention_mask(valid: torch.Tensor, chunk: int, left_chunks: int) -> torch.Tensor:
    """``[B, T, T]`` key mask of chunked self-attention over a padded batch.

    Args:
        valid: ``[B, T]`` real (True) and padded (False) frames.
        chunk: Chunk size in frames (> 0).
        left_chunks: Previous chunks visible; -1 is all.

    Returns:
        For a real query frame, the real keys its chunk rule allows. A padded query frame keeps
        the plain key mask: under the chunk rule a padded frame far past the end may see no key,
        and an all-masked softmax row is NaN, which the backward pass would spread to every
        weight (padded outputs are discarded either way).
    """
    keys, queries = valid[:, None, :], valid[:, :, None]
    allowed = chunk_mask(valid.size(1), chunk, left_chunks, valid.device)[None] & keys
    # and/or rather than torch.where: onnxruntime has no Where kernel for boolean tensors.
    return (queries & allowed) | (~queries & keys)


def dynamic_chunk(spec: StreamingSpec, length: int) -> tuple[int, int]:
    """A random ``(chunk, left_chunks)`` for one training batch of ``length`` encoder frames.

    As in WeNet's dynamic chunk training: half the batches see full context (one chunk of the
    whole batch), the others a chunk uniform in ``1 .. max(25, spec.chunk)`` frames. The left
    context keeps about the configured number of frames (``left_chunks * chunk``), rounded up to
    whole chunks, so that training sees the left context decoding will have. Draws from torch's
    global generator, which the training run seeds.
    """
    high = max(DYNAMIC_MAX_CHUNK, spec.chunk)
    draw = int(torch.randint(0, 2 * high, (1,)))
    if draw >= high:
        return max(length, 1), -1
    chunk = draw + 1
    left = spec.left_frames
    return chunk, (-1 if left is None else math.ceil(left / chunk))


@dataclass(frozen=True)
class LayerCache:
    """What one Conformer block keeps between chunks.

    Attributes:
        keys: ``[B, H, L, D/H]`` attention keys of the last ``L`` frames (the left context).
        values: ``[B, H, L, D/H]`` attention values of the same frames.
        conv: ``[B, kernel - 1, D]`` the depthwise convolution's last inputs (zeros at first:
            the causal convolution's left padding).
    """

    keys: torch.Tensor
    values: torch.Tensor
    conv: torch.Tensor


@dataclass(frozen=True)
class EncoderCache:
    """The state of a streaming encoder between chunks.

    Attributes:
        offset: Encoder frames already encoded (the absolute position of the next frame).
        layers: One :class:`LayerCache` per block, bottom first.
    """

    offset: int
    layers: tuple[LayerCache, ...]


def keep_left(cached: torch.Tensor, left_frames: int | None) -> torch.Tensor:
    """The last ``left_frames`` frames (dim 2 of ``[B, H, T, D/H]``), or all for ``None``."""
    if left_frames is None:
        return cached
    return cached[:, :, max(0, cached.size(2) - left_frames) :]
