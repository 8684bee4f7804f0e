"""Logit filters over the whole vocabulary and over a shortlist of it must forbid the same tokens."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from spec_whisper.logit_filters import Positions, SuppressAtBegin, SuppressTokens, apply_filters

VOCAB = 300


def _after(generated: list[list[int]]) -> Positions:
    """Positions after that many generated tokens each (these filters read no tokens)."""
    ends = torch.tensor(generated)
    return Positions(torch.zeros(len(generated), int(ends.max()) + 1, dtype=torch.long), ends, 0)


def _filters() -> list:
    return [SuppressTokens((5, 17, 299)), SuppressAtBegin((0, 17, 40))]


def test_full_vocabulary_filters_forbid_their_tokens_where_they_apply() -> None:
    logits = torch.zeros(2, 3, VOCAB)
    generated = _after([[0, 1, 2], [4, 5, 6]])
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
    generated = _after([[0, 1], [3, 0]])
    full = torch.randn(2, 2, VOCAB, generator=generator)
    scores = full[..., shortlist].clone()
    filters = _filters()
    for _ in range(2):  # the second time from the columns found the first
        expected = apply_filters(filters, full.clone(), generated)[..., shortlist]
        assert torch.equal(apply_filters(filters, scores.clone(), generated, shortlist), expected)
    other = shortlist[:50]  # another shortlist of its own
    expected = apply_filters(filters, full.clone(), generated)[..., other]
    assert torch.equal(apply_filters(filters, full[..., other].clone(), generated, other), expected)


# A small vocabulary laid out as Whisper's: text, end of text, specials, <|notimestamps|>, timestamps.
END, NO_TIMESTAMPS, STAMP = 50, 60, 61
SMALL_VOCAB = 100


def _random_histories(generator: torch.Generator, rows: int, length: int) -> torch.Tensor:
    """Transcripts that mix text with timestamps the way Whisper writes them, and some that do not."""
    out = torch.empty(rows, length, dtype=torch.long)
    for b in range(rows):
        stamp = STAMP + int(torch.randint(0, 5, (1,), generator=generator))
        for i in range(length):
            kind = float(torch.rand(1, generator=generator))
            if kind < 0.35:  # a timestamp, mostly ascending
                stamp = min(stamp + int(torch.randint(-1, 4, (1,), generator=generator)), SMALL_VOCAB - 1)
                out[b, i] = stamp
            else:
                out[b, i] = int(torch.randint(0, END, (1,), generator=generator))
    return out


def test_timestamp_rules_forbid_what_transformers_forbids_at_every_scored_position() -> None:
    from transformers.generation.logits_process import WhisperTimeStampLogitsProcessor

    from spec_whisper.logit_filters import TimestampRules

    generator = torch.Generator().manual_seed(1)
    begin, width, positions = 3, 12, 4
    config = SimpleNamespace(
        no_timestamps_token_id=NO_TIMESTAMPS,
        eos_token_id=END,
        bos_token_id=END,
        max_initial_timestamp_index=5,
    )
    reference = WhisperTimeStampLogitsProcessor(config, begin_index=begin)
    ours = TimestampRules(STAMP, NO_TIMESTAMPS, END, max_initial=5)
    checked = 0
    for trial in range(40):
        rows = 3
        tokens = torch.cat(
            [torch.full((rows, begin), 70), _random_histories(generator, rows, width - begin)], dim=1
        )
        # Each row's scored positions start somewhere in its transcript, the first of them at the start.
        firsts = torch.randint(0, width - begin - positions + 1, (rows,), generator=generator)
        firsts[0] = 0
        ends = begin + firsts[:, None] + torch.arange(positions)
        logits = 3 * torch.randn(rows, positions, SMALL_VOCAB, generator=generator)
        if trial % 2:  # timestamps likelier together than any text token: the probability rule
            logits[..., STAMP:] += 2.5
        filtered = logits.clone()
        ours.apply(filtered, Positions(tokens, ends, begin))
        for b in range(rows):
            for t in range(positions):
                expected = reference(tokens[b : b + 1, : ends[b, t]], logits[b, t][None].clone())[0]
                assert torch.equal(filtered[b, t], expected), (trial, b, t, tokens[b, : ends[b, t]].tolist())
                checked += 1
    assert checked == 40 * 3 * positions


def test_over_a_shortlist_timestamp_rules_guess_the_earliest_timestamp_where_one_is_due() -> None:
    from spec_whisper.logit_filters import TimestampRules

    rules = TimestampRules(STAMP, NO_TIMESTAMPS, END, max_initial=5)
    begin = 3
    tokens = torch.tensor([[70, 70, 70, STAMP + 2, 7, 8, STAMP + 9, STAMP + 9, 4, STAMP + 12, 0]])
    # Scored after: nothing (opens), a lone timestamp, a pair, text, a segment's lone end.
    positions = Positions(tokens, torch.tensor([[3, 7, 8, 9, 10]]), begin)
    shortlist = torch.tensor([2, 4, 7, END, NO_TIMESTAMPS, STAMP, STAMP + 9, STAMP + 12, STAMP + 20])
    scores = torch.zeros(1, 5, len(shortlist))
    rules.apply(scores, positions, shortlist)
    allowed = [shortlist[row.isfinite()].tolist() for row in scores[0]]
    assert allowed[0] == [STAMP]  # a window opens at <|0.00|>
    assert allowed[1] == [STAMP + 9]  # the next segment starts where this one ended
    assert allowed[2] == allowed[3] == [2, 4, 7, END]  # text (or the end) after a pair and after text
    assert allowed[4] == [STAMP + 12]
    # Without the guessed timestamp in the shortlist, nothing is left to draft there.
    without = shortlist[shortlist != STAMP + 9]
    scores = torch.zeros(1, 5, len(without))
    rules.apply(scores, positions, without)
    assert scores[0, 1].isinf().all() and scores[0, 0].isfinite().sum() == 1
