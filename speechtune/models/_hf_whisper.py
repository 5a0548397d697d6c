"""A pretrained Whisper encoder from a local Hugging Face model directory.

``model.encoder: hf_whisper`` with ``model.init_from: DIR``, where ``DIR`` holds what
``save_pretrained`` writes for a ``WhisperModel`` or ``WhisperForConditionalGeneration``
(``config.json`` and the weights). Only the encoder is used (two convolutions, fixed sinusoidal
positions, Transformer layers), reading Whisper's own log-mel features (``features.kind:
whisper``) and returning ``[B, T', d_model]`` at 20 ms frames; speechtune's CTC head over
speechtune's tokenizer sits on top, as in the Whisper-encoder CTC models of the literature.
Whisper's decoder and vocabulary are never read.

Whisper pads every input to its 30 s window and attends over all of it. ``model.whisper_window_s``
shortens the window (the position table is cut to its first rows: they are fixed sinusoids, so
a shorter table is the same function), which a corpus of short utterances wants: attention
costs grow with the window's square. Within the window the features are padded with each
utterance's floor, the value silence has, as the extractor's zero padding gives.

Loading never downloads (``local_files_only=True``); a trained ``model.pt`` stores the
(windowed) Hugging Face config and is rebuilt from it alone. ``transformers`` is imported only
when such an encoder is built.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import nn

from speechtune.config import ConfigError, ConfigProblem, ModelConfig
from speechtune.models._hf_wav2vec2 import (
    check_sizes,
    import_transformers,
    init_from_error,
    read_config_json,
)
from speechtune.models._layers import valid_mask

#: Encoder frames per second: 100 feature frames, halved by the second convolution.
FRAMES_PER_S = 50


def read_whisper_config(path: str) -> dict[str, Any]:
    """The ``config.json`` of the local Whisper directory ``path``, checked.

    Raises:
        ConfigError: (one line naming ``model.init_from``) no readable ``config.json``, a
            ``model_type`` other than ``whisper``, or no ``transformers``.
    """
    config = read_config_json(path, "hf_whisper")
    if config.get("model_type") != "whisper":
        raise init_from_error(
            f"config.json has model_type {config.get('model_type')!r}; model.encoder=hf_whisper "
            "takes 'whisper'",
            path,
        )
    import_transformers(path, "hf_whisper")
    return config


class HFWhisperEncoder(nn.Module):
    """A transformers ``WhisperEncoder`` as a speechtune encoder.

    Takes ``(x [B, T, n_mels] features, lengths [B])`` and returns ``(out [B, T', d_model],
    lengths')`` with ``T' = ceil(T / 2)`` and padded frames zeroed.

    Args:
        encoder: The transformers ``WhisperEncoder`` (its weights are this module's ``model.*``).
    """

    # A transformers PreTrainedModel: Any, since transformers is imported only when one is built.
    model: Any

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.model = encoder

    @property
    def window_frames(self) -> int:
        """Feature frames the encoder reads at once (twice its positions)."""
        return 2 * int(self.model.config.max_source_positions)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Encoder frames for ``lengths`` feature frames (the stride-2 convolution)."""
        return (lengths - 1) // 2 + 1

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = lengths.to(x.device)
        bins = int(self.model.config.num_mel_bins)
        if x.size(2) != bins:
            raise ValueError(
                f"the Whisper encoder reads {bins} mel bins, the features have {x.size(2)}: set "
                f"features.n_mels: {bins}"
            )
        window = self.window_frames
        if x.size(1) > window:
            raise ValueError(
                f"an utterance of {x.size(1)} feature frames ({x.size(1) / 100:.2f} s) is longer "
                f"than the Whisper encoder's window of {window / 100:g} s: raise "
                "model.whisper_window_s (at most 30) or set data.max_duration below it"
            )
        valid = valid_mask(lengths, x.size(1)).unsqueeze(-1)
        # The floor of each utterance (silence, after the extractor's 80 dB clip) fills the rest
        # of the window, as the extractor's zero padding would.
        floor = x.masked_fill(~valid, math.inf).amin(dim=(1, 2), keepdim=True)
        padded = floor.expand(x.size(0), window, x.size(2)).clone()
        padded[:, : x.size(1)] = torch.where(valid, x, floor)
        out = self.model(padded.transpose(1, 2)).last_hidden_state
        out_lens = self.output_lengths(lengths)
        out = out[:, : int(out_lens.max().item()) if out_lens.numel() else 0]
        out = out.masked_fill(~valid_mask(out_lens, out.size(1)).unsqueeze(-1), 0.0)
        return out, out_lens

    def config_json(self) -> str:
        """The (windowed) Hugging Face config as JSON: what ``model.pt`` stores to rebuild this
        encoder (a string, so that ``torch.load(weights_only=True)`` reads it)."""
        return json.dumps(self.model.config.to_dict(), sort_keys=True)


def build_hf_whisper(cfg: ModelConfig, stored: str | None = None) -> HFWhisperEncoder:
    """A randomly initialised Whisper encoder of the pretrained model's architecture.

    Args:
        cfg: The recipe's model section (``encoder: hf_whisper``).
        stored: The JSON config a ``model.pt`` stored (:meth:`HFWhisperEncoder.config_json`,
            already windowed); ``None`` reads ``config.json`` from ``cfg.init_from`` and applies
            ``cfg.whisper_window_s``.

    Raises:
        ConfigError: see :func:`read_whisper_config`; sizes that differ from the pretrained
            model's; or a window longer than the pretrained one.
    """
    path = str(cfg.init_from)
    config = json.loads(stored) if stored is not None else read_whisper_config(path)
    check_sizes(cfg, path, config.get("d_model"), config.get("encoder_layers"))
    if stored is None and cfg.whisper_window_s is not None:
        positions = math.ceil(cfg.whisper_window_s * FRAMES_PER_S)
        if positions > int(config["max_source_positions"]):
            raise ConfigError(
                [
                    ConfigProblem(
                        "model.whisper_window_s",
                        f"must be at most the pretrained window of "
                        f"{int(config['max_source_positions']) / FRAMES_PER_S:g} s",
                        cfg.whisper_window_s,
                    )
                ]
            )
        config = {**config, "max_source_positions": positions}
    transformers = import_transformers(path, "hf_whisper")
    # The encoder class is not exported at the package's top level.
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return HFWhisperEncoder(WhisperEncoder(transformers.WhisperConfig.from_dict(config)))


def load_hf_whisper_weights(encoder: nn.Module, path: str) -> str:
    """Load the encoder weights of the Whisper directory ``path`` into ``encoder`` (in place).

    The position table is cut to the encoder's window (its first rows).

    Returns:
        A line for the run's log.

    Raises:
        ConfigError: the directory has no readable weights, or they miss encoder tensors.
    """
    if not isinstance(encoder, HFWhisperEncoder):
        raise TypeError(f"expected an HFWhisperEncoder, got {type(encoder).__name__}")
    read_whisper_config(path)
    transformers = import_transformers(path, "hf_whisper")
    try:
        source = transformers.WhisperModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise init_from_error(f"cannot load the weights: {first}", path) from exc
    state = source.get_encoder().state_dict()
    target = encoder.model.state_dict()
    missing = sorted(set(target) - set(state))
    if missing:
        raise init_from_error(
            f"the weights lack {len(missing)} of the encoder's tensors (e.g. {missing[0]})", path
        )
    positions = target["embed_positions.weight"].size(0)
    state = {k: state[k] for k in target}
    state["embed_positions.weight"] = state["embed_positions.weight"][:positions]
    encoder.model.load_state_dict(state)
    n = sum(v.numel() for v in state.values())
    return (
        f"model.init_from {path}: Whisper encoder, {n} pretrained parameters, a "
        f"{positions / FRAMES_PER_S:g} s window (its decoder and vocabulary unused; the CTC head "
        "starts fresh)"
    )
