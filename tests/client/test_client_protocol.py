"""Request tensors and response parsing against the contract in docs/api.md, without a server."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from fake_triton import Outputs
from spec_whisper_client import ClientError, InvalidRequest
from spec_whisper_client.audio import PreparedAudio
from spec_whisper_client.protocol import RequestOptions, build_inputs, parse_result
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype


def tensors(inputs: list[grpcclient.InferInput]) -> dict[str, tuple[str, list[int], np.ndarray]]:
    """name -> (datatype, shape, values) as the server will see them."""
    seen = {}
    for tensor in inputs:
        raw = tensor._get_content()
        if tensor.datatype() == "BYTES":
            values = deserialize_bytes_tensor(raw)
        else:
            values = np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype()))
        seen[tensor.name()] = (tensor.datatype(), tensor.shape(), values)
    return seen


def test_samples_request_carries_the_same_inputs_whatever_the_options() -> None:
    samples = np.linspace(-0.5, 0.5, 480, dtype=np.float32)
    sent = tensors(build_inputs(PreparedAudio(samples=samples), RequestOptions()))
    # Always the same set, so the dynamic batcher can batch requests with and without options.
    assert list(sent) == ["AUDIO", "SAMPLE_RATE", "LANGUAGE", "TASK", "SPECULATIVE", "DRAFT_LENGTH"]
    assert sent["AUDIO"][:2] == ("FP32", [1, 480])
    np.testing.assert_array_equal(sent["AUDIO"][2], samples)
    assert sent["SAMPLE_RATE"][:2] == ("INT32", [1, 1]) and sent["SAMPLE_RATE"][2].tolist() == [16000]
    assert sent["LANGUAGE"][2].tolist() == [b""]  # empty: the server detects it
    assert sent["TASK"][2].tolist() == [b"transcribe"]
    assert sent["SPECULATIVE"][:2] == ("BOOL", [1, 1]) and sent["SPECULATIVE"][2].tolist() == [True]
    assert sent["DRAFT_LENGTH"][2].tolist() == [0]  # 0: the server chooses


def test_file_request_and_explicit_options() -> None:
    options = RequestOptions(
        language=" DE ", task="translate", speculative=False, draft_length=6, max_new_tokens=100
    )
    sent = tensors(build_inputs(PreparedAudio(file_bytes=b"RIFF...."), options))
    assert list(sent) == ["AUDIO_FILE", "LANGUAGE", "TASK", "SPECULATIVE", "DRAFT_LENGTH", "MAX_NEW_TOKENS"]
    assert sent["AUDIO_FILE"][:2] == ("BYTES", [1, 1]) and sent["AUDIO_FILE"][2].tolist() == [b"RIFF...."]
    assert sent["LANGUAGE"][2].tolist() == [b"de"]
    assert sent["TASK"][2].tolist() == [b"translate"]
    assert sent["SPECULATIVE"][2].tolist() == [False]
    assert sent["DRAFT_LENGTH"][2].tolist() == [6]
    assert sent["MAX_NEW_TOKENS"][:2] == ("INT32", [1, 1]) and sent["MAX_NEW_TOKENS"][2].tolist() == [100]


@pytest.mark.parametrize(
    "options",
    [
        {"task": "summarize"},
        {"language": 7},
        {"draft_length": -1},
        {"draft_length": 2.5},
        {"max_new_tokens": 0},
        {"max_new_tokens": True},
    ],
)
def test_bad_options(options: dict) -> None:
    with pytest.raises(InvalidRequest):
        RequestOptions(**options)


def response(drop: str | None = None) -> grpcclient.InferResult:
    request = service_pb2.ModelInferRequest(model_name="whisper")
    message = Outputs(windows=((0.0, 30.0), (30.0, 47.25))).response(request)
    if drop is not None:
        index = [output.name for output in message.outputs].index(drop)
        del message.outputs[index]
        del message.raw_output_contents[index]
    return grpcclient.InferResult(message)


def test_parse_result() -> None:
    result = parse_result(response(), latency_s=0.25)
    assert result.text == "hello world" and result.language == "en"
    assert result.tokens == (1, 2, 3)
    assert (result.drafted, result.accepted, result.decoder_passes) == (10, 8, 4)
    assert result.windows == ((0.0, 30.0), (30.0, 47.25))
    assert [(s.start, s.end, s.text) for s in result.segments] == [(0.0, 47.25, "hello world")]
    assert result.latency_s == 0.25
    assert result.to_dict()["acceptance_rate"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "name", ["TEXT", "TOKENS", "LANGUAGE_USED", "STATS", "WINDOWS", "SEGMENT_TEXT", "SEGMENT_TIMES"]
)
def test_a_missing_output_is_a_contract_error(name: str) -> None:
    with pytest.raises(ClientError, match=name):
        parse_result(response(drop=name), latency_s=0.0)


def test_acceptance_rate_without_drafting() -> None:
    from spec_whisper_client import TranscriptionResult

    result = TranscriptionResult("x", (1,), "en", 0.1, drafted=0, accepted=0, decoder_passes=2, windows=())
    assert result.acceptance_rate == 0.0
