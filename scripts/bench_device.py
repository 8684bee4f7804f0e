"""Speculative against plain decoding by batch size on one device (a GPU in production), beside
transformers' `generate()` on the same device, precision and clips.

Eagerly on a GPU (measured on an H200) a whisper-base decoder step is bound by launching kernels, not
by reading weights or by arithmetic: verifying k drafts costs about one step up to batch 16, and the
assistant's 2-layer step about half a main step. The cost model is measured on the device itself.

    python scripts/bench_device.py --device cuda --precision fp32 fp16 --skip 40 --clips 32 \\
        --batch 1 2 4 8 16 --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import torch
from transformers import WhisperFeatureExtractor, WhisperForCausalLM, WhisperForConditionalGeneration

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_engine import (  # noqa: E402  (scripts/, beside this file)
    Run,
    cost_table,
    engine_arguments,
    english_clips,
    in_batches,
    one_by_one,
    record,
    run_ours,
    run_transformers,
    take_turns,
)

from spec_whisper.engine import SpeculativeWhisper  # noqa: E402
from spec_whisper.loading import PRECISIONS  # noqa: E402

SPECULATIVE = {"speculative (cost model)": {}, "speculative (k=5, +2/-1)": {"draft_length": 5}}


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


def bench_precision(args, precision: str, pcm: list) -> tuple[str, dict]:
    engine = SpeculativeWhisper.load(
        args.main, args.assistant, precision=precision, device=args.device, cuda_graphs=args.cuda_graphs
    )
    costs = engine.costs()  # measured on this device, before any run
    run_ours(engine, pcm[:2], Run("warm-up", 2))  # CUDA graphs are recorded on first use

    dtype = PRECISIONS[precision]
    model = WhisperForConditionalGeneration.from_pretrained(args.main, dtype=dtype).to(args.device).eval()
    assistant = WhisperForCausalLM.from_pretrained(args.assistant, dtype=dtype).to(args.device).eval()
    extractor = WhisperFeatureExtractor.from_pretrained(args.main)
    run_transformers(model, extractor, pcm[0], Run("warm-up", 1))
    reference, assisted = Run("transformers generate", 1), Run("transformers generate (assistant_model)", 1)
    systems = [
        (reference, one_by_one(partial(run_transformers, model, extractor), reference)),
        (assisted, one_by_one(partial(run_transformers, model, extractor, assistant=assistant), assisted)),
    ]
    for batch in args.batch:
        for name, options in {"greedy": {"speculative": False}, **SPECULATIVE}.items():
            run = Run(f"ours {name}", batch)
            systems.append((run, in_batches(engine, run, **options)))
    take_turns(systems, pcm, max(args.batch))
    runs = [run for run, _ in systems[2:]]

    rows = [
        "| system | batch | total s | encoder s | decoder s | decoder ms/token | acceptance | main passes "
        "| identical to our greedy | identical to transformers greedy | decoder speed-up vs our greedy "
        "| total speed-up vs transformers greedy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for run in [reference, assisted, *runs]:
        greedy = next((r for r in runs if r.batch == run.batch and r.name == "ours greedy"), runs[0])
        ours = run.name.startswith("ours")
        same_greedy = sum(a == b for a, b in zip(run.tokens, greedy.tokens, strict=True))
        same_reference = sum(a == b for a, b in zip(run.tokens, reference.tokens, strict=True))
        acceptance = run.accepted / run.drafted if run.drafted else None
        speed_up = greedy.decode_s / run.decode_s if ours else None
        rows.append(
            f"| {run.name} | {run.batch} | {run.total_s:.2f} | {run.encoder_s:.2f} | {run.decode_s:.2f} "
            f"| {1000 * run.decode_s / max(run.n_tokens, 1):.2f} "
            f"| {'-' if acceptance is None else f'{acceptance:.1%}'} | {run.passes or '-'} "
            f"| {f'{same_greedy}/{len(pcm)}' if ours else '-'} | {same_reference}/{len(pcm)} "
            f"| {'-' if speed_up is None else f'{speed_up:.2f}x'} | {reference.total_s / run.total_s:.2f}x |"
        )
        results.append(
            {
                "system": run.name,
                "batch": run.batch,
                "total_s": run.total_s,
                "decode_s": run.decode_s,
                "tokens": run.n_tokens,
                "acceptance": acceptance,
                "identical_to_our_greedy": same_greedy if ours else None,
                "identical_to_transformers": same_reference,
                "decoder_speed_up": speed_up,
            }
        )
    report = f"**{precision}**\n\n" + "\n".join(rows) + "\n\n" + cost_table(costs, digits=2)
    return report, {
        "precision": precision,
        "runs": results,
        "verify_s": costs.verify.tolist(),
        "draft_s": costs.draft.tolist(),
    }


def main() -> None:
    parser = engine_arguments(__doc__, clips=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", nargs="+", default=["fp16"], choices=sorted(PRECISIONS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--cuda-graphs",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replay decoder passes from CUDA graphs (on a CUDA device)",
    )
    args = parser.parse_args()
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    audio_s = sum(len(p) for p in pcm) / 16000
    began = time.perf_counter()
    reports, data = [], []
    for precision in args.precision:
        report, result = bench_precision(args, precision, pcm)
        print(report, flush=True)
        reports.append(report)
        data.append(result)
    header = (
        f"Device: {device_name(args.device)}; torch {torch.__version__}. Clips: {len(pcm)} LibriSpeech "
        f"test-other (English) after the first {args.skip}, {audio_s:.0f} s of audio; main "
        f"`{Path(args.main).name}`, assistant `{Path(args.assistant).name}`; CUDA graphs "
        f"{'on' if args.cuda_graphs else 'off'}. Decoder seconds are the "
        f"decoding stage (after the encoder), summed over the batches; transformers runs batch 1 "
        f"(its assisted generation takes no more). Benchmark wall time {time.perf_counter() - began:.0f} s."
    )
    print(header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": data}, indent=1))
    record(args.record, f"Device: {device_name(args.device)}", header + "\n\n" + "\n\n".join(reports))


if __name__ == "__main__":
    main()
