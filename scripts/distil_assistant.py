"""Distil a decoder-only assistant from a main Whisper model (see spec_whisper/distillation/).

    python scripts/distil_assistant.py                               # whisper-base -> whisper-base-assistant
    python scripts/distil_assistant.py --quick --out /tmp/assistant     # a couple of minutes, for CI
    python scripts/distil_assistant.py --main models/my-whisper --out models/my-assistant --steps 800

Rerunning continues an interrupted run (labels are cached under models/.distil-cache, training
checkpoints every --checkpoint-every steps) and does nothing when the output directory already
holds an assistant made with the same settings. The output replaces the directory only once complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from spec_whisper.distillation import SETTINGS_FILE, DistilConfig, default_threads, distil  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--main", type=Path, default=PROJECT_ROOT / "models" / "whisper-base")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "models" / "whisper-base-assistant")
    parser.add_argument("--speech-dir", type=Path, default=None, help="shared speech clips (manifest.jsonl)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="labelled-data cache")
    parser.add_argument("--quick", action="store_true", help="a few windows and steps (CI)")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ffn-dim", type=int, help="feed-forward width (default: fit --max-added)")
    parser.add_argument("--max-added", type=float, help="assistant parameters / main parameters")
    parser.add_argument(
        "--hidden-weight", type=float, help="weight of the distance to the main decoder's hidden states"
    )
    parser.add_argument("--shortlist", type=int, help="output-head tokens kept for drafting")
    parser.add_argument("--train-vocab", type=int, help="output-head tokens trained over")
    parser.add_argument("--max-train-minutes", type=float)
    parser.add_argument("--layers", type=int, nargs="+", help="main decoder layers to copy (default 0 -1)")
    parser.add_argument(
        "--synthetic",
        nargs="+",
        metavar="LANG=WINDOWS",
        help="synthetic 30 s windows per language, replacing the default (e.g. en=300 de=16)",
    )
    parser.add_argument(
        "--speeds",
        type=float,
        nargs="*",
        help="speeds the real training clips are also packed at (default 0.9 1.1; none: only as recorded)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: 2, or 1 while other work keeps the CPU busy)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> DistilConfig:
    overrides = {
        name: getattr(args, name)
        for name in (
            "steps",
            "batch_size",
            "lr",
            "seed",
            "ffn_dim",
            "max_added",
            "hidden_weight",
            "shortlist",
            "train_vocab",
        )
        if getattr(args, name) is not None
    }
    if args.max_train_minutes is not None:
        overrides["max_train_s"] = 60 * args.max_train_minutes
    if args.layers:
        overrides["layers"] = tuple(args.layers)
    if args.speeds is not None:
        overrides["speeds"] = tuple(args.speeds)
    if args.synthetic:
        overrides["synthetic"] = tuple(_language_count(item) for item in args.synthetic)
    return DistilConfig.quick(**overrides) if args.quick else DistilConfig(**overrides)


def _language_count(item: str) -> tuple[str, int]:
    language, _, count = item.partition("=")
    if not language or not count.isdigit():
        raise SystemExit(f"--synthetic takes LANG=WINDOWS items, got {item!r}")
    return language, int(count)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or default_threads())
    config = config_from(args)
    print(json.dumps(dataclasses.asdict(config)))
    began = time.perf_counter()
    out = distil(args.main, args.out, config, args.speech_dir, cache_dir=args.cache_dir, force=args.force)
    summary = json.loads((out / SETTINGS_FILE).read_text())
    print(f"assistant in {out} ({time.perf_counter() - began:.0f} s this run)")
    print(json.dumps({k: summary[k] for k in ("acceptance", "labelling_s", "total_s")}, indent=1))
    print(f"training: {summary['training']['step']} steps, {summary['training']['train_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
