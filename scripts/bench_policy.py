"""Draft-length policies side by side on the decoder stage, with the same engine, clips and cost table.

    python scripts/bench_policy.py --skip 40 --clips 16 --record docs/benchmarks.md

Policies: plain greedy (no drafts); the cost model choosing the length once per verify pass; the
cost model deciding again after every draft from the assistant's probabilities (the engine's
default); the constant k=5 with the +2/-1 heuristic. Each is timed in wall-clock seconds, best of
`--repeats` rounds taken in turn (these cores are shared and noisy), and in modelled seconds: the
engine's own measured cost table summed over the passes the policy made, which does not move with
the machine's mood and shows what the decisions are worth. Outputs are checked identical.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_engine import engine_arguments, english_clips, record  # noqa: E402  (scripts/, beside this file)

from spec_whisper.cost_model import DecoderCosts  # noqa: E402
from spec_whisper.decoder import WhisperDecoderRunner  # noqa: E402
from spec_whisper.drafters import AssistantDrafter, CostModelPolicy, DraftLengthPolicy  # noqa: E402
from spec_whisper.engine import EncoderStates, SpeculativeWhisper  # noqa: E402
from spec_whisper.speculative import DecodeRequest, generate  # noqa: E402


class OncePerPassPolicy(CostModelPolicy):
    """The cost model's length, fixed before the first draft of each pass."""

    def extend(self, drafted: int, chain: torch.Tensor, expected: float) -> bool:
        return drafted < self.current()


POLICIES = {
    "greedy": None,
    "cost model, once per pass": lambda costs, batch: OncePerPassPolicy(costs, batch),
    "cost model, after every draft": lambda costs, batch: CostModelPolicy(costs, batch),
    "k=5, +2/-1": lambda costs, batch: DraftLengthPolicy(batch, 5, adaptive=True),
}


@dataclass
class Tally:
    wall_s: list[float] = field(default_factory=list)
    modelled_s: float = 0.0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: list[list[int]] = field(default_factory=list)


class CountingRunner:
    """Adds the cost table's price of every main pass and draft step a decode makes."""

    def __init__(self, engine: SpeculativeWhisper, costs: DecoderCosts) -> None:
        self.engine, self.costs, self.seconds = engine, costs, 0.0
        self._greedy, self._draft = WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft
        counter = self

        def greedy(runner, tokens, start, cache, mask, last):
            if runner is engine.main:
                counter.seconds += costs.verify_s(tokens.shape[0], last)
            return counter._greedy(runner, tokens, start, cache, mask, last)

        def draft(runner, tokens, start, cache, mask):
            counter.seconds += costs.draft_s(tokens.shape[0])
            return counter._draft(runner, tokens, start, cache, mask)

        WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft = greedy, draft

    def close(self) -> None:
        WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft = self._greedy, self._draft


@torch.inference_mode()
def decode(engine: SpeculativeWhisper, states: EncoderStates, policy_of) -> tuple[list[list[int]], list]:
    """The engine's decoding loop for English rows, with the drafter's length policy swapped in."""
    batch = states.main.shape[0]
    cache = engine.main.new_cache(states.main)
    prompt = torch.tensor([engine.tokens.prompt("en", "transcribe")] * batch)
    request = DecodeRequest(prompt, torch.full((batch,), prompt.shape[1] + 444))
    drafter = None
    if policy_of is not None:
        drafter = AssistantDrafter(
            engine.assistant, engine.assistant.new_cache(states.main, cache), policy_of(engine.costs(), batch)
        )
    return generate(engine.main, cache, request, engine.filters, engine.tokens.end_of_text, drafter)


def main() -> None:
    parser = engine_arguments(__doc__, clips=16)
    parser.set_defaults(skip=40)  # the assistant's distillation trained on the first 40 clips' speakers
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pcm = english_clips(args.speech_dir, args.skip, args.clips)
    engine = SpeculativeWhisper.load(args.main, args.assistant)
    if engine.models.assistant_has_encoder:
        raise SystemExit("this benchmark drives a decoder-only assistant that reads the main encoder")
    costs = engine.costs()

    load = np.round(os.getloadavg(), 2).tolist()
    lines = [
        f"Clips: {len(pcm)} LibriSpeech test-other (English) from index {args.skip}; "
        f"whisper-base fp32 + `{Path(args.assistant).name}`; {args.threads} threads; "
        f"wall clock best of {args.repeats} rounds; load average at start {load}.",
        "",
        "| batch | policy | decoder wall s | vs greedy | modelled s | vs greedy | main passes | drafted "
        "| accepted | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        chunks = [pcm[i : i + batch] for i in range(0, len(pcm), batch)]
        states = [engine.encode(engine.log_mel(chunk)) for chunk in chunks]
        tallies = {name: Tally() for name in POLICIES}
        for round_ in range(args.repeats):
            for name, policy_of in POLICIES.items():
                tally = tallies[name]
                counter = CountingRunner(engine, costs)
                began = time.perf_counter()
                results = [decode(engine, s, policy_of) for s in states]
                tally.wall_s.append(time.perf_counter() - began)
                counter.close()
                if round_ == 0:
                    tally.modelled_s = counter.seconds
                    tally.tokens = [t for tokens, _ in results for t in tokens]
                    for stats in (s for _, row_stats in results for s in row_stats):
                        tally.passes += stats.main_passes
                        tally.drafted += stats.drafted
                        tally.accepted += stats.accepted
        plain = tallies["greedy"]
        for name, tally in tallies.items():
            wall = min(tally.wall_s)
            lines.append(
                f"| {batch} | {name} | {wall:.2f} | {min(plain.wall_s) / wall:.2f}x | {tally.modelled_s:.2f} "
                f"| {plain.modelled_s / tally.modelled_s:.2f}x | {tally.passes} | {tally.drafted} "
                f"| {tally.accepted} | {tally.tokens == plain.tokens} |"
            )
    report = "\n".join(lines)
    print(report)
    record(args.record, "Draft-length policies", report)


if __name__ == "__main__":
    main()
