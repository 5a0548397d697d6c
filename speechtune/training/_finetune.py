"""Fine-tuning a model: start from a pretrained one, freeze or adapt parts of it.

:func:`prepare_finetune` runs once, between building the model and building its optimiser:

1. ``model.init_from``: the weights of a speechtune ``model.pt``. Architecture keys must
   match; the output layers (CTC head, decoder embedding and output) are mapped row by row
   for the tokens both vocabularies share, and a new token's rows keep their fresh init.
2. ``finetune.lora_rank``: LoRA adapters (peft); the base weights freeze, adapters and output
   layers train.
3. ``finetune.freeze_frontend`` / ``finetune.freeze_layers``: those parameters stop training.

The optimiser then takes only what still trains (``layer_lr_groups`` in ``_optim.py``), so
frozen weights get neither updates nor weight decay.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from speechtune.config import (
    ConfigError,
    ConfigProblem,
    ModelConfig,
    RecipeConfig,
    config_to_dict,
    flatten,
)
from speechtune.data import Tokenizer
from speechtune.inference import Recognizer
from speechtune.models import (
    FRONTEND,
    PRETRAINED_ENCODERS,
    VOCAB_PARAMS,
    add_lora,
    layer_of,
    load_pretrained_encoder,
    merged_state_dict,
)

log = logging.getLogger(__name__)


def _attention(m: ModelConfig) -> bool:
    return m.encoder in ("transformer", "conformer") or m.head == "ctc_attention"


def _residual_stack(m: ModelConfig) -> bool:
    return m.encoder in ("transformer", "conformer")


# The keys that decide the shapes or the computation of the weights, each with when it
# matters (judged on the pretrained model's config): a key that does not apply may differ.
_ARCHITECTURE: dict[str, Callable[[ModelConfig], bool]] = {
    "features.n_mels": lambda m: True,
    "model.encoder": lambda m: True,
    "model.d_model": lambda m: True,
    "model.num_layers": lambda m: True,
    "model.subsampling": lambda m: True,
    "model.head": lambda m: True,
    "model.num_heads": _attention,
    "model.ff_dim": _attention,
    "model.init": _residual_stack,  # deepnorm changes the residual layout, not only the init
    "model.conv_kernel": lambda m: m.encoder == "conformer",
    "model.pos_enc": lambda m: m.encoder == "conformer",
    "model.decoder_layers": lambda m: m.head == "ctc_attention",
}


def _symbols(tokenizer: Tokenizer) -> list[str]:
    """The symbol of every id (blank and sos/eos included); both built-in tokenizers have it."""
    symbols = getattr(tokenizer, "symbols", None)
    if symbols is None:
        raise ValueError(
            f"model.init_from: a {type(tokenizer).__name__} does not list its symbols, so the "
            "vocabularies cannot be mapped"
        )
    return list(symbols)


def _mismatch(key: str, path: str, theirs: Any, ours: Any) -> ConfigProblem:
    return ConfigProblem(
        key, f"must be {theirs!r}, as in the pretrained model (model.init_from={path})", ours
    )


def check_architecture(cfg: RecipeConfig, pretrained: RecipeConfig, path: str) -> None:
    """Refuse to load weights into a model of another architecture.

    Raises:
        ConfigError: one problem per architecture key that differs, naming the key, the
            pretrained model's value and this config's.
    """
    ours, theirs = flatten(config_to_dict(cfg)), flatten(config_to_dict(pretrained))
    problems = [
        _mismatch(key, path, theirs[key], ours[key])
        for key, applies in _ARCHITECTURE.items()
        if applies(pretrained.model) and ours[key] != theirs[key]
    ]
    if problems:
        raise ConfigError(problems)


def map_vocabulary(
    fresh: dict[str, torch.Tensor],
    pretrained: dict[str, torch.Tensor],
    new_symbols: Sequence[str],
    old_symbols: Sequence[str],
) -> int:
    """Copy the pretrained rows of the output layers into ``fresh`` for every shared token.

    Args:
        fresh: The new model's state (changed in place): the vocabulary-sized tensors of
            :data:`~speechtune.models.VOCAB_PARAMS` keep their fresh rows for new tokens.
        pretrained: The pretrained model's state.
        new_symbols: The new tokenizer's symbol of every id.
        old_symbols: The pretrained tokenizer's.

    Returns:
        How many of the new ids got a pretrained row (blank and sos/eos included).
    """
    old_index = {s: i for i, s in enumerate(old_symbols)}
    pairs = [(j, old_index[s]) for j, s in enumerate(new_symbols) if s in old_index]
    if pairs:
        new_ids = torch.tensor([j for j, _ in pairs])
        old_ids = torch.tensor([i for _, i in pairs])
        for name in VOCAB_PARAMS:
            if name in fresh and name in pretrained:
                fresh[name][new_ids] = pretrained[name][old_ids].to(fresh[name].dtype)
    return len(pairs)


def init_from_pretrained(model: nn.Module, cfg: RecipeConfig, tokenizer: Tokenizer) -> str:
    """Load the weights of the ``model.pt`` that ``cfg.model.init_from`` names into ``model``.

    Args:
        model: The freshly built model of ``cfg``, with ``tokenizer``'s vocabulary.
        cfg: The recipe; ``cfg.model.init_from`` is a ``model.pt`` or a run dir holding one,
            or for ``model.encoder: hf_wav2vec2``/``hf_whisper`` a local Hugging Face model directory.
        tokenizer: This run's tokenizer (its vocabulary may differ from the pretrained one).

    Returns:
        A line for the run's log: how many output tokens were mapped.

    Raises:
        ConfigError: the file is missing or not a speechtune model, or an architecture key or
            a weight's shape differs from the pretrained model.
    """
    path = str(cfg.model.init_from)
    if cfg.model.encoder in PRETRAINED_ENCODERS:
        # A Hugging Face directory: the encoder's weights; the CTC head keeps its fresh init
        # over this run's tokenizer (there is no speechtune vocabulary to map from).
        return load_pretrained_encoder(cfg.model.encoder, model.get_submodule("encoder"), path)
    try:
        source = Recognizer.load(path)  # torch.load(weights_only=True): no code in it runs
    except (FileNotFoundError, ValueError) as exc:  # one line naming the file and what is wrong
        raise ConfigError([ConfigProblem("model.init_from", str(exc), path)]) from exc
    check_architecture(cfg, source.cfg, path)
    pretrained = source.model.state_dict()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, value in state.items():
        if name in VOCAB_PARAMS:
            continue
        if name not in pretrained or pretrained[name].shape != value.shape:
            got = tuple(pretrained[name].shape) if name in pretrained else "missing"
            raise ConfigError(
                [
                    ConfigProblem(
                        "model.init_from",
                        f"weight {name} is {got} in {path}, this model needs {tuple(value.shape)}",
                        path,
                    )
                ]
            )
        state[name] = pretrained[name]
    new_symbols = _symbols(tokenizer)
    mapped = map_vocabulary(state, pretrained, new_symbols, _symbols(source.tokenizer))
    model.load_state_dict(state)
    return (
        f"model.init_from {path}: {mapped} of {len(new_symbols)} output tokens mapped from the "
        f"pretrained vocabulary (blank and sos/eos included), {len(new_symbols) - mapped} new "
        "with fresh rows"
    )


def freeze(model: nn.Module, frontend: bool, layers: int) -> int:
    """Stop training the front end (``frontend``) and the bottom ``layers`` encoder layers.

    LoRA adapters inside a frozen layer freeze with it.

    Returns:
        The number of parameter elements in the frozen parts (frozen before or not).
    """
    frozen = 0
    for name, param in model.named_parameters():
        depth = layer_of(name)
        if depth is None:
            continue
        if (frontend and depth == FRONTEND) or 0 <= depth < layers:
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def prepare_finetune(model: nn.Module, cfg: RecipeConfig, tokenizer: Tokenizer) -> list[str]:
    """Apply ``model.init_from``, LoRA and freezing to a freshly built ``model`` (in place).

    Nothing happens with the defaults (no ``init_from``, no LoRA, nothing frozen).

    Returns:
        Lines for the run's log (what was loaded, mapped, adapted and frozen); none by default.

    Raises:
        ConfigError: see :func:`init_from_pretrained`.
        ImportError: LoRA without peft installed.
    """
    ft = cfg.finetune
    notes: list[str] = []
    if cfg.model.init_from:
        notes.append(init_from_pretrained(model, cfg, tokenizer))
    elif ft.lora_rank > 0 or ft.freeze_frontend or ft.freeze_layers > 0:
        log.warning(
            "finetune: freezing or LoRA without model.init_from adapts a randomly "
            "initialised model"
        )
    if ft.lora_rank > 0:
        names = add_lora(model, ft)
        notes.append(
            f"finetune: LoRA rank {ft.lora_rank} on {len(names)} layers ({ft.lora_targets}); "
            "output layers train in full"
        )
    if ft.freeze_frontend or ft.freeze_layers > 0:
        frozen = freeze(model, ft.freeze_frontend, ft.freeze_layers)
        notes.append(
            f"finetune: {frozen} parameters frozen (front end: {ft.freeze_frontend}, bottom "
            f"encoder layers: {ft.freeze_layers})"
        )
    if notes:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        notes.append(f"finetune: {trainable} of {total} parameters train")
    return notes


def model_payload(recognizer: Recognizer) -> dict[str, Any]:
    """``recognizer.to_payload()`` with LoRA adapters merged: an ordinary ``model.pt``."""
    return recognizer.to_payload(state=merged_state_dict(recognizer.model))
