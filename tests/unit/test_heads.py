"""Output heads: the screened head's greedy choice must be the fp32 argmax itself."""

from __future__ import annotations

import pytest
import torch

from spec_whisper.heads import FullHead, ScreenedHead, ShortlistHead

VOCAB, WIDTH = 4099, 64


def _weight(seed: int = 0) -> torch.Tensor:
    weight = torch.randn(VOCAB, WIDTH, generator=torch.Generator().manual_seed(seed)) * 0.05
    # Near-duplicate and duplicate rows: scores the int8 pass cannot tell apart.
    weight[7] = weight[3] * (1 + 1e-6)
    weight[11] = weight[5]
    return weight


def _states(batch: int, steps: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Like Whisper's final norm output: a few channels far larger than the rest.
    gain = torch.ones(WIDTH)
    gain[[2, 9]] = torch.tensor([40.0, 15.0])
    return torch.randn(batch, steps, WIDTH, generator=gen) * gain * 4


def _no_mask(logits: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
    return logits


@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (1, 5), (2, 4), (8, 1), (4, 4)])
def test_screened_greedy_is_the_fp32_argmax(batch: int, steps: int) -> None:
    weight = _weight()
    full, screened = FullHead(weight), ScreenedHead(weight, max_rows=64)
    for seed in range(20):
        states = _states(batch, steps, seed)
        assert torch.equal(screened.greedy(states, _no_mask), full.logits(states).argmax(-1))


def test_screened_greedy_settles_near_ties_exactly() -> None:
    weight = _weight()
    states = _states(1, 1)
    # Point the state at rows 3 and 7 (equal up to a relative 1e-6) so they lead every other token.
    states[0, 0] = weight[3] / weight[3].norm() * 50
    full_logits = FullHead(weight).logits(states)
    assert set(full_logits[0, 0].topk(2).indices.tolist()) == {3, 7}
    assert torch.equal(ScreenedHead(weight, max_rows=64).greedy(states, _no_mask), full_logits.argmax(-1))


def test_screened_greedy_breaks_exact_ties_towards_the_lowest_id() -> None:
    weight = _weight()
    states = _states(1, 1)
    states[0, 0] = weight[5] / weight[5].norm() * 50  # rows 5 and 11 are identical
    assert ScreenedHead(weight, max_rows=64).greedy(states, _no_mask).item() == 5


def test_screened_greedy_respects_the_mask() -> None:
    weight = _weight()
    states = _states(2, 3)
    full = FullHead(weight).logits(states)
    banned = full.argmax(-1).flatten().unique()

    def mask(logits: torch.Tensor) -> torch.Tensor:
        return logits.index_fill(-1, banned, -torch.inf)

    expected = mask(full).argmax(-1)
    assert not torch.isin(expected, banned).any()
    assert torch.equal(ScreenedHead(weight, max_rows=64).greedy(states, mask), expected)


def test_screen_error_stays_within_its_bound() -> None:
    weight = _weight()
    head = ScreenedHead(weight, max_rows=64)
    rows = _states(3, 3).reshape(-1, WIDTH)
    scores = head.screen(rows)
    l1, slack = head.row_bounds(rows)
    bound = l1[:, None] * head.half_step + slack[:, None]
    error = (scores.double() - rows.double() @ weight.double().T).abs()
    assert (error <= bound).all()
    # ... and the bound is tight enough to leave only a few candidates per row.
    lower = (scores - bound).amax(dim=1, keepdim=True)
    assert (scores + bound >= lower).sum(dim=1).max() <= 20


def test_candidates_are_scored_with_the_full_products_bits() -> None:
    """The screened head's fp32 logits are the few-row kernel's (`FullHead`, which passes longer than
    `max_rows` take) to the bit, so that greedy and verify passes of any length choose alike."""
    weight = _weight()
    rows = _states(4, 4).reshape(-1, WIDTH).contiguous()
    head = ScreenedHead(weight)
    candidates = head.kernel.kernel_order_logits(rows, head.weight, torch.arange(VOCAB))
    assert torch.equal(candidates, FullHead(weight).logits(rows))


def test_screened_greedy_on_non_finite_states_is_what_fp32_gives() -> None:
    weight = _weight()
    states = _states(1, 3)
    states[0, 1, 4] = torch.nan
    expected = FullHead(weight).logits(states).argmax(-1)
    assert torch.equal(ScreenedHead(weight, max_rows=64).greedy(states, _no_mask), expected)


def test_screened_head_falls_back_to_fp32_for_many_rows() -> None:
    weight = _weight()
    head = ScreenedHead(weight, max_rows=4)
    states = _states(3, 3)  # 9 rows
    assert torch.equal(head.greedy(states, _no_mask), FullHead(weight).logits(states).argmax(-1))


@pytest.mark.parametrize("int8", [False, True])
def test_shortlist_head_scores_only_its_tokens(int8: bool) -> None:
    weight = _weight()
    shortlist = torch.arange(0, VOCAB, 3)
    head = ShortlistHead(weight, shortlist, int8=int8)
    states = _states(2, 2)
    logits = head.logits(states)
    outside = torch.ones(VOCAB, dtype=torch.bool)
    outside[shortlist] = False
    assert torch.isinf(logits[..., outside]).all()
    expected = FullHead(weight).logits(states)[..., shortlist]
    # int8 scores are approximate: per-call activation scaling over outlier channels costs a few percent.
    tolerance = 0.05 * expected.abs().max() if int8 else 1e-4
    assert (logits[..., shortlist] - expected).abs().max() < tolerance
    assert torch.isin(head.greedy(states, _no_mask), shortlist).all()


@pytest.mark.parametrize("int8", [False, True])
def test_draft_gives_the_greedy_token_and_its_probability(int8: bool) -> None:
    weight = _weight()
    states = _states(2, 3) / 20
    forbidden = torch.tensor([0, 3, 4098])

    def mask(logits: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        columns = forbidden if ids is None else torch.isin(ids, forbidden).nonzero().flatten()
        logits[..., columns] = -torch.inf
        return logits

    for head in (FullHead(weight), ShortlistHead(weight, torch.arange(0, VOCAB, 2), int8=int8)):
        token, probability = head.draft(states, mask)
        logits = mask(head.logits(states))
        assert torch.equal(token, head.greedy(states, mask))
        assert not torch.isin(token, forbidden).any()
        # int8 scores: the probability of its own choice, from its own (approximate) logits.
        expected = logits.softmax(-1).gather(-1, token[..., None])[..., 0]
        tolerance = 0.1 if int8 and isinstance(head, ShortlistHead) else 1e-5
        assert torch.allclose(probability, expected, atol=tolerance)
        assert ((probability > 0) & (probability <= 1)).all()
