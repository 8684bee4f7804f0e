"""Rules applied to the logits before each greedy choice, per scored position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "LogitFilter",
    "Positions",
    "SuppressAtBegin",
    "SuppressTokens",
    "TimestampRules",
    "apply_filters",
    "reads_every_logit",
]


@dataclass(frozen=True)
class Positions:
    """The positions one pass scores. Position t of row b follows `tokens[b, :ends[b, t]]`, of which
    those from `begin` on were generated: a speculative pass scores each position after the drafts
    before it, so a filter judges it as greedy decoding would."""

    committed: Tensor  # [B, S] on the host: the prompt and the tokens decided so far
    ends: Tensor  # [B, T]
    begin: int
    drafts: tuple[Tensor, ...] = ()  # [B, k_i] pieces that follow each row's committed tokens ...
    placed_at: Tensor | None = None  # ... from here on [B]

    @property
    def generated(self) -> Tensor:
        return self.ends - self.begin

    @cached_property
    def tokens(self) -> Tensor:
        """`committed` with the drafts in place; built only for a filter that reads the tokens, since
        a draft step at batch 1 would otherwise pay a copy for nothing."""
        if not self.drafts:
            return self.committed
        drafts = torch.cat(self.drafts, dim=1).to(self.committed.device)
        assert self.placed_at is not None
        placed = self.committed.clone()
        placed.scatter_(1, self.placed_at[:, None] + torch.arange(drafts.shape[1]), drafts)
        return placed

    @classmethod
    def after(
        cls, seq: Tensor, length: Tensor, begin: int, drafts: Sequence[Tensor], count: int
    ) -> Positions:
        """The last `count` of the positions after each row's `seq[b, :length[b]]` and its `drafts`,
        pieces `[B, k_i]` of k drafts in all (`count = k + 1`: a verify pass; `count = 1`: the next
        draft step)."""
        drafts = tuple(d for d in drafts if d.shape[1])
        k = sum(d.shape[1] for d in drafts)
        ends = length[:, None] + (k + 1 - count) + torch.arange(count)
        return cls(seq, ends, begin, drafts, length)

    @classmethod
    def teacher_forced(cls, tokens: Tensor, begin: int, count: int) -> Positions:
        """The first `count` positions after the prompt `tokens[:, :begin]`, each after the tokens of
        `tokens [B, S]` before it: one pass over known transcripts."""
        return cls(tokens, begin + torch.arange(count).expand(tokens.shape[0], count), begin)


class LogitFilter(Protocol):
    def apply(self, logits: Tensor, positions: Positions, ids: Tensor | None = None) -> None:
        """Edit `logits [B, T, n]` in place for the scored `positions`. `ids`: the vocabulary ids of the
        last dimension when it holds only some (an assistant's shortlist), else None."""


def reads_every_logit(filters: list[LogitFilter]) -> bool:
    """Whether a filter needs every exact logit, not only the argmax's (a probability rule): the
    main model's screened head then scores the whole vocabulary in fp32."""
    return any(getattr(f, "reads_every_logit", False) for f in filters)


class _Columns:
    """Where some token ids sit in the last dimension of logits over `ids` (the whole vocabulary when
    None): found once per shortlist, so a draft step filters its few thousand scores directly."""

    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.tokens = torch.tensor(tokens, dtype=torch.long)
        self._found: dict[int, tuple[Tensor, Tensor]] = {}  # id(ids) -> (ids, columns)

    def __call__(self, ids: Tensor | None, device: torch.device) -> Tensor:
        if ids is None:
            self.tokens = self.tokens.to(device)  # once: a no-op when already there
            return self.tokens
        found = self._found.get(id(ids))
        if found is None or found[0] is not ids:
            columns = torch.isin(ids, self.tokens.to(ids.device)).nonzero().flatten()
            found = self._found[id(ids)] = (ids, columns)
        return found[1]


class SuppressTokens:
    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.columns = _Columns(tokens)

    def apply(self, logits: Tensor, positions: Positions, ids: Tensor | None = None) -> None:
        logits.index_fill_(-1, self.columns(ids, logits.device), -torch.inf)


class SuppressAtBegin:
    """Forbid `tokens` as the first generated token (Whisper must not open with a blank or end)."""

    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.columns = _Columns(tokens)

    def apply(self, logits: Tensor, positions: Positions, ids: Tensor | None = None) -> None:
        first = positions.generated == 0  # on the host, where decoding keeps its counts: no device wait
        if first.any():
            columns, first = self.columns(ids, logits.device), first.to(logits.device)
            logits[first] = logits[first].index_fill_(-1, columns, -torch.inf)


class TimestampRules:
    """Whisper's timestamp grammar, as transformers' `WhisperTimeStampLogitsProcessor` applies it, so
    that both choose the same tokens (OpenAI's `ApplyTimestampRules` with its later fixes):

    - never `<|notimestamps|>`; the first token is a timestamp of at most `max_initial` steps;
    - timestamps come in pairs (a segment's end, the next one's start), except just before the end of
      text: after a lone timestamp only a timestamp or the end, after a pair only text;
    - timestamps never go back, and a new pair starts after the last one;
    - where the timestamps together are likelier than any single text token, a timestamp.

    The last rule reads the softmax of every logit, so the main model's screened head, which knows
    only the argmax exactly, gives way to the fp32 one (`reads_every_logit`).

    Over a shortlist, that is for an assistant's drafts, which need not be exact and whose assistant
    was distilled without timestamps, the rules guess instead: where a timestamp must come, the
    earliest one allowed (`<|0.00|>` to open a window, and a segment starts where the last one
    ended, as Whisper nearly always writes it); anywhere else text, so a segment's end is left to
    the main model."""

    reads_every_logit = True

    def __init__(self, timestamp_begin: int, no_timestamps: int, end_of_text: int, max_initial: int | None):
        self.timestamp_begin = timestamp_begin
        self.no_timestamps = no_timestamps
        self.end_of_text = end_of_text
        self.max_initial = max_initial

    def apply(self, logits: Tensor, positions: Positions, ids: Tensor | None = None) -> None:
        state = self._state(positions)
        if ids is None:
            self._exact(logits, *(s.to(logits.device) for s in state))
        else:
            self._guess(logits, ids.to(logits.device), *(s.to(logits.device) for s in state))

    def _state(self, positions: Positions) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per scored position `[B, T]`: whether the last token was a timestamp, whether the one
        before it was too (or there was none), the lowest timestamp allowed, and whether it opens."""
        begin, tokens, ends, generated = (
            self.timestamp_begin,
            positions.tokens,
            positions.ends,
            positions.generated,
        )
        last = (generated >= 1) & (tokens.gather(1, (ends - 1).clamp(min=0)) >= begin)
        penultimate = (generated < 2) | (tokens.gather(1, (ends - 2).clamp(min=0)) >= begin)
        # Where the latest generated timestamp before each position sits (-1: none yet).
        column = torch.arange(tokens.shape[1])
        where = torch.where((tokens >= begin) & (column >= positions.begin), column, -1).cummax(1).values
        latest = where.gather(1, (ends - 1).clamp(min=0)).masked_fill(generated == 0, -1)
        latest_token = tokens.gather(1, latest.clamp(min=0))
        lone = last & ~penultimate
        lowest = torch.where(latest < 0, begin, torch.where(lone, latest_token, latest_token + 1))
        return last, penultimate, lowest, generated == 0

    def _exact(
        self, logits: Tensor, last: Tensor, penultimate: Tensor, lowest: Tensor, first: Tensor
    ) -> None:
        begin, inf = self.timestamp_begin, -torch.inf
        stamps, below = logits[..., begin:], logits[..., :begin]  # views: the timestamps are the last ids
        logits[..., self.no_timestamps] = inf
        stamps.masked_fill_((last & penultimate)[..., None], inf)  # after a pair: text
        lone = (last & ~penultimate)[..., None]  # after a lone timestamp: a timestamp or the end
        logits[..., : self.end_of_text].masked_fill_(lone, inf)
        steps = torch.arange(stamps.shape[-1], device=logits.device)
        stamps.masked_fill_(steps < (lowest - begin)[..., None], inf)
        if first.any():
            below.masked_fill_(first[..., None], inf)
            if self.max_initial is not None:
                stamps[..., self.max_initial + 1 :].masked_fill_(first[..., None], inf)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        likelier = logprobs[..., begin:].logsumexp(dim=-1) > logprobs[..., :begin].amax(dim=-1)
        below.masked_fill_(likelier[..., None], inf)

    def _guess(
        self, scores: Tensor, ids: Tensor, last: Tensor, penultimate: Tensor, lowest: Tensor, first: Tensor
    ) -> None:
        forced = (last & ~penultimate) | first
        guess = torch.where(first, self.timestamp_begin, lowest)
        elsewhere = (ids >= self.timestamp_begin) | (ids == self.no_timestamps)
        forbid = torch.where(forced[..., None], ids != guess[..., None], elsewhere)
        scores.masked_fill_(forbid, -torch.inf)


def apply_filters(
    filters: list[LogitFilter], logits: Tensor, positions: Positions, ids: Tensor | None = None
) -> Tensor:
    for f in filters:
        f.apply(logits, positions, ids)
    return logits
