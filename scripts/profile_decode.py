"""Where the decoding stage's time goes at batch 1, greedy against speculative, on real clips.

    python scripts/profile_decode.py --skip 40 --clips 12

Times each piece of the engine in place (the methods are wrapped with timers, so the engine runs as
it always does): the cross-attention keys/values made per request (`new_cache`), the main model's
passes (`greedy`), the drafter (`propose`) with the assistant's steps (`draft`, of which `states`
are its decoder layers) and the length policy, and all of `generate`, whose remainder is the
bookkeeping between passes. Explains the gap between the cost model's predicted speed-up and the
measured one; `bench_assistant.py` measures the speed-up itself.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import soundfile as sf
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from spec_whisper import drafters, engine  # noqa: E402
from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.types import DecodingOptions  # noqa: E402

ORDER = [
    "main new_cache (cross-attention k/v)",
    "assistant new_cache",
    "generate (all passes)",
    "main greedy (verify) pass",
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
    assistant.new_cache = timed("assistant new_cache", assistant.new_cache)
    assistant.draft = timed("assistant draft step", assistant.draft)
    assistant.states = timed("  of which decoder layers", assistant.states)
    drafters.AssistantDrafter.propose = timed("drafter propose", drafters.AssistantDrafter.propose)
    drafters.CostModelPolicy.current = timed("policy: draft length", drafters.CostModelPolicy.current)
    drafters.CostModelPolicy.extend = timed("policy: draft again?", drafters.CostModelPolicy.extend)
    engine.generate = timed("generate (all passes)", engine.generate)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main", type=Path, default=PROJECT_ROOT / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=PROJECT_ROOT / "models" / "whisper-base-assistant")
    parser.add_argument("--speech-dir", type=Path, default=PROJECT_ROOT.parent / "shared" / "data" / "speech")
    parser.add_argument("--skip", type=int, default=40, help="English clips to skip (the distillation's)")
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = (args.speech_dir / "manifest.jsonl").read_text().splitlines()
    english = [m for m in map(json.loads, lines) if m["path"].startswith("librispeech_test_other/")]
    chosen = english[args.skip : args.skip + args.clips]
    pcm = [sf.read(args.speech_dir / m["path"], dtype="float32")[0] for m in chosen]
    whisper = SpeculativeWhisper.load(str(args.main), str(args.assistant))
    whisper.costs()  # timed once, before the clock starts
    instrument(whisper)
    with torch.inference_mode():
        encoded = [whisper.encode(whisper.log_mel([clip])) for clip in pcm]
        tokens = {}
        for speculative in (False, True):
            seconds.clear()
            calls.clear()
            began = time.perf_counter()
            options = [DecodingOptions(language="en", speculative=speculative)]
            tokens[speculative] = [whisper.decode(states, options)[0].tokens for states in encoded]
            total = time.perf_counter() - began
            print(f"\n{'speculative' if speculative else 'greedy'}: {len(pcm)} clips, decoding {total:.2f} s")
            print("| piece | s | calls | ms per call |\n|---|---|---|---|")
            for name in sorted(seconds, key=ORDER.index):
                spent = seconds[name]
                print(f"| {name} | {spent:.3f} | {calls[name]} | {1000 * spent / calls[name]:.2f} |")
    print(f"\ntokens identical: {tokens[True] == tokens[False]}")


if __name__ == "__main__":
    main()
