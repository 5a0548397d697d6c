"""Export a streaming model's per-chunk step (TorchScript or ONNX), and its latency figures.

:func:`export_model` exports the full-utterance forward; a streaming model (``model.chunk_ms >
0``) also needs the step that :class:`~speechtune.inference.StreamingDecoder` runs once per
chunk. :func:`export_streaming` traces that step with the state it carries between chunks as
explicit inputs and outputs::

    (feats [1, Ti, n_mels], offset [], keys [N, 1, H, L, D/H], values [N, 1, H, L, D/H],
     conv [N, 1, K-1, D])  ->  (log_probs [1, Tc, V], offset, keys, values, conv)

* ``feats``: the un-normalised log-mels of exactly the chunk's subsampling windows,
  ``(Tc - 1) * S + R`` frames for ``Tc`` encoder frames (factor ``S``, receptive field ``R``);
  CMVN, subsampling, every Conformer block and the CTC head (sos/eos banned) are in the graph.
* ``offset``: encoder frames already encoded (absolute positions of ``model.pos_enc=abs``).
* ``keys``/``values``: each of the ``N`` blocks' attention keys and values of the left context
  (``L`` grows from 0 to ``left_chunks * chunk`` frames, or without bound for
  ``left_chunks = -1``), ``conv``: each block's last ``K - 1`` depthwise-convolution inputs.

That is the computation of the eager decoder (:meth:`ConformerEncoder.forward_chunk`'s caches),
not a recomputation over a growing window. Decoding through the artefact (buffering, chunk
windows, greedy CTC, the front end) is :mod:`speechtune.inference._stream_runtime`.

Artefacts: ``model.stream.torchscript.pt`` (metadata in ``extra/speechtune_stream_export.json``)
and ``model.stream.onnx`` (metadata in the ``speechtune_stream_export`` property). Their own
metadata key keeps :func:`~speechtune.inference.load_exported` from mistaking them for
whole-utterance graphs. :func:`export_streaming` verifies the artefact against the eager
decoder on seeded noise (several chunks, a full and a partial left context, a short last
chunk) and writes nothing that disagrees. Load artefacts only from trusted sources (a
TorchScript file is code).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import logging
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from speechtune.data import Manifest, load_audio
from speechtune.inference._export import (
    ONNX_OPSET,
    VERIFY_ATOL,
    _atomic_write,
    _require,
    _symbols,
    exported_format,
)
from speechtune.inference._formats import FORMATS
from speechtune.inference._recognizer import Recognizer, resolve_model_file
from speechtune.inference._stream_runtime import (
    STATE_NAMES,
    STREAM_FORMAT_VERSION,
    STREAM_FORMATS,
    STREAM_METADATA_KEY,
    TS_EXTRA,
    ExportedStreamingRecognizer,
    initial_state,
    load_streaming_export,
    streaming_export_format,
)
from speechtune.inference._streaming import (
    LATENCY_UTTERANCES,
    StreamingDecoder,
    StreamResult,
    run_stream,
    streaming_latency,
)
from speechtune.models import BLANK_ID, ConformerEncoder, LayerCache

log = logging.getLogger(__name__)


# -- the graph -------------------------------------------------------------------------------
class _ChunkStep(nn.Module):
    """One chunk: log-mel window and state in, CTC log-probs and the next state out.

    Re-states :meth:`ConformerEncoder.forward_chunk` around the blocks' own ``forward_chunk``
    for two things a trace would otherwise freeze: the absolute position ``offset`` (a Python
    int in the eager cache) becomes a tensor, and the left-context trim becomes a slice from
    the end, which clamps at run time instead of depending on the traced cache length.
    """

    def __init__(self, rec: Recognizer) -> None:
        super().__init__()
        encoder = rec.model.encoder
        if not isinstance(encoder, ConformerEncoder):
            raise ValueError(f"the {rec.cfg.model.encoder!r} encoder does not stream")
        n_mels = rec.cfg.features.n_mels
        mean = rec.cmvn.mean.detach().clone() if rec.cmvn is not None else torch.zeros(n_mels)
        std = rec.cmvn.std.detach().clone() if rec.cmvn is not None else torch.ones(n_mels)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.ban: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        ban = torch.zeros(rec.model.vocab_size, dtype=torch.bool)
        if rec.model.decoder is not None:
            ban[rec.model.sos_eos_id] = True  # as StreamingDecoder bans it
        self.register_buffer("ban", ban)
        self.subsampling = rec.model.subsampling
        self.encoder = encoder
        self.ctc = rec.model.ctc
        self.relative = rec.cfg.model.pos_enc == "rel"
        self.left = encoder.streaming.left_frames

    def _positions(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``PositionalEncoding.forward(x, offset)`` with a tensor offset (eval: no dropout).

        The same arithmetic as ``sinusoidal_encoding``; the export's check against the eager
        decoder would catch the two drifting apart (it streams past the first chunk)."""
        scale = self.encoder.pos.scale
        d = self.encoder.d_model
        steps = (offset + torch.arange(x.size(1), dtype=torch.long)).to(torch.float32)[:, None]
        idx = torch.arange(0, d, 2, dtype=torch.float32)
        angles = steps * torch.exp(-math.log(10000.0) * idx / d)
        # sin/cos interleaved as sinusoidal_encoding writes them, built by stacking (traceable)
        pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1)[:, :d]
        return x * scale + pe.to(x.dtype)

    def _trim(self, cached: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            return cached
        if self.left == 0:
            return cached[:, :, :0]
        return cached[:, :, -self.left :]  # clamps while fewer frames are cached

    def forward(
        self,
        feats: torch.Tensor,
        offset: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        conv: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = ((feats - self.mean) / self.std).unsqueeze(1)
        # Conv2dSubsampling.subsample without its padding mask: every window here is complete.
        if self.subsampling.plan:
            y = self.subsampling.conv(x)
            b, c, t, f = y.shape
            x = self.subsampling.proj(y.transpose(1, 2).reshape(b, t, c * f))
        else:
            x = self.subsampling.proj(x.squeeze(1))
        x = x * self.encoder.pos.scale if self.relative else self._positions(x, offset)
        new_keys, new_values, new_conv = [], [], []
        for i, layer in enumerate(self.encoder.layers):
            cache = LayerCache(keys[i], values[i], conv[i])
            # a ConformerBlock (ModuleList items are typed nn.Module); None: trimmed below
            x, cache = cast(Any, layer).forward_chunk(x, cache, None)
            new_keys.append(self._trim(cache.keys))
            new_values.append(self._trim(cache.values))
            new_conv.append(cache.conv)
        log_probs = self.ctc.log_probs(x).masked_fill(self.ban, float("-inf"))
        return (
            log_probs,
            offset + x.size(1),
            torch.stack(new_keys),
            torch.stack(new_values),
            torch.stack(new_conv),
        )


# -- exporting -------------------------------------------------------------------------------
def _metadata(rec: Recognizer, fmt: str, checkpoint: Path) -> dict[str, Any]:
    encoder = cast(ConformerEncoder, rec.model.encoder)
    return {
        "format": "speechtune-stream-export",
        "format_version": STREAM_FORMAT_VERSION,
        "runtime": fmt,
        "graph_input": "log_mel_chunk",
        "graph_state": list(STATE_NAMES),
        "decoding": "ctc_greedy",
        "blank_id": BLANK_ID,
        "sample_rate": rec.cfg.features.sample_rate,
        "features": dataclasses.asdict(rec.cfg.features),
        "cmvn_in_graph": rec.cmvn is not None,
        "chunk_ms": rec.cfg.model.chunk_ms,
        "chunk_frames": encoder.streaming.chunk,
        "left_frames": encoder.streaming.left_frames,
        "subsampling_factor": rec.model.subsampling.factor,
        "subsampling_receptive_field": rec.model.subsampling.min_input_frames,
        "num_layers": len(encoder.layers),
        "num_heads": encoder.num_heads,
        "d_model": encoder.d_model,
        "conv_kernel": encoder.conv_kernel,
        "tokenizer": rec.tokenizer.to_dict(),
        "vocab": _symbols(rec.tokenizer),
        "config": json.loads(json.dumps(dataclasses.asdict(rec.cfg))),
        "source_checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "torch_version": torch.__version__,
    }


def _probe_feats(rec: Recognizer) -> list[torch.Tensor]:
    """Seeded noise log-mels (un-normalised) whose streams cover what a trace could freeze: one
    chunk or less, several chunks (the left context filling up, then trimmed), a short last
    chunk, and no complete window at all."""
    gen = torch.Generator().manual_seed(0)
    chunk_in = rec.model.streaming.chunk * rec.model.subsampling.factor
    lookahead = rec.model.subsampling.min_input_frames - rec.model.subsampling.factor
    n_mels = rec.cfg.features.n_mels
    lengths = [5 * chunk_in + lookahead + 3, chunk_in // 2 + lookahead + 1, 2]
    return [torch.randn(n, n_mels, generator=gen) * 3.0 - 5.0 for n in lengths]


def _trace_inputs(rec: Recognizer, meta: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """A chunk window with a non-empty left context (the state after one chunk)."""
    step = _ChunkStep(rec).eval()
    window = _probe_feats(rec)[0][
        : (meta["chunk_frames"] - 1) * meta["subsampling_factor"]
        + meta["subsampling_receptive_field"]
    ]
    with torch.no_grad():
        _, *state = step(window[None], *initial_state(meta))
    return (window[None], *state)


def _export_torchscript(
    step: _ChunkStep, inputs: tuple[torch.Tensor, ...], meta: dict[str, Any], target: Path
) -> None:
    with warnings.catch_warnings():
        # Tracing warns about size arithmetic it records; the verification proves it dynamic.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(step, inputs, check_trace=False)
        _atomic_write(
            target,
            lambda p: torch.jit.save(traced, str(p), _extra_files={TS_EXTRA: json.dumps(meta)}),
        )


def _export_onnx(
    step: _ChunkStep, inputs: tuple[torch.Tensor, ...], meta: dict[str, Any], target: Path
) -> None:
    onnx = _require("onnx")
    buf: Any = io.BytesIO()
    cache_axes = {3: "left_frames"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as _export._export_onnx
        torch.onnx.export(
            step,
            inputs,
            buf,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["feats", *STATE_NAMES],
            output_names=["log_probs", *(f"next_{k}" for k in STATE_NAMES)],
            dynamic_axes={
                "feats": {1: "feat_frames"},
                "keys": cache_axes,
                "values": cache_axes,
                "log_probs": {1: "chunk_frames"},
                "next_keys": {3: "next_left_frames"},
                "next_values": {3: "next_left_frames"},
            },
        )
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = STREAM_METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)
    _atomic_write(target, lambda p: onnx.save(model, str(p)))


def _no_text(tokens: list[int]) -> str:
    return ""


@torch.no_grad()
def _verify(rec: Recognizer, target: Path) -> None:
    """Stream the probes through the artefact and the eager decoder; raise unless they agree."""
    exported = ExportedStreamingRecognizer(target)
    for feats in _probe_feats(rec):
        eager = StreamingDecoder(rec.model, keep_encoder_output=True)
        got = exported.decoder(keep_log_probs=True)
        # Fed in blocks of one chunk, as stream_transcribe feeds them: a dynamic int8 model
        # takes activation ranges per call, so a whole-utterance block would be another input.
        run_stream(eager, rec.normalize(feats[None])[0], _no_text, StreamResult(""), 0.0)
        run_stream(got, feats, _no_text, StreamResult(""), 0.0)
        if not eager.encoded and not got.log_probs:
            continue
        # per chunk, as the decoder computes them (the CTC layer of a dynamic int8 model too)
        chunks = [rec.model.ctc.log_probs(enc) for enc in eager.encoded]
        ref = torch.cat(chunks, dim=1) if chunks else None
        out = torch.cat(got.log_probs, dim=1) if got.log_probs else None
        if ref is not None and rec.model.decoder is not None:
            ref[..., rec.model.sos_eos_id] = float("-inf")
        same = ref is not None and out is not None and ref.shape == out.shape
        finite = torch.isfinite(ref) if ref is not None else None
        diff = (
            float((ref[finite] - out[finite]).abs().max())
            if same and ref is not None and out is not None and finite is not None
            else float("inf")
        )
        if not same or diff > VERIFY_ATOL or got.chunks != eager.chunks:
            target.unlink(missing_ok=True)
            raise RuntimeError(
                f"exported streaming {exported.format} model disagrees with eager streaming on "
                f"{feats.size(0)} feature frames ({got.chunks} vs {eager.chunks} chunks, max "
                f"|diff| {diff:.3g}); not exported"
            )


def export_streaming(
    checkpoint: str | Path, out: str | Path, format: str = "torchscript", *, verify: bool = True
) -> Path:
    """Export the per-chunk step of a streaming ``model.pt`` (``model.chunk_ms > 0``).

    Args:
        checkpoint: A ``model.pt`` (or its run directory) of a streaming Conformer.
        out: A directory (the file is ``model.stream.torchscript.pt`` or
            ``model.stream.onnx``) or a file path ending in ``.pt``/``.ts``/``.onnx``.
        format: ``"torchscript"`` or ``"onnx"``.
        verify: Stream seeded noise through the artefact and the eager decoder and compare
            (needs onnxruntime for ONNX; skipped with a warning without it).

    Returns:
        The path of the artefact.

    Raises:
        ValueError: Unknown format, a full-context model, an exported file as ``checkpoint``,
            or ONNX for an int8 (or QAT) model.
        FileNotFoundError: The checkpoint does not exist.
        ImportError: ONNX requested without the ``onnx`` package.
        RuntimeError: The artefact does not reproduce eager streaming.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    if exported_format(checkpoint) is not None or streaming_export_format(checkpoint) is not None:
        raise ValueError(
            f"{checkpoint} is already an exported model; export the model.pt it came from"
        )
    checkpoint = resolve_model_file(checkpoint)
    if format == "onnx":
        _require("onnx")
    rec = Recognizer.load(checkpoint, "cpu").eval()
    if not rec.model.streaming.enabled:
        raise ValueError(
            f"{checkpoint} is a full-context model: only a model trained with model.chunk_ms > 0 "
            "has a chunk step to export"
        )
    if format == "onnx" and rec.quantization in ("int8", "qat"):
        # as export_model: torch's ONNX exporter has no int8 operators
        raise ValueError(
            f"{checkpoint} is an int8 model: its chunk step exports to torchscript only"
        )
    out = Path(out)
    target = out if out.suffix in (".pt", ".ts", ".onnx") else out / STREAM_FORMATS[format]
    target.parent.mkdir(parents=True, exist_ok=True)
    meta = _metadata(rec, format, checkpoint)
    step = _ChunkStep(rec).eval()
    inputs = _trace_inputs(rec, meta)
    if format == "torchscript":
        _export_torchscript(step, inputs, meta, target)
    else:
        _export_onnx(step, inputs, meta, target)
    if verify:
        if format == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            warnings.warn(
                "onnxruntime is not installed: the streaming ONNX export was not verified",
                UserWarning,
                stacklevel=2,
            )
        else:
            _verify(rec, target)
    return target


def streaming_metrics(
    model_path: str | Path,
    manifest: Manifest,
    max_utterances: int = LATENCY_UTTERANCES,
    exported: bool = True,
) -> dict[str, float]:
    """Streaming latency of a ``model.pt`` on the first utterances of ``manifest``.

    Args:
        model_path: The model; a full-context one (``model.chunk_ms = 0``) gives ``{}``.
        manifest: Utterances to stream.
        max_utterances: How many of them.
        exported: Also export the chunk step to TorchScript (in a temporary directory, well
            under a second for a recipe-size model) and time streaming through it.

    Returns:
        :func:`~speechtune.inference.streaming_latency`'s ``stream_chunk_ms_p50``,
        ``stream_chunk_ms_p95`` and ``stream_rtf`` (eager), and with ``exported`` the same
        figures of the TorchScript step as ``stream_export_chunk_ms_p50``,
        ``stream_export_chunk_ms_p95`` and ``stream_export_rtf``.
    """
    rec = Recognizer.load(model_path, "cpu")
    if not rec.model.streaming.enabled:
        return {}
    sr = rec.cfg.features.sample_rate
    waves = [load_audio(manifest, u, sr) for u in list(manifest)[:max_utterances]]
    figures = streaming_latency(rec, waves)
    if not exported:
        return figures
    with tempfile.TemporaryDirectory(prefix="speechtune-stream-") as tmp:
        try:
            path = export_streaming(model_path, tmp, "torchscript")
        except (RuntimeError, ValueError) as exc:
            # The eager figures stand on their own; a run's metrics are not lost to an export.
            log.warning("no exported streaming latency: %s", exc)
            return figures
        timed = streaming_latency(load_streaming_export(path), waves)
    return {**figures, **{k.replace("stream_", "stream_export_", 1): v for k, v in timed.items()}}
