"""The ASR training recipe: config in, trained model and dev metrics out.

Read it top to bottom: prepare data -> features (cached) -> tokenizer -> model -> epochs of
(train, evaluate on dev, checkpoint, report). The loop knows nothing about tuning; it talks to
its driver only through a :class:`~speechtune.training.Reporter`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from speechtune.config import (
    RecipeConfig,
    RunOptions,
    dump_config,
)
from speechtune.data import (
    Manifest,
    PreparedData,
    build_tokenizer,
    corpus_charset,
    load_audio,
    prepare_data,
    require_tunable,
    validate_manifest,
)
from speechtune.features import FeatureCache, GlobalCMVN, SpecAugment
from speechtune.inference import Recognizer
from speechtune.metrics import parameter_count
from speechtune.models import build_model, merged_state_dict
from speechtune.training._averaging import BestEpochs
from speechtune.training._batching import BucketBatchSampler
from speechtune.training._checkpoint import (
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_atomic,
)
from speechtune.training._collate import autocast, collate
from speechtune.training._diagnostics import (
    COMPLETE,
    FINITE_CHECK_STEPS,
    OOM,
    STOPPED,
    FlatlineDetector,
    RunEnded,
    check_sums_finite,
    is_oom,
)
from speechtune.training._edge import (
    best_model_path,
    edge_metrics,
    finalize_model,
    prepare_training,
)
from speechtune.training._evaluate import evaluate_dev
from speechtune.training._finetune import model_payload, prepare_finetune
from speechtune.training._optim import (
    build_optimizer,
    effective_batch,
    layer_lr_groups,
    scale_lr,
    set_lr,
)
from speechtune.training._provenance import run_environment, write_environment
from speechtune.training._pruning import GradualPruner
from speechtune.training._reporter import NullReporter, Reporter
from speechtune.training._resume import check_resume_config, schedule_epochs
from speechtune.training._schedules import PlateauTracker, lr_at
from speechtune.training._trainlog import TrainLog, train_log

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a training run ended and what it measured.

    Attributes:
        status: ``complete``, ``stopped`` (the reporter asked), ``diverged``, ``flatline`` or ``oom``.
        reason: a human-readable sentence for logs and tuner records.
        history: per-epoch metrics (train/dev loss, WER, CER, LR, gradient norm, ...).
        metrics: final dev metrics of the best epoch (by dev WER), plus size figures.
        output_dir: where ``model.pt``, ``last.pt``, ``metrics.json`` and ``config.yaml`` live.
    """

    status: str
    reason: str
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    output_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status in (COMPLETE, STOPPED)


# ---------------------------------------------------------------------------------------------
# setup helpers
# ---------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _features(
    manifest: Manifest,
    cfg: RecipeConfig,
    opts: RunOptions,
    device: torch.device,
    speeds: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Cached features; ``speeds`` (copy id -> factor) names the speed-perturbed copies."""
    cache = FeatureCache(Path(opts.cache_dir) / "features")
    sr = cfg.features.sample_rate
    return cache.get_perturbed(
        manifest,
        cfg.features,
        lambda utt: load_audio(manifest, utt, sr),
        speeds or {},
        device=device,
        progress=opts.progress,
    )


def _progress(items: list, description: str, enabled: bool):
    """A transient rich progress bar over a training epoch (plain iteration when disabled)."""
    if not enabled:
        return items
    from rich.progress import track

    return track(items, description=description, transient=True)


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------
def train(
    cfg: RecipeConfig,
    opts: RunOptions | None = None,
    reporter: Reporter | None = None,
    data: PreparedData | None = None,
) -> TrainResult:
    """Train the ASR recipe described by ``cfg`` and measure it on the dev split.

    What the run logs goes to ``train.log`` in its output dir too (every epoch's line, also
    without progress output; an exception that ends the run, with its traceback).

    Args:
        cfg: the recipe (all hyperparameters).
        opts: where/how to run (device, output and cache dirs, resume). With ``opts.resume`` and
            ``last.pt`` in the output dir, training picks up after the last saved epoch; the
            config must equal the saved one except for a larger ``train.epochs`` (continuing a
            finished run to more epochs; see ``train.schedule_epochs`` for an exact continuation).
        reporter: receives per-epoch metrics; returning True stops the run early.
        data: pre-built manifests (skips corpus preparation; used by tests and tuners).

    Returns:
        A :class:`TrainResult`. Divergence, flatlines and out-of-memory end the run with a named
        status instead of raising, so that a tuner can record the trial and move on.
    """
    opts = opts or RunOptions()
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with train_log(out_dir) as tlog:
        tlog.write(log, f"training in {out_dir} (resume={opts.resume}, device={opts.device})")
        try:
            result = _train(cfg, opts, reporter or NullReporter(), data, tlog)
        except BaseException as exc:  # Ctrl-C too: the file says how the run ended
            tlog.write(log, f"training ended by {type(exc).__name__}: {exc}", error=True)
            raise
        tlog.write(log, f"finished: {result.status} ({result.reason})")
    return result


def _train(
    cfg: RecipeConfig,
    opts: RunOptions,
    reporter: Reporter,
    data: PreparedData | None,
    tlog: TrainLog,
) -> TrainResult:
    """:func:`train` with its ``train.log`` open."""
    out_dir = Path(opts.output_dir)
    if opts.num_threads:
        torch.set_num_threads(opts.num_threads)
    device = resolve_device(opts.device)
    torch.manual_seed(cfg.seed)
    if opts.resume:
        check_resume_config(cfg, out_dir / "config.yaml")
    dump_config(cfg, out_dir / "config.yaml")

    # -- data, features, tokenizer -------------------------------------------------------------
    if data is None:
        data = prepare_data(cfg.data, cfg.features.sample_rate, opts.cache_dir, opts.progress)
    train_set, dev_set = (
        require_tunable(data.train, "training"),
        require_tunable(data.dev, "model selection"),
    )
    # The tokenizer covers the whole charset, not only the letters a (proxy) training subset
    # happens to contain, so that dev text is never unwritable by accident.
    alphabet = " ".join(sorted(corpus_charset(cfg.data) - {" "}))
    tokenizer = build_tokenizer(
        cfg.tokenizer.kind, [u.text for u in train_set] + [alphabet], cfg.tokenizer.vocab_size
    )
    # Dev text the tokenizer cannot write is bad input too: name it rather than crash mid-epoch.
    dev_set, _ = validate_manifest(dev_set, charset=tokenizer.charset, skip_bad=cfg.data.skip_bad)
    # data.speed_perturb copies: after any proxy subset and the tokenizer; in CMVN like Kaldi.
    data = data.with_speed_perturbation(cfg.data.speed_perturb, cfg.data.max_duration)
    train_set = require_tunable(data.train, "training")
    train_feats = _features(train_set, cfg, opts, device, data.speeds)
    dev_feats = _features(dev_set, cfg, opts, device)
    # What the run ran on, so that a rerun elsewhere can say what differed (`speechtune rerun`).
    env = run_environment(device, train_set, dev_set, train_feats, dev_feats)
    write_environment(out_dir, env)
    targets = {u.id: tokenizer.encode(u.text) for m in (train_set, dev_set) for u in m}
    # Waveforms are normalised per utterance by their front end, Whisper's log-mels as it was
    # pretrained on: no global CMVN on top.
    logmel = cfg.features.kind == "logmel"
    cmvn = GlobalCMVN.fit(train_feats.values()) if cfg.features.normalize and logmel else None

    # -- model, optimiser, schedule --------------------------------------------------------------
    model = build_model(cfg.model, cfg.features.n_mels, tokenizer.vocab_size, cfg.features.hop_ms)
    for note in prepare_finetune(model, cfg, tokenizer):  # init_from, LoRA, freezing
        if opts.progress:
            log.info(note)
        else:
            tlog.write(log, note)  # a quiet run (a tuning trial) logs it too, as epoch lines
    recognizer = Recognizer(cfg, tokenizer, cmvn, model).to(device)
    # SpecAugment masks log-mel bins and frames (speechtune's or Whisper's); a waveform
    # encoder masks its own frames (hf_wav2vec2: mask_time_prob in the pretrained config).
    masked = logmel or cfg.features.kind == "whisper"
    specaug = SpecAugment.from_config(cfg.specaugment) if masked else None
    if specaug is not None:
        specaug = specaug.to(device)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    t = cfg.train
    eff_batch = effective_batch(t.batch_size, t.grad_accum, t.devices)
    peak_lr = scale_lr(cfg.optim.lr, eff_batch, t.reference_batch, t.lr_scaling)
    groups = layer_lr_groups(model, cfg.model.num_layers, cfg.finetune.layer_lr_decay)
    optimizer = build_optimizer(groups, cfg.optim, peak_lr)
    ids_train = [u.id for u in train_set]
    durations = {u.id: u.duration for m in (train_set, dev_set) for u in m}
    sampler = BucketBatchSampler(
        [u.duration for u in train_set],
        t.batch_size,
        num_buckets=t.num_buckets,
        bucketed=t.bucketed,
        seed=cfg.seed,
    )
    steps_per_epoch = math.ceil(len(sampler) / t.grad_accum)
    # The schedule's horizon may reach past this run (train.schedule_epochs), so that a short
    # run can later be continued to the horizon as if it had been one run.
    total_steps = steps_per_epoch * schedule_epochs(t)
    # edge: QAT after the optimizer is built (it keeps the same Parameters), before a resume.
    prepare_training(recognizer, cfg.edge)
    pruner = GradualPruner.from_config(model, cfg.edge, total_steps)
    plateau = PlateauTracker(patience=cfg.schedule.plateau_patience)
    flatline = FlatlineDetector(t.flatline_patience, t.flatline_tol)

    # -- resume ---------------------------------------------------------------------------------
    state = _RunState()
    last_path, model_path = out_dir / "last.pt", out_dir / "model.pt"
    best_path = best_model_path(out_dir, cfg.edge)  # model_float.pt when model.pt is int8
    if opts.resume and last_path.is_file():
        ck = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        plateau.load_state_dict(ck["plateau"])
        flatline.load_state_dict(ck["flatline"])
        sampler.load_state_dict(ck["sampler"])
        restore_rng_state(ck["rng"], {"specaugment": aug_gen})
        state = _RunState(**ck["state"])
        log.info("resumed from %s at epoch %d", last_path, state.epoch)
    keeper = (
        BestEpochs(out_dir / "best", t.average_best, state.best_epochs)
        if t.average_best > 1
        else None
    )

    reason = f"completed {t.epochs} epochs"
    status = COMPLETE
    try:
        for epoch in range(state.epoch + 1, t.epochs + 1):
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            model.train()
            n_utts, n_steps, audio_s = 0, 0, 0.0
            # Summed on the device and read back every FINITE_CHECK_STEPS steps: a float()
            # per step would make the host wait for the GPU twice a step.
            loss_sum_t = torch.zeros((), device=device)
            gnorm_sum_t = torch.zeros((), device=device)
            optimizer.zero_grad(set_to_none=True)
            pruner.begin_epoch(state.step)
            batches = list(sampler)
            for k, idx in enumerate(
                _progress(batches, f"epoch {epoch}/{t.epochs}", opts.progress)
            ):
                ids = [ids_train[i] for i in idx]
                b = collate(ids, train_feats, targets, durations, device)
                x = recognizer.normalize(b.feats)
                if specaug is not None:
                    x = specaug(x, b.feat_lens, generator=aug_gen)
                with autocast(device, t.precision):
                    out = model(x, b.feat_lens, b.targets, b.target_lens)
                loss = out["loss"]
                (loss / t.grad_accum).backward()
                loss_sum_t += loss.detach().float() * len(ids)
                n_utts += len(ids)
                audio_s += b.audio_seconds
                if (k + 1) % t.grad_accum == 0 or k + 1 == len(batches):
                    lr = lr_at(
                        state.step,
                        cfg.schedule,
                        peak_lr,
                        total_steps,
                        cfg.model.d_model,
                        plateau.reductions,
                    )
                    set_lr(optimizer, lr)  # per group: layer-wise decay scales it
                    max_norm = t.grad_clip if t.grad_clip is not None else float("inf")
                    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                    gnorm_sum_t += gnorm.detach().float()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    n_steps += 1
                    state.step += 1
                    pruner.step(state.step)
                    if n_steps % FINITE_CHECK_STEPS == 0:
                        check_sums_finite(loss_sum_t, gnorm_sum_t, epoch, state.step)
            pruner.end_epoch()  # plain weights with zeros for evaluation and checkpoints
            loss_sum, gnorm_sum = check_sums_finite(loss_sum_t, gnorm_sum_t, epoch, state.step)
            train_time = time.perf_counter() - t0
            train_loss = loss_sum / max(n_utts, 1)
            dev = evaluate_dev(
                recognizer, dev_set, dev_feats, targets, cfg, device, full_decode=False
            )
            if cfg.schedule.name == "plateau":
                plateau.update(dev["dev_loss"])
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "dev_loss": dev["dev_loss"],
                "overfit_gap": dev["dev_loss"] - train_loss,
                "wer": dev["wer"],
                "cer": dev["cer"],
                "worst_group_wer": dev["worst_group_wer"],
                "worst_group_dev_loss": dev["worst_group_dev_loss"],
                "dev_ctc_loss": dev["dev_ctc_loss"],
                "worst_group_dev_ctc_loss": dev["worst_group_dev_ctc_loss"],
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": gnorm_sum / max(n_steps, 1),
                "epoch_seconds": train_time,
                "audio_seconds_per_second": audio_s / max(train_time, 1e-9),
                "utterances_per_second": n_utts / max(train_time, 1e-9),
            }
            state.epoch = epoch
            state.history.append(row)
            if dev["wer"] < state.best_wer:
                state.best_wer, state.best_epoch = dev["wer"], epoch
                save_atomic(model_payload(recognizer), best_path)  # LoRA merged
            if keeper is not None:
                keeper.update(epoch, dev["wer"], dev["dev_loss"], merged_state_dict(model))
                state.best_epochs = keeper.state()
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "plateau": plateau.state_dict(),
                    "flatline": flatline.state_dict(),
                    "sampler": sampler.state_dict(),
                    "rng": rng_state({"specaugment": aug_gen}),
                    "state": state.as_dict(),
                },
                last_path,
            )
            _write_json(out_dir / "history.json", state.history)
            line = (
                f"epoch {epoch}/{t.epochs}  train_loss {train_loss:.3f}  dev_loss {dev['dev_loss']:.3f}  "
                f"WER {dev['wer']:.3f}  CER {dev['cer']:.3f}  lr {row['lr']:.2e}  ({train_time:.1f}s)"
            )
            if opts.progress:
                log.info(line)  # the console, and train.log through its handler
            else:
                tlog.write(log, line)  # a quiet run (a tuning trial) still logs it to train.log
            # Diagnostics before the reporter: a flat run ends with its own reason.
            flatline.update(train_loss, epoch)
            if reporter.report(epoch, **{k: v for k, v in row.items() if k != "epoch"}):
                status, reason = STOPPED, f"stopped by the reporter after epoch {epoch}"
                break
    except RunEnded as ended:
        status, reason = ended.status, ended.reason
    except Exception as exc:  # out-of-memory is an outcome, anything else is a bug to surface
        if not is_oom(exc):
            raise
        status, reason = (
            OOM,
            f"oom: out of memory at epoch {state.epoch + 1} ({type(exc).__name__}: {exc})",
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()

    result = TrainResult(status=status, reason=reason, history=state.history, output_dir=out_dir)
    if keeper is not None and best_path.is_file() and len(keeper.epochs) >= 2:
        state.averaged_epochs = _average_best(
            keeper, best_path, dev_set, dev_feats, targets, cfg, device, state
        )
    if best_path.is_file():  # edge: prune to the target and quantise into model.pt
        finalize_model(best_path, model_path, cfg, train_set, train_feats, targets)
    if model_path.is_file():
        result.metrics = final_metrics(model_path, dev_set, dev_feats, targets, cfg, device, state)
    _write_json(
        out_dir / "result.json", {"status": status, "reason": reason, "metrics": result.metrics}
    )
    return result


def _average_best(
    keeper: BestEpochs,
    model_path: Path,
    dev_set: Manifest,
    dev_feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    cfg: RecipeConfig,
    device: torch.device,
    state: _RunState,
) -> list[int]:
    """Write the average of the kept epochs as ``model.pt`` when its dev WER is no worse than the
    best epoch's, else the best epoch's own weights; return the averaged epochs (empty: none)."""
    rec = Recognizer.load(model_path, device)
    rec.model.load_state_dict(keeper.averaged(device))
    dev = evaluate_dev(rec, dev_set, dev_feats, targets, cfg, device, full_decode=False)
    epochs = sorted(keeper.epochs)
    if dev["wer"] <= state.best_wer:
        log.info(
            "averaged epochs %s: dev WER %.4f (best single epoch %d: %.4f)",
            epochs,
            dev["wer"],
            state.best_epoch,
            state.best_wer,
        )
        save_atomic(rec.to_payload(), model_path)
        return epochs
    log.info(
        "averaging epochs %s gave dev WER %.4f, worse than epoch %d's %.4f: keeping that epoch",
        epochs,
        dev["wer"],
        state.best_epoch,
        state.best_wer,
    )
    # model.pt may hold an average written before a continued run; the best epoch is on disk.
    rec.model.load_state_dict(load_checkpoint(keeper.path(keeper.epochs[0]), map_location=device))
    save_atomic(rec.to_payload(), model_path)
    return []


def final_metrics(
    model_path: Path,
    dev_set: Manifest,
    dev_feats: dict[str, torch.Tensor],
    targets: dict[str, list[int]],
    cfg: RecipeConfig,
    device: torch.device,
    state: _RunState,
) -> dict[str, Any]:
    """Evaluate the best checkpoint with the configured decoder; write ``metrics.json`` beside it."""
    from speechtune.inference import measure_decoding_latency, streaming_metrics

    best = Recognizer.load(model_path, device if cfg.edge.quantize == "none" else "cpu")
    device = best.device  # an int8 model runs on the CPU
    dev = evaluate_dev(best, dev_set, dev_feats, targets, cfg, device, full_decode=True)
    metrics: dict[str, Any] = {
        "split": "dev",
        "best_epoch": state.best_epoch,
        "averaged_epochs": state.averaged_epochs,
        "epochs_run": state.epoch,
        **{
            k: dev[k]
            for k in (
                "wer",
                "cer",
                "worst_group_wer",
                "worst_group",
                "group_wer",
                "dev_loss",
                "worst_group_dev_loss",
                "group_dev_loss",
                "dev_ctc_loss",
                "worst_group_dev_ctc_loss",
            )
        },
        "num_parameters": parameter_count(best.model),
        "model_bytes": model_path.stat().st_size,
        **measure_decoding_latency(best, dev_set, max_utterances=32),
        **edge_metrics(model_path, dev_set, cfg),
        **streaming_metrics(model_path, dev_set),  # stream_chunk_ms_p50/p95, stream_rtf
        "examples": dev["examples"],
    }
    _write_json(model_path.with_name("metrics.json"), metrics)
    return metrics


@dataclass
class _RunState:
    epoch: int = 0
    step: int = 0
    best_wer: float = float("inf")
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epochs: list[list[float]] = field(default_factory=list)  # BestEpochs.state()
    averaged_epochs: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "best_wer": self.best_wer,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "best_epochs": self.best_epochs,
            "averaged_epochs": self.averaged_epochs,
        }


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    tmp.replace(path)
