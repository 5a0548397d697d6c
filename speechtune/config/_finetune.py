"""Rules of fine-tuning: the ``finetune`` section against the model it adapts, and a pretrained
encoder (``model.encoder: hf_wav2vec2`` / ``hf_whisper``) against its input (``features.kind:
waveform`` / ``whisper``) and its source (``model.init_from``)."""

from __future__ import annotations

from typing import Any

from speechtune.config._schema import RecipeConfig

Problem = tuple[str, str, Any]


def finetune_problems(cfg: RecipeConfig) -> list[Problem]:
    """``(key, rule, value)`` for each fine-tuning rule ``cfg`` breaks."""
    return _finetune_section(cfg) + _waveform_encoder(cfg)


def _finetune_section(cfg: RecipeConfig) -> list[Problem]:
    out: list[Problem] = []
    m, ft = cfg.model, cfg.finetune
    if ft.freeze_layers > m.num_layers:
        rule = f"must be <= model.num_layers={m.num_layers}"
        out.append(("finetune.freeze_layers", rule, ft.freeze_layers))
    # Attention projections exist in transformer/conformer/Wav2Vec2 encoders and in the decoder;
    # the bidirectional RNNs add one Linear. Failing here beats a trial that adapts nothing.
    attention = m.encoder in ("transformer", "conformer", "hf_wav2vec2", "hf_whisper")
    attention = attention or m.head == "ctc_attention"
    linear = attention or m.encoder in ("blstm", "bgru")
    if ft.lora_rank > 0 and not (linear if ft.lora_targets == "all_linear" else attention):
        rule = (
            f"matches no layer of a {m.encoder!r} encoder with head {m.head!r} (attention "
            "targets need a transformer/conformer encoder or the ctc_attention head)"
        )
        out.append(("finetune.lora_targets", rule, ft.lora_targets))
    return out


#: The features each pretrained encoder reads (as speechtune.models.PRETRAINED_FEATURES; the
#: config layer sits below the models and cannot import them).
_PRETRAINED_FEATURES = {"hf_wav2vec2": "waveform", "hf_whisper": "whisper"}


def _waveform_encoder(cfg: RecipeConfig) -> list[Problem]:
    # The directory itself is checked when the model is built (speechtune.models).
    out: list[Problem] = []
    m, fe = cfg.model, cfg.features
    needs = _PRETRAINED_FEATURES.get(m.encoder)
    hf = needs is not None
    readers = {kind: enc for enc, kind in _PRETRAINED_FEATURES.items()}
    if needs is not None and fe.kind != needs:
        what = "raw samples" if needs == "waveform" else "Whisper's log-mel features"
        rule = f"must be {needs!r} for model.encoder={m.encoder} (it reads {what})"
        out.append(("features.kind", rule, fe.kind))
    elif needs is None and fe.kind in readers:
        rule = f"{fe.kind!r} needs model.encoder={readers[fe.kind]}, not {m.encoder!r}"
        out.append(("features.kind", rule, fe.kind))
    if hf and not m.init_from:
        rule = f"must name a local Hugging Face model directory for model.encoder={m.encoder}"
        out.append(("model.init_from", rule, m.init_from))
    if hf and fe.sample_rate != 16000:
        rule = f"must be 16000 for model.encoder={m.encoder} (the rate it was pretrained on)"
        out.append(("features.sample_rate", rule, fe.sample_rate))
    if m.whisper_window_s is not None and m.encoder != "hf_whisper":
        rule = f"is only used with model.encoder=hf_whisper, not {m.encoder!r}"
        out.append(("model.whisper_window_s", rule, m.whisper_window_s))
    return out
