"""Intermediate CTC (``model.interctc_weight``, ``model.interctc_layer``).

A tapped block's output must be exactly what a shallower encoder with the same weights
outputs, and the training loss the stated mix of the final and intermediate CTC losses.
"""

from __future__ import annotations

import pytest
import torch

from speechtune.config import ConfigError, config_from_dict
from speechtune.models import build_model
from speechtune.models._asr import interctc_taps
from speechtune.models._conformer import ConformerEncoder
from speechtune.models._transformer import TransformerEncoder
from tests.models.test_models import FEATS, VOCAB, batch, tiny_cfg


def _shallow_copy(deep: torch.nn.Module, shallow: torch.nn.Module) -> None:
    """Load the first blocks (and norms) of ``deep`` into ``shallow``; strict on shallow's keys."""
    state = deep.state_dict()
    shallow.load_state_dict({k: state[k] for k in shallow.state_dict()})


@pytest.mark.parametrize("encoder", ["conformer", "transformer"])
def test_tapped_output_equals_a_shallower_encoder(encoder: str) -> None:
    torch.manual_seed(0)
    args = dict(d_model=16, num_heads=2, ff_dim=32, dropout=0.0)
    deep: torch.nn.Module
    shallow: torch.nn.Module
    if encoder == "conformer":
        deep = ConformerEncoder(num_layers=4, conv_kernel=5, **args)  # type: ignore[arg-type]
        shallow = ConformerEncoder(num_layers=2, conv_kernel=5, **args)  # type: ignore[arg-type]
    else:
        deep = TransformerEncoder(num_layers=4, **args)  # type: ignore[arg-type]
        shallow = TransformerEncoder(num_layers=2, **args)  # type: ignore[arg-type]
    _shallow_copy(deep, shallow)
    deep.eval(), shallow.eval()
    x = torch.randn(3, 11, 16)
    lens = torch.tensor([11, 7, 4])
    out, out_lens, tapped = deep.forward_taps(x, lens, (2,))
    assert len(tapped) == 1 and torch.equal(out_lens, lens)
    want, _ = shallow(x, lens)
    torch.testing.assert_close(tapped[0], want)
    assert not torch.allclose(tapped[0], out)  # the two blocks above do change it
    plain, _ = deep(x, lens)
    assert torch.equal(plain, out)  # tapping does not change the final output
    assert bool((tapped[0][1, 7:] == 0).all())  # padded frames zeroed like the output's


def test_loss_mixes_final_and_intermediate_ctc() -> None:
    gen = torch.Generator().manual_seed(1)
    feats, feat_lens, targets, target_lens = batch(gen, [40, 33], [5, 3])
    torch.manual_seed(0)
    model = build_model(tiny_cfg(num_layers=4, dropout=0.0, interctc_weight=0.3), FEATS, VOCAB)
    assert model.interctc_taps == (2,)
    out = model(feats, feat_lens, targets, target_lens)
    x, lens = model.subsampling(feats, feat_lens)
    assert isinstance(model.encoder, ConformerEncoder)
    enc, enc_lens, (mid,) = model.encoder.forward_taps(x, lens, (2,))
    final = model.ctc.loss(enc, enc_lens, targets, target_lens)
    inter = model.ctc.loss(mid, enc_lens, targets, target_lens)
    torch.testing.assert_close(out["ctc_loss"], 0.7 * final + 0.3 * inter)
    # the last layer's CTC loss alone, what a study compares configs of other weights by
    torch.testing.assert_close(out["final_ctc_loss"], final)
    assert float((inter - final).detach().abs()) > 1e-3  # the mix is not trivially equal to either
    out["loss"].backward()
    # The blocks below the tap get gradient from both losses, the ones above from one.
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    off = build_model(tiny_cfg(num_layers=4, dropout=0.0), FEATS, VOCAB)
    off.load_state_dict(model.state_dict())
    torch.testing.assert_close(off(feats, feat_lens, targets, target_lens)["ctc_loss"], final)


def test_tap_placement_and_its_errors() -> None:
    assert interctc_taps(tiny_cfg(num_layers=6, interctc_weight=0.5)) == (3,)
    assert interctc_taps(tiny_cfg(num_layers=6, interctc_weight=0.5, interctc_layer=5)) == (5,)
    assert interctc_taps(tiny_cfg(num_layers=6, interctc_layer=5)) == ()  # weight 0: off
    with pytest.raises(ValueError, match="model.interctc_layer=4 must name a block below"):
        interctc_taps(tiny_cfg(num_layers=4, interctc_weight=0.3, interctc_layer=4))
    with pytest.warns(UserWarning, match="no effect on the 'blstm' encoder"):
        assert interctc_taps(tiny_cfg(encoder="blstm", interctc_weight=0.3)) == ()

    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"num_layers": 1, "interctc_weight": 0.3}})
    problems = {p.key: p for p in err.value.problems}
    assert set(problems) == {"model.interctc_layer"}
    assert "needs >= 2 layers" in problems["model.interctc_layer"].rule
    with pytest.raises(ConfigError, match="model.interctc_weight"):
        config_from_dict({"model": {"interctc_weight": 1.0}})
    # An RNN encoder with the weight set only warns when built: a tuner's trial goes on.
    config_from_dict({"model": {"encoder": "blstm", "num_layers": 1, "interctc_weight": 0.3}})
