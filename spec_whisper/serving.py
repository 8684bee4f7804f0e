"""Glue between Triton request tensors (numpy arrays) and the engine, shared by the model.py files.

No Triton import here: the Python backend hands each model.py numpy arrays, and everything that
interprets them lives in this module so it is written (and unit-testable) once. Every function that
reads client input raises ValueError (or its subclass AudioError) with a message fit for the client;
model.py maps that to INVALID_ARG.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

import numpy as np
import torch
from transformers import GenerationConfig

from spec_whisper.audio import SAMPLE_RATE, decode_audio, prepare_pcm
from spec_whisper.chunking import Window, merge_segments, split_windows
from spec_whisper.core_turns import CoreTurns
from spec_whisper.engine import EncoderStates, SpeculativeWhisper
from spec_whisper.loading import AssistantEncoder
from spec_whisper.longform import SeekingWindows
from spec_whisper.tokens import SpecialTokens
from spec_whisper.types import DecodingOptions, DecodingStats, Transcription

T = TypeVar("T")

__all__ = [
    "OPTION_INPUTS",
    "AudioRequests",
    "Cancelled",
    "DecoderMetrics",
    "RequestRows",
    "check_backend_numpy",
    "core_turns",
    "decode_options",
    "decode_requests",
    "device_for",
    "encode_options",
    "engine_arguments",
    "error_response",
    "language_of",
    "long_form_arrays",
    "parameters",
    "parse_options",
    "read_audio",
    "request_rows",
    "resolve_path",
    "result_arrays",
    "set_cpu_threads",
    "start_instance",
    "stats_row",
    "window_arrays",
    "windows_for",
    "windows_from_array",
]

# Overlap of neighbouring 30 s windows, (left, right) seconds: the transformers pipeline's layout.
WINDOW_S = 30.0
STRIDE_S = (5.0, 5.0)


def _one(array: np.ndarray | None, name: str) -> np.ndarray | None:
    """A request's tensor without its batch dimension, insisting on batch size 1."""
    if array is None:
        return None
    if array.ndim == 0 or array.shape[0] != 1:
        raise ValueError(
            f"{name}: send one clip per request (batch dimension 1), got shape {list(array.shape)}; "
            "the server batches concurrent requests itself"
        )
    return array[0]


def _scalar(array: np.ndarray | None, name: str) -> object | None:
    value = _one(array, name)
    if value is None:
        return None
    if value.size != 1:
        raise ValueError(f"{name} must hold one value, got shape {list(value.shape)}")
    return value.reshape(-1)[0]


def _text(array: np.ndarray | None, name: str) -> str | None:
    value = _scalar(array, name)
    if value is None:
        return None
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as e:
        raise ValueError(f"{name} is not valid UTF-8") from e
    return text.strip() or None


def parse_options(
    language: np.ndarray | None = None,
    task: np.ndarray | None = None,
    speculative: np.ndarray | None = None,
    draft_length: np.ndarray | None = None,
    max_new_tokens: np.ndarray | None = None,
) -> DecodingOptions:
    """The client's optional inputs (None when absent) as validated DecodingOptions (docs/api.md)."""
    kwargs: dict[str, object] = {}
    if (code := _text(language, "LANGUAGE")) is not None:
        kwargs["language"] = code.lower()
    if (name := _text(task, "TASK")) is not None:
        kwargs["task"] = name.lower()
    if (flag := _scalar(speculative, "SPECULATIVE")) is not None:
        kwargs["speculative"] = bool(flag)
    if (k := _scalar(draft_length, "DRAFT_LENGTH")) is not None and int(k) != 0:  # type: ignore[call-overload]
        kwargs["draft_length"] = int(k)  # type: ignore[call-overload]
    if (n := _scalar(max_new_tokens, "MAX_NEW_TOKENS")) is not None:
        kwargs["max_new_tokens"] = int(n)  # type: ignore[call-overload]
    return DecodingOptions(**kwargs)  # type: ignore[arg-type]  # __post_init__ range-checks


def encode_options(options: DecodingOptions) -> bytes:
    return json.dumps(asdict(options), sort_keys=True).encode()


def decode_options(data: np.ndarray | bytes) -> DecodingOptions:
    raw = data if isinstance(data, bytes) else _scalar(data, "OPTIONS")
    return DecodingOptions(**json.loads(raw))  # type: ignore[arg-type]


def read_audio(
    audio: np.ndarray | None,
    audio_file: np.ndarray | None,
    sample_rate: np.ndarray | None,
    max_seconds: float,
) -> np.ndarray:
    """16 kHz float32 mono from exactly one of AUDIO (PCM) or AUDIO_FILE (file bytes)."""
    if (audio is None) == (audio_file is None):
        raise ValueError("send exactly one of AUDIO (PCM samples) or AUDIO_FILE (file bytes)")
    if audio_file is not None:
        data = _scalar(audio_file, "AUDIO_FILE")
        if not isinstance(data, bytes):
            raise ValueError("AUDIO_FILE must hold the file's bytes")
        return decode_audio(data, max_seconds=max_seconds)
    rate = _scalar(sample_rate, "SAMPLE_RATE")
    pcm = _one(audio, "AUDIO")
    assert pcm is not None
    return prepare_pcm(pcm, SAMPLE_RATE if rate is None else int(rate), max_seconds=max_seconds)  # type: ignore[call-overload]


OPTION_INPUTS = ("LANGUAGE", "TASK", "SPECULATIVE", "DRAFT_LENGTH", "MAX_NEW_TOKENS")


class AudioRequests:
    """What the models that take the client's request (`whisper_features`, `whisper_long`) read from
    it: the audio and the decoding options, checked against the main model's special tokens (no
    weights loaded) and the `max_audio_seconds` parameter."""

    def __init__(self, params: dict[str, str], model_repository: str | Path) -> None:
        self.main_dir = resolve_path(params["main_model"], model_repository)
        self.max_seconds = float(params.get("max_audio_seconds", "600"))
        self.n_mels = json.loads((self.main_dir / "config.json").read_text())["num_mel_bins"]
        self.tokens = SpecialTokens.from_generation_config(GenerationConfig.from_pretrained(self.main_dir))

    def read(self, tensor: Callable[[str], np.ndarray | None]) -> tuple[np.ndarray, DecodingOptions]:
        """16 kHz samples and options from `tensor(name)`, a request's input (None when absent). An
        unknown language is rejected before the audio is decoded."""
        options = parse_options(*(tensor(name) for name in OPTION_INPUTS))
        self.tokens.check_language(options.language)
        samples = read_audio(tensor("AUDIO"), tensor("AUDIO_FILE"), tensor("SAMPLE_RATE"), self.max_seconds)
        return samples, options


def windows_for(samples: np.ndarray) -> list[Window]:
    return split_windows(samples, window_s=WINDOW_S, stride_s=STRIDE_S)


def window_arrays(windows: Sequence[Window]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds [W, 2] float32 for the client, samples [W, 4] int64 for the decoder's merge)."""
    layout = np.array([[w.start, w.end, w.stride_left, w.stride_right] for w in windows], dtype=np.int64)
    return (layout[:, :2] / SAMPLE_RATE).astype(np.float32), layout


def windows_from_array(layout: np.ndarray) -> list[Window]:
    return [Window(*(int(v) for v in row)) for row in np.asarray(layout).reshape(-1, 4)]


@dataclass
class RequestRows:
    """One request as the decoder sees it: its windows' encoder states, layout and options."""

    main: torch.Tensor  # [windows, frames, d_model]
    assistant: torch.Tensor | None  # [windows, frames, d_assistant] for an assistant with its own encoder
    windows: list[Window]
    options: DecodingOptions


def request_rows(
    main: torch.Tensor, assistant: torch.Tensor, layout: np.ndarray, options: DecodingOptions
) -> RequestRows:
    """Check a request's decoder inputs ([1, ...] each) and drop the batch dimension."""
    windows = windows_from_array(layout)
    if main.dim() != 4 or main.shape[0] != 1 or main.shape[1] != len(windows) or not windows:
        raise ValueError(
            f"ENCODER_STATES must be [1, {len(windows)}, frames, d_model], got {list(main.shape)}"
        )
    # The encoder sends an empty tensor when the assistant reuses the main encoder's states.
    own = assistant[0] if assistant.numel() else None
    if own is not None and own.shape[0] != len(windows):
        raise ValueError(f"ASSISTANT_STATES has {own.shape[0]} windows, expected {len(windows)}")
    return RequestRows(main[0], own, windows, options)


def _decode_batch(engine: SpeculativeWhisper, batch: Sequence[RequestRows]) -> list[list[Transcription]]:
    own = None if batch[0].assistant is None else torch.cat([r.assistant for r in batch])  # type: ignore[misc]
    # The one copy on the decoder side: the requests' windows become one batch for the engine.
    samples = torch.tensor([w.end - w.start for r in batch for w in r.windows])
    states = EncoderStates(torch.cat([r.main for r in batch]), own, samples)
    results = engine.decode(states, [r.options for r in batch for _ in r.windows])
    bounds = np.cumsum([0] + [len(r.windows) for r in batch]).tolist()
    return [results[a:b] for a, b in itertools.pairwise(bounds)]


def decode_requests(
    engine: SpeculativeWhisper, batch: Sequence[RequestRows]
) -> list[list[Transcription] | Exception]:
    """Every window of every request in one engine call; per request, its windows' results or the
    exception that failed it. If the batched call fails, the requests are retried one by one so that
    only the request that caused it fails."""
    if not batch:
        return []
    try:
        return list(_decode_batch(engine, batch))
    except Exception as exc:
        if len(batch) == 1:
            return [exc]
    outcomes: list[list[Transcription] | Exception] = []
    for rows in batch:
        try:
            outcomes += _decode_batch(engine, [rows])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


def result_arrays(engine: SpeculativeWhisper, rows: RequestRows, results: Sequence[Transcription]) -> dict:
    """The decoder's outputs for one request (batch dimension 1): windows merged into one transcript,
    and the stretches of it each window contributed, timed by the audio only that window covers."""
    segments = merge_segments([r.tokens for r in results], rows.windows)
    tokens = [t for _, run in segments for t in run]
    times = [[s / SAMPLE_RATE for s in rows.windows[w].own] for w, _ in segments]
    return {
        "TEXT": np.array([[engine.text(tokens).encode()]], dtype=np.object_),
        "TOKENS": np.array([tokens], dtype=np.int32).reshape(1, -1),
        "SEGMENT_TEXT": np.array([[engine.text(run).encode() for _, run in segments]], dtype=np.object_),
        "SEGMENT_TIMES": np.array(times, dtype=np.float32).reshape(1, -1, 2),
        "LANGUAGE_USED": np.array([[language_of(results).encode()]], dtype=np.object_),
        "STATS": stats_row([r.stats for r in results])[None],
    }


def long_form_arrays(
    windows: SeekingWindows, text: Callable[[list[int]], str], language: str, stats: Sequence[np.ndarray]
) -> dict:
    """`whisper_long`'s outputs for one recording (batch dimension 1), as the ensemble names them:
    the transcript, its tokens with their timestamps, Whisper's own segments timed by them, and
    the seconds each sequential window covered."""
    segments = windows.segments
    times = [[s.start, s.end] for s in segments]
    return {
        "TEXT": np.array([[text(windows.tokens).encode()]], dtype=np.object_),
        "TOKENS": np.array([windows.tokens], dtype=np.int32).reshape(1, -1),
        "SEGMENT_TEXT": np.array([[s.text.encode() for s in segments]], dtype=np.object_),
        "SEGMENT_TIMES": np.array(times, dtype=np.float32).reshape(1, -1, 2),
        "WINDOWS": np.array(windows.windows, dtype=np.float32).reshape(1, -1, 2),
        "LANGUAGE_USED": np.array([[language.encode()]], dtype=np.object_),
        "STATS": np.sum([np.asarray(s).reshape(3) for s in stats], axis=0, dtype=np.int64)[None],
    }


def language_of(results: Sequence[Transcription]) -> str:
    """The language most of a request's windows used (the earliest on a tie)."""
    languages = [r.language for r in results]
    return max(dict.fromkeys(languages), key=languages.count)


def stats_row(stats: Sequence[DecodingStats]) -> np.ndarray:
    """STATS of one request: drafted, accepted, main decoder passes, summed over its windows."""
    return np.array(
        [sum(s.drafted for s in stats), sum(s.accepted for s in stats), sum(s.main_passes for s in stats)],
        dtype=np.int64,
    )


def start_instance(args: dict) -> dict[str, str]:
    """Every model instance's start: its config's `parameters` (from Triton's `initialize` args),
    after refusing numpy 2 (`check_backend_numpy`) and setting the torch threads (`set_cpu_threads`)."""
    params = parameters(json.loads(args["model_config"]))
    check_backend_numpy(params)
    set_cpu_threads(params)
    return params


def parameters(model_config: dict) -> dict[str, str]:
    """config.pbtxt `parameters` as plain strings (Triton wraps each in {"string_value": ...})."""
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def check_backend_numpy(params: dict[str, str], version: str = np.__version__) -> None:
    """Refuse to load under numpy 2 unless `allow_numpy2` is "yes".

    The Python backend of Triton 2.51 (the stub bundled in nvidia-pytriton 0.7) hands each BYTES input
    to `deserialize_bytes_tensor` through numpy 1's C API. Under numpy 2 it reads the first bytes of the
    buffer as an absurd length and the stub process dies on the first request, after which every request
    fails with "Stub process ... is not healthy" (reproduced with numpy 2.4 here, and with the numpy 2.5
    of an H200 machine's image). Every request of this ensemble carries BYTES (options, audio files), so
    the cause is named at load time instead. A backend built against numpy 2 can set the parameter."""
    if int(version.split(".")[0]) >= 2 and params.get("allow_numpy2", "no").strip().lower() != "yes":
        raise RuntimeError(
            f"numpy {version} in the Python backend's interpreter: Triton 2.51's Python backend misreads "
            "BYTES inputs under numpy 2 and its stub crashes on the first request. Install numpy<2 "
            "there (pip install 'numpy<2'), or set the model parameter allow_numpy2 to \"yes\" if this "
            "Triton's Python backend was built against numpy 2."
        )


def resolve_path(value: str, model_dir: str | Path) -> Path:
    """A path from config parameters: absolute, or relative to the project root, the folder that holds
    the model repository (so `models/whisper-base` works from a checkout and from the container)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(model_dir).resolve().parent.parent / path


def set_cpu_threads(params: dict[str, str]) -> int:
    """Torch threads for one model instance: `cpu_threads` from the config, or with "0" every core.

    The encoder and decoder stages each take all cores: a lone request then runs each stage at full
    speed (measured on 2 cores, 10 clips one at a time: 17.7 s with one thread per stage, 10.1 s with
    two), and under load, when both stages run at once, throughput stayed within a few percent of
    splitting the cores between them (8 users: 4.87 against 5.05 audio seconds per second). The
    light features stage is configured down to one thread."""
    threads = int(params.get("cpu_threads", "0")) or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def core_turns(params: dict[str, str], model_dir: str | Path, device: str) -> CoreTurns:
    """How this instance shares the CPU with the ensemble's other stages (`core_turns`): `cpu_turns`
    "auto" (the default) takes turns with every CPU instance of the same model repository, "off"
    does not, and any other value names the lock file to take turns on. GPU instances never do."""
    setting = params.get("cpu_turns", "auto").strip()
    if device != "cpu" or setting.lower() == "off":
        return CoreTurns()
    if setting.lower() != "auto":
        return CoreTurns(resolve_path(setting, model_dir))
    repository = str(Path(model_dir).resolve().parent)
    digest = hashlib.sha256(repository.encode()).hexdigest()[:16]
    return CoreTurns(Path(tempfile.gettempdir()) / f"spec_whisper-turns-{digest}.lock")


def log_to_triton(pb_utils: Any) -> None:
    """Send the engine's log records, INFO and up (a batch size's pass costs timed again), to
    Triton's log, once per process however many models ask."""
    engine_log = logging.getLogger("spec_whisper")
    if any(isinstance(h, _TritonLogHandler) for h in engine_log.handlers):
        return
    engine_log.addHandler(_TritonLogHandler(pb_utils))
    engine_log.setLevel(logging.INFO)


class _TritonLogHandler(logging.Handler):
    def __init__(self, pb_utils: Any) -> None:
        super().__init__()
        self.logger = pb_utils.Logger

    def emit(self, record: logging.LogRecord) -> None:
        text = f"spec_whisper: {record.getMessage()}"
        if record.levelno >= logging.ERROR:
            self.logger.log_error(text)
        elif record.levelno >= logging.WARNING:
            self.logger.log_warn(text)
        else:
            self.logger.log_info(text)


def device_for(instance_kind: str, device_id: str | int) -> str:
    """The torch device of a model instance: KIND_AUTO resolves to GPU where one exists, else CPU."""
    return f"cuda:{device_id}" if instance_kind.upper() == "GPU" else "cpu"


class Cancelled(Exception):
    """The client cancelled the request while it waited; it is answered with CANCELLED."""


def error_response(pb_utils: Any, exc: BaseException) -> Any:
    """A per-request error response: ValueError (bad input, AudioError included) -> INVALID_ARG,
    Cancelled -> CANCELLED, anything else -> INTERNAL, logged with its traceback.

    `pb_utils` is the backend's triton_python_backend_utils module, passed in because it only exists
    inside the Python-backend stub; this module stays importable (and testable) without Triton.
    """
    errors = pb_utils.TritonError
    if isinstance(exc, Cancelled):
        error = errors("request cancelled", errors.CANCELLED)
    elif isinstance(exc, ValueError):
        error = errors(str(exc), errors.INVALID_ARG)
    else:
        trace = "".join(traceback.format_exception(exc))
        pb_utils.Logger.log_error(f"spec_whisper: request failed: {trace}")
        error = errors(f"internal error: {type(exc).__name__}: {exc}", errors.INTERNAL)
    return pb_utils.InferenceResponse(error=error)


def parse_each(
    pb_utils: Any, requests: list[Any], parse: Callable[[Any], T]
) -> tuple[list[Any], dict[int, T]]:
    """Parse every request on its own, so that a cancelled or bad one fails alone.

    Returns the responses, already holding the error of each request that failed (None elsewhere), and
    what `parse` made of each good request, by request index."""
    responses: list[Any] = [None] * len(requests)
    parsed: dict[int, T] = {}
    for i, request in enumerate(requests):
        try:
            if request.is_cancelled():
                raise Cancelled()
            parsed[i] = parse(request)
        except Exception as exc:
            responses[i] = error_response(pb_utils, exc)
    return responses, parsed


class DecoderMetrics:
    """Speculative-decoding counters on Triton's metrics port (custom metrics of the Python backend).

    `pb_utils` is passed in, as for error_response."""

    COUNTERS: ClassVar[dict[str, str]] = {
        "drafted_tokens": "tokens the assistant drafted",
        "accepted_tokens": "drafted tokens the main model accepted",
        "main_decoder_passes": "forward passes of the main decoder",
        "windows": "30 s windows decoded",
    }

    def __init__(self, pb_utils: Any, labels: dict[str, str]) -> None:
        family = pb_utils.MetricFamily
        self.families = {
            key: family(f"spec_whisper_{key}_total", text, family.COUNTER)
            for key, text in self.COUNTERS.items()
        }
        rate_help = "accepted / drafted tokens of the last request that drafted"
        self.families["rate"] = family("spec_whisper_acceptance_rate", rate_help, family.GAUGE)
        wait_help = "seconds the decoder waited for its turn on the CPU cores (core_turns)"
        self.families["turn_wait"] = family(
            "spec_whisper_decoder_turn_wait_seconds_total", wait_help, family.COUNTER
        )
        self.metrics = {key: f.Metric(labels=labels) for key, f in self.families.items()}

    def record(self, stats: np.ndarray, windows: int) -> None:
        """One request: its STATS row (drafted, accepted, main passes) and its window count."""
        drafted, accepted, passes = (float(v) for v in np.asarray(stats).reshape(-1))
        for key, value in zip(self.COUNTERS, (drafted, accepted, passes, windows), strict=True):
            self.metrics[key].increment(value)
        if drafted:
            self.metrics["rate"].set(accepted / drafted)

    def record_turn_wait(self, seconds: float) -> None:
        """Time a batch waited for the cores while another stage had its turn (part of its compute
        time in Triton's statistics, which cannot tell the two apart)."""
        self.metrics["turn_wait"].increment(seconds)

    def close(self) -> None:
        # Metrics must be released before their families (the backend refuses the other order).
        self.metrics.clear()
        self.families.clear()


def engine_arguments(params: dict[str, str], model_dir: str | Path) -> dict[str, Any]:
    """SpeculativeWhisper.load keyword arguments from config parameters ("" or "none": no assistant)."""
    assistant = params.get("assistant_model", "").strip()
    assistant_encoder = params.get("assistant_encoder", "auto").strip().lower()
    if assistant_encoder not in (choices := get_args(AssistantEncoder)):
        raise ValueError(f"assistant_encoder {assistant_encoder!r}: expected one of {', '.join(choices)}")
    return {
        "main": resolve_path(params["main_model"], model_dir),
        "assistant": None if assistant.lower() in ("", "none") else resolve_path(assistant, model_dir),
        "precision": params.get("precision", "fp32"),
        "assistant_encoder": assistant_encoder,
    }
