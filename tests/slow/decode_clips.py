"""Decode real clips greedy and speculative in this interpreter, as its environment builds the CPU
kernels; print what ran and the tokens as JSON (`test_portable_kernels.py` runs it in a fresh process
per build, since a process builds its kernels once).

    python tests/slow/decode_clips.py MAIN_DIR ASSISTANT_DIR CLIP.flac ...
"""

from __future__ import annotations

import json
import sys

import torch

from spec_whisper.audio import decode_audio
from spec_whisper.cpu_kernels import kernels
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.types import DecodingOptions

# name: options, batch. Batch 4 lets rows accept different numbers of drafts and finish apart.
RUNS = {
    "greedy, batch 1": (DecodingOptions(speculative=False), 1),
    "greedy, batch 4": (DecodingOptions(speculative=False), 4),
    "5 drafts, batch 1": (DecodingOptions(draft_length=5), 1),
    "5 drafts, batch 4": (DecodingOptions(draft_length=5), 4),
    "cost model, batch 4": (DecodingOptions(), 4),
}


def main() -> None:
    main_dir, assistant_dir, *paths = sys.argv[1:]
    torch.set_num_threads(2)
    engine = SpeculativeWhisper.load(main_dir, assistant_dir)
    pcm = [decode_audio(path) for path in paths]
    kernel = kernels()
    report = {
        "kernels": kernel is not None,
        "few_rows_products": kernel is not None and kernel.few_rows_linear_supported(),
        "encoder_kernel": kernel is not None and kernel.encoder_attention_supported(),
        "tokens": {},
        "drafted": {},
    }
    # Decoding leaves the encoder states as they were: encode each batch size's chunks once.
    encoded = {
        batch: [engine.encode_pcm(pcm[i : i + batch]) for i in range(0, len(pcm), batch)]
        for batch in {batch for _, batch in RUNS.values()}
    }
    for name, (options, batch) in RUNS.items():
        tokens, drafted = [], 0
        for states in encoded[batch]:
            for result in engine.decode(states, [options] * states.main.shape[0]):
                tokens.append(result.tokens)
                drafted += result.stats.drafted
        report["tokens"][name] = tokens
        report["drafted"][name] = drafted
    print(json.dumps(report))


if __name__ == "__main__":
    main()
