"""Train the TTS recipe: the acoustic model (with its aligner), then the vocoder; judge it on
held-out utterances; write ``model.pt``, ``metrics.json`` and a few synthesised wavs."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import Tensor

from speechtune.training import NullReporter, Reporter
from speechtune.tts._align import alignment_prior
from speechtune.tts._config import (
    ACOUSTIC_SECTIONS,
    TTSConfig,
    dump_tts_config,
    tts_config_to_dict,
)
from speechtune.tts._data import TTSData, TTSItem, frontend_of, prepare_tts_data
from speechtune.tts._metrics import intelligibility, mel_cepstral_distortion
from speechtune.tts._model import FastSpeech
from speechtune.tts._synth import Synthesizer, build_acoustic
from speechtune.tts._vocoder import NeuralVocoder, multi_resolution_stft_loss

log = logging.getLogger(__name__)

#: The sections of a recipe that decide the acoustic model (a frozen one must match them).
_FROZEN_WITH_ACOUSTIC = ("seed", "data", "features", *ACOUSTIC_SECTIONS)


@dataclass
class TTSResult:
    """What :func:`train_tts` did: ``completed`` or ``stopped`` (by the reporter), and its metrics."""

    status: str
    metrics: dict[str, float]
    run_dir: Path
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to 10 % of ``base`` (a pure function of the step)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def mel_stats(items: Sequence[TTSItem]) -> tuple[Tensor, Tensor]:
    """Per-bin mean and standard deviation of the training log-mels."""
    allm = torch.cat([it.log_mel for it in items])
    return allm.mean(0), allm.std(0).clamp(min=1e-3)


def collate(
    items: Sequence[TTSItem], data: TTSData, mean: Tensor, std: Tensor, prior_scale: float
) -> tuple[Tensor, ...]:
    """Padded ``tokens, token_lengths, speakers, mels (normalised), frame_lengths, log_prior``."""
    ids = [data.tokens.encode(it.symbols) for it in items]
    n = torch.tensor([len(x) for x in ids])
    t = torch.tensor([it.log_mel.shape[0] for it in items])
    tokens = torch.zeros(len(items), int(n.max()), dtype=torch.long)
    mels = torch.zeros(len(items), int(t.max()), mean.shape[0])
    for b, (x, it) in enumerate(zip(ids, items)):
        tokens[b, : len(x)] = torch.tensor(x)
        mels[b, : it.log_mel.shape[0]] = (it.log_mel - mean) / std
    speakers = torch.tensor([data.speakers.index(it.speaker) for it in items])
    prior = alignment_prior(n.tolist(), t.tolist(), prior_scale)
    return tokens, n, speakers, mels, t, prior


def train_acoustic(
    cfg: TTSConfig, data: TTSData, reporter: Reporter
) -> tuple[FastSpeech, Tensor, Tensor, list[dict[str, float]], bool]:
    """Train the acoustic model; returns it, the mel statistics, the per-epoch history and
    whether the reporter asked to stop."""
    model = build_acoustic(cfg, data.tokens, len(data.speakers))
    mean, std = mel_stats(data.train)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = cfg.train.batch_size
    steps_per_epoch = math.ceil(len(data.train) / bs)
    total = steps_per_epoch * cfg.train.epochs
    step, history, stopped = 0, [], False
    for epoch in range(1, cfg.train.epochs + 1):
        model.train()
        sums = {"mel_loss": 0.0, "duration_loss": 0.0, "align_loss": 0.0}
        order = torch.randperm(len(data.train), generator=gen).tolist()
        for start in range(0, len(order), bs):
            batch = [data.train[i] for i in order[start : start + bs]]
            tokens, n, spk, mels, t, prior = collate(
                batch, data, mean, std, cfg.aligner.prior_scale
            )
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg.train.lr, cfg.train.warmup_steps, total)
            losses, _ = model.losses(
                tokens,
                n,
                spk,
                mels,
                t,
                prior,
                align_weight=cfg.aligner.weight,
                duration_weight=cfg.train.duration_weight,
            )
            opt.zero_grad(set_to_none=True)
            losses.total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
            step += 1
            for key, value in (
                ("mel_loss", losses.mel),
                ("duration_loss", losses.duration),
                ("align_loss", losses.align),
            ):
                sums[key] += float(value.detach()) * len(batch)
        row = {"epoch": float(epoch), **{k: v / len(data.train) for k, v in sums.items()}}
        history.append(row)
        log.info(
            "tts epoch %d/%d  mel %.4f  duration %.4f  align %.4f",
            epoch, cfg.train.epochs, row["mel_loss"], row["duration_loss"], row["align_loss"],
        )  # fmt: skip
        if reporter.report(epoch, **{k: v for k, v in row.items() if k != "epoch"}):
            stopped = True
            break
    return model.eval(), mean, std, history, stopped


def _segments(
    data: TTSData, cfg: TTSConfig, hop: int, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A batch of random (log-mel segment, matching samples) pairs from the training audio."""
    nv = cfg.vocoder.neural
    frames = nv.segment_frames
    usable = [it for it in data.train if it.log_mel.shape[0] > frames]
    if not usable:
        raise ValueError(
            f"no training utterance is longer than vocoder.neural.segment_frames={frames}"
        )
    mels, waves = [], []
    for _ in range(nv.batch_size):
        it = usable[int(torch.randint(len(usable), (1,), generator=gen))]
        s = int(torch.randint(it.log_mel.shape[0] - frames, (1,), generator=gen))
        mels.append(it.log_mel[s : s + frames])
        # Frame k is centred on sample k * hop: frames [s, s + F) cover [s * hop, (s + F - 1) * hop).
        w = torch.from_numpy(it.wave[s * hop : (s + frames - 1) * hop])
        waves.append(F.pad(w, (0, (frames - 1) * hop - w.shape[0])))
    return torch.stack(mels), torch.stack(waves)


def train_vocoder(cfg: TTSConfig, data: TTSData) -> tuple[NeuralVocoder, list[float]]:
    """Train the neural vocoder on ground-truth mels of the training audio; returns it and
    its loss at every step."""
    frontend = frontend_of(cfg)
    nv = cfg.vocoder.neural
    voc = NeuralVocoder(frontend, nv)
    voc.mel_mean.copy_(mel_stats(data.train)[0])
    voc.mel_std.copy_(mel_stats(data.train)[1])
    opt = torch.optim.AdamW(voc.parameters(), lr=nv.lr)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    voc.train()
    losses: list[float] = []
    for step in range(nv.steps):
        mels, target = _segments(data, cfg, frontend.hop_length, gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, nv.lr, min(100, nv.steps // 10), nv.steps)
        pred = voc(mels)
        loss = multi_resolution_stft_loss(pred, target)
        if nv.mel_weight > 0:
            lengths = torch.full((pred.shape[0],), pred.shape[1])
            pm, _ = frontend(pred, lengths)
            tm, _ = frontend(target, lengths)
            loss = loss + nv.mel_weight * (pm - tm).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(voc.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % max(1, nv.steps // 5) == 0:
            log.info("vocoder step %d/%d  loss %.4f", step + 1, nv.steps, losses[-1])
    return voc.eval(), losses


def _check_frozen(cfg: TTSConfig, frozen: TTSConfig, source: Path) -> None:
    mine, theirs = tts_config_to_dict(cfg), tts_config_to_dict(frozen)
    for section in _FROZEN_WITH_ACOUSTIC:
        if mine[section] != theirs[section]:
            raise ValueError(
                f"the frozen acoustic model {source} was trained with a different {section!r} "
                f"section ({theirs[section]!r}, this recipe has {mine[section]!r})"
            )


def evaluate_tts(
    syn: Synthesizer, items: Sequence[TTSItem], asr_model: str | Path | None = None
) -> tuple[dict[str, float], list[np.ndarray]]:
    """MCD (dB, mean over held-out utterances), real-time factor and, with an ASR model,
    intelligibility (WER/CER) of the synthesised held-out texts in their speakers' voices."""
    waves, mcds = [], []
    start = time.perf_counter()
    for it in items:
        waves.append(syn.synthesize(it.text, it.speaker))
    seconds = time.perf_counter() - start
    for wave, it in zip(waves, items):
        mcds.append(mel_cepstral_distortion(wave, it.wave, syn.frontend))
    audio_s = sum(len(w) for w in waves) / syn.sample_rate
    metrics = {
        "mcd": float(np.mean(mcds)),
        "mcd_std": float(np.std(mcds)),
        "rtf": seconds / max(audio_s, 1e-9),
        "duration_ratio": audio_s / (sum(len(it.wave) for it in items) / syn.sample_rate),
    }
    if asr_model is not None:
        metrics.update(
            intelligibility(waves, [it.text for it in items], syn.sample_rate, asr_model)
        )
    return metrics, waves


def train_tts(
    cfg: TTSConfig,
    run_dir: str | Path,
    *,
    cache_dir: str | Path = ".cache/speechtune",
    asr_model: str | Path | None = None,
    reporter: Reporter | None = None,
    acoustic_from: str | Path | None = None,
    num_wavs: int = 4,
    data: TTSData | None = None,
) -> TTSResult:
    """Train (or reuse) the acoustic model, train the vocoder, evaluate, and write the run.

    Args:
        cfg: the TTS recipe.
        run_dir: gets ``model.pt``, ``config.yaml``, ``metrics.json``, ``history.json`` and
            ``wavs/`` (the first ``num_wavs`` held-out utterances, synthesised).
        cache_dir: the corpus cache.
        asr_model: a speechtune ASR ``model.pt`` (or run dir) that transcribes the synthesised
            audio for the intelligibility metrics; None: none.
        reporter: receives the acoustic model's per-epoch losses; True asks to stop.
        acoustic_from: a TTS ``model.pt`` (or run dir) whose acoustic model is used frozen
            instead of training one (the recipe's acoustic sections must match it).
        data: prepared data to reuse (otherwise prepared from ``cfg``).

    Returns:
        The status and the metrics (``mcd``, ``rtf``, ``wer``/``cer`` with an ASR model, the
        seconds each part took).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    reporter = reporter if reporter is not None else NullReporter()
    started, cpu_started = time.perf_counter(), time.process_time()
    frozen: Synthesizer | None = None
    if acoustic_from is not None:
        frozen = Synthesizer.load(acoustic_from)
        _check_frozen(cfg, frozen.cfg, Path(acoustic_from))
    if data is None:
        data = prepare_tts_data(cfg, cache_dir, frozen.tokens if frozen is not None else None)
    if frozen is not None and data.tokens != frozen.tokens:
        raise ValueError(
            f"the frozen acoustic model {acoustic_from} reads other tokens than this recipe's data "
            f"({len(frozen.tokens.symbols)} symbols, the data has {len(data.tokens.symbols)})"
        )
    history: list[dict[str, float]] = []
    stopped = False
    if frozen is not None:
        acoustic, mean, std = frozen.acoustic, frozen.mel_mean, frozen.mel_std
    else:
        acoustic, mean, std, history, stopped = train_acoustic(cfg, data, reporter)
    acoustic_s = time.perf_counter() - started
    vocoder = train_vocoder(cfg, data)[0] if cfg.vocoder.kind == "neural" and not stopped else None
    vocoder_s = time.perf_counter() - started - acoustic_s
    speakers = frozen.speakers if frozen is not None else data.speakers
    # A run stopped before its neural vocoder was trained is judged (and saved) with Griffin-Lim.
    syn_cfg = cfg
    if vocoder is None and cfg.vocoder.kind == "neural":
        syn_cfg = dataclasses.replace(
            cfg, vocoder=dataclasses.replace(cfg.vocoder, kind="griffin_lim")
        )
    syn = Synthesizer(
        syn_cfg,
        data.tokens,
        speakers,
        acoustic,
        mean,
        std,
        vocoder,
    )
    metrics: dict[str, float] = {}
    waves: list[np.ndarray] = []
    if not stopped:
        metrics, waves = evaluate_tts(syn, data.eval, asr_model)
    metrics.update(
        acoustic_seconds=acoustic_s,
        vocoder_seconds=vocoder_s,
        total_seconds=time.perf_counter() - started,
        # CPU time of this process: what the run cost, whatever else shares the machine.
        cpu_seconds=time.process_time() - cpu_started,
        num_parameters=float(sum(p.numel() for p in acoustic.parameters())),
    )
    if history:
        metrics["train_mel_loss"] = history[-1]["mel_loss"]
    syn.save(run_dir / "model.pt")
    dump_tts_config(cfg, run_dir / "config.yaml")
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    if waves:
        wav_dir = run_dir / "wavs"
        wav_dir.mkdir(exist_ok=True)
        for wave, it in list(zip(waves, data.eval))[:num_wavs]:
            sf.write(wav_dir / f"{it.id}.wav", wave, cfg.features.sample_rate, subtype="PCM_16")
    record: dict[str, Any] = {"status": "stopped" if stopped else "completed"}
    log.info(
        "tts run %s: %s %s",
        run_dir,
        record["status"],
        {k: round(v, 4) for k, v in metrics.items()},
    )
    return TTSResult(record["status"], metrics, run_dir, history)
