"""A pretrained Wav2Vec2 or HuBERT encoder from a local Hugging Face model directory.

``model.encoder: hf_wav2vec2`` with ``model.init_from: DIR``, where ``DIR`` holds what
``save_pretrained`` writes (``config.json`` and the weights). Only the encoder of the Hugging
Face model is used: its CNN feature encoder and Transformer layers, wrapped so that they read
``[B, T, 1]`` waveforms (``features.kind: waveform``) and return ``[B, T', hidden]`` at 20 ms
frames. speechtune's own CTC head over speechtune's tokenizer sits on top; the directory's
vocabulary and LM head (``Wav2Vec2ForCTC``'s ``lm_head``) are never read.

Loading never downloads (``local_files_only=True``). A trained ``model.pt`` is self-contained:
it stores the Hugging Face config as a JSON string (:meth:`HFWav2Vec2Encoder.config_json`) and
the encoder is rebuilt from it, so neither the directory nor the Hub is needed to load it.
``transformers`` is imported only here, and only when such an encoder is built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speechtune.config import ConfigError, ConfigProblem, ModelConfig
from speechtune.models._layers import valid_mask

_INSTALL = "pip install transformers (the `hf` extra)"

#: config.json's model_type -> the transformers (config, model) classes that rebuild it. HuBERT
#: shares Wav2Vec2's feature encoder, Transformer layers and parameter names.
_MODEL_CLASSES: dict[str, tuple[str, str]] = {
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "hubert": ("HubertConfig", "HubertModel"),
}


def init_from_error(reason: str, path: str) -> ConfigError:
    """A config error naming ``model.init_from``."""
    return ConfigError([ConfigProblem("model.init_from", reason, path)])


def import_transformers(path: str, encoder: str = "hf_wav2vec2") -> Any:
    """``transformers``, or one config error naming ``model.init_from`` when it is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise init_from_error(
            f"model.encoder={encoder} needs transformers: {_INSTALL}", path
        ) from exc
    return transformers


def _classes(model_type: str, path: str) -> tuple[Any, Any]:
    if model_type not in _MODEL_CLASSES:
        raise init_from_error(
            f"config.json has model_type {model_type!r}; model.encoder=hf_wav2vec2 takes one "
            f"of {sorted(_MODEL_CLASSES)}",
            path,
        )
    transformers = import_transformers(path)
    config_cls, model_cls = _MODEL_CLASSES[model_type]
    return getattr(transformers, config_cls), getattr(transformers, model_cls)


def read_config_json(path: str, encoder: str) -> dict[str, Any]:
    """The ``config.json`` object of the local Hugging Face directory ``path``.

    Raises:
        ConfigError: (one line naming ``model.init_from``) ``path`` holds no readable
            ``config.json`` with a JSON object.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise init_from_error(
            "must be a local Hugging Face model directory with a config.json (as "
            f"save_pretrained writes) for model.encoder={encoder}",
            path,
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise init_from_error(f"cannot read {config_file}: {exc}", path) from exc
    if not isinstance(config, dict):
        raise init_from_error(f"{config_file} does not hold a JSON object", path)
    return config


def read_hf_config(path: str) -> dict[str, Any]:
    """The ``config.json`` of the local Hugging Face model directory ``path``, checked.

    Raises:
        ConfigError: (one line naming ``model.init_from``) ``path`` is not a directory holding
            a readable ``config.json``, its ``model_type`` is not Wav2Vec2 or HuBERT, or
            ``transformers`` is not installed.
    """
    config = read_config_json(path, "hf_wav2vec2")
    _classes(str(config.get("model_type")), path)
    return config


class WaveformInput(nn.Module):
    """:class:`~speechtune.models.ASRModel`'s front end for an encoder that reads samples.

    The encoder's own CNN subsamples the audio, so this passes ``[B, T, 1]`` samples through;
    it has no parameters (the CNN's are the front end that ``finetune.freeze_frontend``
    freezes, see :func:`~speechtune.models.layer_of`).
    """

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, lengths


class HFWav2Vec2Encoder(nn.Module):
    """A transformers ``Wav2Vec2Model`` / ``HubertModel`` as a speechtune encoder.

    Takes ``(x [B, T, 1] samples, lengths [B])`` and returns ``(out [B, T', hidden], lengths')``
    with padded frames zeroed; ``T'`` follows the CNN's kernels and strides (one frame per 320
    samples, 20 ms at 16 kHz, for the released models).

    Args:
        model: The Hugging Face model (its weights are this module's ``model.*``).
    """

    # A transformers PreTrainedModel: Any, since transformers is imported only when one is built.
    model: Any

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for ``lengths`` samples (the CNN's unpadded convolutions)."""
        out: torch.Tensor = self.model._get_feat_extract_output_lengths(lengths)
        return out.long()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wave = x.squeeze(-1)
        lengths = lengths.to(wave.device)
        # The attention mask keeps padded frames out of self-attention (and out of Wav2Vec2's
        # time masking when the config's mask_time_prob > 0, which is its SpecAugment).
        mask = valid_mask(lengths, wave.size(1)).long()
        out = self.model(wave, attention_mask=mask).last_hidden_state
        out_lens = self.output_lengths(lengths).clamp(max=out.size(1))
        out = out.masked_fill(~valid_mask(out_lens, out.size(1)).unsqueeze(-1), 0.0)
        return out, out_lens

    def config_json(self) -> str:
        """The Hugging Face config as JSON: what ``model.pt`` stores to rebuild this encoder
        (a string, so that ``torch.load(weights_only=True)`` reads it)."""
        return json.dumps(self.model.config.to_dict(), sort_keys=True)


def check_sizes(cfg: ModelConfig, path: str, d_model: Any, num_layers: Any) -> None:
    """``model.d_model`` / ``model.num_layers`` must be the pretrained encoder's.

    Layer-wise LR decay, freeze_layers and the heads read these two keys of the recipe, so they
    must describe the pretrained encoder (as for a speechtune model.init_from).

    Raises:
        ConfigError: one problem per key that differs.
    """
    problems = [
        ConfigProblem(
            key, f"must be {theirs!r}, as in the pretrained model (model.init_from={path})", ours
        )
        for key, ours, theirs in (
            ("model.d_model", cfg.d_model, d_model),
            ("model.num_layers", cfg.num_layers, num_layers),
        )
        if ours != theirs
    ]
    if problems:
        raise ConfigError(problems)


def build_hf_wav2vec2(cfg: ModelConfig, stored: str | None = None) -> HFWav2Vec2Encoder:
    """A randomly initialised encoder of the pretrained model's architecture.

    Args:
        cfg: The recipe's model section (``encoder: hf_wav2vec2``).
        stored: The JSON config a ``model.pt`` stored (:meth:`HFWav2Vec2Encoder.config_json`);
            ``None`` reads ``config.json`` from the ``cfg.init_from`` directory instead.

    Raises:
        ConfigError: see :func:`read_hf_config`; or ``model.d_model`` / ``model.num_layers``
            differ from the pretrained model's ``hidden_size`` / ``num_hidden_layers``.
    """
    path = str(cfg.init_from)
    config = json.loads(stored) if stored is not None else read_hf_config(path)
    check_sizes(cfg, path, config.get("hidden_size"), config.get("num_hidden_layers"))
    config_cls, model_cls = _classes(str(config.get("model_type")), path)
    return HFWav2Vec2Encoder(model_cls(config_cls.from_dict(config)))


def load_hf_weights(encoder: nn.Module, path: str) -> str:
    """Load the weights of the Hugging Face directory ``path`` into ``encoder`` (in place).

    A ``Wav2Vec2ForCTC`` checkpoint works too: transformers strips its ``wav2vec2.`` prefix, and
    its ``lm_head`` is dropped (speechtune's CTC head starts fresh over its own tokenizer).

    Returns:
        A line for the run's log.

    Raises:
        ConfigError: the directory has no readable weights, or they miss some of the encoder's.
    """
    if not isinstance(encoder, HFWav2Vec2Encoder):
        raise TypeError(f"expected an HFWav2Vec2Encoder, got {type(encoder).__name__}")
    config = read_hf_config(path)
    _, model_cls = _classes(str(config.get("model_type")), path)
    try:
        source, info = model_cls.from_pretrained(
            path, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise init_from_error(f"cannot load the weights: {first}", path) from exc
    missing = list(info.get("missing_keys", []))
    if missing:
        raise init_from_error(
            f"the weights lack {len(missing)} of the encoder's tensors (e.g. {missing[0]})", path
        )
    encoder.model.load_state_dict(source.state_dict())
    n = sum(p.numel() for p in source.parameters())
    return (
        f"model.init_from {path}: {config.get('model_type')} encoder, {n} pretrained parameters "
        "(its own vocabulary and LM head unused; the CTC head starts fresh)"
    )
