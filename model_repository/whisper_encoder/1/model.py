"""Step 2 of `whisper`: encoder states for every window of every batched request, in one batch."""

from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils

from spec_whisper import serving
from spec_whisper.engine import SpeculativeWhisper


def _output(name: str, rows: torch.Tensor) -> pb_utils.Tensor:
    # DLPack hands the tensor over without a numpy round trip; on a GPU instance it stays on the GPU.
    return pb_utils.Tensor.from_dlpack(name, torch.to_dlpack(rows.unsqueeze(0).contiguous()))


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.start_instance(args)
        self.device = serving.device_for(args["model_instance_kind"], args["model_instance_device_id"])
        settings = serving.engine_arguments(params, args["model_repository"])
        turns = serving.core_turns(params, args["model_repository"], self.device)
        # Loading in a turn: the decoder times its passes in one at start-up (`engine.costs`), and Triton
        # loads the models at the same time.
        with turns():
            self.engine = SpeculativeWhisper.load(
                **settings, device=self.device, stages={"encoder"}, turns=turns
            )
        self.per_pass = int(params.get("max_windows_per_pass", "16"))
        if self.engine.device.type == "cpu":  # the path `linear.many_rows_linear` chose at load
            packed = self.engine.main_encoder.layers[0].fc1.packed
            products = "oneDNN's prepacked" if packed else "PyTorch's default (MKL)"
            pb_utils.Logger.log_info(f"spec_whisper: encoder products: {products}")

    def _mel(self, request) -> torch.Tensor:
        # A zero-copy view of the request's shared-memory (or GPU) buffer.
        mel = torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, "MEL").to_dlpack())
        if mel.dim() != 4 or mel.shape[0] != 1 or mel.shape[1] < 1 or mel.shape[2] != self.engine.n_mels:
            raise ValueError(f"MEL must be [1, windows, {self.engine.n_mels}, 3000], got {list(mel.shape)}")
        return mel[0].to(self.device)  # a no-op when the features step ran on this device

    def _encode(self, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Bounded passes keep activation memory flat when several long requests arrive together.
        parts = [
            self.engine.encode(windows[s : s + self.per_pass]) for s in range(0, len(windows), self.per_pass)
        ]
        own = None if parts[0].assistant is None else torch.cat([p.assistant for p in parts])
        return torch.cat([p.main for p in parts]), own

    def execute(self, requests: list) -> list:
        responses, mels = serving.parse_each(pb_utils, requests, self._mel)
        if not mels:
            return responses
        try:
            main, own = self._encode(torch.cat(list(mels.values())))
        except Exception as exc:  # the shared pass failed (e.g. out of memory): fail only its requests
            for i in mels:
                responses[i] = serving.error_response(pb_utils, exc)
            return responses
        start = 0
        for i, mel in mels.items():
            rows = main[start : start + len(mel)]
            # No own assistant states: an empty [0, 1, 1] (the backend rejects DLPack strides of [0, 0, 0]).
            extra = own[start : start + len(mel)] if own is not None else rows.new_empty((0, 1, 1))
            responses[i] = pb_utils.InferenceResponse(
                [_output("ENCODER_STATES", rows), _output("ASSISTANT_STATES", extra)]
            )
            start += len(mel)
        return responses
