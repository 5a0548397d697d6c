"""Fine-tuning through the real recipe on generated speech: a tiny Transformer-CTC model is
trained for one epoch, then fine-tuned from (init_from with another vocabulary, frozen parts,
layer-wise learning rates, LoRA through peft) and its saved model reloaded and decoded."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from speechtune.config import LORA_TARGETS, ConfigError, RecipeConfig
from speechtune.data import PreparedData, Tokenizer, build_tokenizer, corpus_charset, load_audio
from speechtune.inference import Recognizer
from speechtune.models import (
    OUTPUT_MODULES,
    add_lora,
    build_model,
    has_lora,
    layer_of,
    lora_target_modules,
    merged_state_dict,
)
from speechtune.models._lora import _TARGETS
from speechtune.training import (
    CallbackReporter,
    layer_lr_groups,
    prepare_finetune,
    set_lr,
    train,
)
from speechtune.training._checkpoint import load_checkpoint
from tests.helpers.recipes import run_options, tiny_config

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="LoRA needs the `finetune` extra (peft)"
)

# Digits are new to the fine-tuned vocabulary: ids of shared letters move, new rows appear.
DIGITS_CHARSET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'0123456789"

ARCH = {
    "encoder": "transformer",
    "d_model": 32,
    "num_heads": 2,
    "ff_dim": 64,
    "num_layers": 2,
    "dropout": 0.0,
}


def _cfg(pretrained: Path | None = None, **sections: dict) -> RecipeConfig:
    """The tiny Transformer-CTC recipe, one epoch; ``pretrained``: fine-tune from that model."""
    model = {**ARCH, **sections.pop("model", {})}
    if pretrained is not None:
        model["init_from"] = str(pretrained)
    train_ = {"epochs": 1, "batch_size": 8, **sections.pop("train", {})}
    # Weight decay high enough that a frozen parameter it reached could not stay unchanged.
    optim = {"weight_decay": 0.1, **sections.pop("optim", {})}
    return tiny_config(model=model, train=train_, optim=optim, **sections)


@pytest.fixture(scope="module")
def small_data(synth_data: PreparedData) -> PreparedData:
    return PreparedData(
        train=synth_data.train[:48], dev=synth_data.dev[:8], report=synth_data.report
    )


@pytest.fixture(scope="module")
def pretrained(small_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.pt`` of one epoch on the default (letters) vocabulary."""
    tmp = tmp_path_factory.mktemp("pretrained")
    result = train(_cfg(), run_options(tmp, "pre"), data=small_data)
    assert result.status == "complete", result.reason
    return tmp / "pre" / "model.pt"


def _tokenizer(cfg: RecipeConfig, data: PreparedData) -> Tokenizer:
    """The tokenizer the recipe builds for ``cfg`` (training texts plus the whole charset)."""
    alphabet = " ".join(sorted(corpus_charset(cfg.data) - {" "}))
    return build_tokenizer("char", [u.text for u in data.train] + [alphabet])


def _fresh(cfg: RecipeConfig, tokenizer: Tokenizer) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)  # as the recipe seeds before building its model
    return build_model(cfg.model, cfg.features.n_mels, tokenizer.vocab_size)


def _pre_state(pretrained: Path) -> dict[str, torch.Tensor]:
    return Recognizer.load(pretrained).model.state_dict()


# ---------------------------------------------------------------- init_from


def test_init_from_maps_shared_tokens_and_copies_the_encoder(
    pretrained: Path, small_data: PreparedData
) -> None:
    cfg = _cfg(pretrained, data={"charset": DIGITS_CHARSET})
    tok = _tokenizer(cfg, small_data)
    model = _fresh(cfg, tok)
    prepare_finetune(model, cfg, tok)  # what the recipe does before its first step
    fresh = _fresh(cfg, tok).state_dict()
    source = Recognizer.load(pretrained)
    old = source.model.state_dict()
    old_ids = {s: i for i, s in enumerate(source.tokenizer.symbols)}
    new_symbols = tok.symbols
    assert len(new_symbols) == len(old_ids) + 10
    state = model.state_dict()
    for j, sym in enumerate(new_symbols):
        for name in ("ctc.proj.weight", "ctc.proj.bias"):
            if sym in old_ids:
                assert torch.equal(state[name][j], old[name][old_ids[sym]]), (sym, name)
            else:  # a digit: its fresh init, untouched
                assert torch.equal(state[name][j], fresh[name][j]), (sym, name)
    assert new_symbols.index("A") != old_ids["A"]  # the mapping moved rows, not copied them
    for name, value in state.items():
        if not name.startswith("ctc."):
            assert torch.equal(value, old[name]), name


def test_init_from_trains_and_logs_the_mapping(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(pretrained, data={"charset": DIGITS_CHARSET})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    log = (tmp_path / "run" / "train.log").read_text()
    assert "30 of 40 output tokens mapped from the pretrained vocabulary" in log, log
    rec = Recognizer.load(tmp_path / "run" / "model.pt")
    assert rec.tokenizer.vocab_size == 40 and rec.cfg.model.init_from == str(pretrained)


def test_init_from_a_run_dir_with_another_architecture_is_one_named_problem(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(pretrained.parent, model={"d_model": 48})  # the run dir holding model.pt
    with pytest.raises(ConfigError) as err:
        train(cfg, run_options(tmp_path), data=small_data)
    (problem,) = err.value.problems
    assert problem.key == "model.d_model" and problem.value == 48
    assert "32" in problem.rule and "init_from" in problem.rule and "\n" not in str(problem)


def test_architecture_keys_that_do_not_apply_may_differ(
    pretrained: Path, small_data: PreparedData
) -> None:
    # conv_kernel is a Conformer key: a Transformer model loads whatever it says.
    cfg = _cfg(pretrained, model={"conv_kernel": 7, "dropout": 0.2})
    tok = _tokenizer(cfg, small_data)
    prepare_finetune(_fresh(cfg, tok), cfg, tok)


def test_init_from_a_file_that_is_not_a_model_says_so(
    small_data: PreparedData, tmp_path: Path
) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_text("not a model")
    cfg = _cfg(bogus)
    tok = _tokenizer(cfg, small_data)
    with pytest.raises(ConfigError, match="is a text file, not a torch file") as err:
        prepare_finetune(_fresh(cfg, tok), cfg, tok)
    assert [p.key for p in err.value.problems] == ["model.init_from"]
    missing = _cfg(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not found"):
        prepare_finetune(_fresh(missing, tok), missing, tok)


# ---------------------------------------------------------------- freezing and lr decay


def test_frozen_parameters_stay_bit_identical(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(pretrained, finetune={"freeze_frontend": True, "freeze_layers": 1})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    before = _pre_state(pretrained)
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    frozen = [n for n in before if n.startswith(("subsampling.", "encoder.layers.0."))]
    trained_ = [n for n in before if n.startswith(("encoder.layers.1.", "ctc."))]
    assert frozen and trained_
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
    for name in trained_:
        assert not torch.equal(after[name], before[name]), name


def test_layer_lr_decay_groups_and_rates() -> None:
    cfg = _cfg()
    model = build_model(cfg.model, cfg.features.n_mels, 30)
    groups = layer_lr_groups(model, num_layers=2, decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 0.01)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    expected = {None: 0.01, -1: 0.01 * 0.5**3, 0: 0.01 * 0.5**2, 1: 0.01 * 0.5}
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(expected[layer_of(name)]), name
    assert opt.param_groups[0]["lr"] == 0.01  # the full rate first: the epoch line logs it
    assert len(opt.param_groups) == 4
    assert len(layer_lr_groups(model, 2, 1.0)) == 1  # off: one group, as without fine-tuning


def test_layer_lr_decay_scales_the_schedule_in_training(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(
        pretrained,
        finetune={"layer_lr_decay": 0.5, "freeze_frontend": True},
        schedule={"name": "warmup_cosine", "warmup_steps": 2},
    )
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    groups = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]["param_groups"]
    full = groups[0]["lr"]
    assert full == pytest.approx(result.history[-1]["lr"])
    # the front end is frozen: no group at decay**3
    assert sorted(g["lr"] / full for g in groups) == pytest.approx([0.25, 0.5, 1.0])


def test_layer_of_names() -> None:
    assert layer_of("subsampling.conv.0.weight") == -1
    assert layer_of("encoder.layers.3.attn.body.attn.q_proj.lora_A.default.weight") == 3
    assert layer_of("encoder.rnn.weight_hh_l2_reverse") == 2
    assert layer_of("encoder.final_norm.weight") is None
    assert layer_of("decoder.layers.0.ff.body.w1.weight") is None


# ---------------------------------------------------------------- LoRA


@needs_peft
def test_lora_trains_adapters_only_and_saves_a_merged_model(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(pretrained, finetune={"lora_rank": 4, "lora_alpha": 8.0})
    result = train(cfg, run_options(tmp_path), data=small_data)
    assert result.status == "complete", result.reason
    run = tmp_path / "run"
    before = _pre_state(pretrained)
    after = load_checkpoint(run / "last.pt")["model"]
    adapters = [n for n in after if ".lora_" in n]
    assert len(adapters) == 2 * 2 * 2  # A and B, q and v, 2 layers
    assert all(after[n].abs().sum() > 0 for n in adapters if ".lora_B." in n)  # B starts at 0
    for name, value in after.items():
        base = name.replace(".base_layer.", ".")
        if ".lora_" in name or base.rpartition(".")[0] in OUTPUT_MODULES:
            continue
        assert torch.equal(value, before[base]), name
    assert not torch.equal(after["ctc.proj.weight"], before["ctc.proj.weight"])

    # The LoRA model as it ended training, against model.pt as evaluate/transcribe load it.
    saved = Recognizer.load(run / "model.pt")
    assert not has_lora(saved.model)
    q = "encoder.layers.0.attn.body.attn.q_proj.weight"
    assert not torch.equal(saved.model.state_dict()[q], before[q])  # the adapter is merged in
    lora_model = _fresh(cfg, saved.tokenizer)
    prepare_finetune(lora_model, cfg, saved.tokenizer)
    lora_model.load_state_dict(after)
    live = Recognizer(saved.cfg, saved.tokenizer, saved.cmvn, lora_model).eval()
    utts = list(small_data.dev)[:4]
    waves = [load_audio(small_data.dev, u, cfg.features.sample_rate) for u in utts]
    assert saved.transcribe(waves) == live.transcribe(waves)
    wav = torch.from_numpy(waves[0])[None]
    feats, lens = saved.frontend(wav, torch.tensor([wav.size(1)]))
    with torch.no_grad():
        probs = [
            r.model.ctc.log_probs(r.model.encode(r.normalize(feats), lens)[0])
            for r in (saved, live)
        ]
    torch.testing.assert_close(probs[0], probs[1], rtol=1e-4, atol=1e-4)
    # merging leaves the live model's adapters in place
    assert has_lora(lora_model) and set(merged_state_dict(lora_model)) == set(before)


@needs_peft
def test_a_lora_run_with_layer_rates_resumes_exactly(
    pretrained: Path, small_data: PreparedData, tmp_path: Path
) -> None:
    cfg = _cfg(
        pretrained,
        finetune={"lora_rank": 2, "layer_lr_decay": 0.7, "lora_dropout": 0.1},
        train={"epochs": 2},
    )
    full = train(cfg, run_options(tmp_path, "full"), data=small_data)
    train(cfg, run_options(tmp_path, "part"), CallbackReporter(lambda e, m: True), small_data)
    resumed = train(cfg, run_options(tmp_path, "part", resume=True), data=small_data)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for a, b in zip(full.history, resumed.history):
        for key in ("train_loss", "dev_loss", "grad_norm", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (a["epoch"], key)


def test_lora_targets() -> None:
    assert set(_TARGETS) == set(LORA_TARGETS)
    cfg = _cfg(model={"head": "ctc_attention", "decoder_layers": 1})
    model = build_model(cfg.model, cfg.features.n_mels, 30)
    qv = lora_target_modules(model, "attention_qv")
    assert "encoder.layers.0.attn.body.attn.q_proj" in qv
    assert "decoder.layers.0.cross_attn.body.attn.v_proj" in qv
    assert len(qv) == 2 * 2 + 2 * 2  # q, v of 2 encoder layers and of 2 decoder attentions
    assert len(lora_target_modules(model, "attention")) == 2 * len(qv)
    every = lora_target_modules(model, "all_linear")
    assert "encoder.layers.1.ff.body.w1" in every
    assert not {"subsampling.proj", *OUTPUT_MODULES} & set(every)


def test_lora_without_peft_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    cfg = _cfg(finetune={"lora_rank": 4})
    model = build_model(cfg.model, cfg.features.n_mels, 30)
    with pytest.raises(ImportError, match=r"speechtune\[finetune\]") as err:
        add_lora(model, cfg.finetune)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"finetune": {"layer_lr_decay": 0.0}}, "finetune.layer_lr_decay"),
        ({"finetune": {"layer_lr_decay": 1.5}}, "finetune.layer_lr_decay"),
        ({"finetune": {"freeze_layers": -1}}, "finetune.freeze_layers"),
        ({"finetune": {"freeze_layers": 3}}, "finetune.freeze_layers"),
        ({"finetune": {"freeze_frontend": "yes"}}, "finetune.freeze_frontend"),
        ({"finetune": {"lora_rank": -2}}, "finetune.lora_rank"),
        ({"finetune": {"lora_alpha": 0}}, "finetune.lora_alpha"),
        ({"finetune": {"lora_dropout": 1.0}}, "finetune.lora_dropout"),
        ({"finetune": {"lora_targets": "mlp"}}, "finetune.lora_targets"),
        (
            {"model": {"encoder": "lstm"}, "finetune": {"lora_rank": 4}},
            "finetune.lora_targets",
        ),
        ({"model": {"init_from": 3}}, "model.init_from"),
    ],
)
def test_bad_finetune_values_name_their_key(sections: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(**sections)
    assert [p.key for p in err.value.problems] == [key]
