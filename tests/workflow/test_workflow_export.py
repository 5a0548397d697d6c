"""The export stage of a workflow whose recipe streams: the chunk step is exported beside the
whole-utterance model and attached to the registered version, whose export tag keeps naming the
whole-utterance file."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from speechtune.data import Manifest, load_audio, load_manifest
from speechtune.inference import (
    Recognizer,
    load_streaming_export,
    stream_transcribe,
    transcribe_files,
)
from speechtune.track import ModelRegistry
from speechtune.track._registry import EXPORT_TAG
from speechtune.workflow import load_workflow, run_workflow
from tests.helpers.workflow import TINY_RECIPE, split_corpus, write_workflow
from tests.training.test_edge import TINY_CONFORMER
from tests.training.test_stream_export import STREAMING


@pytest.mark.usefixtures("one_torch_thread")
def test_a_streaming_recipe_exports_its_chunk_step_too(
    synth_corpus: Manifest, tmp_path: Path
) -> None:
    train_manifest, golden_manifest = split_corpus(synth_corpus, tmp_path)
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["model"] = {**TINY_CONFORMER, **STREAMING}
    recipe["train"]["epochs"] = 1
    config = write_workflow(
        tmp_path / "conf",
        train_manifest,
        golden_manifest,
        recipe=recipe,
        coarse={"n_trials": 2, "top_k": 1},
        fine={"n_trials": 1},
        validation={"top_k": 1, "seeds": [1]},
        full={"overrides": {"train.epochs": 1}},
    )
    state = run_workflow(
        load_workflow(config), tmp_path / "run", device="cpu", cache_dir=tmp_path / "cache"
    ).data
    export = state["stages"]["export"]["result"]
    whole, chunked = Path(export["path"]), Path(export["stream_path"])
    assert whole.parent == chunked.parent == tmp_path / "run" / "export"
    assert chunked.name == "model.stream.torchscript.pt" and chunked.stat().st_size > 0
    # the artefact streams what the trained model streams
    golden = load_manifest(golden_manifest)
    model_pt = state["stages"]["full"]["result"]["model"]
    wave = load_audio(golden, golden[0], 16000)
    eager = stream_transcribe(Recognizer.load(model_pt), wave)
    assert stream_transcribe(load_streaming_export(chunked), wave).text == eager.text
    wav = golden.resolve(golden[0])
    assert transcribe_files(whole, [wav]) == transcribe_files(model_pt, [wav])
    # attached to the version; the version's export tag still names the whole-utterance model
    reg = ModelRegistry(None, "asr-test", store_dir=tmp_path / "conf" / "registry")
    version = reg.versions()[-1]
    assert export["stream_registry_uri"].endswith("export/model.stream.torchscript.pt")
    assert version.tags[EXPORT_TAG] == export["registry_uri"] != export["stream_registry_uri"]
