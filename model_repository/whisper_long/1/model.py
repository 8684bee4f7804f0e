"""Long-form transcription: a recording's windows in sequence, each seeking on the timestamps of the
last (`spec_whisper/longform.py`), through whisper_encoder and whisper_decoder by BLS.

Each recording runs on a thread of its own and answers through its response sender when it is done.
`execute` returns at once, so a request that arrives while a long recording is being transcribed
starts straight away instead of waiting for the whole batch it was not part of (a coroutine
`execute` would not help: the Python backend runs one to completion before the next, unless the
model is decoupled, which unary gRPC and HTTP clients cannot call). Meanwhile the encoder's and the
decoder's dynamic batchers join the windows of every recording in flight."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import WhisperTokenizerFast

from spec_whisper import serving
from spec_whisper.features import HOP_LENGTH, LogMelSpectrogram
from spec_whisper.longform import SeekingWindows
from spec_whisper.types import DecodingOptions


def _infer(model: str, inputs: list, outputs: list[str]) -> dict:
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs)
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.start_instance(args)
        self.requests = serving.AudioRequests(params, args["model_repository"])
        self.log_mel = LogMelSpectrogram(self.requests.n_mels)
        self.tokens = self.requests.tokens
        self.tokenizer = WhisperTokenizerFast.from_pretrained(self.requests.main_dir)
        # A fast tokenizer can fail with "Already borrowed" when two threads use it at once.
        self.tokenizer_lock = threading.Lock()
        workers = int(params.get("max_concurrent_recordings", "16"))
        self.recordings = ThreadPoolExecutor(workers, thread_name_prefix="whisper_long")

    def _text(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return self.tokens.text(self.tokenizer, tokens)

    def _prepare(self, request) -> tuple[np.ndarray, DecodingOptions]:
        def tensor(name: str) -> np.ndarray | None:
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        samples, options = self.requests.read(tensor)
        return samples, replace(options, timestamps=True)

    def _transcribe(self, request, samples: np.ndarray, options: DecodingOptions) -> dict:
        windows = SeekingWindows(self.log_mel.whole(samples), self.tokens.timestamp_begin)
        stats: list[np.ndarray] = []
        while not windows.done:
            if request.is_cancelled():
                raise serving.Cancelled()
            mel, frames = windows.next_window()
            encoded = _infer(
                "whisper_encoder",
                [pb_utils.Tensor("MEL", mel[None, None].numpy())],
                ["ENCODER_STATES", "ASSISTANT_STATES"],
            )
            layout = np.array([[[0, frames * HOP_LENGTH, 0, 0]]], dtype=np.int64)
            options_bytes = np.array([[serving.encode_options(options)]], dtype=np.object_)
            decoded = _infer(
                "whisper_decoder",
                [
                    *encoded.values(),
                    pb_utils.Tensor("WINDOW_SAMPLES", layout),
                    pb_utils.Tensor("OPTIONS", options_bytes),
                ],
                ["TOKENS", "LANGUAGE_USED", "STATS"],
            )
            windows.advance(decoded["TOKENS"].as_numpy().reshape(-1).tolist(), self._text)
            stats.append(decoded["STATS"].as_numpy())
            # The language the first window was decoded in holds for the rest of the recording.
            language = decoded["LANGUAGE_USED"].as_numpy().reshape(-1)[0].decode()
            options = replace(options, language=language)
        return serving.long_form_arrays(windows, self._text, options.language or "en", stats)

    def _answer(self, request) -> None:
        try:
            if request.is_cancelled():
                raise serving.Cancelled()
            arrays = self._transcribe(request, *self._prepare(request))
            response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in arrays.items()])
        except Exception as exc:  # each request fails alone, with a status that names its problem
            response = serving.error_response(pb_utils, exc)
        request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def execute(self, requests: list) -> None:
        for request in requests:
            self.recordings.submit(self._answer, request)
        return None

    def finalize(self) -> None:
        self.recordings.shutdown(wait=True)
