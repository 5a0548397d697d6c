"""Rules of fine-tuning: the ``finetune`` section against the model it adapts, and a pretrained
waveform encoder (``model.encoder: hf_wav2vec2``) against its input (``features.kind:
waveform``) and its source (``model.init_from``)."""

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
    attention = m.encoder in ("transformer", "conformer", "hf_wav2vec2")
    attention = attention or m.head == "ctc_attention"
    linear = attention or m.encoder in ("blstm", "bgru")
    if ft.lora_rank > 0 and not (linear if ft.lora_targets == "all_linear" else attention):
        rule = (
            f"matches no layer of a {m.encoder!r} encoder with head {m.head!r} (attention "
            "targets need a transformer/conformer encoder or the ctc_attention head)"
        )
        out.append(("finetune.lora_targets", rule, ft.lora_targets))
    return out


def _waveform_encoder(cfg: RecipeConfig) -> list[Problem]:
    # The directory itself is checked when the model is built (speechtune.models).
    out: list[Problem] = []
    m, fe = cfg.model, cfg.features
    hf = m.encoder == "hf_wav2vec2"
    if hf != (fe.kind == "waveform"):
        rule = (
            "must be 'waveform' for model.encoder=hf_wav2vec2 (it reads raw samples)"
            if hf
            else f"'waveform' needs model.encoder=hf_wav2vec2, not {m.encoder!r}"
        )
        out.append(("features.kind", rule, fe.kind))
    if hf and not m.init_from:
        rule = "must name a local Hugging Face model directory for model.encoder=hf_wav2vec2"
        out.append(("model.init_from", rule, m.init_from))
    if hf and fe.sample_rate != 16000:
        rule = "must be 16000 for model.encoder=hf_wav2vec2 (the rate it was pretrained on)"
        out.append(("features.sample_rate", rule, fe.sample_rate))
    edge = cfg.edge
    if hf and (edge.quantize != "none" or edge.prune_sparsity > 0):
        # Quantisation and pruning rebuild or mask speechtune's own layers; neither has been
        # verified on a Hugging Face encoder, so refuse rather than ship an unchecked model.
        key = "edge.quantize" if edge.quantize != "none" else "edge.prune_sparsity"
        rule = "is not supported with model.encoder=hf_wav2vec2 (leave it at its default)"
        out.append((key, rule, getattr(edge, key.split(".")[1])))
    return out
