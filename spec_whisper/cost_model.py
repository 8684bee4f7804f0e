"""How long decoder passes take on this device, and the draft length that pays best for a batch.

Verifying `k` drafts for `B` rows is one main forward over `B x (k + 1)` tokens plus `k` assistant
steps. At batch 1 on a CPU the main forward is bound by reading the weights, so extra tokens are
nearly free and long drafts pay; at batch 16 it is bound by arithmetic, every verified token costs
about what a decoded one does, and a rejected draft is pure loss. No constant draft length is right
for both, so the engine times the passes once (`DecoderCosts.measure`) and each verify pass picks
the `k` that maximises expected tokens per second for the rows it holds (`best_draft_length`),
down to `k = 0`, which is plain greedy decoding. Once drafting, the choice is made again after
every draft (`best_extension`), now knowing how sure the assistant was of the tokens so far.

The start-up timing runs each pass shape alone, on random encoder states, once; an assistant step
both right after the main passes and right after another step, since only the first draft of a pass
pays for the time since the assistant last ran (its weights and keys gone cold: on this shared machine
a draft step costs as much more after a few milliseconds idle as after a main pass, and the first
step follows one; `scripts/bench_draft_gap.py`).
In place the passes cost more (a draft step carries the logit filters and the policy), and a shared
machine's speed drifts after the timing (a table timed on another day put the
assistant's step at 0.158 of a main step instead of 0.23). So `LiveCosts` keeps the table's shape
and rescales it, per batch size, by the verify passes and draft steps decoding runs (`PassTime`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .decoder import DecoderCache, WhisperDecoderRunner

__all__ = [
    "DecoderCosts",
    "LiveCosts",
    "PassTime",
    "TableTiming",
    "best_draft_length",
    "best_extension",
    "expected_tokens",
    "synchronize",
]

BATCHES = (1, 2, 4, 8, 16)
TOKENS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 17)
_LOG_BATCHES = [math.log(b) for b in BATCHES]
Rates = Sequence[float] | Tensor | np.ndarray  # one probability per row
# Where in the sequence the timed passes sit: a typical utterance's middle.
_POSITION = 40


@dataclass(frozen=True)
class PassTime:
    """Wall time of one speculative pass as decoding ran it: `drafts` assistant steps for `rows` rows,
    then one main pass over `tokens` tokens per row. `first_draft_s`: the part of `draft_s` up to the
    end of the first step, where the drafter timed it."""

    rows: int
    tokens: int
    drafts: int
    draft_s: float
    verify_s: float
    first_draft_s: float | None = None


@dataclass(frozen=True)
class DecoderCosts:
    """Seconds per pass: `verify[i, j]` for BATCHES[i] rows x TOKENS[j] tokens through the main decoder
    (states and greedy head), `draft[i]` for one assistant step of BATCHES[i] rows right after another,
    and `first_extra[i]` what the first step of a pass costs on top, a main pass after the last step
    (the assistant's weights and keys have gone cold meanwhile). Drafting `k` tokens costs
    `first_extra + k * draft`."""

    verify: np.ndarray
    draft: np.ndarray
    first_extra: np.ndarray = field(default_factory=lambda: np.zeros(len(BATCHES)))
    # How busy the machine was while each row was timed: the median, over its shapes, of the slowest
    # timed round over the fastest. Quiet here: 1.03-1.25; with two busy processes beside it: 1.4-29.
    spread: np.ndarray = field(default_factory=lambda: np.ones(len(BATCHES)))
    # pass_parts results by (batch, maximum): the draft-length choice runs every verify pass.
    _pass_parts: dict[tuple[int, int], np.ndarray] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    _prices: dict[tuple[int, int], list[float]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    # Prices already interpolated: decoding asks for a few shapes after every pass, where numpy's
    # interpolation would cost about 50 us each time.
    _looked_up: dict[tuple, float] = field(default_factory=dict, init=False, compare=False, repr=False)

    def verify_s(self, batch: int, tokens: int) -> float:
        def per_batch() -> np.ndarray:
            return np.array([np.interp(tokens, TOKENS, row) for row in self.verify])

        return self._at_batch(batch, ("verify", tokens), per_batch)

    def draft_s(self, batch: int) -> float:
        return self._at_batch(batch, ("draft",), lambda: self.draft)

    def drafting_s(self, batch: int, drafts: int) -> float:
        """Seconds of `drafts` assistant steps of one pass, its first included."""
        if drafts == 0:
            return 0.0
        return self._at_batch(batch, ("first",), lambda: self.first_extra) + drafts * self.draft_s(batch)

    def _at_batch(self, batch: int, price: tuple, per_batch: Callable[[], np.ndarray]) -> float:
        """`price` at `batch` rows from `per_batch()`, its seconds for each of BATCHES, interpolated per
        row the first time it is asked for."""
        key = (*price, batch)
        if key not in self._looked_up:
            self._looked_up[key] = float(np.interp(batch, BATCHES, per_batch() / BATCHES) * batch)
        return self._looked_up[key]

    def pass_s(self, batch: int, maximum: int) -> np.ndarray:
        """Seconds of one verify pass of `batch` rows with k = 0..maximum drafts, drafting included."""
        return self.pass_parts(batch, maximum).sum(axis=0)

    def pass_parts(self, batch: int, maximum: int) -> np.ndarray:
        """`pass_s` as its verify, first-step and later-steps seconds, `[3, maximum + 1]`."""
        key = (batch, maximum)
        if key not in self._pass_parts:
            first = self.drafting_s(batch, 1)
            self._pass_parts[key] = np.array(
                [
                    [self.verify_s(batch, k + 1) for k in range(maximum + 1)],
                    [first if k else 0.0 for k in range(maximum + 1)],
                    [max(k - 1, 0) * self.draft_s(batch) for k in range(maximum + 1)],
                ]
            )
        return self._pass_parts[key]

    def pass_prices(self, batch: int, maximum: int) -> list[float]:
        """`pass_s` as Python floats, for the policy (`expected_tokens`)."""
        key = (batch, maximum)
        if key not in self._prices:
            self._prices[key] = self.pass_s(batch, maximum).tolist()
        return self._prices[key]

    def observe(self, timed: PassTime) -> None:
        """A fixed table learns nothing from the passes decoding runs (`LiveCosts` does)."""

    def stale_batches(self) -> list[int]:
        """A fixed table is never timed again (`LiveCosts.stale_batches`)."""
        return []

    def describe(self, batches: Sequence[int] = (1, 8)) -> str:
        """The table in a line per batch size, for a server's log: the main pass over 1, 2, 4 and 8
        tokens per row, and an assistant step (and what the first of a pass costs on top), in ms."""
        lines = []
        for batch in batches:
            verify = "/".join(f"{self.verify_s(batch, t) * 1e3:.1f}" for t in (1, 2, 4, 8))
            step, first = self.draft_s(batch), self.drafting_s(batch, 1) - self.draft_s(batch)
            lines.append(
                f"batch {batch}: main pass over 1/2/4/8 tokens {verify} ms, "
                f"assistant step {step * 1e3:.1f} ms (+{first * 1e3:.1f} the first of a pass)"
            )
        return "; ".join(lines)

    @classmethod
    def measure(
        cls,
        main: WhisperDecoderRunner,
        assistant: WhisperDecoderRunner | None,
        frames: int,
        repeats: int = 3,
        batches: Sequence[int] = BATCHES,
    ) -> DecoderCosts:
        """Median time of each pass shape, over `frames` encoder frames of random states, timed at once
        (`TableTiming` times them a slice at a time). Only `batches` (of BATCHES) are timed; the
        others' prices are left at zero (`lowest`)."""
        table = TableTiming(main, assistant, frames, repeats, batches).advance(math.inf)
        assert table is not None
        return table

    def lowest(self, other: DecoderCosts, batches: Sequence[int]) -> DecoderCosts:
        """This table with, for `batches`, each price the lower of its own and `other`'s: a busy machine
        only ever slows a pass, so the lower of two timings is the nearer to the machine's own."""
        rows = [BATCHES.index(b) for b in batches]
        verify, draft, first_extra = self.verify.copy(), self.draft.copy(), self.first_extra.copy()
        verify[rows] = np.minimum(verify[rows], other.verify[rows])
        draft[rows] = np.minimum(draft[rows], other.draft[rows])
        first_extra[rows] = np.minimum(first_extra[rows], other.first_extra[rows])
        spread = self.spread.copy()
        spread[rows] = other.spread[rows]  # how busy the machine was at the latest timing
        return DecoderCosts(verify, draft, first_extra, spread)


class TableTiming:
    """`DecoderCosts.measure`, a timed pass at a time: `advance(seconds)` times passes for about that
    long and hands back the table once every shape is timed. The engine times a row again this way
    between requests (`SpeculativeWhisper.costs`): at once, timing batch 16 again held the decoder
    about 7 s on whisper-base here, and that request's batch waited.

    The shapes of one batch size are timed in turn, round after round, so that a slow spell of the
    machine (these are shared cores) lands on all of them rather than on the few it happens to
    overlap; round 0 warms up and is not counted. Resumed after a pause (`advance` again), the first
    pass finds the caches cold, so it runs once untimed first. The rows' cross-attention keys and
    values are one random row's, repeated: computing each row's would take half a second at batch 16
    in one piece, and a pass reads them the same whatever they hold."""

    def __init__(
        self,
        main: WhisperDecoderRunner,
        assistant: WhisperDecoderRunner | None,
        frames: int,
        repeats: int = 3,
        batches: Sequence[int] = BATCHES,
    ) -> None:
        self.batches = [b for b in BATCHES if b in batches]
        self._passes = self._timed_passes(main, assistant, frames, repeats)
        next(self._passes)  # to its first `yield`, which waits for `advance`

    def advance(self, seconds: float) -> DecoderCosts | None:
        """Time passes for about `seconds` (at least one); the table once the last shape is timed."""
        ends, cold = time.perf_counter() + seconds, True
        try:
            while True:
                self._passes.send(cold)
                cold = False
                if time.perf_counter() >= ends:
                    return None
        except StopIteration as finished:
            return finished.value

    @torch.inference_mode()
    def _timed_passes(
        self,
        main: WhisperDecoderRunner,
        assistant: WhisperDecoderRunner | None,
        frames: int,
        repeats: int,
    ) -> Generator[None, bool, DecoderCosts]:
        def timed(runner: WhisperDecoderRunner, cache: DecoderCache, tokens: int) -> Callable[[], float]:
            batch = cache.self_k.shape[1]
            ids = torch.randint(0, runner.vocab_size, (batch, tokens))
            start = torch.full((batch,), _POSITION)
            decisive = _decisive_states(runner, batch * tokens).view(batch, tokens, -1)
            # As decoding runs them: token ids from the host, the chosen tokens back to it.
            return lambda: (
                _seconds(lambda: runner.states(ids, start, cache))
                + _seconds(lambda: runner.head.greedy(decisive, _no_mask).cpu())
            )

        verify, draft = np.zeros((len(BATCHES), len(TOKENS))), np.full(len(BATCHES), np.inf)
        first_extra, spread = np.zeros(len(BATCHES)), np.ones(len(BATCHES))
        cold = yield
        for batch in self.batches:
            i = BATCHES.index(batch)
            one_row = torch.randn(1, frames, main.encoder_dim, dtype=main.dtype, device=main.device)
            cache = main.new_cache(one_row).repeated(batch)
            passes = [timed(main, cache, tokens) for tokens in TOKENS]
            if assistant is not None:
                own = torch.randn(
                    batch, frames, assistant.encoder_dim, dtype=assistant.dtype, device=assistant.device
                )
                # An assistant may read the main decoder's cross-attention cache (`cross_from`).
                step = timed(assistant, assistant.new_cache(own, cache), 1)
                passes += [step, step]  # right after the main passes, then right after itself
            times = np.zeros((repeats + 1, len(passes)))
            for r in range(repeats + 1):
                for j, run in enumerate(passes):
                    if cold:
                        run()
                    times[r, j] = run()
                    cold = yield
            times = times[1:]  # round 0 warms up
            medians = np.median(times, axis=0)
            spread[i] = float(np.median(times.max(axis=0) / times.min(axis=0)))
            # A pass over more tokens never costs less: a median above a later one is noise.
            verify[i] = np.minimum.accumulate(medians[: len(TOKENS)][::-1])[::-1]
            if assistant is not None:
                draft[i] = medians[-1]
                first_extra[i] = max(0.0, medians[-2] - medians[-1])
        return DecoderCosts(verify, draft, first_extra, spread)


class LiveCosts:
    """A `DecoderCosts` table rescaled by what passes cost in place.

    For each of the table's batch sizes, an exponential average (in log space, each reading's ratio
    clamped to [1/4, 4] so that one stall cannot swing it) of measured over tabled seconds for verify
    passes, which run every pass and so follow the machine's speed (`verify_scale`); and, relative
    to the verify pass they came with, one for a pass's first draft step (with the drafter's
    per-pass work, and the caches the main pass emptied) and one for the steps after it. A batch
    between two table sizes takes the nearer's scales. The draft length depends on the ratios of
    these prices, which can drift from the table's. Learnt in absolute seconds, draft prices learnt
    in a slow spell of the machine stayed dear until drafting ran again, while plain passes brought
    the verify price back, and a policy that saw drafts dear drafted too little to learn otherwise.
    Relative, a spell slows both alike, and the plain passes after it bring the draft prices back.

    The table's shape between a plain pass and one that verifies drafts can be wrong in place (at
    batch 8 here it put a 2-token pass at 1.2 plain passes, in place 1.5; at batch 1 on FLEURS a
    2-token pass ran 1.17 times dearer, next to a plain one, than it said). So the verify passes
    that came with drafts cost `markup` times a plain pass's scale, learnt from the latest readings
    of each kind (`recent_weight`; a probe, a drafting pass after plain ones, at `rare_weight`):
    nearby in time, so that the machine's speed, which moves both, cancels out of it. Acceptance
    stays the policy's, per row and language. An earlier verdict on whether drafting pays compared
    seconds per committed token, drafting against plain, and so mixed prices with acceptance: near
    break-even (FLEURS, half the single drafts right) one rejected draft flipped it, a verdict
    reached on one language stopped another's drafting, and the engine stayed plain where one draft
    every pass gave 1.01-1.13x.

    One scale per batch size cannot mend a table whose shape is wrong. Timed during a slow spell of
    the machine (another process on the cores), a table put a 2-token verify pass at 1.66 1-token
    passes where quiet timings give 1.0-1.3, and the policy hardly drafted for the rest of the run.
    So a row timed on a busy machine (`DecoderCosts.spread` over 1.3) is timed again
    (`stale_batches`, `retimed`) once 16 of its passes have been priced, and while its timings stay
    busy after 32 more and 64 more, each shape keeping the lowest of its prices. Any row is timed
    again where its verify passes run in place under 2/3 of the table's price (a table timed on a
    slower machine than the one running now: in place they otherwise run at 1.0-1.45x its prices),
    the passes between two timings doubling each time. Timing a row again takes 0.5 s at batch 1
    and 7 s at batch 16 on whisper-base here, so a quiet start times nothing again.
    """

    # `stale_batches`: passes priced before a row is timed again (doubling after each retiming); the
    # most retimings of a row timed on a busy machine, and the spread that says it was; and the share
    # of the table's verify price under which the passes in place have any row timed again.
    RETIME_READINGS, SECOND_OPINIONS, BUSY_SPREAD, RETIME_BELOW = 16, 3, 1.3, 2 / 3

    def __init__(
        self,
        table: DecoderCosts,
        weight: float = 0.1,
        recent_weight: float = 0.3,
        rare_weight: float = 0.5,
    ) -> None:
        self.table = table
        self.weight = weight
        self.recent_weight = recent_weight
        self.rare_weight = rare_weight
        self.verify_scale = np.ones(len(BATCHES))  # a plain pass's, in place over tabled
        self.first_relative = np.ones(len(BATCHES))  # the first draft step's scale over its verify pass's
        self.draft_relative = np.ones(len(BATCHES))  # the later steps' scale over their verify pass's
        self._prices: dict[tuple[int, int], list[float]] = {}  # pass_prices until the next observe
        self._since_timed = [0] * len(BATCHES)  # verify passes seen since each row was timed
        self._retime_after = [self.RETIME_READINGS] * len(BATCHES)
        self._retimings = [0] * len(BATCHES)
        # The latest readings of verify passes, log of in place over tabled, by batch size: [plain,
        # drafting], NaN until one has run; and the plain passes since the last that drafted.
        self._recent = np.full((len(BATCHES), 2), np.nan)
        self._plain_in_a_row = [0] * len(BATCHES)

    @property
    def verify(self) -> np.ndarray:
        """The table's `verify` as rescaled so far for plain passes."""
        return self.table.verify * self.verify_scale[:, None]

    @property
    def drafting_scale(self) -> np.ndarray:
        """In place over tabled seconds of a verify pass that came with drafts, by batch size."""
        return self.verify_scale * np.array([self._markup(size) for size in range(len(BATCHES))])

    @property
    def first_scale(self) -> np.ndarray:
        """In place over tabled seconds of a pass's first draft step, by batch size."""
        return self.drafting_scale * self.first_relative

    @property
    def draft_scale(self) -> np.ndarray:
        """In place over tabled seconds of the later draft steps, by batch size."""
        return self.drafting_scale * self.draft_relative

    @property
    def draft(self) -> np.ndarray:
        return self.table.draft * self.draft_scale

    def markup(self, batch: int) -> float:
        """How much dearer, each over the table, a verify pass with drafts runs in place than a plain
        one at this batch size, by their latest readings: 1 until both kinds have run."""
        return self._markup(self._size(batch))

    def _markup(self, size: int) -> float:
        plain, drafting = self._recent[size]
        return 1.0 if math.isnan(plain + drafting) else math.exp(drafting - plain)

    @staticmethod
    def _size(batch: int) -> int:
        distances = [abs(size - math.log(batch)) for size in _LOG_BATCHES]
        return distances.index(min(distances))

    def verify_s(self, batch: int, tokens: int) -> float:
        """A verify pass over `tokens` per row: plain with one, with drafts for more."""
        size = self._size(batch)
        scale = self.verify_scale[size] * (1.0 if tokens == 1 else self._markup(size))
        return self.table.verify_s(batch, tokens) * scale

    def draft_s(self, batch: int) -> float:
        size = self._size(batch)
        scale = self.verify_scale[size] * self._markup(size) * self.draft_relative[size]
        return self.table.draft_s(batch) * scale

    def drafting_s(self, batch: int, drafts: int) -> float:
        if drafts == 0:
            return 0.0
        size = self._size(batch)
        scale = self.verify_scale[size] * self._markup(size) * self.first_relative[size]
        return self.table.drafting_s(batch, 1) * scale + (drafts - 1) * self.draft_s(batch)

    def pass_s(self, batch: int, maximum: int) -> np.ndarray:
        size = self._size(batch)
        drafting = self.verify_scale[size] * self._markup(size)
        scales = [drafting, drafting * self.first_relative[size], drafting * self.draft_relative[size]]
        parts = self.table.pass_parts(batch, maximum)
        seconds = np.asarray(scales) @ parts
        seconds[0] = parts[0, 0] * self.verify_scale[size]
        return seconds

    def pass_prices(self, batch: int, maximum: int) -> list[float]:
        key = (batch, maximum)
        if key not in self._prices:
            self._prices[key] = self.pass_s(batch, maximum).tolist()
        return self._prices[key]

    def observe(self, timed: PassTime) -> None:
        size = self._size(timed.rows)
        self._prices.clear()
        self._since_timed[size] += 1
        kind = int(timed.drafts > 0)
        if not kind and timed.tokens > 1:  # a request's first pass, over its prompt: neither kind
            return
        verify = timed.verify_s / self.table.verify_s(timed.rows, timed.tokens)
        if not verify > 0:
            return
        # A probe takes `rare_weight`: at `weight`, drafting priced in a slow spell of the machine
        # stood for about 15 probes, some 500 passes. One plain pass between drafting ones is the
        # policy's check: drafting goes on.
        reading = _clamped_log(verify)
        recent = self._recent[size]
        probe = kind and self._plain_in_a_row[size] > 1
        weight = self.rare_weight if probe else self.recent_weight
        known = reading if math.isnan(recent[kind]) else recent[kind]
        recent[kind] = known + weight * (reading - known)
        self._plain_in_a_row[size] = 0 if kind else self._plain_in_a_row[size] + 1
        markup = self._markup(size) if kind else 1.0
        self.verify_scale[size] = self._updated(self.verify_scale[size], verify / markup)
        if not kind:
            return
        if timed.first_draft_s is None:  # one reading for the whole drafting, shared out as tabled
            ratio = timed.draft_s / self.table.drafting_s(timed.rows, timed.drafts) / verify
            self.first_relative[size] = self._updated(self.first_relative[size], ratio)
            self.draft_relative[size] = self._updated(self.draft_relative[size], ratio)
            return
        first = timed.first_draft_s / self.table.drafting_s(timed.rows, 1) / verify
        self.first_relative[size] = self._updated(self.first_relative[size], first)
        if timed.drafts > 1:
            later = (
                (timed.draft_s - timed.first_draft_s) / (timed.drafts - 1) / self.table.draft_s(timed.rows)
            )
            self.draft_relative[size] = self._updated(self.draft_relative[size], later / verify)

    def stale_batches(self) -> list[int]:
        """The batch sizes whose table rows are due to be timed again."""
        return [
            batch
            for i, batch in enumerate(BATCHES)
            if self._since_timed[i] >= self._retime_after[i]
            and (
                (self._retimings[i] < self.SECOND_OPINIONS and self.table.spread[i] > self.BUSY_SPREAD)
                or self.verify_scale[i] < self.RETIME_BELOW
            )
        ]

    def retimed(self, table: DecoderCosts, batches: Sequence[int]) -> None:
        """Keep, for `batches`, the lower of each price and `table`'s (`DecoderCosts.measure` timed them
        again), and learn their scales afresh: drafting priced dear under the old prices was priced
        by probes alone, each of which finds the assistant cold, and it kept drafting off for some
        100 passes after a retiming had mended the prices."""
        self.table = self.table.lowest(table, batches)
        for batch in batches:
            i = BATCHES.index(batch)
            self.verify_scale[i] = self.first_relative[i] = self.draft_relative[i] = 1.0
            self._recent[i] = np.nan
            self._since_timed[i] = 0
            self._retime_after[i] *= 2
            self._retimings[i] += 1
        self._prices.clear()

    def _updated(self, scale: float, ratio: float) -> float:
        if not math.isfinite(ratio) or ratio <= 0:  # a table without an assistant's timings
            return scale
        return math.exp((1 - self.weight) * math.log(scale) + self.weight * _clamped_log(ratio))


def _clamped_log(ratio: float) -> float:
    """The log of a measured-over-priced ratio within [1/4, 4], so that one stall cannot swing a scale."""
    return math.log(min(max(ratio, 0.25), 4.0))


PassCosts = DecoderCosts | LiveCosts


def _no_mask(logits: Tensor, ids: Tensor | None = None) -> Tensor:
    return logits


def synchronize() -> None:
    """Wait for queued GPU work, so that a wall-clock reading includes it (a no-op without a GPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _seconds(run: Callable[[], object]) -> float:
    """Wall time of `run` until its device work is done (a GPU runs it asynchronously)."""
    synchronize()
    began = time.perf_counter()
    run()
    synchronize()
    return time.perf_counter() - began


def _decisive_states(runner: WhisperDecoderRunner, rows: int) -> Tensor:
    """Final states that score one token far above the others, as a trained decoder's mostly do.
    Random states give flat logits, for which the main model's screened head must rescore many
    tokens: timing the head on them would overstate what verifying costs."""
    weight = runner.output_weight[torch.randint(0, runner.vocab_size, (rows,))]
    return weight / weight.norm(dim=-1, keepdim=True) * 10 * weight.shape[-1] ** 0.5


def best_draft_length(costs: PassCosts, acceptance: Rates, maximum: int) -> int:
    """The `k` in 0..maximum with the most committed tokens per second for rows of these acceptances."""
    return best_extension(costs, acceptance, maximum)


def expected_tokens(
    acceptance: Rates,
    more: int,
    chain: Rates | None = None,
    base: float | None = None,
) -> list[float]:
    """Tokens a pass is expected to commit `[more + 1]` if it drafts 0..more further tokens. Row b's
    drafts so far are all right with probability `chain[b]` (1 before drafting), each further one with
    probability `acceptance[b]`; `base` is what the pass commits so far (the batch size before
    drafting: every row gets the main model's own token).

    Plain Python floats: the policy asks after every draft, with the interpreter's working set cold
    after a main pass, where each array operator costs 5-40 us."""
    rates = [float(a) for a in acceptance]
    weights = [1.0] * len(rates) if chain is None else [float(c) for c in chain]
    tokens = [float(len(rates)) if base is None else float(base)]
    for _ in range(more):
        weights = [w * a for w, a in zip(weights, rates, strict=True)]
        tokens.append(tokens[-1] + sum(weights))
    return tokens


def best_extension(
    costs: PassCosts,
    acceptance: Rates,
    maximum: int,
    drafted: int = 0,
    chain: Rates | None = None,
    expected: float | None = None,
) -> int:
    """How many drafts to add to the `drafted` already made for the most expected tokens per second
    over the whole pass (`expected_tokens` of the rows' `acceptance`, `chain` and `expected`)."""
    batch = len(acceptance)
    more = maximum - drafted
    if batch == 0 or more <= 0:
        return 0
    tokens = expected_tokens(acceptance, more, chain, expected)
    prices = costs.pass_prices(batch, maximum)[drafted:]
    rates = [t / p for t, p in zip(tokens, prices, strict=True)]
    return rates.index(max(rates))
