"""Attention beam search with optional CTC prefix scoring (joint CTC/attention decoding).

Watanabe et al., 2017: each extension ``g + c`` is scored by
``(1 - w) * log p_att(c | g) + w * (psi(g + c) - psi(g))`` accumulated over steps, where
``psi`` is the CTC prefix score (:mod:`._ctc_prefix`). To keep the CTC recursion cheap, only
the ``ceil(1.5 * beam)`` best tokens under the attention decoder are CTC-scored per
hypothesis (ESPnet's "pre-beam"). Finished hypotheses are compared by their score divided
by their length (tokens + eos).

The search stops at ``max_len`` tokens, when no hypothesis is running, or earlier when one
of two end tests fires:

* a bound: every step score is a log-probability (or a CTC prefix-score ratio) <= 0, so a
  running hypothesis with score ``s`` can end with a length-normalised score of at most
  ``s / (max_len + 1)``; once the best finished hypothesis beats that for every running one,
  nothing can overtake it;
* ESPnet's ``end_detect`` heuristic: the best hypotheses that ended at each of the last
  ``M = 3`` lengths all score more than ``D = 10`` nats below the best finished one.
"""

from __future__ import annotations

import math

import torch

from speechtune.models._ctc_prefix import CTCPrefixScorer, CTCPrefixState
from speechtune.models._decoder import TransformerDecoder

_END_M = 3
_END_D = 10.0


def _end_detected(ended: list[tuple[float, list[int]]], length: int) -> bool:
    best = max(score for score, _ in ended)
    count = 0
    for m in range(_END_M):
        same = [score for score, toks in ended if len(toks) == length - m]
        if same and max(same) < best - _END_D:
            count += 1
    return count == _END_M


def _cannot_improve(
    ended: list[tuple[float, list[int]]], running: torch.Tensor, max_len: int
) -> bool:
    best_ended = max(score / (len(toks) + 1) for score, toks in ended)
    return best_ended >= float(running.max()) / (max_len + 1)


def _candidates(att: torch.Tensor, k: int, force_eos: bool, eos: int) -> torch.Tensor:
    if force_eos:
        return torch.full((att.size(0), 1), eos, dtype=torch.long, device=att.device)
    return att.topk(k, dim=-1).indices


@torch.no_grad()
def beam_search_one(
    decoder: TransformerDecoder,
    memory: torch.Tensor,
    sos_eos: int,
    beam_size: int,
    max_len: int,
    ctc_log_probs: torch.Tensor | None = None,
    ctc_weight: float = 0.0,
    blank: int = 0,
) -> list[int]:
    """Decode one utterance.

    Args:
        decoder: The attention decoder (in eval mode).
        memory: ``[T, d_model]`` valid encoder frames of the utterance.
        sos_eos: The sos/eos id.
        beam_size: Hypotheses kept per step.
        max_len: Most output tokens (eos excluded); at step ``max_len`` only eos is allowed.
        ctc_log_probs: ``[T, V]`` CTC log-probabilities; needed when ``ctc_weight > 0``.
        ctc_weight: Weight ``w`` of CTC prefix scores.
        blank: Blank id, never emitted by the decoder.

    Returns:
        The best hypothesis's token ids (without sos/eos).
    """
    device = memory.device
    vocab = decoder.out.out_features
    mem = memory[None]
    mem_valid = torch.ones(1, memory.size(0), dtype=torch.bool, device=device)
    scorer = None
    state: CTCPrefixState | None = None
    if ctc_weight > 0:
        if ctc_log_probs is None:
            raise ValueError("ctc_weight > 0 needs the CTC log-probabilities")
        scorer = CTCPrefixScorer(ctc_log_probs, blank=blank, eos=sos_eos)
        state = scorer.initial_state(1)
    # Pre-beam only when CTC scoring is on; without it every token is a candidate.
    k = min(vocab, math.ceil(1.5 * beam_size)) if scorer is not None else vocab

    tokens = torch.full((1, 1), sos_eos, dtype=torch.long, device=device)
    scores = torch.zeros(1, device=device)
    ended: list[tuple[float, list[int]]] = []
    for step in range(max_len + 1):
        h = tokens.size(0)
        logits = decoder(tokens, mem.expand(h, -1, -1), mem_valid.expand(h, -1))[:, -1]
        att = logits.float().log_softmax(dim=-1)
        att[:, blank] = float("-inf")  # blank is a CTC symbol, not an output token
        cands = _candidates(att, k, force_eos=step == max_len, eos=sos_eos)
        cand_scores = att.gather(1, cands)
        if scorer is not None and state is not None:
            psi, r = scorer.score(state, cands)
            cand_scores = (1 - ctc_weight) * cand_scores + ctc_weight * (psi - state.psi[:, None])
        total = scores[:, None] + cand_scores
        top = total.flatten().topk(min(beam_size, total.numel()))
        hyp_idx = torch.div(top.indices, cands.size(1), rounding_mode="floor")
        cand_idx = top.indices % cands.size(1)
        new_tok = cands[hyp_idx, cand_idx]
        finite = torch.isfinite(top.values)
        is_eos = (new_tok == sos_eos) & finite
        for i in torch.nonzero(is_eos).flatten().tolist():
            ended.append((float(top.values[i]), tokens[hyp_idx[i], 1:].tolist()))
        keep = ~is_eos & finite
        if not bool(keep.any()):
            break
        hyp_idx, cand_idx, new_tok = hyp_idx[keep], cand_idx[keep], new_tok[keep]
        tokens = torch.cat([tokens[hyp_idx], new_tok[:, None]], dim=1)
        scores = top.values[keep]
        if scorer is not None and state is not None:
            state = state.select(hyp_idx, cand_idx, r, psi, new_tok)
        if ended and (_cannot_improve(ended, scores, max_len) or _end_detected(ended, step)):
            break
    if not ended:
        return []
    return max(ended, key=lambda e: e[0] / (len(e[1]) + 1))[1]
