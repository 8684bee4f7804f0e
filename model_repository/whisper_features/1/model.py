"""Step 1 of `whisper`: validate each request, cut its audio into 30 s windows, log-mel every window."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from spec_whisper import serving
from spec_whisper.features import LogMelSpectrogram


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.start_instance(args)
        self.requests = serving.AudioRequests(params, args["model_repository"])
        device = serving.device_for(args["model_instance_kind"], args["model_instance_device_id"])
        self.log_mel = LogMelSpectrogram(self.requests.n_mels, device=device)

    def _prepare(self, request) -> tuple[list[np.ndarray], list[pb_utils.Tensor]]:
        samples, options = self.requests.read(partial(_input, request))
        windows = serving.windows_for(samples)
        seconds, layout = serving.window_arrays(windows)
        tensors = [
            pb_utils.Tensor("WINDOWS", seconds[None]),
            pb_utils.Tensor("WINDOW_SAMPLES", layout[None]),
            pb_utils.Tensor("OPTIONS", np.array([[serving.encode_options(options)]], dtype=np.object_)),
        ]
        return [samples[w.start : w.end] for w in windows], tensors

    def execute(self, requests: list) -> list:
        responses, prepared = serving.parse_each(pb_utils, requests, self._prepare)
        clips = [clip for windows, _ in prepared.values() for clip in windows]
        ready = [(i, len(windows), tensors) for i, (windows, tensors) in prepared.items()]
        try:
            # Every window of every request in one batched STFT; the per-request slices are views.
            mel = self.log_mel.from_pcm(clips) if clips else torch.empty(0)
        except Exception as exc:
            for i, _, _ in ready:
                responses[i] = serving.error_response(pb_utils, exc)
            return responses
        start = 0
        for i, count, tensors in ready:
            rows = mel[start : start + count].unsqueeze(0).contiguous()
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor.from_dlpack("MEL", torch.to_dlpack(rows)), *tensors]
            )
            start += count
        return responses
