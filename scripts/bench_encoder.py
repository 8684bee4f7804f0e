"""Our encoder against transformers' on the same weights: seconds per 30 s window.

    python scripts/bench_encoder.py --threads 2      # --batch 1 8 on --clips 8 from --skip 40

Four ways over the same log-mel windows, taking turns round by round (best of the rounds):
transformers' `WhisperEncoder`; ours with PyTorch's attention (the linear layers on the product this
machine measured faster, `linear.many_rows_linear`); ours with the CPU attention kernel
(`csrc/encoder_attention.cpp`); and the same with the other product (oneDNN's prepacked or PyTorch's
default, MKL). Also the largest difference of our states from transformers', against the states' scale.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_cross_attention import best_ms  # scripts/, beside this file
from bench_engine import engine_arguments, english_clips, record

from spec_whisper import cpu_kernels
from spec_whisper.encoder import WhisperEncoderRunner
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.linear import prepacking_pays_for_many_rows
from spec_whisper.loading import load_models


def run_ours(engine: SpeculativeWhisper, mel: torch.Tensor, kernel: bool) -> torch.Tensor:
    cpu_kernels.use_kernels(kernel)
    try:
        return engine.encode(mel).main
    finally:
        cpu_kernels.use_kernels(True)


def main() -> None:
    parser = engine_arguments(__doc__, clips=8)
    parser.set_defaults(skip=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if max(args.batch) > args.clips:
        parser.error("--clips must fill the largest --batch")
    torch.set_num_threads(args.threads)
    engine = SpeculativeWhisper.load(args.main, stages={"encoder"})
    theirs = load_models(args.main).main.model.encoder  # a copy of its own: the engine repacks its weights
    mel = engine.log_mel(english_clips(args.speech_dir, args.skip, args.clips, args.pack))
    prepacked = prepacking_pays_for_many_rows()
    other = WhisperEncoderRunner(load_models(args.main).main.model.encoder, prepack=not prepacked)
    ways = {
        "transformers": lambda m: theirs(m).last_hidden_state,
        "ours, PyTorch attention": partial(run_ours, engine, kernel=False),
        "ours, attention kernel": partial(run_ours, engine, kernel=True),
        f"ours, kernel, {'MKL' if prepacked else 'oneDNN'} products": other,
    }
    lines = [
        f"threads {args.threads}, best of {args.rounds} rounds, seconds per window; ours chose "
        f"{'oneDNN' if prepacked else 'MKL'} products",
        "",
        "| batch | " + " | ".join(ways) + " | transformers / ours (kernel) | max abs difference (scale) |",
        "|---|" + "---|" * (len(ways) + 2),
    ]
    with torch.inference_mode():
        for batch in args.batch:
            windows = mel[:batch]
            best = {name: float("inf") for name in ways}
            for _ in range(args.rounds):
                for name, way in ways.items():
                    best[name] = min(best[name], best_ms(partial(way, windows), 1) / 1e3 / batch)
            expected = ways["transformers"](windows)
            difference = (ways["ours, attention kernel"](windows) - expected).abs().max().item()
            cells = " | ".join(f"{best[name]:.3f}" for name in ways)
            ratio = best["transformers"] / best["ours, attention kernel"]
            lines.append(
                f"| {batch} | {cells} | {ratio:.2f}x | {difference:.1e} ({expected.abs().max().item():.0f}) |"
            )
    report = "\n".join(lines)
    print(report)
    record(args.record, "Encoder", report)


if __name__ == "__main__":
    main()
