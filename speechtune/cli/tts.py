"""``speechtune tts``: train the TTS recipe, speak a text, tune it in stages (or jointly)."""

from __future__ import annotations

import argparse
from pathlib import Path

from speechtune.cli._common import DEFAULT_CACHE_DIR, add_threads_argument, check_threads

HELP = "text-to-speech: train the TTS recipe, synthesise, tune it in stages"


def _common(p: argparse.ArgumentParser, run_dir: str) -> None:
    p.add_argument("--run-dir", default=run_dir, help="output directory (default: %(default)s)")
    p.add_argument(
        "--cache-dir", default=DEFAULT_CACHE_DIR, help="corpus cache (default: %(default)s)"
    )
    p.add_argument(
        "--asr-model",
        default=None,
        help="a speechtune ASR model.pt (or its run dir) that transcribes the synthesised "
        "held-out utterances: intelligibility as WER/CER",
    )
    add_threads_argument(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train``, ``synthesize`` and ``tune`` subcommands of ``speechtune tts``."""
    sub = p.add_subparsers(dest="tts_command", required=True)
    s = sub.add_parser("train", help="train the TTS recipe (acoustic model, then the vocoder)")
    s.add_argument("--config", default=None, help="TTS recipe YAML (default: built-in defaults)")
    s.add_argument(
        "--set", nargs="*", action="extend", metavar="KEY=VALUE", help="dotted overrides"
    )
    s.add_argument(
        "--acoustic-from",
        default=None,
        help="a TTS model.pt (or run dir) whose acoustic model is reused frozen: only the "
        "vocoder is trained",
    )
    _common(s, "runs/tts")
    s.set_defaults(fn=_train)

    s = sub.add_parser("synthesize", help="speak a text with a trained TTS model")
    s.add_argument("--model", required=True, help="a TTS model.pt or its run dir")
    s.add_argument("--speaker", default=None, help="speaker id (default: the first one)")
    s.add_argument("--out", default="tts.wav", help="WAV file to write (default: %(default)s)")
    s.add_argument("--list-speakers", action="store_true", help="print the model's speakers")
    s.add_argument("text", nargs="?", default=None)
    add_threads_argument(s)
    s.set_defaults(fn=_synthesize)

    s = sub.add_parser(
        "tune",
        help="tune the TTS recipe in stages (acoustic model, then vocoder) or jointly",
    )
    s.add_argument("--config", required=True, help="staged-tuning YAML (conf/tts_staged.yaml)")
    s.add_argument(
        "--mode",
        choices=("staged", "joint"),
        default="staged",
        help="staged (default) or joint: every stage's keys in one study, same trials",
    )
    _common(s, "runs/tts_staged")
    s.set_defaults(fn=_tune)


def _threads(args: argparse.Namespace) -> None:
    check_threads(args)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _train(args: argparse.Namespace) -> int:
    from speechtune.tts import load_tts_config, train_tts

    _threads(args)
    cfg = load_tts_config(args.config, args.set or ())
    result = train_tts(
        cfg,
        args.run_dir,
        cache_dir=args.cache_dir,
        asr_model=args.asr_model,
        acoustic_from=args.acoustic_from,
    )
    m = result.metrics
    print(f"status: {result.status}")
    if "mcd" in m:
        intel = f"  WER {m['wer']:.3f}  CER {m['cer']:.3f}" if "wer" in m else ""
        print(f"held-out MCD {m['mcd']:.2f} dB{intel}  real-time factor {m['rtf']:.3f}")
    out = Path(args.run_dir)
    print(f"model: {out / 'model.pt'}   metrics: {out / 'metrics.json'}   wavs: {out / 'wavs'}")
    return 0 if result.status == "completed" else 2


def _synthesize(args: argparse.Namespace) -> int:
    import soundfile as sf

    from speechtune.tts import Synthesizer

    _threads(args)
    syn = Synthesizer.load(args.model)
    if args.list_speakers:
        print("\n".join(syn.speakers))
        return 0
    if not args.text:
        raise ValueError("give the text to say (or --list-speakers)")
    wave = syn.synthesize(args.text, args.speaker)
    sf.write(args.out, wave, syn.sample_rate, subtype="PCM_16")
    print(f"{args.out}: {len(wave) / syn.sample_rate:.2f} s at {syn.sample_rate} Hz")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from speechtune.reports import write_study_outputs
    from speechtune.tts import load_staged, run_staged

    _threads(args)
    spec = load_staged(args.config)
    record = run_staged(
        spec,
        args.run_dir,
        mode=args.mode,
        cache_dir=args.cache_dir,
        asr_model=args.asr_model,
        outputs=write_study_outputs,
    )
    if args.mode == "joint":
        w = record["winner"]
        print(f"joint: {record['trials']} trials, best MCD {w['metrics']['mcd']:.2f} dB")
        print(f"  config: {w['config']}")
    else:
        for st in record["stages"]:
            w = st["winner"]
            print(
                f"stage {st['name']}: searched {', '.join(st['searched'])}; froze "
                f"{len(st['frozen'])} key(s); best MCD {w['metrics']['mcd']:.2f} dB (trial {w['trial']})"
            )
        print(f"final model: {record['final']['model']}")
    name = "joint.json" if args.mode == "joint" else "stages.json"
    print(f"record: {Path(args.run_dir) / name}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch to the tts subcommand."""
    return int(args.fn(args))
