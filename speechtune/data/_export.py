"""Export of a :class:`Manifest` to lhotse (the importers are in ``_importers``)."""

from __future__ import annotations

from pathlib import Path

from speechtune.data._audio import AudioError, audio_info, is_raw
from speechtune.data._manifest import Manifest


def export_lhotse(manifest: Manifest, out_dir: str | Path) -> tuple[Path, Path]:
    """Write a manifest as a lhotse RecordingSet and SupervisionSet.

    Speaker and text go in the supervision's own fields, the group in its ``custom`` dict;
    audio paths are written absolute. Each utterance is one recording with one supervision.

    Args:
        manifest: utterances with audio files lhotse can read (not in-memory, not ``.raw``).
        out_dir: directory to write ``recordings.jsonl.gz`` and ``supervisions.jsonl.gz`` to.

    Returns:
        (recordings path, supervisions path).

    Raises:
        AudioError: an utterance has no readable audio file.
    """
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet
    from lhotse.audio import AudioSource

    recordings, supervisions = [], []
    for utt in manifest:
        path = manifest.resolve(utt)
        if path is None:
            raise AudioError(f"utterance {utt.id!r} has in-memory audio only; lhotse needs a file")
        if is_raw(path):
            raise AudioError(
                f"utterance {utt.id!r}: lhotse cannot read headerless raw audio {path}; convert it first"
            )
        try:
            info = audio_info(path)
        except AudioError as exc:
            raise AudioError(f"utterance {utt.id!r}: {exc}") from exc
        channels = list(range(info.channels))
        recordings.append(
            Recording(
                utt.id,
                [AudioSource("file", channels, str(path.resolve()))],
                info.sample_rate,
                info.num_frames,
                info.duration,
            )
        )
        supervisions.append(
            SupervisionSegment(
                id=utt.id,
                recording_id=utt.id,
                start=0.0,
                duration=utt.duration,
                channel=channels[0] if len(channels) == 1 else channels,
                text=utt.text,
                speaker=utt.speaker,
                custom={"group": utt.group},
            )
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec_path, sup_path = out / "recordings.jsonl.gz", out / "supervisions.jsonl.gz"
    RecordingSet.from_recordings(recordings).to_file(rec_path)
    SupervisionSet.from_segments(supervisions).to_file(sup_path)
    return rec_path, sup_path
