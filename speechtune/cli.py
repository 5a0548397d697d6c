"""The ``speechtune`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .config import ConfigError, RunOptions, load_config

log = logging.getLogger("speechtune")


def _run_options(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        output_dir=args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        num_threads=args.threads,
        progress=not args.quiet,
        resume=getattr(args, "resume", False),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    cfg = load_config(args.config, args.set or ())
    result = train(cfg, _run_options(args))
    m = result.metrics
    print(f"status: {result.status} ({result.reason})")
    if m:
        print(
            f"dev WER {m['wer']:.4f}  CER {m['cer']:.4f}  worst-group WER {m['worst_group_wer']:.4f} "
            f"({m['worst_group']})  params {m['num_parameters']:,}  "
            f"latency {m['latency_ms_per_audio_s']:.1f} ms per audio second"
        )
        print(f"model: {Path(args.out) / 'model.pt'}   metrics: {Path(args.out) / 'metrics.json'}")
    return 0 if result.ok else 2


_TUNING_SECTIONS = {"space", "study", "objective", "presets", "recipe", "command", "constraints"}


def _is_tuning_file(path: str) -> bool:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_config reports the problem
    return isinstance(data, dict) and bool(_TUNING_SECTIONS & set(data))


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a recipe or a tuning YAML and report every problem at once."""
    if _is_tuning_file(args.config):
        from .tuning import validate_tuning

        problems = validate_tuning(args.config, args.set or ())
        if problems:
            print(f"error: {len(problems)} problem(s) in {args.config}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
            return 2
    else:
        load_config(args.config, args.set or ())
    print(f"{args.config}: OK")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .reports import report_command

    path = report_command(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    """Rank agreement of each cheap rung (or early epoch) with full fidelity; writes correlation.json/.png."""
    from .reports._correlate import correlate_command, format_table

    report, written = correlate_command(
        Path(args.run_dir),
        study_name=args.study,
        metric=args.metric,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        threshold=args.threshold,
    )
    print(format_table(report))
    for path in written.values():
        print(f"wrote {path}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .reports import dashboard_command

    dashboard_command(args.run_dir, host=args.host, port=args.port)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import load_manifest
    from .evaluate import evaluate_model

    manifest = load_manifest(args.data, split=args.split)
    result = evaluate_model(
        args.checkpoint, manifest, device=args.device, name=args.name, skip_bad=args.skip_bad
    )
    print(json.dumps({k: v for k, v in result.items() if k != "skipped"}, indent=2))
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from .evaluate import transcribe_files

    for path, text in zip(args.audio, transcribe_files(args.checkpoint, args.audio, args.device)):
        print(f"{path}\t{text}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export model.pt as one TorchScript or ONNX file that `speechtune transcribe` loads."""
    from .export import export_model

    path = export_model(args.checkpoint, args.out, args.format)
    print(f"exported {args.format}: {path}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from .data import synthesize_corpus

    m = synthesize_corpus(
        args.out,
        num_utterances=args.num_utterances,
        seed=args.seed,
        accents=tuple(args.accents.split(",")),
        num_voices=args.num_voices,
        noise_snr_db=args.noise_snr_db,
        sample_rate=args.sample_rate,
        progress=True,
    )
    print(f"{len(m)} utterances, {m.hours * 60:.1f} min, {len(m.speakers)} speakers, groups {m.groups}")
    print(f"manifest: {m.root / 'manifest.jsonl' if m.root else args.out}")
    return 0


def cmd_data_an4(args: argparse.Namespace) -> int:
    from .data import import_an4

    splits = import_an4(args.source, Path(args.out), skip_bad=args.skip_bad)
    for name, m in splits.items():
        print(f"{name}: {len(m)} utterances, {m.hours:.2f} h, {len(m.speakers)} speakers -> {Path(args.out) / (name + '.jsonl')}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from .data import import_corpus

    manifest, report = import_corpus(args.manifest, Path(args.out), sample_rate=args.sample_rate, skip_bad=args.skip_bad)
    print(f"imported {len(manifest)} utterances ({manifest.hours:.3f} h) -> {Path(args.out) / 'manifest.jsonl'}")
    if report.skipped:
        print(report.summary())
    return 0


def _add_run_args(p: argparse.ArgumentParser, out_default: str) -> None:
    p.add_argument("--out", default=out_default, help="output directory (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    p.add_argument("--cache-dir", default=".cache/speechtune", help="corpus and feature cache (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speechtune", description="Find strong hyperparameters for speech models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the ASR recipe from a config")
    p.add_argument("--config", default=None, help="recipe YAML (default: built-in defaults)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. model.num_layers=6")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    _add_run_args(p, "runs/train")
    p.set_defaults(fn=cmd_train)

    from .tuning._cli import add_tune_arguments, tune_command

    p = sub.add_parser("tune", help="run a hyperparameter study (Optuna) on the recipe or your own script")
    add_tune_arguments(p)
    p.set_defaults(fn=tune_command)

    from .tuning._workers import add_worker_arguments, worker_command

    p = sub.add_parser(
        "worker",
        help="join a study on PostgreSQL (or a journal file) and run its trials; start any number of them",
    )
    add_worker_arguments(p)
    p.set_defaults(fn=worker_command)

    from .workflow._runner import add_workflow_arguments, workflow_command

    p = sub.add_parser(
        "workflow",
        help="the production path: proxy data, baseline, coarse + fine search, multi-seed validation, full "
        "training, gating on a golden set against the registry's champion, export",
    )
    add_workflow_arguments(p)
    p.set_defaults(fn=workflow_command)

    p = sub.add_parser("validate", help="check a recipe or tuning config and report every problem")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    p.set_defaults(fn=cmd_validate)

    p = sub.add_parser("report", help="rebuild report.html, PNG plots, trials.csv and best.yaml of a study")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser(
        "correlate",
        help="check whether cheap rungs (or early epochs) rank configs like full training",
        description="Spearman/Kendall rank correlation, with bootstrap 95% CIs, of each lower rung of a "
        "multi-fidelity study with its top rung (of each epoch with the final value, for other studies); "
        "writes RUN_DIR/correlation.json and correlation.png and recommends the cheapest faithful rung.",
    )
    p.add_argument("run_dir")
    p.add_argument("--study", default=None, help="study name, when the storage holds several")
    p.add_argument("--metric", default=None, help="value to compare (default: the study's primary objective)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument(
        "--threshold", type=float, default=0.7,
        help="recommend the cheapest rung whose Spearman 95%% CI lower bound reaches this (default: %(default)s)",
    )
    p.set_defaults(fn=cmd_correlate)

    p = sub.add_parser("dashboard", help="live view of a study (optuna-dashboard)")
    p.add_argument("run_dir", help="a run directory or a storage URL")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, local only)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(fn=cmd_dashboard)

    p = sub.add_parser("evaluate", help="WER/CER/latency of a trained model on a manifest")
    p.add_argument("--checkpoint", required=True, help="model.pt written by `speechtune train`")
    p.add_argument("--data", required=True, help="JSONL/CSV/Kaldi dir/lhotse manifest")
    p.add_argument("--split", default="test", help="label of this data (default: %(default)s)")
    p.add_argument("--name", default=None, help="name of the result file eval_<name>.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-bad", action="store_true", help="skip (and list) bad utterances")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument(
        "--checkpoint", required=True,
        help="model.pt, or a model exported by `speechtune export` (file or directory; trusted sources only: "
        "an exported TorchScript file is code)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("audio", nargs="+")
    p.set_defaults(fn=cmd_transcribe)

    from .export import FORMATS

    p = sub.add_parser(
        "export",
        help="export a trained model (front-end config and vocabulary included) as TorchScript or ONNX",
        description="Write one self-contained file that serves greedy CTC decoding and that "
        "`speechtune transcribe --checkpoint FILE` loads. TorchScript holds the log-mel front end in the "
        "graph; ONNX (needs the onnx package, and onnxruntime to run) takes log-mels, whose config it stores.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt written by `speechtune train`")
    p.add_argument("--format", required=True, choices=list(FORMATS), help="artefact format")
    p.add_argument(
        "--out", required=True,
        help="output directory (file named model.torchscript.pt / model.onnx) or a file path ending in .pt/.onnx",
    )
    p.set_defaults(fn=cmd_export)

    data = sub.add_parser("data", help="build or import corpora").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="generate the synthetic AN4-style corpus with espeak-ng")
    p.add_argument("--out", default=".cache/speechtune/corpora")
    p.add_argument("--num-utterances", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accents", default="en-us,en,en-gb-scotland,en-029", help="comma-separated espeak-ng accents")
    p.add_argument("--num-voices", type=int, default=8)
    p.add_argument("--noise-snr-db", type=float, default=None)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.set_defaults(fn=cmd_data_synth)

    p = data.add_parser("an4", help="import CMU AN4 from a local directory or a URL")
    p.add_argument("--source", required=True, help="directory of the AN4 distribution, or a .tar.gz URL")
    p.add_argument("--out", default=".cache/speechtune/corpora/an4")
    p.add_argument("--skip-bad", action="store_true")
    p.set_defaults(fn=cmd_data_an4)

    p = data.add_parser("import", help="validate and import a JSONL/CSV/Kaldi/lhotse corpus")
    p.add_argument("manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--sample-rate", type=int, default=None, help="flag audio below this rate")
    p.add_argument("--skip-bad", action="store_true", help="skip bad utterances and report them")
    p.set_defaults(fn=cmd_data_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``speechtune`` console script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as exc:
        # Bad input (manifests, audio, test-split refusals) ends with its message, not a traceback.
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
