"""Stages in separate processes take turns on the cores: a turn excludes every other holder of the
same lock file, the engine's encoder layers and decoder passes are turns, and a failure gives its
turn back."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from spec_whisper import serving
from spec_whisper.core_turns import CoreTurns
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.loading import make_tiny_models
from spec_whisper.types import DecodingOptions


def _is_free(path: Path) -> bool:
    """Whether another open file description could take the lock right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing releases a lock this probe took
    return True


def test_without_a_path_every_turn_is_granted_at_once() -> None:
    turns = CoreTurns()
    with turns(), turns():
        pass
    assert turns.path is None and turns.taken == 0


def test_a_turn_excludes_other_holders_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    mine, other = CoreTurns(path), CoreTurns(path)
    with mine():
        assert not _is_free(path)
    assert _is_free(path)
    with other():
        assert not _is_free(path)
    assert (mine.taken, other.taken) == (1, 1)


def test_a_turn_inside_another_keeps_the_cores_until_the_outer_one_ends(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    turns = CoreTurns(path)
    with turns():
        with turns():
            assert not _is_free(path)
        assert not _is_free(path)  # the inner turn's end did not give the cores away
    assert _is_free(path) and turns.taken == 1


def test_another_process_waits_for_the_turn(tmp_path: Path) -> None:
    path, log = tmp_path / "cores.lock", tmp_path / "log"
    child = textwrap.dedent(
        f"""
        from pathlib import Path
        from spec_whisper.core_turns import CoreTurns
        turns = CoreTurns({str(path)!r})
        with turns():
            Path({str(log)!r}).open("a").write("child\\n")
        """
    )
    turns = CoreTurns(path)
    with turns():
        process = subprocess.Popen([sys.executable, "-c", child])
        try:
            process.wait(timeout=3)  # it cannot finish: the turn is ours
            pytest.fail("the other process ran during our turn")
        except subprocess.TimeoutExpired:
            pass
        log.open("a").write("parent\n")
    assert process.wait(timeout=60) == 0
    assert log.read_text().split() == ["parent", "child"]


def test_a_turn_that_raises_is_given_back(tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    turns = CoreTurns(path)
    with pytest.raises(RuntimeError), turns():
        torch.nn.Linear(2, 2)(torch.zeros(3))  # wrong width
    assert turns.taken == 1 and _is_free(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def test_encoder_layers_and_decoder_passes_are_turns(tiny, tmp_path: Path) -> None:
    path = tmp_path / "cores.lock"
    plain = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"])
    taking = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"], turns=CoreTurns(path))
    pcm = [(0.1 * np.random.default_rng(0).standard_normal(16000 * 4)).astype(np.float32)]
    options = [DecodingOptions(language="en", max_new_tokens=12, draft_length=3)]

    mel = taking.log_mel(pcm)
    with pytest.raises(RuntimeError):  # inside the first convolution's turn: one mel bin too many
        taking.encode(torch.cat([mel, mel[:, :1]], dim=1))
    assert _is_free(path)
    before = taking.turns.taken
    states = taking.encode(mel)
    assert taking.main_encoder is not None
    # Two convolutions and every layer.
    assert taking.turns.taken - before == 2 + len(taking.main_encoder.layers)
    before = taking.turns.taken
    [result] = taking.decode(states, options)
    # One turn per main pass, one per cross-attention cache (main, assistant).
    assert taking.turns.taken - before == result.stats.main_passes + 2
    assert _is_free(path)
    assert result.tokens == plain.decode(plain.encode(plain.log_mel(pcm)), options)[0].tokens


def test_serving_takes_turns_per_repository_on_cpu_only(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    encoder, decoder = repository / "whisper_encoder", repository / "whisper_decoder"
    elsewhere = tmp_path / "other_repository" / "whisper_decoder"
    auto: dict[str, str] = {}
    assert serving.core_turns(auto, encoder, "cpu").path == serving.core_turns(auto, decoder, "cpu").path
    assert serving.core_turns(auto, encoder, "cpu").path != serving.core_turns(auto, elsewhere, "cpu").path
    assert serving.core_turns(auto, encoder, "cuda:0").path is None
    assert serving.core_turns({"cpu_turns": "off"}, encoder, "cpu").path is None
    named = serving.core_turns({"cpu_turns": str(tmp_path / "mine.lock")}, encoder, "cpu")
    assert named.path == tmp_path / "mine.lock"
