"""Long recordings under load: N at once through `whisper_long` (sequential windows that seek on
timestamps) and through the `whisper` ensemble (overlapping windows in one batch), speculative
beside plain, on the embedded server.

    python scripts/bench_long_form.py                          # N = 1 2 4, two rounds, about 6 min quiet
    python scripts/bench_long_form.py --concurrency 1 --rounds 1

Each cell sends the shared 203 s recording N times at once (PCM, language given) and times the
wall clock until the last transcript is back: audio seconds per wall second is the throughput,
the wall time the latency every one of them waited. The four systems take turns cell by cell, so
drift in the machine's speed hits them alike, after one warm-up request each. Every transcript of a
model must have the same tokens, speculative or plain, or the script fails. The report states
the load average it started with and the server's peak resident memory.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "loadtest")]

from bench_load import RssSampler, describe_machine, embedded_server, machine_state  # noqa: E402
from clips import DEFAULT_SPEECH_DIR, load_clips  # noqa: E402
from spec_whisper_client import WhisperClient  # noqa: E402

MODELS = {"whisper_long": "whisper_long (sequential)", "whisper": "whisper ensemble (batched)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="recordings at once")
    parser.add_argument("--rounds", type=int, default=2, help="times each cell runs; the best is kept")
    parser.add_argument("--speech-dir", type=Path, default=DEFAULT_SPEECH_DIR)
    parser.add_argument("--main", type=Path, default=REPO / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=REPO / "models" / "whisper-base-assistant")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_long_form.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    machine = describe_machine(machine_state())
    print(machine, file=sys.stderr)
    recording = load_clips(args.speech_dir, "longform")[0]
    systems = [(model, speculative) for model in MODELS for speculative in (False, True)]
    best: dict[tuple[str, bool, int], float] = {}
    tokens: dict[str, set[tuple[int, ...]]] = {model: set() for model in MODELS}
    with tempfile.TemporaryDirectory(prefix="spec_whisper_long_") as scratch:
        server = embedded_server(args.main, args.assistant, "fp32", Path(scratch) / "tritonserver.log")
        with server as running, RssSampler(running.process.pid) as rss:
            clients = {m: WhisperClient(running.grpc_url, model=m, retries=0, timeout_s=900) for m in MODELS}
            for model, speculative in systems:  # warm-up
                clients[model].transcribe((recording.pcm, 16000), language="en", speculative=speculative)
            for n in args.concurrency:
                for _ in range(args.rounds):
                    for model, speculative in systems:
                        began = time.perf_counter()
                        results = clients[model].transcribe_many(
                            [(recording.pcm, 16000)] * n,
                            concurrency=n,
                            language="en",
                            speculative=speculative,
                        )
                        wall = time.perf_counter() - began
                        for r in results:
                            if isinstance(r, Exception):
                                raise SystemExit(f"{model} failed: {r}")
                            tokens[model].add(tuple(r.tokens))
                        key = (model, speculative, n)
                        best[key] = min(best.get(key, np.inf), wall)
                        print(f"  N={n} {model} speculative={speculative}: {wall:.1f} s", file=sys.stderr)
            for client in clients.values():
                client.close()
    for model, seen in tokens.items():
        if len(seen) != 1:
            raise SystemExit(f"{model}: {len(seen)} different token sequences for one recording")

    table = [
        "| N at once | model | plain s | speculative s | speculative / plain "
        "| audio s per wall s (speculative) |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.concurrency:
        for model, name in MODELS.items():
            plain, spec = best[(model, False, n)], best[(model, True, n)]
            rate = n * recording.seconds / spec
            table.append(f"| {n} | {name} | {plain:.1f} | {spec:.1f} | {plain / spec:.2f}x | {rate:.1f} |")
    print(
        "\n".join(
            [
                f"\n## Long recordings under load ({time.strftime('%Y-%m-%d')})\n",
                f"Command: `{command}`\n",
                f"Machine: {machine}\n",
                f"The {recording.seconds:.0f} s recording N times at once; best of {args.rounds} rounds; "
                f"server peak RSS {rss.peak_bytes / 2**30:.2f} GiB; tokens identical within each model.\n",
                *table,
                "",
            ]
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
