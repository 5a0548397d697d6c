"""Export a trained ``model.pt`` as one self-contained TorchScript or ONNX file.

The exported artefact serves greedy CTC decoding: the encoder and CTC head are in the graph;
an attention decoder (``ctc_attention`` head) is left out, and its sos/eos output is banned in
the graph exactly as :meth:`speechtune.models.ASRModel.ctc_greedy` bans it. Best-path collapse
and detokenisation are a few lines of Python done at load time from the stored vocabulary.

What is inside each artefact:

* **TorchScript** (``model.torchscript.pt``): the whole path *waveform -> log-probs*, i.e. the
  log-mel front end (``torch.stft`` traces cleanly), global CMVN, subsampling, encoder and CTC
  head. Inputs ``waves [B, T]`` float32 zero-padded and ``lengths [B]`` int64 samples.
  Metadata (JSON) is an extra file of the archive (``extra/speechtune_export.json``).
* **ONNX** (``model.onnx``): *log-mel features -> log-probs* (CMVN inside). The front end is
  not in the graph: torch 2.13's TorchScript-based ONNX exporter rejects complex ``torch.stft``
  ("STFT does not currently support complex types"), and its torch.export-based exporter cannot
  export the packed-sequence RNN encoders (data-dependent shapes). So the front-end config is
  stored as metadata and :class:`speechtune.features.LogMel` recomputes the identical features at
  load time. Inputs ``feats [B, F, n_mels]`` float32 and ``frames [B]`` int64. Metadata is the
  model's ``metadata_props`` entry ``speechtune_export``.

An int8 model (``edge.quantize``) exports to TorchScript only: its int8 operators trace into
the graph and give the eager int8 model's log-probs; the ONNX exporter has no such operators.
A ``weight_int4`` model exports to both: its layers dequantise with ordinary ops. TorchScript
keeps the packed int4 codes (the file stays small); the ONNX exporter folds the dequantisation
into constant float weights, so ``model.onnx`` is as large as a float model's.

Both graphs take dynamic batch and time; :func:`export_model` checks that by running the
artefact on lengths and batch sizes other than those it was traced with and comparing with the
eager model (raising if they differ), so a wrong export never reaches disk.

Security: ``model.pt`` is loaded with ``torch.load(weights_only=True)``, which cannot run code.
A TorchScript file is a *program* (``torch.jit.load`` runs its code by design), and an ONNX
file is run by onnxruntime; load exported artefacts only from sources you trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from speechtune.data import Tokenizer, tokenizer_from_dict
from speechtune.features import LogMel
from speechtune.inference._formats import FORMATS
from speechtune.inference._recognizer import Recognizer, pad_waves, resolve_model_file
from speechtune.models import BLANK_ID, Conv2dSubsampling, ctc_greedy_collapse

#: Bump when the metadata layout or the graph's inputs/outputs change.
EXPORT_FORMAT_VERSION = 1
METADATA_KEY = "speechtune_export"
_TS_EXTRA = f"{METADATA_KEY}.json"
#: Largest |log-prob| difference to the eager model that an export may show.
VERIFY_ATOL = 1e-4
#: Encoders the exporter is verified on (every encoder of the recipe).
SUPPORTED_ENCODERS = ("lstm", "blstm", "gru", "bgru", "transformer", "conformer", "searched")
ONNX_OPSET = 17


# -- graphs ----------------------------------------------------------------------------------
class _AcousticGraph(nn.Module):
    """Un-normalised log-mels -> CTC log-probs: CMVN, subsampling, encoder, CTC head.

    Re-states ``GlobalCMVN.forward`` and ``Conv2dSubsampling.forward`` without their input
    checks: those are data-dependent Python branches that tracing would freeze (and the
    ONNX exporters reject). The loader enforces the one that matters (minimum length) instead.
    """

    def __init__(self, rec: Recognizer) -> None:
        super().__init__()
        n_mels = rec.cfg.features.n_mels
        mean = rec.cmvn.mean.detach().clone() if rec.cmvn is not None else torch.zeros(n_mels)
        std = rec.cmvn.std.detach().clone() if rec.cmvn is not None else torch.ones(n_mels)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.subsampling: Conv2dSubsampling = rec.model.subsampling
        self.encoder = rec.model.encoder
        self.ctc = rec.model.ctc
        # sos/eos shares the CTC output layer but is never a CTC target (see ASRModel.ctc_greedy).
        ban = torch.zeros(rec.model.vocab_size, dtype=torch.bool)
        if rec.model.decoder is not None:
            ban[rec.model.sos_eos_id] = True
        self.ban: torch.Tensor
        self.register_buffer("ban", ban)

    def forward(
        self, feats: torch.Tensor, frames: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = (feats - self.mean) / self.std
        y, lens = self.subsampling.subsample(x, frames)
        enc, lens = self.encoder(y, lens)
        return self.ctc.log_probs(enc).masked_fill(self.ban, float("-inf")), lens


class _WaveformGraph(nn.Module):
    """Waveforms -> CTC log-probs: the log-mel front end followed by :class:`_AcousticGraph`."""

    def __init__(self, rec: Recognizer) -> None:
        super().__init__()
        self.frontend = rec.frontend
        self.acoustic = _AcousticGraph(rec)

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, frames = self.frontend(waves, lengths)
        return self.acoustic(feats, frames)


@torch.no_grad()
def _eager_log_probs(
    rec: Recognizer, waves: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: what ``Recognizer`` computes before greedy collapse (its own code path)."""
    feats, frames = rec.frontend(waves, lengths)
    enc, enc_lens = rec.model.encode(rec.normalize(feats), frames)
    log_probs = rec.model.ctc.log_probs(enc)
    if rec.model.decoder is not None:
        log_probs[..., rec.model.sos_eos_id] = float("-inf")
    return log_probs, enc_lens


# -- metadata --------------------------------------------------------------------------------
def _min_samples(rec: Recognizer) -> int:
    """Fewest samples that give the subsampling one output frame (frames = 1 + L // hop)."""
    return max(1, (rec.model.subsampling.min_input_frames - 1) * rec.frontend.hop_length)


def _symbols(tokenizer: Tokenizer) -> list[str]:
    symbols = getattr(tokenizer, "symbols", None)
    return list(symbols) if symbols is not None else [str(i) for i in range(tokenizer.vocab_size)]


def _metadata(rec: Recognizer, fmt: str, checkpoint: Path) -> dict[str, Any]:
    return {
        "format": "speechtune-export",
        "format_version": EXPORT_FORMAT_VERSION,
        "runtime": fmt,
        # What the graph's first input is: the TorchScript graph holds the front end.
        "graph_input": "waveform" if fmt == "torchscript" else "log_mel",
        "decoding": "ctc_greedy",
        "blank_id": BLANK_ID,
        "sample_rate": rec.cfg.features.sample_rate,
        "features": dataclasses.asdict(rec.cfg.features),
        "cmvn_in_graph": rec.cmvn is not None,
        "min_samples": _min_samples(rec),
        "tokenizer": rec.tokenizer.to_dict(),
        # id -> symbol, so a consumer without speechtune can still read the outputs.
        "vocab": _symbols(rec.tokenizer),
        "encoder": rec.cfg.model.encoder,
        "head": rec.cfg.model.head,
        "config": json.loads(json.dumps(dataclasses.asdict(rec.cfg))),
        "source_checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "torch_version": torch.__version__,
    }


# -- loading an artefact ---------------------------------------------------------------------
def exported_format(path: str | Path) -> str | None:
    """``"torchscript"`` or ``"onnx"`` when ``path`` is an exported artefact, else None.

    ``path`` may be the export directory holding exactly one artefact. A ``model.pt`` of
    ``speechtune train`` (a zip without the export metadata) gives None.

    Raises:
        ValueError: a directory holds both formats (which one was meant is ambiguous).
    """
    path = Path(path)
    if path.is_dir():
        found = [fmt for fmt, name in FORMATS.items() if (path / name).is_file()]
        if len(found) > 1:
            raise ValueError(
                f"{path} holds several exported models ({', '.join(FORMATS[f] for f in found)}); name the file"
            )
        return found[0] if found else None
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return "torchscript" if any(n.endswith(f"/extra/{_TS_EXTRA}") for n in names) else None
    if path.suffix == ".onnx":
        return "onnx"
    with path.open("rb") as fh:
        # An ONNX ModelProto opens with field 1 (ir_version, a varint): byte 0x08.
        return "onnx" if fh.read(1) == b"\x08" else None


def _resolve(path: Path) -> Path:
    if path.is_dir():
        fmt = exported_format(path)
        if fmt is None:
            raise FileNotFoundError(
                f"no exported model ({' or '.join(FORMATS.values())}) in {path}"
            )
        return path / FORMATS[fmt]
    return path


def _require(module: str) -> Any:
    """Import ``onnx`` or ``onnxruntime`` (optional dependencies) with an actionable error."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs the 'onnx' package and running an ONNX model needs 'onnxruntime' "
            f"(pip install onnx onnxruntime); {module!r} is missing: {exc}"
        ) from exc


class ExportedRecognizer:
    """An exported artefact, loaded: waveforms in, transcripts out (greedy CTC).

    Load only artefacts from a trusted source (a TorchScript file is code).

    Args:
        path: the artefact (or its export directory).
        device: only ``"cpu"``: the graphs are traced on the CPU and device placement is
            frozen into a trace.
    """

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"exported models run on the CPU; got device={device!r} (use model.pt for {device})"
            )
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"exported model not found: {path}")
        self.path = _resolve(path)
        fmt = exported_format(self.path)
        if fmt is None:
            raise ValueError(f"{self.path} is not a model exported by `speechtune export`")
        self.format = fmt
        self._run: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        if fmt == "torchscript":
            extra = {_TS_EXTRA: ""}
            with warnings.catch_warnings():
                # torch 2.13 marks torch.jit as deprecated; it is still the one runtime that
                # loads a traced graph without the model's Python code.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(
                    str(self.path), map_location="cpu", _extra_files=extra
                ).eval()
            self.metadata: dict[str, Any] = json.loads(extra[_TS_EXTRA])

            def run_ts(
                waves: torch.Tensor, lengths: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                with torch.no_grad():
                    return module(waves, lengths)

            self._run = run_ts
        else:
            ort = _require("onnxruntime")
            session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            meta = session.get_modelmeta().custom_metadata_map
            if METADATA_KEY not in meta:
                raise ValueError(f"{self.path} is an ONNX model without speechtune metadata")
            self.metadata = json.loads(meta[METADATA_KEY])
            frontend = LogMel(
                **{
                    k: self.metadata["features"][k]
                    for k in ("sample_rate", "window_ms", "hop_ms", "n_mels", "f_min", "f_max")
                }
            )

            def run_onnx(
                waves: torch.Tensor, lengths: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor]:
                with torch.no_grad():
                    feats, frames = frontend(waves, lengths)
                lp, lens = session.run(None, {"feats": feats.numpy(), "frames": frames.numpy()})
                return torch.from_numpy(lp), torch.from_numpy(lens)

            self._run = run_onnx
        if self.metadata.get("format_version") != EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"unsupported export format {self.metadata.get('format_version')!r} in {self.path}; "
                f"expected {EXPORT_FORMAT_VERSION}"
            )
        self.sample_rate: int = int(self.metadata["sample_rate"])
        self.min_samples: int = int(self.metadata["min_samples"])
        self.tokenizer = tokenizer_from_dict(self.metadata["tokenizer"])

    def log_probs(
        self, waves: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC log-probs ``[B, T', V]`` and valid frames ``[B]`` of a zero-padded batch."""
        short = (lengths < self.min_samples).nonzero()
        if len(short):
            i = int(short[0])
            # The graph has no length check of its own (see _AcousticGraph); fail as model.pt does.
            raise ValueError(
                f"utterance {i} of the batch has {int(lengths[i])} samples; this model needs at least "
                f"{self.min_samples} ({self.min_samples / self.sample_rate:.3f} s)"
            )
        return self._run(waves.float(), lengths.long())

    def transcribe(self, waves: Sequence[np.ndarray], batch_size: int = 16) -> list[str]:
        """Transcribe mono float32 waveforms sampled at :attr:`sample_rate`."""
        # Same batching as Recognizer.transcribe: sorted by length, caller's order restored.
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        texts: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            wav, lens = pad_waves([waves[i] for i in idx], "cpu")
            lp, lp_lens = self.log_probs(wav, lens)
            for i, ids in zip(idx, ctc_greedy_collapse(lp, lp_lens, blank=BLANK_ID)):
                texts[i] = self.tokenizer.decode(ids)
        return [texts[i] for i in range(len(waves))]


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> ExportedRecognizer:
    """Load an artefact written by :func:`export_model` (trusted sources only)."""
    return ExportedRecognizer(path, device)


# -- exporting -------------------------------------------------------------------------------
def _probe_batches(
    sample_rate: int, min_samples: int
) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Seeded noise: one batch to trace with, and batches of other sizes and lengths to verify."""
    rng = np.random.default_rng(0)

    def noise(seconds: float) -> np.ndarray:
        n = max(min_samples + 1, int(seconds * sample_rate))
        return (0.1 * rng.standard_normal(n)).astype(np.float32)

    trace = [noise(1.0), noise(0.63)]
    verify = [
        [noise(0.37)],
        [noise(1.71), noise(0.5), noise(0.91)],
        [noise(0.0)],
        [noise(0.8), noise(0.8)],
    ]
    return trace, verify


def _atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same directory and rename, so a crash leaves no half file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _export_torchscript(
    graph: _WaveformGraph,
    waves: torch.Tensor,
    lengths: torch.Tensor,
    meta: dict[str, Any],
    target: Path,
) -> None:
    with warnings.catch_warnings():
        # Tracing warns about the input checks (shape asserts, RNN packing) it freezes; the
        # verification after export is what proves dynamic lengths and batch sizes work.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(graph, (waves, lengths), check_trace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see ExportedRecognizer.__init__
        _atomic_write(
            target,
            lambda p: torch.jit.save(traced, str(p), _extra_files={_TS_EXTRA: json.dumps(meta)}),
        )


def _export_onnx(
    graph: _WaveformGraph,
    waves: torch.Tensor,
    lengths: torch.Tensor,
    meta: dict[str, Any],
    target: Path,
) -> None:
    onnx = _require("onnx")
    with torch.no_grad():
        feats, frames = graph.frontend(waves, lengths)
    buf: Any = io.BytesIO()  # torch.onnx.export writes to a path or a binary file
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but, unlike torch.export, handles the
        # packed-sequence RNN encoders; it warns like tracing does (see _export_torchscript).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph.acoustic,
            (feats, frames),
            buf,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["feats", "frames"],
            output_names=["log_probs", "out_lengths"],
            dynamic_axes={
                "feats": {0: "batch", 1: "feat_frames"},
                "frames": {0: "batch"},
                "log_probs": {0: "batch", 1: "enc_frames"},
                "out_lengths": {0: "batch"},
            },
        )
    model = onnx.load_from_string(buf.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    onnx.checker.check_model(model)
    _atomic_write(target, lambda p: onnx.save(model, str(p)))


def _verify(rec: Recognizer, target: Path, batches: list[list[np.ndarray]]) -> None:
    """Run the artefact on other lengths/batch sizes than traced; raise unless it matches eager."""
    exported = ExportedRecognizer(target)
    for waves in batches:
        wav, lens = pad_waves(waves, "cpu")
        ref, ref_lens = _eager_log_probs(rec, wav, lens)
        got, got_lens = exported.log_probs(wav, lens)
        finite = torch.isfinite(ref)
        ok = (
            torch.equal(ref_lens.cpu(), got_lens.long())
            and ref.shape == got.shape
            and torch.equal(finite, torch.isfinite(got))
        )
        diff = float((ref[finite] - got[finite]).abs().max()) if ok and bool(finite.any()) else 0.0
        if not ok or diff > VERIFY_ATOL:
            target.unlink(missing_ok=True)
            raise RuntimeError(
                f"exported {exported.format} model disagrees with the eager model on a batch of "
                f"{len(waves)} utterance(s) of {[len(w) for w in waves]} samples "
                f"(max |diff| {diff:.3g}, lengths {got_lens.tolist()} vs {ref_lens.tolist()}); not exported"
            )


def export_model(
    checkpoint: str | Path, out: str | Path, format: str = "torchscript", *, verify: bool = True
) -> Path:
    """Export ``model.pt`` as one self-contained artefact (graph + front-end config + vocabulary).

    Args:
        checkpoint: a ``model.pt`` written by ``speechtune train``.
        out: a directory (the file is named after the format: ``model.torchscript.pt`` or
            ``model.onnx``) or a file path ending in ``.pt``/``.ts``/``.onnx``.
        format: ``"torchscript"`` or ``"onnx"``.
        verify: compare the artefact with the eager model on lengths and batch sizes other
            than the traced ones (needs onnxruntime for ONNX; skipped with a warning without it).

    Returns:
        the path of the artefact.

    Raises:
        ValueError: unknown format, an encoder the exporter does not support, a checkpoint
            that is not a speechtune model.pt, or ONNX for an int8 (or QAT) model.
        FileNotFoundError: the checkpoint does not exist (a directory stands for its model.pt).
        ImportError: ONNX requested without the ``onnx`` package.
        RuntimeError: the exported graph does not reproduce the eager model.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    if exported_format(checkpoint) is not None:
        raise ValueError(
            f"{checkpoint} is already an exported model; export the model.pt it came from"
        )
    checkpoint = resolve_model_file(checkpoint)  # a run directory names its model.pt
    if format == "onnx":
        _require("onnx")  # fail before any work when the package is missing
    rec = Recognizer.load(checkpoint, "cpu")
    if format == "onnx" and rec.quantization in ("int8", "qat"):
        raise ValueError(
            f"{checkpoint} is a quantised model (edge.quantize={rec.cfg.edge.quantize}): it exports "
            "to torchscript only (torch's ONNX exporter has no int8 operators such as "
            "quantized::linear_dynamic)"
        )
    if rec.cfg.model.encoder not in SUPPORTED_ENCODERS:
        raise ValueError(
            f"encoder {rec.cfg.model.encoder!r} cannot be exported; supported: {', '.join(SUPPORTED_ENCODERS)}"
        )
    if rec.cfg.decode.method != "greedy":
        warnings.warn(
            f"this model decodes with {rec.cfg.decode.method!r} search; the exported model serves greedy "
            "CTC decoding (the attention decoder is not exported), so its transcripts may differ",
            UserWarning,
            stacklevel=2,
        )
    out = Path(out)
    target = out if out.suffix in (".pt", ".ts", ".onnx") else out / FORMATS[format]
    target.parent.mkdir(parents=True, exist_ok=True)

    graph = _WaveformGraph(rec).eval()
    meta = _metadata(rec, format, checkpoint)
    trace_waves, verify_batches = _probe_batches(rec.cfg.features.sample_rate, meta["min_samples"])
    waves, lengths = pad_waves(trace_waves, "cpu")
    if format == "torchscript":
        _export_torchscript(graph, waves, lengths, meta, target)
    else:
        _export_onnx(graph, waves, lengths, meta, target)
    if verify:
        if format == "onnx" and importlib.util.find_spec("onnxruntime") is None:
            warnings.warn(
                "onnxruntime is not installed: the ONNX export was not verified",
                UserWarning,
                stacklevel=2,
            )
        else:
            _verify(rec, target, verify_batches)
    return target
