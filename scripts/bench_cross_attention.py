"""The CPU decoder attention kernels against PyTorch's attention: the operator, then decoder passes.

    python scripts/bench_cross_attention.py --threads 2      # --batch 1 8 on --clips 8 from --skip 40

1. The cross-attention operator over six layers' keys and values (so each layer's are read from
   memory, as in a pass), by batch size and queries per row.
2. In place on real clips: a main decoder pass of 1, 3 and 5 tokens per row (the greedy head and the
   logit filters included) and an assistant draft step, at batch 1 and 8, with the kernels (self- and
   cross-attention) on and off in turns, best of the rounds. A verify pass's price over a 1-token pass
   is what decides whether drafting pays (`cost_model.py`).
3. The assistant's cross-attention over its bf16 copy of the main model's keys and values against
   the fp32 originals, with the kernel: its mean draft step while decoding the clips at a fixed draft
   length of 3 (the same steps either way), the two taking turns clip by clip. In place, a draft step
   follows a main pass, after which the assistant's weights and keys are cold.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_engine import (  # scripts/, beside this file
    best_ms,
    english_clips,
    in_place,
    in_place_arguments,
    record,
)

from spec_whisper import cpu_attention, cpu_kernels
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.types import DecodingOptions


def both_ways(run: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Best milliseconds with PyTorch's attention and with the kernel, taking turns round by round."""
    times = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for kernel in (False, True):
            cpu_kernels.use_kernels(kernel)
            times[kernel] = min(times[kernel], best_ms(run, 3))
    cpu_kernels.use_kernels(True)
    return times[False], times[True]


def every_layer(q: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor]) -> list[torch.Tensor]:
    return [cpu_attention.cross_attention(q, k, v) for k, v in zip(keys, values, strict=True)]


def operator_table(rounds: int) -> list[str]:
    out = [
        "| batch | queries per row | PyTorch ms (6 layers) | kernel ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for batch in (1, 8, 16):
        keys = [torch.randn(batch, 8, 1500, 64) for _ in range(6)]
        values = [torch.randn(batch, 8, 1500, 64) for _ in range(6)]
        for queries in (1, 2, 3, 5, 9):
            q = torch.randn(batch, queries, 8 * 64) * 1.6  # merged heads, not yet scaled
            heads = q.view(batch, queries, 8, 64).transpose(1, 2) * 0.125
            for k, v in zip(keys, values, strict=True):
                expected = F.scaled_dot_product_attention(heads, k, v, scale=1.0)
                expected = expected.transpose(1, 2).reshape(q.shape)
                torch.testing.assert_close(cpu_attention.cross_attention(q, k, v), expected)
            theirs, ours = both_ways(partial(every_layer, q, keys, values), rounds)
            out.append(f"| {batch} | {queries} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.2f}x |")
    return out


@torch.inference_mode()
def pass_table(
    engine: SpeculativeWhisper, pcm: list[np.ndarray], batches: list[int], rounds: int
) -> list[str]:
    """Passes at each batch size over the first `batch` clips of `pcm`."""
    main, assistant = engine.main, engine.assistant
    out = [
        "",
        "| batch | pass | PyTorch ms | kernel ms | speed-up | PyTorch vs 1 token | kernel vs 1 token |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch in batches:
        primed = in_place(engine, pcm[:batch], ahead=6, wide_cross=True)  # both ways read fp32 here
        start, cache, own, mask = primed.start, primed.cache, primed.own, primed.mask
        ones = {}
        for n in (1, 3, 5):
            new = primed.following(n)
            theirs, ours = both_ways(partial(main.greedy, new, start, cache, mask, n), rounds)
            ones.setdefault("t", theirs)
            ones.setdefault("o", ours)
            out.append(
                f"| {batch} | main, {n} token{'s' if n > 1 else ''} | {theirs:.2f} | {ours:.2f} | "
                f"{theirs / ours:.2f}x | {theirs / ones['t']:.2f} | {ours / ones['o']:.2f} |"
            )
        step = primed.following(1)
        theirs, ours = both_ways(partial(assistant.draft, step, start, own, mask), rounds)
        out.append(
            f"| {batch} | assistant step (fp32 keys/values) | {theirs:.2f} | {ours:.2f} | "
            f"{theirs / ours:.2f}x | {theirs / ones['t']:.2f} | {ours / ones['o']:.2f} |"
        )
    return out


@torch.inference_mode()
def narrow_table(
    engine: SpeculativeWhisper, pcm: list[np.ndarray], batches: list[int], rounds: int
) -> list[str]:
    assistant = engine.assistant
    narrow = assistant.cross_dtype
    spent: dict[tuple[int, torch.dtype], list[float]] = defaultdict(list)
    draft = assistant.draft

    def timed_draft(*args, **kwargs):
        began = time.perf_counter()
        result = draft(*args, **kwargs)
        spent[key].append(time.perf_counter() - began)
        return result

    assistant.draft = timed_draft
    for batch in batches:
        chunks = [pcm[i : i + batch] for i in range(0, len(pcm) - batch + 1, batch)]
        encoded = [engine.encode_pcm(chunk) for chunk in chunks]
        options = [DecodingOptions(language="en", draft_length=3)] * batch
        for _ in range(rounds):
            for states in encoded:
                for dtype in (narrow, torch.float32):
                    key, assistant.cross_dtype = (batch, dtype), dtype
                    engine.decode(states, options)
    assistant.draft, assistant.cross_dtype = draft, narrow
    out = [
        "",
        "| batch | draft steps each | fp32 keys/values ms | bf16 copy ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for batch in batches:
        wide, thin = spent[batch, torch.float32], spent[batch, narrow]
        wide_ms, thin_ms = 1e3 * np.mean(wide), 1e3 * np.mean(thin)
        out.append(f"| {batch} | {len(thin)} | {wide_ms:.2f} | {thin_ms:.2f} | {wide_ms / thin_ms:.2f}x |")
    return out


def main() -> None:
    args = in_place_arguments(__doc__)
    if not cpu_kernels.kernels_available():
        sys.exit("the kernel did not build here: nothing to compare")
    lines = operator_table(args.rounds)
    engine = SpeculativeWhisper.load(args.main, args.assistant)
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    lines += pass_table(engine, pcm, args.batch, args.rounds)
    if engine.assistant is not None and engine.assistant.cross_dtype != torch.float32:
        lines += narrow_table(engine, pcm, args.batch, max(1, args.rounds // 2))
    report = "\n".join(lines)
    print(report)
    record(args.record, "Cross-attention kernel", report)


if __name__ == "__main__":
    main()
