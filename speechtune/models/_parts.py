"""Which part of an :class:`~speechtune.models.ASRModel` a parameter belongs to.

Fine-tuning treats the model as a stack, bottom to top: the convolutional front end
(``subsampling``), the encoder layers ``0 .. N-1``, then everything above them (a final
LayerNorm or a bidirectional RNN's projection, the CTC head, the attention decoder). Freezing
and layer-wise learning rates are decided per parameter from its name alone, so the same rule
holds for names that peft's LoRA layers add (``...q_proj.lora_A.default.weight``).
"""

from __future__ import annotations

import re

#: The depth :func:`layer_of` gives the front end: below encoder layer 0.
FRONTEND = -1

# Transformer and Conformer stacks: encoder.layers.<i>.*; torch's LSTM/GRU name their
# per-layer tensors weight_ih_l<i>, bias_hh_l<i>_reverse, ...
_STACK = re.compile(r"^encoder\.layers\.(\d+)\.")
_RNN = re.compile(r"^encoder\.rnn\.(?:weight|bias)_\w+_l(\d+)(?:_reverse)?$")
# A Hugging Face Wav2Vec2/HuBERT encoder (model.encoder=hf_wav2vec2) under encoder.model: its
# CNN feature encoder is the front end (what fine-tuning recipes freeze); the projection and
# convolutional positions between the CNN and layer 0 count as layer 0.
_HF_FRONTEND = re.compile(r"^encoder\.model\.feature_extractor\.")
_HF_STACK = re.compile(r"^encoder\.model\.encoder\.layers\.(\d+)\.")
_HF_BOTTOM = re.compile(
    r"^encoder\.model\.(?:feature_projection\.|masked_spec_embed$|encoder\.pos_conv_embed\.)"
)
# A Hugging Face Whisper encoder (model.encoder=hf_whisper): its two convolutions are the front
# end, its fixed sinusoidal positions count as layer 0, its layers are encoder.model.layers.<i>.
_WHISPER_FRONTEND = re.compile(r"^encoder\.model\.conv[12]\.")
_WHISPER_BOTTOM = re.compile(r"^encoder\.model\.embed_positions\.")
_WHISPER_STACK = re.compile(r"^encoder\.model\.layers\.(\d+)\.")

#: Parameters whose first dimension is the output vocabulary (mapped token by token when the
#: vocabularies of a pretrained model and a fine-tuned one differ).
VOCAB_PARAMS = (
    "ctc.proj.weight",
    "ctc.proj.bias",
    "decoder.embed.weight",
    "decoder.out.weight",
    "decoder.out.bias",
)

#: Modules that map to or from the vocabulary: they train even when the rest of a model is
#: adapted through LoRA only, since a new token's rows start from scratch.
OUTPUT_MODULES = ("ctc.proj", "decoder.embed", "decoder.out")


def layer_of(name: str) -> int | None:
    """The depth of parameter ``name`` of an ASR model.

    Args:
        name: A name from ``model.named_parameters()``.

    Returns:
        :data:`FRONTEND` for the subsampling front end, ``i`` for encoder layer ``i`` (0 is the
        bottom), ``None`` for parameters above the encoder layers (heads, decoder, final norms).
    """
    if (
        name.startswith("subsampling.")
        or _HF_FRONTEND.match(name)
        or _WHISPER_FRONTEND.match(name)
    ):
        return FRONTEND
    if _HF_BOTTOM.match(name) or _WHISPER_BOTTOM.match(name):
        return 0
    match = (
        _STACK.match(name)
        or _RNN.match(name)
        or _HF_STACK.match(name)
        or _WHISPER_STACK.match(name)
    )
    return int(match.group(1)) if match else None
