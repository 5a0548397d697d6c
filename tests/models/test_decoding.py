"""Decoding tests: CTC greedy collapse, CTC prefix scores, attention / joint beam search."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from speechtune.config import ModelConfig
from speechtune.models import CTCPrefixScorer, build_model, ctc_greedy_collapse

FEATS, VOCAB = 12, 8
SOS_EOS = VOCAB - 1


def one_hot_log_probs(frames: list[int], vocab: int) -> torch.Tensor:
    lp = torch.full((len(frames), vocab), math.log(0.01))
    lp[torch.arange(len(frames)), torch.tensor(frames)] = math.log(0.9)
    return lp


def test_greedy_collapse_merges_repeats_and_drops_blanks() -> None:
    a = one_hot_log_probs([1, 1, 0, 1, 2, 2, 0, 0, 3], 4)
    b = one_hot_log_probs([0, 0, 2, 0, 2, 2, 3, 3, 1], 4)  # last 3 frames are padding
    hyps = ctc_greedy_collapse(torch.stack([a, b]), torch.tensor([9, 6]))
    assert hyps == [[1, 1, 2, 3], [2, 2]]
    blank_only = one_hot_log_probs([0, 0, 0], 4)[None]
    assert ctc_greedy_collapse(blank_only, torch.tensor([3])) == [[]]


def _collapse(path: tuple[int, ...]) -> tuple[int, ...]:
    out = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
    return tuple(out)


def test_ctc_prefix_score_matches_brute_force() -> None:
    t_len, vocab = 4, 3  # blank 0, tokens 1 and 2
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(t_len, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
    prob_of: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(vocab), repeat=t_len):
        p = math.exp(sum(lp[t, s].item() for t, s in enumerate(path)))
        seq = _collapse(path)
        prob_of[seq] = prob_of.get(seq, 0.0) + p

    def prefix_prob(g: tuple[int, ...]) -> float:
        return sum(p for seq, p in prob_of.items() if seq[: len(g)] == g)

    eos = vocab  # an extra output column the CTC never emits, as in the model
    x = torch.cat([lp.float(), torch.full((t_len, 1), float("-inf"))], dim=1)
    scorer = CTCPrefixScorer(x, blank=0, eos=eos)
    cands = torch.tensor([[1, 2, eos]])
    frontier = [((), scorer.initial_state(1))]
    checked = 0
    while frontier:
        g, state = frontier.pop()
        psi, r = scorer.score(state, cands)
        # eos: probability that the whole output is exactly g.
        assert math.exp(psi[0, 2].item()) == pytest.approx(prob_of.get(g, 0.0), abs=1e-6)
        for k, tok in enumerate((1, 2)):
            ext = g + (tok,)
            assert math.exp(psi[0, k].item()) == pytest.approx(prefix_prob(ext), abs=1e-6)
            checked += 1
            if len(ext) < t_len:
                new = state.select(
                    torch.tensor([0]), torch.tensor([k]), r, psi, torch.tensor([tok])
                )
                frontier.append((ext, new))
    assert checked == 2 + 4 + 8 + 16
    # The prefix score of a blank extension is impossible by construction.
    psi_blank, _ = scorer.score(scorer.initial_state(1), torch.tensor([[0]]))
    assert psi_blank.item() == float("-inf")


def tiny_attention_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        encoder="transformer",
        d_model=32,
        num_layers=1,
        num_heads=2,
        ff_dim=64,
        dropout=0.0,
        subsampling=2,
        head="ctc_attention",
        decoder_layers=1,
        ctc_weight=0.5,
    )
    return build_model(cfg, FEATS, VOCAB)


def attention_greedy(model, enc: torch.Tensor, length: int, max_len: int) -> list[int]:
    """Reference: argmax decoding of the decoder, recomputing the whole prefix each step."""
    memory = enc[None, :length]
    valid = torch.ones(1, length, dtype=torch.bool)
    tokens = [SOS_EOS]
    for _ in range(max_len):
        logits = model.decoder(torch.tensor([tokens]), memory, valid)[0, -1]
        logits[0] = float("-inf")  # blank is never an output token
        nxt = int(logits.argmax())
        if nxt == SOS_EOS:
            break
        tokens.append(nxt)
    return tokens[1:]


@pytest.fixture(scope="module")
def overfit_model():
    """A model trained to map one fixed input to one short token sequence."""
    model = tiny_attention_model(0)
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(1, 30, FEATS, generator=gen)
    target = torch.tensor([[3, 1, 4, 1, 5]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(feats, torch.tensor([30]), target, torch.tensor([5]))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), feats, target[0].tolist()


def test_beam1_without_ctc_equals_attention_greedy(overfit_model) -> None:
    trained, feats, _ = overfit_model
    gen = torch.Generator().manual_seed(2)
    other = torch.randn(2, 30, FEATS, generator=gen)
    lens = torch.tensor([30, 22])
    untrained = tiny_attention_model(3).eval()
    for model, x in ((untrained, other), (trained, torch.cat([feats, other[:1]]))):
        with torch.no_grad():
            enc, enc_lens = model.encode(x, lens)
        beam = model.beam_search(enc, enc_lens, beam_size=1, ctc_weight=0.0, max_len_ratio=0.5)
        for b, n in enumerate(enc_lens.tolist()):
            assert beam[b] == attention_greedy(model, enc[b], n, max(1, int(0.5 * n)))
    assert beam[0] == [3, 1, 4, 1, 5]  # the trained model reaches eos before max_len


@pytest.mark.parametrize(("beam_size", "ctc_weight"), [(4, 0.0), (4, 0.3), (3, 1.0)])
def test_beam_search_recovers_overfit_sequence(overfit_model, beam_size, ctc_weight) -> None:
    model, feats, target = overfit_model
    hyps = model.decode(
        feats, torch.tensor([30]), method="beam", beam_size=beam_size, ctc_weight=ctc_weight
    )
    assert hyps == [target]
    assert model.decode(feats, torch.tensor([30]), method="greedy") == [target]


def test_decode_restores_training_mode(overfit_model) -> None:
    model, feats, _ = overfit_model
    model.train()
    try:
        model.decode(feats, torch.tensor([30]), method="beam", beam_size=2)
        assert model.training
    finally:
        model.eval()
