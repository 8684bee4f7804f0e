"""Step 1 of `whisper`: validate each request, cut its audio into 30 s windows, log-mel every window."""

from __future__ import annotations

import json

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import GenerationConfig

from spec_whisper import serving
from spec_whisper.features import LogMelSpectrogram
from spec_whisper.tokens import SpecialTokens

OPTION_INPUTS = ("LANGUAGE", "TASK", "SPECULATIVE", "DRAFT_LENGTH", "MAX_NEW_TOKENS")


def _input(request, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.parameters(json.loads(args["model_config"]))
        serving.check_backend_numpy(params)
        serving.set_cpu_threads(params)
        main_dir = serving.resolve_path(params["main_model"], args["model_repository"])
        self.max_seconds = float(params.get("max_audio_seconds", "600"))
        device = serving.device_for(args["model_instance_kind"], args["model_instance_device_id"])
        n_mels = json.loads((main_dir / "config.json").read_text())["num_mel_bins"]
        self.log_mel = LogMelSpectrogram(n_mels, device=device)
        # Only the special-token table, no weights: rejects an unknown language before any model runs.
        self.tokens = SpecialTokens.from_generation_config(GenerationConfig.from_pretrained(main_dir))

    def _prepare(self, request) -> tuple[list[np.ndarray], list[pb_utils.Tensor]]:
        options = serving.parse_options(*(_input(request, name) for name in OPTION_INPUTS))
        self.tokens.check_language(options.language)
        samples = serving.read_audio(
            _input(request, "AUDIO"),
            _input(request, "AUDIO_FILE"),
            _input(request, "SAMPLE_RATE"),
            self.max_seconds,
        )
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
