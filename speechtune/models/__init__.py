"""ASR models: subsampling, encoders (LSTM, GRU, Transformer, Conformer, searched blocks,
pretrained Wav2Vec2/HuBERT/Whisper encoders), CTC
and attention heads, and greedy / joint CTC-attention beam decoding.

Token convention: id 0 is the CTC blank; ``vocab_size - 1`` is sos/eos for the attention
decoder.
"""

from speechtune.models._asr import ASRModel, build_model
from speechtune.models._conformer import ConformerEncoder
from speechtune.models._ctc import BLANK_ID, ctc_greedy_collapse
from speechtune.models._ctc_prefix import CTCPrefixScorer, CTCPrefixState
from speechtune.models._encoders import (
    ENCODER_BUILDERS,
    PRETRAINED_ENCODERS,
    PRETRAINED_FEATURES,
    build_encoder,
    load_pretrained_encoder,
)
from speechtune.models._hf_wav2vec2 import HFWav2Vec2Encoder, load_hf_weights
from speechtune.models._hf_whisper import HFWhisperEncoder
from speechtune.models._init import deepnorm_alpha, deepnorm_beta
from speechtune.models._lora import add_lora, has_lora, lora_target_modules, merged_state_dict
from speechtune.models._parts import FRONTEND, OUTPUT_MODULES, VOCAB_PARAMS, layer_of
from speechtune.models._searched import (
    PARAMETER_FREE_OPS,
    SEARCH_OPS,
    SearchedBlock,
    SearchedEncoder,
    parse_block_ops,
)
from speechtune.models._streaming import LayerCache
from speechtune.models._subsampling import Conv2dSubsampling

__all__ = [
    "ASRModel",
    "BLANK_ID",
    "CTCPrefixScorer",
    "CTCPrefixState",
    "ConformerEncoder",
    "Conv2dSubsampling",
    "ENCODER_BUILDERS",
    "FRONTEND",
    "HFWav2Vec2Encoder",
    "HFWhisperEncoder",
    "LayerCache",
    "OUTPUT_MODULES",
    "PARAMETER_FREE_OPS",
    "PRETRAINED_ENCODERS",
    "PRETRAINED_FEATURES",
    "SEARCH_OPS",
    "SearchedBlock",
    "SearchedEncoder",
    "VOCAB_PARAMS",
    "add_lora",
    "build_encoder",
    "build_model",
    "ctc_greedy_collapse",
    "deepnorm_alpha",
    "deepnorm_beta",
    "has_lora",
    "layer_of",
    "load_hf_weights",
    "load_pretrained_encoder",
    "lora_target_modules",
    "merged_state_dict",
    "parse_block_ops",
]
