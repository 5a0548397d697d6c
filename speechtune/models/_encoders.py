"""The one mapping from ``model.encoder`` names to encoder builders.

Every encoder takes ``(x [B, T, d_model], lengths [B])`` after subsampling and returns
``(out [B, T, d_model], lengths)`` with padded frames zeroed. Adding an encoder means adding
one builder function and one entry in :data:`ENCODER_BUILDERS`. A builder gets the model config
and the :class:`~speechtune.models._streaming.StreamingSpec`; only the Conformer streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn

from speechtune.config import ModelConfig
from speechtune.models._conformer import POS_ENCODINGS, ConformerEncoder
from speechtune.models._hf_wav2vec2 import build_hf_wav2vec2, load_hf_weights
from speechtune.models._hf_whisper import build_hf_whisper, load_hf_whisper_weights
from speechtune.models._init import apply_deepnorm_init, deepnorm_alpha
from speechtune.models._rnn import RNNEncoder
from speechtune.models._searched import SearchedEncoder, parse_block_ops
from speechtune.models._streaming import StreamingSpec
from speechtune.models._transformer import TransformerEncoder

EncoderBuilder = Callable[[ModelConfig, StreamingSpec], nn.Module]
#: A pretrained encoder's builder: the model config and the encoder config a ``model.pt``
#: stored (``None``: read it from ``model.init_from``).
PretrainedBuilder = Callable[[ModelConfig, str | None], nn.Module]


def _alpha(cfg: ModelConfig) -> float | None:
    return deepnorm_alpha(cfg.num_layers) if cfg.init == "deepnorm" else None


def _rnn_builder(cell: str, bidirectional: bool) -> EncoderBuilder:
    def build(cfg: ModelConfig, streaming: StreamingSpec) -> nn.Module:
        if cfg.init == "deepnorm":
            # A tuner may pair init=deepnorm with any encoder; failing the trial would waste
            # it, so say once that the setting has no effect here.
            warnings.warn(
                f"model.init='deepnorm' has no effect on the {cfg.encoder!r} encoder "
                "(it has no residual stack); using the default initialisation",
                stacklevel=3,
            )
        return RNNEncoder(cell, cfg.d_model, cfg.num_layers, cfg.dropout, bidirectional)

    return build


def _transformer(cfg: ModelConfig, streaming: StreamingSpec) -> nn.Module:
    enc = TransformerEncoder(
        cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.ff_dim, cfg.dropout, _alpha(cfg)
    )
    if cfg.init == "deepnorm":
        apply_deepnorm_init(enc, cfg.num_layers)
    return enc


def _conformer(cfg: ModelConfig, streaming: StreamingSpec) -> nn.Module:
    enc = ConformerEncoder(
        cfg.d_model,
        cfg.num_layers,
        cfg.num_heads,
        cfg.ff_dim,
        cfg.conv_kernel,
        cfg.dropout,
        _alpha(cfg),
        cfg.pos_enc,
        streaming,
    )
    if cfg.init == "deepnorm":
        apply_deepnorm_init(enc, cfg.num_layers)
    return enc


def _searched(cfg: ModelConfig, streaming: StreamingSpec) -> nn.Module:
    if cfg.init == "deepnorm":
        # As for the RNNs: say so once rather than fail a tuner's trial.
        warnings.warn(
            "model.init='deepnorm' has no effect on the 'searched' encoder (its blocks are "
            "pre-norm); using the default initialisation",
            stacklevel=3,
        )
    ops = parse_block_ops(cfg.block_ops)
    return SearchedEncoder.from_ops(ops, cfg.d_model, cfg.ff_dim, cfg.num_heads, cfg.dropout)


ENCODER_BUILDERS: dict[str, EncoderBuilder] = {
    "lstm": _rnn_builder("lstm", bidirectional=False),
    "blstm": _rnn_builder("lstm", bidirectional=True),
    "gru": _rnn_builder("gru", bidirectional=False),
    "bgru": _rnn_builder("gru", bidirectional=True),
    "transformer": _transformer,
    "conformer": _conformer,
    "searched": _searched,
}


#: Encoders whose architecture comes from a pretrained model (``model.init_from``), not from
#: the recipe's sizes: Wav2Vec2/HuBERT read ``[B, T, 1]`` waveforms (``features.kind:
#: waveform``), Whisper its own log-mels (``features.kind: whisper``). Building one is what
#: imports transformers (``import speechtune`` never does).
PRETRAINED_ENCODERS: dict[str, PretrainedBuilder] = {
    "hf_wav2vec2": build_hf_wav2vec2,
    "hf_whisper": build_hf_whisper,
}
#: The features each pretrained encoder reads (``features.kind``).
PRETRAINED_FEATURES: dict[str, str] = {"hf_wav2vec2": "waveform", "hf_whisper": "whisper"}
_LOADERS: dict[str, Callable[[nn.Module, str], str]] = {
    "hf_wav2vec2": load_hf_weights,
    "hf_whisper": load_hf_whisper_weights,
}


def load_pretrained_encoder(encoder_name: str, encoder: nn.Module, path: str) -> str:
    """Load the weights of the Hugging Face directory ``path`` into a pretrained ``encoder``.

    Returns:
        A line for the run's log.
    """
    return _LOADERS[encoder_name](encoder, path)


_INITS = ("default", "deepnorm")


def build_encoder(
    cfg: ModelConfig, streaming: StreamingSpec | None = None, stored: str | None = None
) -> nn.Module:
    """Build the encoder named by ``cfg.encoder``.

    Args:
        cfg: Model hyperparameters.
        streaming: Chunked attention and causal convolutions (Conformer only); ``None`` or a
            chunk of 0 is full context.
        stored: A pretrained encoder's config as a ``model.pt`` stored it
            (:data:`PRETRAINED_ENCODERS` only); ``None`` reads it from ``cfg.init_from``.

    Raises:
        ValueError: Unknown encoder, init or pos_enc name (the message lists the valid ones),
            or streaming asked of an encoder other than the Conformer.
        ConfigError: A pretrained encoder's directory or config is unusable (one line naming
            ``model.init_from``).
    """
    streaming = streaming or StreamingSpec()
    if cfg.encoder in PRETRAINED_ENCODERS:
        if streaming.enabled:
            raise ValueError(
                f"model.chunk_ms={cfg.chunk_ms:g}: streaming needs model.encoder='conformer', "
                f"not {cfg.encoder!r}"
            )
        return PRETRAINED_ENCODERS[cfg.encoder](cfg, stored)
    if cfg.encoder not in ENCODER_BUILDERS:
        raise ValueError(
            f"model.encoder={cfg.encoder!r} is not a known encoder; "
            f"expected one of {sorted({**ENCODER_BUILDERS, **PRETRAINED_ENCODERS})}"
        )
    if cfg.init not in _INITS:
        raise ValueError(f"model.init={cfg.init!r} is not known; expected one of {list(_INITS)}")
    if cfg.pos_enc not in POS_ENCODINGS:
        raise ValueError(
            f"model.pos_enc={cfg.pos_enc!r} is not known; expected one of {list(POS_ENCODINGS)}"
        )
    if cfg.pos_enc == "rel" and cfg.encoder != "conformer":
        # As for deepnorm on RNNs: say so once rather than fail a tuner's trial.
        warnings.warn(
            f"model.pos_enc='rel' has no effect on the {cfg.encoder!r} encoder (only the "
            "conformer implements relative positions); using its default positions",
            stacklevel=2,
        )
    if cfg.dynamic_chunk and not streaming.enabled:
        # As for pos_enc: say so once rather than fail a tuner's trial.
        warnings.warn(
            "model.dynamic_chunk has no effect without model.chunk_ms > 0 (the chunk that "
            "decoding uses); training a full-context model",
            stacklevel=2,
        )
    if streaming.enabled and cfg.encoder != "conformer":
        raise ValueError(
            f"model.chunk_ms={cfg.chunk_ms:g}: streaming needs model.encoder='conformer', "
            f"not {cfg.encoder!r}"
        )
    return ENCODER_BUILDERS[cfg.encoder](cfg, streaming)
