"""How long a request waits while the engine times stale prices again: in slices or at once.

    python scripts/bench_retiming.py                 # 16 held-out clips at batch 16
    python scripts/bench_retiming.py --batch 8 --requests 16

Two engines on the same weights: one times stale rows of its pass-cost table a slice at a time before
each speculative request (the default, `SpeculativeWhisper.retime_share`), the other at once before
one request (as up to 68ed08a). One start-up table, timed while `--busy` processes spin on the cores
(as on a machine where another job is starting, so that it is stale once they stop), serves both;
then they decode the same batch of clips in turn, request after request. Prints every request's
wall time, which requests a retiming slice (or the whole retiming) ran before, the slowest request
and the median of each, and whether their tokens agree with plain greedy decoding.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_engine import engine_arguments, english_clips, record  # noqa: E402  (scripts/, beside this file)

from spec_whisper.cost_model import LiveCosts  # noqa: E402
from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.types import DecodingOptions  # noqa: E402

SPIN = "while :; do :; done"


class AtOnceEngine(SpeculativeWhisper):
    """Times a stale row of its table wholly before the request that finds it stale."""

    retime_share = math.inf


def main() -> None:
    parser = engine_arguments(__doc__, clips=16)
    parser.set_defaults(skip=40, batch=[16])  # the clips the distillation held out
    parser.add_argument("--requests", type=int, default=12, help="requests each engine decodes")
    parser.add_argument("--busy", type=int, default=2, help="processes spinning while the tables are timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = args.batch[0]
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)[:batch]
    engines = {
        "in slices": SpeculativeWhisper.load(args.main, args.assistant),
        "at once": AtOnceEngine.load(args.main, args.assistant),
    }
    states = next(iter(engines.values())).encode_pcm(pcm)
    options = [DecodingOptions(language="en")] * len(pcm)
    plain = [
        r.tokens
        for r in engines["at once"].decode(
            states, [DecodingOptions(language="en", speculative=False)] * len(pcm)
        )
    ]

    spinners = [subprocess.Popen(["bash", "-c", SPIN]) for _ in range(args.busy)]
    try:
        busy = engines["in slices"].costs().table
    finally:
        for spinner in spinners:
            spinner.kill()
    # The same table for both, so that they make the same decisions until they time it again.
    engines["at once"]._costs = LiveCosts(busy)  # a retiming makes a new table (`DecoderCosts.lowest`)
    time.sleep(2)

    seconds: dict[str, list[float]] = {name: [] for name in engines}
    retiming: dict[str, list[str]] = {name: [] for name in engines}
    identical = True
    for _ in range(args.requests):
        for name, engine in engines.items():
            table = engine._costs.table  # `costs()` would time a slice: `decode` asks it once
            was = engine._retiming is not None
            began = time.perf_counter()
            results = engine.decode(states, options)
            seconds[name].append(time.perf_counter() - began)
            identical &= [r.tokens for r in results] == plain
            now = engine._retiming is not None
            done = engine._costs.table is not table
            retiming[name].append("timed" if done else "slice" if (was or now) else "")
    load = np.round(os.getloadavg(), 2).tolist()
    lines = [
        f"{len(pcm)} held-out LibriSpeech clips at batch {batch}, {args.requests} requests per engine in "
        f"turn; start-up table timed beside {args.busy} spinning processes (spread by batch size: "
        f"{busy.spread.round(2).tolist()}), the same for both; load average after {load}; "
        f"tokens identical to plain greedy: {identical}.",
        "",
        "| request | " + " | ".join(f"{name} s | retiming" for name in engines) + " |",
        "|---|" + "---|---|" * len(engines),
    ]
    for i in range(args.requests):
        cells = " | ".join(f"{seconds[name][i]:.2f} | {retiming[name][i]}" for name in engines)
        lines.append(f"| {i + 1} | {cells} |")
    lines.append("")
    for name in engines:
        lines.append(
            f"{name}: slowest request {max(seconds[name]):.2f} s, median {np.median(seconds[name]):.2f} s, "
            f"total {sum(seconds[name]):.2f} s."
        )
    report = "\n".join(lines)
    print(report)
    record(args.record, "Retiming stale prices: in slices or at once", report)


if __name__ == "__main__":
    main()
