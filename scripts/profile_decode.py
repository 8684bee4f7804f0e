"""Where the decoding stage's time goes at batch 1, greedy against speculative, on real clips.

    python scripts/profile_decode.py --skip 40 --clips 12          # batch 1; --batch 1 8 for more

Times each piece of the engine in place (the methods are wrapped with timers, so the engine runs as
it always does): the cross-attention keys/values made per request (`new_cache`), the main model's
passes (`greedy`), the drafter (`propose`) with the assistant's steps (`draft`, of which `states`
are its decoder layers) and the length policy, and all of `generate`, whose remainder is the
bookkeeping between passes. Explains the gap between the cost model's predicted speed-up and the
measured one; `bench_assistant.py` measures the speed-up itself.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_engine import engine_arguments, english_clips, record  # scripts/, beside this file

from spec_whisper import drafters, engine
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.types import DecodingOptions

ORDER = [
    "main new_cache (cross-attention k/v)",
    "assistant new_cache",
    "generate (all passes)",
    "main greedy (verify) pass",
    "  of which main decoder layers",
    "drafter propose",
    "assistant draft step",
    "  of which decoder layers",
    "policy: draft length",
    "policy: draft again?",
]
seconds: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)


def timed(name: str, run: Callable) -> Callable:
    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        result = run(*args, **kwargs)
        seconds[name] += time.perf_counter() - began
        calls[name] += 1
        return result

    return wrapper


def instrument(whisper: SpeculativeWhisper) -> None:
    main, assistant = whisper.main, whisper.assistant
    main.new_cache = timed("main new_cache (cross-attention k/v)", main.new_cache)
    main.greedy = timed("main greedy (verify) pass", main.greedy)
    main.states = timed("  of which main decoder layers", main.states)
    assistant.new_cache = timed("assistant new_cache", assistant.new_cache)
    assistant.draft = timed("assistant draft step", assistant.draft)
    assistant.states = timed("  of which decoder layers", assistant.states)
    drafters.AssistantDrafter.propose = timed("drafter propose", drafters.AssistantDrafter.propose)
    drafters.CostModelPolicy.current = timed("policy: draft length", drafters.CostModelPolicy.current)
    drafters.CostModelPolicy.extend = timed("policy: draft again?", drafters.CostModelPolicy.extend)
    engine.generate = timed("generate (all passes)", engine.generate)


def main() -> None:
    parser = engine_arguments(__doc__, clips=12)
    parser.set_defaults(skip=40, batch=[1])  # the clips the distillation held out; one at a time
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    whisper = SpeculativeWhisper.load(args.main, args.assistant)
    whisper.costs()  # timed once, before the clock starts
    instrument(whisper)
    report = []
    with torch.inference_mode():
        for batch in args.batch:
            groups = [pcm[i : i + batch] for i in range(0, len(pcm), batch)]
            encoded = [whisper.encode_pcm(group) for group in groups]
            tokens = {}
            for speculative in (False, True):
                seconds.clear()
                calls.clear()
                began = time.perf_counter()
                tokens[speculative] = [
                    r.tokens
                    for states, group in zip(encoded, groups, strict=True)
                    for r in whisper.decode(
                        states, [DecodingOptions(language="en", speculative=speculative)] * len(group)
                    )
                ]
                total = time.perf_counter() - began
                mode = "speculative" if speculative else "greedy"
                what = f"{len(pcm)} windows of {args.clips} clips" if args.pack else f"{len(pcm)} clips"
                report.append(f"\n{mode}, batch {batch}: {what}, decoding {total:.2f} s\n")
                report.append("| piece | s | calls | ms per call |\n|---|---|---|---|")
                for name in sorted(seconds, key=ORDER.index):
                    spent, n = seconds[name], calls[name]
                    report.append(f"| {name} | {spent:.3f} | {n} | {1000 * spent / n:.2f} |")
            report.append(f"\nbatch {batch}, tokens identical: {tokens[True] == tokens[False]}")
    print("\n".join(report))
    record(args.record, "Where decoding time goes", "\n".join(report))


if __name__ == "__main__":
    main()
