"""What speculative decoding should gain for a Whisper size on this device, from measured pass costs.

Builds the main and assistant decoders of a size from its configuration with random weights (a
pass takes as long whatever the weights hold), times them as the engine's cost model does
(`DecoderCosts.measure`), and prints, per batch size and per acceptance rate, the draft length the
cost model would choose and the decoding speed-up it expects over plain greedy decoding (drafts
accepted independently with that probability). A projection, not a measurement of decoding:
`bench_device.py` measures real decoding for the sizes whose weights are at hand.

    python scripts/project_costs.py --size large-v2 --device cuda --precision fp16
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperDecoder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spec_whisper.cost_model import BATCHES, DecoderCosts, expected_tokens
from spec_whisper.decoder import WhisperDecoderRunner
from spec_whisper.drafters import MAX_DRAFT
from spec_whisper.loading import PRECISIONS

# (d_model, heads, ffn, main decoder layers, assistant decoder layers): openai/whisper-* and the
# distil-whisper assistant of the same width (2 decoder layers).
SIZES = {
    "base": (512, 8, 2048, 6, 2),
    "small": (768, 12, 3072, 12, 2),
    "medium": (1024, 16, 4096, 24, 2),
    "large-v2": (1280, 20, 5120, 32, 2),
}
ACCEPTANCE = (0.6, 0.7, 0.8, 0.9)


def random_decoder(
    size: str, layers: int, dtype: torch.dtype, device: str, cuda_graphs: bool
) -> WhisperDecoderRunner:
    d_model, heads, ffn, _, _ = SIZES[size]
    config = WhisperConfig(
        vocab_size=51865,
        d_model=d_model,
        decoder_layers=layers,
        decoder_attention_heads=heads,
        decoder_ffn_dim=ffn,
        max_target_positions=448,
    )
    with torch.device(device):
        decoder = WhisperDecoder(config).to(dtype).eval()
    return WhisperDecoderRunner(decoder, decoder.embed_tokens.weight, cuda_graphs=cuda_graphs)


def expected_speed_up(costs: DecoderCosts, batch: int, acceptance: float) -> tuple[int, float]:
    """The draft length with the most expected tokens per second, and its gain over k = 0."""
    tokens = np.array(expected_tokens([acceptance] * batch, MAX_DRAFT))
    rate = tokens / costs.pass_s(batch, MAX_DRAFT)
    best = int(rate.argmax())
    return best, float(rate[best] / rate[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", nargs="+", default=["base", "large-v2"], choices=sorted(SIZES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp16" if torch.cuda.is_available() else "fp32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    print(f"Device: {where}; {args.precision}; torch {torch.__version__}.")
    modes = {"eager": False, "CUDA graphs": True} if args.device.startswith("cuda") else {"eager": False}
    for size in args.size:
        for mode, cuda_graphs in modes.items():
            project(size, mode, cuda_graphs, args)


def project(size: str, mode: str, cuda_graphs: bool, args: argparse.Namespace) -> None:
    dtype = PRECISIONS[args.precision]
    main_layers, assistant_layers = SIZES[size][3:]
    main = random_decoder(size, main_layers, dtype, args.device, cuda_graphs)
    assistant = random_decoder(size, assistant_layers, dtype, args.device, cuda_graphs)
    with torch.inference_mode():
        costs = DecoderCosts.measure(main, assistant, frames=1500)
    print(f"\n**{size}, {mode}**: {main_layers}-layer main decoder, {assistant_layers}-layer assistant\n")
    print(
        "| batch | main step ms | verify 5 tokens / 1 token | draft step / main step | "
        + " | ".join(f"k, speed-up at {a:.0%}" for a in ACCEPTANCE)
        + " |"
    )
    print("|---" * (4 + len(ACCEPTANCE)) + "|")
    for i, batch in enumerate(BATCHES):
        step = costs.verify_s(batch, 1)
        cells = [expected_speed_up(costs, batch, a) for a in ACCEPTANCE]
        print(
            f"| {batch} | {1000 * step:.2f} | {costs.verify_s(batch, 5) / step:.2f} "
            f"| {costs.draft[i] / step:.2f} | " + " | ".join(f"{k}, {gain:.2f}x" for k, gain in cells) + " |",
            flush=True,
        )
    del main, assistant
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
