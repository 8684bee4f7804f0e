"""Helpers for the integration tests: build `whisper` requests, call them, compare transcripts.

The server itself comes from the session fixtures in tests/conftest.py (`triton_server`, `triton_url`,
`triton_http_url`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


@dataclass
class Result:
    text: str
    tokens: list[int]
    language: str
    stats: list[int]  # drafted, accepted, main decoder passes
    windows: np.ndarray  # [W, 2] seconds
    segment_text: list[str]  # the transcript cut where its windows meet
    segment_times: np.ndarray  # [S, 2] seconds each segment's window covers alone


def inputs(
    module: Any = grpcclient,
    *,
    audio: np.ndarray | None = None,
    audio_file: bytes | None = None,
    sample_rate: int | None = None,
    language: str | None = None,
    task: str | None = None,
    speculative: bool | None = None,
    **scalars: int | None,
) -> list[Any]:
    """InferInputs for `whisper` (module: tritonclient.grpc or tritonclient.http), batch dimension 1."""
    tensors: list[tuple[str, np.ndarray, str]] = []
    if audio is not None:
        tensors.append(("AUDIO", audio[None], np_to_triton_dtype(audio.dtype)))
    if audio_file is not None:
        tensors.append(("AUDIO_FILE", np.array([[audio_file]], dtype=np.object_), "BYTES"))
    if sample_rate is not None:
        tensors.append(("SAMPLE_RATE", np.array([[sample_rate]], dtype=np.int32), "INT32"))
    if language is not None:
        tensors.append(("LANGUAGE", np.array([[language.encode()]], dtype=np.object_), "BYTES"))
    if task is not None:
        tensors.append(("TASK", np.array([[task.encode()]], dtype=np.object_), "BYTES"))
    if speculative is not None:
        tensors.append(("SPECULATIVE", np.array([[speculative]], dtype=bool), "BOOL"))
    for name, value in scalars.items():
        if value is None:  # not sent: the server's default
            continue
        tensors.append((name.upper(), np.array([[value]], dtype=np.int32), "INT32"))
    built = []
    for name, array, dtype in tensors:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        built.append(tensor)
    return built


def _triton_dtype(array: np.ndarray) -> str:
    return {np.dtype(np.int16): "INT16", np.dtype(np.float64): "FP64", np.dtype(np.int32): "INT32"}[
        array.dtype
    ]


def parse(response: Any) -> Result:
    return Result(
        text=response.as_numpy("TEXT").reshape(-1)[0].decode(),
        tokens=response.as_numpy("TOKENS").reshape(-1).tolist(),
        language=response.as_numpy("LANGUAGE_USED").reshape(-1)[0].decode(),
        stats=response.as_numpy("STATS").reshape(-1).tolist(),
        windows=response.as_numpy("WINDOWS").reshape(-1, 2),
        segment_text=[t.decode() for t in response.as_numpy("SEGMENT_TEXT").reshape(-1)],
        segment_times=response.as_numpy("SEGMENT_TIMES").reshape(-1, 2),
    )


def transcribe(url: str, timeout_s: float = 600.0, model: str = "whisper", **kwargs: Any) -> Result:
    """One request to `whisper` (or `whisper_long`, which takes the same inputs) over gRPC; raises
    InferenceServerException on an error status."""
    with grpcclient.InferenceServerClient(url) as client:
        return parse(client.infer(model, inputs(**kwargs), client_timeout=timeout_s))


def words(text: str) -> str:
    """Lower case, no punctuation but apostrophes, single spaces: the LibriSpeech reference style."""
    return " ".join(re.sub(r"[^\w' ]+", " ", text.lower()).split())


def served_counts(url: str, model: str = "whisper_decoder") -> tuple[int, int]:
    """A model's request and execution counts once they stop moving: Triton may count a step's
    execution just after the ensemble's response has reached the client (seen once in CI, where the
    previous test's last request was counted in this test's total)."""

    def counts() -> tuple[int, int]:
        with grpcclient.InferenceServerClient(url) as client:
            stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    previous = counts()
    for _ in range(20):
        time.sleep(0.25)
        if (current := counts()) == previous:
            return current
        previous = current
    raise AssertionError(f"{model}'s statistics kept moving with no request of ours in flight: {current}")
