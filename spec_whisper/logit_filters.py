"""Rules applied to the logits before each greedy choice, per verified position."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["LogitFilter", "SuppressAtBegin", "SuppressTokens", "apply_filters"]


class LogitFilter(Protocol):
    def apply(self, logits: Tensor, generated: Tensor, ids: Tensor | None = None) -> None:
        """Edit `logits [B, T, n]` in place; `generated [B, T]` counts the tokens generated before each
        position, so a speculative pass filters each position as greedy would. `ids`: the vocabulary
        ids of the last dimension when it holds only some (an assistant's shortlist), else None."""


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

    def apply(self, logits: Tensor, generated: Tensor, ids: Tensor | None = None) -> None:
        logits.index_fill_(-1, self.columns(ids, logits.device), -torch.inf)


class SuppressAtBegin:
    """Forbid `tokens` as the first generated token (Whisper must not open with a blank or end)."""

    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.columns = _Columns(tokens)

    def apply(self, logits: Tensor, generated: Tensor, ids: Tensor | None = None) -> None:
        first = generated == 0  # on the host, where decoding keeps its counts: no wait for the device
        if first.any():
            columns, first = self.columns(ids, logits.device), first.to(logits.device)
            logits[first] = logits[first].index_fill_(-1, columns, -torch.inf)


def apply_filters(
    filters: list[LogitFilter], logits: Tensor, generated: Tensor, ids: Tensor | None = None
) -> Tensor:
    for f in filters:
        f.apply(logits, generated, ids)
    return logits
