"""Long-form transcription: a recording's windows in sequence, each seeking on the timestamps of the
last (`spec_whisper/longform.py`), through whisper_encoder and whisper_decoder by BLS.

Recordings advance in rounds, as in the engine's `transcribe_long`: each round encodes the next
window of every recording in flight as one batch and decodes them together. `execute` only reads
and queues its requests; a request that arrives meanwhile joins the next round, and each recording
is answered through its response sender as soon as its last window is decoded. (A coroutine
`execute` would not do: the Python backend runs one to completion before starting the next unless
the model is decoupled, which unary gRPC and HTTP clients cannot call.)"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import WhisperTokenizerFast

from spec_whisper import serving
from spec_whisper.features import HOP_LENGTH, LogMelSpectrogram
from spec_whisper.longform import SeekingWindows
from spec_whisper.types import DecodingOptions


def _infer(model: str, inputs: list, outputs: list[str]) -> dict[str, Any]:
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs)
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}


def _per_window(states: Any, count: int) -> list[Any]:
    """The encoder's batched output split into its `count` windows, left where the encoder put them
    (on a GPU instance, GPU memory) by way of DLPack."""
    batch = torch.from_dlpack(states.to_dlpack())
    if batch.shape[1] == 0:  # the assistant's states are empty unless it has an encoder of its own
        return [states] * count
    to_window = torch.utils.dlpack.to_dlpack
    return [pb_utils.Tensor.from_dlpack(states.name(), to_window(batch[:, i : i + 1])) for i in range(count)]


def _respond(request: Any, response: Any) -> None:
    request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


@dataclass
class Recording:
    request: Any
    windows: SeekingWindows
    options: DecodingOptions
    stats: list[np.ndarray] = field(default_factory=list)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.start_instance(args)
        self.requests = serving.AudioRequests(params, args["model_repository"])
        self.log_mel = LogMelSpectrogram(self.requests.n_mels)
        self.tokens = self.requests.tokens
        self.tokenizer = WhisperTokenizerFast.from_pretrained(self.requests.main_dir)
        self.max_recordings = int(params.get("max_concurrent_recordings", "16"))
        self.arrivals: queue.SimpleQueue = queue.SimpleQueue()
        # The windows of a round go to the decoder as separate requests (each with its recording's
        # options), sent at once so that its dynamic batcher runs them as one batch.
        self.decoder_calls = ThreadPoolExecutor(self.max_recordings, thread_name_prefix="whisper_long")
        self.rounds = threading.Thread(target=self._run_rounds, name="whisper_long rounds", daemon=True)
        self.rounds.start()

    def execute(self, requests: list) -> None:
        # Read and checked here, beside the round in progress: bad input is answered at once.
        for request in requests:
            if (recording := self._start(request)) is not None:
                self.arrivals.put(recording)
        return None

    def finalize(self) -> None:
        self.arrivals.put(None)
        self.rounds.join()
        self.decoder_calls.shutdown()

    def _text(self, tokens: list[int]) -> str:
        return self.tokens.text(self.tokenizer, tokens)

    def _run_rounds(self) -> None:
        active: list[Recording] = []
        stopping = False
        while True:
            # Wait for work only when none is in flight; otherwise take whatever has arrived.
            while (
                not stopping
                and len(active) < self.max_recordings
                and (not active or not self.arrivals.empty())
            ):
                recording = self.arrivals.get()
                if recording is None:  # finalize: answer the recordings in flight, then stop
                    stopping = True
                else:
                    active.append(recording)
            if not active:
                return
            try:
                active = self._round(active)
            except Exception as exc:  # a fault of ours: fail these recordings, keep serving the rest
                for recording in active:
                    with contextlib.suppress(Exception):  # one may have been answered already
                        _respond(recording.request, serving.error_response(pb_utils, exc))
                active = []

    def _start(self, request: Any) -> Recording | None:
        def tensor(name: str) -> np.ndarray | None:
            found = pb_utils.get_input_tensor_by_name(request, name)
            return None if found is None else found.as_numpy()

        try:
            if request.is_cancelled():
                raise serving.Cancelled()
            samples, options = self.requests.read(tensor)
            windows = SeekingWindows(self.log_mel.whole(samples), self.tokens.timestamp_begin)
            return Recording(request, windows, replace(options, timestamps=True))
        except Exception as exc:  # each request fails alone, with a status that names its problem
            _respond(request, serving.error_response(pb_utils, exc))
            return None

    def _round(self, active: list[Recording]) -> list[Recording]:
        """One window of every recording in flight; returns those with windows left."""
        live = []
        for recording in active:
            if recording.request.is_cancelled():
                _respond(recording.request, serving.error_response(pb_utils, serving.Cancelled()))
            else:
                live.append(recording)
        if not live:
            return []
        try:
            cut = [r.windows.next_window() for r in live]
            mel = np.stack([m.numpy() for m, _ in cut])[None]
            encoded = _infer(
                "whisper_encoder", [pb_utils.Tensor("MEL", mel)], ["ENCODER_STATES", "ASSISTANT_STATES"]
            )
        except Exception as exc:
            for recording in live:
                _respond(recording.request, serving.error_response(pb_utils, exc))
            return []
        main, assistant = (_per_window(encoded[n], len(live)) for n in ("ENCODER_STATES", "ASSISTANT_STATES"))
        calls = [
            self.decoder_calls.submit(self._decode, recording, [main[i], assistant[i]], frames)
            for i, (recording, (_, frames)) in enumerate(zip(live, cut, strict=True))
        ]
        going = []
        for recording, call in zip(live, calls, strict=True):
            try:
                decoded = call.result()
                recording.windows.advance(decoded["TOKENS"].reshape(-1).tolist(), self._text)
                recording.stats.append(decoded["STATS"])
                # The language the first window was decoded in holds for the rest of the recording.
                language = decoded["LANGUAGE_USED"].reshape(-1)[0].decode()
                recording.options = replace(recording.options, language=language)
                if not recording.windows.done:
                    going.append(recording)
                    continue
                arrays = serving.long_form_arrays(recording.windows, self._text, language, recording.stats)
                response = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in arrays.items()])
            except Exception as exc:
                response = serving.error_response(pb_utils, exc)
            _respond(recording.request, response)
        return going

    def _decode(self, recording: Recording, states: list, frames: int) -> dict[str, np.ndarray]:
        layout = np.array([[[0, frames * HOP_LENGTH, 0, 0]]], dtype=np.int64)
        options = np.array([[serving.encode_options(recording.options)]], dtype=np.object_)
        inputs = [*states, pb_utils.Tensor("WINDOW_SAMPLES", layout), pb_utils.Tensor("OPTIONS", options)]
        decoded = _infer("whisper_decoder", inputs, ["TOKENS", "LANGUAGE_USED", "STATS"])
        return {name: tensor.as_numpy() for name, tensor in decoded.items()}
