"""Decode chunk by chunk through a streaming artefact written by ``export_streaming``.

The artefact holds one chunk step (see :mod:`speechtune.inference._stream_export`)::

    (feats [1, Ti, n_mels], offset [], keys [N, 1, H, L, D/H], values [N, 1, H, L, D/H],
     conv [N, 1, K-1, D])  ->  (log_probs [1, Tc, V], offset, keys, values, conv)

What stays in Python (:class:`ExportedStreamingDecoder`) is bookkeeping: the buffer of log-mel
frames not yet consumed, cutting it into the windows of whole chunks, and greedy CTC with the
previous chunk's last label carried over, as :class:`~speechtune.inference.StreamingDecoder`
does. The log-mel front end runs once per utterance outside the graph (as in eager streaming;
``torch.stft`` does not export to ONNX), from the front-end config stored in the artefact.

Load artefacts only from trusted sources: a TorchScript file is code.
"""

from __future__ import annotations

import json
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from speechtune.data import tokenizer_from_dict
from speechtune.features import LogMel
from speechtune.inference._export import _require
from speechtune.inference._streaming import StreamResult, run_stream
from speechtune.models import BLANK_ID

#: Export format -> the file name of the streaming artefact in an export directory.
STREAM_FORMATS: dict[str, str] = {
    "torchscript": "model.stream.torchscript.pt",
    "onnx": "model.stream.onnx",
}
STREAM_FORMAT_VERSION = 1
STREAM_METADATA_KEY = "speechtune_stream_export"
TS_EXTRA = f"{STREAM_METADATA_KEY}.json"
STATE_NAMES = ("offset", "keys", "values", "conv")
_ONNX_TAIL = 8 << 20

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def initial_state(meta: dict[str, Any]) -> State:
    """The state a stream starts from: no left context, zero convolution inputs."""
    n, h, dh = meta["num_layers"], meta["num_heads"], meta["d_model"] // meta["num_heads"]
    empty = torch.zeros(n, 1, h, 0, dh)
    return (
        torch.zeros((), dtype=torch.long),
        empty,
        empty.clone(),
        torch.zeros(n, 1, meta["conv_kernel"] - 1, meta["d_model"]),
    )


# -- decoding through an artefact ------------------------------------------------------------
Step = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]


class ExportedStreamingDecoder:
    """:class:`~speechtune.inference.StreamingDecoder` on an exported chunk step.

    Feed un-normalised log-mels ``[T, n_mels]`` with :meth:`accept` and end with
    :meth:`finish`; each returns the tokens of the chunks it completed.
    """

    def __init__(self, step: Step, meta: dict[str, Any], keep_log_probs: bool = False) -> None:
        self._step = step
        self.chunk: int = meta["chunk_frames"]
        self.stride: int = meta["subsampling_factor"]
        self.receptive: int = meta["subsampling_receptive_field"]
        self._inputs = torch.zeros(0, meta["features"]["n_mels"])
        self._state = initial_state(meta)
        self._last = BLANK_ID
        self._keep = keep_log_probs
        self._finished = False
        self.tokens: list[int] = []
        self.log_probs: list[torch.Tensor] = []
        self.chunks = 0

    @property
    def chunk_input_frames(self) -> int:
        """Feature frames of audio per chunk."""
        return self.chunk * self.stride

    @property
    def lookahead_frames(self) -> int:
        """Feature frames past a chunk's audio that the subsampling needs to finish it."""
        return self.receptive - self.stride

    def _produced(self) -> int:
        """Encoder frames the buffered input frames complete (as Conv2dSubsampling counts)."""
        n = self._inputs.size(0)
        return (n - self.receptive) // self.stride + 1 if n >= self.receptive else 0

    def _encode(self, frames: int) -> list[int]:
        window = self._inputs[: (frames - 1) * self.stride + self.receptive]
        log_probs, self._state = self._step(window[None], self._state)
        self._inputs = self._inputs[frames * self.stride :]
        self.chunks += 1
        if self._keep:
            self.log_probs.append(log_probs)
        new: list[int] = []
        for label in log_probs[0].argmax(dim=-1).tolist():
            if label != BLANK_ID and label != self._last:
                new.append(label)
            self._last = label
        self.tokens += new
        return new

    def accept(self, feats: torch.Tensor) -> list[int]:
        """Feed ``feats [T, n_mels]``; returns the tokens of the chunks completed."""
        if self._finished:
            raise ValueError("the stream has finished; start a new decoder")
        self._inputs = torch.cat([self._inputs, feats.float()])
        tokens: list[int] = []
        while self._produced() >= self.chunk:
            tokens += self._encode(self.chunk)
        return tokens

    def finish(self) -> list[int]:
        """Encode the last, shorter chunk; returns its tokens."""
        if self._finished:
            return []
        self._finished = True
        frames = self._produced()
        return self._encode(frames) if frames else []


def streaming_export_format(path: str | Path) -> str | None:
    """``"torchscript"`` or ``"onnx"`` when ``path`` is a streaming artefact (or an export
    directory holding exactly one), else None."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in STREAM_FORMATS.values() if (path / p).is_file()]
        return streaming_export_format(path / found[0]) if len(found) == 1 else None
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
        return "torchscript" if any(n.endswith(f"/extra/{TS_EXTRA}") for n in names) else None
    if path.suffix != ".onnx":
        return None
    # ModelProto serialises metadata_props (field 14) after the graph, as plain strings: the
    # key sits within the file's last bytes, ahead of the metadata JSON (tens of kB).
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - _ONNX_TAIL))
        tail = fh.read()
    return "onnx" if STREAM_METADATA_KEY.encode() in tail else None


class ExportedStreamingRecognizer:
    """A streaming artefact, loaded: waveforms in, streamed transcripts out (greedy CTC, CPU).

    Args:
        path: The artefact, or an export directory holding one.

    Raises:
        FileNotFoundError: Nothing at ``path``.
        ValueError: ``path`` is not a streaming artefact of a supported version.
    """

    device = torch.device("cpu")

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"exported streaming model not found: {path}")
        if path.is_dir():
            names = [n for n in STREAM_FORMATS.values() if (path / n).is_file()]
            if len(names) != 1:
                raise ValueError(
                    f"{path} holds {len(names) or 'no'} streaming artefacts "
                    f"({' or '.join(STREAM_FORMATS.values())}); name the file"
                )
            path = path / names[0]
        fmt = streaming_export_format(path)
        if fmt is None:
            raise ValueError(
                f"{path} is not a streaming model exported by `speechtune export` "
                f"(expected {' or '.join(STREAM_FORMATS.values())})"
            )
        self.path, self.format = path, fmt
        self._step, self.metadata = _load_step(path, fmt)
        if self.metadata.get("format_version") != STREAM_FORMAT_VERSION:
            raise ValueError(
                f"unsupported streaming export format {self.metadata.get('format_version')!r} "
                f"in {path}; expected {STREAM_FORMAT_VERSION}"
            )
        feats = self.metadata["features"]
        self.frontend = LogMel(
            **{
                k: feats[k]
                for k in ("sample_rate", "window_ms", "hop_ms", "n_mels", "f_min", "f_max")
            }
        )
        self.sample_rate: int = int(self.metadata["sample_rate"])
        self.chunk_ms: float = float(self.metadata["chunk_ms"])
        self.tokenizer = tokenizer_from_dict(self.metadata["tokenizer"])

    def decoder(self, keep_log_probs: bool = False) -> ExportedStreamingDecoder:
        """A fresh decoder for one stream."""
        return ExportedStreamingDecoder(self._step, self.metadata, keep_log_probs)

    @torch.no_grad()
    def features(self, wave: np.ndarray) -> torch.Tensor:
        """Un-normalised log-mels ``[T, n_mels]`` of one utterance (CMVN is in the graph)."""
        samples = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
        feats, frames = self.frontend(samples, torch.tensor([samples.size(1)]))
        return feats[0, : int(frames[0])]

    def stream(
        self, wave: np.ndarray, on_chunk: Callable[[float, str], None] | None = None
    ) -> StreamResult:
        """Transcribe ``wave`` chunk by chunk through the artefact and time every chunk."""
        start = time.perf_counter()
        feats = self.features(wave)
        result = StreamResult(text="", audio_seconds=len(wave) / self.sample_rate)
        result.frontend_ms = (time.perf_counter() - start) * 1000.0
        hop_s = self.frontend.hop_length / self.sample_rate
        return run_stream(self.decoder(), feats, self.tokenizer.decode, result, hop_s, on_chunk)


def load_streaming_export(path: str | Path) -> ExportedStreamingRecognizer:
    """Load an artefact written by :func:`export_streaming` (trusted sources only)."""
    return ExportedStreamingRecognizer(path)


def _load_step(path: Path, fmt: str) -> tuple[Step, dict[str, Any]]:
    """The artefact's chunk step as a function of torch tensors, and its metadata."""
    if fmt == "torchscript":
        extra = {TS_EXTRA: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # as ExportedRecognizer
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()

        def run_ts(feats: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            with torch.no_grad():
                log_probs, *new = module(feats, *state)
            return log_probs, cast(State, tuple(new))

        return run_ts, json.loads(extra[TS_EXTRA])
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    # One stream on one thread, as the eager latency is measured.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if STREAM_METADATA_KEY not in meta:
        raise ValueError(f"{path} is an ONNX model without speechtune streaming metadata")

    def run_onnx(feats: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        inputs = {"feats": feats.numpy(), **{k: v.numpy() for k, v in zip(STATE_NAMES, state)}}
        log_probs, *new = session.run(None, inputs)
        return torch.from_numpy(log_probs), cast(State, tuple(torch.from_numpy(a) for a in new))

    return run_onnx, json.loads(meta[STREAM_METADATA_KEY])
