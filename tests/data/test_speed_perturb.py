"""Speed perturbation (``data.speed_perturb``): the resampler, the perturbed training split, its
feature cache entries, config errors, and a training run on it."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from speechtune.cli import main
from speechtune.config import ConfigError, DataConfig, FeaturesConfig, config_from_dict
from speechtune.data import Manifest, PreparedData, Utterance, prepare_data
from speechtune.data._prepare import check_speed_perturb
from speechtune.features import FeatureCache
from speechtune.features._cache import cache_key
from speechtune.features._speed import speed_perturb, speed_ratio
from tests.helpers.recipes import run_options, tiny_config

SR = 16000
FACTORS = [0.9, 1.0, 1.1]


def _sine(freq: float, seconds: float = 1.0, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_hz(wave: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.argmax(spectrum)) * rate / wave.size


# -- the resampler ---------------------------------------------------------------------------------
def test_faster_speech_is_shorter_and_higher() -> None:
    wave = _sine(440.0)
    fast = speed_perturb(wave, 1.1)
    assert fast.dtype == np.float32 and fast.ndim == 1
    assert fast.size == math.ceil(wave.size / 1.1)
    assert _dominant_hz(fast) == pytest.approx(440.0 * 1.1, rel=0.02)
    slow = speed_perturb(wave, 0.9)
    assert slow.size == math.ceil(wave.size / 0.9)
    assert _dominant_hz(slow) == pytest.approx(440.0 * 0.9, rel=0.02)
    # the level is kept (an interpolating low-pass, not a gain)
    inner = fast[200:-200]
    assert np.max(np.abs(inner)) == pytest.approx(0.5, rel=0.01)


def test_factor_one_returns_the_input_unchanged() -> None:
    wave = np.random.default_rng(0).standard_normal(1234).astype(np.float32)
    out = speed_perturb(wave, 1.0)
    assert out is wave  # not even a copy
    assert np.array_equal(speed_perturb(wave.astype(np.float64), 1.0), wave)


@pytest.mark.parametrize("factor", [0.5, 0.9, 0.95, 1.1, 2.0])
def test_agrees_with_scipy_polyphase_resampling(factor: float) -> None:
    noise = np.random.default_rng(1).standard_normal(SR // 4)
    wave = resample_poly(noise, 4, 1).astype(np.float32)  # noise below 2 kHz: well in band
    frac = Fraction(factor).limit_denominator(100)
    ours = speed_perturb(wave, factor)
    ref = resample_poly(wave, frac.denominator, frac.numerator)
    assert ours.size == ref.size
    inner = slice(300, ours.size - 300)  # the two filters differ only at the edges and band top
    err = np.sqrt(np.mean((ours[inner] - ref[inner]) ** 2)) / np.sqrt(np.mean(ref[inner] ** 2))
    assert err < 0.005, err


def test_speeding_up_does_not_alias() -> None:
    # 7.9 kHz played 1.1 times faster would be 8.69 kHz, above Nyquist: it must be filtered
    # out, not folded back to 7.31 kHz.
    out = speed_perturb(_sine(7900.0, 2.0), 1.1)[1000:-1000]
    assert np.sqrt(np.mean(out**2)) < 0.01 * 0.5


@pytest.mark.parametrize("factor", [0.4, 2.5, float("nan"), True, "1.1"])
def test_resampler_refuses_bad_factors(factor: object) -> None:
    with pytest.raises(ValueError, match="speed factor"):
        speed_perturb(_sine(440.0), factor)  # type: ignore[arg-type]


def test_factors_are_small_fractions() -> None:
    assert speed_ratio(0.9) == (9, 10) and speed_ratio(1.1) == (11, 10)
    assert speed_ratio(1.0) == (1, 1)


# -- the perturbed training split ------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sp_corpus")


def _data_cfg(corpus_dir: Path, **data: object):
    pytest.importorskip("espeakng_loader", reason="the synthetic corpus needs the `synth` extra")
    return config_from_dict(
        {
            "data": {
                "corpus": "synthetic",
                "root": str(corpus_dir),
                "dev_fraction": 0.25,
                "synthetic": {
                    "num_utterances": 32,
                    "seed": 3,
                    "accents": ["en-us", "en-gb-scotland"],
                    "num_voices": 2,
                },
                **data,
            }
        }
    ).data


@pytest.fixture(scope="module")
def plain(corpus_dir: Path) -> PreparedData:
    return prepare_data(_data_cfg(corpus_dir), SR, corpus_dir / "cache")


def test_preparation_triples_the_training_split_and_keeps_dev(
    corpus_dir: Path, plain: PreparedData
) -> None:
    cfg = _data_cfg(corpus_dir, speed_perturb=FACTORS)
    assert cfg.speed_perturb == FACTORS
    prepared = prepare_data(cfg, SR, corpus_dir / "cache")
    data = prepared.with_speed_perturbation(cfg.speed_perturb)

    assert [u.id for u in data.dev] == [u.id for u in plain.dev] and data.dev.split == "dev"
    assert data.train.split == "train" and len(data.train) == 3 * len(plain.train)
    by_id = data.train.by_id()
    for utt in plain.train:
        assert by_id[utt.id] == utt  # 1.0: the original itself
        for factor, prefix in ((0.9, "sp0.9-"), (1.1, "sp1.1-")):
            copy = by_id[prefix + utt.id]
            assert copy.text == utt.text and copy.speaker == utt.speaker
            assert copy.group == utt.group and copy.audio == utt.audio
            assert copy.duration == pytest.approx(utt.duration / factor)
            assert data.speeds[copy.id] == factor
    assert set(data.speeds) == {u.id for u in data.train} - {u.id for u in plain.train}
    assert data.train.hours == pytest.approx(plain.train.hours * (1 / 0.9 + 1 + 1 / 1.1))
    assert not any(u.id.startswith("sp") for u in data.dev)
    with pytest.raises(ValueError, match="already"):
        data.with_speed_perturbation(FACTORS)
    assert prepared.with_speed_perturbation([]) is prepared

    # data.max_duration, which every original passed, also bounds the slowed copies.
    longest = max(u.duration for u in plain.train)
    limit = longest / 0.95  # the longest original's 0.9 copy is over it, its 1.1 copy is not
    capped = plain.with_speed_perturbation(FACTORS, max_duration=limit)
    slow = {u.id for u in capped.train if u.id.startswith("sp0.9-")}
    assert slow == {"sp0.9-" + u.id for u in plain.train if u.duration / 0.9 <= limit}
    assert len(slow) < len(plain.train)
    assert sum(u.id.startswith("sp1.1-") for u in capped.train) == len(plain.train)
    assert max(u.duration for u in capped.train) <= limit


def test_a_proxy_subset_takes_whole_utterances_with_all_their_copies(corpus_dir: Path) -> None:
    cfg = _data_cfg(corpus_dir, speed_perturb=FACTORS, proxy_fraction=0.5)
    prepared = prepare_data(cfg, SR, corpus_dir / "cache")
    data = prepared.with_speed_perturbation(cfg.speed_perturb)
    originals = {u.id for u in prepared.train}
    assert len(data.train) == 3 * len(originals)
    assert {u.id.split("-", 1)[1] for u in data.train if u.id in data.speeds} == originals


def test_copies_are_cached_per_factor_beside_the_originals(
    plain: PreparedData, tmp_path: Path
) -> None:
    FeatureCache.clear_memory()
    data = plain.with_speed_perturbation(FACTORS)
    cfg = FeaturesConfig(n_mels=40)
    calls: list[str] = []

    def load(utt: Utterance) -> np.ndarray:
        calls.append(utt.id)
        wave, rate = sf.read(data.train.resolve(utt), dtype="float32")
        assert rate == SR
        return wave

    cache = FeatureCache(tmp_path / "features")
    feats = cache.get_perturbed(data.train, cfg, load, data.speeds)
    assert list(feats) == [u.id for u in data.train] and cache.misses == 3
    assert len(calls) == len(data.train)
    # the originals' entry is the one an unperturbed run uses; each factor has its own key
    files = {p.name for p in (tmp_path / "features").iterdir()}
    assert f"feats-{cache_key(plain.train, cfg)}.pt" in files and len(files) == 3
    for factor, prefix in ((0.9, "sp0.9-"), (1.1, "sp1.1-")):
        copies = Manifest([u for u in data.train if u.id.startswith(prefix)], "train")
        assert cache_key(copies, cfg, factor) != cache_key(copies, cfg)
        for utt in list(plain.train)[:4]:
            n, m = feats[utt.id].shape[0], feats[prefix + utt.id].shape[0]
            assert m == pytest.approx(n / factor, abs=2), (utt.id, factor)
    # computed once: a second call (another process: empty memo) reads the three files
    FeatureCache.clear_memory()
    calls.clear()
    again = FeatureCache(tmp_path / "features")
    again.get_perturbed(data.train, cfg, load, data.speeds)
    assert calls == [] and again.disk_hits == 3
    FeatureCache.clear_memory()


# -- config errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["fast", ["fast"], [0.9, True], {"a": 1}])
def test_a_factor_of_the_wrong_type_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"speed_perturb": value}})
    assert [p.key for p in info.value.problems] == ["data.speed_perturb"]


@pytest.mark.parametrize("value", [[3.0], [0.9, 0.1], [0.9, 0.9], [float("nan")]])
def test_a_factor_out_of_range_is_a_config_error(value: list[float], tmp_path: Path) -> None:
    # The loader refuses it (so `speechtune validate` does too) ...
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"speed_perturb": value}})
    assert [p.key for p in info.value.problems] == ["data.speed_perturb"]
    assert "\n" not in str(info.value.problems[0])
    # ... and so does data preparation, for a DataConfig built without the loader.
    data_cfg = DataConfig(speed_perturb=value)
    with pytest.raises(ConfigError) as info:
        prepare_data(data_cfg, SR, tmp_path)  # refused before any corpus is built
    assert [p.key for p in info.value.problems] == ["data.speed_perturb"]
    assert not (tmp_path / "corpora").exists()
    with pytest.raises(ConfigError, match="data.speed_perturb"):
        check_speed_perturb(value)


def test_the_cli_names_the_key_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    run = ["train", "--run-dir", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]
    code = main([*run, "--quiet", "--device", "cpu", "--set", "data.speed_perturb=[0.9,3.0]"])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: data.speed_perturb: "), err
    assert "[0.5, 2]" in err[0] and "3.0" in err[0]


# -- training ------------------------------------------------------------------------------------
def test_a_tiny_run_trains_on_the_perturbed_split(plain: PreparedData, tmp_path: Path) -> None:
    cfg = tiny_config(data={"speed_perturb": FACTORS}, train={"epochs": 1, "batch_size": 8})
    result = train_run(cfg, plain, tmp_path)
    assert result.status == "complete", result.reason
    row = result.history[0]
    seconds = row["audio_seconds_per_second"] * row["epoch_seconds"]  # audio seen in the epoch
    want = 3600 * plain.train.hours * (1 / 0.9 + 1 + 1 / 1.1)
    assert seconds == pytest.approx(want, rel=1e-6)
    assert set(result.metrics["group_wer"]) == set(plain.dev.groups)  # dev as it was


def train_run(cfg, data: PreparedData, tmp_path: Path):  # -> TrainResult
    from speechtune.training import train

    return train(cfg, run_options(tmp_path), data=data)
