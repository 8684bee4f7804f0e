"""Batch-1 speculative decoding after a busy spell: `bench_assistant.py` with other processes on the cores.

    python scripts/bench_busy_spell.py                              # this checkout, a 20 s spell
    python scripts/bench_busy_spell.py --code /tmp/old --seconds 0  # another checkout, no spell

Runs `scripts/bench_assistant.py --groups en` from the checkout `--code` (its own `spec_whisper`,
with this interpreter) and, once it has labelled its held-out clips, starts `--busy` processes that
spin for `--seconds`. The engine times its pass costs right after (about 14 s on a quiet machine
here), so the spell lands on that timing and on the first decodes, as another job starting on a
shared machine would. A table timed in such a spell had the engine hardly drafting for the rest of
the run (docs/benchmarks.md). Prints the benchmark's output with the seconds since the start, then
the speed-up and the drafts per verify pass in one line. Alternate checkouts run after run: these
cores are shared and their speed drifts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRIGGER = "labelling (held out)"  # printed before the engine times its pass costs
SPIN = "while :; do :; done"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose engine is measured")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the spell (0: none)")
    parser.add_argument("--busy", type=int, default=2, help="spinning processes (one per core here)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    command = [sys.executable, "-u", "scripts/bench_assistant.py", "--groups", "en", "--threads", "2"]
    command += ["--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(args.code)}
    began = time.monotonic()
    spinning: list[subprocess.Popen] = []
    summary = []
    with subprocess.Popen(
        command, cwd=args.code, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as bench:
        assert bench.stdout is not None
        for line in bench.stdout:
            print(f"{time.monotonic() - began:6.1f} {line}", end="", flush=True)
            if TRIGGER in line and args.seconds > 0 and not spinning:
                print(
                    f"{time.monotonic() - began:6.1f} busy spell: {args.busy} x {args.seconds:g} s",
                    flush=True,
                )
                spin = ["timeout", f"{args.seconds:g}", "sh", "-c", SPIN]
                spinning = [subprocess.Popen(spin) for _ in range(args.busy)]
            if line.startswith(("decoding at batch 1", "engine acceptance")):
                summary.append(line.strip())
    for process in spinning:
        process.wait()
    print(f"\n{args.code} (spell {args.seconds:g} s): " + " | ".join(summary))
    return bench.returncode


if __name__ == "__main__":
    sys.exit(main())
