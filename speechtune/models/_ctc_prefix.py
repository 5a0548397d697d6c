"""CTC prefix scores for joint CTC/attention decoding.

Watanabe et al., 2017, "Hybrid CTC/Attention Architecture for End-to-End Speech
Recognition", Algorithm 2 (the same recursion as ESPnet's ``CTCPrefixScore``), in log space
over the encoder frames. For a prefix ``g`` the state keeps, for every frame ``t``, the log
probabilities ``r_t^n(g)`` and ``r_t^b(g)`` that the first ``t+1`` frames emit exactly ``g``
ending in a non-blank / blank frame. Extending ``g`` by a token ``c`` gives the prefix score

    psi(g + c) = log sum over all label sequences starting with g + c of p_CTC(seq | x),

and for ``c = eos`` the full-sequence probability ``log p_CTC(g | x)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass(frozen=True)
class CTCPrefixState:
    """Forward variables of a batch of ``H`` prefixes of equal length.

    Attributes:
        r: ``[T, 2, H]`` log ``r^n`` (index 0) and ``r^b`` (index 1) per frame.
        psi: ``[H]`` prefix scores ``psi(g)``.
        last: ``[H]`` last token of each prefix (-1 for the empty prefix).
        length: Number of tokens in each prefix.
    """

    r: torch.Tensor
    psi: torch.Tensor
    last: torch.Tensor
    length: int

    def select(
        self,
        hyp_idx: torch.Tensor,
        cand_idx: torch.Tensor,
        r_new: torch.Tensor,
        psi_new: torch.Tensor,
        tokens: torch.Tensor,
    ) -> CTCPrefixState:
        """The states of chosen extensions ``(hyp_idx[i], cand_idx[i])`` from a scoring step."""
        return CTCPrefixState(
            r=r_new[:, :, hyp_idx, cand_idx],
            psi=psi_new[hyp_idx, cand_idx],
            last=tokens,
            length=self.length + 1,
        )


class CTCPrefixScorer:
    """Scores one utterance's prefixes against its CTC log-probabilities.

    Args:
        log_probs: ``[T, V]`` CTC log-probabilities of the valid frames of one utterance.
        blank: Blank id.
        eos: End-of-sentence id (scored as the full-sequence probability).
    """

    def __init__(self, log_probs: torch.Tensor, blank: int, eos: int) -> None:
        self.x = log_probs.float()
        self.blank = blank
        self.eos = eos

    def initial_state(self, num_hyps: int = 1) -> CTCPrefixState:
        """State of the empty prefix (only ``sos`` emitted): all-blank paths, ``psi = 0``."""
        t = self.x.size(0)
        r = torch.full((t, 2, num_hyps), NEG_INF, device=self.x.device)
        r[:, 1, :] = torch.cumsum(self.x[:, self.blank], dim=0)[:, None]
        return CTCPrefixState(
            r=r,
            psi=torch.zeros(num_hyps, device=self.x.device),
            last=torch.full((num_hyps,), -1, dtype=torch.long, device=self.x.device),
            length=0,
        )

    def score(
        self, state: CTCPrefixState, cands: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores of every ``prefix_h + cands[h, k]``.

        Args:
            state: The current prefixes (``H`` of them).
            cands: ``[H, K]`` candidate token ids.

        Returns:
            ``(psi [H, K], r [T, 2, H, K])``: log prefix scores of the extensions (``-inf``
            for blank) and their forward variables.
        """
        x = self.x
        n_frames = x.size(0)
        h, k = cands.shape
        xs = x[:, cands]  # [T, H, K]
        r = torch.full((n_frames, 2, h, k), NEG_INF, device=x.device)
        if state.length == 0:
            r[0, 0] = xs[0]
        r_sum = torch.logaddexp(state.r[:, 0], state.r[:, 1])  # [T, H]
        # A repeated token needs a blank in between, so only paths ending in blank extend it.
        repeat = (cands == state.last[:, None])[None]  # [1, H, K]
        log_phi = torch.where(repeat, state.r[:, 1, :, None], r_sum[:, :, None])  # [T, H, K]
        start = max(state.length, 1)
        if start > n_frames:
            log_psi = torch.full((h, k), NEG_INF, device=x.device)
        else:
            log_psi = r[start - 1, 0].clone()
        blank_lp = x[:, self.blank]
        for t in range(start, n_frames):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], log_phi[t - 1]) + xs[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + blank_lp[t]
            log_psi = torch.logaddexp(log_psi, log_phi[t - 1] + xs[t])
        log_psi = torch.where(cands == self.eos, r_sum[-1][:, None], log_psi)
        log_psi = log_psi.masked_fill(cands == self.blank, NEG_INF)
        return log_psi, r
