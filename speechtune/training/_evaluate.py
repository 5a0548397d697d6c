"""The dev evaluation of a recipe run: dev losses (overall and per group), WER, CER, per-group WER."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from speechtune.config import RecipeConfig
from speechtune.data import Manifest
from speechtune.inference import Recognizer
from speechtune.metrics import error_counts, group_wer, worst_group
from speechtune.training._batching import BucketBatchSampler
from speechtune.training._collate import autocast, collate


def _by_group(ids: Sequence[str], group_of: Mapping[str, str]) -> dict[str, list[str]]:
    """``ids`` split by their group, each in its original order."""
    out: dict[str, list[str]] = {}
    for i in ids:
        out.setdefault(group_of[i], []).append(i)
    return out


@torch.no_grad()
def evaluate_dev(
    recognizer: Recognizer,
    manifest: Manifest,
    feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    cfg: RecipeConfig,
    device: torch.device,
    full_decode: bool,
) -> dict[str, Any]:
    """Dev loss, WER, CER and per-group WER.

    During training (``full_decode=False``) dev WER uses greedy CTC (or greedy attention when
    the CTC weight is 0), which is cheap; the final evaluation uses the configured decoder.
    ``dev_loss`` is the training objective (weighted by ``ctc_weight``/``interctc_weight``);
    ``dev_ctc_loss`` is the last layer's CTC loss alone, comparable between configs whose loss
    weights differ (``worst_group_dev_ctc_loss``: the worst group's).
    """
    model = recognizer.model
    model.eval()
    decode = cfg.decode
    if not full_decode:
        from speechtune.config import DecodeConfig

        if cfg.model.head == "ctc" or cfg.model.ctc_weight > 0:
            decode = DecodeConfig(method="greedy")
        else:
            decode = DecodeConfig(method="beam", beam_size=1, ctc_weight=0.0)
    durations = {u.id: u.duration for u in manifest}
    sampler = BucketBatchSampler(
        [u.duration for u in manifest], cfg.train.batch_size, shuffle=False
    )
    ids_all = [u.id for u in manifest]
    group_of = {u.id: u.group for u in manifest}
    many_groups = len(set(group_of.values())) > 1
    # Per group, on the device (one host sync at the end, not one per batch and group): the
    # losses are per-utterance means, so they add.
    loss_sum: dict[str, torch.Tensor] = {}
    ctc_sum: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}
    hyps: dict[str, str] = {}
    for idx in sampler:
        ids = [ids_all[i] for i in idx]
        b = collate(ids, feats, targets, durations, device)
        # With groups, each group's utterances of the batch get their own forward pass: the
        # worst group's dev loss ranks configs for a worst-group objective where WER still ties.
        parts = _by_group(ids, group_of) if many_groups else {"": ids}
        for group, part in parts.items():
            pb = b if len(parts) == 1 else collate(part, feats, targets, durations, device)
            with autocast(device, cfg.train.precision):
                out = model(
                    recognizer.normalize(pb.feats), pb.feat_lens, pb.targets, pb.target_lens
                )
            weighted = out["loss"].detach().double() * len(part)
            loss_sum[group] = loss_sum[group] + weighted if group in loss_sum else weighted
            final = out.get("final_ctc_loss")
            ctc = (out["loss"] if final is None else final).detach().double() * len(part)
            ctc_sum[group] = ctc_sum[group] + ctc if group in ctc_sum else ctc
            count[group] = count.get(group, 0) + len(part)
        for i, h in zip(ids, recognizer.decode_features(b.feats, b.feat_lens, decode)):
            hyps[i] = h
    refs = [u.text for u in manifest]
    hyp_list = [hyps[u.id] for u in manifest]
    groups = [u.group for u in manifest]
    w = error_counts(refs, hyp_list, unit="word")
    c = error_counts(refs, hyp_list, unit="char")
    per_group = group_wer(refs, hyp_list, groups)
    worst_name, worst_rate = worst_group(per_group)
    group_sum = {g: float(v) for g, v in loss_sum.items()}
    dev_loss = sum(group_sum.values()) / max(sum(count.values()), 1)
    group_loss = {g: group_sum[g] / count[g] for g in sorted(group_sum)} if many_groups else {}
    ctc_group = {g: float(v) / count[g] for g, v in ctc_sum.items()}
    dev_ctc_loss = sum(float(v) for v in ctc_sum.values()) / max(sum(count.values()), 1)
    return {
        "dev_loss": dev_loss,
        # Without groups the one group's loss is the dev loss.
        "worst_group_dev_loss": max(group_loss.values(), default=dev_loss),
        "group_dev_loss": group_loss,
        "dev_ctc_loss": dev_ctc_loss,
        "worst_group_dev_ctc_loss": max(ctc_group.values(), default=dev_ctc_loss),
        "wer": w.rate,
        "cer": c.rate,
        "worst_group_wer": worst_rate,
        "worst_group": worst_name,
        "group_wer": per_group,
        "examples": [{"id": u.id, "ref": u.text, "hyp": hyps[u.id]} for u in list(manifest)[:5]],
    }
