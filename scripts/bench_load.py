"""Load-test matrix on the embedded Triton server: latency and throughput against batch size.

    python scripts/bench_load.py --record docs/benchmarks.md          # the full matrix, about 35 min
    python scripts/bench_load.py --sizes 1 2 --cell-seconds 10 --out-dir /tmp/load   # a quick look

Every cell is one headless Locust run of loadtest/locustfile.py (a subprocess under `timeout`):
a batch size N in --sizes, reached two ways, with SPECULATIVE on and off, on the same server:

- `users`: N concurrent users, one clip per request; Triton's dynamic batcher forms the batches.
- `batch`: one user sending N clips at once. The server takes one clip per request (docs/api.md),
  so this is a client-side batch: N concurrent single-clip calls over one channel, one Locust
  request whose latency lasts until the last of the N answers.

`--stage decoder` runs the same matrix against the `whisper_decoder` step alone: each clip's encoder
states (and the features step's window layout and options) are computed once through the server
before the first cell, and every request sends them straight to the decoder, so it is the bottleneck
and its clips per second are its capacity (loadtest/decoder_stage.py says why the ensemble cannot
show that on a CPU).

`--model whisper_long` sends the same requests to `whisper_long`, which decodes each in sequential
windows that seek on timestamps, every recording in flight one window per round.

`--pack SECONDS` joins consecutive clips, half a second of silence apart, into windows of at most
that length: windows full of speech, as a long recording's, where a short clip's fixed costs per
window weigh less.

Locust lets in-flight requests finish (--stop-timeout) so no work spills into the next cell.
Written to --out-dir: load.csv (latency percentiles, requests/s, clips/s, audio seconds per wall
second, errors, peak server RSS per cell), stages.csv (per-model queue and compute time from
Triton's statistics API, the difference before/after each cell), load.png, the raw per-request
records and the Locust logs. --record appends a markdown section to docs/benchmarks.md.

Timings mean something only on a quiet machine; the report states the load average it started with.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path[:0] = [str(SCRIPTS), str(REPO / "loadtest")]

from clips import CORPORA, DEFAULT_SPEECH_DIR, add_pack_option, load_clips  # noqa: E402
from decoder_stage import (  # noqa: E402
    DecoderStageClient,
    SharedDecoderInputs,
    compute_decoder_inputs,
    load_decoder_inputs,
)
from machine import cpu_description  # noqa: E402
from prepare_models import write_repository  # noqa: E402
from serve import TritonServer  # noqa: E402
from spec_whisper_client import WhisperClient  # noqa: E402

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
MODELS = ("whisper", "whisper_features", "whisper_encoder", "whisper_decoder")
WAYS = {"users": "ClipUser", "batch": "ClipBatchUser"}
# --model: the plot's title, and the note in the report's heading.
TARGETS = {
    "whisper": ("whisper ensemble", ""),
    "whisper_long": ("whisper_long (sequential windows)", ", `whisper_long`"),
}


# --- the server ----------------------------------------------------------------------------------


@contextmanager
def embedded_server(
    main: Path, assistant: Path, precision: str, log_file: Path, cpu_turns: str = "auto"
) -> Iterator[TritonServer]:
    """A tritonserver on free ports serving a copy of model_repository/ pointed at these models.

    A copy, as the test fixtures do, so the checkout's configuration is neither used nor changed.
    """
    for path in (main, assistant):
        if not (path / "config.json").is_file():
            raise SystemExit(f"no model at {path}: run scripts/prepare_models.py --offline first")
    with tempfile.TemporaryDirectory(prefix="spec_whisper_bench_") as tmp:
        repository = Path(tmp) / "model_repository"
        shutil.copytree(REPO / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__"))
        models = (main.resolve(), assistant.resolve())
        write_repository(repository, *models, precision, max_audio_seconds=600, cpu_turns=cpu_turns)
        server = TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file)
        with server:
            yield server


class RssSampler:
    """Peak resident memory of a process tree (tritonserver and its backend stubs), sampled."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current_bytes(self) -> int:
        total = 0
        for proc in (self.root, *self.root.children(recursive=True)):
            # A stub may exit between listing and reading.
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, self.current_bytes())

    def __enter__(self) -> RssSampler:
        self.peak_bytes = self.current_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.current_bytes())


def machine_state() -> dict[str, Any]:
    """The 1-minute load average and other python/tritonserver processes (not ours, nor the ones that
    launched us, such as `timeout`): is it quiet? And where the models run (`where_it_runs`)."""
    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True)), *(p.pid for p in me.parents())}
    others = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] not in ours and ("python" in cmd or "tritonserver" in cmd):
            others.append(f"{proc.info['pid']} {cmd[:100]}")
    load1 = os.getloadavg()[0]
    return {"load1": load1, "others": others, "quiet": load1 < 1.0 and not others, "where": where_it_runs()}


def gpu_names() -> list[str]:
    """The NVIDIA GPUs the server's KIND_AUTO instances land on (none: they run on the CPU)."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    return [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []


def where_it_runs() -> str:
    gpus = gpu_names()
    return f"GPU ({', '.join(gpus)})" if gpus else "CPU"


def describe_machine(state: dict[str, Any]) -> str:
    verdict = (
        "quiet"
        if state["quiet"]
        else f"NOT quiet ({len(state['others'])} other python/tritonserver processes): timings unreliable"
    )
    return (
        f"{cpu_description()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"models on the {state['where']}; "
        f"1-min load average {state['load1']:.2f} at the start, {verdict}."
    )


# --- Triton statistics ---------------------------------------------------------------------------


@dataclass
class StageStats:
    requests: int = 0  # inference_count: requests the model ran
    executions: int = 0  # execution_count: batches it ran
    failures: int = 0
    queue_ns: int = 0
    compute_ns: int = 0  # input + infer + output, summed over requests
    batch_compute_ns: int = 0  # the same summed over executions (from batch_stats)
    batches: dict[int, int] = field(default_factory=dict)  # batch size -> executions

    def minus(self, before: StageStats) -> StageStats:
        sizes = set(self.batches) | set(before.batches)
        return StageStats(
            self.requests - before.requests,
            self.executions - before.executions,
            self.failures - before.failures,
            self.queue_ns - before.queue_ns,
            self.compute_ns - before.compute_ns,
            self.batch_compute_ns - before.batch_compute_ns,
            {s: n for s in sorted(sizes) if (n := self.batches.get(s, 0) - before.batches.get(s, 0))},
        )

    def summary(self) -> dict[str, float | int | str]:
        per_request = max(self.requests, 1)
        return {
            "requests": self.requests,
            "executions": self.executions,
            "failures": self.failures,
            "avg_batch": self.requests / self.executions if self.executions else 0.0,
            "queue_ms_per_request": self.queue_ns / per_request / 1e6,
            "compute_ms_per_request": self.compute_ns / per_request / 1e6,
            "compute_ms_per_batch": self.batch_compute_ns / max(self.executions, 1) / 1e6,
            "batch_sizes": " ".join(f"{size}:{n}" for size, n in self.batches.items()),
        }


def inference_statistics(url: str) -> dict[str, StageStats]:
    """Cumulative per-model statistics (all versions summed) from Triton's statistics API."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        response = client.get_inference_statistics()
    stats = {name: StageStats() for name in MODELS}
    for model in response.model_stats:
        s = stats.setdefault(model.name, StageStats())
        inf = model.inference_stats
        s.requests += model.inference_count
        s.executions += model.execution_count
        s.failures += inf.fail.count
        s.queue_ns += inf.queue.ns
        s.compute_ns += inf.compute_input.ns + inf.compute_infer.ns + inf.compute_output.ns
        for b in model.batch_stats:
            s.batch_compute_ns += b.compute_input.ns + b.compute_infer.ns + b.compute_output.ns
            s.batches[b.batch_size] = s.batches.get(b.batch_size, 0) + b.compute_infer.count
    return stats


def decoder_turn_wait_s(metrics_url: str | None) -> float:
    """Seconds the decoder has waited for its turn on the cores (core_turns), from the metrics port;
    NaN without one (a server given by --url)."""
    if metrics_url is None:
        return float("nan")
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.findall(r"^spec_whisper_decoder_turn_wait_seconds_total\{[^}]*\} (\S+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


# --- one cell ------------------------------------------------------------------------------------


@dataclass
class Cell:
    way: str  # "users" or "batch"
    size: int  # N
    speculative: bool

    @property
    def mode(self) -> str:
        return "speculative" if self.speculative else "plain"

    @property
    def key(self) -> str:
        return f"{self.way}-{self.size}-{self.mode}"


def locust_command(cell: Cell, url: str, args: argparse.Namespace, record: Path) -> list[str]:
    users = cell.size if cell.way == "users" else 1
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--host", url, "-u", str(users), "-r", str(users),
        "--run-time", f"{args.cell_seconds}s", "--stop-timeout", str(args.stop_timeout),
        "--loglevel", "WARNING", "--speech-dir", str(args.speech_dir), "--corpus", args.corpus,
        "--pack", str(args.pack), "--decoding", cell.mode, "--clips-per-request", str(cell.size),
        "--record-file", str(record),
        "--stage", args.stage, "--decoder-inputs", str(decoder_inputs_path(args)), "--model", args.model,
        WAYS[cell.way],
    ]  # fmt: skip
    # The outer bound: Locust's own limits plus start-up; -k kills it if it ignores the TERM.
    limit = args.cell_seconds + args.stop_timeout + 120
    return ["timeout", "-k", "15", str(limit), *command]


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(cell: Cell, records: list[dict[str, Any]], exit_code: int) -> dict[str, Any]:
    """Exact latency percentiles and throughput over the cell's requests (first start to last end)."""
    ok = [r for r in records if r["ok"]]
    latencies = np.array([r["latency_s"] for r in ok]) if ok else np.array([np.nan])
    span = (
        max(r["start"] + r["latency_s"] for r in records) - min(r["start"] for r in records)
        if records
        else float("nan")
    )
    drafted = sum(r["drafted"] for r in ok)
    audio_s = sum(r["audio_s"] for r in ok)
    clips = sum(r["clips"] for r in ok)
    return {
        "way": cell.way,
        "size": cell.size,
        "mode": cell.mode,
        "requests": len(ok),
        "clips": clips,
        "errors": len(records) - len(ok),
        "locust_exit": exit_code,
        "wall_s": span,
        "p50_s": float(np.percentile(latencies, 50)),
        "p90_s": float(np.percentile(latencies, 90)),
        "p99_s": float(np.percentile(latencies, 99)),
        "mean_s": float(latencies.mean()),
        "requests_per_s": len(ok) / span,
        "clips_per_s": clips / span,
        "audio_s": audio_s,
        "rtfx": audio_s / span,
        "acceptance": sum(r["accepted"] for r in ok) / drafted if drafted else float("nan"),
    }


def run_cell(
    cell: Cell,
    url: str,
    args: argparse.Namespace,
    out_dir: Path,
    rss: RssSampler | None,
    metrics_url: str | None = None,
) -> tuple[dict[str, Any], dict[str, StageStats]]:
    record = out_dir / "requests" / f"{cell.key}.jsonl"
    record.unlink(missing_ok=True)
    command = locust_command(cell, url, args, record)
    before, waited_before = inference_statistics(url), decoder_turn_wait_s(metrics_url)
    log = out_dir / "locust" / f"{cell.key}.log"
    with log.open("w") as log_handle:
        if rss is not None:
            with rss:
                code = subprocess.run(command, stdout=log_handle, stderr=subprocess.STDOUT).returncode
        else:
            code = subprocess.run(command, stdout=log_handle, stderr=subprocess.STDOUT).returncode
    after, waited = inference_statistics(url), decoder_turn_wait_s(metrics_url) - waited_before
    stages = {name: after[name].minus(before.get(name, StageStats())) for name in after}
    row = summarise(cell, read_records(record), code)
    if code != 0 or row["requests"] == 0:
        row["errors"] = max(row["errors"], 1)  # a crashed or empty cell is a failure too
    row["peak_rss_mb"] = rss.peak_bytes / 2**20 if rss is not None else float("nan")
    decoder = stages["whisper_decoder"].summary()
    row["decoder_avg_batch"] = decoder["avg_batch"]
    row["decoder_queue_ms"] = decoder["queue_ms_per_request"]
    row["decoder_compute_ms_per_batch"] = decoder["compute_ms_per_batch"]
    # Triton's compute time includes waiting for the encoder's turns on the cores; this much of it was.
    row["decoder_turn_wait_ms_per_batch"] = waited * 1e3 / max(int(decoder["executions"]), 1)
    row["server_failures"] = sum(s.failures for s in stages.values())
    return row, stages


def decoder_inputs_path(args: argparse.Namespace) -> Path:
    return args.out_dir / "decoder_inputs.npz"


def warm_up(url: str, args: argparse.Namespace) -> None:
    """One request each way before the first cell, so no cell pays for lazy initialisation; for
    `--stage decoder`, also the decoder's inputs for every clip of the corpus, saved once."""
    clip = load_clips(args.speech_dir, "librispeech", limit=1)[0]
    with WhisperClient(url, model=args.model, timeout_s=600) as client:
        for speculative in (False, True):
            client.transcribe((clip.pcm, 16000), language=clip.language, speculative=speculative)
    if args.stage == "decoder":
        clips = load_clips(args.speech_dir, args.corpus, pack=args.pack)
        saved = load_decoder_inputs(compute_decoder_inputs(url, clips, decoder_inputs_path(args)))
        shared = SharedDecoderInputs(url, saved)
        decoder = DecoderStageClient(url, shared)
        try:
            for speculative in (False, True):
                decoder.decode(clips[0].id, speculative)
        finally:
            decoder.close()
            shared.close()


# --- outputs -------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = {"speculative": "tab:blue", "plain": "tab:orange"}
    styles = {"users": ("-", "o", "N users x 1 clip"), "batch": ("--", "s", "1 user x N clips")}
    for way, (line, marker, label) in styles.items():
        for mode, colour in colours.items():
            cells = sorted((r for r in rows if (r["way"], r["mode"]) == (way, mode)), key=lambda r: r["size"])
            if not cells:
                continue
            sizes = [r["size"] for r in cells]
            p50 = np.array([r["p50_s"] for r in cells])
            p90 = np.array([r["p90_s"] for r in cells])
            kwargs = {"color": colour, "linestyle": line, "marker": marker, "label": f"{label}, {mode}"}
            lat.errorbar(sizes, p50, yerr=[np.zeros_like(p50), p90 - p50], capsize=3, **kwargs)
            thr.plot(sizes, [r["rtfx"] for r in cells], **kwargs)
    for ax, ylabel in ((lat, "latency per request, s (p50, bar to p90)"), (thr, "audio s per wall s (RTFx)")):
        ax.set_xscale("log", base=2)
        sizes = sorted({r["size"] for r in rows})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("batch size N")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    thr.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.1%}"


def _number(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.0f}"


def markdown(
    rows: list[dict[str, Any]],
    command: str,
    machine: str,
    where: str,
    rss: dict[str, float],
    args: argparse.Namespace,
    plot_link: str,
) -> str:
    table = [
        "| way | N | decoding | requests | clips | errors | p50 s | p90 s | p99 s | req/s | clips/s | RTFx "
        "| acceptance | decoder batch | decoder queue ms | decoder ms/batch | of which turn wait ms "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['way']} | {r['size']} | {r['mode']} | {r['requests']} | {r['clips']} | {r['errors']} "
            f"| {r['p50_s']:.2f} | {r['p90_s']:.2f} | {r['p99_s']:.2f} | {r['requests_per_s']:.3f} "
            f"| {r['clips_per_s']:.3f} | {r['rtfx']:.2f} | {_percent(r['acceptance'])} "
            f"| {r['decoder_avg_batch']:.1f} | {r['decoder_queue_ms']:.0f} "
            f"| {r['decoder_compute_ms_per_batch']:.0f} | {_number(r['decoder_turn_wait_ms_per_batch'])} "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    speedups = []
    for r in rows:
        if r["mode"] != "speculative":
            continue
        plain = next(
            (p for p in rows if (p["way"], p["size"], p["mode"]) == (r["way"], r["size"], "plain")), None
        )
        if plain is not None and plain["rtfx"] > 0:
            speedups.append(
                f"{r['way']} N={r['size']}: throughput {r['rtfx'] / plain['rtfx']:.2f}x, "
                f"p50 {plain['p50_s'] / r['p50_s']:.2f}x"
            )
    errors = sum(r["errors"] for r in rows)
    stage_note = ", the decoder step alone" if args.stage == "decoder" else TARGETS[args.model][1]
    packed = f", consecutive clips joined into windows of at most {args.pack:g} s" if args.pack else ""
    sent = (
        "each clip's saved encoder states sent straight to `whisper_decoder` (the features and encoder "
        "steps ran once per clip before the first cell)"
        if args.stage == "decoder"
        else "sent as 16 kHz samples with their language"
    )
    return "\n".join(
        [
            f"\n## Load test (Triton, {dt.date.today().isoformat()}, whisper-base {args.precision} "
            f"+ `{args.assistant.name}`, {where}, cpu_turns {args.cpu_turns}{stage_note})\n",
            f"Command: `{command}`\n",
            f"Machine: {machine}\n",
            f"Clips: {args.corpus} set of the shared speech folder{packed}, {sent}. "
            f"Each cell: {args.cell_seconds} s of closed-loop load, in-flight requests then "
            f"allowed to finish; latency percentiles over all requests of the cell, throughput over "
            f"first start to last answer. **users**: N Locust users, one clip per request, batches "
            f"formed by Triton's dynamic batcher. **batch**: one user sends N clips at once as N "
            f"concurrent single-clip calls (the server takes one clip per request, docs/api.md); its "
            f"latency lasts until the last clip is back. Decoder columns are the `whisper_decoder` "
            f"step alone, from Triton's statistics API (difference over the cell): requests per "
            f"execution, queue time per request, compute time per executed batch and how much of that "
            f"the decoder spent waiting for the encoder's turn on the cores (cpu_turns).\n",
            *table,
            "",
            "Speculative over plain, same cell: " + ("; ".join(speedups) or "(only one mode run)") + ".",
            "",
            f"Server memory (RSS of tritonserver and its Python-backend stubs, summed; shared memory is "
            f"counted once per process): {rss['start']:.0f} MiB after warm-up, peak {rss['peak']:.0f} MiB, "
            f"{rss['end']:.0f} MiB after the last cell. Failed requests over all cells: {errors}.",
            "",
            "Every step's numbers (queue and compute time, batch sizes formed) are in stages.csv beside "
            "load.csv, and the raw per-request records in requests/.",
            "",
            f"![latency and throughput against batch size]({plot_link})",
            "",
        ]
    )


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--ways", nargs="+", choices=sorted(WAYS), default=["users", "batch"])
    parser.add_argument(
        "--modes", nargs="+", choices=["plain", "speculative"], default=["plain", "speculative"]
    )
    parser.add_argument("--cell-seconds", type=int, default=60, help="load time of one cell")
    parser.add_argument(
        "--stop-timeout", type=int, default=300, help="seconds in-flight requests get to finish"
    )
    parser.add_argument(
        "--stage",
        choices=["ensemble", "decoder"],
        default="ensemble",
        help="load the whole ensemble (audio in), or the decoder step alone (saved encoder states in)",
    )
    parser.add_argument(
        "--model",
        choices=sorted(TARGETS),
        default="whisper",
        help="with --stage ensemble: the ensemble, or whisper_long (sequential windows, in rounds)",
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="librispeech-heldout")
    add_pack_option(parser)
    parser.add_argument("--speech-dir", type=Path, default=DEFAULT_SPEECH_DIR)
    parser.add_argument("--main", type=Path, default=REPO / "models" / "whisper-base")
    parser.add_argument("--assistant", type=Path, default=REPO / "models" / "whisper-base-assistant")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument(
        "--cpu-turns",
        choices=["auto", "off"],
        default="auto",
        help="the encoder and decoder steps take turns on the cores (auto) or run at once (off)",
    )
    parser.add_argument("--url", help="use this running server (gRPC host:port) instead; no RSS then")
    parser.add_argument("--out-dir", type=Path, default=REPO / "loadtest" / "results")
    parser.add_argument("--record", type=Path, help="append the markdown section to this file")
    return parser.parse_args(argv)


def run_matrix(
    url: str, args: argparse.Namespace, server_pid: int | None, metrics_url: str | None = None
) -> list[dict[str, Any]]:
    out_dir: Path = args.out_dir
    rows: list[dict[str, Any]] = []
    stage_rows: list[dict[str, Any]] = []
    rss = RssSampler(server_pid) if server_pid is not None else None
    # The two modes (and ways) of one N run back to back, so slow drift hits them alike.
    cells = [
        Cell(way, size, mode == "speculative")
        for size in args.sizes
        for way in args.ways
        for mode in args.modes
    ]
    for i, cell in enumerate(cells, 1):
        print(f"[{i}/{len(cells)}] {cell.key} ...", file=sys.stderr, flush=True)
        row, stages = run_cell(cell, url, args, out_dir, rss, metrics_url)
        rows.append(row)
        stage_rows += [{"cell": cell.key, "model": name, **s.summary()} for name, s in stages.items()]
        print(
            f"    {row['requests']} requests, {row['errors']} errors, p50 {row['p50_s']:.2f} s, "
            f"RTFx {row['rtfx']:.2f}, decoder batch {row['decoder_avg_batch']:.1f}",
            file=sys.stderr,
            flush=True,
        )
        write_csv(out_dir / "load.csv", rows)  # rewritten after each cell: a cut-short run keeps its rows
        write_csv(out_dir / "stages.csv", stage_rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python scripts/bench_load.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    state = machine_state()
    machine = describe_machine(state)
    print(machine, file=sys.stderr)
    out_dir: Path = args.out_dir
    for sub in ("requests", "locust"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)

    rss_mb: dict[str, float] = {"start": float("nan"), "peak": float("nan"), "end": float("nan")}
    if args.url:
        warm_up(args.url, args)
        rows = run_matrix(args.url, args, None)
    else:
        log = out_dir / "tritonserver.log"
        with embedded_server(args.main, args.assistant, args.precision, log, args.cpu_turns) as server:
            assert server.process is not None
            warm_up(server.grpc_url, args)
            sampler = RssSampler(server.process.pid)
            rss_mb["start"] = sampler.current_bytes() / 2**20
            rows = run_matrix(server.grpc_url, args, server.process.pid, server.metrics_url)
            rss_mb["end"] = sampler.current_bytes() / 2**20
            rss_mb["peak"] = max(r["peak_rss_mb"] for r in rows)

    cores = f"{os.cpu_count()} cores"
    target = "whisper_decoder alone" if args.stage == "decoder" else TARGETS[args.model][0]
    title = f"{target} on Triton, {state['where']}, {cores}, {args.cell_seconds} s per cell"
    plot(rows, out_dir / "load.png", title)
    report = markdown(rows, command, machine, state["where"], rss_mb, args, str(out_dir / "load.png"))
    print(report)
    if args.record:
        link = os.path.relpath((out_dir / "load.png").resolve(), args.record.resolve().parent)
        with args.record.open("a") as f:
            f.write(markdown(rows, command, machine, state["where"], rss_mb, args, link))
    failed = [r for r in rows if r["errors"] or r["server_failures"]]
    for r in failed:
        print(f"FAILED cell {r['way']}-{r['size']}-{r['mode']}: {r['errors']} errors", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
