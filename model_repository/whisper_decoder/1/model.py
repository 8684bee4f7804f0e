"""Step 3 of `whisper`: decode every window of every batched request (per-row options), merge windows."""

from __future__ import annotations

import torch
import triton_python_backend_utils as pb_utils

from spec_whisper import serving
from spec_whisper.engine import SpeculativeWhisper


def _input(request, name: str) -> torch.Tensor:
    # A zero-copy view of the request's shared-memory (or GPU) buffer.
    return torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        serving.log_to_triton(pb_utils)
        params = serving.start_instance(args)
        self.device = serving.device_for(args["model_instance_kind"], args["model_instance_device_id"])
        settings = serving.engine_arguments(params, args["model_repository"])
        turns = serving.core_turns(params, args["model_repository"], self.device)
        self.engine = SpeculativeWhisper.load(**settings, device=self.device, stages={"decoder"}, turns=turns)
        if self.engine.assistant is not None:
            # Timed now rather than during the first request; logged, since they pick the draft lengths.
            costs = self.engine.costs().table.describe()
            pb_utils.Logger.log_info(f"spec_whisper: decoder pass costs timed at start-up: {costs}")
        # Custom metrics on Triton's metrics port, next to its own per-model counters.
        labels = {"model": args["model_name"], "version": args["model_version"]}
        self.metrics = serving.DecoderMetrics(pb_utils, labels)

    def _rows(self, request) -> serving.RequestRows:
        options = serving.decode_options(pb_utils.get_input_tensor_by_name(request, "OPTIONS").as_numpy())
        self.engine.check_language(options.language)
        layout = pb_utils.get_input_tensor_by_name(request, "WINDOW_SAMPLES").as_numpy()
        # A no-op when the encoder ran on this device; a device-to-device copy when it did not.
        states, own = (
            _input(request, name).to(self.device) for name in ("ENCODER_STATES", "ASSISTANT_STATES")
        )
        return serving.request_rows(states, own, layout, options)

    def execute(self, requests: list) -> list:
        responses, batch = serving.parse_each(pb_utils, requests, self._rows)
        waited = self.engine.turns.waited_s
        outcomes = serving.decode_requests(self.engine, list(batch.values()))
        self.metrics.record_turn_wait(self.engine.turns.waited_s - waited)
        for i, outcome in zip(batch, outcomes, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                outputs = serving.result_arrays(self.engine, batch[i], outcome)
                self.metrics.record(outputs["STATS"], len(outcome))
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
            except Exception as exc:
                responses[i] = serving.error_response(pb_utils, exc)
        return responses

    def finalize(self) -> None:
        self.metrics.close()
