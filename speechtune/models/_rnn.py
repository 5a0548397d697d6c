"""Recurrent encoders (LSTM / GRU, uni- or bidirectional) over packed sequences."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechtune.models._layers import valid_mask

_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNEncoder(nn.Module):
    """A multi-layer LSTM/GRU encoder.

    Each direction has ``d_model`` hidden units; a bidirectional encoder's ``2 * d_model``
    output is projected back to ``d_model`` by a Linear layer (this keeps odd ``d_model``
    legal and gives each direction the full width). Dropout is applied between layers and
    on the output. Padded frames never enter the recurrence (packed sequences), so an
    utterance's output is independent of the batch it is in.

    Args:
        cell: ``"lstm"`` or ``"gru"``.
        d_model: Input, hidden (per direction) and output width.
        num_layers: Stacked layers.
        dropout: Dropout between layers and on the output.
        bidirectional: Run a backward direction too.
    """

    def __init__(
        self, cell: str, d_model: int, num_layers: int, dropout: float, bidirectional: bool
    ) -> None:
        super().__init__()
        if cell not in _CELLS:
            raise ValueError(f"unknown RNN cell {cell!r}; expected one of {sorted(_CELLS)}")
        self.rnn = _CELLS[cell](
            d_model,
            d_model,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.proj = nn.Linear(2 * d_model, d_model) if bidirectional else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x [B, T, d_model]``; returns ``(out [B, T, d_model], lengths)``."""
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        out = self.proj(self.dropout(out))
        return out.masked_fill(~valid_mask(lengths, x.size(1))[..., None], 0.0), lengths
