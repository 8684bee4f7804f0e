"""Exact greedy decoding, speculative or plain, for a batch with per-row acceptance.

Each pass the drafter proposes `k` tokens for every row; the main decoder scores the pending
token plus the `k` drafts in one forward; each row keeps its drafts up to its own first mismatch
plus the main model's token at that position. With `k = 0` this is plain greedy decoding. Rows
advance by different amounts and never wait for each other, and a finished row leaves the batch.
The bookkeeping (sequences, lengths, which rows remain) lives on the host; the decoders' caches and
products on their device, which hands back only the few tokens each pass chose.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from .cost_model import PassTime
from .decoder import DecoderCache, WhisperDecoderRunner, compaction_order
from .drafters import MAX_DRAFT, Drafter
from .logit_filters import LogitFilter, Positions, apply_filters, reads_every_logit
from .types import DecodingStats

__all__ = ["DecodeRequest", "generate"]


@dataclass
class DecodeRequest:
    prompt: Tensor  # [B, P] int64, the same length P for every row
    limit: Tensor  # [B] the most tokens a row may hold, prompt included
    cached: int = 0  # prompt tokens already in the main cache (1 after language detection)


def _masks(
    filters: list[LogitFilter], seq: Tensor, length: Tensor, begin: int, drafts: Sequence[Tensor], count: int
):
    """The mask (`heads.Mask`) of the last `count` positions after each row's tokens and `drafts`."""
    positions = Positions.after(seq, length, begin, drafts, count)
    return partial(_filtered, filters, positions)


def _filtered(filters: list[LogitFilter], positions: Positions, logits: Tensor, ids: Tensor | None = None):
    return apply_filters(filters, logits, positions, ids)


def generate(
    main: WhisperDecoderRunner,
    cache: DecoderCache,
    request: DecodeRequest,
    filters: list[LogitFilter],
    end_of_text: int,
    drafter: Drafter | None = None,
    turn: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[list[list[int]], list[DecodingStats]]:
    """Greedy tokens (prompt and end-of-text excluded) and statistics for every row. Each pass's
    drafting and verification run as one `turn` on the device (`core_turns.CoreTurns`)."""
    batch, prompt_len = request.prompt.shape
    seq = torch.zeros(batch, main.max_positions + 1, dtype=torch.long)
    seq[:, :prompt_len] = request.prompt
    length = torch.full((batch,), prompt_len)
    limit = request.limit.clamp(max=main.max_positions)
    rows = torch.arange(batch)
    counts = torch.zeros(batch, 3, dtype=torch.long)  # drafted, accepted, main passes
    histogram = torch.zeros(batch, MAX_DRAFT + 1, dtype=torch.long)
    results: list[list[int]] = [[] for _ in range(batch)]
    pending = prompt_len - request.cached
    every_logit = reads_every_logit(filters)
    while rows.numel():
        masks = partial(_masks, filters, seq, length, prompt_len)
        with turn():
            # 1. Draft, never past the last cache slot.
            began = time.perf_counter()
            room = main.max_positions - int(length.max())
            draft = drafter.propose(seq, length, room, masks) if drafter else seq.new_empty(len(rows), 0)
            k = draft.shape[1]
            drafted = time.perf_counter()
            # 2. Verify the pending token(s) plus the drafts in one forward.
            start = length - pending
            tokens = torch.cat([seq.gather(1, start[:, None] + torch.arange(pending)), draft], dim=1)
            mask = masks([draft], k + 1)
            greedy = main.greedy(tokens, start, cache, mask, k + 1, every_logit).cpu()
            verified = time.perf_counter()
        # 3. Each row keeps its drafts up to its first mismatch, plus the main model's next token.
        n_accepted = (draft == greedy[:, :k]).cumprod(dim=1).sum(dim=1)
        seq.scatter_(1, length[:, None] + torch.arange(k + 1), greedy)
        is_end = (greedy == end_of_text) & (torch.arange(k + 1) <= n_accepted[:, None])
        ended = is_end.any(dim=1)
        length = torch.where(ended, length + is_end.int().argmax(dim=1), length + n_accepted + 1)
        length = torch.minimum(length, limit)
        pending = 1
        counts[rows] += torch.stack(
            [torch.full_like(n_accepted, k), n_accepted, torch.ones_like(n_accepted)], 1
        )
        if k:
            histogram[rows, n_accepted] += 1
        if drafter is not None:  # plain passes too: they price what drafting saves
            timed = PassTime(len(rows), tokens.shape[1], k, drafted - began, verified - drafted)
            drafter.observe(n_accepted, k, timed)
        # 4. Retire finished rows from every cache.
        finished = ended | (length >= limit)
        if finished.any():
            for i in finished.nonzero().flatten().tolist():
                results[int(rows[i])] = seq[i, prompt_len : length[i]].tolist()
            order = compaction_order(finished)
            seq, length, limit, rows = seq[order], length[order], limit[order], rows[order]
            cache = cache.select(order)
            if drafter is not None:
                drafter.keep(order)
    return results, [_stats(c, h) for c, h in zip(counts.tolist(), histogram.tolist(), strict=True)]


def _stats(counts: list[int], histogram: list[int]) -> DecodingStats:
    used = max((n + 1 for n, c in enumerate(histogram) if c), default=0)
    return DecodingStats(
        drafted=counts[0], accepted=counts[1], main_passes=counts[2], accept_counts=histogram[:used]
    )
