"""The wire format of the `whisper` ensemble (docs/api.md): request tensors in, result out.

Shared by the sync and asyncio clients so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tritonclient.grpc as grpcclient

from .audio import SAMPLE_RATE, PreparedAudio
from .errors import ClientError, InvalidRequest
from .results import Segment, TranscriptionResult

__all__ = ["TASKS", "RequestOptions", "build_inputs", "parse_result"]

TASKS = ("transcribe", "translate")
OUTPUTS = ("TEXT", "TOKENS", "LANGUAGE_USED", "STATS", "WINDOWS", "SEGMENT_TEXT", "SEGMENT_TIMES")


@dataclass(frozen=True)
class RequestOptions:
    # ISO 639-1 code; None or "" lets the server detect the language.
    language: str | None = None
    # "transcribe" keeps the spoken language, "translate" produces English.
    task: str = "transcribe"
    # False runs the main model alone; the transcript is the same, only slower.
    speculative: bool = True
    # Tokens drafted per main pass; None (sent as 0) lets the server choose.
    draft_length: int | None = None
    # Per 30 s window; None leaves the server default.
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        # Only checks that need no model knowledge: the server owns the language list and the
        # upper bounds, and answers INVALID_ARGUMENT for those.
        if self.task not in TASKS:
            raise InvalidRequest(f"task must be one of {TASKS}, got {self.task!r}")
        if self.language is not None and not isinstance(self.language, str):
            raise InvalidRequest(f"language must be a string such as 'en', got {self.language!r}")
        if self.draft_length is not None and (not _is_int(self.draft_length) or self.draft_length < 0):
            raise InvalidRequest(f"draft_length must be a non-negative integer, got {self.draft_length!r}")
        if self.max_new_tokens is not None and (not _is_int(self.max_new_tokens) or self.max_new_tokens < 1):
            raise InvalidRequest(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")


def build_inputs(audio: PreparedAudio, options: RequestOptions) -> list[grpcclient.InferInput]:
    """One request (batch dimension 1) for the `whisper` ensemble.

    LANGUAGE, TASK, SPECULATIVE and DRAFT_LENGTH are always sent, with the contract's "server
    decides" values when unset, because Triton's dynamic batcher (whisper_features) only groups
    requests that carry the same set of inputs: a request leaving one out would batch apart.
    """
    if audio.file_bytes is not None:
        inputs = [_tensor("AUDIO_FILE", np.array([[audio.file_bytes]], dtype=np.object_), "BYTES")]
    elif audio.samples is not None:
        inputs = [
            _tensor("AUDIO", audio.samples.reshape(1, -1).astype(np.float32, copy=False), "FP32"),
            _tensor("SAMPLE_RATE", np.array([[SAMPLE_RATE]], dtype=np.int32), "INT32"),
        ]
    else:
        raise InvalidRequest("no audio given")
    language = (options.language or "").strip().lower()
    inputs += [
        _tensor("LANGUAGE", np.array([[language.encode()]], dtype=np.object_), "BYTES"),
        _tensor("TASK", np.array([[options.task.encode()]], dtype=np.object_), "BYTES"),
        _tensor("SPECULATIVE", np.array([[bool(options.speculative)]], dtype=np.bool_), "BOOL"),
        _tensor("DRAFT_LENGTH", np.array([[options.draft_length or 0]], dtype=np.int32), "INT32"),
    ]
    if options.max_new_tokens is not None:
        inputs.append(
            _tensor("MAX_NEW_TOKENS", np.array([[options.max_new_tokens]], dtype=np.int32), "INT32")
        )
    return inputs


def parse_result(result: grpcclient.InferResult, latency_s: float) -> TranscriptionResult:
    """Read one response; a missing output means the server broke the contract."""
    arrays = {}
    for name in OUTPUTS:
        array = result.as_numpy(name)
        if array is None:
            raise ClientError(f"the server's response has no {name} output (see docs/api.md)")
        arrays[name] = array
    stats = arrays["STATS"].reshape(-1)
    if stats.size != 3:
        raise ClientError(f"STATS should hold 3 values, got {stats.size}")
    windows = arrays["WINDOWS"].reshape(-1, 2)
    texts, times = arrays["SEGMENT_TEXT"].reshape(-1), arrays["SEGMENT_TIMES"].reshape(-1, 2)
    if len(texts) != len(times):
        raise ClientError(f"{len(texts)} SEGMENT_TEXT entries for {len(times)} SEGMENT_TIMES rows")
    segments = tuple(
        Segment(float(start), float(end), _string(text))
        for text, (start, end) in zip(texts, times, strict=True)
    )
    return TranscriptionResult(
        text=_first_string(arrays["TEXT"]),
        tokens=tuple(int(t) for t in arrays["TOKENS"].reshape(-1)),
        language=_first_string(arrays["LANGUAGE_USED"]),
        latency_s=latency_s,
        drafted=int(stats[0]),
        accepted=int(stats[1]),
        decoder_passes=int(stats[2]),
        windows=tuple((float(start), float(end)) for start, end in windows),
        segments=segments,
    )


def _tensor(name: str, data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def _first_string(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    return _string(flat[0]) if flat.size else ""


def _string(value: object) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
