"""The cost model picks long drafts where verifying is cheap and none where it is not; output stays exact."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spec_whisper import drafters
from spec_whisper import engine as engine_module
from spec_whisper.cost_model import (
    BATCHES,
    TOKENS,
    DecoderCosts,
    LiveCosts,
    PassTime,
    TableTiming,
    best_draft_length,
    best_extension,
    expected_tokens,
)
from spec_whisper.drafters import CostModelPolicy
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.loading import make_tiny_models
from spec_whisper.types import DecodingOptions


def _costs(verify_per_extra_token: float, draft: float) -> DecoderCosts:
    """A main pass of 1 s per row plus `verify_per_extra_token` s for each further token of the row."""
    verify = np.array([[b * (1 + verify_per_extra_token * (t - 1)) for t in TOKENS] for b in BATCHES])
    return DecoderCosts(verify, np.array([draft * b for b in BATCHES], dtype=float))


def test_draft_length_maximises_expected_tokens_per_second() -> None:
    # A pass commits 1 + a + ... + a^k tokens; at a = 0.5 with verification free and drafts at
    # 0.1 s: k = 1 gives 1.5 / 1.1, k = 2 gives 1.75 / 1.2 (the most), k = 3 gives 1.875 / 1.3.
    assert best_draft_length(_costs(0.0, 0.1), torch.tensor([0.5]), 16) == 2


def test_drafting_goes_on_while_the_assistant_is_sure() -> None:
    costs, acceptance = _costs(0.02, 0.1), torch.full((2,), 0.6)
    # Two drafts made; the rows' drafts are all right with probability `chain`.
    sure = best_extension(costs, acceptance, 16, drafted=2, chain=torch.tensor([0.99, 0.98]), expected=5.9)
    unsure = best_extension(costs, acceptance, 16, drafted=2, chain=torch.tensor([0.05, 0.02]), expected=2.2)
    assert sure > 0 and unsure == 0
    assert best_extension(costs, acceptance, 16, drafted=16, chain=torch.ones(2), expected=34.0) == 0
    # Before any draft, extending is choosing the length.
    assert best_extension(costs, acceptance, 16) == best_draft_length(costs, acceptance, 16)


def test_interpolation_between_measured_shapes() -> None:
    costs = _costs(0.1, 0.05)
    assert costs.verify_s(1, 1) == pytest.approx(1.0)
    assert costs.verify_s(4, 7) == pytest.approx(4 * 1.6)  # between 6 and 8 tokens
    assert costs.verify_s(32, 1) == pytest.approx(32.0)  # past the grid: cost per row held
    assert costs.draft_s(3) == pytest.approx(0.15)


def test_the_first_draft_of_a_pass_may_cost_more_than_the_next() -> None:
    # Drafting k tokens costs first_extra + k * draft: an extra price on the first draft of a pass
    # (the assistant's weights evicted by the main pass) makes longer drafts pay once drafting.
    flat = _costs(0.05, 0.2)
    first = DecoderCosts(flat.verify, flat.draft / 2, np.array([0.1 * b for b in BATCHES]))
    assert first.drafting_s(1, 0) == 0.0 and first.drafting_s(1, 1) == pytest.approx(flat.draft_s(1))
    assert first.drafting_s(2, 3) == pytest.approx(0.2 + 3 * 0.2)
    np.testing.assert_allclose(first.pass_parts(1, 4)[1:].sum(axis=0), [0.0, 0.2, 0.3, 0.4, 0.5])
    acceptance = torch.tensor([0.8])
    assert best_draft_length(first, acceptance, 16) > best_draft_length(flat, acceptance, 16)


def test_free_verification_and_good_drafts_mean_long_drafts() -> None:
    assert best_draft_length(_costs(0.0, 0.01), torch.full((1,), 0.9), 16) >= 8


def test_full_price_verification_means_no_drafting() -> None:
    # Every verified token costs as much as a decoded one: a draft can only lose.
    assert best_draft_length(_costs(1.0, 0.1), torch.full((8,), 0.8), 16) == 0


def test_poor_acceptance_means_short_or_no_drafts() -> None:
    costs = _costs(0.05, 0.15)
    lengths = [best_draft_length(costs, torch.full((1,), a), 16) for a in (0.1, 0.5, 0.8, 0.95)]
    assert lengths[0] == 0
    assert lengths == sorted(lengths) and lengths[-1] > lengths[1]


def test_policy_learns_each_rows_acceptance() -> None:
    policy = CostModelPolicy(_costs(0.05, 0.1), batch=2, prior=0.7, prior_weight=4)
    first = policy.current()
    for _ in range(40):  # every draft rejected at its first token, till its standard error is small too
        policy.observe(torch.tensor([0, 0]), 4)
    assert policy.current() < first
    assert policy.current() == 0
    policy.keep(torch.tensor([1]))
    assert policy.accepted.shape == (1,)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def test_engine_measures_costs_and_stays_exact(tiny) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    costs = engine.costs()
    assert costs.verify.shape == (len(BATCHES), len(TOKENS)) and np.all(costs.verify > 0)
    assert np.all(np.isfinite(costs.draft)) and costs is engine.costs()  # measured once
    assert np.all(costs.table.first_extra >= 0) and np.all(np.isfinite(costs.table.first_extra))
    assert np.all(costs.table.spread >= 1.0)  # the slowest round over the fastest
    frames = engine.models.main.config.max_source_positions
    one_row = DecoderCosts.measure(engine.main, engine.assistant, frames, repeats=1, batches=[2])
    assert np.all(one_row.verify[BATCHES.index(2)] > 0) and not one_row.verify[BATCHES.index(4)].any()
    rng = np.random.default_rng(1)
    pcm = [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (3, 7, 11)]
    states = engine.encode(engine.log_mel(pcm))
    plain = engine.decode(states, [DecodingOptions(language="en", speculative=False, max_new_tokens=25)] * 3)
    # Speculative passes run in place rescale the prices of their batch size, and only those.
    live = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=25)] * 3)
    assert [r.tokens for r in live] == [r.tokens for r in plain]
    if any(r.stats.drafted for r in live):
        assert costs.drafting_scale[BATCHES.index(4)] != 1.0
        assert costs.drafting_scale[BATCHES.index(16)] == 1.0
    # Verification made free: the identical assistant drafts long and every draft is accepted.
    engine._costs = _costs(0.0, 0.01)
    auto = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=25)] * 3)
    assert [r.tokens for r in auto] == [r.tokens for r in plain]
    assert all(r.stats.drafted > 0 and r.stats.accepted == r.stats.drafted for r in auto)
    # Verification made dear: the engine does not draft at all (25 tokens: fewer passes than the
    # policy waits before it probes with one draft).
    engine._costs = _costs(1.0, 1.0)
    none = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=25)] * 3)
    assert [r.tokens for r in none] == [r.tokens for r in plain]
    assert all(r.stats.drafted == 0 for r in none)


def test_a_table_is_timed_a_pass_at_a_time(tiny) -> None:
    """`TableTiming.advance` times at least one pass per call, and the table once every shape is."""
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    frames = engine.models.main.config.max_source_positions
    timing = TableTiming(engine.main, engine.assistant, frames, repeats=1, batches=[2])
    slices = 0
    while (table := timing.advance(0.0)) is None:
        slices += 1
    assert slices == 2 * (len(TOKENS) + 2)  # round 0 and one counted round of every shape
    assert np.all(table.verify[BATCHES.index(2)] > 0) and not table.verify[BATCHES.index(4)].any()
    assert np.isfinite(table.draft[BATCHES.index(2)]) and table.spread[BATCHES.index(2)] >= 1.0


def test_a_table_timed_on_a_slower_machine_is_timed_again(tiny, monkeypatch) -> None:
    """Verify passes in place at a tenth of the table's batch-1 prices, as after a table timed in a
    slow spell: after 16 of them the engine times that row again, and only that row, a pass before
    each request (here) until it is timed, and the requests meanwhile decode as ever."""
    monkeypatch.setattr(SpeculativeWhisper, "retime_share", 0.0)  # one timed pass before each request
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    measured = engine.costs().table
    slow = DecoderCosts(measured.verify * 10, measured.draft * 10, measured.first_extra * 10)
    engine._costs = live = LiveCosts(slow)
    rng = np.random.default_rng(3)
    states = engine.encode(engine.log_mel([(0.1 * rng.standard_normal(16000 * 5)).astype(np.float32)]))
    plain = engine.decode(states, [DecodingOptions(language="en", speculative=False, max_new_tokens=25)])
    for _ in range(30):  # 16 priced passes (not a request's first, nor most of a rest's)
        if live.stale_batches():
            break
        assert engine.costs().table is live.table  # not stale yet: the same table
        result = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=25)])[0]
        assert result.tokens == plain[0].tokens
    assert live.stale_batches() == [1]
    for _ in range(4 * (len(TOKENS) + 2)):  # four rounds of every shape, a timed pass before each request
        assert live.stale_batches() == [1]
        result = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=25)])[0]
        assert result.tokens == plain[0].tokens
    assert engine.costs() is live and live.stale_batches() == []
    assert np.all(live.table.verify[0] < slow.verify[0] / 3)  # timed again, at about the machine's speed
    np.testing.assert_array_equal(live.table.verify[1:], slow.verify[1:])
    assert live.verify_scale[0] == 1.0 and live._retime_after[0] == 2 * LiveCosts.RETIME_READINGS
    assert live.drafting_scale[0] == 1.0  # learnt afresh with the new prices


def test_rows_timed_busy_are_timed_again_then_where_the_machine_outruns_them() -> None:
    """A row timed on a busy machine is timed again up to three times; a quiet row is not. In place
    the passes often run dearer than the start-up table (the policy's work, caches the other decoder
    emptied): that is a scale, not a table to time again. A retiming keeps the lower of each price:
    a slower timing changes nothing."""
    quiet = _costs(0.02, 0.05)
    live = LiveCosts(quiet, weight=0.1)
    for _ in range(200):
        live.observe(_pass(1, 3, 2, quiet, verify_x=2.0, draft_x=2.0))
    assert live.stale_batches() == []
    table = DecoderCosts(quiet.verify, quiet.draft, quiet.first_extra, np.full(len(BATCHES), 2.0))
    live = LiveCosts(table, weight=0.1)
    slower = DecoderCosts(table.verify * 3, table.draft * 3, table.first_extra * 3, table.spread)
    retimed_at = []
    for reading in range(1, 1001):
        live.observe(_pass(1, 3, 2, table, verify_x=2.0, draft_x=2.0))
        if stale := live.stale_batches():
            assert stale == [1]
            live.retimed(slower, stale)
            retimed_at.append(reading)
    assert retimed_at == [16, 48, 112]
    np.testing.assert_array_equal(live.table.verify, table.verify)
    np.testing.assert_array_equal(live.table.draft, table.draft)
    for _ in range(20):  # now at 0.3x the table's price: it was timed on a slower machine
        live.observe(_pass(1, 3, 2, table, verify_x=0.3, draft_x=0.3))
    assert live.stale_batches() == [1]
    faster = DecoderCosts(table.verify * 0.3, table.draft * 0.3, table.first_extra * 0.3)
    live.retimed(faster, [1])
    np.testing.assert_allclose(live.table.verify[0], faster.verify[0])
    np.testing.assert_array_equal(live.table.verify[1:], table.verify[1:])


def test_expected_tokens_is_the_geometric_sum_per_row() -> None:
    """Each row commits its own token plus drafts accepted before the first miss: sum of a^j."""
    acceptance = torch.tensor([0.5, 0.8, 0.0])
    tokens = expected_tokens(acceptance, 6)
    k = np.arange(7)
    closed_form = sum((1 - a ** (k + 1)) / (1 - a) for a in acceptance.double().tolist())
    np.testing.assert_allclose(tokens, closed_form, rtol=1e-7)
    # Drafts already made count with the chance that they are all right.
    later = expected_tokens(acceptance, 2, chain=torch.tensor([1.0, 0.5, 0.0]), base=4.0)
    np.testing.assert_allclose(later, [4.0, 4.0 + 0.5 + 0.4, 4.0 + 0.75 + 0.72], rtol=1e-6)


def _pass(
    rows: int, tokens: int, drafts: int, costs: DecoderCosts, verify_x: float, draft_x: float
) -> PassTime:
    """A pass that cost `verify_x` and `draft_x` times what the table says."""
    verify = costs.verify_s(rows, tokens) * verify_x
    return PassTime(rows, tokens, drafts, costs.drafting_s(rows, drafts) * draft_x, verify)


def test_the_table_described_for_the_log() -> None:
    line = _costs(0.5, 0.25).describe()
    assert line.startswith("batch 1: main pass over 1/2/4/8 tokens 1000.0/1500.0/2500.0/4500.0 ms")
    assert "assistant step 250.0 ms (+0.0 the first of a pass); batch 8:" in line


def test_live_costs_follow_the_passes_run_in_place() -> None:
    table = _costs(0.02, 0.05)
    live = LiveCosts(table, weight=0.2)
    assert live.pass_s(1, 16).tolist() == table.pass_s(1, 16).tolist()  # nothing seen yet
    for _ in range(60):  # drafts at 3x the table's price, verification as tabled
        live.observe(_pass(1, 4, 3, table, verify_x=1.0, draft_x=3.0))
    assert live.draft_s(1) == pytest.approx(3 * table.draft_s(1), rel=1e-3)
    assert live.verify_s(1, 4) == pytest.approx(table.verify_s(1, 4))
    assert live.draft_s(16) == table.draft_s(16)  # other batch sizes keep their own prices
    expected = table.pass_parts(1, 16)[0] + 3 * table.pass_parts(1, 16)[1:].sum(axis=0)
    np.testing.assert_allclose(live.pass_s(1, 16), expected, rtol=1e-3)
    assert live.draft[0] == pytest.approx(3 * table.draft[0], rel=1e-3) and live.draft[-1] == table.draft[-1]
    # Dearer drafts, shorter drafts: the length the table alone would pick is now too long.
    acceptance = torch.tensor([0.8])
    assert best_draft_length(live, acceptance, 16) < best_draft_length(table, acceptance, 16)


def test_a_pass_first_draft_step_and_the_later_ones_are_learnt_apart() -> None:
    table = _costs(0.02, 0.05)
    live = LiveCosts(table, weight=0.5)
    for _ in range(40):  # the first step at 4x the table's price, the later ones as tabled
        first = 4 * table.drafting_s(1, 1)
        live.observe(PassTime(1, 4, 3, first + 2 * table.draft_s(1), table.verify_s(1, 4), first))
    assert live.first_scale[0] == pytest.approx(4.0) and live.draft_scale[0] == pytest.approx(1.0)
    assert live.drafting_s(1, 3) == pytest.approx(4 * table.drafting_s(1, 1) + 2 * table.draft_s(1))
    assert live.pass_s(1, 16)[3] == pytest.approx(table.verify_s(1, 4) + live.drafting_s(1, 3))
    # A dear first step and cheap later ones: once it drafts, the policy drafts long.
    acceptance = torch.tensor([0.9])
    assert best_draft_length(live, acceptance, 16) >= best_draft_length(table, acceptance, 16)
    live.observe(PassTime(1, 2, 1, 9.0, table.verify_s(1, 2), 9.0))  # one draft: no later steps seen
    assert live.draft_scale[0] == pytest.approx(1.0)


def test_one_stalled_pass_moves_the_prices_a_bounded_step() -> None:
    table = _costs(0.02, 0.05)
    live = LiveCosts(table, weight=0.1, recent_weight=0.3)
    size = BATCHES.index(2)
    live.observe(_pass(2, 3, 2, table, verify_x=1.0, draft_x=1.0))
    assert live.markup(2) == 1.0  # no plain pass to compare with yet
    live.observe(_pass(2, 1, 0, table, verify_x=1.0, draft_x=1.0))
    live.observe(_pass(2, 3, 2, table, verify_x=1000.0, draft_x=1000.0))  # the machine paused
    assert live.markup(2) == pytest.approx(4**0.3)  # the reading clamped to 4, at recent_weight
    assert live.verify_scale[size] == pytest.approx(4**0.1)  # its reading clamped to 4 too
    assert live.draft_relative[size] == pytest.approx(1.0)  # as dear as its verify pass
    assert live.drafting_scale[size] == pytest.approx(live.verify_scale[size] * live.markup(2))
    before = live.verify_scale[size]
    live.observe(_pass(2, 3, 0, table, verify_x=1000.0, draft_x=1.0))  # a request's prompt: neither kind
    assert live.verify_scale[size] == before


def test_drafting_priced_in_a_slow_spell_comes_back_with_a_few_probes() -> None:
    """40 drafting passes with everything 2.5x the table's price, then plain passes at the table's
    with a probe (one draft, at the table's price) after every 8: the plain price comes back with
    the plain passes, the drafting prices within four probes."""
    table = _costs(0.02, 0.05)
    live = LiveCosts(table, weight=0.1)
    for _ in range(40):
        first = 2.5 * table.drafting_s(1, 1)
        live.observe(PassTime(1, 4, 3, first + 2 * 2.5 * table.draft_s(1), 2.5 * table.verify_s(1, 4), first))
    assert live.draft_s(1) == pytest.approx(2.5 * table.draft_s(1), rel=0.05)
    for _ in range(4):
        for _ in range(8):
            live.observe(_pass(1, 1, 0, table, verify_x=1.0, draft_x=1.0))
        assert live.markup(1) > 1.05  # the plain passes alone leave drafting dear
        first = table.drafting_s(1, 1)
        live.observe(PassTime(1, 2, 1, first, table.verify_s(1, 2), first))
    assert live.verify_s(1, 1) == pytest.approx(table.verify_s(1, 1), rel=0.05)
    assert live.draft_s(1) == pytest.approx(table.draft_s(1), rel=0.07)
    assert live.drafting_s(1, 3) == pytest.approx(table.drafting_s(1, 3), rel=0.07)
    assert best_draft_length(live, [0.8], 16) == best_draft_length(table, [0.8], 16)


def test_a_policy_that_stopped_drafting_probes_now_and_then() -> None:
    """Prices and acceptance are learnt from drafts only: a policy that drafts nothing tries one
    token every `probe_every` plain passes, and drafts again once the probes show that it pays."""
    dear = _costs(1.0, 1.0)
    live = LiveCosts(dear, weight=0.5)
    policy = CostModelPolicy(live, batch=1, probe_every=4)
    chosen = []
    for _ in range(10):
        k = policy.current()
        chosen.append(k)
        # As `generate` hands them over: plain passes are counted, their time is not learnt from.
        timed = _pass(1, k + 1, k, dear, verify_x=1.0, draft_x=1.0) if k else None
        policy.observe(torch.tensor([k]), k, timed)
    assert chosen == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    # A table that prices a draft step at 1.5 plain passes where it costs 0.5: the probes learn it.
    overstated, true = _costs(0.0, 1.5), _costs(0.0, 0.5)
    policy = CostModelPolicy(LiveCosts(overstated, weight=0.5), batch=1, probe_every=4)
    chosen = []
    for _ in range(30):
        k = policy.current()
        chosen.append(k)
        timed = PassTime(1, k + 1, k, k * true.draft_s(1), true.verify_s(1, k + 1)) if k else None
        policy.observe(torch.tensor([k]), k, timed)
    assert chosen[:5] == [0, 0, 0, 0, 1] and chosen[-1] > 1


def test_a_fixed_table_and_the_policy_learn_from_passes() -> None:
    """The policy hands every pass's time to its costs: a `LiveCosts` learns, a table stays fixed."""
    table = _costs(0.02, 0.05)
    before = table.pass_s(1, 16).copy()
    fixed, live = CostModelPolicy(table, batch=1), CostModelPolicy(LiveCosts(table, weight=0.5), batch=1)
    for policy in (fixed, live):
        for _ in range(10):
            policy.observe(torch.tensor([2]), 3, _pass(1, 4, 3, table, verify_x=1.0, draft_x=4.0))
    assert np.array_equal(table.pass_s(1, 16), before)
    assert live.current() < fixed.current()


def _run_policy(policy: CostModelPolicy, passes: int, verify_s: float) -> list[int]:
    """Draft lengths chosen over `passes` passes where, in place, a pass that drafts verifies in
    `verify_s` (the tables below: for any number of tokens, 1 s by their prices), each draft step
    costs as tabled and one draft is accepted; a plain pass costs 1 s."""
    chosen = []
    for _ in range(passes):
        k = policy.current()
        chosen.append(k)
        if k:
            drafting = policy.costs.table.drafting_s(1, k)
            timed = PassTime(1, k + 1, k, drafting, verify_s, policy.costs.table.drafting_s(1, 1))
        else:
            timed = PassTime(1, 1, 0, 0.0, 1.0)
        policy.observe(torch.tensor([1 if k else 0]), k, timed)
    return chosen


def test_drafting_passes_dearer_in_place_than_priced_mean_plain_decoding() -> None:
    """The table says verifying drafts is free; in place a pass with drafts verifies in 3 s against a
    plain pass's 1 s (`LiveCosts.markup`)."""
    live = LiveCosts(_costs(0.0, 0.01), weight=0.5)
    assert live.markup(1) == 1.0  # nothing measured yet
    chosen = _run_policy(CostModelPolicy(live, batch=1, probe_every=8, check_every=4), 40, 3.0)
    assert all(k > 0 for k in chosen[:2])
    assert live.markup(1) > 2
    # From then on plain, but for a probe every 8 passes and at most one pass after each that it drew.
    assert sum(k > 0 for k in chosen[8:]) <= 8


def test_drafting_passes_near_their_price_go_on_with_a_plain_pass_now_and_then() -> None:
    live = LiveCosts(_costs(0.0, 0.01), weight=0.5)
    chosen = _run_policy(CostModelPolicy(live, batch=1, probe_every=8, check_every=4), 40, 1.3)
    assert live.markup(1) == pytest.approx(1.3, rel=0.05)
    assert chosen.count(0) == 8 and all(k > 0 for i, k in enumerate(chosen) if i % 5 != 4)


def test_a_verdict_depends_on_the_rows_acceptance_not_on_a_language_seen_before() -> None:
    """Drafting priced from passes whose drafts were mostly rejected must not stop rows whose drafts
    are mostly right: the markup prices passes, acceptance is per row."""
    live = LiveCosts(_costs(0.1, 0.1), weight=0.1)
    table = live.table
    for _ in range(100):  # as tabled, whatever the drafts committed
        live.observe(PassTime(1, 2, 1, table.drafting_s(1, 1), table.verify_s(1, 2)))
        live.observe(PassTime(1, 1, 0, 0.0, table.verify_s(1, 1)))
    assert live.markup(1) == pytest.approx(1.0)
    assert best_draft_length(live, [0.1], 16) == 0 and best_draft_length(live, [0.8], 16) > 0


def test_one_stalled_first_drafting_pass_does_not_stop_drafting() -> None:
    """The first pass that drafts stalls for 1000 s (a cold start, another process on the cores);
    every other drafting pass verifies in 1.2 s, a plain pass in 1 s."""
    live = LiveCosts(_costs(0.0, 0.1), weight=0.1)
    policy = CostModelPolicy(live, batch=1)  # a plain pass to compare with after 32 that draft
    stalled = PassTime(1, 2, 1, 999.5, 999.5, 999.5)
    policy.observe(torch.tensor([1]), 1, stalled)
    chosen = _run_policy(policy, 99, 1.2)
    assert [i for i, k in enumerate(chosen) if k == 0] == [31, 64, 97]  # the checks only


def test_drafting_priced_in_a_slow_spell_is_drafting_again_within_a_few_probes() -> None:
    """The first drafting passes run in a slow spell (verifying in 3.75 s); it ends before the
    first plain pass (1 s), so drafting looks dear. After it a drafting pass verifies in 1.2 s: the
    probes must bring drafting back soon, not after hundreds of passes."""
    live = LiveCosts(_costs(0.0, 0.1), weight=0.1)
    policy = CostModelPolicy(live, batch=1)
    spell = _run_policy(policy, 33, 3.75)
    assert spell[-1] == 0 and live.markup(1) > 1.5
    after = _run_policy(policy, 200, 1.2)
    back = next(i for i in range(len(after)) if all(k > 0 for k in after[i : i + 8]))
    assert back <= 4 * 33  # 3 probes at 32 plain passes apart, the rests' rounding aside
    assert sum(k > 0 for k in after[back:]) >= 0.9 * len(after[back:])


def test_the_engine_starts_each_language_from_the_acceptance_it_has_seen(tiny) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])  # the main model as its own assistant
    engine._costs = _costs(0.0, 0.01)  # drafting pays: every request drafts
    assert engine.length_policy(1, None, False, ["en"]).accepted[0] == pytest.approx(0.7 * 4)
    rng = np.random.default_rng(2)
    pcm = [(0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)]
    states = engine.encode(engine.log_mel(pcm))
    (result,) = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=20)])
    drafted = result.stats.drafted  # every one right: an identical assistant
    prior = engine_module._PRIOR_DRAFTS * math.exp(-drafted / engine_module._ACCEPTANCE_MEMORY)
    assert engine.acceptance("en") == pytest.approx((0.7 * prior + drafted) / (prior + drafted))
    assert engine.acceptance("en") > 0.8
    policy = engine.length_policy(2, None, False, ["en", "fr"])
    np.testing.assert_allclose(policy.accepted / policy.trials, [engine.acceptance("en"), 0.7])


def test_a_decision_not_to_draft_stands_for_a_few_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain passes where drafting does not pay skip the decision and, but for the last of each
    rest, the pricing; rows leaving the batch end the rest."""
    live = LiveCosts(_costs(1.0, 1.0), weight=0.5)  # drafting never pays
    decided, priced = [], []
    monkeypatch.setattr(drafters, "best_draft_length", lambda *args: decided.append(1) or 0)
    monkeypatch.setattr(live, "observe", priced.append)
    policy = CostModelPolicy(live, batch=2, probe_every=100, rest=4)
    for _ in range(10):
        assert policy.current() == 0
        policy.observe(torch.tensor([0, 0]), 0, PassTime(2, 1, 0, 0.0, 1.0))
    assert len(decided) == 2 and len(priced) == 2  # decided at passes 0 and 5, priced at 4 and 9
    policy.current()
    policy.keep(torch.tensor([1]))
    policy.current()
    assert len(decided) == 4


def test_a_language_whose_drafts_are_rejected_probes_less_often(tiny) -> None:
    rng = np.random.default_rng(3)
    pcm = [(0.1 * rng.standard_normal(16000 * 4)).astype(np.float32)]
    fr = [DecodingOptions(language="fr", max_new_tokens=20)]
    # A random assistant: drafting pays on the prior, its drafts are rejected, the requests end plain.
    # At these prices drafting pays above half the drafts right: once the language's drafts, the
    # prior's 16 among them, fall below, each request that ends plain doubles the interval.
    engine = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"])
    engine._costs = _costs(0.0, 0.5)
    states = engine.encode(engine.log_mel(pcm))
    intervals, drafted, accepted = [], 0, 0
    for _ in range(10):
        (result,) = engine.decode(states, fr)
        drafted, accepted = drafted + result.stats.drafted, accepted + result.stats.accepted
        intervals.append(engine._probe_every.get("fr", 32))
    assert drafted > 2 * accepted and engine.acceptance("fr") < 0.5
    assert intervals[0] == 32 and intervals == sorted(intervals) and intervals[-1] >= 256
    assert engine.length_policy(1, None, False, ["fr"]).probe_every == intervals[-1]
    assert engine.length_policy(2, None, False, ["fr", "en"]).probe_every == 32  # the batch's least
    # The main model as its own assistant: a request that ends drafting probes as often as at first.
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    engine._probe_every["fr"] = 256
    engine._costs = _costs(1.0, 1.0)  # no drafts at all: nothing learnt about probing
    engine.decode(states, fr)
    assert engine._probe_every["fr"] == 256
    engine._costs = _costs(0.0, 0.01)  # drafting pays: the request ends drafting
    engine.decode(states, fr)
    assert engine._probe_every["fr"] == 32


def test_probing_counts_the_plain_passes_of_earlier_requests(tiny) -> None:
    """Requests shorter than the probe interval still probe, every 32 plain passes of their language:
    counted afresh per request, a language the prices had stopped drafting would never draft again."""
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])  # every draft right
    engine._costs = _costs(1.0, 1.0)  # drafting never pays by the prices: only probes draft
    rng = np.random.default_rng(4)
    states = engine.encode(engine.log_mel([(0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)]))
    short = [DecodingOptions(language="de", max_new_tokens=10)]
    results = [engine.decode(states, short)[0].stats for _ in range(4)]
    assert [s.drafted for s in results] == [0, 0, 0, 1]  # German's 33rd plain pass probes
    assert [s.main_passes for s in results] == [10, 10, 10, 9]  # the probe's draft was right
    assert engine._plain_passes["de"] == 9 - 3  # the passes after the probe
