"""Engine benchmark: our greedy and speculative decoding beside transformers and CTranslate2.

Everything runs in one process over the same clips, and the systems take turns group by group (as
many clips as the largest batch), so a drift in the machine's speed lands on all of them alike and
the ratios are measured side by side. Run it on a quiet machine:

    python scripts/bench_engine.py --clips 12 --record docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperFeatureExtractor, WhisperForCausalLM, WhisperForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "loadtest")]

from clips import add_pack_option, load_clips  # noqa: E402  (loadtest/)
from machine import cpu_description  # noqa: E402  (scripts/, beside this file)

from spec_whisper.cost_model import BATCHES, TOKENS, PassCosts, synchronize  # noqa: E402
from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.heads import FullHead, ScreenedHead  # noqa: E402
from spec_whisper.linear import use_int8_activations  # noqa: E402
from spec_whisper.logit_filters import Positions, apply_filters  # noqa: E402
from spec_whisper.types import DecodingOptions  # noqa: E402


@dataclass
class Run:
    name: str
    batch: int
    tokens: list[list[int]] = field(default_factory=list)
    total_s: float = 0.0
    features_s: float = 0.0
    encoder_s: float = 0.0
    decode_s: float = 0.0
    drafted: int = 0
    accepted: int = 0
    passes: int = 0

    @property
    def n_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)


def _timed(fn: Callable, repeat: int = 20) -> float:
    fn()
    began = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - began) / repeat


def measure_bandwidth_gbs() -> float:
    """Read bandwidth: summing 1 GiB of fp32, the best of 5 (the floor a decoder step streams at)."""
    data = torch.ones(256 * 1024 * 1024)
    best = min(_timed(data.sum, repeat=1) for _ in range(5))
    return data.numel() * 4 / best / 1e9


@torch.inference_mode()  # outside it every cache write extends an autograd graph (steps took ~1 s)
def step_costs(engine: SpeculativeWhisper, pcm: np.ndarray, bandwidth: float) -> dict[str, float]:
    """Milliseconds of one main-decoder greedy step over 1..8 new tokens (states and head, as decoding
    runs it), one assistant step, and the bandwidth bounds they are judged by. The steps continue the
    clip's own transcript: the head's cost depends on how decisive the logits are."""
    main = engine.main
    states = engine.encode_pcm([pcm])
    text = engine.decode(states, [DecodingOptions(language="en", speculative=False)])[0].tokens
    context = torch.tensor([engine.tokens.prompt("en", "transcribe") + text])
    cache = main.new_cache(states.main)
    main.states(context, torch.tensor([0]), cache)
    position = max(1, min(10, context.shape[1] - 8))
    start = torch.tensor([position])

    def step(runner, cache, n: int) -> Callable[[], torch.Tensor]:
        tokens = context[:, position : position + n]
        return lambda: runner.greedy(tokens, start, cache, lambda logits, ids=None: logits, n)

    runs = {f"main_{n}_tokens_ms": step(main, cache, n) for n in (1, 2, 4, 5, 8)}
    layer_bytes = sum(
        lin.out_features * lin.in_features * 4
        for layer in main.layers
        for lin in (layer.self_qkv, layer.self_out, layer.cross_q, layer.cross_out, layer.fc1, layer.fc2)
    )
    head_fp32_bytes = main.vocab_size * main.d_model * 4
    # The screened head reads its int8 copy (plus a few fp32 rows); the plain head reads fp32.
    head_read_bytes = head_fp32_bytes // 4 if isinstance(main.head, ScreenedHead) else head_fp32_bytes
    cross_bytes = sum(k[:1].numel() for k in cache.cross_k) * 4 * 2
    if engine.assistant is not None:
        own = states.assistant if states.assistant is not None else states.main
        a_cache = engine.assistant.new_cache(own, cache, engine.assistant_frames(states))
        engine.assistant.states(context, torch.tensor([0]), a_cache)
        runs["draft_step_ms"] = step(engine.assistant, a_cache, 1)
    # Best of rounds, the shapes taking turns: the bandwidth a step is judged by is a best as well,
    # and a slow spell of the machine then lands on no shape alone.
    costs = dict.fromkeys(runs, math.inf)
    for _ in range(5):
        for name, run in runs.items():
            costs[name] = min(costs[name], 1000 * _timed(run))
    costs["main_fp32_weight_MB"] = (layer_bytes + head_fp32_bytes) / 1e6
    costs["main_read_weight_MB"] = (layer_bytes + head_read_bytes) / 1e6
    costs["cross_kv_MB_per_row"] = cross_bytes / 1e6
    costs["bound_fp32_ms"] = 1000 * (layer_bytes + head_fp32_bytes + cross_bytes) / (bandwidth * 1e9)
    costs["bound_read_ms"] = 1000 * (layer_bytes + head_read_bytes + cross_bytes) / (bandwidth * 1e9)
    return costs


def with_fp32_head(engine: SpeculativeWhisper) -> SpeculativeWhisper:
    """The same engine with the main decoder's plain fp32 vocabulary projection (no int8 screen)."""
    variant, main = copy.copy(engine), copy.copy(engine.main)
    main.head = FullHead(main.output_weight)
    variant.main = main
    return variant


def fp32_activation_engine(main: str | Path, assistant: str | Path) -> SpeculativeWhisper:
    """The engine as it loads on a CPU without VNNI: its assistant's int8 weights meet fp32
    activations, widened in the few-row kernel (benchmarks compare it with the default)."""
    use_int8_activations(False)
    try:
        return SpeculativeWhisper.load(main, assistant)
    finally:
        use_int8_activations(True)


def run_ours(engine: SpeculativeWhisper, chunk: list[np.ndarray], run: Run, **options) -> None:
    """Add `chunk` (at most `run.batch` clips, decoded as one batch) to `run`."""
    options = DecodingOptions(language="en", **options)
    t0 = time.perf_counter()
    mel = engine.log_mel(chunk)
    t1 = time.perf_counter()
    states = engine.encode(mel, [len(c) for c in chunk])
    synchronize()
    t2 = time.perf_counter()
    results = engine.decode(states, [options] * len(chunk))
    t3 = time.perf_counter()
    run.features_s += t1 - t0
    run.encoder_s += t2 - t1
    run.decode_s += t3 - t2
    run.total_s += t3 - t0
    for r in results:
        run.tokens.append(r.tokens)
        run.drafted += r.stats.drafted
        run.accepted += r.stats.accepted
        run.passes += r.stats.main_passes


def run_transformers(model, extractor, clip: np.ndarray, run: Run, assistant=None) -> None:
    """Add one clip through `generate()` (its assisted decoding takes batch 1 only) to `run`."""
    eos = model.generation_config.eos_token_id
    with torch.inference_mode():
        t0 = time.perf_counter()
        mel = extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
        mel = mel.to(model.device, model.dtype)
        t1 = time.perf_counter()
        encoder_s = _encoder_time(model, mel)  # generate() runs the encoder inside: timed apart
        t2 = time.perf_counter()
        kwargs = {"assistant_model": assistant} if assistant is not None else {}
        out = model.generate(mel, language="en", task="transcribe", do_sample=False, num_beams=1, **kwargs)
        t3 = time.perf_counter()
    run.features_s += t1 - t0
    run.encoder_s += encoder_s
    run.decode_s += t3 - t2 - encoder_s
    run.total_s += (t1 - t0) + (t3 - t2)
    run.tokens.append([t for t in out[0].tolist() if t < eos])


def _encoder_time(model, mel: torch.Tensor) -> float:
    synchronize()
    t0 = time.perf_counter()
    model.model.encoder(mel)
    synchronize()
    return time.perf_counter() - t0


def run_ctranslate2(model, extractor, clip: np.ndarray, run: Run) -> None:
    """Add one clip through CTranslate2's greedy decoding to `run`."""
    import ctranslate2

    prompt = [50258, 50259, 50359, 50363]  # <|startoftranscript|><|en|><|transcribe|><|notimestamps|>
    t0 = time.perf_counter()
    mel = extractor(clip, sampling_rate=16000, return_tensors="np").input_features
    t1 = time.perf_counter()
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))
    t2 = time.perf_counter()
    model.encode(features)  # generate() encodes again inside: timed apart, as for transformers
    t3 = time.perf_counter()
    result = model.generate(features, [prompt], beam_size=1, max_length=448)
    t4 = time.perf_counter()
    run.features_s += t1 - t0
    run.encoder_s += t3 - t2
    run.decode_s += (t4 - t3) - (t3 - t2)
    run.total_s += (t1 - t0) + (t4 - t3)
    run.tokens.append([t for t in result[0].sequences_ids[0] if t < 50257])


def one_by_one(add: Callable[[np.ndarray, Run], None], run: Run) -> Callable[[list[np.ndarray]], None]:
    def add_each(group: list[np.ndarray]) -> None:
        for clip in group:
            add(clip, run)

    return add_each


def in_batches(engine: SpeculativeWhisper, run: Run, **options) -> Callable[[list[np.ndarray]], None]:
    def add(group: list[np.ndarray]) -> None:
        for i in range(0, len(group), run.batch):
            run_ours(engine, group[i : i + run.batch], run, **options)

    return add


def take_turns(
    systems: list[tuple[Run, Callable[[list[np.ndarray]], None]]], pcm: list[np.ndarray], group: int
) -> None:
    """Every system decodes the same `group` clips before any goes on to the next group: a slow spell
    of the machine then lands on all of them."""
    for i in range(0, len(pcm), group):
        for _, add in systems:
            add(pcm[i : i + group])


def format_table(runs: list[Run], reference: Run) -> str:
    rows = [
        "| system | batch | total s | features s | encoder s | decoder s | decoder ms/token | acceptance "
        "| main passes | identical to transformers | speed-up vs transformers greedy |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        same = sum(a == b for a, b in zip(run.tokens, reference.tokens, strict=True))
        acceptance = f"{run.accepted / run.drafted:.1%}" if run.drafted else "-"
        rows.append(
            f"| {run.name} | {run.batch} | {run.total_s:.2f} | {run.features_s:.2f} | {run.encoder_s:.2f} "
            f"| {run.decode_s:.2f} | {1000 * run.decode_s / max(run.n_tokens, 1):.1f} | {acceptance} "
            f"| {run.passes or '-'} | {same}/{len(run.tokens)} | {reference.total_s / run.total_s:.2f}x |"
        )
    return "\n".join(rows)


def cost_table(costs: PassCosts, digits: int = 1) -> str:
    """The measured pass costs in one line: verify passes by batch x tokens, then draft steps (as the
    engine prices them: the start-up table rescaled by the passes it has run, `LiveCosts`)."""
    return (
        "Measured verify pass (ms) by batch x tokens, rows "
        + ", ".join(str(b) for b in BATCHES)
        + "; columns "
        + ", ".join(str(t) for t in TOKENS)
        + ": "
        + "; ".join(" ".join(f"{1000 * v:.{digits}f}" for v in row) for row in costs.verify)
        + "; draft step (ms) "
        + " ".join(f"{1000 * v:.{digits}f}" for v in costs.draft)
        + "; a pass's first draft step, extra (ms) "
        + " ".join(f"{1000 * costs.drafting_s(b, 1) - 1000 * costs.draft_s(b):.{digits}f}" for b in BATCHES)
        + "."
    )


def engine_arguments(description: str, clips: int) -> argparse.ArgumentParser:
    """The options every in-process engine benchmark takes: models, clips, batches, threads, record."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main", default=str(REPO / "models/whisper-base"))
    parser.add_argument("--assistant", default=str(REPO / "models/whisper-base-assistant"))
    parser.add_argument("--speech-dir", default=str(REPO.parent / "shared/data/speech"))
    parser.add_argument(
        "--clips", type=int, default=clips, help="English LibriSpeech clips, in manifest order"
    )
    parser.add_argument("--skip", type=int, default=0, help="skip the first N English clips")
    add_pack_option(parser)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", type=Path, help="append the results to this markdown file")
    return parser


def in_place_arguments(
    description: str, more: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """The options of the in-place pass benchmarks (8 held-out clips, `--rounds`, and what `more` adds),
    parsed; threads set."""
    parser = engine_arguments(description, clips=8)
    parser.set_defaults(skip=40)  # the clips the distillation held out
    parser.add_argument("--rounds", type=int, default=5)
    if more is not None:
        more(parser)
    args = parser.parse_args()
    if max(args.batch) > args.clips:
        parser.error("--clips must fill the largest --batch")
    torch.set_num_threads(args.threads)
    return args


def best_ms(run: Callable[[], object], rounds: int, warm_up: bool = True) -> float:
    """The fastest of `rounds` runs, in milliseconds (after one untimed run when `warm_up`)."""
    if warm_up:
        run()
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return best * 1e3


def filters_at(
    engine: SpeculativeWhisper, generated: int, logits: torch.Tensor, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The engine's logit filters (none reads the tokens themselves) for a pass whose first
    position follows `generated` tokens."""
    batch, count = logits.shape[:2]
    placeholder = torch.zeros(batch, generated + count, dtype=torch.long)
    return apply_filters(engine.filters, logits, Positions.teacher_forced(placeholder, generated, count), ids)


@dataclass
class InPlace:
    """Decoders primed on real clips for timing passes in place: both caches hold the prompt and
    `context` tokens of each row's greedy transcript; `following(n)` are the next n tokens a pass feeds
    at positions `start`, filtered by `mask` as decoding filters them."""

    tokens: torch.Tensor
    start: torch.Tensor
    cache: object  # the main decoder's DecoderCache
    own: object  # the assistant's
    mask: Callable
    first: int

    def following(self, n: int) -> torch.Tensor:
        return self.tokens[:, self.first : self.first + n]


def in_place(
    engine: SpeculativeWhisper,
    pcm: list[np.ndarray],
    ahead: int,
    wide_cross: bool = False,
    all_frames: bool = False,
) -> InPlace:
    """`InPlace` for these clips (one row each), with `ahead` transcript tokens to feed; `wide_cross`:
    the assistant reads fp32 cross-attention keys and values instead of its narrower copy;
    `all_frames`: over all 1,500 encoder frames instead of the audio's (`engine.assistant_frames`)."""
    batch, main, assistant = len(pcm), engine.main, engine.assistant
    states = engine.encode_pcm(pcm)
    options = [DecodingOptions(language="en", speculative=False)] * batch
    texts = [t.tokens for t in engine.decode(states, options)]
    prompt = engine.tokens.prompt("en", "transcribe")
    context = min(10, *(len(t) - ahead for t in texts))
    tokens = torch.tensor([prompt + t[: context + ahead] for t in texts])
    first, at_zero = len(prompt) + context, torch.zeros(batch, dtype=torch.long)
    cache = main.new_cache(states.main)
    main.states(tokens[:, :first], at_zero, cache)
    narrow = assistant.cross_dtype
    if wide_cross:
        assistant.cross_dtype = torch.float32
    own = assistant.new_cache(states.main, cache, None if all_frames else engine.assistant_frames(states))
    assistant.cross_dtype = narrow
    assistant.states(tokens[:, :first], at_zero, own)
    mask = partial(filters_at, engine, context)
    return InPlace(tokens, torch.full((batch,), first), cache, own, mask, first)


def english_clips(speech_dir: str | Path, skip: int, clips: int, pack: float = 0.0) -> list[np.ndarray]:
    """16 kHz samples of `clips` LibriSpeech test-other clips from the shared folder, after `skip`;
    with `pack`, joined into windows of at most `pack` seconds."""
    return [clip.pcm for clip in load_clips(Path(speech_dir), "librispeech", clips, skip=skip, pack=pack)]


def record(path: Path | None, title: str, report: str) -> None:
    """Append `report` to the markdown file `path` under a dated title, with the command that made it."""
    if path is None:
        return
    command = f"python scripts/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    with path.open("a") as f:
        f.write(f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\nCommand: `{command}`\n\n{report}\n")


def main() -> None:
    parser = engine_arguments(__doc__, clips=12)
    parser.add_argument("--no-ctranslate2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    audio_s = sum(len(p) for p in pcm) / 16000

    engine = SpeculativeWhisper.load(args.main, args.assistant)
    bandwidth = measure_bandwidth_gbs()
    costs = step_costs(engine, pcm[0], bandwidth)

    model = WhisperForConditionalGeneration.from_pretrained(args.main).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(args.main)
    assistant = WhisperForCausalLM.from_pretrained(args.assistant).eval()
    engine.costs()  # timed once per engine, before any run
    fp32_head = with_fp32_head(engine)
    systems: list[tuple[Run, Callable[[list[np.ndarray]], None]]] = []
    for name, helper in (
        ("transformers generate", None),
        ("transformers generate (assistant_model)", assistant),
    ):
        run = Run(name, 1)
        systems.append((run, one_by_one(partial(run_transformers, model, extractor, assistant=helper), run)))
    with contextlib.ExitStack() as stack:
        if not args.no_ctranslate2:
            import ctranslate2

            from spec_whisper.ct2_convert import packaged_whisper_base_ct2_dir

            ct2_dir = str(stack.enter_context(packaged_whisper_base_ct2_dir()))
            for compute_type in ("float32", "int8"):
                ct2 = ctranslate2.models.Whisper(
                    ct2_dir, device="cpu", compute_type=compute_type, intra_threads=args.threads
                )
                run = Run(f"ctranslate2 {compute_type}", 1)
                systems.append((run, one_by_one(partial(run_ctranslate2, ct2, extractor), run)))
        for batch in args.batch:
            for variant, name, options in (
                (fp32_head, "greedy, fp32 head", {"speculative": False}),
                (engine, "greedy", {"speculative": False}),
                (engine, "speculative (cost model)", {}),
                (engine, "speculative (k=5, +2/-1)", {"draft_length": 5}),
            ):
                run = Run(f"ours {name}", batch)
                systems.append((run, in_batches(variant, run, **options)))
        take_turns(systems, pcm, max(args.batch))
    runs = [run for run, _ in systems]

    lines = [
        f"Clips: {len(pcm)} LibriSpeech test-other (English), {audio_s:.0f} s of audio; whisper-base fp32; "
        f"assistant `{Path(args.assistant).name}`; {args.threads} threads; {cpu_description()}; "
        f"torch {torch.__version__}.",
        "",
        format_table(runs, runs[0]),
        "",
        "Decoder step costs at batch 1 (ms): "
        + ", ".join(f"{k} {v:.2f}" for k, v in costs.items())
        + f"; read bandwidth {bandwidth:.1f} GB/s (sum over 1 GiB, best of 5).",
        "",
        f"Bandwidth bound of a main step: fp32 weights plus one row's cross-attention keys/values over "
        f"the read bandwidth = {costs['bound_fp32_ms']:.2f} ms ({costs['bound_read_ms']:.2f} ms for the "
        f"bytes the step actually reads, {costs['main_read_weight_MB']:.0f} MB of weights); measured "
        f"1-token greedy step {costs['main_1_tokens_ms']:.2f} ms "
        f"({costs['main_1_tokens_ms'] / costs['bound_fp32_ms']:.2f}x the fp32 bound); 5 tokens cost "
        f"{costs['main_5_tokens_ms'] / costs['main_1_tokens_ms']:.2f}x one token.",
    ]
    for batch in args.batch:
        fp32, greedy, *speculative = (r for r in runs if r.batch == batch and r.name.startswith("ours"))
        lines.append(
            f"Batch {batch}, greedy: the screened head {fp32.decode_s / greedy.decode_s:.2f}x the fp32 "
            f"head's decoder speed ({fp32.decode_s:.2f} s -> {greedy.decode_s:.2f} s), "
            f"identical tokens: {fp32.tokens == greedy.tokens}."
        )
        for spec in speculative:
            lines.append(
                f"Batch {batch}, {spec.name}: decoder {greedy.decode_s / spec.decode_s:.2f}x our greedy's "
                f"speed ({greedy.decode_s:.2f} s -> {spec.decode_s:.2f} s), "
                f"identical tokens: {spec.tokens == greedy.tokens}."
            )
    lines.append(cost_table(engine.costs()))
    report = "\n".join(lines)
    print(report)
    record(args.record, "Engine", report)


if __name__ == "__main__":
    main()
