"""Long recordings under load: N at once through `whisper_long` (sequential windows that seek on
timestamps) and through the `whisper` ensemble (overlapping windows in one batch), speculative
beside plain, on the embedded server; then short clips arriving one by one while a long recording
is being transcribed.

    python scripts/bench_long_form.py                          # N = 1 2 4, two rounds, about 7 min quiet
    python scripts/bench_long_form.py --concurrency 1 --rounds 1 --arrivals 0

Each cell sends the shared 203 s recording N times at once (PCM, language given) and times the
wall clock until the last transcript is back: audio seconds per wall second is the throughput,
the wall time the latency every one of them waited. The four systems take turns cell by cell, so
drift in the machine's speed hits them alike, after one warm-up request each. Every transcript of a
model must have the same tokens, speculative or plain, or the script fails. The report states
the load average it started with and the server's peak resident memory. Triton's statistics give
the decoder's rows per batch in each cell: how often the windows of concurrent recordings joined.

Arrivals: `--arrivals` LibriSpeech clips go to `whisper_long` one every `--gap` seconds, starting one
gap after the long recording; their latency is reported beside the same clips sent alone, one at a
time, and the long recording's beside its own alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "loadtest")]

from bench_load import (  # noqa: E402
    RssSampler,
    describe_machine,
    embedded_server,
    inference_statistics,
    machine_state,
)
from clips import DEFAULT_SPEECH_DIR, Clip, load_clips  # noqa: E402
from spec_whisper_client import WhisperClient  # noqa: E402

LONG = "whisper_long"
MODELS = {LONG: "whisper_long (sequential)", "whisper": "whisper ensemble (batched)"}
SYSTEMS = [(model, speculative) for model in MODELS for speculative in (False, True)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4], help="recordings at once")
    parser.add_argument("--rounds", type=int, default=2, help="times each cell runs; the best is kept")
    parser.add_argument("--arrivals", type=int, default=8, help="short clips sent during a long recording")
    parser.add_argument("--gap", type=float, default=1.0, help="seconds between arrivals")
    parser.add_argument("--speech-dir", type=Path, default=DEFAULT_SPEECH_DIR)
    parser.add_argument("--main", type=Path, default=REPO / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=REPO / "models" / "whisper-base-assistant")
    return parser.parse_args(argv)


def concurrent_cells(
    clients: dict[str, WhisperClient], url: str, recording: Clip, args: argparse.Namespace
) -> tuple[dict[tuple[str, bool, int], float], dict[tuple[str, bool, int], float]]:
    """Best wall time per (model, speculative, N), and the decoder's requests per batch there."""
    best: dict[tuple[str, bool, int], float] = {}
    counts: dict[tuple[str, bool, int], list[int]] = {}
    tokens: dict[str, set[tuple[int, ...]]] = {model: set() for model in MODELS}
    for n in args.concurrency:
        for _ in range(args.rounds):
            for model, speculative in SYSTEMS:
                before = inference_statistics(url)["whisper_decoder"]
                began = time.perf_counter()
                results = clients[model].transcribe_many(
                    [(recording.pcm, 16000)] * n, concurrency=n, language="en", speculative=speculative
                )
                wall = time.perf_counter() - began
                decoder = inference_statistics(url)["whisper_decoder"].minus(before)
                for r in results:
                    if isinstance(r, Exception):
                        raise SystemExit(f"{model} failed: {r}")
                    tokens[model].add(tuple(r.tokens))
                key = (model, speculative, n)
                best[key] = min(best.get(key, np.inf), wall)
                total = counts.setdefault(key, [0, 0])
                total[0] += decoder.requests
                total[1] += decoder.executions
                print(f"  N={n} {model} speculative={speculative}: {wall:.1f} s", file=sys.stderr)
    for model, seen in tokens.items():
        if len(seen) != 1:
            raise SystemExit(f"{model}: {len(seen)} different token sequences for one recording")
    return best, {key: requests / max(executions, 1) for key, (requests, executions) in counts.items()}


def timed(client: WhisperClient, clip: Clip, speculative: bool) -> tuple[float, tuple[int, ...]]:
    began = time.perf_counter()
    result = client.transcribe((clip.pcm, 16000), language="en", speculative=speculative)
    return time.perf_counter() - began, tuple(result.tokens)


def arrivals(
    client: WhisperClient, recording: Clip, shorts: list[Clip], gap_s: float, speculative: bool
) -> dict[str, float]:
    """The short clips alone, then the long recording with the clips arriving every `gap_s`."""
    alone = [timed(client, clip, speculative) for clip in shorts]
    long_alone, long_tokens = timed(client, recording, speculative)
    with ThreadPoolExecutor(1 + len(shorts)) as pool:
        long_run = pool.submit(timed, client, recording, speculative)
        during = []
        for clip in shorts:
            time.sleep(gap_s)
            during.append(pool.submit(timed, client, clip, speculative))
        during_results = [f.result() for f in during]
        long_during, long_tokens_during = long_run.result()
    if long_tokens_during != long_tokens or [t for _, t in during_results] != [t for _, t in alone]:
        raise SystemExit("whisper_long: tokens changed when requests overlapped")
    alone_s = [s for s, _ in alone]
    during_s = [s for s, _ in during_results]
    return {
        "long_alone": long_alone,
        "long_during": long_during,
        "short_alone_p50": float(np.median(alone_s)),
        "short_during_p50": float(np.median(during_s)),
        "short_during_max": max(during_s),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_long_form.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    machine = describe_machine(machine_state())
    print(machine, file=sys.stderr)
    recording = load_clips(args.speech_dir, "longform")[0]
    shorts = load_clips(args.speech_dir, "librispeech", limit=args.arrivals) if args.arrivals else []
    overlapping: dict[bool, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="spec_whisper_long_") as scratch:
        server = embedded_server(args.main, args.assistant, "fp32", Path(scratch) / "tritonserver.log")
        with server as running, RssSampler(running.process.pid) as rss:
            clients = {m: WhisperClient(running.grpc_url, model=m, retries=0, timeout_s=900) for m in MODELS}
            for model, speculative in SYSTEMS:  # warm-up
                clients[model].transcribe((recording.pcm, 16000), language="en", speculative=speculative)
            best, per_batch = concurrent_cells(clients, running.grpc_url, recording, args)
            for speculative in (False, True) if shorts else ():
                overlapping[speculative] = arrivals(clients[LONG], recording, shorts, args.gap, speculative)
                print(f"  arrivals speculative={speculative}: {overlapping[speculative]}", file=sys.stderr)
            for client in clients.values():
                client.close()

    table = [
        "| N at once | model | plain s | speculative s | speculative / plain "
        "| audio s per wall s (speculative) | decoder requests per batch (plain, speculative) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in args.concurrency:
        for model, name in MODELS.items():
            plain, spec = best[(model, False, n)], best[(model, True, n)]
            rate = n * recording.seconds / spec
            batches = f"{per_batch[(model, False, n)]:.2f}, {per_batch[(model, True, n)]:.2f}"
            table.append(
                f"| {n} | {name} | {plain:.1f} | {spec:.1f} | {plain / spec:.2f}x | {rate:.1f} | {batches} |"
            )
    lines = [
        f"\n## Long recordings under load ({time.strftime('%Y-%m-%d')})\n",
        f"Command: `{command}`\n",
        f"Machine: {machine}\n",
        f"The {recording.seconds:.0f} s recording N times at once; best of {args.rounds} rounds; "
        f"server peak RSS {rss.peak_bytes / 2**30:.2f} GiB; tokens identical within each model. "
        "A `whisper_long` request to the decoder is one window; an ensemble request is all of a "
        "recording's windows.\n",
        *table,
    ]
    if overlapping:
        lines += [
            f"\n{len(shorts)} LibriSpeech clips ({sum(c.seconds for c in shorts):.0f} s in all) sent to "
            f"`whisper_long` one every {args.gap:g} s while it transcribes the long recording; tokens "
            "identical to each sent alone:\n",
            "| mode | long alone s | long with the clips s | clip p50 alone s | clip p50 during s "
            "| clip max during s |",
            "|---|---|---|---|---|---|",
        ]
        for speculative, r in overlapping.items():
            lines.append(
                f"| {'speculative' if speculative else 'plain'} | {r['long_alone']:.1f} | "
                f"{r['long_during']:.1f} | {r['short_alone_p50']:.2f} | {r['short_during_p50']:.2f} | "
                f"{r['short_during_max']:.2f} |"
            )
    print("\n".join([*lines, ""]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
