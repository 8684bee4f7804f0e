"""What makes an assistant's draft step dearer in decoding than back to back: the main pass before it,
or the time since the last step?

    python scripts/bench_draft_gap.py --threads 2                  # batch 1, one held-out clip
    OMP_WAIT_POLICY=ACTIVE python scripts/bench_draft_gap.py --threads 2

Times one draft step (the assistant's layers, head and logit filters, in place on a real clip) right
after another, after the interpreter has spun idle for a while (no memory traffic of ours), and
right after a main pass of 4 tokens per row, as speculative decoding runs it. The conditions take
turns round by round; each cell is the median of its steps. If the step after an idle gap costs
what it costs after a main pass, the main pass's reads are not what makes it dear. The last two
rows time the step with the assistant attending to all 1,500 encoder frames instead of the audio's
and 2 s past it (`SpeculativeWhisper.assistant_frames`), back to back and after a main pass.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_engine import (  # scripts/, beside this file
    best_ms,
    english_clips,
    in_place,
    in_place_arguments,
    record,
)

from spec_whisper.engine import SpeculativeWhisper

GAPS_MS = (0.1, 0.3, 1.0, 3.0, 10.0)


def idle(seconds: float) -> None:
    """Keep the interpreter busy without touching memory, as Python bookkeeping between steps does."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def after(before: Callable[[], object], step: Callable[[], object]) -> float:
    """Milliseconds of one `step` right after `before`."""
    before()
    return best_ms(step, 1, warm_up=False)


def main() -> None:
    args = in_place_arguments(__doc__)
    engine = SpeculativeWhisper.load(args.main, args.assistant)
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    out = []
    with torch.inference_mode():
        for batch in args.batch:
            primed = in_place(engine, pcm[:batch], ahead=7)
            step = partial(engine.assistant.draft, primed.following(1), primed.start, primed.own, primed.mask)
            four = primed.following(4)
            main_pass = partial(engine.main.greedy, four, primed.start, primed.cache, primed.mask, 4)
            conditions: dict[str, Callable[[], object]] = {"back to back": step}
            conditions |= {f"after {gap:g} ms idle": partial(idle, gap / 1e3) for gap in GAPS_MS}
            conditions["after a 4-token main pass"] = main_pass
            whole = in_place(engine, pcm[:batch], ahead=7, all_frames=True)
            step_all = partial(engine.assistant.draft, whole.following(1), whole.start, whole.own, whole.mask)
            over_all = {
                "back to back, all frames": step_all,
                "after a 4-token main pass, all frames": main_pass,
            }
            times: dict[str, list[float]] = {name: [] for name in [*conditions, *over_all]}
            main_ms = []
            for _ in range(args.rounds * 10):
                for name, before in conditions.items():
                    times[name] += [after(before, step) for _ in range(3)]
                for name, before in over_all.items():
                    times[name] += [after(before, step_all) for _ in range(3)]
                main_ms.append(after(lambda: None, main_pass))
            hot = statistics.median(times["back to back"])
            own = primed.own.cross_frames
            audio = (
                f"{float(own.float().mean()):.0f} (longest {int(own.max())})" if own is not None else "all"
            )
            out += [
                f"batch {batch}: draft step in ms (median of {len(times['back to back'])}) over {audio} of "
                f"{whole.own.cross_k[0].shape[2]} encoder frames per row; the main pass itself "
                f"{statistics.median(main_ms):.2f} ms",
                "",
                "| draft step | ms | over back to back |",
                "|---|---|---|",
            ]
            for name, spent in times.items():
                ms = statistics.median(spent)
                out.append(f"| {name} | {ms:.3f} | {ms / hot:.2f}x |")
            out.append("")
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    report = "\n".join([f"{args.threads} threads, OMP_WAIT_POLICY {policy}", "", *out])
    print(report)
    record(args.record, "Draft step after gaps", report)


if __name__ == "__main__":
    main()
