#!/usr/bin/env python3
"""A SpeechBrain recipe tuned by speechtune: a tiny CRDNN-CTC character model over Fbank features.

Run by hand (SpeechBrain's usual command line; any key of hparams.yaml can be overridden)::

    python train.py hparams.yaml --data_folder=data/synth --lr=0.002 --number_of_epochs=4

or tuned, one trial per sampled configuration (see tuning.yaml and README.md)::

    speechtune tune --config tuning.yaml

After every validation epoch the recipe appends ``{"epoch": N, "wer": ..., "loss": ..., "lr": ...}``
to the file speechtune names in ``$SPEECHTUNE_REPORT_FILE`` (``speechtune.report``); the
learning rate is reported too, so that a study's records show the value the recipe trained with.
When speechtune prunes the trial (``speechtune.should_stop()``), the recipe exits 0 before its
next training batch (or, if it is validating, after that epoch).

Authors: speechtune contributors (after SpeechBrain's templates/speech_recognition/ASR recipe).
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import soundfile
import torch
import torchaudio_guard

# Before SpeechBrain is imported: it imports torchaudio, which this recipe never uses (see
# torchaudio_guard.py for why it may not load beside a CPU build of torch).
TORCHAUDIO_UNAVAILABLE = torchaudio_guard.install()

import speechbrain as sb  # noqa: E402
from hyperpyyaml import load_hyperpyyaml  # noqa: E402

import speechtune  # noqa: E402  (report/should_stop import only the standard library)

logger = logging.getLogger(__name__)

CSV_FIELDS = ["ID", "duration", "wav", "spk_id", "wrd"]


# ---------------------------------------------------------------------------------------------
# data preparation: speechtune's manifest.jsonl -> SpeechBrain CSV manifests
# ---------------------------------------------------------------------------------------------
def find_manifest(data_folder: str | Path) -> Path:
    """The speechtune ``manifest.jsonl`` in ``data_folder``, or in its only corpus sub-folder.

    ``speechtune data synth --out DIR`` writes the corpus to ``DIR/synthetic-<hash>/``; accepting
    ``DIR`` too saves copying the hash into the command line.
    """
    folder = Path(data_folder)
    if (folder / "manifest.jsonl").is_file():
        return folder / "manifest.jsonl"
    found = sorted(folder.glob("*/manifest.jsonl"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"data_folder {str(folder)!r} must hold a speechtune manifest.jsonl, or exactly one "
        f"sub-folder with one (found {len(found)}); make one with "
        f"`speechtune data synth --out {folder}`"
    )


def prepare_csvs(
    data_folder: str | Path,
    train_csv: str | Path,
    valid_csv: str | Path,
    dev_speakers: int = 1,
    max_train_utts: int | None = None,
    max_dev_utts: int | None = None,
) -> dict[str, int]:
    """Write SpeechBrain's CSV manifests (ID, duration, wav, spk_id, wrd) from speechtune's.

    The dev set is speaker-disjoint: the last ``dev_speakers`` speakers of each group (accent),
    in sorted order, so the split is the same on every run. ``max_*_utts`` keep the first N
    utterances of a split (in manifest order), for quick runs. Returns the size of each split.
    """
    manifest = find_manifest(data_folder)
    root = manifest.parent
    with manifest.open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    speakers_by_group: dict[str, set[str]] = {}
    for row in rows:
        speakers_by_group.setdefault(row.get("group", "default"), set()).add(row["speaker"])
    dev_set: set[str] = set()
    for group, speakers in speakers_by_group.items():
        if len(speakers) <= dev_speakers:
            raise ValueError(
                f"group {group!r} has {len(speakers)} speaker(s): too few to hold out "
                f"dev_speakers={dev_speakers} and still train on it"
            )
        dev_set.update(sorted(speakers)[-dev_speakers:])
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}
    for row in rows:
        audio = Path(row["audio"])
        splits["dev" if row["speaker"] in dev_set else "train"].append(
            {
                "ID": row["id"],
                "duration": row["duration"],
                "wav": str(audio if audio.is_absolute() else (root / audio).resolve()),
                "spk_id": row["speaker"],
                "wrd": row["text"],
            }
        )
    if max_train_utts is not None:
        splits["train"] = splits["train"][:max_train_utts]
    if max_dev_utts is not None:
        splits["dev"] = splits["dev"][:max_dev_utts]
    for name, path in (("train", train_csv), ("dev", valid_csv)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(splits[name])
    return {name: len(utts) for name, utts in splits.items()}


def dataio_prepare(
    hparams: dict[str, Any],
) -> tuple[
    sb.dataio.dataset.DynamicItemDataset,
    sb.dataio.dataset.DynamicItemDataset,
    sb.dataio.encoder.CTCTextEncoder,
]:
    """The train and dev datasets (audio -> ``sig``, text -> ``tokens``) and the label encoder."""
    train_data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams["train_csv"])
    valid_data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=hparams["valid_csv"])
    if hparams["sorting"] == "ascending":
        # Short utterances first: less padding, and an easier start for CTC.
        train_data = train_data.filtered_sorted(sort_key="duration")
        hparams["train_dataloader_opts"]["shuffle"] = False
    else:
        hparams["train_dataloader_opts"]["shuffle"] = True
    valid_data = valid_data.filtered_sorted(sort_key="duration")

    # A fixed charset, not one gathered from the training data: token ids are then the same
    # whatever subset a trial trains on.
    label_encoder = sb.dataio.encoder.CTCTextEncoder()
    label_encoder.insert_blank(index=hparams["blank_index"])
    label_encoder.update_from_iterable(hparams["charset"], sequence_input=False)
    label_encoder.expect_len(hparams["output_neurons"])

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav: str) -> torch.Tensor:
        # soundfile, not sb.dataio.dataio.read_audio: the latter goes through torchaudio.
        samples, rate = soundfile.read(wav, dtype="float32", always_2d=False)
        if rate != hparams["sample_rate"]:
            raise ValueError(f"{wav}: {rate} Hz, the recipe expects {hparams['sample_rate']} Hz")
        return torch.from_numpy(samples)

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "char_list", "tokens")
    def text_pipeline(wrd: str) -> Iterator[Any]:
        yield wrd
        char_list = list(wrd)
        yield char_list
        yield label_encoder.encode_sequence_torch(char_list)

    datasets = [train_data, valid_data]
    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return train_data, valid_data, label_encoder


# ---------------------------------------------------------------------------------------------
# the Brain
# ---------------------------------------------------------------------------------------------
class CTCBrain(sb.Brain):
    """CRDNN encoder + linear CTC head; greedy CTC decoding for the dev WER."""

    label_encoder: sb.dataio.encoder.CTCTextEncoder

    def compute_forward(self, batch: Any, stage: sb.Stage) -> tuple[torch.Tensor, torch.Tensor]:
        """Fbank features -> normalised -> CRDNN -> per-frame log-probabilities."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        feats = self.modules.normalize(feats, wav_lens)
        encoded = self.modules.encoder(feats)
        log_probs = self.hparams.log_softmax(self.modules.ctc_lin(encoded))
        return log_probs, wav_lens

    def compute_objectives(
        self, predictions: tuple[torch.Tensor, torch.Tensor], batch: Any, stage: sb.Stage
    ) -> torch.Tensor:
        """The CTC loss; outside training also the greedy transcripts, for the WER."""
        log_probs, wav_lens = predictions
        tokens, token_lens = batch.tokens
        loss = self.hparams.ctc_cost(log_probs, tokens, wav_lens, token_lens)
        if stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(
                log_probs, wav_lens, blank_id=self.hparams.blank_index
            )
            predicted = ["".join(self.label_encoder.decode_ndim(h)).split() for h in hyps]
            target = [words.split() for words in batch.wrd]
            self.wer_metric.append(batch.id, predicted, target)
        return loss

    def on_fit_batch_start(self, batch: Any, should_step: bool) -> None:
        """Exit (code 0) before the next training batch once speechtune has pruned the trial."""
        # Every finished epoch is already reported, so leaving mid-epoch loses nothing, and a
        # training epoch can outlast the tuner's grace period before it terminates the process.
        if speechtune.should_stop():
            logger.info("speechtune pruned this trial; stopping before the next batch")
            raise SystemExit(0)

    def on_stage_start(self, stage: sb.Stage, epoch: int | None = None) -> None:
        """A fresh error-rate tracker for each dev pass."""
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage: sb.Stage, stage_loss: float, epoch: int | None = None) -> None:
        """Log the epoch, report it to speechtune, checkpoint, and stop once pruned."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        # ErrorRateStats gives a percentage; speechtune's WER is a fraction.
        wer = self.wer_metric.summarize("error_rate") / 100.0
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats={"loss": self.train_loss},
                valid_stats={"loss": stage_loss, "WER": wer},
            )
            speechtune.report(epoch=epoch, wer=wer, loss=float(stage_loss), lr=float(lr))
            self.checkpointer.save_and_keep_only(meta={"WER": wer}, min_keys=["WER"])
            if speechtune.should_stop():
                # Pruned while validating: end after this epoch (Brain.fit stops when the
                # counter runs out), without starting another.
                logger.info("speechtune pruned this trial after epoch %s; stopping", epoch)
                self.hparams.epoch_counter.limit = self.hparams.epoch_counter.current


def main(argv: list[str]) -> int:
    """Parse SpeechBrain's command line, prepare the data, train, and report each epoch."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    with open(hparams_file, encoding="utf-8") as fh:
        hparams = load_hyperpyyaml(fh, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if TORCHAUDIO_UNAVAILABLE:
        logger.info(
            "torchaudio is not importable (%s); the recipe does not need it",
            TORCHAUDIO_UNAVAILABLE,
        )
    sizes = prepare_csvs(
        hparams["data_folder"],
        hparams["train_csv"],
        hparams["valid_csv"],
        dev_speakers=hparams["dev_speakers"],
        max_train_utts=hparams["max_train_utts"],
        max_dev_utts=hparams["max_dev_utts"],
    )
    logger.info("data: %d train, %d dev utterances", sizes["train"], sizes["dev"])
    train_data, valid_data, label_encoder = dataio_prepare(hparams)

    brain = CTCBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.label_encoder = label_encoder
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
