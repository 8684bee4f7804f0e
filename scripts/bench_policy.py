"""Draft-length policies side by side on the decoder stage, with the same engine, clips and cost table.

    python scripts/bench_policy.py --skip 40 --clips 16 --record docs/benchmarks.md
    python scripts/bench_policy.py --policies "cost model, after every draft (default)" k=1 k=2 k=3
    python scripts/bench_policy.py --corpus fleurs --clips 40 --batch 8 16   # batches mixing the languages

Policies: plain greedy (no drafts); the cost model choosing the length once per verify pass; the
cost model deciding again after every draft from the assistant's probabilities, with the prices the
engine learns in place (the engine's default, `LiveCosts`) and with its start-up table alone; k=5
with the +2/-1 heuristic; constant k = 1, 2 and 3; and the default once more with the assistant
reading the main model's fp32 cross-attention keys and values instead of its bf16 copy, and with its
products' int8 weights meeting fp32 activations instead of int8 ones (as on CPUs without VNNI); each
of those two with prices of its own, learnt in place; their modelled seconds price a draft step as
the others do. Each is timed in wall-clock seconds: the policies take turns on each chunk of
`--batch` clips, and each chunk's best of `--repeats` rounds counts (these cores are shared and
their speed drifts over minutes; timing each policy over all the clips in turn let one policy's
ratio move by 15% between two runs). And in modelled seconds: the engine's prices as they stood at
the start of the last round (the start-up table rescaled by every pass run before) summed over the
passes the policy made, which does not move with the machine's mood and shows what the decisions are
worth. Outputs are checked identical.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "loadtest")]

from bench_engine import engine_arguments, english_clips, fp32_activation_engine, record  # noqa: E402  (scripts/, beside this file)
from clips import Clip, load_clips  # noqa: E402  (loadtest/)

from spec_whisper.cost_model import BATCHES, DecoderCosts, LiveCosts  # noqa: E402
from spec_whisper.decoder import WhisperDecoderRunner  # noqa: E402
from spec_whisper.drafters import CostModelPolicy, LengthPolicy  # noqa: E402
from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.types import DecodingOptions  # noqa: E402


class OncePerPassPolicy(CostModelPolicy):
    """The cost model's length, fixed before the first draft of each pass."""

    def extend(self, drafted: int, chain: list[float], expected: float) -> bool:
        return drafted < self.current()


class PolicyEngine(SpeculativeWhisper):
    """The engine, whose cost-model policy can be the once-per-pass one, price passes by the
    start-up table alone, or run with the assistant on fp32 cross-attention (`wide_cross`)."""

    once_per_pass = False
    startup_table = False
    wide_cross = False
    fp32_activations = False  # the caller swaps in an assistant built with fp32 activations

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._own_costs: dict[str, LiveCosts] = {}

    def length_policy(
        self, batch: int, draft_length: int | None, adaptive: bool, languages: Sequence[str] = ()
    ) -> LengthPolicy:
        costs = self.costs()
        assert isinstance(costs, LiveCosts)
        variant = "wide_cross" if self.wide_cross else "fp32_activations" if self.fp32_activations else None
        if draft_length is None and variant is not None:  # an assistant built otherwise: prices of its own
            own = self._own_costs.setdefault(variant, LiveCosts(costs.table))
            return CostModelPolicy(own, batch)
        if draft_length is None and self.startup_table:
            return CostModelPolicy(costs.table, batch)
        if draft_length is None and self.once_per_pass:
            return OncePerPassPolicy(costs, batch)
        return super().length_policy(batch, draft_length, adaptive, languages)


@dataclass(frozen=True)
class Policy:
    """How a policy decodes: its `DecodingOptions` and the `PolicyEngine` switches it sets."""

    speculative: bool = True
    draft_length: int | None = None  # None: the cost model chooses
    adaptive: bool = False  # +2/-1 on a draft length
    once_per_pass: bool = False
    startup_table: bool = False
    wide_cross: bool = False  # the assistant on fp32 cross-attention
    fp32_activations: bool = False  # the assistant's products on fp32 activations


POLICIES = {
    "greedy": Policy(speculative=False),
    "cost model, once per pass": Policy(once_per_pass=True),
    "cost model, after every draft, start-up table": Policy(startup_table=True),
    "cost model, after every draft (default)": Policy(),
    "k=5, +2/-1": Policy(draft_length=5, adaptive=True),
    "k=1": Policy(draft_length=1),
    "k=2": Policy(draft_length=2),
    "k=3": Policy(draft_length=3),
    "default, assistant on fp32 cross-attention": Policy(wide_cross=True),
    "default, assistant's products on fp32 activations": Policy(fp32_activations=True),
}


@dataclass
class Tally:
    # Seconds per chunk index, one entry per round.
    chunk_s: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    modelled_s: float = 0.0
    passes: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: list[list[int]] = field(default_factory=list)
    repeatable: bool = True  # the same tokens in every round

    @property
    def wall_s(self) -> float:
        """The sum over chunks of each chunk's best round."""
        return sum(min(times) for times in self.chunk_s.values())


class CountingRunner:
    """Adds the cost table's price of every main pass and draft step a decode makes."""

    def __init__(self, engine: SpeculativeWhisper, costs: DecoderCosts) -> None:
        self.seconds = 0.0
        self._greedy, self._draft = WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft
        self.first = True  # the next draft step is a pass's first, priced with the table's extra
        counter = self

        def greedy(runner, tokens, start, cache, mask, last, every_logit=False):
            if runner is engine.main:
                counter.seconds += costs.verify_s(tokens.shape[0], last)
                counter.first = True
            return counter._greedy(runner, tokens, start, cache, mask, last, every_logit)

        def draft(runner, tokens, start, cache, mask, head=None):
            counter.seconds += (
                costs.drafting_s(tokens.shape[0], 1) if counter.first else costs.draft_s(tokens.shape[0])
            )
            counter.first = False
            return counter._draft(runner, tokens, start, cache, mask, head)

        WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft = greedy, draft

    def close(self) -> None:
        WhisperDecoderRunner.greedy, WhisperDecoderRunner.draft = self._greedy, self._draft


def fleurs_clips(speech_dir: Path, clips: int) -> tuple[list[np.ndarray], list[str]]:
    """16 kHz samples and languages of `clips` FLEURS clips from the shared folder, taking the
    languages in turn (a served batch mixes them). The default assistant was distilled on some."""
    by_language: dict[str, list[Clip]] = defaultdict(list)
    for clip in load_clips(speech_dir, "fleurs"):
        by_language[clip.language].append(clip)
    chosen = [c for group in itertools.zip_longest(*by_language.values()) for c in group if c][:clips]
    return [c.pcm for c in chosen], [c.language for c in chosen]


def main() -> None:
    parser = engine_arguments(__doc__, clips=16)
    parser.set_defaults(skip=40)  # the assistant's distillation trained on the first 40 clips' speakers
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--corpus", choices=["librispeech", "fleurs"], default="librispeech",
        help="fleurs: the first --clips FLEURS clips, one language after another, so that batches mix "
        "them (--skip counts LibriSpeech clips only)",
    )  # fmt: skip
    parser.add_argument(
        "--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES), metavar="NAME",
        help="the policies to run, by name (greedy always runs: the others are judged against it)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.pack and args.corpus == "fleurs":
        parser.error("--pack joins English clips only: FLEURS batches take the languages in turn")
    policies = {name: POLICIES[name] for name in POLICIES if name == "greedy" or name in args.policies}
    torch.set_num_threads(args.threads)
    if args.corpus == "fleurs":
        pcm, languages = fleurs_clips(Path(args.speech_dir), args.clips)
        described = f"{len(pcm)} FLEURS, {'/'.join(sorted(set(languages)))} in turn"
    else:
        pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
        languages = ["en"] * len(pcm)
        described = f"{len(pcm)} LibriSpeech test-other (English) from index {args.skip}"
        if args.pack:
            seconds = sum(len(p) for p in pcm) / 16000
            described = (
                f"LibriSpeech test-other (English) from index {args.skip}, {args.clips} asked for, joined "
                f"into {len(pcm)} windows of at most {args.pack:g} s ({seconds:.0f} s)"
            )
    engine = PolicyEngine.load(args.main, args.assistant)
    costs = engine.costs()
    assistant = engine.assistant
    assert assistant is not None
    narrow = assistant.cross_dtype
    fp32_assistant = fp32_activation_engine(args.main, args.assistant).assistant

    load = np.round(os.getloadavg(), 2).tolist()
    lines = [
        f"Clips: {described}; "
        f"whisper-base fp32 + `{Path(args.assistant).name}`; {args.threads} threads; "
        f"wall clock: policies in turn on each chunk, each chunk's best of {args.repeats} rounds; "
        f"load average at start {load}.",
        "",
        "| batch | policy | decoder wall s | vs greedy | modelled s | vs greedy | main passes | drafted "
        "| accepted | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for batch in args.batch:
        chunks = [pcm[i : i + batch] for i in range(0, len(pcm), batch)]
        states = [engine.encode_pcm(chunk) for chunk in chunks]
        tallies = {name: Tally() for name in policies}
        options = {
            name: [
                DecodingOptions(
                    language=language,
                    speculative=p.speculative,
                    draft_length=p.draft_length,
                    adaptive_draft=p.adaptive,
                )
                for language in languages
            ]
            for name, p in policies.items()
        }
        for round_ in range(args.repeats):
            prices = DecoderCosts(costs.verify.copy(), costs.draft.copy(), costs.table.first_extra.copy())
            results: dict[str, list] = {name: [] for name in policies}
            modelled = dict.fromkeys(policies, 0.0)
            for c, (s, chunk) in enumerate(zip(states, chunks, strict=True)):
                for name, p in policies.items():
                    engine.once_per_pass, engine.startup_table = p.once_per_pass, p.startup_table
                    engine.wide_cross, engine.fp32_activations = p.wide_cross, p.fp32_activations
                    assistant.cross_dtype = torch.float32 if p.wide_cross else narrow
                    engine.assistant = fp32_assistant if p.fp32_activations else assistant
                    counter = CountingRunner(engine, prices)
                    began = time.perf_counter()
                    first = c * batch
                    results[name] += engine.decode(s, options[name][first : first + len(chunk)])
                    tallies[name].chunk_s[c].append(time.perf_counter() - began)
                    counter.close()
                    modelled[name] += counter.seconds
            for name, tally in tallies.items():
                # Counts and modelled seconds of the last round, with the prices learnt by then.
                done = results[name]
                tally.modelled_s = modelled[name]
                tally.passes = sum(r.stats.main_passes for r in done)
                tally.drafted = sum(r.stats.drafted for r in done)
                tally.accepted = sum(r.stats.accepted for r in done)
                if round_ == 0:
                    tally.tokens = [r.tokens for r in done]
                else:
                    tally.repeatable &= [r.tokens for r in done] == tally.tokens
        plain = tallies["greedy"]
        for name, tally in tallies.items():
            wall = tally.wall_s
            identical = tally.repeatable and plain.repeatable and tally.tokens == plain.tokens
            lines.append(
                f"| {batch} | {name} | {wall:.2f} | {plain.wall_s / wall:.2f}x | {tally.modelled_s:.2f} "
                f"| {plain.modelled_s / tally.modelled_s:.2f}x | {tally.passes} | {tally.drafted} "
                f"| {tally.accepted} | {identical} |"
            )
        lines.append("")
    lines.append(
        "Prices learnt in place over start-up table, by batch "
        + ", ".join(str(b) for b in BATCHES)
        + ": verify "
        + " ".join(f"{x:.2f}" for x in costs.verify_scale)
        + "; a pass's first draft step "
        + " ".join(f"{x:.2f}" for x in costs.first_scale)
        + "; later draft steps "
        + " ".join(f"{x:.2f}" for x in costs.draft_scale)
        + "."
    )
    report = "\n".join(lines)
    print(report)
    record(args.record, "Draft-length policies", report)


if __name__ == "__main__":
    main()
