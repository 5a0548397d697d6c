"""Relative positional self-attention of the Conformer (``model.pos_enc: rel``).

The rel_shift indexing and the whole attention are checked against slow loops written from the
formula of Dai et al. (2019); the encoder against padding, a few training steps, the config
loader, and a saved model that loads, decodes and exports again.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from speechtune.config import ConfigError, ModelConfig, config_from_dict, parse_overrides
from speechtune.data._tokenizer import CharTokenizer
from speechtune.features import GlobalCMVN
from speechtune.inference import Recognizer, export_model, load_exported, pad_waves
from speechtune.inference._export import VERIFY_ATOL, _eager_log_probs
from speechtune.models import build_model, deepnorm_beta
from speechtune.models._conformer import ConformerEncoder
from speechtune.models._layers import (
    RelPositionSelfAttention,
    rel_shift,
    relative_sinusoidal_encoding,
    sinusoidal_encoding,
    valid_mask,
)
from tests.models.test_models import FEATS, VOCAB, tiny_cfg


def rel_cfg(**over: object) -> ModelConfig:
    """test_models' tiny Conformer with relative positions."""
    return tiny_cfg(**{"pos_enc": "rel", **over})


def slow_offset_embedding(offset: int, d_model: int) -> torch.Tensor:
    """``pe(r)``: sin/cos of ``r / 10000^(2k/d)`` interleaved, straight from the formula."""
    pe = torch.zeros(d_model, dtype=torch.float64)
    for c in range(d_model):
        angle = offset / 10000.0 ** ((c - c % 2) / d_model)
        pe[c] = math.sin(angle) if c % 2 == 0 else math.cos(angle)
    return pe


@pytest.mark.parametrize("t", [1, 2, 5, 9])
def test_rel_shift_matches_a_loop(t: int) -> None:
    gen = torch.Generator().manual_seed(t)
    raw = torch.randn(2, 3, t, 2 * t - 1, generator=gen)
    shifted = rel_shift(raw)
    assert shifted.shape == (2, 3, t, t)
    for i in range(t):
        for j in range(t):
            # column k of raw holds offset t-1-k; [i, j] must hold offset i-j
            assert torch.equal(shifted[..., i, j], raw[..., i, t - 1 - (i - j)])


@pytest.mark.parametrize("d_model", [8, 7])
def test_offset_embedding_depends_on_the_offset_alone(d_model: int) -> None:
    short = relative_sinusoidal_encoding(4, d_model, torch.device("cpu"))
    long = relative_sinusoidal_encoding(9, d_model, torch.device("cpu"))
    assert short.shape == (7, d_model) and long.shape == (17, d_model)
    for k in range(7):
        offset = 3 - k
        expected = slow_offset_embedding(offset, d_model).float()
        torch.testing.assert_close(short[k], expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(long[8 - offset], short[k], atol=0, rtol=0)
    # non-negative offsets are the absolute encoding of that position
    absolute = sinusoidal_encoding(4, d_model, torch.device("cpu"))
    torch.testing.assert_close(short[:4].flip(0), absolute, atol=1e-6, rtol=0)


def test_attention_matches_the_formula_in_a_slow_loop() -> None:
    torch.manual_seed(0)
    d, h, t = 8, 2, 6
    dh = d // h
    attn = RelPositionSelfAttention(d, h, dropout=0.0).eval()
    x = torch.randn(2, t, d, generator=torch.Generator().manual_seed(1))
    lengths = [6, 4]
    valid = valid_mask(torch.tensor(lengths), t)
    with torch.no_grad():
        got = attn(x, valid, relative_sinusoidal_encoding(t, d, x.device))

    m = attn.attn
    with torch.no_grad():
        q, k, v = (lin(x).double() for lin in (m.q_proj, m.k_proj, m.v_proj))
    w_pos = attn.pos_proj.weight.detach().double()
    u, vb = attn.pos_bias_u.detach().double(), attn.pos_bias_v.detach().double()
    expected = torch.zeros(2, t, d, dtype=torch.float64)
    for b in range(2):
        for i in range(t):
            heads = []
            for hd in range(h):
                cols = slice(hd * dh, (hd + 1) * dh)
                logits = torch.full((t,), -math.inf, dtype=torch.float64)
                for j in range(lengths[b]):
                    p = (w_pos @ slow_offset_embedding(i - j, d))[cols]
                    content = (q[b, i, cols] + u[hd]) @ k[b, j, cols]
                    position = (q[b, i, cols] + vb[hd]) @ p
                    logits[j] = (content + position) / math.sqrt(dh)
                heads.append(logits.softmax(0) @ v[b, :, cols])
            expected[b, i] = torch.cat(heads)
    with torch.no_grad():
        expected = m.out_proj(expected.float())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_position_scores_depend_on_the_signed_offset() -> None:
    torch.manual_seed(0)
    d, t = 16, 7
    attn = RelPositionSelfAttention(d, 4, dropout=0.0).eval()
    q = torch.randn(1, 4, 1, d // 4).expand(1, 4, t, d // 4)  # one query at every position
    with torch.no_grad():
        scores = attn.position_scores(q, relative_sinusoidal_encoding(t, d, q.device))
    # Toeplitz: a score is a function of i - j, whatever i is ...
    for i in range(t - 1):
        for j in range(t - 1):
            torch.testing.assert_close(scores[..., i + 1, j + 1], scores[..., i, j])
    # ... and left is not right: offset +2 and -2 score differently.
    assert not torch.allclose(scores[..., 3, 1], scores[..., 1, 3], atol=1e-3)


@pytest.mark.parametrize("init", ["default", "deepnorm"])
def test_padding_invariance(init: str) -> None:
    torch.manual_seed(0)
    model = build_model(rel_cfg(init=init), FEATS, VOCAB).eval()
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(1, 30, FEATS, generator=gen)
    longer = torch.randn(1, 71, FEATS, generator=gen)
    padded = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 41), value=3.0), longer])
    with torch.no_grad():
        alone, alone_lens = model.encode(short, torch.tensor([30]))
        both, both_lens = model.encode(padded, torch.tensor([30, 71]))
    n = int(alone_lens[0])
    assert int(both_lens[0]) == n and both.size(1) > n
    torch.testing.assert_close(both[0, :n], alone[0], atol=1e-5, rtol=0)
    assert torch.all(both[0, n:] == 0)


def test_rel_model_layout_and_deepnorm_init() -> None:
    torch.manual_seed(0)
    abs_model = build_model(rel_cfg(pos_enc="abs"), FEATS, VOCAB)
    rel_model = build_model(rel_cfg(), FEATS, VOCAB)
    # per layer: the offset projection (d x d, no bias) and the two biases u, v (heads x d/h)
    d, layers = 16, 2
    extra = layers * (d * d + 2 * d)
    assert rel_model.num_parameters() == abs_model.num_parameters() + extra
    assert not any("pos_bias" in k for k in abs_model.state_dict())
    body = rel_model.encoder.layers[0].attn.body
    assert isinstance(body, RelPositionSelfAttention) and body.pos_bias_u.shape == (2, 8)

    cfg = rel_cfg(num_layers=6, d_model=32, ff_dim=64, init="deepnorm")
    deep = build_model(cfg, FEATS, VOCAB).encoder.layers[0].attn.body.attn
    xavier_std = (2 / (32 + 32)) ** 0.5
    assert deep.v_proj.weight.std().item() == pytest.approx(
        deepnorm_beta(6) * xavier_std, rel=0.15
    )


def test_trains_a_few_steps() -> None:
    torch.manual_seed(0)
    model = build_model(rel_cfg(d_model=32, ff_dim=64, dropout=0.0), FEATS, VOCAB)
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 48, FEATS, generator=gen)
    lens = torch.tensor([48, 40])
    targets = torch.tensor([[3, 1, 4, 1, 5], [2, 6, 5, 3, -1]])
    tlens = torch.tensor([5, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(feats, lens, targets, tlens)["loss"]
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.1 * losses[0], losses  # 15.7 -> 0.10 measured


def test_config_accepts_rel_and_names_the_key_of_a_wrong_value() -> None:
    assert ModelConfig().pos_enc == "abs"
    assert config_from_dict({}).model.pos_enc == "abs"
    assert config_from_dict(parse_overrides(["model.pos_enc=rel"])).model.pos_enc == "rel"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"pos_enc": "relative"}})
    problems = {p.key: p for p in info.value.problems}
    assert set(problems) == {"model.pos_enc"}
    assert "abs" in problems["model.pos_enc"].rule and "rel" in problems["model.pos_enc"].rule
    assert problems["model.pos_enc"].value == "relative"


def test_builders_refuse_or_flag_what_they_do_not_implement() -> None:
    with pytest.raises(ValueError, match="model.pos_enc='relative'.*abs"):
        build_model(rel_cfg(pos_enc="relative"), FEATS, VOCAB)
    with pytest.raises(ValueError, match="model.pos_enc"):
        ConformerEncoder(16, 1, 2, 32, 5, 0.0, pos_enc="alibi")
    with pytest.warns(UserWarning, match="no effect on the 'transformer'"):
        build_model(rel_cfg(encoder="transformer"), FEATS, VOCAB)


HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


@pytest.mark.parametrize(
    "fmt",
    [
        "torchscript",
        pytest.param(
            "onnx", marks=pytest.mark.skipif(not HAVE_ONNX, reason="onnx/onnxruntime missing")
        ),
    ],
)
def test_saved_rel_model_loads_decodes_and_exports(tmp_path: Path, fmt: str) -> None:
    cfg = config_from_dict(
        {
            "features": {"n_mels": 40},
            "model": {
                "d_model": 32,
                "num_layers": 2,
                "num_heads": 4,
                "ff_dim": 64,
                "conv_kernel": 7,
                "pos_enc": "rel",
            },
        }
    )
    torch.manual_seed(0)
    tok = CharTokenizer(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ '"))
    cmvn = GlobalCMVN.fit([torch.randn(200, 40) * 3 - 5])
    rec = Recognizer(cfg, tok, cmvn, build_model(cfg.model, 40, tok.vocab_size)).eval()
    checkpoint = tmp_path / "model.pt"
    torch.save(rec.to_payload(), checkpoint)

    again = Recognizer.load(checkpoint)
    assert again.cfg.model.pos_enc == "rel"
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16000, 9000, 5000)]
    wav, lens = pad_waves(waves, "cpu")
    ref, ref_lens = _eager_log_probs(rec, wav, lens)
    got, got_lens = _eager_log_probs(again, wav, lens)
    assert torch.equal(ref_lens, got_lens) and torch.equal(ref, got)
    texts = again.transcribe(waves)
    assert texts == rec.transcribe(waves) and all(t.strip() for t in texts)

    # export_model itself verifies the artefact on other lengths and batch sizes
    exported = load_exported(export_model(checkpoint, tmp_path / "out", fmt))
    out, out_lens = exported.log_probs(wav, lens)
    assert torch.equal(ref_lens, out_lens.long())
    assert float((ref - out).abs().max()) <= VERIFY_ATOL
    assert exported.transcribe(waves) == texts
