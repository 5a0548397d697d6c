"""The production workflow end to end on generated speech: eight stages, state and resume, the
golden set kept out of every stage before gating, the registry's lineage, export and the report."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import soundfile
import yaml

from speechtune.config import ConfigError
from speechtune.data import Manifest, load_manifest
from speechtune.workflow import (
    STAGES,
    GoldenSetAccessError,
    WorkflowConfigChanged,
    load_workflow,
    run_workflow,
)
from tests.helpers.workflow import split_corpus, write_workflow

# ---------------------------------------------------------------------------------------------
# a spy on file access: Python-level opens (audit hook) and libsndfile opens (soundfile)
# ---------------------------------------------------------------------------------------------
_opened: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if (
        _opened is not None
        and event == "open"
        and args
        and isinstance(args[0], (str, bytes, Path))
    ):
        _opened.append(
            str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()).resolve())
        )


sys.addaudithook(_audit)  # cannot be removed; records only while _opened is a list


@contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every file path opened while the block runs (audio read by libsndfile included)."""
    global _opened
    seen: list[str] = []
    original = soundfile.SoundFile.__init__

    def spy(self, file, *args, **kwargs):  # the real libsndfile open still runs
        if isinstance(file, (str, Path)):
            seen.append(str(Path(file).resolve()))
        return original(self, file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(soundfile.SoundFile, "__init__", spy)
        _opened = seen
        try:
            yield seen
        finally:
            _opened = None


# ---------------------------------------------------------------------------------------------
# one workflow, run in two phases (stages 1-6, then 7-8), shared by the tests of this module
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(
    synth_corpus: Manifest, tmp_path_factory: pytest.TempPathFactory
) -> types.SimpleNamespace:
    tmp = tmp_path_factory.mktemp("workflow")
    train_manifest, golden_manifest = split_corpus(synth_corpus, tmp)
    config = write_workflow(tmp / "conf", train_manifest, golden_manifest)
    golden = load_manifest(golden_manifest)
    golden_files = {str(golden_manifest.resolve())} | {
        str(golden.resolve(u).resolve()) for u in golden
    }
    spec = load_workflow(config)
    run_dir = tmp / "run"
    kw = dict(device="cpu", cache_dir=tmp / "cache")
    with recording_opens() as before:
        run_workflow(spec, run_dir, to_stage="full", **kw)
    with recording_opens() as during:
        state = run_workflow(spec, run_dir, **kw)
    return types.SimpleNamespace(
        tmp=tmp,
        config=config,
        spec=spec,
        run_dir=run_dir,
        state=state,
        kw=kw,
        golden_files=golden_files,
        opened_before=before,
        opened_during=during,
        registry=tmp / "conf" / "registry",
        train_manifest=train_manifest,
        golden_manifest=golden_manifest,
    )


def _stage(f: types.SimpleNamespace, name: str) -> dict:
    return json.loads((f.run_dir / "state.json").read_text())["stages"][name]


def test_every_stage_ran_and_recorded_its_result(finished) -> None:
    state = json.loads((finished.run_dir / "state.json").read_text())
    assert [state["stages"][s]["status"] for s in STAGES] == ["done"] * 8
    proxy = state["stages"]["proxy"]["result"]
    # 1: the proxy subset is a stratified part of the training set; dev is speaker-disjoint from it
    assert 0 < proxy["proxy"]["utterances"] < proxy["train_full"]["utterances"]
    assert proxy["proxy"]["groups"] == proxy["train_full"]["groups"] == ["en-gb-scotland", "en-us"]
    assert abs(proxy["proxy"]["hours"] / proxy["train_full"]["hours"] - 0.6) < 0.05
    train = load_manifest(proxy["manifests"]["train_full"])
    dev = load_manifest(proxy["manifests"]["dev"])
    assert not set(train.speakers) & set(dev.speakers)
    for key, path in proxy["manifests"].items():
        assert len(proxy["manifest_sha256"][key]) == 64 and Path(path).is_file()
    # 2: the baseline trained the recipe defaults on the proxy data with the first validation seed
    base = state["stages"]["baseline"]["result"]
    assert base["seed"] == 1 and base["value"] is not None
    cfg = yaml.safe_load((Path(base["run_dir"]) / "config.yaml").read_text())
    assert cfg["data"]["proxy_fraction"] == 0.6 and cfg["optim"]["lr"] == 0.003
    # 3: random search, 3 trials
    coarse = state["stages"]["coarse"]["result"]
    assert (coarse["sampler"], coarse["n_trials"], coarse["n_complete"]) == ("random", 3, 3)
    # two-epoch tiny models all sit at WER 1.0: the stage says its proxy cannot rank configs
    assert coarse["best"]["value"] >= 0.9 and "too weak to rank configs" in coarse["warnings"][0]
    # 4: the fine study searched a narrowed region and ran its own 2 trials beside the warm start
    fine = state["stages"]["fine"]["result"]
    assert fine["sampler"] == "tpe" and fine["n_complete"] == 2 + fine["warm_started"]
    assert "optim.lr" in fine["narrowed"]
    lo, hi = (
        float(x) for x in fine["narrowed"]["optim.lr"]["after"].split("]")[0].strip("[").split(",")
    )
    assert 1e-3 <= lo < hi <= 2e-2 and (lo, hi) != (1e-3, 2e-2)
    # 5: the baseline and the top config, each with both seeds; the winner is the lowest mean
    val = state["stages"]["validate"]["result"]
    assert [c["name"] for c in val["candidates"]][0] == "baseline" and len(val["candidates"]) == 2
    for c in val["candidates"]:
        assert c["seeds"] == [1, 2] and len(c["values"]) == 2
    assert val["winner"] == min(val["candidates"], key=lambda c: c["mean"])["name"]
    assert val["test"]["statement"]
    # 6: full data (no proxy), the full.overrides epochs, the winner's params
    full = state["stages"]["full"]["result"]
    cfg = yaml.safe_load((Path(full["run_dir"]) / "config.yaml").read_text())
    assert (
        cfg["data"]["proxy_fraction"] == 1.0
        and cfg["train"]["epochs"] == 3
        and full["epochs"] == 3
    )
    for key, value in full["params"].items():
        section, name = key.split(".", 1)
        assert cfg[section][name] == value
    assert Path(full["model"]).is_file()
    # the recipe's defaults are trained the same way as a yardstick, unless they won validation
    # (here every tiny model sits at WER 1.0 and ties go to the baseline)
    assert full["candidate"] == val["winner"] and "tuned" not in full
    assert ("baseline" in full) == (val["winner"] != "baseline")


def test_cost_is_recorded_per_stage_and_in_total(finished) -> None:
    state = json.loads((finished.run_dir / "state.json").read_text())
    per_stage = [state["stages"][s]["cost"] for s in STAGES]
    for cost in per_stage:
        assert (
            cost["wall_s"] > 0
            and cost["gpu_hours"] == 0.0
            and cost["energy_source"] == "tdp-estimate"
        )
    assert per_stage[2]["cpu_core_hours"] > 0  # the coarse study trained models
    total = state["cost_total"]
    assert total["cpu_core_hours"] == pytest.approx(sum(c["cpu_core_hours"] for c in per_stage))
    # the tuning YAML's cost model: 300 g/kWh, 0.05 per CPU core-hour
    assert total["co2e_g"] == pytest.approx(total["energy_kwh"] * 300, rel=1e-6)
    assert total["money"] == pytest.approx(total["cpu_core_hours"] * 0.05, rel=1e-6)


def test_golden_set_is_read_by_the_gate_stage_only(finished) -> None:
    assert not finished.golden_files & set(finished.opened_before), (
        "a stage before gating read the golden set"
    )
    read = finished.golden_files & set(finished.opened_during)
    assert str(finished.golden_manifest.resolve()) in read
    assert len(read) == len(finished.golden_files), "the gate evaluates every golden utterance"


def test_first_model_becomes_champion_with_lineage(finished) -> None:
    from speechtune.track import ModelRegistry

    gate = _stage(finished, "gate")["result"]
    assert (
        gate["promoted"] is True
        and gate["champion"] is None
        and "first champion" in gate["decision"]
    )
    reg = ModelRegistry(None, "asr-test", store_dir=finished.registry)
    champion = reg.champion()
    assert champion is not None and champion.version == gate["registered_version"] == "1"
    assert set(champion.aliases) == {"champion", "challenger"}
    assert champion.metrics["golden_wer"] == pytest.approx(gate["challenger"]["wer"])
    assert "dev_wer" in champion.metrics and "workflow_cpu_core_hours" in champion.metrics
    proxy = _stage(finished, "proxy")["result"]
    assert champion.tags["speechtune.train_fingerprint"] == proxy["train_full"]["fingerprint"]
    assert champion.tags["speechtune.study"].endswith("-fine")
    local = Path(reg.client.download_artifacts(champion.run_id, "lineage.json", str(finished.tmp)))
    lineage = json.loads(local.read_text())
    assert lineage["data"]["manifest_sha256"] == proxy["manifest_sha256"]
    assert lineage["data"]["golden"]["fingerprint"] == gate["golden"]["fingerprint"]
    assert set(lineage["studies"]) == {"coarse", "fine"}
    assert len(lineage["code_version"]["git_commit"] or "x" * 40) == 40
    assert (
        lineage["config"]["train"]["epochs"] == 3
        and lineage["metrics"]["dev"]["wer"] == _stage(finished, "full")["result"]["dev"]["wer"]
    )
    # the two studies are in the same MLflow store: a parent run each (with the study's cost), a child per trial
    experiment = reg.client.get_experiment_by_name("wf")
    runs = reg.client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("speechtune.role") == "study"]
    assert sorted(r.data.tags["speechtune.study"].rsplit("-", 1)[1] for r in parents) == [
        "coarse",
        "fine",
    ]
    assert all(r.data.metrics["cost.cpu_core_hours"] > 0 for r in parents)
    children = [r for r in runs if r.data.tags.get("speechtune.role") == "trial"]
    assert len(children) == 3 + 2 and all(r.data.metrics["cost.wall_s"] > 0 for r in children)


def test_exported_model_transcribes(finished) -> None:
    from speechtune.inference import transcribe_files

    export = _stage(finished, "export")["result"]
    assert (
        export["format"] == "torchscript"
        and Path(export["path"]).stat().st_size == export["bytes"] > 0
    )
    golden = load_manifest(finished.golden_manifest)
    texts = transcribe_files(export["path"], [golden.resolve(golden[0])])
    assert len(texts) == 1 and isinstance(texts[0], str)


def test_report_has_the_path_decision_and_cost(finished) -> None:
    md = (finished.run_dir / "report.md").read_text()
    html = (finished.run_dir / "report.html").read_text()
    decision = _stage(finished, "gate")["result"]["decision"]
    for text in (md, html):
        assert "first champion" in text and "CO2" in text and "golden" in text
        assert "too weak to rank configs" in text
    assert decision.split(":")[0] in md


def test_rerun_is_idempotent(finished) -> None:
    before = json.loads((finished.run_dir / "state.json").read_text())
    run_workflow(finished.spec, finished.run_dir, **finished.kw)
    after = json.loads((finished.run_dir / "state.json").read_text())
    for s in STAGES:
        assert after["stages"][s]["finished"] == before["stages"][s]["finished"]
        assert after["stages"][s]["attempts"] == before["stages"][s]["attempts"]


def test_changed_config_needs_from_stage(finished) -> None:
    changed = load_workflow(finished.config, ["fine.n_trials=3"])
    with pytest.raises(WorkflowConfigChanged, match="--from-stage"):
        run_workflow(changed, finished.run_dir, **finished.kw)


def test_from_stage_reruns_that_stage_and_later_only(finished) -> None:
    from speechtune.track import ModelRegistry

    before = json.loads((finished.run_dir / "state.json").read_text())
    changed = load_workflow(finished.config, ["full.overrides={train.epochs: 2}"])
    state = run_workflow(changed, finished.run_dir, from_stage="full", **finished.kw)
    after = state.data
    for s in STAGES[:5]:
        assert after["stages"][s]["finished"] == before["stages"][s]["finished"], s
    for s in STAGES[5:]:
        assert (
            after["stages"][s]["status"] == "done"
            and after["stages"][s]["started"] >= before["stages"][s]["finished"]
        )
    assert after["stages"]["full"]["result"]["epochs"] == 2
    assert list(finished.run_dir.glob("full.superseded-*")), (
        "the earlier full training is kept aside"
    )
    assert after["cost_superseded"]["wall_s"] > 0
    # a retrained model is a new version, judged against the champion
    gate = after["stages"]["gate"]["result"]
    assert gate["registered_version"] == "2" and gate["champion"]["version"] == "1"
    reg = ModelRegistry(None, "asr-test", store_dir=finished.registry)
    assert reg.version_by_alias("challenger").version == "2"
    assert reg.champion().version == ("2" if gate["promoted"] else "1")


def test_golden_set_used_as_training_data_is_refused(finished) -> None:
    from speechtune.data import TestSplitError

    # Named as held-out data: refused by name before anything is read.
    conf = finished.tmp / "leaky-by-name"
    config = write_workflow(conf, finished.golden_manifest, finished.golden_manifest)
    with pytest.raises(TestSplitError, match="held-out"):
        run_workflow(load_workflow(config), conf / "run", **finished.kw)
    # Under an innocent name: the guard refuses to open the golden manifest before gating.
    innocent = finished.tmp / "set_b.jsonl"
    innocent.write_text(finished.golden_manifest.read_text())
    load_manifest(innocent)  # a valid manifest (its audio paths resolve from its own directory)
    conf = finished.tmp / "leaky"
    config = write_workflow(conf, innocent, innocent)
    with pytest.raises(GoldenSetAccessError, match="golden set"):
        run_workflow(load_workflow(config), conf / "run", **finished.kw)
    state = json.loads((conf / "run" / "state.json").read_text())
    assert (
        state["stages"]["proxy"]["status"] == "failed"
        and "golden" in state["stages"]["proxy"]["error"]
    )


def test_fine_stage_runs_the_fidelity_ladder_by_default(finished) -> None:
    conf = finished.tmp / "mf"
    ladder = {
        "fidelity": {
            "strategy": "asha",
            "eta": 2,
            "rungs": [
                {"name": "low", "overrides": {"train.epochs": 1}},
                {"name": "high", "overrides": {}},
            ],
        }
    }
    config = write_workflow(
        conf,
        finished.train_manifest,
        finished.golden_manifest,
        tuning_extra=ladder,
        fine={"n_trials": 4},  # multi_fidelity: auto, the default
        coarse={"n_trials": 2},
    )
    state = run_workflow(load_workflow(config), conf / "run", to_stage="fine", **finished.kw).data
    fine = state["stages"]["fine"]["result"]
    assert fine["multi_fidelity"] is True and fine["warm_started"] == 0
    import optuna

    study = optuna.load_study(study_name=fine["study"], storage=fine["storage"])
    rungs = {t.user_attrs.get("rung") for t in study.trials}
    assert rungs == {0, 1}, "trials ran at both rungs of the ladder"
    assert "fidelity" in study.user_attrs and state["stages"]["coarse"]["result"]["n_trials"] == 2


def test_full_stage_keeps_the_baseline_when_tuning_made_it_worse(finished) -> None:
    from speechtune.workflow import WorkflowState

    conf = finished.tmp / "worse"
    # dev loss separates these tiny models where WER (1.0 for all) cannot
    objective = {"objective": {"kind": "recipe", "metric": "dev_loss", "seeds": [0]}}
    config = write_workflow(
        conf, finished.train_manifest, finished.golden_manifest, tuning_extra=objective
    )
    spec = load_workflow(config)
    run_workflow(spec, conf / "run", to_stage="proxy", **finished.kw)
    # Stage 6 reads only the validation winner: make it a config that cannot learn (lr 1e-6).
    state = WorkflowState(conf / "run")
    for name in ("baseline", "coarse", "fine"):
        state.data["stages"][name] = {
            "number": STAGES.index(name) + 1,
            "status": "done",
            "result": {},
        }
    winner = {"name": "coarse-0", "params": {"optim.lr": 1e-6}}
    state.data["stages"]["validate"] = {
        "number": 5,
        "status": "done",
        "result": {"winner": "coarse-0", "candidates": [winner]},
    }
    state.save()
    full = run_workflow(spec, conf / "run", to_stage="full", **finished.kw).data["stages"]["full"][
        "result"
    ]
    assert (
        full["candidate"] == "baseline"
        and full["params"] == {}
        and full["tuned"]["params"] == {"optim.lr": 1e-6}
    )
    assert full["value"] == full["baseline"]["value"] < full["tuned"]["value"]
    assert full["model"].endswith("full_baseline/model.pt") and Path(full["model"]).is_file()
    assert "did worse at full fidelity" in full["warnings"][0]
    md = (conf / "run" / "report.md").read_text()
    assert "not sent to the gate" in md and "did worse at full fidelity" in md


def test_packed_workers_run_the_searches(finished, monkeypatch: pytest.MonkeyPatch) -> None:
    """--workers 2: the coarse and fine studies run in worker processes, on journal storage."""
    import optuna

    monkeypatch.setenv(
        "OMP_NUM_THREADS", "1"
    )  # two worker processes on two cores: one thread each

    from speechtune.tuning.study import make_storage

    conf = finished.tmp / "packed"
    config = write_workflow(
        conf,
        finished.train_manifest,
        finished.golden_manifest,
        coarse={"n_trials": 3},
        fine={"n_trials": 2},
    )
    state = run_workflow(
        load_workflow(config), conf / "run", to_stage="fine", workers=2, **finished.kw
    ).data
    for stage, own in (("coarse", 3), ("fine", 2)):
        result = state["stages"][stage]["result"]
        # each worker stops at the study-wide target, so two may overshoot it by one
        assert result["storage"].startswith("journal:///")
        assert own <= result["n_complete"] - result.get("warm_started", 0) <= own + 1
        logs = sorted((conf / "run" / stage / "workers").glob("worker-*.log"))
        assert len(logs) == 2, logs
        study = optuna.load_study(
            study_name=result["study"],
            storage=make_storage(result["storage"], conf / "run" / stage),
        )
        workers = {
            t.user_attrs.get("worker")
            for t in study.trials
            if "warm_start_from" not in t.user_attrs
        }
        assert len(workers) >= 1 and all(w and ":" in w for w in workers)
    # the fine study's stored spec is the narrowed space (what a worker rebuilt and searched)
    fine = state["stages"]["fine"]["result"]
    study = optuna.load_study(
        study_name=fine["study"], storage=make_storage(fine["storage"], conf / "run" / "fine")
    )
    stored = study.user_attrs["spec"]["space"]["optim.lr"]
    lo, hi = (
        float(x) for x in fine["narrowed"]["optim.lr"]["after"].split("]")[0].strip("[").split(",")
    )
    assert stored["low"] == pytest.approx(lo, rel=1e-5) and stored["high"] == pytest.approx(
        hi, rel=1e-5
    )
    for t in study.trials:
        assert stored["low"] <= t.params["optim.lr"] <= stored["high"]


def test_worker_processes_inherit_the_golden_guard(finished, tmp_path: Path) -> None:
    import os
    import subprocess

    from speechtune.data import guard_env

    code = f"from speechtune.data import guard_from_env\nwith guard_from_env('worker'):\n    open({str(finished.golden_manifest)!r}).read()\n"
    env = {**os.environ, **guard_env([(finished.golden_manifest, False)])}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        proc.returncode != 0
        and "GoldenSetAccessError" in proc.stderr
        and "golden set" in proc.stderr
    )
    free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr


def test_leakage_finds_shared_audio(finished) -> None:
    from speechtune.workflow._golden import leakage

    golden = load_manifest(finished.golden_manifest)
    train = load_manifest(finished.train_manifest)
    assert leakage(golden, train).ok
    leaked = leakage(golden, Manifest(list(train) + [golden[0]], "train", train.root))
    assert not leaked.ok and leaked.shared_audio == [golden[0].id]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
def test_config_errors_are_listed_together(tmp_path: Path) -> None:
    (tmp_path / "tuning.yaml").write_text("recipe: null\n")
    path = tmp_path / "wf.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "x",
                "tuning": "tuning.yaml",
                "coarse": {"n_trials": 0, "samplr": "random"},
                "fine": {"multi_fidelity": "yes"},
                "full": {
                    "overrides": {
                        "data.proxy_fraction": 0.5,
                        "data.dev_fraction": 0.2,
                        "train.epoch": 3,
                    }
                },
                "gating": {"metric": "bleu"},
                "extra": 1,
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        load_workflow(path)
    text = str(err.value)
    for needle in (
        "coarse.n_trials",
        "coarse.samplr",
        "did you mean: sampler",
        "full.overrides.data.proxy_fraction",
        "full.overrides.data.dev_fraction",
        "full.overrides.train.epoch",
        "gating.metric",
        "fine.multi_fidelity",
        "true, false or auto",
        "golden",
        "extra",
    ):
        assert needle in text, needle


def test_weak_proxy_warnings() -> None:
    from speechtune.workflow._stages import weak_proxy_warnings

    assert weak_proxy_warnings([0.3, 0.5, 0.95]) == []
    assert "too weak" in weak_proxy_warnings([0.97, 1.0, 1.0])[0]
    assert "within 0.001" in weak_proxy_warnings([0.41, 0.4105, 0.4101])[0]
    assert weak_proxy_warnings([]) == []
    assert weak_proxy_warnings([1.4, 2.0, 2.2], "dev_loss") == [], (
        "a loss is not a rate: no near-chance test"
    )


def test_stage_names_and_numbers() -> None:
    from speechtune.workflow import stage_index

    assert stage_index("coarse") == stage_index(3) == stage_index("3") == 2
    with pytest.raises(ValueError, match="did you mean: validate"):
        stage_index("validat")
