"""When to retry, how long to wait, and which channel to use meanwhile."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ClientError

__all__ = ["ClientSlots", "RetryPolicy"]

C = TypeVar("C")


@dataclass(frozen=True)
class RetryPolicy:
    # Retries after the first attempt; 0 disables retrying.
    retries: int = 3
    # First wait; doubles after every retry up to max_backoff_s.
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    # Transcription has no side effects, so a request that ran out of time may be sent again.
    # Turn this off when the deadline is meant as a budget for the whole call.
    retry_on_deadline: bool = True

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")

    def should_retry(self, error: ClientError, retries_done: int) -> bool:
        """Only transient failures: never bad input, which would fail the same way again."""
        if retries_done >= self.retries:
            return False
        if error.status == "UNAVAILABLE":
            return True
        return error.status == "DEADLINE_EXCEEDED" and self.retry_on_deadline

    def delay_s(self, retries_done: int) -> float:
        # Jitter spreads out the retries of requests that failed together (a server restart hits
        # every in-flight request at once), so they do not come back as one burst.
        ceiling = min(self.max_backoff_s, self.backoff_s * 2**retries_done)
        return ceiling * random.uniform(0.5, 1.0)


class ClientSlots(Generic[C]):
    """The current tritonclient client, plus retired ones that still carry in-flight calls.

    After UNAVAILABLE the next attempt gets a new channel: a gRPC channel that saw its server go
    away backs off its own reconnects (up to minutes), while a new channel connects at once. Other
    threads or tasks may still be waiting on the old channel, and Triton also answers UNAVAILABLE
    while the channel is fine (full queue), so a retired client is closed only once its last call
    has returned; `release` and `retire` hand it back for the caller to close.
    """

    def __init__(self, factory: Callable[[], C]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._generation = 0
        self._clients: dict[int, C] = {}
        self._inflight: dict[int, int] = {}
        self._closed = False
        self.connects = 0  # channels opened so far; tests read it to see reconnects

    def acquire(self) -> tuple[int, C]:
        with self._lock:
            if self._closed:
                raise ClientError("the client is closed")
            generation = self._generation
            client = self._clients.get(generation)
            if client is None:
                # Created lazily: an asyncio channel must be made inside the running event loop.
                client = self._clients[generation] = self._factory()
                self.connects += 1
            self._inflight[generation] = self._inflight.get(generation, 0) + 1
            return generation, client

    def release(self, generation: int) -> C | None:
        with self._lock:
            if generation in self._inflight:
                self._inflight[generation] -= 1
            return self._pop_if_idle(generation)

    def retire(self, generation: int) -> C | None:
        """Make the next acquire open a new channel, unless another caller already did."""
        with self._lock:
            if generation == self._generation:
                self._generation += 1
            return self._pop_if_idle(generation)

    def close(self) -> list[C]:
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
            self._clients.clear()
            self._inflight.clear()
            return clients

    def _pop_if_idle(self, generation: int) -> C | None:
        if generation == self._generation or self._inflight.get(generation, 0) > 0:
            return None
        self._inflight.pop(generation, None)
        return self._clients.pop(generation, None)
