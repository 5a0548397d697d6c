"""FSDD importer (``data.corpus: fsdd``): the real training part (when present) and tiny
FSDD-like trees written here: transcripts, accent groups, the test part kept out, a
speaker-disjoint dev split, 8 kHz audio upsampled only when asked, one-line errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from speechtune.cli import main
from speechtune.config import ConfigError, config_from_dict
from speechtune.data import BadInputError, FSDDError, import_fsdd, load_audio, prepare_data
from speechtune.data._fsdd import DIGIT_WORDS, group_name
from tests.helpers.fsdd import REAL_FSDD, SPEAKERS, fake_fsdd, metadata_py


def _data_cfg(root: Path, **data: object):  # -> DataConfig
    return config_from_dict({"data": {"corpus": "fsdd", "root": str(root), **data}}).data


@pytest.mark.skipif(not (REAL_FSDD / "recordings").is_dir(), reason="real FSDD copy not present")
def test_real_fsdd_train_part_and_its_speaker_disjoint_dev(tmp_path: Path) -> None:
    splits = import_fsdd(REAL_FSDD, tmp_path / "import")
    assert set(splits) == {"train"}  # the copy holds recordings 5-49 only
    m = splits["train"]
    assert len(m) == 2700 and len(m.speakers) == 6
    assert Counter(u.speaker for u in m) == {s: 450 for s in m.speakers}
    assert m.groups == ["bel-french", "deu-german", "grc-greek", "usa-neutral"]
    assert m.by_id()["7_theo_23"].text == "SEVEN" and 19 < m.hours * 60 < 20.5

    cfg = _data_cfg(REAL_FSDD, allow_upsampling=True)
    data = prepare_data(cfg, 16000, tmp_path / "cache")
    train_spk, dev_spk = set(data.train.speakers), set(data.dev.speakers)
    assert train_spk.isdisjoint(dev_spk) and len(train_spk | dev_spk) == 6
    # One speaker of each two-speaker accent goes to dev; the lone Greek and Belgian stay in train.
    assert data.dev.groups == ["deu-german", "usa-neutral"] and len(dev_spk) == 2
    assert {"george", "nicolas"} <= train_spk
    assert len(data.train) + len(data.dev) == 2700
    assert all(int(u.id.split("_")[2]) >= 5 for u in data.train)

    # data.proxy_hours caps the training audio (a seeded, speaker-stratified subset); dev stays.
    five = prepare_data(
        _data_cfg(REAL_FSDD, allow_upsampling=True, proxy_hours=5 / 60), 16000, tmp_path / "cache"
    )
    assert 4.9 < five.train.hours * 60 <= 5.0 and five.dev.speakers == data.dev.speakers
    assert set(five.train.speakers) == train_spk
    u = data.train[0]
    assert load_audio(data.train, u, 16000).shape[0] == pytest.approx(2 * u.duration * 8000, abs=2)


def test_fake_fsdd_texts_groups_and_test_part(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(0, 3, 9), indices=range(3, 7), ext="flac")
    splits = import_fsdd(src, tmp_path / "out")
    assert set(splits) == {"train", "test"}
    train, test = splits["train"], splits["test"]
    # Indices 0-4 are FSDD's official test part: here 3 and 4.
    assert {u.id.split("_")[2] for u in train} == {"5", "6"}
    assert {u.id.split("_")[2] for u in test} == {"3", "4"}
    assert len(train) == len(test) == 4 * 3 * 2
    utt = train.by_id()["9_cem_5"]
    assert (utt.text, utt.speaker, utt.group) == ("NINE", "cem", "deu-german")
    assert utt.duration == pytest.approx(0.3)
    assert {u.text for u in train} == {"ZERO", "THREE", "NINE"}
    assert (tmp_path / "out" / "train.jsonl").is_file() and (
        tmp_path / "out" / "test.jsonl"
    ).is_file()
    assert group_name("USA/neutral") == "usa-neutral" and DIGIT_WORDS[4] == "FOUR"


def test_a_recipe_trains_on_train_only_with_a_speaker_disjoint_dev(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", indices=range(3, 8))
    data = prepare_data(_data_cfg(src, allow_upsampling=True), 16000, tmp_path / "cache")
    assert set(data.train.speakers).isdisjoint(data.dev.speakers)
    # One speaker per accent in dev, the other in train; the test part (3, 4) in neither.
    assert len(data.dev.speakers) == 2 and data.dev.groups == ["deu-german", "usa-neutral"]
    assert all(int(u.id.split("_")[2]) >= 5 for u in [*data.train, *data.dev])
    assert len(data.train) == len(data.dev) == 2 * 10 * 3


def test_8khz_audio_under_a_16khz_recipe_needs_allow_upsampling(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(1,), indices=(5, 6))
    with pytest.raises(BadInputError, match="sample rate too low"):
        prepare_data(_data_cfg(src), 16000, tmp_path / "cache")
    data = prepare_data(_data_cfg(src, allow_upsampling=True), 16000, tmp_path / "cache")
    utt = data.train[0]
    assert load_audio(data.train, utt, 16000).shape[0] == 2 * 2400  # 0.3 s at 16 kHz
    assert prepare_data(_data_cfg(src), 8000, tmp_path / "cache").train  # at 8 kHz: fine as is


def test_corpus_fsdd_needs_a_root() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"data": {"corpus": "fsdd"}})
    assert [p.key for p in err.value.problems] == ["data.root"]
    assert "FSDD" in err.value.problems[0].rule


def _one_line(exc: pytest.ExceptionInfo[FSDDError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_bad_trees_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FSDDError) as err:
        import_fsdd(missing, tmp_path / "out")
    assert str(missing) in _one_line(err)

    with pytest.raises(FSDDError, match="not an FSDD tree"):
        import_fsdd(tmp_path, tmp_path / "out")  # a directory without recordings/

    src = fake_fsdd(tmp_path / "fsdd", digits=(2,), indices=(5,))
    bad = src / "recordings" / "two_amy_5.wav"
    bad.write_bytes((src / "recordings" / "2_amy_5.wav").read_bytes())
    with pytest.raises(FSDDError) as err:
        import_fsdd(src, tmp_path / "out")
    assert str(bad) in _one_line(err) and "{digit}_{speaker}_{index}" in str(err.value)
    bad.unlink()

    stranger = src / "recordings" / "2_eve_5.wav"
    stranger.write_bytes((src / "recordings" / "2_amy_5.wav").read_bytes())
    with pytest.raises(FSDDError) as err:
        import_fsdd(src, tmp_path / "out")
    assert str(stranger) in _one_line(err) and "'eve' is not in" in str(err.value)
    stranger.unlink()

    (src / "metadata.py").unlink()
    with pytest.raises(FSDDError) as err:
        import_fsdd(src, tmp_path / "out")
    assert str(src / "metadata.py") in _one_line(err)


def test_metadata_is_read_as_data_never_run(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(2,), indices=(5,))
    marker = tmp_path / "ran"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\n"
    (src / "metadata.py").write_text(code + metadata_py(SPEAKERS))
    assert len(import_fsdd(src, tmp_path / "out")["train"]) == 4  # the dict literal is enough
    assert not marker.exists()

    (src / "metadata.py").write_text(f"metadata = {{'amy': dict(accent={str(marker)!r})}}\n")
    with pytest.raises(FSDDError, match="literals only"):
        import_fsdd(src, tmp_path / "out")
    (src / "metadata.py").write_text("metadata = {\n")
    with pytest.raises(FSDDError, match="cannot be parsed"):
        import_fsdd(src, tmp_path / "out")
    assert not marker.exists()


def test_a_link_out_of_the_tree_is_refused_unless_allowed(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(4,), indices=(5,))
    outside = fake_fsdd(tmp_path / "elsewhere", speakers={"amy": "x"}, digits=(4,), indices=(6,))
    (src / "recordings" / "4_amy_6.wav").symlink_to(outside / "recordings" / "4_amy_6.wav")
    with pytest.raises(FSDDError, match="outside the FSDD directory"):
        import_fsdd(src, tmp_path / "out")
    assert len(import_fsdd(src, tmp_path / "out", allow_outside_root=True)["train"]) == 5


def test_bad_audio_is_listed_or_skipped(tmp_path: Path) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(5,), indices=(5, 6))
    (src / "recordings" / "5_bob_6.wav").write_bytes(b"not audio")
    with pytest.raises(BadInputError, match="5_bob_6"):
        import_fsdd(src, tmp_path / "out")
    assert len(import_fsdd(src, tmp_path / "out", skip_bad=True)["train"]) == 7


def test_data_fsdd_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_fsdd(tmp_path / "fsdd", digits=(6,), indices=(4, 5))
    assert main(["data", "fsdd", "--source", str(src), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "train: 4 utterances" in out and "test: 4 utterances" in out
    assert "groups deu-german, usa-neutral" in out
    assert (
        main(["data", "fsdd", "--source", str(tmp_path / "no"), "--out", str(tmp_path / "o")]) == 1
    )
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] and "Traceback" not in err
