"""The server answers as docs/api.md says: health, model metadata, and a transcript over gRPC and HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tritonclient.http as httpclient
from triton_helpers import grpcclient, inputs, parse, words

pytestmark = pytest.mark.integration

# 2.8 s: "YOU DON'T MEAN THAT YOU THOUGHT ME SO SILLY"
CLIP = "librispeech_test_other/1688/1688-142285-0002.flac"
MODELS = ("whisper", "whisper_features", "whisper_encoder", "whisper_decoder")
INPUTS = {
    "AUDIO": "FP32",
    "AUDIO_FILE": "BYTES",
    "SAMPLE_RATE": "INT32",
    "LANGUAGE": "BYTES",
    "TASK": "BYTES",
    "SPECULATIVE": "BOOL",
    "DRAFT_LENGTH": "INT32",
    "MAX_NEW_TOKENS": "INT32",
}
OUTPUTS = {
    "TEXT": "BYTES",
    "TOKENS": "INT32",
    "LANGUAGE_USED": "BYTES",
    "STATS": "INT64",
    "WINDOWS": "FP32",
    "SEGMENT_TEXT": "BYTES",
    "SEGMENT_TIMES": "FP32",
}


def test_live_ready_and_every_model_ready(triton_url: str) -> None:
    with grpcclient.InferenceServerClient(triton_url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        for model in MODELS:
            assert client.is_model_ready(model), model


def test_metadata_matches_the_contract(triton_url: str) -> None:
    with grpcclient.InferenceServerClient(triton_url) as client:
        metadata = client.get_model_metadata("whisper", as_json=True)
        config = client.get_model_config("whisper", as_json=True)["config"]
    assert {t["name"]: t["datatype"] for t in metadata["inputs"]} == INPUTS
    assert {t["name"]: t["datatype"] for t in metadata["outputs"]} == OUTPUTS
    # A leading batch dimension on everything, and every input optional except that one audio input is needed.
    assert int(config["max_batch_size"]) > 0
    assert all(t.get("optional") for t in config["input"])


def test_grpc_pcm_request(triton_url: str, speech_dir: Path) -> None:
    pcm, rate = sf.read(speech_dir / CLIP, dtype="float32")
    with grpcclient.InferenceServerClient(triton_url) as client:
        result = parse(client.infer("whisper", inputs(audio=pcm, sample_rate=rate)))
    assert words(result.text) == "you don't mean that you thought me so silly"
    assert result.language == "en"
    assert result.tokens and all(t < 50257 for t in result.tokens)  # text tokens only
    np.testing.assert_allclose(result.windows, [[0.0, len(pcm) / rate]], atol=1e-3)
    drafted, accepted, passes = result.stats
    assert 0 <= accepted <= drafted and passes >= 1


def test_http_file_request_matches_grpc(triton_url: str, triton_http_url: str, speech_dir: Path) -> None:
    data = (speech_dir / CLIP).read_bytes()
    with grpcclient.InferenceServerClient(triton_url) as client:
        over_grpc = parse(client.infer("whisper", inputs(audio_file=data, language="en")))
    client = httpclient.InferenceServerClient(triton_http_url)
    try:
        assert client.is_server_ready()
        over_http = parse(client.infer("whisper", inputs(httpclient, audio_file=data, language="en")))
    finally:
        client.close()
    assert over_http.tokens == over_grpc.tokens
    assert over_http.text == over_grpc.text
    assert words(over_http.text) == "you don't mean that you thought me so silly"
