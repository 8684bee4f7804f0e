"""Decoder passes replayed from CUDA graphs, so that a step costs its kernels, not their launches.

On a GPU an eager whisper-base decoder pass is bound by dispatching its ~150 operations one by one
from Python (measured on an H200: 2.4-4.7 ms per pass whatever the batch or token count, and the
2-layer assistant's step half of that). A CUDA graph records the kernels of one pass once and replays
them with one launch. A graph is fixed to its shapes and its memory addresses, which the static,
position-indexed cache allows: every pass attends over all `max_positions` slots (later slots masked),
so a pass's shapes depend only on its rows and tokens, and a cache keeps its addresses from pass to
pass (finished rows leave by moving others into their slots, `DecoderCache.select`).

A graph is keyed by the pass's shapes and the addresses of every cache tensor it touches: a pass over
a cache at other addresses (a new request whose cache the allocator placed elsewhere) records a new
graph, and one at the same addresses and shapes replays the old one, which then reads and writes that
very cache. The first pass of a key runs eagerly over the same fixed shapes (identical arithmetic)
while its graph is recorded for the next.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .decoder import DecoderCache

__all__ = ["GraphedPasses"]

Pass = Callable[[Tensor, Tensor, "DecoderCache"], Tensor]  # device tokens, start, cache -> states


class GraphedPasses:
    """`run(tokens, start, cache)`: the pass `fixed_shape_pass` computes, from a recorded graph when
    one matches. Graphs share one memory pool: no two replay at once, and each output is copied out
    right after its replay, before another graph may reuse that memory."""

    def __init__(self, fixed_shape_pass: Pass, device: torch.device, capacity: int = 512) -> None:
        self.fixed_shape_pass = fixed_shape_pass
        self.device = device
        self.capacity = capacity
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)  # graphs are recorded off the default stream
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = OrderedDict()
        self.recorded = self.replayed = 0  # counts the tests and benchmarks read

    def run(self, tokens: Tensor, start: Tensor, cache: DecoderCache) -> Tensor:
        key = (tuple(tokens.shape), *_layout(cache))
        entry = self.graphs.get(key)
        if entry is None:
            tokens, start = tokens.to(self.device), start.to(self.device)
            # The eager pass runs on the recording stream: capturing on a stream no kernel has run on
            # yet made cuBLAS fail inside the capture (seen on an H200, fp16, after other graphs).
            current = torch.cuda.current_stream(self.device)
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                states = self.fixed_shape_pass(tokens, start, cache)
                self._record(key, tokens, start, cache)
            current.wait_stream(self.stream)
            return states
        graph, static_tokens, static_start, static_states = entry
        static_tokens.copy_(tokens)
        static_start.copy_(start)
        graph.replay()
        self.replayed += 1
        self.graphs.move_to_end(key)
        return static_states.clone()

    def _record(self, key: tuple, tokens: Tensor, start: Tensor, cache: DecoderCache) -> None:
        """Record the pass on the current stream, the recording one (`run`)."""
        static_tokens, static_start = tokens.clone(), start.clone()
        graph = torch.cuda.CUDAGraph()
        # Not `torch.cuda.graph(...)`, which empties the allocator's cache before each recording: later
        # caches would then land at new addresses and miss every graph recorded so far. Recording runs
        # no kernel, so the cache is left as the eager pass wrote it.
        graph.capture_begin(pool=self.pool)
        try:
            static_states = self.fixed_shape_pass(static_tokens, static_start, cache)
        finally:
            graph.capture_end()
        self.graphs[key] = (graph, static_tokens, static_start, static_states)
        self.recorded += 1
        if len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)


def _layout(cache: DecoderCache) -> tuple:
    """What a recorded pass assumes of a cache: each tensor's address, shape and strides."""
    tensors = (cache.self_k, cache.self_v, *cache.cross_k, *cache.cross_v)
    return tuple((t.data_ptr(), tuple(t.shape), t.stride()) for t in tensors)
