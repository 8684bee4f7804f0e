"""Benchmark a distilled assistant on the clips its distillation held out.

    python scripts/bench_assistant.py                          # models/whisper-base + its assistant
    python scripts/bench_assistant.py --repeats 3 --json runs/bench_assistant.json
    python scripts/bench_assistant.py --data-curve 150         # + short retrainings on parts of the data
    python scripts/bench_assistant.py --compare-frames         # + the assistant over all 1,500 frames
    python scripts/bench_assistant.py --compare-activations    # + its products with fp32 activations
    python scripts/bench_assistant.py --fixed-lengths 1 2      # + 1 and 2 drafts every pass

Prints, per held-out group (LibriSpeech English, then each FLEURS language):
- token acceptance: the share of the main model's greedy tokens the assistant's greedy choice
  matches given the same prefix, for heads cut to 1k/2k/4k/8k tokens and the full head;
- the decoding-phase speed-up of speculative over the engine's plain greedy at batch 1, with the
  tokens checked identical, and the engine's own acceptance (accepted / drafted);
- the cost model that explains it: draft and verify steps as fractions of a main step, tokens per
  verify pass, and the speed-up they predict; projected to whisper-large-v2 + distil-large-v2 sizes;
- how held-out acceptance grew with training time (from the distillation record) and, with
  --data-curve, with the amount of training data.
Never run it while something else is training: the timings would measure the other job.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from bench_engine import fp32_activation_engine  # noqa: E402  (scripts/, beside this file)

from spec_whisper.distillation import (  # noqa: E402
    SETTINGS_FILE,
    DistilConfig,
    LabelledSet,
    added_parameters,
    default_clips,
    default_threads,
    evaluate_acceptance,
    init_assistant,
    labelled_data,
    token_order,
    train,
)
from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.types import DecodingOptions  # noqa: E402

SIZES = (1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class DecoderShape:
    """What one decoder step reads, for the byte-count cost model (memory-bound at batch 1)."""

    name: str
    d_model: int
    layers: int
    ffn: int
    head: int  # rows of the output projection actually computed
    frames: int = 1500

    def step_values(self) -> int:
        # Self-attention q/k/v/out, cross-attention q/out (its keys and values are cached, and read:
        # 2 x frames x d per layer), feed-forward block; then the output head.
        per_layer = 6 * self.d_model**2 + 2 * self.d_model * self.ffn + 2 * self.frames * self.d_model
        return self.layers * per_layer + self.head * self.d_model


LARGE_V2 = DecoderShape("whisper-large-v2", 1280, 32, 5120, 51865)
DISTIL_LARGE_V2 = DecoderShape("distil-large-v2", 1280, 2, 5120, 51865)


VARIANTS = {  # speculative decoding in another setting, beside the default, as the report says it
    "shared": "drafting from the shared shortlist instead of the language's own",
    "all_frames": "the assistant attending to all 1,500 frames instead of the audio's",
    "fp32_activations": "the assistant's int8 weights meeting fp32 activations instead of int8 ones",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main", type=Path, default=PROJECT_ROOT / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=PROJECT_ROOT / "models" / "whisper-base-assistant")
    parser.add_argument("--speech-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per clip and mode (min kept)")
    parser.add_argument("--threads", type=int, help="default: the cores idle now (at least 1)")
    parser.add_argument("--groups", nargs="*", help="only these groups (en, de, fr, es, pt)")
    parser.add_argument(
        "--data-curve", type=int, default=0, help="steps per data-subset retraining (0: skip)"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--compare-frames", action="store_true", help="also time the assistant over all 1,500 frames"
    )
    parser.add_argument(
        "--compare-activations",
        action="store_true",
        help="also time the assistant's int8 weights meeting fp32 activations (the default on VNNI: int8)",
    )
    parser.add_argument("--skip-groups", action="store_true", help="no per-group acceptance and timing")
    parser.add_argument(
        "--fixed-lengths", type=int, nargs="*", default=[], metavar="K",
        help="also time speculative decoding with K drafts every pass (no cost model)",
    )  # fmt: skip
    return parser.parse_args()


def acceptance_by_size(
    engine: SpeculativeWhisper,
    assistant_dir: Path,
    data: LabelledSet,
    order: list[int],
    own_language: list[int] | None = None,
) -> dict[str, float]:
    """Held-out acceptance with the shared shortlist's prefixes, the full head, and the language's
    own shortlist (`own_language`, from `shortlist.json`) where the assistant has one."""
    from transformers import WhisperForCausalLM

    hf = WhisperForCausalLM.from_pretrained(assistant_dir).eval()
    shortlists: dict[str, list[int] | None] = {f"{n // 1024}k": order[:n] for n in SIZES if n <= len(order)}
    shortlists["full"] = None
    if own_language is not None:
        shortlists[f"{len(own_language) // 1024}k own language"] = own_language
    return evaluate_acceptance(hf, data, engine, shortlists)


def step_ms(runner, states: torch.Tensor, width: int = 1, repeats: int = 30, main_cache=None) -> float:
    """Median wall time of one forward of `width` tokens at batch 1, mid-sequence (`main_cache`: for an
    assistant that reads the main decoder's cross-attention cache)."""
    cache = runner.new_cache(states, main_cache)
    tokens = torch.full((1, width), 440)
    start = torch.tensor([40])
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            began = time.perf_counter()
            runner.forward(tokens, start, cache)
            if i >= 3:
                times.append(time.perf_counter() - began)
    return 1000 * float(np.median(times))


@contextmanager
def shared_shortlist(engine: SpeculativeWhisper) -> Iterator[None]:
    """The engine drafting every language from the shared shortlist: its language heads set aside."""
    heads = engine.assistant.language_heads
    engine.assistant.language_heads = {}
    try:
        yield
    finally:
        engine.assistant.language_heads = heads


@contextmanager
def swapped_assistant(engine: SpeculativeWhisper, other: SpeculativeWhisper) -> Iterator[None]:
    """The engine drafting with `other`'s assistant runner (the same weights, built another way)."""
    own, engine.assistant = engine.assistant, other.assistant
    try:
        yield
    finally:
        engine.assistant = own


@contextmanager
def all_frames(engine: SpeculativeWhisper) -> Iterator[None]:
    """The engine's assistant attending to every encoder frame, the padding after the audio included."""
    engine.assistant_frames = lambda states: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del engine.assistant_frames


def time_decoding(
    engine: SpeculativeWhisper,
    pcm: list[np.ndarray],
    languages: list[str],
    repeats: int,
    variants: dict[str, Callable[[], AbstractContextManager]] | None = None,
    fixed_lengths: Sequence[int] = (),
) -> dict[str, float]:
    """Batch-1 decoding time (min over repeats, interleaved) per mode, summed over the clips: greedy,
    speculative, and speculative under each of `variants` (a name and the setting it decodes in:
    `shared_shortlist`, `all_frames`, `swapped_assistant`) and with each of `fixed_lengths` drafts
    every pass instead of the cost model's choice; the same engine and cost table."""
    totals = {"greedy_s": 0.0, "speculative_s": 0.0, "tokens": 0, "drafted": 0, "accepted": 0, "passes": 0}
    # Each mode: the setting it decodes in, and its options beside the language.
    modes: dict[str, tuple[Callable[[], AbstractContextManager], dict]] = {
        "greedy": (nullcontext, {"speculative": False}),
        "speculative": (nullcontext, {}),
    }
    for name, setting in (variants or {}).items():
        modes[f"speculative_{name}"] = (setting, {})
    for k in fixed_lengths:  # without the +2/-1 heuristic, which an explicit length otherwise starts
        modes[f"speculative_k{k}"] = (nullcontext, {"draft_length": k, "adaptive_draft": False})
    named = [*(variants or {}), *(f"k{k}" for k in fixed_lengths)]  # the speculative modes beside the default
    for name in named:
        totals[f"speculative_{name}_s"] = 0.0
    mismatches = 0
    for clip, lang in zip(pcm, languages, strict=True):
        states = engine.encode_pcm([clip])
        best = dict.fromkeys(modes, float("inf"))
        outputs = {}
        for _ in range(repeats):
            for mode, (setting, options) in modes.items():
                with setting():
                    result = engine.decode(states, [DecodingOptions(lang, **options)])[0]
                best[mode] = min(best[mode], result.stats.decode_s)
                outputs[mode] = result
        mismatches += any(r.tokens != outputs["greedy"].tokens for r in outputs.values())
        stats = outputs["speculative"].stats
        for mode in modes:
            totals[f"{mode}_s"] += best[mode]
        for name in named:  # the last repeat's drafts
            drafted = outputs[f"speculative_{name}"].stats
            totals[f"drafted_{name}"] = totals.get(f"drafted_{name}", 0) + drafted.drafted
            totals[f"accepted_{name}"] = totals.get(f"accepted_{name}", 0) + drafted.accepted
        totals["tokens"] += len(outputs["greedy"].tokens) + 1  # end-of-text is decoded too
        totals["drafted"] += stats.drafted
        totals["accepted"] += stats.accepted
        totals["passes"] += stats.main_passes
    totals["identical"] = mismatches == 0
    totals["speedup"] = totals["greedy_s"] / totals["speculative_s"]
    for name in named:
        totals[f"speedup_{name}"] = totals["greedy_s"] / totals[f"speculative_{name}_s"]
        totals[f"engine_acceptance_{name}"] = totals[f"accepted_{name}"] / max(1, totals[f"drafted_{name}"])
    totals["engine_acceptance"] = totals["accepted"] / max(1, totals["drafted"])
    return totals


def cost_model(engine: SpeculativeWhisper, timing: dict[str, float], draft_ms: float, main_ms: float) -> dict:
    passes = timing["passes"]
    drafts_per_pass = timing["drafted"] / passes
    tokens_per_pass = timing["tokens"] / passes
    width = max(1, round(drafts_per_pass)) + 1
    states = torch.randn(1, 1500, engine.main.d_model)
    verify_ms = step_ms(engine.main, states, width)
    predicted = tokens_per_pass * main_ms / (verify_ms + drafts_per_pass * draft_ms)
    # The same prices as the engine has learnt them from the passes it ran (`LiveCosts`): the first
    # step of a pass finds the assistant cold, and each step carries its filters and policy.
    live = engine.costs()
    step = live.verify_s(1, 1)
    drafts = max(1, round(drafts_per_pass))
    in_place = (live.drafting_s(1, drafts) / drafts / step, live.verify_s(1, width) / step)
    return {
        "main_step_ms": main_ms,
        "draft_step_ms": draft_ms,
        "draft_fraction": draft_ms / main_ms,
        "verify_width": width,
        "verify_fraction": verify_ms / main_ms,
        "drafts_per_pass": drafts_per_pass,
        "tokens_per_pass": tokens_per_pass,
        "predicted_speedup": predicted,
        "in_place_draft_fraction": in_place[0],
        "in_place_verify_fraction": in_place[1],
        "in_place_predicted_speedup": tokens_per_pass / (in_place[1] + drafts_per_pass * in_place[0]),
    }


def projected(alpha: float, draft_fraction: float, k_max: int = 12) -> tuple[int, float, float]:
    """Best draft length, tokens per pass and speed-up when a pass costs 1 + k x draft_fraction
    main steps (verifying k+1 tokens costs one step when weight reads dominate) and each draft
    token is right with probability `alpha` given a right prefix."""
    best = (0, 1.0, 1.0)
    for k in range(1, k_max + 1):
        tokens = (1 - alpha ** (k + 1)) / (1 - alpha) if alpha < 1 else k + 1
        speedup = tokens / (1 + k * draft_fraction)
        if speedup > best[2]:
            best = (k, tokens, speedup)
    return best


def data_curve(
    engine: SpeculativeWhisper,
    main_dir: Path,
    config: DistilConfig,
    ffn: int,
    english: LabelledSet,
    steps: int,
    speech: Path | None,
) -> list[dict]:
    """Retrain from the copied layers on growing parts of the cached training data."""
    from transformers import WhisperForConditionalGeneration

    train_clips, heldout_clips = default_clips(config, speech)
    labelled, _ = labelled_data(engine, main_dir, config, train_clips, heldout_clips)
    order = token_order(engine, labelled, max(config.train_vocab, config.shortlist))
    real = [i for i, c in enumerate(labelled.clips) if c["source"] != "espeak"]
    synthetic = [i for i, c in enumerate(labelled.clips) if c["source"] == "espeak"]
    subsets = {
        "real, clips only": [i for i in real if labelled.clips[i]["view"] == "clip"],
        "real": real,
        "real + half the synthetic": real + synthetic[::2],
        "all": real + synthetic,
    }
    main = WhisperForConditionalGeneration.from_pretrained(main_dir).eval()
    rows = []
    for name, rows_used in subsets.items():
        part = labelled.subset(rows_used)
        assistant = init_assistant(main, config.layers, ffn)
        short = dataclasses.replace(config, steps=steps, max_train_s=float("inf"))
        end = engine.tokens.end_of_text
        record = train(assistant, part, order[: config.train_vocab], short, end, progress=False, main=main)
        score = evaluate_acceptance(assistant, english, engine, {"a": order[: config.shortlist]})["a"]
        tokens = sum(len(x) - p + 1 for x, p in zip(part.inputs, part.prompt_lens, strict=True))
        rows.append(
            {
                "data": name,
                "windows": len(part.inputs),
                "tokens": tokens,
                "steps": steps,
                "train_s": round(record["train_s"]),
                "heldout_en": round(score, 4),
            }
        )
        print(f"  {name:28s} {len(part.inputs):4d} windows {tokens:6d} tokens -> {score:.1%}")
    return rows


def main() -> int:
    args = parse_args()
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    summary = json.loads((args.assistant / SETTINGS_FILE).read_text())
    config = DistilConfig.from_dict(summary["settings"])
    engine = SpeculativeWhisper.load(args.main, args.assistant)
    plain = SpeculativeWhisper.load(args.main)
    fp32_activations = fp32_activation_engine(args.main, args.assistant) if args.compare_activations else None
    by_language = {lang: ids.tolist() for lang, ids in engine.models.assistant_language_shortlists.items()}
    report: dict = {"threads": threads, "load_before": load_before, "main": str(args.main)}

    # Parameters: the assistant's own (layers + final norm; embeddings are the main model's).
    main_params = sum(p.numel() for p in engine.models.main.parameters())
    own = added_parameters(engine.models.assistant)
    report["parameters"] = {"main": main_params, "assistant_own": own, "share": own / main_params}
    print(f"threads {threads}, load average before {load_before[0]:.2f}")
    print(f"assistant adds {own:,} parameters to the main model's {main_params:,} ({own / main_params:.1%})")

    # Held-out data, labelled as in distillation (cached).
    _, heldout_clips = default_clips(config, args.speech_dir)
    _, heldout = labelled_data(plain, args.main, config, [], heldout_clips)
    order = summary.get("token_order")
    if order is None:
        train_clips, _ = default_clips(config, args.speech_dir)
        labelled, _ = labelled_data(plain, args.main, config, train_clips, [])
        order = token_order(plain, labelled, max(config.train_vocab, config.shortlist))

    # Per-step costs at batch 1.
    states = torch.randn(1, 1500, engine.main.d_model)
    main_ms = step_ms(engine.main, states)
    draft_ms = step_ms(engine.assistant, states, main_cache=engine.main.new_cache(states))
    from spec_whisper.decoder import WhisperDecoderRunner

    hf = engine.models.assistant
    draft_by_size = {}
    for n in (*SIZES, None):
        shortlist = None if n is None else torch.tensor(sorted(order[:n]))
        runner = WhisperDecoderRunner(hf.model.decoder, hf.proj_out.weight, shortlist)
        draft_by_size["full" if n is None else f"{n // 1024}k"] = step_ms(runner, states) / main_ms
    report["draft_fraction_by_head"] = draft_by_size
    print(
        f"main step {main_ms:.2f} ms; draft step / main step by head size: "
        + ", ".join(f"{k} {v:.3f}" for k, v in draft_by_size.items())
    )

    groups = sorted({c["language"] for c in heldout.clips}, key=lambda g: (g != "en", g))
    report["groups"] = {}
    for group in [] if args.skip_groups else args.groups or groups:
        rows = [i for i, c in enumerate(heldout.clips) if c["language"] == group]
        data = heldout.subset(rows)
        accept = acceptance_by_size(plain, args.assistant, data, order, by_language.get(group))
        keys = set(data_keys := [c["key"] for c in data.clips])
        clips = [c for c in heldout_clips if c.key in keys]
        clips.sort(key=lambda c: data_keys.index(c.key))
        pcm = [c.load() for c in clips]
        variants: dict[str, Callable[[], AbstractContextManager]] = {}
        if group in by_language:
            variants["shared"] = partial(shared_shortlist, engine)
        if args.compare_frames:
            variants["all_frames"] = partial(all_frames, engine)
        if fp32_activations is not None:
            variants["fp32_activations"] = partial(swapped_assistant, engine, fp32_activations)
        timing = time_decoding(engine, pcm, [group] * len(clips), args.repeats, variants, args.fixed_lengths)
        costs = cost_model(engine, timing, draft_ms, main_ms)
        report["groups"][group] = {"clips": len(clips), "acceptance": accept, "timing": timing, "cost": costs}
        name = "LibriSpeech test-other (held-out speakers)" if group == "en" else f"FLEURS {group}"
        print(f"\n## {name}: {len(clips)} clips, {timing['tokens']} tokens")
        print("token acceptance by head: " + ", ".join(f"{k} {v:.1%}" for k, v in accept.items()))
        print(
            f"decoding at batch 1: greedy {timing['greedy_s']:.2f} s, "
            f"speculative {timing['speculative_s']:.2f} s -> {timing['speedup']:.2f}x, "
            f"tokens identical: {timing['identical']}"
        )
        fixed = {
            f"k{k}": f"{k} drafts every pass instead of the cost model's choice" for k in args.fixed_lengths
        }
        for name, says in {**VARIANTS, **fixed}.items():
            if f"speedup_{name}" in timing:
                print(
                    f"{says}: {timing[f'speculative_{name}_s']:.2f} s -> {timing[f'speedup_{name}']:.2f}x, "
                    f"{timing[f'engine_acceptance_{name}']:.1%} of its drafts accepted"
                )
        print(
            f"engine acceptance (accepted/drafted) {timing['engine_acceptance']:.1%}; "
            f"{costs['tokens_per_pass']:.2f} tokens and {costs['drafts_per_pass']:.2f} drafts per verify pass"
        )
        print(
            f"cost model: draft step {costs['draft_fraction']:.3f}, verify of {costs['verify_width']} tokens "
            f"{costs['verify_fraction']:.3f} of a main step -> predicted {costs['predicted_speedup']:.2f}x; "
            f"as priced in place: draft step {costs['in_place_draft_fraction']:.3f}, verify "
            f"{costs['in_place_verify_fraction']:.3f} -> {costs['in_place_predicted_speedup']:.2f}x"
        )

    # Projection: the same acceptance with large-v2's decoder and distil-large-v2's 2 layers.
    # Acceptance of the saved head on held-out English (as recorded while distilling, if not measured).
    english = report["groups"].get("en", {}).get("acceptance") or summary["acceptance"]["heldout_en"]
    alpha = english.get(f"{config.shortlist // 1024}k", english["full"])
    shortlisted = DecoderShape("distil-large-v2, 4k head", 1280, 2, 5120, 4096)
    print("\n## Projection to whisper-large-v2 (values read per decoder step, fp16 bytes = 2x)")
    main_values = LARGE_V2.step_values()
    report["projection"] = {"alpha": alpha}
    for shape in (LARGE_V2, DISTIL_LARGE_V2, shortlisted):
        fraction = shape.step_values() / main_values
        values = shape.step_values()
        line = f"{shape.name:28s} {values / 1e6:7.1f} M values ({2 * values / 1e6:6.0f} MB)"
        if shape is not LARGE_V2:
            k, tokens, speedup = projected(alpha, fraction)
            report["projection"][shape.name] = {"draft_fraction": fraction, "k": k, "speedup": speedup}
            line += (
                f", draft {fraction:.3f} of a main step -> k={k}: {tokens:.2f} tokens/pass, {speedup:.2f}x"
            )
        print(line)
    base = DecoderShape("whisper-base", 512, 6, 2048, 51865)
    ours = DecoderShape("this assistant", 512, len(config.layers), summary["ffn_dim"], config.shortlist)
    print(
        f"(the same byte model for whisper-base gives a draft fraction of "
        f"{ours.step_values() / base.step_values():.3f}; measured on this CPU {draft_ms / main_ms:.3f})"
    )

    # Acceptance against training time (recorded while distilling) and data (optional retraining).
    print("\n## Held-out English acceptance during training")
    for point in summary["training"]["curve"]:
        print(
            f"  step {point['step']:4d}  {point['train_s']:6.0f} s  train {point['train_acc']:.1%}"
            f"  held-out {point['heldout_en']:.1%}"
        )
    print(f"  (untrained copied layers: {summary['acceptance']['untrained_heldout_en']:.1%})")
    if args.data_curve:
        english = heldout.subset(i for i, c in enumerate(heldout.clips) if c["language"] == "en")
        print(f"\n## Held-out English acceptance by training data ({args.data_curve} steps each)")
        report["data_curve"] = data_curve(
            plain, args.main, config, summary["ffn_dim"], english, args.data_curve, args.speech_dir
        )
    report["load_after"] = os.getloadavg()
    print(f"\nload average after {report['load_after'][0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
