"""spec_whisper.serving without a server: request tensors to options and audio, the decoder's batching.

Lives beside the integration tests because it checks the same contract (docs/api.md) one layer down;
no tritonserver is started here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from spec_whisper import serving
from spec_whisper.audio import AudioError
from spec_whisper.chunking import Window
from spec_whisper.types import DecodingOptions, DecodingStats, Transcription


def _bytes(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def _int(value: int) -> np.ndarray:
    return np.array([[value]], dtype=np.int32)


def test_absent_options_are_the_defaults() -> None:
    assert serving.parse_options() == DecodingOptions()


def test_options_are_parsed_and_round_trip() -> None:
    options = serving.parse_options(
        _bytes(" DE "), _bytes("translate"), np.array([[False]]), _int(4), _int(100)
    )
    assert options == DecodingOptions(
        language="de", task="translate", speculative=False, draft_length=4, max_new_tokens=100
    )
    assert serving.decode_options(np.array([[serving.encode_options(options)]], dtype=np.object_)) == options


def test_empty_language_detects_and_zero_draft_length_lets_the_server_choose() -> None:
    options = serving.parse_options(_bytes(""), None, None, _int(0))
    assert options.language is None and options.draft_length is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": _bytes("summarize")}, "unknown task"),
        ({"max_new_tokens": _int(0)}, "max_new_tokens"),
        ({"draft_length": _int(99)}, "draft_length"),
        ({"language": np.array([[b"en"], [b"de"]], dtype=np.object_)}, "one clip per request"),
        ({"language": np.array([[b"\xff"]], dtype=np.object_)}, "UTF-8"),
    ],
)
def test_bad_options_raise_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        serving.parse_options(**kwargs)


def test_read_audio_needs_exactly_one_input() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        serving.read_audio(None, None, None, 600)
    with pytest.raises(ValueError, match="exactly one"):
        serving.read_audio(np.zeros((1, 10), np.float32), _bytes("x"), None, 600)


def test_read_audio_resamples_pcm_and_rejects_bad_audio() -> None:
    tone = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)[None]
    assert serving.read_audio(tone, None, _int(8000), 600).shape == (16000,)
    with pytest.raises(AudioError, match="non-finite"):
        serving.read_audio(np.full((1, 100), np.nan, np.float32), None, None, 600)
    with pytest.raises(AudioError, match="limit"):
        serving.read_audio(tone, None, _int(4000), 1.0)


def test_window_layout_round_trips() -> None:
    windows = serving.windows_for(np.zeros(16000 * 75, np.float32))
    seconds, layout = serving.window_arrays(windows)
    assert serving.windows_from_array(layout[None]) == windows
    assert seconds[0].tolist() == [0.0, 30.0] and seconds[-1, 1] == 75.0


def _transcription(language: str, drafted: int = 0) -> Transcription:
    return Transcription(
        "", [1], language, DecodingStats(drafted=drafted, accepted=drafted // 2, main_passes=3)
    )


def test_language_is_the_majority_of_windows() -> None:
    assert serving.language_of([_transcription(c) for c in ("de", "en", "en")]) == "en"
    assert serving.language_of([_transcription(c) for c in ("de", "en")]) == "de"


def test_stats_are_summed_over_windows() -> None:
    row = serving.stats_row([_transcription("en", 4).stats, _transcription("en", 6).stats])
    assert row.dtype == np.int64 and row.tolist() == [10, 5, 6]


def test_result_arrays_cut_the_text_into_segments_timed_by_their_windows() -> None:
    class Text:
        def text(self, tokens: list[int]) -> str:
            return " ".join(map(str, tokens))

    windows = serving.windows_for(np.zeros(16000 * 70, np.float32))  # 0-30, 20-50, 40-70 s
    words = list(range(100, 160))
    results = [Transcription("", t, "en", DecodingStats()) for t in (words[:24], words[16:44], words[36:])]
    rows = serving.RequestRows(torch.zeros(3, 1500, 8), None, windows, DecodingOptions())
    out = serving.result_arrays(Text(), rows, results)  # type: ignore[arg-type]
    assert out["TOKENS"].tolist() == [words]
    texts = [t.decode() for t in out["SEGMENT_TEXT"].reshape(-1)]
    assert " ".join(texts) == out["TEXT"].reshape(-1)[0].decode()
    assert out["SEGMENT_TIMES"].shape == (1, 3, 2)
    assert out["SEGMENT_TIMES"][0].tolist() == [[0.0, 25.0], [25.0, 45.0], [45.0, 70.0]]


def test_request_rows_checks_shapes() -> None:
    layout = np.array([[[0, 16000, 0, 0]]], dtype=np.int64)
    rows = serving.request_rows(
        torch.zeros(1, 1, 1500, 8), torch.empty(1, 0, 1, 1), layout, DecodingOptions()
    )
    assert (
        rows.main.shape == (1, 1500, 8)
        and rows.assistant is None
        and rows.windows == [Window(0, 16000, 0, 0)]
    )
    with pytest.raises(ValueError, match="ENCODER_STATES"):
        serving.request_rows(torch.zeros(1, 2, 1500, 8), torch.empty(1, 0, 1, 1), layout, DecodingOptions())


class _Engine:
    """Fails any batch holding a window whose options ask for language "xx"."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.samples: list[list[int]] = []

    def decode(self, states, options):
        self.calls.append(len(options))
        self.samples.append(states.samples.tolist())
        if any(o.language == "xx" for o in options):
            raise ValueError("unknown language 'xx'")
        return [_transcription(o.language or "en") for o in options]


def _rows(windows: int, language: str | None) -> serving.RequestRows:
    return serving.RequestRows(
        torch.zeros(windows, 1500, 8),
        None,
        [Window(0, 1, 0, 0)] * windows,
        DecodingOptions(language=language),
    )


def test_one_failing_request_does_not_fail_the_batch() -> None:
    engine = _Engine()
    outcomes = serving.decode_requests(engine, [_rows(2, "en"), _rows(1, "xx"), _rows(3, None)])  # type: ignore[arg-type]
    assert engine.calls == [6, 2, 1, 3]  # the batch, then one request at a time
    assert [len(o) for o in (outcomes[0], outcomes[2])] == [2, 3]
    assert isinstance(outcomes[1], ValueError)


def test_the_engine_learns_how_much_of_each_window_is_audio() -> None:
    """The assistant attends only to a window's audio and a little past it (`assistant_frames`)."""
    engine = _Engine()
    short, long = _rows(1, "en"), _rows(2, "en")
    short.windows = [Window(0, 48_000, 0, 0)]
    long.windows = [Window(0, 480_000, 0, 16_000), Window(464_000, 520_000, 16_000, 0)]
    serving.decode_requests(engine, [short, long])  # type: ignore[arg-type]
    assert engine.samples == [[48_000, 480_000, 56_000]]


def test_paths_resolve_against_the_folder_holding_the_repository(tmp_path: Path) -> None:
    model_dir = tmp_path / "model_repository" / "whisper_decoder"
    assert serving.resolve_path("models/x", model_dir) == tmp_path / "models" / "x"
    assert serving.resolve_path("/abs/x", model_dir) == Path("/abs/x")
    assert (
        serving.engine_arguments({"main_model": "m", "assistant_model": "none"}, model_dir)["assistant"]
        is None
    )


def test_the_assistant_encoder_setting_is_checked(tmp_path: Path) -> None:
    params = {"main_model": "m", "assistant_model": "a"}
    assert serving.engine_arguments(params, tmp_path)["assistant_encoder"] == "auto"
    assert (
        serving.engine_arguments({**params, "assistant_encoder": " Own"}, tmp_path)["assistant_encoder"]
        == "own"
    )
    with pytest.raises(ValueError, match="assistant_encoder 'separate'"):
        serving.engine_arguments({**params, "assistant_encoder": "separate"}, tmp_path)


def test_the_engine_log_reaches_triton_once() -> None:
    said: list[tuple[str, str]] = []
    logger = SimpleNamespace(
        log_info=lambda m: said.append(("info", m)),
        log_warn=lambda m: said.append(("warn", m)),
        log_error=lambda m: said.append(("error", m)),
    )
    pb_utils = SimpleNamespace(Logger=logger)
    engine_log = logging.getLogger("spec_whisper")
    before = list(engine_log.handlers)
    try:
        serving.log_to_triton(pb_utils)
        serving.log_to_triton(pb_utils)  # a second model in the same process
        logging.getLogger("spec_whisper.engine").info("pass costs timed again for batch sizes %s", [1])
        logging.getLogger("spec_whisper.engine").warning("slow")
        logging.getLogger("spec_whisper.engine").debug("not this")
    finally:
        engine_log.handlers = before
    assert said == [
        ("info", "spec_whisper: pass costs timed again for batch sizes [1]"),
        ("warn", "spec_whisper: slow"),
    ]
