"""Train a tiny Wav2Vec2-CTC model with the Hugging Face Trainer; report dev WER to speechtune.

Run by ``speechtune tune --config examples/huggingface/tuning.yaml`` (one process per trial), or
by hand::

    python examples/huggingface/train.py --data examples/huggingface/data --config my.yaml

Everything is built locally, nothing is downloaded: the model from a ``Wav2Vec2Config``
(randomly initialised), the character tokenizer from a ``vocab.json`` written from the training
transcripts, the feature extractor from its constructor. The corpus is speechtune's synthetic
one (``speechtune data synth``); a speaker-disjoint fifth of it is the dev set.

``--config`` is a YAML file of hyperparameters, flat dotted keys (``optim.lr: 0.001``) or nested
(``optim: {lr: 0.001}``); keys it does not give keep the defaults of :data:`DEFAULTS`, and an
unknown key is an error (a typo in a tuning YAML's space must not be silently ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import (
    EvalPrediction,
    Trainer,
    TrainingArguments,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    set_seed,
)

import speechtune
from speechtune.data import Manifest, load_audio, load_manifest, split_dev
from speechtune.integrations.huggingface import SpeechtuneCallback
from speechtune.metrics import cer, wer

SAMPLE_RATE = 16000

#: The convolutional feature encoder by number of layers; both give one frame every 320 samples
#: (20 ms at 16 kHz), the full-size model's frame rate, for a fraction of the cost of its seven
#: 512-channel layers. One layer (40 ms windows) is a learned filterbank; two layers see 2.5 ms
#: windows first and pool them, which costs about twice as much on a CPU.
CONV_LAYOUTS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {  # (kernels, strides)
    1: ((640,), (320,)),
    2: ((40, 16), (20, 16)),
}

#: Every hyperparameter the script reads, with its default (the keys a tuning YAML may sample).
DEFAULTS: dict[str, Any] = {
    "model.hidden_size": 64,
    "model.num_layers": 2,
    "model.num_heads": 4,
    "model.ffn_mult": 2,  # intermediate_size = ffn_mult * hidden_size
    "model.conv_layers": 2,  # 1 or 2: see CONV_LAYOUTS
    "model.conv_dim": 64,  # channels of each layer of the convolutional feature encoder
    "model.dropout": 0.1,
    "model.mask_time_prob": 0.05,  # wav2vec2's own SpecAugment-style time masking
    "optim.lr": 2e-3,
    "optim.warmup": 0.1,  # fraction of the training steps
    "optim.weight_decay": 0.0,
    "train.epochs": 8,
    # Small batches: more updates per epoch for the same compute, which a model trained from
    # scratch on a few hundred utterances needs more than large-batch gradients.
    "train.batch_size": 4,
    "data.dev_fraction": 0.2,
    "data.max_utterances": None,  # None: the whole corpus (a smaller one for quick runs)
}


def load_config(path: str | None) -> dict[str, Any]:
    """The defaults, updated with the keys of a YAML file (nested sections become dotted keys)."""
    config = dict(DEFAULTS)
    if path is None:
        return config
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            # A dict whose dotted key is not itself a setting is a section (optim: {lr: ...}).
            if isinstance(value, dict) and dotted not in DEFAULTS:
                walk(value, dotted + ".")
            else:
                flat[dotted] = value

    walk(raw, "")
    unknown = sorted(set(flat) - set(DEFAULTS))
    if unknown:
        raise SystemExit(f"{path}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    config.update(flat)
    return config


def find_manifest(data: str) -> Path:
    """``data`` itself (a manifest file), ``data/manifest.jsonl``, or the one corpus under ``data``.

    ``speechtune data synth --out DIR`` writes ``DIR/synthetic-<hash>/manifest.jsonl``: pointing
    at ``DIR`` is enough as long as it holds one corpus.
    """
    path = Path(data)
    if path.is_file():
        return path
    if (path / "manifest.jsonl").is_file():
        return path / "manifest.jsonl"
    found = sorted(path.glob("*/manifest.jsonl"))
    if len(found) != 1:
        raise SystemExit(
            f"--data {data}: expected a manifest or a directory with exactly one corpus, "
            f"found {len(found)} */manifest.jsonl"
        )
    return found[0]


def build_tokenizer(texts: list[str], out_dir: Path) -> Wav2Vec2CTCTokenizer:
    """A character CTC tokenizer whose vocabulary is the characters of ``texts``.

    ``<pad>`` is id 0 and is the CTC blank (Wav2Vec2ForCTC uses ``pad_token_id`` as the blank);
    a space is the word delimiter ``|``.
    """
    chars = sorted({c for text in texts for c in text} - {" "})
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2}
    vocab.update({c: i + 3 for i, c in enumerate(chars)})
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, indent=0, sort_keys=True), encoding="utf-8")
    return Wav2Vec2CTCTokenizer(
        str(vocab_file), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|"
    )


def build_model(config: dict[str, Any], tokenizer: Wav2Vec2CTCTokenizer) -> Wav2Vec2ForCTC:
    """A randomly initialised, tiny Wav2Vec2ForCTC (no pretrained weights: nothing to download)."""
    hidden = int(config["model.hidden_size"])
    conv = int(config["model.conv_dim"])
    kernels, strides = CONV_LAYOUTS[int(config["model.conv_layers"])]
    dropout = float(config["model.dropout"])
    model_config = Wav2Vec2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=int(config["model.num_layers"]),
        num_attention_heads=int(config["model.num_heads"]),
        intermediate_size=int(config["model.ffn_mult"]) * hidden,
        conv_dim=(conv,) * len(kernels),
        conv_kernel=kernels,
        conv_stride=strides,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=dropout,
        attention_dropout=dropout,
        activation_dropout=dropout,
        feat_proj_dropout=dropout,
        final_dropout=dropout,
        layerdrop=0.0,
        mask_time_prob=float(config["model.mask_time_prob"]),
        mask_time_length=5,
        pad_token_id=tokenizer.pad_token_id,
        ctc_loss_reduction="mean",
        # An utterance too short for its transcript gives an infinite CTC loss: zero it rather
        # than let one bad batch turn every weight into NaN.
        ctc_zero_infinity=True,
    )
    return Wav2Vec2ForCTC(model_config)


class SpeechDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """Normalised waveforms and label ids, loaded once (the corpus is small)."""

    def __init__(
        self,
        manifest: Manifest,
        extractor: Wav2Vec2FeatureExtractor,
        tokenizer: Wav2Vec2CTCTokenizer,
    ) -> None:
        self.items = []
        for utt in manifest:
            audio = load_audio(manifest, utt, SAMPLE_RATE)
            values = extractor(audio, sampling_rate=SAMPLE_RATE).input_values[0]
            self.items.append({"input_values": values, "labels": tokenizer(utt.text).input_ids})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


class CTCCollator:
    """Pads a batch: waveforms with zeros (and an attention mask), labels with -100 (ignored)."""

    def __init__(self, extractor: Wav2Vec2FeatureExtractor) -> None:
        self.extractor = extractor

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = self.extractor.pad(
            [{"input_values": b["input_values"]} for b in batch],
            return_tensors="pt",
            return_attention_mask=True,
        )
        longest = max(len(b["labels"]) for b in batch)
        labels = torch.full((len(batch), longest), -100, dtype=torch.long)
        for i, b in enumerate(batch):
            labels[i, : len(b["labels"])] = torch.tensor(b["labels"], dtype=torch.long)
        return {**out, "labels": labels}


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate dev WER after every epoch, report it; 0 on success."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="hyperparameters YAML (default: DEFAULTS)")
    parser.add_argument(
        "--data", required=True, help="manifest, or `speechtune data synth --out` dir"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=os.environ.get("SPEECHTUNE_TRIAL_DIR"),
        help="output directory (default: the trial's directory, else a temporary one)",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="hf-ctc-"))
    set_seed(args.seed)

    manifest = load_manifest(find_manifest(args.data), split="train")
    if config["data.max_utterances"] is not None:
        manifest = manifest[: int(config["data.max_utterances"])]
    train_set, dev_set = split_dev(manifest, float(config["data.dev_fraction"]), seed=args.seed)

    tokenizer = build_tokenizer([u.text for u in train_set], out_dir)
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    model = build_model(config, tokenizer)
    pad_id = tokenizer.pad_token_id

    def argmax_ids(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Keep the greedy ids, not the logits: the Trainer accumulates them over the dev set.
        return logits.argmax(dim=-1)

    def compute_metrics(pred: EvalPrediction) -> dict[str, float]:
        ids = np.where(pred.predictions == -100, pad_id, pred.predictions)  # batch padding
        refs_ids = np.where(pred.label_ids == -100, pad_id, pred.label_ids)
        hyps = tokenizer.batch_decode(ids)  # groups repeats and drops blanks: greedy CTC
        refs = tokenizer.batch_decode(refs_ids, group_tokens=False)
        # CER too: early on, a from-scratch model gets letters right well before whole words.
        return {"wer": wer(refs, hyps), "cer": cer(refs, hyps)}

    training_args = TrainingArguments(
        output_dir=str(out_dir / "hf"),
        num_train_epochs=float(config["train.epochs"]),
        per_device_train_batch_size=int(config["train.batch_size"]),
        per_device_eval_batch_size=16,
        learning_rate=float(config["optim.lr"]),
        warmup_steps=float(config["optim.warmup"]),  # a float in [0, 1): a fraction of the steps
        weight_decay=float(config["optim.weight_decay"]),
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        data_collator=CTCCollator(extractor),
        train_dataset=SpeechDataset(train_set, extractor, tokenizer),
        eval_dataset=SpeechDataset(dev_set, extractor, tokenizer),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=argmax_ids,
        # reports {"epoch": n, "wer": ..., "cer": ..., "loss": ...} after every epoch's evaluation
        callbacks=[SpeechtuneCallback()],
    )
    trainer.train()
    history = [row for row in trainer.state.log_history if "eval_wer" in row]
    if not history or not math.isfinite(history[-1]["eval_wer"]):
        print("no dev WER was computed", file=sys.stderr)
        return 1
    # A pruned trial ends here too, normally: the callback stopped the Trainer (exit code 0).
    how = "pruned by speechtune" if speechtune.should_stop() else "done"
    print(f"{how}: dev WER {history[-1]['eval_wer']:.4f} after epoch {history[-1]['epoch']:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
