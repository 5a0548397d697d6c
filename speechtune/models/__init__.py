"""ASR models: subsampling, encoders (LSTM, GRU, Transformer, Conformer), CTC and attention
heads, and greedy / joint CTC-attention beam decoding.

Token convention: id 0 is the CTC blank; ``vocab_size - 1`` is sos/eos for the attention
decoder.
"""

from speechtune.models._asr import ASRModel, build_model
from speechtune.models._ctc import BLANK_ID, ctc_greedy_collapse
from speechtune.models._ctc_prefix import CTCPrefixScorer, CTCPrefixState
from speechtune.models._encoders import ENCODER_BUILDERS, build_encoder
from speechtune.models._init import deepnorm_alpha, deepnorm_beta
from speechtune.models._subsampling import Conv2dSubsampling

__all__ = [
    "ASRModel",
    "BLANK_ID",
    "CTCPrefixScorer",
    "CTCPrefixState",
    "Conv2dSubsampling",
    "ENCODER_BUILDERS",
    "build_encoder",
    "build_model",
    "ctc_greedy_collapse",
    "deepnorm_alpha",
    "deepnorm_beta",
]
