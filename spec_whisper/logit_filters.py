"""Rules applied to the logits before each greedy choice, per verified position."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["LogitFilter", "SuppressAtBegin", "SuppressTokens", "apply_filters"]


class LogitFilter(Protocol):
    def apply(self, logits: Tensor, generated: Tensor) -> None:
        """Edit `logits [B, T, vocab]` in place; `generated [B, T]` counts the tokens generated
        before each position, so a speculative pass filters each position as greedy would."""


class SuppressTokens:
    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.tokens = torch.tensor(tokens, dtype=torch.long)

    def apply(self, logits: Tensor, generated: Tensor) -> None:
        self.tokens = self.tokens.to(logits.device)  # once: a no-op when already there
        logits.index_fill_(-1, self.tokens, -torch.inf)


class SuppressAtBegin:
    """Forbid `tokens` as the first generated token (Whisper must not open with a blank or end)."""

    def __init__(self, tokens: tuple[int, ...]) -> None:
        self.tokens = torch.tensor(tokens, dtype=torch.long)

    def apply(self, logits: Tensor, generated: Tensor) -> None:
        first = generated == 0  # on the host, where decoding keeps its counts: no wait for the device
        if first.any():
            self.tokens, first = self.tokens.to(logits.device), first.to(logits.device)
            logits[first] = logits[first].index_fill_(-1, self.tokens, -torch.inf)


def apply_filters(filters: list[LogitFilter], logits: Tensor, generated: Tensor) -> Tensor:
    for f in filters:
        f.apply(logits, generated)
    return logits
