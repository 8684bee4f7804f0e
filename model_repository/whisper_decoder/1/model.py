"""Step 3 of `whisper`: decode every window of every batched request (per-row options), merge windows."""

from __future__ import annotations

import json

import torch
import triton_python_backend_utils as pb_utils

from spec_whisper import serving
from spec_whisper.engine import SpeculativeWhisper

COUNTERS = {
    "drafted_tokens": "tokens the assistant drafted",
    "accepted_tokens": "drafted tokens the main model accepted",
    "main_decoder_passes": "forward passes of the main decoder",
    "windows": "30 s windows decoded",
}
RATE_HELP = "accepted / drafted tokens of the last request that drafted"


def _input(request, name: str) -> torch.Tensor:
    # A zero-copy view of the request's shared-memory (or GPU) buffer.
    return torch.from_dlpack(pb_utils.get_input_tensor_by_name(request, name).to_dlpack())


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        params = serving.parameters(json.loads(args["model_config"]))
        device = serving.device_for(args["model_instance_kind"], args["model_instance_device_id"])
        settings = serving.engine_arguments(params, args["model_repository"])
        self.engine = SpeculativeWhisper.load(**settings, device=device)
        # Custom metrics on Triton's metrics port, next to its own per-model counters.
        family, labels = (
            pb_utils.MetricFamily,
            {"model": args["model_name"], "version": args["model_version"]},
        )
        self.families = {
            k: family(f"spec_whisper_{k}_total", text, family.COUNTER) for k, text in COUNTERS.items()
        }
        self.families["rate"] = family("spec_whisper_acceptance_rate", RATE_HELP, family.GAUGE)
        self.metrics = {k: f.Metric(labels=labels) for k, f in self.families.items()}

    def _rows(self, request) -> serving.RequestRows:
        if request.is_cancelled():
            raise serving.Cancelled()
        options = serving.decode_options(pb_utils.get_input_tensor_by_name(request, "OPTIONS").as_numpy())
        self.engine.check_language(options.language)
        layout = pb_utils.get_input_tensor_by_name(request, "WINDOW_SAMPLES").as_numpy()
        states, own = _input(request, "ENCODER_STATES"), _input(request, "ASSISTANT_STATES")
        return serving.request_rows(states, own, layout, options)

    def _count(self, stats: list[int], windows: int) -> None:
        drafted, accepted, passes = stats
        self.metrics["drafted_tokens"].increment(drafted)
        self.metrics["accepted_tokens"].increment(accepted)
        self.metrics["main_decoder_passes"].increment(passes)
        self.metrics["windows"].increment(windows)
        if drafted:
            self.metrics["rate"].set(accepted / drafted)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        batch: dict[int, serving.RequestRows] = {}
        for i, request in enumerate(requests):
            try:
                batch[i] = self._rows(request)
            except Exception as exc:  # one bad request fails alone
                responses[i] = serving.error_response(pb_utils, exc)
        outcomes = serving.decode_requests(self.engine, list(batch.values()))
        for i, outcome in zip(batch, outcomes, strict=True):
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                outputs = serving.result_arrays(self.engine, batch[i], outcome)
                self._count(outputs["STATS"][0].tolist(), len(outcome))
                responses[i] = pb_utils.InferenceResponse([pb_utils.Tensor(k, v) for k, v in outputs.items()])
            except Exception as exc:
                responses[i] = serving.error_response(pb_utils, exc)
        return responses

    def finalize(self) -> None:
        # Metrics must be released before their families (the backend refuses the other order).
        self.metrics.clear()
        self.families.clear()
