"""A small, real workflow setup for tests: generated speech, a tiny recipe, YAMLs in a temp dir."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from speechtune.data import Manifest
from tests.helpers.recipes import TINY_RECIPE as TINY

#: The tests' tiny recipe (tests/conftest.py), reading a manifest corpus.
TINY_RECIPE: dict[str, Any] = {
    **copy.deepcopy(TINY),
    "data": {"corpus": "manifest", "dev_fraction": 0.25, "split_seed": 0},
}


def split_corpus(corpus: Manifest, out: Path) -> tuple[Path, Path]:
    """Write a training manifest and a golden manifest with one held-out speaker per accent.

    The golden utterances are a slice of the held-out speakers (few, so that gating is quick).
    """
    held = {
        spk
        for group in corpus.groups
        for spk in sorted({u.speaker for u in corpus if u.group == group})[:1]
    }
    train = corpus.filter(lambda u: u.speaker not in held)
    golden_utts = [u for u in corpus if u.speaker in held]
    golden = Manifest(golden_utts[:12] + golden_utts[-12:], "all", corpus.root)
    train_path, golden_path = out / "data" / "train.jsonl", out / "held" / "golden.jsonl"
    train.to_jsonl(train_path)
    golden.to_jsonl(golden_path)
    return train_path, golden_path


def write_workflow(
    tmp: Path,
    train_manifest: Path,
    golden_manifest: Path,
    *,
    name: str = "wf",
    registry: Path | None = None,
    recipe: dict[str, Any] | None = None,
    tuning_extra: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """Write recipe.yaml, tuning.yaml and workflow.yaml into ``tmp``; return the workflow YAML."""
    tmp.mkdir(parents=True, exist_ok=True)
    rec = yaml.safe_load(yaml.safe_dump(recipe or TINY_RECIPE))
    rec["data"]["manifest"] = str(train_manifest)
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec))
    tuning = {
        "recipe": "recipe.yaml",
        "space": {
            "optim.lr": {"type": "float", "low": 1.0e-3, "high": 2.0e-2, "log": True},
            "model.d_model": [32, 64],
        },
        "study": {"name": "wf-tuning", "seed": 0},
        "objective": {"kind": "recipe", "metric": "wer", "seeds": [0]},
        "cost": {"grid_g_per_kwh": 300, "cpu_price_per_hour": 0.05},
    }
    tuning.update(tuning_extra or {})
    (tmp / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    wf: dict[str, Any] = {
        "name": name,
        "tuning": "tuning.yaml",
        "proxy": {"fraction": 0.6},
        "coarse": {"n_trials": 3, "top_k": 2},
        "fine": {"n_trials": 2, "pruner": "none"},
        "validation": {"top_k": 1, "seeds": [1, 2]},
        "full": {"overrides": {"train.epochs": 3}},
        "golden": {"manifest": str(golden_manifest)},
        "gating": {
            "model_name": "asr-test",
            "margin": 0.0,
            "registry_dir": str(registry or tmp / "registry"),
        },
        "export": {"format": "torchscript"},
    }
    for key, value in sections.items():
        wf[key] = (
            {**wf.get(key, {}), **value}
            if isinstance(value, dict) and isinstance(wf.get(key), dict)
            else value
        )
    path = tmp / "workflow.yaml"
    path.write_text(yaml.safe_dump(wf))
    return path
