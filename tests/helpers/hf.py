"""Tiny random Hugging Face encoders (saved with ``save_pretrained``) and recipes that fine-tune
them: shared by the Wav2Vec2, Whisper and edge tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speechtune.config import RecipeConfig
from tests.helpers.recipes import tiny_config

#: Tiny, so a CPU epoch takes a second: 2 layers of width 32; the CNN subsamples by 20 x 8 = 160
#: (100 frames a second; the released models: 320).
TINY_W2V: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32),
    "conv_kernel": (20, 8),
    "conv_stride": (20, 8),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "mask_time_prob": 0.0,
    "layerdrop": 0.0,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0,
    "vocab_size": 7,  # the directory's own vocabulary: never used by speechtune
}

#: Tiny, so a CPU epoch takes seconds: 2 encoder layers of width 32, a 6 s window (300
#: positions; the released models: 1500, 30 s).
TINY_WHISPER: dict[str, Any] = {
    "d_model": 32,
    "encoder_layers": 2,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_layers": 1,
    "decoder_attention_heads": 2,
    "decoder_ffn_dim": 64,
    "num_mel_bins": 80,
    "max_source_positions": 300,
    "max_target_positions": 32,
    "vocab_size": 64,  # the directory's own vocabulary (and its token ids): never used
    "pad_token_id": 1,
    "bos_token_id": 2,
    "eos_token_id": 2,
    "decoder_start_token_id": 3,
    "dropout": 0.0,
}


def save_tiny_wav2vec2(path: Path) -> Path:
    """A tiny random ``Wav2Vec2Model`` directory at ``path`` (seeded)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    Wav2Vec2Model(Wav2Vec2Config(**TINY_W2V)).save_pretrained(path)
    return path


def save_tiny_whisper(path: Path) -> Path:
    """A tiny random ``WhisperModel`` directory at ``path`` (seeded)."""
    from transformers import WhisperConfig, WhisperModel

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**TINY_WHISPER)).save_pretrained(path)
    return path


def hf_config(encoder: str, path: Path, **sections: dict[str, Any]) -> RecipeConfig:
    """The tiny recipe fine-tuning the directory ``path`` with ``model.encoder: encoder``
    (``hf_wav2vec2`` on waveforms, ``hf_whisper`` on Whisper's log-mels); 1 epoch."""
    model = {
        "encoder": encoder,
        "init_from": str(path),
        "d_model": 32,
        "num_layers": 2,
        **sections.pop("model", {}),
    }
    features = (
        {"kind": "waveform"} if encoder == "hf_wav2vec2" else {"kind": "whisper", "n_mels": 80}
    )
    return tiny_config(
        features=features,
        model=model,
        train={"epochs": 1, "batch_size": 8, **sections.pop("train", {})},
        **sections,
    )
