"""Long-form transcription: a recording's windows in sequence, each seeking on the timestamps of the
last (`spec_whisper/longform.py`), through whisper_encoder and whisper_decoder by BLS."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import WhisperTokenizerFast

from spec_whisper import serving
from spec_whisper.features import HOP_LENGTH, LogMelSpectrogram
from spec_whisper.longform import SeekingWindows
from spec_whisper.types import DecodingOptions


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


async def _infer(model: str, inputs: list, outputs: list[str]) -> dict:
    request = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs)
    response = await request.async_exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name) for name in outputs}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.start_instance(args)
        self.requests = serving.AudioRequests(params, args["model_repository"])
        self.log_mel = LogMelSpectrogram(self.requests.n_mels)
        self.tokens = self.requests.tokens
        tokenizer = WhisperTokenizerFast.from_pretrained(self.requests.main_dir)
        self._text = partial(self.tokens.text, tokenizer)

    def _prepare(self, request) -> tuple[np.ndarray, DecodingOptions]:
        samples, options = self.requests.read(partial(_input, request))
        return samples, replace(options, timestamps=True)

    async def _transcribe(self, request, samples: np.ndarray, options: DecodingOptions) -> dict:
        windows = SeekingWindows(self.log_mel.whole(samples), self.tokens.timestamp_begin)
        stats: list[np.ndarray] = []
        while not windows.done:
            if request.is_cancelled():
                raise serving.Cancelled()
            mel, frames = windows.next_window()
            encoded = await _infer(
                "whisper_encoder",
                [pb_utils.Tensor("MEL", mel[None, None].numpy())],
                ["ENCODER_STATES", "ASSISTANT_STATES"],
            )
            layout = np.array([[[0, frames * HOP_LENGTH, 0, 0]]], dtype=np.int64)
            options_bytes = np.array([[serving.encode_options(options)]], dtype=np.object_)
            decoded = await _infer(
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

    async def execute(self, requests: list) -> list:
        responses, prepared = serving.parse_each(pb_utils, requests, self._prepare)
        indices = list(prepared)
        # Concurrently: each recording's next window joins the others' in the encoder's and decoder's batches.
        outcomes = await asyncio.gather(
            *(self._transcribe(requests[i], *prepared[i]) for i in indices), return_exceptions=True
        )
        for i, outcome in zip(indices, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                responses[i] = serving.error_response(pb_utils, outcome)
            else:
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outcome.items()])
        return responses
