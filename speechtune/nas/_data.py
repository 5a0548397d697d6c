"""The data a search runs on: the recipe's train and dev splits as cached features and tokens.

The same preparation as ``speechtune train`` (corpus, speaker-disjoint dev split, proxy subset,
tokenizer over the whole charset, global CMVN from the training split), so that the supernet
sees the features the derived recipe will train on. Speed perturbation is left out of the
search (it multiplies the supernet's cost); the retrained recipe applies it as configured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechtune.config import RecipeConfig
from speechtune.data import (
    Manifest,
    PreparedData,
    Tokenizer,
    Utterance,
    build_tokenizer,
    corpus_charset,
    load_audio,
    prepare_data,
    require_tunable,
    validate_manifest,
)
from speechtune.features import FeatureCache, GlobalCMVN, SpecAugment
from speechtune.training import Batch, BucketBatchSampler, collate


@dataclass
class SearchData:
    """Train and dev features, targets and the tokenizer of one search."""

    train: Manifest
    dev: Manifest
    feats: dict[str, torch.Tensor]
    targets: dict[str, list[int]]
    durations: dict[str, float]
    tokenizer: Tokenizer
    cmvn: GlobalCMVN | None
    device: torch.device

    def batches(
        self, manifest: Manifest, batch_size: int, seed: int, epoch: int, shuffle: bool = True
    ) -> Iterator[Batch]:
        """Padded batches of ``manifest`` (length-bucketed, shuffled per ``epoch``)."""
        sampler = BucketBatchSampler(
            [u.duration for u in manifest], batch_size, seed=seed, shuffle=shuffle
        )
        sampler.set_epoch(epoch)
        ids = [u.id for u in manifest]
        for idx in sampler:
            yield collate(
                [ids[i] for i in idx], self.feats, self.targets, self.durations, self.device
            )

    def num_batches(self, manifest: Manifest, batch_size: int) -> int:
        """How many batches :meth:`batches` yields for ``manifest``."""
        return len(BucketBatchSampler([u.duration for u in manifest], batch_size, shuffle=False))


def load_search_data(
    cfg: RecipeConfig,
    cache_dir: str | Path,
    device: torch.device,
    data: PreparedData | None = None,
    progress: bool = False,
) -> SearchData:
    """Prepare the recipe's data for a search (see the module docstring).

    Args:
        cfg: The base recipe.
        cache_dir: Corpus and feature cache (``--cache-dir``).
        device: Where the features live.
        data: Prepared manifests (skips corpus preparation; tests pass their corpus).
        progress: Show progress bars while features are computed.
    """
    if data is None:
        data = prepare_data(cfg.data, cfg.features.sample_rate, cache_dir, progress)
    train_set = require_tunable(data.train, "architecture search")
    dev_set = require_tunable(data.dev, "architecture search")
    alphabet = " ".join(sorted(corpus_charset(cfg.data) - {" "}))
    tokenizer = build_tokenizer(
        cfg.tokenizer.kind, [u.text for u in train_set] + [alphabet], cfg.tokenizer.vocab_size
    )
    dev_set, _ = validate_manifest(dev_set, charset=tokenizer.charset, skip_bad=cfg.data.skip_bad)
    cache = FeatureCache(Path(cache_dir) / "features")
    sr = cfg.features.sample_rate
    feats: dict[str, torch.Tensor] = {}
    for manifest in (train_set, dev_set):
        feats.update(
            cache.get(manifest, cfg.features, _loader(manifest, sr), device, progress=progress)
        )
    targets = {u.id: tokenizer.encode(u.text) for m in (train_set, dev_set) for u in m}
    durations = {u.id: u.duration for m in (train_set, dev_set) for u in m}
    train_feats = [feats[u.id] for u in train_set]
    cmvn = GlobalCMVN.fit(train_feats).to(device) if cfg.features.normalize else None
    return SearchData(train_set, dev_set, feats, targets, durations, tokenizer, cmvn, device)


def _loader(manifest: Manifest, sr: int) -> Callable[[Utterance], np.ndarray]:
    """Audio of ``manifest``'s utterances at ``sr``."""
    return lambda utt: load_audio(manifest, utt, sr)


def specaugment(cfg: RecipeConfig, device: torch.device) -> SpecAugment | None:
    """The recipe's SpecAugment on ``device`` (None when disabled)."""
    aug = SpecAugment.from_config(cfg.specaugment)
    return None if aug is None else aug.to(device)
