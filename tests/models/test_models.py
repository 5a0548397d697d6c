"""Model tests: every encoder x head, padding invariance, subsampling, DeepNorm, overfitting."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechtune.config import ModelConfig
from speechtune.models import (
    ENCODER_BUILDERS,
    Conv2dSubsampling,
    build_model,
    deepnorm_beta,
)

ENCODERS = sorted(ENCODER_BUILDERS)
HEADS = ("ctc", "ctc_attention")
FEATS, VOCAB = 12, 10


def tiny_cfg(**over: object) -> ModelConfig:
    base = ModelConfig(
        encoder="conformer",
        d_model=16,
        num_layers=2,
        num_heads=2,
        ff_dim=32,
        conv_kernel=5,
        block_ops="mhsa,dconv7",  # the searched encoder's blocks (others ignore it)
        dropout=0.1,
        subsampling=4,
        head="ctc",
    )
    return dataclasses.replace(base, **over)


def batch(gen: torch.Generator, lens: list[int], tgt_lens: list[int]):
    feats = torch.randn(len(lens), max(lens), FEATS, generator=gen)
    targets = torch.full((len(lens), max(tgt_lens)), -1, dtype=torch.long)
    for b, n in enumerate(tgt_lens):
        targets[b, :n] = torch.randint(1, VOCAB - 1, (n,), generator=gen)
    return feats, torch.tensor(lens), targets, torch.tensor(tgt_lens)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_backward(encoder: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(encoder=encoder, head=head), FEATS, VOCAB)
    feats, lens, targets, tlens = batch(torch.Generator().manual_seed(1), [40, 33, 25], [5, 3, 2])
    enc, enc_lens = model.encode(feats, lens)
    expected = model.subsampling.output_lengths(lens)
    assert enc.shape == (3, int(expected.max()), 16)
    assert torch.equal(enc_lens, expected)
    assert torch.all(enc[1, enc_lens[1] :] == 0)

    out = model(feats, lens, targets, tlens)
    assert set(out) == {"loss", "ctc_loss", "att_loss", "final_ctc_loss"}
    assert torch.equal(out["final_ctc_loss"], out["ctc_loss"])  # no intermediate CTC here
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    if head == "ctc":
        assert out["att_loss"] is None
        assert torch.equal(out["loss"], out["ctc_loss"])
    else:
        w = model.cfg.ctc_weight
        assert torch.allclose(out["loss"], w * out["ctc_loss"] + (1 - w) * out["att_loss"])
    out["loss"].backward()
    first = model.subsampling.conv[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_invariance(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(encoder=encoder), FEATS, VOCAB).eval()
    gen = torch.Generator().manual_seed(2)
    short = torch.randn(1, 30, FEATS, generator=gen)
    longer = torch.randn(1, 47, FEATS, generator=gen)
    padded = torch.cat([torch.nn.functional.pad(short, (0, 0, 0, 17), value=3.0), longer])
    with torch.no_grad():
        alone, alone_lens = model.encode(short, torch.tensor([30]))
        both, both_lens = model.encode(padded, torch.tensor([30, 47]))
    n = int(alone_lens[0])
    assert int(both_lens[0]) == n and both.size(1) > n
    torch.testing.assert_close(both[0, :n], alone[0], atol=1e-5, rtol=0)


def test_padding_invariance_conformer_even_kernel() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(conv_kernel=4), FEATS, VOCAB).eval()
    x = torch.randn(2, 45, FEATS, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        alone, lens = model.encode(x[:1, :26], torch.tensor([26]))
        both, _ = model.encode(x, torch.tensor([26, 45]))
    torch.testing.assert_close(both[0, : int(lens[0])], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("factor", "expected"), [(1, 100), (2, 49), (4, 24), (6, 15), (8, 11)])
def test_subsampling_lengths(factor: int, expected: int) -> None:
    torch.manual_seed(0)
    feats = 20  # factor 8 needs at least 15 feature bins
    sub = Conv2dSubsampling(feats, 8, factor)
    lens = torch.tensor([100, 61, sub.min_input_frames])
    y, out_lens = sub(torch.randn(3, 100, feats), lens)
    assert out_lens.tolist()[0] == expected
    assert out_lens.tolist()[2] == 1
    assert y.shape == (3, expected, 8)
    # Each utterance alone gives exactly its reported length, and the same valid frames.
    for b, n in enumerate(lens.tolist()):
        x = torch.randn(1, n, feats, generator=torch.Generator().manual_seed(b))
        padded = torch.cat([x, torch.randn(1, 100 - n, feats)], dim=1)
        y1, l1 = sub(x, torch.tensor([n]))
        y2, l2 = sub(padded, torch.tensor([n]))
        assert y1.size(1) == int(l1) == int(l2)
        torch.testing.assert_close(y2[0, : int(l2)], y1[0])
        assert torch.all(y2[0, int(l2) :] == 0)
    with pytest.raises(ValueError, match="needs at least"):
        sub(torch.randn(1, 100, feats), torch.tensor([sub.min_input_frames - 1]))
    with pytest.raises(ValueError, match="feature bins"):
        Conv2dSubsampling(12, 8, 8)


@pytest.mark.parametrize("encoder", ["transformer", "conformer"])
def test_deepnorm_init_scales_and_trains(encoder: str) -> None:
    cfg = tiny_cfg(encoder=encoder, num_layers=6, d_model=32, ff_dim=64, dropout=0.0)
    torch.manual_seed(0)
    default = build_model(cfg, FEATS, VOCAB)
    torch.manual_seed(0)
    deep = build_model(dataclasses.replace(cfg, init="deepnorm"), FEATS, VOCAB)
    attn_d = default.encoder.layers[0].attn.body.attn
    attn_n = deep.encoder.layers[0].attn.body.attn
    beta = deepnorm_beta(6)
    xavier_std = (2 / (32 + 32)) ** 0.5  # Xavier-normal std for a 32x32 weight, gain 1
    assert attn_n.v_proj.weight.std().item() == pytest.approx(beta * xavier_std, rel=0.15)
    assert attn_n.out_proj.weight.std().item() == pytest.approx(beta * xavier_std, rel=0.15)
    assert attn_n.q_proj.weight.std().item() == pytest.approx(xavier_std, rel=0.15)
    assert attn_n.v_proj.weight.std() < 0.7 * attn_d.v_proj.weight.std()
    assert deep.encoder.layers[0].attn.alpha == pytest.approx(12**0.25)

    feats, lens, targets, tlens = batch(torch.Generator().manual_seed(3), [40, 32], [4, 3])
    opt = torch.optim.Adam(deep.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in deep.parameters()]
    loss = deep(feats, lens, targets, tlens)["loss"]
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, deep.parameters()))
    assert torch.isfinite(deep(feats, lens, targets, tlens)["loss"])


def test_deepnorm_is_a_noop_with_warning_for_rnns() -> None:
    with pytest.warns(UserWarning, match="no effect"):
        build_model(tiny_cfg(encoder="lstm", init="deepnorm"), FEATS, VOCAB)


@pytest.mark.parametrize("encoder", ["blstm", "conformer"])
def test_overfits_two_sequences(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(encoder=encoder, d_model=32, ff_dim=64, dropout=0.0), FEATS, VOCAB
    )
    feats, lens, targets, tlens = batch(torch.Generator().manual_seed(4), [48, 40], [5, 4])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss = model(feats, lens, targets, tlens)["ctc_loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.15 * first  # about 0.05 (blstm) and 0.002 (conformer) measured


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="expected one of.*conformer"):
        build_model(tiny_cfg(encoder="wavenet"), FEATS, VOCAB)
    with pytest.raises(ValueError, match="divisible"):
        build_model(tiny_cfg(encoder="transformer", num_heads=3), FEATS, VOCAB)
    model = build_model(tiny_cfg(head="ctc_attention"), FEATS, VOCAB)
    feats, lens, targets, tlens = batch(torch.Generator().manual_seed(5), [30], [3])
    targets[0, 1] = VOCAB - 1  # sos/eos is not a valid target
    with pytest.raises(ValueError, match="utterance 0, position 1"):
        model(feats, lens, targets, tlens)
    ctc_only = build_model(tiny_cfg(), FEATS, VOCAB)
    with pytest.raises(ValueError, match="ctc_attention"):
        ctc_only.decode(feats, lens, method="beam")
    with pytest.raises(ValueError, match="greedy"):
        ctc_only.decode(feats, lens, method="viterbi")
