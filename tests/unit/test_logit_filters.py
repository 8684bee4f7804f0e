"""Logit filters over the whole vocabulary and over a shortlist of it must forbid the same tokens."""

from __future__ import annotations

import torch

from spec_whisper.logit_filters import SuppressAtBegin, SuppressTokens, apply_filters

VOCAB = 300


def _filters() -> list:
    return [SuppressTokens((5, 17, 299)), SuppressAtBegin((0, 17, 40))]


def test_full_vocabulary_filters_forbid_their_tokens_where_they_apply() -> None:
    logits = torch.zeros(2, 3, VOCAB)
    generated = torch.tensor([[0, 1, 2], [4, 5, 6]])
    apply_filters(_filters(), logits, generated)
    forbidden = torch.isinf(logits)
    assert forbidden[..., [5, 17, 299]].all()
    assert forbidden[0, 0, [0, 40]].all()  # only the first generated token may not be a blank
    assert not forbidden[0, 1:, [0, 40]].any() and not forbidden[1, :, [0, 40]].any()
    assert forbidden.sum() == 2 * 3 * 3 + 2


def test_a_shortlist_is_filtered_as_its_columns_of_the_full_vocabulary() -> None:
    generator = torch.Generator().manual_seed(0)
    shortlist = torch.randperm(VOCAB, generator=generator)[:120]
    shortlist = torch.cat([shortlist, torch.tensor([5, 40])]).unique()  # some forbidden ids inside
    generated = torch.tensor([[0, 1], [3, 0]])
    full = torch.randn(2, 2, VOCAB, generator=generator)
    scores = full[..., shortlist].clone()
    filters = _filters()
    for _ in range(2):  # the second time from the columns found the first
        expected = apply_filters(filters, full.clone(), generated)[..., shortlist]
        assert torch.equal(apply_filters(filters, scores.clone(), generated, shortlist), expected)
    other = shortlist[:50]  # another shortlist of its own
    expected = apply_filters(filters, full.clone(), generated)[..., other]
    assert torch.equal(apply_filters(filters, full[..., other].clone(), generated, other), expected)
