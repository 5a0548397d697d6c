"""What a TTS run is judged by: mel-cepstral distortion, intelligibility, real-time factor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.fft import dct
from scipy.signal import resample_poly

from speechtune.features import LogMel

#: Mel-cepstral coefficients compared (c1..c13; c0, the energy, is left out as usual).
NUM_CEPSTRA = 13
#: Synthesised audio shorter than this is padded with silence before the ASR model hears it.
_MIN_ASR_SECONDS = 0.2
_MCD_SCALE = 10.0 / math.log(10.0) * math.sqrt(2.0)


def mel_cepstra(log_mel: np.ndarray, num: int = NUM_CEPSTRA) -> np.ndarray:
    """Mel-cepstra ``[T, num]`` (c1..c_num) of ``[T, n_mels]`` natural-log mel *power*.

    The cepstrum of the log mel amplitude (half the log power) over its ``N`` bins,
    ``c_n = 1/N sum_k L_k cos(pi n (k + 1/2) / N)``: the orthonormal DCT-II divided by
    ``sqrt(2 N)``. That scale is the real cepstrum's, which the usual MCD figures assume; an
    unscaled DCT would make the distortion grow with the number of mel bins.
    """
    log_amp = 0.5 * np.asarray(log_mel, dtype=np.float64)
    scale = np.sqrt(2.0 * log_amp.shape[-1])
    return dct(log_amp, type=2, norm="ortho", axis=-1)[:, 1 : num + 1] / scale


def dtw_mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The mean Euclidean frame distance along the cheapest DTW path between ``a`` and ``b``.

    Steps (1, 0), (0, 1) and (1, 1); the path's total cost divided by its number of steps.
    The table is filled one anti-diagonal at a time (its cells depend only on the two before).
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        raise ValueError("dtw needs two non-empty sequences")
    dist = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    cost = np.full((n + 1, m + 1), np.inf)
    steps = np.zeros((n + 1, m + 1))
    cost[0, 0] = 0.0
    for k in range(2, n + m + 1):  # k = i + j over 1-based cells
        i = np.arange(max(1, k - m), min(n, k - 1) + 1)
        j = k - i
        cands = np.stack([cost[i - 1, j], cost[i, j - 1], cost[i - 1, j - 1]])
        lens = np.stack([steps[i - 1, j], steps[i, j - 1], steps[i - 1, j - 1]])
        pick = np.argmin(cands, axis=0)
        cols = np.arange(i.size)
        cost[i, j] = cands[pick, cols] + dist[i - 1, j - 1]
        steps[i, j] = lens[pick, cols] + 1
    return float(cost[n, m] / steps[n, m])


def mel_cepstral_distortion(
    synthesized: np.ndarray, reference: np.ndarray, frontend: LogMel
) -> float:
    """MCD in dB between two waveforms (at the front end's rate), DTW-aligned.

    ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` averaged along the DTW path, with
    mel-cepstra from the front end's log-mel (Kubichek, 1993; the DTW variant of most TTS
    papers, since a synthesised utterance is not as long as its reference).
    """
    feats = []
    for wave in (synthesized, reference):
        w = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None]
        with torch.no_grad():
            lm, _ = frontend(w, torch.tensor([w.shape[1]]))
        feats.append(mel_cepstra(lm[0].numpy()))
    return _MCD_SCALE * dtw_mean_distance(feats[0], feats[1])


def resample(wave: np.ndarray, src: int, dst: int) -> np.ndarray:
    """``wave`` from ``src`` Hz to ``dst`` Hz (polyphase)."""
    if src == dst:
        return np.asarray(wave, dtype=np.float32)
    g = math.gcd(src, dst)
    return resample_poly(wave, dst // g, src // g).astype(np.float32)


def intelligibility(
    waves: Sequence[np.ndarray], texts: Sequence[str], sample_rate: int, asr_model: str | Path
) -> dict[str, float]:
    """WER and CER of a speechtune ASR ``model.pt`` on synthesised audio.

    Args:
        waves: synthesised waveforms at ``sample_rate``.
        texts: what each should say.
        sample_rate: the waves' rate (resampled to the ASR model's).
        asr_model: a ``model.pt`` written by ``speechtune train``/``tune``, or its run dir.

    Returns:
        ``{"wer": ..., "cer": ...}``.
    """
    from speechtune.inference import Recognizer
    from speechtune.metrics import cer, wer

    rec = Recognizer.load(asr_model)
    rate = rec.cfg.features.sample_rate
    # An untrained model may say almost nothing; the recogniser's subsampling needs a few
    # frames, so such audio is padded with silence (and is then, rightly, not understood).
    shortest = int(_MIN_ASR_SECONDS * rate)
    audio = [resample(w, sample_rate, rate) for w in waves]
    audio = [np.pad(a, (0, max(0, shortest - a.size))) for a in audio]
    hyps = rec.transcribe(audio)
    return {"wer": wer(list(texts), hyps), "cer": cer(list(texts), hyps)}
