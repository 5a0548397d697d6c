"""CTC output layer, loss and greedy decoding. Token 0 is the CTC blank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLANK_ID = 0


class CTCHead(nn.Module):
    """Linear projection to the vocabulary followed by log-softmax (computed in float32)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size)

    def log_probs(self, enc: torch.Tensor) -> torch.Tensor:
        """``[B, T, d_model] -> [B, T, V]`` float32 log-probabilities."""
        # float32 even under bf16 autocast: CTC's forward-backward sums many small terms.
        return self.proj(enc).float().log_softmax(dim=-1)

    def loss(
        self,
        enc: torch.Tensor,
        enc_lens: torch.Tensor,
        targets: torch.Tensor,
        target_lens: torch.Tensor,
    ) -> torch.Tensor:
        """CTC loss summed over the batch and divided by the batch size.

        Args:
            enc: ``[B, T, d_model]`` encoder output.
            enc_lens: ``[B]`` valid encoder frames.
            targets: ``[B, U]`` token ids, padded with -1.
            target_lens: ``[B]`` valid tokens.

        Returns:
            A scalar; infinite losses (targets longer than the input allows) become 0.
        """
        log_probs = self.log_probs(enc).transpose(0, 1)  # [T, B, V]
        loss = F.ctc_loss(
            log_probs,
            targets.clamp(min=0).long(),  # padding values are ignored but must be valid ids
            enc_lens.long(),
            target_lens.long(),
            blank=BLANK_ID,
            reduction="sum",
            zero_infinity=True,
        )
        return loss / enc.size(0)


def ctc_greedy_collapse(
    log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = BLANK_ID
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks.

    Args:
        log_probs: ``[B, T, V]`` (log-)probabilities; only the argmax matters.
        lengths: ``[B]`` valid frames.
        blank: Blank id.

    Returns:
        One token-id list per utterance.
    """
    best = log_probs.argmax(dim=-1).cpu().tolist()
    hyps: list[list[int]] = []
    for frames, length in zip(best, lengths.cpu().tolist()):
        frames = frames[:length]
        hyps.append(
            [
                tok
                for i, tok in enumerate(frames)
                if tok != blank and (i == 0 or tok != frames[i - 1])
            ]
        )
    return hyps
