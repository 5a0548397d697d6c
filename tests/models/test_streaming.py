"""The streaming Conformer (``model.chunk_ms > 0``): chunk masks, causal convolution, chunk-by-chunk
encoding against the masked full-sequence forward, dynamic chunks, and the config keys.

Chunk-by-chunk decoding itself lives in :mod:`speechtune.inference`; it is used here as the
driver of the encoder's ``forward_chunk`` (subsampling cache included), since that is the path
a stream takes.
"""

from __future__ import annotations

import pytest
import torch

from speechtune.config import ConfigError, ModelConfig, config_from_dict, parse_overrides
from speechtune.inference import StreamingDecoder
from speechtune.models import ASRModel, build_model
from speechtune.models._conformer import ConvolutionModule
from speechtune.models._layers import valid_mask
from speechtune.models._streaming import (
    StreamingSpec,
    attention_mask,
    chunk_frames,
    chunk_mask,
    dynamic_chunk,
)
from tests.models.test_models import FEATS, VOCAB, tiny_cfg

HOP_MS = 10.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def streaming_model(seed: int = 0, **over: object) -> ASRModel:
    """test_models' tiny Conformer with streaming keys, in eval mode."""
    torch.manual_seed(seed)
    return build_model(tiny_cfg(**over), FEATS, VOCAB, hop_ms=HOP_MS).eval()


def stream(
    model: ASRModel, feats: torch.Tensor, block_sizes: tuple[int, ...] = (7,)
) -> tuple[torch.Tensor, list[int]]:
    """Feed ``feats [T, F]`` in blocks cycling through ``block_sizes``; returns the encoder
    output of every chunk, concatenated, and the tokens."""
    decoder = StreamingDecoder(model, keep_encoder_output=True)
    tokens: list[int] = []
    start, k = 0, 0
    while start < feats.size(0):
        size = block_sizes[k % len(block_sizes)]
        tokens += decoder.accept(feats[start : start + size])
        start, k = start + size, k + 1
    tokens += decoder.finish()
    return torch.cat(decoder.encoded, dim=1), tokens


# ------------------------------------------------------------------------ full context unchanged

# Measured with the code before streaming existed (same seeds and shapes): chunk_ms 0 must keep
# the training loss (dropout included) and the encoder output. The tolerance allows for float
# differences between platforms, not for a changed computation.
GOLDEN_FULL_CONTEXT = {
    "abs": (18.906740188598633, [-0.571368, -2.210145, 0.988255, 1.420611, -0.685549, -0.484143]),
    "rel": (21.911727905273438, [0.379862, -2.11005, 1.957678, 0.107345, -0.073135, 0.197844]),
}


@pytest.mark.parametrize("pos_enc", ["abs", "rel"])
def test_chunk_ms_0_keeps_the_full_context_model(pos_enc: str) -> None:
    torch.manual_seed(0)
    # no hop_ms: a full-context config does not need one, as before streaming existed
    model = build_model(tiny_cfg(pos_enc=pos_enc), FEATS, VOCAB)
    assert not model.streaming.enabled
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 60, FEATS, generator=gen)
    lens = torch.tensor([60, 41])
    targets = torch.randint(1, 9, (2, 4), generator=gen)
    torch.manual_seed(5)
    loss = model(x, lens, targets, torch.tensor([4, 3]))["loss"].item()
    model.eval()
    enc, _ = model.encode(x, lens)
    golden_loss, golden_values = GOLDEN_FULL_CONTEXT[pos_enc]
    assert loss == pytest.approx(golden_loss, abs=1e-5)
    torch.testing.assert_close(enc[1, 3, :6], torch.tensor(golden_values), atol=1e-5, rtol=0)
    # and structurally: no attention mask beyond padding, 'same' convolutions
    assert model.encoder.attention_mask(valid_mask(lens, 14)) is None
    assert all(layer.conv.body.pad == (2, 2) for layer in model.encoder.layers)


# -------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(
    ("length", "chunk", "left"), [(9, 2, -1), (9, 2, 0), (10, 3, 1), (5, 8, 2)]
)
def test_chunk_mask_follows_the_rule(length: int, chunk: int, left: int) -> None:
    mask = chunk_mask(length, chunk, left, torch.device("cpu"))
    for i in range(length):
        for j in range(length):
            ci, cj = i // chunk, j // chunk
            expected = cj <= ci and (left < 0 or cj >= ci - left)
            assert bool(mask[i, j]) == expected, (i, j)


def test_padded_queries_always_see_a_key_and_real_ones_never_see_padding() -> None:
    valid = valid_mask(torch.tensor([11, 3]), 11)
    mask = attention_mask(valid, chunk=2, left_chunks=0)
    assert bool(mask.any(dim=-1).all())  # no all-masked softmax row (NaN)
    assert not bool((mask[1, :3] & ~valid[1][None, :]).any())
    torch.testing.assert_close(mask[1, :3], chunk_mask(11, 2, 0, valid.device)[:3] & valid[1])


def test_training_with_heavy_padding_and_no_left_context_has_finite_gradients() -> None:
    model = streaming_model(chunk_ms=40, left_chunks=0).train()
    feats = torch.randn(2, 80, FEATS, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 2, 3], [4, -1, -1]])
    out = model(feats, torch.tensor([80, 12]), targets, torch.tensor([3, 1]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_chunk_ms_converts_to_encoder_frames_rounding_down() -> None:
    assert chunk_frames(640, 10.0, 4) == 16
    assert chunk_frames(0, 10.0, 4) == 0
    assert chunk_frames(70, 10.0, 4) == 1
    assert chunk_frames(600, 10.0, 6) == 10
    assert streaming_model(chunk_ms=320).streaming == StreamingSpec(8, -1, False)


# -------------------------------------------------------------------------- causal convolution


def test_causal_convolution_output_ignores_future_frames() -> None:
    torch.manual_seed(0)
    causal, same = ConvolutionModule(8, 5, causal=True), ConvolutionModule(8, 5)
    same.load_state_dict(causal.state_dict())
    x = torch.randn(1, 12, 8)
    valid = torch.ones(1, 12, dtype=torch.bool)
    changed = x.clone()
    changed[:, 7:] = torch.randn(1, 5, 8)
    assert torch.equal(causal(x, valid)[:, :7], causal(changed, valid)[:, :7])
    assert not torch.equal(causal(x, valid)[:, 7:], causal(changed, valid)[:, 7:])
    # the check has teeth: the 'same' convolution of frame 6 sees frames 7 and 8
    assert not torch.allclose(same(x, valid)[:, 6], same(changed, valid)[:, 6])


def test_streaming_encoder_output_of_a_chunk_ignores_later_audio() -> None:
    model = streaming_model(chunk_ms=160)  # 4 encoder frames = 16 input frames per chunk
    feats = torch.randn(1, 96, FEATS, generator=torch.Generator().manual_seed(3))
    later = feats.clone()
    # chunks 0 and 1 are encoder frames 0..7, which read input frames 0..34 (4t .. 4t + 6)
    later[:, 35:] = torch.randn(1, 61, FEATS)
    lens = torch.tensor([96])
    a, _ = model.encode(feats, lens)
    b, _ = model.encode(later, lens)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


# -------------------------------------------------------------- chunk by chunk = masked forward


@pytest.mark.parametrize("pos_enc", ["abs", "rel"])
@pytest.mark.parametrize(
    ("chunk_ms", "left_chunks", "subsampling"),
    [(160, -1, 4), (160, 1, 4), (80, 0, 4), (240, 2, 6), (40, 3, 2)],
)
def test_chunk_by_chunk_equals_the_masked_full_forward(
    pos_enc: str, chunk_ms: float, left_chunks: int, subsampling: int
) -> None:
    model = streaming_model(
        chunk_ms=chunk_ms, left_chunks=left_chunks, subsampling=subsampling, pos_enc=pos_enc
    )
    feats = torch.randn(1, 131, FEATS, generator=torch.Generator().manual_seed(4))
    lens = torch.tensor([131])
    full, _ = model.encode(feats, lens)
    # blocks of odd sizes: chunk borders, subsampling windows and feeds never line up
    incremental, tokens = stream(model, feats[0], block_sizes=(5, 13, 1, 22))
    assert incremental.shape == full.shape
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)
    assert tokens == model.decode(feats, lens)[0]


@pytest.mark.parametrize("head", ["ctc", "ctc_attention"])
def test_unlimited_chunk_streaming_equals_full_utterance_decoding(head: str) -> None:
    model = streaming_model(chunk_ms=1e6, head=head)
    gen = torch.Generator().manual_seed(5)
    for length in (40, 77, 150):
        feats = torch.randn(1, length, FEATS, generator=gen)
        lens = torch.tensor([length])
        full, enc_lens = model.encode(feats, lens)
        incremental, tokens = stream(model, feats[0])
        assert incremental.size(1) == int(enc_lens[0])  # one chunk, encoded at the end
        torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)
        assert tokens == model.decode(feats, lens)[0]
        assert tokens  # an untrained model emits something, so equality is not of two []


def test_a_full_context_model_cannot_stream() -> None:
    with pytest.raises(ValueError, match="chunk_ms > 0"):
        StreamingDecoder(streaming_model())


# --------------------------------------------------------------------------------- dynamic chunks


def test_dynamic_chunks_vary_in_training_and_not_in_eval() -> None:
    spec = StreamingSpec(chunk=4, left_chunks=2, dynamic=True)
    torch.manual_seed(0)
    draws = [dynamic_chunk(spec, 50) for _ in range(400)]
    chunked = [(c, left) for c, left in draws if (c, left) != (50, -1)]
    assert 120 < len(chunked) < 280  # about half the batches see full context
    assert {c for c, _ in chunked} == set(range(1, 26))
    # the left context keeps about left_chunks * chunk = 8 frames, in whole chunks
    assert all(left == -(-8 // c) for c, left in chunked)

    model = streaming_model(chunk_ms=160, left_chunks=2, dynamic_chunk=True)
    valid = valid_mask(torch.tensor([30]), 30)
    fixed = attention_mask(valid, 4, 2)
    assert all(torch.equal(model.encoder.attention_mask(valid), fixed) for _ in range(5))
    model.train()
    torch.manual_seed(1)
    masks = [model.encoder.attention_mask(valid) for _ in range(8)]
    assert any(not torch.equal(m, fixed) for m in masks)
    torch.manual_seed(1)
    assert all(torch.equal(a, model.encoder.attention_mask(valid)) for a in masks)  # seeded


# ---------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.chunk_ms=-1"], "model.chunk_ms"),
        (["model.chunk_ms=20"], "model.chunk_ms"),  # < 10 ms hop x subsampling 4
        (["model.chunk_ms=640", "model.encoder=lstm"], "model.chunk_ms"),
        (["model.left_chunks=-2"], "model.left_chunks"),
        (["model.left_chunks=1.5"], "model.left_chunks"),
        (["model.dynamic_chunk=maybe"], "model.dynamic_chunk"),
    ],
)
def test_bad_streaming_values_are_one_line_errors_naming_the_key(
    overrides: list[str], key: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict(parse_overrides(overrides))
    assert len(err.value.problems) == 1
    problem = err.value.problems[0]
    assert problem.key == key and "\n" not in str(problem)


def test_streaming_keys_load_with_relative_positions() -> None:
    cfg = config_from_dict(
        parse_overrides(["model.chunk_ms=640", "model.left_chunks=4", "model.pos_enc=rel"])
    )
    model = build_model(cfg.model, cfg.features.n_mels, 10, cfg.features.hop_ms)
    assert model.streaming == StreamingSpec(16, 4, False)


def test_dynamic_chunk_without_a_chunk_warns_and_trains_full_context() -> None:
    cfg = config_from_dict(parse_overrides(["model.dynamic_chunk=true"]))
    with pytest.warns(UserWarning, match="model.dynamic_chunk has no effect"):
        model = build_model(cfg.model, cfg.features.n_mels, 10, cfg.features.hop_ms)
    assert not model.streaming.enabled


def test_build_model_needs_the_hop_for_a_streaming_config() -> None:
    with pytest.raises(ValueError, match="hop_ms"):
        build_model(ModelConfig(chunk_ms=640), 80, 10)
