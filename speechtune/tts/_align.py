"""Token durations from a learned soft alignment (Badlani et al., 2021, "One TTS alignment to
rule them all"; the aligner of RAD-TTS and FastPitch 1.1).

Why this method: it needs nothing but the training pairs (no external ASR model, no espeak
timing, which would tie the recipe to an espeak-generated corpus and would not exist for
characters), it trains with the acoustic model in one run, and its hard durations come from an
exact dynamic programme (monotonic alignment search, as in Glow-TTS), so they always sum to the
mel length. A beta-binomial prior keeps the soft alignment near the diagonal from the first
step, so it converges in the few epochs a CPU run can afford.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import betabinom
from torch import Tensor


@functools.lru_cache(maxsize=4096)
def _prior(num_tokens: int, num_frames: int, scale: float) -> np.ndarray:
    k = np.arange(num_tokens)
    t = np.arange(1, num_frames + 1)[:, None]
    # Frame t puts its mass around token t * N / T (a beta-binomial over the token index).
    return betabinom(num_tokens - 1, scale * t, scale * (num_frames + 1 - t)).pmf(k[None, :])


def alignment_prior(
    token_lengths: Sequence[int], frame_lengths: Sequence[int], scale: float = 1.0
) -> Tensor:
    """The log of the beta-binomial alignment prior of a batch.

    Args:
        token_lengths: tokens per utterance.
        frame_lengths: mel frames per utterance.
        scale: the prior's omega (larger: closer to the diagonal).

    Returns:
        ``[B, T_max, N_max]`` log-probabilities; padding is 0 (the loss masks it).
    """
    n_max, t_max = max(token_lengths), max(frame_lengths)
    out = np.zeros((len(token_lengths), t_max, n_max), dtype=np.float32)
    for b, (n, t) in enumerate(zip(token_lengths, frame_lengths)):
        out[b, :t, :n] = np.log(np.maximum(_prior(int(n), int(t), float(scale)), 1e-8))
    return torch.from_numpy(out)


def forward_sum_loss(
    log_attn: Tensor, token_lengths: Tensor, frame_lengths: Tensor, blank_logprob: float = -1.0
) -> Tensor:
    """The forward-sum loss: -log of the total probability of every monotonic alignment.

    It is CTC with the utterance's tokens, in order, as the target and a blank of fixed
    log-probability, over the per-frame distributions on tokens (Badlani et al., 2021).

    Args:
        log_attn: ``[B, T, N]`` unnormalised log-scores of frame t on token n.
        token_lengths: ``[B]`` tokens per utterance.
        frame_lengths: ``[B]`` frames per utterance.
        blank_logprob: the blank's log-score.

    Returns:
        The mean over the batch of the loss per target token.
    """
    batch, _, num_tokens = log_attn.shape
    scores = F.pad(log_attn, (1, 0), value=blank_logprob)  # column 0: the blank
    beyond = torch.arange(num_tokens + 1, device=log_attn.device)[None, :] > token_lengths[:, None]
    scores = scores.masked_fill(beyond[:, None, :], -1e4).log_softmax(-1)
    targets = torch.arange(1, num_tokens + 1, device=log_attn.device)[None].expand(batch, -1)
    return F.ctc_loss(
        scores.transpose(0, 1),
        targets,
        frame_lengths,
        token_lengths,
        blank=0,
        reduction="mean",
        zero_infinity=True,
    )


def monotonic_alignment(log_prob: np.ndarray) -> np.ndarray:
    """The most probable monotonic hard alignment of frames to tokens (Glow-TTS's MAS).

    Every token gets at least one frame, frames go to tokens in order, and each frame to one
    token: the durations sum to the number of frames.

    Args:
        log_prob: ``[N, T]`` log-probabilities of token n at frame t, ``N <= T``.

    Returns:
        ``[N]`` int64 durations in frames.

    Raises:
        ValueError: more tokens than frames (no such alignment exists).
    """
    num_tokens, num_frames = log_prob.shape
    if num_tokens > num_frames:
        raise ValueError(
            f"cannot align {num_tokens} tokens to {num_frames} frames (need at least one frame each)"
        )
    value = np.full((num_tokens, num_frames), -np.inf)
    value[0, 0] = log_prob[0, 0]
    for t in range(1, num_frames):
        stay = value[:, t - 1]
        advance = np.concatenate(([-np.inf], value[:-1, t - 1]))
        value[:, t] = np.maximum(stay, advance) + log_prob[:, t]
    durations = np.zeros(num_tokens, dtype=np.int64)
    n = num_tokens - 1
    for t in range(num_frames - 1, -1, -1):
        durations[n] += 1
        if t > 0 and n > 0 and value[n - 1, t - 1] >= value[n, t - 1]:
            n -= 1
    return durations


def batch_durations(log_attn: Tensor, token_lengths: Tensor, frame_lengths: Tensor) -> Tensor:
    """:func:`monotonic_alignment` of each utterance of a batch.

    Args:
        log_attn: ``[B, T, N]`` log-probabilities of the soft alignment.

    Returns:
        ``[B, N]`` long durations (0 past an utterance's tokens).
    """
    scores = log_attn.detach().float().cpu().numpy()
    out = torch.zeros(log_attn.shape[0], log_attn.shape[2], dtype=torch.long)
    for b, (n, t) in enumerate(zip(token_lengths.tolist(), frame_lengths.tolist())):
        out[b, :n] = torch.from_numpy(monotonic_alignment(scores[b, :t, :n].T))
    return out.to(log_attn.device)
