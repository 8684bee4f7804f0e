"""Drafters propose the tokens the main model verifies. One class per drafting strategy."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .cost_model import PassCosts, PassTime, best_draft_length, best_extension
from .decoder import DecoderCache, Head, WhisperDecoderRunner

__all__ = [
    "MAX_DRAFT",
    "PRIOR",
    "PROBE_EVERY",
    "AssistantDrafter",
    "CostModelPolicy",
    "DraftLengthPolicy",
    "Drafter",
    "LengthPolicy",
]

MAX_DRAFT = 16
# A row's draft acceptance before anything is known of it, and the plain passes in a row after which a
# policy that stopped drafting probes with one draft: `CostModelPolicy`'s defaults, which the engine
# starts from before it has learnt better per language.
PRIOR, PROBE_EVERY = 0.7, 32
# Tokens an assistant catches up on before drafting while it drafts every pass: the main model's own
# token, and before it the last draft when every draft was accepted.
_STEADY_WIDTH = 2


class Drafter(Protocol):
    def propose(self, seq: Tensor, length: Tensor, room: int, masks) -> Tensor:
        """Draft tokens `[B, k]` continuing `seq[b, :length[b]]` for every row, `0 <= k <= room`
        (`k = 0`: the next verify pass is a plain greedy step). `masks(drafts, 1)`: the logit filters'
        mask for the position after the drafts made so far (a list of `[B, 1]` tokens)."""

    def observe(self, n_accepted: Tensor, k: int, timed: PassTime | None = None) -> None:
        """Learn from how many of the `k` drafted tokens each row accepted, and what the pass cost."""

    def keep(self, rows: Tensor) -> None:
        """Drop finished rows; `rows` are the indices of those still decoding."""


class LengthPolicy(Protocol):
    def current(self) -> int:
        """Drafts planned before the first is made (0: a plain greedy step)."""

    def extend(self, drafted: int, chain: list[float], expected: float) -> bool:
        """Whether to draft one more token after `drafted`; `chain[b]` is the assistant's probability
        that row b's drafts are all right and `expected` the tokens the pass would commit."""

    def observe(self, n_accepted: Tensor, k: int, timed: PassTime | None = None) -> None: ...
    def keep(self, rows: Tensor) -> None: ...


class DraftLengthPolicy:
    """Constant draft length, or the adaptive heuristic: +2 after a fully accepted draft, -1 otherwise.

    Each row adapts on its own; the batch drafts the rounded-up mean so that one unlucky row
    does not shrink the drafts of the others and one lucky row does not inflate everyone's.
    """

    def __init__(self, batch: int, initial: int, adaptive: bool, maximum: int = MAX_DRAFT) -> None:
        self.lengths = torch.full((batch,), float(initial))
        self.adaptive = adaptive
        self.maximum = maximum

    def current(self) -> int:
        return int(torch.ceil(self.lengths.mean())) if self.lengths.numel() else 0

    def extend(self, drafted: int, chain: list[float], expected: float) -> bool:
        return drafted < self.current()

    def observe(self, n_accepted: Tensor, k: int, timed: PassTime | None = None) -> None:
        if self.adaptive and k > 0:
            grown = torch.where(n_accepted >= k, self.lengths + 2, (self.lengths - 1).clamp(min=1))
            self.lengths = grown.clamp(max=self.maximum)

    def keep(self, rows: Tensor) -> None:
        self.lengths = self.lengths[rows]


class CostModelPolicy:
    """The draft length with the most expected tokens per second for the rows in the batch.

    Each row's acceptance probability is estimated from its own verify passes (accepted drafts over
    accepted plus rejections), starting from `prior` (one for all rows or one per row) worth
    `prior_weight` observations, and the
    measured pass costs turn it into a length: long drafts at batch 1 where verifying is nearly free,
    short ones or none (plain greedy) when a large batch makes every verified token cost full price.
    After each draft the choice is made again with what the assistant said of its own tokens: a
    confident run goes on, an unsure token ends the draft (held-out English, 6k head: 86% of the
    tokens it gives at least 0.5 are right, 28% of the others). `LiveCosts` learn the prices in
    place from every pass this policy observes; a fixed `DecoderCosts` table stays as it is.

    Acceptance and draft prices are learnt only from passes that draft, so a policy that has stopped
    drafting would never find out that drafting pays again (the prices of a shared machine swing
    for a while, a row's speech grows easier). After `probe_every` plain passes in a row it drafts
    one token, which costs a batch of 16 about 1% of its passes.

    The prices can be wrong about drafting as a whole, not only about its length: `LiveCosts`
    measures how much dearer than priced the passes that drafted run, next to plain ones
    (`LiveCosts.markup`), and prices drafting by it. While drafting, one pass in `check_every` is
    plain, so that the comparison stays current (about 3% of the speed-up where drafting pays).

    `plain_passes`: those the requests before this one ended with. A request is often shorter than
    `probe_every` passes: counting afresh in each, a language whose acceptance estimate once fell
    below what drafting needs would never probe, nor draft, again.

    A decision not to draft stands for `rest` passes (until a probe is due or rows leave), and of
    those plain passes only the last is priced: acceptance moves only with drafts and the prices
    slowly, while deciding and pricing after every pass is Python work that a whisper-base pass
    notices where the assistant is rarely right (FLEURS, docs/benchmarks.md).
    """

    def __init__(
        self,
        costs: PassCosts,
        batch: int,
        prior: float | Sequence[float] = PRIOR,
        prior_weight: float = 4.0,
        maximum: int = MAX_DRAFT,
        probe_every: int = PROBE_EVERY,
        check_every: int = 32,
        rest: int = 8,
        plain_passes: int = 0,
    ) -> None:
        self.costs = costs
        # On the host in numpy, handed to the cost model as floats (`cost_model.expected_tokens`).
        self.accepted = np.broadcast_to(np.asarray(prior, dtype=np.float64) * prior_weight, (batch,)).copy()
        self.trials = np.full(batch, float(prior_weight))
        self.maximum = maximum
        self.probe_every = probe_every
        self.check_every = check_every
        self.plain_passes = plain_passes  # in a row, counting those of earlier requests
        self.drafting_passes = 0  # in a row
        self.rest = rest
        self._resting = 0  # plain passes left before deciding again

    @property
    def stopped_drafting(self) -> bool:
        """Whether the last passes were plain, more than the one plain pass that a check makes."""
        return self.plain_passes > 1

    def current(self) -> int:
        if self._resting and self.plain_passes < self.probe_every:
            self._resting -= 1
            return 0
        self._resting = 0
        best = best_draft_length(self.costs, self.optimistic_acceptance(), self.maximum)
        probing = self.plain_passes >= self.probe_every
        if best == 0:
            if probing:
                return 1
            self._resting = self.rest
            return 0
        if self.drafting_passes >= self.check_every:
            return 0  # a plain pass keeps the measured price of plain decoding current
        return best

    def optimistic_acceptance(self) -> list[float]:
        """Each row's acceptance estimate plus its standard error. A row's drafts are judged by a
        handful of them: near break-even (FLEURS, half the single drafts right, a 2-token pass at
        1.45 plain ones) one rejected draft put the plain estimate below it, and the row stayed
        plain until its next probe, 32 passes on, though one draft every pass gave 1.05-1.12x.
        Optimism goes with the rows least known and fades as their drafts are counted."""
        rate = self.accepted / self.trials
        return np.minimum(rate + np.sqrt(rate * (1 - rate) / self.trials), 1.0).tolist()

    def extend(self, drafted: int, chain: list[float], expected: float) -> bool:
        acceptance = (self.accepted / self.trials).tolist()
        return best_extension(self.costs, acceptance, self.maximum, drafted, chain, expected) > 0

    def observe(self, n_accepted: Tensor, k: int, timed: PassTime | None = None) -> None:
        if timed is not None and not self._resting:  # resting: one plain pass in `rest` is priced
            self.costs.observe(timed)
        self.plain_passes = 0 if k else self.plain_passes + 1
        self.drafting_passes = self.drafting_passes + 1 if k else 0
        if k > 0:
            accepted = n_accepted.numpy().astype(np.float64)
            self.accepted += accepted
            self.trials += accepted + (accepted < k)

    def keep(self, rows: Tensor) -> None:
        index = rows.numpy()
        self.accepted, self.trials = self.accepted[index], self.trials[index]
        self._resting = 0  # other rows, another batch size: decide again


class AssistantDrafter:
    """Greedy drafts from a smaller Whisper decoder over its own static cache.

    The assistant's cache is valid up to `fed[b]`; before drafting it catches up on the tokens
    the main model committed since (one, or two after a fully accepted draft). Feeding the same
    window width to every row re-writes a few already-valid slots, which is cheaper than padding.
    The policy decides after every draft whether to make another, given the assistant's
    probabilities for the tokens drafted so far. `head`: the runner's output head to draft with
    (`WhisperDecoderRunner.head_for` the batch's languages), by default its own.
    """

    def __init__(
        self,
        runner: WhisperDecoderRunner,
        cache: DecoderCache,
        policy: LengthPolicy,
        head: Head | None = None,
    ) -> None:
        self.runner = runner
        self.head = head
        self.cache = cache
        self.policy = policy
        self.fed = torch.zeros(cache.self_k.shape[1], dtype=torch.long)
        self._drafted_from = self.fed
        self._first_s = 0.0  # the last pass's drafting up to the end of its first step
        self._catch_up_s = 0.0  # the last pass's feeding of tokens the assistant missed

    def propose(self, seq: Tensor, length: Tensor, room: int, masks) -> Tensor:
        began = time.perf_counter()
        if min(self.policy.current(), room) == 0:
            return seq.new_empty(len(length), 0)
        width = int((length - self.fed).max())
        start = length - width
        tokens = seq.gather(1, start[:, None] + torch.arange(width))
        self._catch_up_s = 0.0
        if width > _STEADY_WIDTH:
            # After plain passes: feed what the assistant missed apart, and leave it out of the price
            # of drafting (a probe after 32 plain passes would otherwise look several steps dear).
            self.runner.states(tokens[:, :-1], start, self.cache)
            start, tokens = length - 1, tokens[:, -1:]
            self._catch_up_s = time.perf_counter() - began
        drafts = []
        chain = [1.0] * len(length)
        expected = float(len(length))
        while len(drafts) < room:
            i = len(drafts)
            mask = masks(drafts, 1)
            tokens, probability = self.runner.draft(tokens, start, self.cache, mask, self.head)
            if not drafts:  # the first step pays for the time since the assistant last ran: priced apart
                self._first_s = time.perf_counter() - began - self._catch_up_s
            drafts.append(tokens)
            start = length + i
            chain = [c * p for c, p in zip(chain, probability.tolist(), strict=True)]
            expected += sum(chain)
            if not self.policy.extend(len(drafts), chain, expected):
                break
        # Slots past the last fed draft are stale; observe() trims to what the main model accepted.
        self.fed = length + len(drafts) - 1
        self._drafted_from = length
        return torch.cat(drafts, dim=1).cpu()

    def observe(self, n_accepted: Tensor, k: int, timed: PassTime | None = None) -> None:
        if k:  # a plain pass left the cache as it was
            self.fed = torch.minimum(self.fed, self._drafted_from + n_accepted)
        if timed is not None and k:
            draft_s = max(timed.draft_s - self._catch_up_s, 0.0)
            timed = replace(timed, draft_s=draft_s, first_draft_s=min(self._first_s, draft_s))
        self.policy.observe(n_accepted, k, timed)

    def keep(self, rows: Tensor) -> None:
        self.cache = self.cache.select(rows)
        self.fed = self.fed[rows]
        self._drafted_from = self._drafted_from[rows]
        self.policy.keep(rows)
