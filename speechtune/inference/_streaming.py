"""Streaming recognition: chunk-by-chunk greedy CTC decoding, and its latency on one CPU thread.

A model trained with ``model.chunk_ms > 0`` is decoded as audio arrives:

1. **Subsampling.** Output frame ``t`` of the convolutional front end reads input frames
   ``t*S .. t*S + R - 1`` (``S`` the subsampling factor, ``R`` its receptive field, e.g. 4 and
   7), so the decoder caches input frames: it subsamples whatever complete windows its buffer
   holds and keeps the frames from the next output's first input frame on. A chunk of ``C``
   encoder frames therefore waits for ``R - S`` input frames past its own audio (30 ms at a
   10 ms hop and factor 4): that lookahead is the one thing the stream sees beyond a chunk.
2. **Encoder.** Each complete chunk of ``C`` subsampled frames goes through
   :meth:`~speechtune.models._conformer.ConformerEncoder.forward_chunk`, which keeps every
   block's attention keys and values of the left context and its convolution's last inputs;
   the last, shorter chunk is encoded when the stream ends.
3. **CTC.** Each chunk's frames are decoded greedily at once; the previous chunk's last label
   is carried over so that a token spanning a chunk border is not emitted twice.

The result equals greedy decoding of the whole utterance by the same model (whose training and
full-utterance forward use the same chunked attention mask) up to float rounding. The log-mel
front end and normalisation are not streamed: they run once over the utterance (they are
frame-local; a streaming front end would only need STFT framing of the incoming samples).
Latency is measured in eager mode here; :mod:`speechtune.inference._stream_export` exports
the per-chunk step (subsampling, encoder with its caches as explicit inputs and outputs, CTC)
and decodes through it with the same loop (:func:`run_stream`), so both are timed alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from speechtune.inference._recognizer import Recognizer
from speechtune.models import BLANK_ID, ASRModel

#: Dev utterances whose chunks ``metrics.json``'s streaming latency is measured on.
LATENCY_UTTERANCES = 8


class StreamingDecoder:
    """Greedy CTC decoding of one stream of normalised features, chunk by chunk.

    Feed features with :meth:`accept` in blocks of any size and end with :meth:`finish`; each
    returns the tokens of the chunks it completed. The model is put in eval mode.

    Args:
        model: A model built with ``model.chunk_ms > 0``.
        keep_encoder_output: Keep every chunk's encoder output in :attr:`encoded` (for checks).

    Raises:
        ValueError: The model is full-context.
    """

    def __init__(self, model: ASRModel, keep_encoder_output: bool = False) -> None:
        if not model.streaming.enabled:
            raise ValueError(
                "streaming decoding needs a model trained with model.chunk_ms > 0 (this one is "
                "full-context: its attention and convolutions look ahead)"
            )
        self.model = model.eval()
        self.chunk = model.streaming.chunk
        self.stride = model.subsampling.factor
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        self._inputs = torch.zeros(1, 0, model.input_dim, device=device)
        self._pending = torch.zeros(1, 0, model.cfg.d_model, device=device)
        self._cache = model.stream_cache(1, device)
        self._last = BLANK_ID
        self._keep = keep_encoder_output
        self._finished = False
        self.tokens: list[int] = []
        self.encoded: list[torch.Tensor] = []
        self.chunks = 0

    @property
    def chunk_input_frames(self) -> int:
        """Feature frames of audio per chunk."""
        return self.chunk * self.stride

    @property
    def lookahead_frames(self) -> int:
        """Feature frames past a chunk's audio that the subsampling needs to finish it."""
        return self.model.subsampling.min_input_frames - self.stride

    @torch.no_grad()
    def accept(self, feats: torch.Tensor) -> list[int]:
        """Feed ``feats [T, F]`` (normalised); returns the tokens of the chunks completed."""
        if self._finished:
            raise ValueError("the stream has finished; start a new StreamingDecoder")
        buf = torch.cat([self._inputs, feats.to(self._inputs)[None]], dim=1)
        n = torch.tensor([buf.size(1)], device=buf.device)
        if buf.size(1) >= self.model.subsampling.min_input_frames:
            frames, lens = self.model.subsampling.subsample(buf, n)
            produced = int(lens[0])
            self._pending = torch.cat([self._pending, frames[:, :produced]], dim=1)
            # Output frame t reads input frames from t*S on: keep those of the next output.
            buf = buf[:, produced * self.stride :]
        self._inputs = buf
        tokens: list[int] = []
        while self._pending.size(1) >= self.chunk:
            tokens += self._encode(self._pending[:, : self.chunk])
            self._pending = self._pending[:, self.chunk :]
        return tokens

    @torch.no_grad()
    def finish(self) -> list[int]:
        """Encode the last, shorter chunk (input frames that complete no window are dropped, as
        the full-utterance forward drops them); returns its tokens."""
        if self._finished:
            return []
        self._finished = True
        tokens = self._encode(self._pending) if self._pending.size(1) else []
        self._pending = self._pending[:, :0]
        return tokens

    def _encode(self, frames: torch.Tensor) -> list[int]:
        enc, self._cache = self.model.encode_chunk(frames, self._cache)
        self.chunks += 1
        if self._keep:
            self.encoded.append(enc)
        log_probs = self.model.ctc.log_probs(enc)[0]
        if self.model.decoder is not None:
            # sos/eos shares the CTC output layer but is never a CTC target (as ctc_greedy).
            log_probs[:, self.model.sos_eos_id] = float("-inf")
        new: list[int] = []
        for label in log_probs.argmax(dim=-1).tolist():
            if label != BLANK_ID and label != self._last:
                new.append(label)
            self._last = label
        self.tokens += new
        return new


@dataclass
class StreamResult:
    """One utterance decoded as a stream.

    Attributes:
        text: The final transcript.
        partials: ``(audio seconds fed, transcript so far)`` after each chunk.
        chunk_ms: Compute time of each chunk (subsampling, encoder, CTC), in ms.
        frontend_ms: Compute time of the log-mel front end and normalisation, in ms.
        audio_seconds: Length of the utterance.
    """

    text: str
    partials: list[tuple[float, str]] = field(default_factory=list)
    chunk_ms: list[float] = field(default_factory=list)
    frontend_ms: float = 0.0
    audio_seconds: float = 0.0

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds (front end and chunks) per audio second."""
        total = self.frontend_ms + sum(self.chunk_ms)
        return total / 1000.0 / self.audio_seconds if self.audio_seconds > 0 else float("nan")


class ChunkDecoder(Protocol):
    """What :func:`run_stream` drives: :class:`StreamingDecoder`, or the exported one."""

    tokens: list[int]
    chunks: int

    @property
    def chunk_input_frames(self) -> int: ...

    @property
    def lookahead_frames(self) -> int: ...

    def accept(self, feats: torch.Tensor) -> list[int]: ...

    def finish(self) -> list[int]: ...


class StreamingSource(Protocol):
    """A model that streams one utterance itself (an exported streaming model)."""

    device: torch.device

    def stream(
        self, wave: np.ndarray, on_chunk: Callable[[float, str], None] | None = None
    ) -> StreamResult: ...


def run_stream(
    decoder: ChunkDecoder,
    feats: torch.Tensor,
    decode: Callable[[list[int]], str],
    result: StreamResult,
    hop_s: float,
    on_chunk: Callable[[float, str], None] | None = None,
) -> StreamResult:
    """Feed ``feats [T, F]`` to ``decoder`` one chunk of audio at a time and time every chunk.

    The first block also holds the subsampling's lookahead, so that each block completes
    exactly one chunk; the last, shorter chunk is encoded when the stream ends.

    Args:
        decoder: A fresh decoder.
        feats: The utterance's features, as ``decoder`` takes them.
        decode: Token ids -> text.
        result: Filled in (``chunk_ms``, ``partials``, ``text``) and returned; the caller has
            set ``audio_seconds`` and ``frontend_ms``.
        hop_s: Seconds per feature frame (for the audio time of each partial).
        on_chunk: Called with ``(audio seconds fed, transcript so far)`` after each chunk.
    """
    total = feats.size(0)
    block = decoder.chunk_input_frames
    ends = [*range(block + decoder.lookahead_frames, total, block), total]
    steps: list[tuple[int, Callable[[], list[int]]]] = [
        (end, functools.partial(decoder.accept, feats[begin:end]))
        for begin, end in zip([0, *ends[:-1]], ends)
    ]
    steps.append((total, decoder.finish))
    for end, step in steps:
        before = decoder.chunks
        t0 = time.perf_counter()
        step()
        elapsed = (time.perf_counter() - t0) * 1000.0
        if decoder.chunks == before:
            continue  # this block completed no chunk (too short, or nothing left to finish)
        fed = min(end * hop_s, result.audio_seconds)
        text = decode(decoder.tokens)
        result.chunk_ms.append(elapsed)
        result.partials.append((fed, text))
        if on_chunk is not None:
            on_chunk(fed, text)
    result.text = decode(decoder.tokens)
    return result


@torch.no_grad()
def stream_transcribe(
    recognizer: Recognizer | StreamingSource,
    wave: np.ndarray,
    on_chunk: Callable[[float, str], None] | None = None,
) -> StreamResult:
    """Transcribe ``wave`` as a stream and time every chunk (see :func:`run_stream`).

    Args:
        recognizer: A recogniser whose model streams (``model.chunk_ms > 0``), or an exported
            streaming model (:func:`~speechtune.inference.load_streaming_export`).
        wave: Mono float32 samples at the model's sample rate.
        on_chunk: Called with ``(audio seconds fed, transcript so far)`` after each chunk.

    Returns:
        The transcript, partial transcripts and timings.
    """
    if not isinstance(recognizer, Recognizer):
        return recognizer.stream(wave, on_chunk)
    recognizer.eval()
    decoder = StreamingDecoder(recognizer.model)
    sr = recognizer.cfg.features.sample_rate
    device = recognizer.device
    start = time.perf_counter()
    samples = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None].to(device)
    feats, frames = recognizer.frontend(samples, torch.tensor([samples.size(1)], device=device))
    feats = recognizer.normalize(feats)[0, : int(frames[0])]
    result = StreamResult(text="", audio_seconds=len(wave) / sr)
    result.frontend_ms = (time.perf_counter() - start) * 1000.0
    hop_s = recognizer.frontend.hop_length / sr
    return run_stream(decoder, feats, recognizer.tokenizer.decode, result, hop_s, on_chunk)


def streaming_latency(
    recognizer: Recognizer | StreamingSource, waves: Sequence[np.ndarray], warmup: int = 1
) -> dict[str, float]:
    """Per-chunk compute latency and real-time factor of streaming decoding on one CPU thread.

    One utterance at a time, as a small device serving one stream would run it: in eager mode
    for a :class:`Recognizer`, through the exported graph for an exported streaming model
    (:func:`~speechtune.inference.load_streaming_export`); the figures have the same keys.

    Args:
        recognizer: A streaming recogniser on the CPU, or an exported streaming model.
        waves: Utterances to stream (mono float32 at the model's sample rate).
        warmup: Utterances streamed untimed first (one-off allocations, lazy initialisation).

    Returns:
        ``stream_chunk_ms_p50`` and ``stream_chunk_ms_p95`` (over every chunk of every
        utterance, the front end excluded) and ``stream_rtf`` (compute seconds, front end
        included, per audio second).

    Raises:
        ValueError: The recogniser is not on the CPU, or no utterance has audio.
    """
    if recognizer.device.type != "cpu":
        raise ValueError(
            f"streaming latency needs a recognizer on the CPU, not {recognizer.device}"
        )
    waves = [w for w in waves if len(w)]
    if not waves:
        raise ValueError("streaming latency needs at least one non-empty utterance")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for w in waves[:warmup]:
            stream_transcribe(recognizer, w)
        results = [stream_transcribe(recognizer, w) for w in waves]
    finally:
        torch.set_num_threads(threads)
    chunks = np.array([ms for r in results for ms in r.chunk_ms])
    compute_s = sum(r.frontend_ms + sum(r.chunk_ms) for r in results) / 1000.0
    return {
        "stream_chunk_ms_p50": float(np.percentile(chunks, 50)),
        "stream_chunk_ms_p95": float(np.percentile(chunks, 95)),
        "stream_rtf": compute_s / sum(r.audio_seconds for r in results),
    }
