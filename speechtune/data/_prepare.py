"""From a :class:`DataConfig` to validated, speaker-disjoint train/dev manifests.

This is the one place where a corpus name turns into data, so it is also where the test split
is kept out of training, tuning and selection, and where the training split gets its
speed-perturbed copies (:meth:`PreparedData.with_speed_perturbation`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechtune.config import ConfigError, ConfigProblem, DataConfig, SyntheticConfig
from speechtune.data._an4 import import_an4
from speechtune.data._fsdd import import_fsdd
from speechtune.data._importers import load_manifest
from speechtune.data._manifest import Manifest, TestSplitError, replace_utt, require_tunable
from speechtune.data._splits import proxy_subset, split_dev
from speechtune.data._synthetic import synthesize_corpus
from speechtune.data._text import DEFAULT_CHARSET
from speechtune.data._validate import ValidationReport, validate_manifest

log = logging.getLogger(__name__)

# A path component like "test", "an4_test", "eval-clean" or "golden.jsonl" names held-out data.
_HELD_OUT = re.compile(r"(^|[_\-.])(test|eval|golden)([_\-.]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class PreparedData:
    """Training and dev manifests ready for feature extraction.

    Attributes:
        train: the training utterances (a proxy subset when asked for), with their
            speed-perturbed copies once :meth:`with_speed_perturbation` has made them.
        dev: the dev utterances (never perturbed).
        report: what validation found.
        speeds: copy id -> speed factor, for every speed-perturbed copy in ``train``; the
            features of a copy are those of its original's audio played at that factor.
    """

    train: Manifest
    dev: Manifest
    report: ValidationReport
    speeds: Mapping[str, float] = field(default_factory=dict, compare=False)

    def with_speed_perturbation(
        self, factors: Sequence[float], max_duration: float | None = None
    ) -> PreparedData:
        """The training split with each utterance at every factor (``data.speed_perturb``).

        Each factor other than 1.0 adds a copy of every training utterance with id
        ``sp<factor>-<id>`` (Kaldi's naming), the same transcript, speaker and group, the same
        audio source, and the duration it really has at that speed (``duration / factor``);
        1.0 keeps the originals. A list without 1.0 trains on copies only; ``[]`` changes
        nothing. Dev is returned as it is. Call it after any proxy subset is taken, so that a
        subset holds all of an utterance's copies or none. A slowed copy longer than
        ``max_duration`` seconds (``data.max_duration``, which the originals passed) is left
        out, and the number left out is logged.

        Raises:
            ConfigError: naming ``data.speed_perturb``, for a factor out of range or repeated.
            ValueError: the training split has been perturbed already.
        """
        factors = check_speed_perturb(factors)
        if not factors:
            return self
        if self.speeds:
            raise ValueError("the training split is speed-perturbed already")
        utts, speeds = [], {}
        too_long = 0
        for factor in factors:
            for utt in self.train:
                if factor == 1.0:
                    utts.append(utt)
                    continue
                if max_duration is not None and utt.duration / factor > max_duration:
                    too_long += 1
                    continue
                copy = replace_utt(
                    utt, id=f"sp{factor:g}-{utt.id}", duration=utt.duration / factor
                )
                utts.append(copy)
                speeds[copy.id] = factor
        if too_long:
            log.info(
                "speed perturbation: left out %d copies longer than data.max_duration=%gs",
                too_long,
                max_duration,
            )
        train = Manifest(utts, self.train.split, self.train.root)
        return dataclasses.replace(self, train=train, speeds=speeds)


def _speed_bounds() -> tuple[float, float]:
    meta = next(f for f in dataclasses.fields(DataConfig) if f.name == "speed_perturb").metadata
    return float(meta["ge"]), float(meta["le"])


def check_speed_perturb(factors: Sequence[Any]) -> list[float]:
    """``data.speed_perturb`` as a list of floats, each in range and none twice.

    The config loader checks the type (a list of numbers) but not elements against bounds;
    this does, where the data are prepared.

    Raises:
        ConfigError: one problem, naming ``data.speed_perturb``.
    """
    low, high = _speed_bounds()

    def bad(rule: str) -> ConfigError:
        return ConfigError([ConfigProblem("data.speed_perturb", rule, factors)])

    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise bad("must be a list of speed factors such as [0.9, 1.0, 1.1]")
    out = []
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise bad(f"every factor must be a number in [{low:g}, {high:g}]")
        if not (math.isfinite(f) and low <= f <= high):
            raise bad(f"every factor must be in [{low:g}, {high:g}], not {f!r}")
        out.append(float(f))
    if len(set(out)) != len(out):
        raise bad("a factor is repeated (each one gives its own copy of the training set)")
    return out


def refuse_held_out_path(path: str | Path, purpose: str) -> None:
    """Refuse a manifest whose file or directory name says it is a test/eval/golden set.

    A manifest file carries no split label, so its name is the best evidence we have; this
    catches the common accident of pointing a training or tuning config at the test set.
    """
    name = Path(path).name  # the file itself, or a Kaldi data dir such as data/test
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv"):
        name = name.removesuffix(suffix)
    if _HELD_OUT.search(name):
        raise TestSplitError(
            f"refusing {str(path)!r} for {purpose}: its name marks it as held-out "
            "(test/eval/golden) data, which is for final evaluation only "
            "(`speechtune evaluate`). Train and tune on training data; speechtune carves "
            "the dev split from it."
        )


def corpus_charset(cfg: DataConfig) -> frozenset[str]:
    """The characters transcripts may use: ``data.charset`` plus space, or the English default."""
    return frozenset(cfg.charset) | {" "} if cfg.charset else DEFAULT_CHARSET


def synthesize_configured(
    root: str | Path, s: SyntheticConfig, progress: bool = False
) -> Manifest:
    """The synthetic corpus a :class:`SyntheticConfig` describes, generated (or cached) under ``root``."""
    return synthesize_corpus(
        root,
        num_utterances=s.num_utterances,
        seed=s.seed,
        accents=tuple(s.accents),
        num_voices=s.num_voices,
        noise_snr_db=s.noise_snr_db,
        sample_rate=s.sample_rate,
        progress=progress,
    )


def load_corpus(cfg: DataConfig, cache_dir: str | Path, progress: bool = False) -> Manifest:
    """Load (building or importing when needed) the training corpus named by ``cfg.corpus``."""
    cache_dir = Path(cache_dir)
    if cfg.corpus == "synthetic":
        manifest = synthesize_configured(
            Path(cfg.root) if cfg.root else cache_dir / "corpora", cfg.synthetic, progress
        )
    elif cfg.corpus in ("an4", "fsdd"):
        assert cfg.root is not None  # config validation requires it
        importer = import_an4 if cfg.corpus == "an4" else import_fsdd
        # A recipe reads the copy its author named, as-is: the outside-root check belongs to
        # `speechtune data an4|fsdd`, where a downloaded distribution comes in (docs/data.md).
        splits = importer(
            cfg.root,
            cache_dir / "corpora" / cfg.corpus,
            skip_bad=cfg.skip_bad,
            max_duration=cfg.max_duration,
            allow_outside_root=True,
        )
        # The test split (AN4's; FSDD's recordings 0-4) is never used for training or tuning.
        manifest = splits["train"]
    else:
        assert cfg.manifest is not None
        refuse_held_out_path(cfg.manifest, "training")
        manifest = load_manifest(cfg.manifest)
    return manifest.with_split("train")


def prepare_data(
    cfg: DataConfig,
    sample_rate: int,
    cache_dir: str | Path,
    progress: bool = False,
) -> PreparedData:
    """Load, validate, split (speaker-disjoint dev) and subsample (proxy) the training corpus.

    Args:
        cfg: the recipe's data section.
        sample_rate: the front end's sample rate (audio below it is reported as bad input,
            unless ``cfg.allow_upsampling``).
        cache_dir: where generated/imported corpora are cached.
        progress: show progress bars.

    Returns:
        Train (possibly a proxy subset) and dev manifests, plus the validation report. The
        speed-perturbed copies of ``data.speed_perturb`` are *not* made here (the training
        loop makes them with :meth:`PreparedData.with_speed_perturbation`, after a trial's
        proxy subset of reused data), but the factors are checked first of all.

    Raises:
        ConfigError: ``data.speed_perturb`` holds a factor out of range (before any work).
    """
    check_speed_perturb(cfg.speed_perturb)
    manifest = load_corpus(cfg, cache_dir, progress)
    require_tunable(manifest, "training")
    manifest, report = validate_manifest(
        manifest,
        charset=corpus_charset(cfg),
        sample_rate=None if cfg.allow_upsampling else sample_rate,
        max_duration=cfg.max_duration,
        skip_bad=cfg.skip_bad,
    )
    if report.skipped:
        log.warning(report.summary())
    train, dev = split_dev(manifest, cfg.dev_fraction, cfg.split_seed)
    if cfg.proxy_hours is not None:
        train = proxy_subset(train, hours=cfg.proxy_hours, seed=cfg.split_seed)
    elif cfg.proxy_fraction < 1.0:
        train = proxy_subset(train, fraction=cfg.proxy_fraction, seed=cfg.split_seed)
    return PreparedData(train=train.with_split("train"), dev=dev.with_split("dev"), report=report)
