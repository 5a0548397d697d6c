"""The TTS parts on their own: alignment, Griffin-Lim, MCD, the neural vocoder, the text table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtune.tts import (
    GriffinLim,
    Synthesizer,
    TokenTable,
    mel_cepstral_distortion,
    monotonic_alignment,
    prepare_tts_data,
    spectral_convergence,
    text_symbols,
    train_vocoder,
)
from speechtune.tts._data import frontend_of
from speechtune.tts._synth import build_acoustic
from speechtune.tts._train import collate, mel_stats
from tests.tts.conftest import tiny_config


def _test_signal(seconds: float = 0.6, rate: int = 16000) -> np.ndarray:
    """A voiced-like test signal: a gliding 140-180 Hz tone with 12 harmonics, decaying."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140.0 + 40.0 * t / seconds
    phase = 2 * np.pi * np.cumsum(f0) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 13))
    return (0.3 * wave * np.exp(-t) / np.abs(wave).max()).astype(np.float32)


def test_monotonic_alignment_is_monotonic_and_sums_to_the_frames() -> None:
    rng = np.random.default_rng(0)
    log_prob = np.log(rng.dirichlet(np.ones(5), size=23).T)  # 5 tokens, 23 frames
    d = monotonic_alignment(log_prob)
    assert d.sum() == 23 and (d >= 1).all()
    # A clear diagonal alignment is found exactly.
    want = np.array([3, 1, 4, 2])
    sharp = np.full((4, 10), -30.0)
    sharp[np.repeat(np.arange(4), want), np.arange(10)] = 0.0
    assert monotonic_alignment(sharp).tolist() == want.tolist()
    with pytest.raises(ValueError, match="cannot align 5 tokens to 3 frames"):
        monotonic_alignment(np.zeros((5, 3)))


def test_aligner_durations_sum_to_each_mel_length(tts_cache: Path) -> None:
    cfg = tiny_config()
    data = prepare_tts_data(cfg, tts_cache)
    torch.manual_seed(0)
    model = build_acoustic(cfg, data.tokens, len(data.speakers))
    mean, std = mel_stats(data.train)
    tokens, n, spk, mels, t, prior = collate(data.train, data, mean, std, 1.0)
    _, durations = model.losses(tokens, n, spk, mels, t, prior)
    assert durations.sum(1).tolist() == t.tolist()
    assert ((durations > 0).sum(1) == n).all()  # every token is said for at least a frame


def test_griffin_lim_reconstructs_a_magnitude_and_improves_with_iterations() -> None:
    cfg = tiny_config()
    frontend = frontend_of(cfg)
    wave = torch.from_numpy(_test_signal())
    from speechtune.tts._vocoder import stft

    magnitude = stft(wave, frontend).abs()
    convergence = {}
    for n_iter in (2, 16, 64):
        gl = GriffinLim(frontend, dataclasses.replace(cfg.vocoder.griffin_lim, n_iter=n_iter))
        out = gl.phase_from_magnitude(magnitude, length=wave.shape[0])
        convergence[n_iter] = spectral_convergence(magnitude, out, frontend)
    assert convergence[2] > convergence[16] > convergence[64]
    assert convergence[64] < 0.15, convergence
    # The whole mel -> audio path: the NNLS inverse is non-negative, the audio is close.
    log_mel = frontend(wave[None], torch.tensor([wave.shape[0]]))[0][0]
    gl = GriffinLim(frontend, dataclasses.replace(cfg.vocoder.griffin_lim, n_iter=32))
    assert (gl.magnitude(log_mel) >= 0).all()
    assert mel_cepstral_distortion(gl(log_mel).numpy(), wave.numpy(), frontend) < 2.0


def test_mcd_is_zero_for_identical_audio_and_grows_with_noise() -> None:
    frontend = frontend_of(tiny_config())
    clean = _test_signal()
    assert mel_cepstral_distortion(clean, clean, frontend) == pytest.approx(0.0, abs=1e-9)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(clean.size).astype(np.float32)
    mcds = [
        mel_cepstral_distortion(clean + s * noise, clean, frontend) for s in (1e-3, 1e-2, 1e-1)
    ]
    assert 0 < mcds[0] < mcds[1] < mcds[2], mcds
    # A time-stretched copy is aligned by DTW: far closer than noise at 0 dB SNR.
    stretched = np.interp(
        np.linspace(0, clean.size - 1, int(clean.size * 1.2)), np.arange(clean.size), clean
    )
    assert mel_cepstral_distortion(stretched.astype(np.float32), clean, frontend) < mcds[2]


def test_neural_vocoder_loss_falls(tts_cache: Path) -> None:
    cfg = tiny_config("vocoder.kind=neural", "vocoder.neural.steps=60", "vocoder.neural.lr=0.003")
    data = prepare_tts_data(cfg, tts_cache)
    torch.manual_seed(0)
    vocoder, losses = train_vocoder(cfg, data)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)
    wave = vocoder(data.eval[0].log_mel[None])[0]
    assert wave.shape[0] == (data.eval[0].log_mel.shape[0] - 1) * frontend_of(cfg).hop_length


def test_text_front_ends_and_token_table() -> None:
    cfg = tiny_config()
    assert text_symbols("h  i two", cfg.text) == list("H I TWO")
    phonemes = text_symbols("H I", dataclasses.replace(cfg.text, kind="phoneme"))
    assert "".join(phonemes).replace(" ", "") == "'eItS'aI"  # espeak: "aitch", "eye"
    table = TokenTable.build([list("AB C")])
    assert table.symbols[0] == "<pad>" and table.encode(list("CAB")) == [4, 2, 3]
    with pytest.raises(ValueError, match=r"symbol\(s\) \['Z'\].*not trained on"):
        table.encode(list("AZ"))


def test_a_model_file_loads_weights_only_and_refuses_a_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_text("not a model")
    with pytest.raises(ValueError, match="not a torch file"):
        Synthesizer.load(tmp_path)
    torch.save({"format_version": 1}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a speechtune TTS model"):
        Synthesizer.load(tmp_path / "model.pt")


def test_an_utterance_of_almost_no_frames_still_becomes_audio(tts_cache: Path) -> None:
    cfg = tiny_config()
    data = prepare_tts_data(cfg, tts_cache)
    model = build_acoustic(cfg, data.tokens, len(data.speakers))
    mean, std = mel_stats(data.train)
    syn = Synthesizer(cfg, data.tokens, data.speakers, model, mean, std)
    wave = syn.vocode(data.eval[0].log_mel[:2])
    assert wave.size >= frontend_of(cfg).n_fft
    assert mel_cepstral_distortion(wave, data.eval[0].wave, syn.frontend) > 0
