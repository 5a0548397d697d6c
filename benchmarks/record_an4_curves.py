"""Record a tabular learning-curve benchmark of speechtune's ASR recipe on real speech (CMU AN4).

A grid search space (``benchmarks/an4_curves_space.yaml``: categorical lists only) defines a
finite set of configs, numbered by their position in the grid. The recorder draws N distinct
config ids uniformly at random (a seeded permutation of the whole grid, so a rerun with a larger
N continues the same sequence), trains each one for E epochs with :func:`speechtune.train` (a
reporter records every epoch and never stops a run; the data are prepared once), and appends one
JSON line per config to a JSONL file. Replaying the file answers "what would the dev WER be after
k epochs of config c" without training, which is what multi-fidelity tuners need to be compared.

CPU recording (this machine; one thread, niced, stops starting configs after the time limit)::

    nohup nice -n 10 .venv/bin/python benchmarks/record_an4_curves.py \\
        --space benchmarks/an4_curves_space.yaml --data ../shared/data/an4 \\
        --out benchmarks/data/an4_curves.jsonl --n-configs 60 --epochs 10 --seed 0 \\
        --device auto --threads 1 --time-limit-s 6300 > runs/record_an4.log 2>&1 &

On a GPU: these small models keep an H200 busy only a few per cent (kernel launches dominate),
so ``record_an4_curves_packed.sh`` packs N recorder processes on it, each training an interleaved
shard of the same draw (``--shard I/N``, its own ``--out``), and merges their files
(``--merge``). ``benchmarks/data/an4_curves_gpu.jsonl`` (119 configs) was recorded so: 14
processes on one H200 and 16 cores, two runs of ~5.5 min, the second resuming the first::

    WORK=/tmp/rec benchmarks/record_an4_curves_packed.sh ../shared/data/an4 \
        benchmarks/data/an4_curves_gpu.jsonl 14 270

The meta line records the device, so a GPU table goes to its own file. ``--summary [OTHER]``
prints how each epoch ranks the configs like the last one (Spearman with bootstrap intervals) and,
given a second recording of the grid, how the two agree on the configs they share.

File format (one JSON object per line)::

    {"meta": {"corpus": "an4", "device": str, "torch": str, "threads": int, "epochs": E,
              "metric": "wer", "space": {key: [choices]}, "base_overrides": {key: value},
              "recorded": ISO date, ...}}
    {"config_id": int, "params": {key: value}, "num_params": int, "status": str, "reason": str,
     "epochs": [{"epoch": 1, "wer": float, "cer": float, "dev_loss": float, "train_loss": float,
                 "time_s": float, "train_s": float, "cpu_s": float}, ...]}

``status`` is the recipe's (``complete``, ``diverged``, ``oom``) or ``error`` (an exception; its
reason names it); a run that ended early keeps the epochs it completed. ``time_s`` is the wall
time of one epoch as the recipe runs it: training, greedy dev decoding and the per-epoch
checkpoint; epoch 1 also carries the per-config set-up (tokenizer, CMVN, model build: a second or
two on the CPU with features cached). ``train_s`` is the training part alone. ``cpu_s`` is the
CPU time the process spent over the same interval as ``time_s``: on a machine shared with other
work the wall times swing with its load (by up to 5x during the CPU recording), the CPU times much
less; on a GPU, wall time is the cost. Non-finite numbers are written as null. The cosine
schedule decays over all E epochs, so epoch k of an E-epoch run is not a k-epoch run; replay code
compares configs at equal epochs of the same E. ``meta.base_recipe`` is the flat base recipe
without the corpus location: a config trains ``base_recipe`` + ``params`` with ``train.epochs``
set to ``meta.epochs`` (the base's own ``train.epochs`` is unused). The recipe's seed (the base recipe's ``seed``)
is the same for every config; ``--seed`` only orders the draw.

Resuming: a rerun reads the file, refuses it when its meta differs (other space, epochs, device,
threads, torch, data or seed), drops a torn last line (a run killed mid-write), and trains only
the drawn configs whose ids are not recorded yet. Lines are appended whole and flushed one at a
time, so the file can be read while it grows (a reader should ignore an unterminated last line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from speechtune.config import (
    RecipeConfig,
    RunOptions,
    config_from_dict,
    config_to_dict,
    flatten,
    merge,
    unflatten,
)
from speechtune.data import PreparedData
from speechtune.tuning.space import CategoricalParam
from speechtune.tuning.spec import load_tuning

log = logging.getLogger("record_an4_curves")

#: Per-epoch fields copied from the recipe's history rows.
EPOCH_FIELDS = ("wer", "cer", "dev_loss", "train_loss")
#: Meta fields that may differ between a recording and its resumption.
VOLATILE_META = ("recorded",)
#: Where the corpus lives is not a hyperparameter: a resumed run may read it from another path.
LOCATION_KEYS = ("data.root", "data.manifest")


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """A finite search space: the base recipe plus one list of choices per searched key.

    Configs are numbered in mixed radix over ``keys`` (the first key varies slowest), so a
    config id names the same params for as long as the space file is unchanged.
    """

    keys: tuple[str, ...]
    choices: tuple[tuple[Any, ...], ...]
    base_recipe: dict[str, Any]
    overrides: dict[str, Any]

    @property
    def size(self) -> int:
        """Number of configs in the grid."""
        return math.prod(len(c) for c in self.choices)

    def params(self, config_id: int) -> dict[str, Any]:
        """The searched values of config ``config_id`` (dotted key -> value)."""
        if not 0 <= config_id < self.size:
            raise ValueError(f"config_id must be in [0, {self.size}), got {config_id}")
        values: dict[str, Any] = {}
        rest = config_id
        for key, options in zip(reversed(self.keys), reversed(self.choices)):
            rest, digit = divmod(rest, len(options))
            values[key] = options[digit]
        return {k: values[k] for k in self.keys}

    def recipe_config(
        self, config_id: int, epochs: int, data_location: str | None
    ) -> RecipeConfig:
        """The complete recipe of a config: base recipe, its params, ``train.epochs`` and the data path."""
        flat = {**self.params(config_id), "train.epochs": epochs}
        if data_location is not None:
            flat[_location_key(self.base_recipe)] = data_location
        return config_from_dict(
            merge(self.base_recipe, unflatten(flat)), f"grid config {config_id}"
        )

    def space_dict(self) -> dict[str, list[Any]]:
        """The space as written: key -> list of choices."""
        return {k: list(c) for k, c in zip(self.keys, self.choices)}


def _location_key(base_recipe: dict[str, Any]) -> str:
    """The recipe key that says where the corpus is (a manifest file, or a corpus directory)."""
    return (
        "data.manifest" if base_recipe.get("data", {}).get("corpus") == "manifest" else "data.root"
    )


def load_grid(space_path: str | Path) -> Grid:
    """Load a grid space file: a tuning YAML whose space holds only unconditional categorical lists.

    Args:
        space_path: the YAML (``recipe``, ``overrides`` and ``space``, as in ``conf/tuning*.yaml``).

    Returns:
        The :class:`Grid`.

    Raises:
        ConfigError: the file is not a valid tuning YAML (every problem listed).
        ValueError: a searched key is not a plain list, is conditional, changes the data (which
            are prepared once for all configs), or the file has constraints.
    """
    spec = load_tuning(space_path)
    problems = []
    if spec.space.constraints:
        problems.append(
            f"constraints {spec.space.constraints}: a grid must be a plain product of lists"
        )
    for name, param in spec.space.params.items():
        if not isinstance(param, CategoricalParam):
            problems.append(
                f"space.{name}: expected a list of choices (a grid), got {type(param).__name__}"
            )
        elif param.when:
            problems.append(
                f"space.{name}: conditional params ('when') do not make a product grid"
            )
        if name.startswith("data."):
            problems.append(
                f"space.{name}: data keys cannot be searched (the data are prepared once)"
            )
    if not spec.space.params:
        problems.append("space: is empty; expected at least one list of choices")
    if problems:
        raise ValueError(f"{space_path}: not a grid space:\n  " + "\n  ".join(problems))
    params = spec.space.params
    return Grid(
        keys=tuple(params),
        choices=tuple(tuple(p.choices) for p in params.values()),  # type: ignore[union-attr]
        base_recipe=spec.base_recipe,
        overrides=dict(spec.overrides),
    )


def shard_of(ids: Sequence[int], shard: tuple[int, int]) -> list[int]:
    """The ids a shard ``(index, count)`` trains: every ``count``-th drawn id from ``index``.

    Shards of one draw are disjoint and together cover it, and each holds early draws, so shards
    stopped by a time limit leave a prefix-like sample of the grid, not one region of it.
    """
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ValueError(f"--shard must be I/N with 0 <= I < N, got {index}/{count}")
    return [i for k, i in enumerate(ids) if k % count == index]


def merge_recordings(parts: Sequence[Path], out: Path, seed_order: Sequence[int]) -> int:
    """Merge shard recordings of one experiment into ``out`` (in draw order); returns configs written.

    Raises:
        RecordingMismatch: the parts were recorded with different settings.
        FileExistsError: ``out`` exists (merging never appends to a recording).
    """
    if out.exists():
        raise FileExistsError(f"{out}: exists; merge into a new file")
    metas, records = [], {}
    for part in parts:
        meta, recs = read_recording(part)
        if meta is None:
            raise ValueError(f"{part}: empty; expected a recorder's JSONL")
        if metas:
            diffs = meta_differences(metas[0], meta)
            if diffs:
                raise RecordingMismatch(
                    f"{part} differs from {parts[0]}:\n  " + "\n  ".join(diffs)
                )
        metas.append(meta)
        records.update(recs)
    rank = {cid: k for k, cid in enumerate(seed_order)}
    ordered = sorted(records, key=lambda cid: (rank.get(cid, len(rank)), cid))
    meta = {**metas[0], "recorded": min(m["recorded"] for m in metas), "shards": len(parts)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        _append_line(fh, {"meta": meta})
        for cid in ordered:
            _append_line(fh, records[cid])
    return len(ordered)


def _epoch_table(
    full: Sequence[dict[str, Any]], final: np.ndarray, epochs: Iterable[int], n_bootstrap: int
) -> list[str]:
    """Markdown rows: Spearman (bootstrap 95% CI) of each epoch's dev WER and loss with ``final``."""
    from speechtune.reports import rank_correlation

    lines = [
        "| after epoch | Spearman, dev WER (95% CI) | Spearman, dev loss (95% CI) |",
        "| ---: | --- | --- |",
    ]
    for k in epochs:
        cells = []
        for field in ("wer", "dev_loss"):
            vals = np.array([r["epochs"][k].get(field) for r in full], dtype=float)
            ok = np.isfinite(vals) & np.isfinite(final)
            stats = rank_correlation(
                vals[ok], final[ok], n_bootstrap=n_bootstrap, rng=np.random.default_rng([0, k])
            )
            if stats.spearman is None:
                cells.append("n/a")
            else:
                lo, hi = stats.spearman_ci or (math.nan, math.nan)
                cells.append(f"{stats.spearman:.2f} ({lo:.2f} to {hi:.2f})")
        lines.append(f"| {k + 1} | {cells[0]} | {cells[1]} |")
    return lines


def summarise_proxy(path: Path, reference: Path, n_bootstrap: int = 2000) -> str:
    """How each epoch of a proxy recording ranks configs like a reference's final dev WER.

    ``path`` records the grid at a proxy fidelity (e.g. 30 % of the training data, in its space
    file's overrides); ``reference`` the same grid at full fidelity. Over the configs that
    completed every epoch in both: Spearman of the proxy's dev WER (and dev loss) after each
    epoch with the reference's final dev WER, bootstrap 95% intervals over configs.
    """
    meta, records = read_recording(path)
    ref_meta, ref = read_recording(reference)
    if meta is None or ref_meta is None:
        raise ValueError(f"{path if meta is None else reference}: empty; expected a recording")
    if meta["space"] != ref_meta["space"]:
        raise ValueError(f"{path} and {reference} record different grids: config ids differ")
    epochs, ref_epochs = int(meta["epochs"]), int(ref_meta["epochs"])
    both = [
        cid
        for cid, r in sorted(records.items())
        if len(r["epochs"]) == epochs and len(ref.get(cid, {}).get("epochs", [])) == ref_epochs
    ]
    full = [records[c] for c in both]
    final = np.array([ref[c]["epochs"][-1]["wer"] for c in both], dtype=float)
    extra = {
        k: v for k, v in meta["base_overrides"].items() if ref_meta["base_overrides"].get(k) != v
    }
    times = [sum(e["time_s"] for e in r["epochs"]) for r in full]
    lines = [
        f"{path.name} ({extra or 'same overrides'}) against the final dev WER of "
        f"{reference.name} ({ref_epochs} epochs, {ref_meta['device']}): {len(both)} configs in "
        f"both; {np.mean(times):.0f} s per proxy config (wall, mean, on {meta['device']})",
        "",
        *_epoch_table(full, final, range(epochs), n_bootstrap),
    ]
    return "\n".join(lines) + "\n"


def summarise_recording(path: Path, n_bootstrap: int = 2000, compare: Path | None = None) -> str:
    """A Markdown summary of a recording: how each epoch ranks configs like the last one.

    For every epoch k: Spearman of the dev WER (and of the dev loss) after k epochs with the
    final dev WER over the configs that completed every epoch, with bootstrap 95% intervals
    (resampling configs). With ``compare`` (another recording of the same grid, e.g. CPU against
    GPU), also the Spearman of the final WER between the two over the configs both hold.
    """
    from speechtune.reports import rank_correlation

    meta, records = read_recording(path)
    if meta is None:
        raise ValueError(f"{path}: empty; expected a recorder's JSONL")
    epochs = int(meta["epochs"])
    full = [r for r in records.values() if len(r["epochs"]) == epochs]
    final = np.array([r["epochs"][-1]["wer"] for r in full], dtype=float)
    times = [sum(e["time_s"] for e in r["epochs"]) for r in records.values()]
    statuses = sorted({r["status"] for r in records.values()})
    counts = ", ".join(f"{sum(r['status'] == s for r in records.values())} {s}" for s in statuses)
    lines = [
        f"{path.name}: {len(records)} configs ({counts}) of {meta['grid_size']}, {epochs} epochs "
        f"each, on {meta['device']} (torch {meta['torch']}); final dev WER "
        f"{np.min(final):.3f}-{np.max(final):.3f} (median {np.median(final):.3f}); "
        f"{np.mean(times):.0f} s per config (wall, mean)",
        "",
        *_epoch_table(full, final, range(epochs - 1), n_bootstrap),
    ]
    if compare is not None:
        other_meta, other = read_recording(compare)
        both = [
            cid
            for cid, r in records.items()
            if cid in other and len(r["epochs"]) == epochs and len(other[cid]["epochs"]) == epochs
        ]
        a = np.array([records[c]["epochs"][-1]["wer"] for c in both], dtype=float)
        b = np.array([other[c]["epochs"][-1]["wer"] for c in both], dtype=float)
        stats = rank_correlation(a, b, n_bootstrap=n_bootstrap, rng=np.random.default_rng(1))
        lo, hi = stats.spearman_ci or (math.nan, math.nan)
        device = (other_meta or {}).get("device")
        lines += [
            "",
            f"Against {compare.name} ({device}): {len(both)} configs in both; Spearman of their final "
            f"dev WER {stats.spearman:.2f} ({lo:.2f} to {hi:.2f}), mean absolute difference "
            f"{np.mean(np.abs(a - b)):.3f}.",
        ]
    return "\n".join(lines) + "\n"


def draw_config_ids(grid_size: int, n_configs: int, seed: int) -> list[int]:
    """``n_configs`` distinct config ids drawn uniformly at random without replacement.

    The draw is a prefix of one seeded permutation of the whole grid, so asking for more configs
    later (same seed) extends the same sequence rather than starting a new one.
    """
    if n_configs < 1:
        raise ValueError(f"--n-configs must be >= 1, got {n_configs}")
    order = np.random.default_rng(seed).permutation(grid_size)
    return [int(i) for i in order[: min(n_configs, grid_size)]]


# ---------------------------------------------------------------------------------------------
# the recording file
# ---------------------------------------------------------------------------------------------
class RecordingMismatch(ValueError):
    """The output file was recorded with other settings; appending would mix two benchmarks."""


class RecordingLocked(RuntimeError):
    """Another recorder process is appending to the output file."""


def read_recording(
    path: Path, repair: bool = False
) -> tuple[dict[str, Any] | None, dict[int, dict[str, Any]]]:
    """The meta and the config records of a recording (``None, {}`` for a missing or empty file).

    Args:
        path: the JSONL file.
        repair: truncate an unterminated last line (a run killed mid-write) instead of ignoring it.

    Raises:
        ValueError: a complete line is not JSON, or the first line is not a meta record.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None, {}
    text = path.read_text()
    complete, _, torn = text.rpartition("\n")
    if torn:
        log.warning("%s: ignoring an unterminated last line (%d bytes)", path, len(torn))
        if repair:
            with path.open("r+") as fh:
                fh.truncate(len(complete) + 1 if complete else 0)
    lines = complete.split("\n") if complete else []
    meta: dict[str, Any] | None = None
    records: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{number}: not a JSON line ({exc.msg}); expected a recorder record"
            ) from exc
        if number == 1:
            if not isinstance(obj, dict) or "meta" not in obj:
                raise ValueError(
                    f'{path}:1: expected the meta record {{"meta": ...}}, got {line[:80]!r}'
                )
            meta = obj["meta"]
        elif not isinstance(obj, dict) or not isinstance(obj.get("config_id"), int):
            raise ValueError(f"{path}:{number}: expected a config record with an int 'config_id'")
        else:
            records[obj["config_id"]] = obj
    return meta, records


def meta_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The meta keys (other than the recording date) whose values differ, as ``key: a != b``.

    The base recipe is compared key by key, and a recipe key that only one side has counts as
    equal while its value is the schema's default: a key added to the recipe since the
    recording started (at its default) does not change the experiment.
    """
    keys = sorted((set(recorded) | set(wanted)) - set(VOLATILE_META))
    diffs = []
    for key in keys:
        old, new = recorded.get(key), wanted.get(key)
        if key == "base_recipe" and isinstance(old, dict) and isinstance(new, dict):
            diffs += _recipe_differences(old, new)
        elif old != new:
            diffs.append(f"{key}: {old!r} != {new!r}")
    return diffs


def _recipe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    defaults = flatten(config_to_dict(RecipeConfig()))
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if a != b:
            diffs.append(f"base_recipe.{key}: {a!r} != {b!r}")
    return diffs


def _json_safe(value: Any) -> Any:
    """Floats rounded to 6 significant digits (the file must stay small); non-finite as None."""
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def _append_line(fh: IO[str], obj: dict[str, Any]) -> None:
    # One write per line, flushed and synced: a concurrent reader sees whole lines only
    # (or, at worst, one unterminated last line while the write is in flight).
    fh.write(json.dumps(obj, allow_nan=False) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------
# training one config
# ---------------------------------------------------------------------------------------------
class CurveReporter:
    """Records one row per epoch (with its wall time) and never asks the recipe to stop."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.start()

    def start(self) -> None:
        """Start the clocks of epoch 1 (call right before training)."""
        self._mark, self._cpu_mark = time.perf_counter(), time.process_time()

    def report(self, epoch: int, **metrics: float) -> bool:
        now, cpu_now = time.perf_counter(), time.process_time()
        row: dict[str, Any] = {
            "epoch": epoch,
            **{k: _json_safe(float(metrics[k])) for k in EPOCH_FIELDS if k in metrics},
        }
        row["time_s"] = round(now - self._mark, 3)
        row["train_s"] = round(float(metrics.get("epoch_seconds", float("nan"))), 3)
        # CPU seconds of this process over the same interval: on a shared machine wall time
        # swings with other people's load, CPU time much less (with one torch thread).
        row["cpu_s"] = round(cpu_now - self._cpu_mark, 3)
        self.rows.append(row)
        self._mark, self._cpu_mark = now, cpu_now
        return False


def count_parameters(cfg: RecipeConfig, data: PreparedData) -> int:
    """Trainable parameters of the model ``cfg`` builds (tokenizer built as the recipe does)."""
    from speechtune.data import build_tokenizer, corpus_charset
    from speechtune.metrics import parameter_count
    from speechtune.models import build_model

    alphabet = " ".join(sorted(corpus_charset(cfg.data) - {" "}))
    tokenizer = build_tokenizer(
        cfg.tokenizer.kind, [u.text for u in data.train] + [alphabet], cfg.tokenizer.vocab_size
    )
    return parameter_count(build_model(cfg.model, cfg.features.n_mels, tokenizer.vocab_size))


def train_config(
    cfg: RecipeConfig, data: PreparedData, device: str, threads: int, cache_dir: str
) -> tuple[str, str, list[dict[str, Any]], int | None]:
    """Train one config; returns (status, reason, epoch rows, parameter count). Never raises for a bad config."""
    from speechtune.training import train

    reporter = CurveReporter()
    with tempfile.TemporaryDirectory(prefix="an4curves-") as out_dir:
        opts = RunOptions(
            output_dir=out_dir,
            device=device,
            cache_dir=cache_dir,
            num_threads=threads,
            progress=False,
        )
        reporter.start()
        try:
            result = train(cfg, opts, reporter, data=data)
        except (
            Exception
        ) as exc:  # a crashing config is a recorded outcome, not the end of the recording
            log.exception("config crashed")
            return "error", f"error: {type(exc).__name__}: {exc}", reporter.rows, None
    num_params = result.metrics.get("num_parameters")
    return (
        result.status,
        result.reason,
        reporter.rows,
        int(num_params) if num_params is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# the recording run
# ---------------------------------------------------------------------------------------------
def device_name(device: str) -> str:
    """A human-readable name of the device the timings come from."""
    import torch

    from speechtune.training._loop import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux: the platform string will do
        pass
    return f"cpu: {model}"


def build_meta(
    grid: Grid, data: PreparedData, device: str, threads: int, epochs: int, seed: int
) -> dict[str, Any]:
    """The first line of a recording: everything that must match for two runs to share a file."""
    import torch

    base = {k: v for k, v in flatten(grid.base_recipe).items() if k not in LOCATION_KEYS}
    return {
        "corpus": grid.base_recipe.get("data", {}).get("corpus"),
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": threads,
        "epochs": epochs,
        "metric": "wer",
        "space": grid.space_dict(),
        "base_overrides": dict(grid.overrides),
        "recorded": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Beyond the fields replay code needs: what makes a resumed run the same experiment.
        "seed": seed,
        "grid_size": grid.size,
        "base_recipe": base,
        "data": {
            "train_utterances": len(data.train),
            "dev_utterances": len(data.dev),
            "train_hours": round(data.train.hours, 4),
        },
    }


def prepare(
    grid: Grid, data_location: str | None, epochs: int, device: str, threads: int, cache_dir: str
) -> PreparedData:
    """Prepare the data once and warm the feature cache, so that no config's epoch 1 pays for it."""
    from speechtune.data import prepare_data
    from speechtune.training._loop import _features, resolve_device

    cfg = grid.recipe_config(0, epochs, data_location)
    data = prepare_data(cfg.data, cfg.features.sample_rate, cache_dir)
    opts = RunOptions(device=device, cache_dir=cache_dir, num_threads=threads, progress=False)
    dev = resolve_device(device)
    # The same call train() makes, so its in-process memo answers every config that keeps the
    # base front end.
    _features(data.train, cfg, opts, dev)
    _features(data.dev, cfg, opts, dev)
    return data


def record(
    space: str | Path,
    out: str | Path,
    n_configs: int,
    epochs: int,
    seed: int = 0,
    device: str = "auto",
    threads: int = 1,
    data_location: str | None = None,
    time_limit_s: float | None = None,
    cache_dir: str = ".cache/speechtune",
    shard: tuple[int, int] = (0, 1),
) -> int:
    """Record (or resume recording) learning curves of ``n_configs`` grid configs.

    Args:
        space: the grid space YAML.
        out: the JSONL recording (created, or resumed when it exists).
        n_configs: how many configs to draw from the grid (a seeded random order).
        epochs: epochs per config (``train.epochs``).
        seed: seed of the draw.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
        threads: torch CPU threads.
        data_location: where the corpus is (``data.root``, or ``data.manifest`` for a manifest
            corpus); None keeps the base recipe's.
        time_limit_s: no config is started after this many seconds (the running one finishes).
        cache_dir: corpus and feature cache.
        shard: ``(I, N)``: train only the I-th of N interleaved slices of the draw (see
            :func:`shard_of`); N processes with their own ``out`` files share a machine, and
            ``--merge`` joins their files.

    Returns:
        The number of configs recorded by this call.

    Raises:
        RecordingMismatch: ``out`` exists with a different meta.
        RecordingLocked: another recorder is appending to ``out``.
    """
    import torch

    t_start = time.perf_counter()
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    grid = load_grid(space)
    out = Path(out)
    data = prepare(grid, data_location, epochs, device, threads, cache_dir)
    meta = build_meta(grid, data, device, threads, epochs, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RecordingLocked(f"{out}: another recorder is appending to it") from exc
        old_meta, done = read_recording(out, repair=True)
        if old_meta is None:
            _append_line(fh, {"meta": meta})
        else:
            diffs = meta_differences(old_meta, meta)
            if diffs:
                raise RecordingMismatch(
                    f"{out} was recorded with other settings; use another --out or the original settings:\n  "
                    + "\n  ".join(diffs)
                )
        drawn = shard_of(draw_config_ids(grid.size, n_configs, seed), shard)
        todo = [i for i in drawn if i not in done]
        log.info(
            "grid of %d configs; %d drawn, %d already in %s, %d to train (%d epochs each) on %s",
            grid.size,
            len(drawn),
            len(drawn) - len(todo),
            out,
            len(todo),
            epochs,
            meta["device"],
        )
        recorded = 0
        for k, config_id in enumerate(todo, start=1):
            elapsed = time.perf_counter() - t_start
            if time_limit_s is not None and elapsed >= time_limit_s:
                log.info(
                    "time limit %.0f s reached after %.0f s: %d configs left unstarted",
                    time_limit_s,
                    elapsed,
                    len(todo) - k + 1,
                )
                break
            cfg = grid.recipe_config(config_id, epochs, data_location)
            params = grid.params(config_id)
            status, reason, rows, num_params = train_config(cfg, data, device, threads, cache_dir)
            if num_params is None:
                num_params = count_parameters(cfg, data)
            _append_line(
                fh,
                {
                    "config_id": config_id,
                    "params": params,
                    "num_params": num_params,
                    "status": status,
                    "reason": reason,
                    "epochs": rows,
                },
            )
            recorded += 1
            curve = " ".join(
                f"{r['wer']:.3f}" if r.get("wer") is not None else "nan" for r in rows
            )
            log.info(
                "[%d/%d] config %d %s: %s, %d params, %.0f s, WER by epoch: %s",
                k,
                len(todo),
                config_id,
                params,
                status,
                num_params,
                sum(r["time_s"] for r in rows),
                curve,
            )
    log.info("recorded %d configs in %.0f s", recorded, time.perf_counter() - t_start)
    return recorded


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; see the module docstring."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--space", default="benchmarks/an4_curves_space.yaml", help="grid space YAML")
    ap.add_argument(
        "--data",
        default=None,
        help="the corpus: AN4 directory (data.root) or manifest (data.manifest)",
    )
    ap.add_argument(
        "--out", default="benchmarks/data/an4_curves.jsonl", help="JSONL recording (appended)"
    )
    ap.add_argument("--n-configs", type=int, help="configs to draw from the grid (required)")
    ap.add_argument("--epochs", type=int, help="epochs per config (required)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the config draw")
    ap.add_argument(
        "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ..."
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument(
        "--time-limit-s", type=float, default=None, help="start no config after this many seconds"
    )
    ap.add_argument("--cache-dir", default=".cache/speechtune", help="corpus and feature cache")
    ap.add_argument(
        "--shard",
        default="0/1",
        help="I/N: train the I-th of N interleaved slices of the draw (one process per slice, "
        "each with its own --out)",
    )
    ap.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        metavar="PART",
        help="merge these shard recordings into --out (a new file) instead of training",
    )
    ap.add_argument(
        "--summary",
        nargs="?",
        const=True,
        default=None,
        metavar="OTHER",
        help="print how each epoch of --out ranks configs like the last (Spearman, bootstrap "
        "95%% intervals) instead of training; OTHER: a second recording to compare with",
    )
    ap.add_argument(
        "--proxy-for",
        type=Path,
        default=None,
        metavar="REFERENCE",
        help="print how each epoch of --out (a proxy recording of the same grid, e.g. on part "
        "of the data) ranks configs like REFERENCE's final dev WER, instead of training",
    )
    args = ap.parse_args(argv)
    if args.proxy_for is not None:
        print(summarise_proxy(Path(args.out), args.proxy_for), end="")
        return 0
    if args.summary is not None:
        other = None if args.summary is True else Path(args.summary)
        print(summarise_recording(Path(args.out), compare=other), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit()):
        ap.error(f"--shard: expected I/N (e.g. 3/12), got {args.shard!r}")
    try:
        if args.merge is not None:
            grid = load_grid(args.space)
            order = draw_config_ids(grid.size, grid.size, args.seed)
            n = merge_recordings(args.merge, Path(args.out), order)
            print(f"merged {n} configs from {len(args.merge)} files into {args.out}")
            return 0
        if args.n_configs is None or args.epochs is None:
            ap.error("--n-configs and --epochs are required (unless --merge)")
        record(
            args.space,
            args.out,
            args.n_configs,
            args.epochs,
            seed=args.seed,
            device=args.device,
            threads=args.threads,
            data_location=args.data,
            time_limit_s=args.time_limit_s,
            cache_dir=args.cache_dir,
            shard=(int(index), int(count)),
        )
    except (RecordingMismatch, RecordingLocked, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
