"""LoRA adapters (Hu et al., 2021) on an ASR model, through Hugging Face peft.

The adapters are injected in place (``peft.inject_adapter_in_model``), so the model keeps its
class, its methods and the names of everything but the adapted layers. Saving goes through
:func:`merged_state_dict`: adapters folded into the base weights under the plain layer names,
so that a fine-tuned ``model.pt`` loads and decodes like any other. peft is imported only here
and only when LoRA is on (the ``finetune`` extra).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from speechtune.config import FinetuneConfig
from speechtune.models._parts import OUTPUT_MODULES

_INSTALL = "pip install 'speechtune[finetune]'"


def _attention(names: frozenset[str]) -> Callable[[str], bool]:
    return lambda name: name.rpartition(".")[2] in names


def _all_linear(name: str) -> bool:
    # The front end is frozen or trained whole (finetune.freeze_frontend), never adapted;
    # the output layers train in full (a new token's rows have nothing to adapt from).
    return not name.startswith("subsampling.") and name not in OUTPUT_MODULES


# One explicit mapping from finetune.lora_targets to the Linear layers it adapts.
_TARGETS: dict[str, Callable[[str], bool]] = {
    "attention_qv": _attention(frozenset({"q_proj", "v_proj"})),
    "attention": _attention(frozenset({"q_proj", "k_proj", "v_proj", "out_proj"})),
    "all_linear": _all_linear,
}


def lora_target_modules(model: nn.Module, targets: str) -> list[str]:
    """The names of the ``nn.Linear`` layers of ``model`` that ``finetune.lora_targets`` adapts.

    Args:
        model: An ASR model (without adapters).
        targets: ``attention_qv`` (query and value projections of every attention layer, the
            LoRA paper's choice), ``attention`` (query, key, value and output projections) or
            ``all_linear`` (every Linear layer but the front end's and the output layers).

    Raises:
        ValueError: An unknown ``targets`` name (the valid ones are listed).
    """
    if targets not in _TARGETS:
        raise ValueError(
            f"finetune.lora_targets={targets!r} is not known; expected one of {list(_TARGETS)}"
        )
    wanted = _TARGETS[targets]
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and wanted(n)]


def add_lora(model: nn.Module, cfg: FinetuneConfig) -> list[str]:
    """Inject LoRA adapters into ``model`` in place and leave only them, and the output layers,
    trainable.

    Args:
        model: An ASR model, its pretrained weights already loaded.
        cfg: ``lora_rank`` (> 0), ``lora_alpha``, ``lora_dropout`` and ``lora_targets``.

    Returns:
        The names of the adapted layers.

    Raises:
        ImportError: peft is not installed (one line saying which extra to install).
        ValueError: ``lora_targets`` matches no layer of this model.
    """
    try:
        import peft
    except ImportError as exc:
        raise ImportError(f"finetune.lora_rank > 0 needs peft: {_INSTALL}") from exc
    names = lora_target_modules(model, cfg.lora_targets)
    if not names:
        raise ValueError(
            f"finetune.lora_targets={cfg.lora_targets!r} matches no layer of this model"
        )
    config = peft.LoraConfig(
        r=cfg.lora_rank,
        # peft annotates lora_alpha as int but only divides by it (scale = alpha / r).
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]
        lora_dropout=cfg.lora_dropout,
        target_modules=names,
        bias="none",
    )
    peft.inject_adapter_in_model(config, model)  # freezes every non-adapter parameter
    modules = dict(model.named_modules())
    for name in OUTPUT_MODULES:
        if name in modules:
            modules[name].requires_grad_(True)
    return names


def _tuner_layer_type() -> type[Any] | None:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # no peft: no model can hold adapters
        return None
    return BaseTunerLayer


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds peft adapter layers."""
    layer = _tuner_layer_type()
    return layer is not None and any(isinstance(m, layer) for m in model.modules())


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every LoRA adapter merged into its base layer.

    The keys are those of the model without adapters, so the result loads into a freshly built
    model (``Recognizer.load``); ``model`` itself is left as it is (a copy is merged).
    """
    layer = _tuner_layer_type()
    if layer is None or not has_lora(model):
        return model.state_dict()
    merged = copy.deepcopy(model)
    # Adapters wrap plain Linear layers only, so no adapter sits inside another one.
    for name, module in list(merged.named_modules()):
        if not isinstance(module, layer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = merged.get_submodule(parent_name) if parent_name else merged
        setattr(parent, child, module.get_base_layer())
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
