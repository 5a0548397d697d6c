"""Int8 quantisation of a speech model for the CPU (``edge.quantize``), with torch.ao eager mode.

Three schemes, all int8 weights and int8 kernels (fbgemm/x86, or qnnpack on ARM):

* ``dynamic_int8``: weights quantised after training; activations are quantised on the fly,
  per batch. Covers ``nn.Linear`` (LSTM/GRU layers stay float, see :data:`DYNAMIC_LAYERS`).
* ``static_int8``: weights and activations quantised after training; activation ranges come
  from a few calibration batches seen by ``edge.observer`` observers.
* ``qat_int8``: quantisation-aware training: the model trains with fake quantisation (weights
  and activations rounded to int8 in the forward pass, straight-through gradients), and is
  converted to the same int8 model as ``static_int8`` after training.

Static and QAT quantise each ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` on its own: the
layer is wrapped as quantise -> int8 layer -> dequantise (:class:`QuantizedSlot`), so every op
between those layers (norms, attention softmax, activations, residual sums, RNN cells) stays in
float. That asks nothing of the model's code, which eager mode static quantisation otherwise
needs (stubs at each float/int8 boundary), and works for every encoder of the recipe.

Why torch.ao rather than torchao: torch 2.13 still ships torch.ao.quantization (deprecated in
favour of torchao, with a warning that is silenced here), and it covers the three schemes with
no new dependency. torchao (not installed or tried here) documents static int8 through PT2E,
which needs ``torch.export`` of the whole model (the packed-sequence RNN encoders do not
export); its int8 weights are torchao tensor subclasses, so every reader of a ``model.pt``
would need torchao, and it targets torch.compile/torch.export rather than the TorchScript that
``speechtune export`` traces. torch.ao's int8 modules load with ``weights_only=True`` and trace.
torch.ao has no int4 Linear module (its 4-bit support is for embedding bags): int4 weights
(``weight_int4``) are hand-written layers with their own packing, in ``_int4``.

A quantised model is stored like any ``model.pt``: the float architecture comes from the config,
and the file's ``quantization`` entry (``"qat"`` or ``"int8"``) says how to rebuild the module
structure before the state dict is loaded (:func:`restore_quantized`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

#: Quantisation stage of a model file: fake-quantised during QAT, or converted to int8.
QAT_STAGE = "qat"
INT8_STAGE = "int8"
STAGES = (QAT_STAGE, INT8_STAGE)

#: Layers that static and QAT quantisation wrap, and that dynamic quantisation converts.
STATIC_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Not LSTM/GRU: torch's dynamic int8 RNNs keep their weights in TorchScript objects, which
#: ``torch.load(weights_only=True)`` refuses, so a model file could not hold them.
DYNAMIC_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear,)


@contextlib.contextmanager
def quiet_quantization_warnings() -> Iterator[None]:
    """Silence torch.ao's deprecation notices and its warnings about uncalibrated observers.

    The deprecations are documented above (they also fire when an int8 state dict is loaded);
    the observer warnings fire when :func:`restore_quantized` converts an uncalibrated skeleton
    whose scales the state dict then overwrites.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        warnings.filterwarnings("ignore", message=r".*must run observer before calling")
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated")
        warnings.filterwarnings("ignore", message=r".*reduce_range will be deprecated")
        yield


def _ao() -> Any:
    with quiet_quantization_warnings():
        import torch.ao.quantization as tq
    return tq


class QuantizedSlot(nn.Module):
    """One layer between a quantise and a dequantise stub: the unit that static int8 swaps.

    Args:
        layer: an ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d``.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        tq = _ao()
        self.quant = tq.QuantStub()
        self.layer = layer
        self.dequant = tq.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.layer(self.quant(x)))

    def __getattr__(self, name: str) -> Any:
        # The model's code reads layer attributes (e.g. beam search reads the decoder output
        # layer's out_features); the slot answers for the layer it holds.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)


def _wrap_layers(model: nn.Module) -> list[QuantizedSlot]:
    """Put every float Linear/Conv of ``model`` into a :class:`QuantizedSlot`, in place."""
    slots: list[QuantizedSlot] = []
    for parent in list(model.modules()):
        if isinstance(parent, QuantizedSlot):
            continue
        for name, child in list(parent.named_children()):
            if type(child) in STATIC_LAYERS:
                slot = QuantizedSlot(child)
                setattr(parent, name, slot)
                slots.append(slot)
    return slots


def _reduce_range() -> bool:
    # fbgemm/x86 int8 kernels can overflow with 8-bit activations; torch's own default qconfigs
    # use 7 bits there (qnnpack on ARM does not need it).
    return torch.backends.quantized.engine in ("fbgemm", "x86")


def _observer(name: str) -> Any:
    tq = _ao()
    kinds = {"minmax": tq.MinMaxObserver, "moving_average": tq.MovingAverageMinMaxObserver}
    if name not in kinds:
        raise ValueError(f"edge.observer: unknown {name!r}; valid: {', '.join(kinds)}")
    return kinds[name]


def static_qconfig(observer: str) -> Any:
    """The QConfig of ``static_int8``: ``observer`` on activations, per-channel int8 weights."""
    tq = _ao()
    act = _observer(observer).with_args(dtype=torch.quint8, reduce_range=_reduce_range())
    return tq.QConfig(activation=act, weight=tq.default_per_channel_weight_observer)


class TrainOnlyFakeQuantize(torch.ao.quantization.FakeQuantize):
    """Fake quantisation whose observer moves only in training mode.

    The stock FakeQuantize also updates its ranges in eval mode, so each dev evaluation during
    QAT would fit the ranges to the dev set and change the next epoch's training.
    """

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(X)
        enabled = self.observer_enabled.clone()
        self.observer_enabled.fill_(0)
        try:
            return super().forward(X)
        finally:
            self.observer_enabled.copy_(enabled)


def qat_qconfig(observer: str) -> Any:
    """The QConfig of ``qat_int8``: fake quantisation with ``observer`` ranges on activations."""
    tq = _ao()
    act = TrainOnlyFakeQuantize.with_args(
        observer=_observer(observer),
        quant_min=0,
        quant_max=127 if _reduce_range() else 255,
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
    )
    # Weights keep the stock FakeQuantize: observing them in eval mode changes nothing (they do
    # not move there), and conversion needs the observer to run on them.
    weight = tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver,
        quant_min=-128,
        quant_max=127,
        dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
    )
    return tq.QConfig(activation=act, weight=weight)


def prepare_static(model: nn.Module, observer: str) -> nn.Module:
    """Wrap ``model``'s layers and attach calibration observers (in place, eval mode).

    Run calibration batches through the returned model, then :func:`convert_int8`.
    """
    tq = _ao()
    model.eval()
    qconfig = static_qconfig(observer)
    for slot in _wrap_layers(model):
        slot.qconfig = qconfig
    with quiet_quantization_warnings():
        return tq.prepare(model, inplace=True)


def prepare_qat(model: nn.Module, observer: str) -> nn.Module:
    """Wrap ``model``'s layers for quantisation-aware training (in place, training mode).

    The layers' weight and bias Parameters are the same objects afterwards (torch.ao's QAT
    modules take them over), so an optimizer built on ``model.parameters()`` before this call
    keeps training them.
    """
    tq = _ao()
    model.train()
    qconfig = qat_qconfig(observer)
    for slot in _wrap_layers(model):
        slot.qconfig = qconfig
    with quiet_quantization_warnings():
        return tq.prepare_qat(model, inplace=True)


def convert_int8(model: nn.Module) -> nn.Module:
    """Swap the observed (static) or fake-quantised (QAT) layers for int8 ones (in place, eval)."""
    tq = _ao()
    model.eval()
    with quiet_quantization_warnings():
        return tq.convert(model, inplace=True)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """Dynamic int8: Linear weights to int8, activations quantised per call (in place)."""
    tq = _ao()
    model.eval()
    with quiet_quantization_warnings():
        return tq.quantize_dynamic(model, set(DYNAMIC_LAYERS), dtype=torch.qint8, inplace=True)


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    scheme: str,
    observer: str,
    calibrate: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """The int8 model of a trained float (or QAT) model, converted in place.

    Args:
        model: the float model, or for ``qat_int8`` the model trained after :func:`prepare_qat`.
        scheme: ``dynamic_int8``, ``static_int8`` or ``qat_int8``.
        observer: ``minmax`` or ``moving_average`` (``static_int8`` calibration).
        calibrate: for ``static_int8``: runs calibration batches through the model it is given.

    Raises:
        ValueError: an unknown scheme, or ``static_int8`` without ``calibrate``.
    """
    if scheme == "dynamic_int8":
        return quantize_dynamic(model)
    if scheme == "qat_int8":
        return convert_int8(model)
    if scheme == "static_int8":
        if calibrate is None:
            raise ValueError("static_int8 quantisation needs calibration batches")
        prepared = prepare_static(model, observer)
        calibrate(prepared)
        return convert_int8(prepared)
    raise ValueError(
        f"edge.quantize: unknown {scheme!r}; valid: dynamic_int8, static_int8, qat_int8"
    )


def restore_quantized(model: nn.Module, scheme: str, observer: str, stage: str) -> nn.Module:
    """Give a freshly built float model the module structure of a saved quantised one.

    The scales, zero points and int8 weights of the skeleton are placeholders: load the saved
    state dict into the result.

    Args:
        model: the float model the config builds.
        scheme: the model's ``edge.quantize``.
        observer: the model's ``edge.observer``.
        stage: ``"qat"`` (fake-quantised, mid-training) or ``"int8"`` (converted).

    Raises:
        ValueError: an unknown stage, or a stage that does not fit the scheme.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown quantization stage {stage!r}; valid: {', '.join(STAGES)}")
    if stage == QAT_STAGE:
        if scheme != "qat_int8":
            raise ValueError(f"a QAT model file needs edge.quantize=qat_int8, not {scheme!r}")
        return prepare_qat(model, observer).eval()
    if scheme == "dynamic_int8":
        return quantize_dynamic(model)
    if scheme == "static_int8":
        return convert_int8(prepare_static(model, observer))
    if scheme == "qat_int8":
        return convert_int8(prepare_qat(model, observer))
    raise ValueError(f"an int8 model file needs a quantising edge.quantize, not {scheme!r}")


def activation_observers(model: nn.Module) -> list[Any]:
    """The activation observers of a prepared (static) or QAT model: what ``edge.observer`` picks."""
    tq = _ao()
    # Weights are observed per channel; activations per tensor (inside a FakeQuantize for QAT).
    return [
        m
        for m in model.modules()
        if isinstance(m, tq.ObserverBase) and not isinstance(m, tq.PerChannelMinMaxObserver)
    ]
