"""The engine on every device this machine has: the CPU always, a CUDA GPU where there is one.

Decoding keeps its bookkeeping (sequences, lengths, rows still running) on the host and the
decoders' weights, caches and products on their device; a tensor left on the wrong side fails
only where the two differ. CI has no GPU and runs the CPU cases; `scripts/gpu_check.sh` runs this
file on a GPU machine, where the CUDA cases (fp32 and fp16) join them.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.loading import make_tiny_models
from spec_whisper.types import DecodingOptions

DEVICES = [("cpu", "fp32")]
if torch.cuda.is_available():
    DEVICES += [("cuda", "fp32"), ("cuda", "fp16")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = make_tiny_models(tmp_path_factory.mktemp("tiny"))
    # A decoder-only assistant with a shortlist head (the tokens a tiny model says most often):
    # its token ids live on the host in shortlist.json and must follow the weights to the device.
    listed = paths["decoder_only"].parent / "shortlisted"
    shutil.copytree(paths["decoder_only"], listed)
    (listed / "shortlist.json").write_text(json.dumps({"token_ids": list(range(0, 50257, 7))}))
    return {**paths, "shortlisted": listed}


@pytest.fixture(scope="module")
def noise() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (3, 11, 6, 20)]


def _decode(engine: SpeculativeWhisper, pcm: list[np.ndarray], **options) -> list:
    states = engine.encode(engine.log_mel(pcm))
    max_new = [4, 25, 13, 31]
    return engine.decode(states, [DecodingOptions(max_new_tokens=m, **options) for m in max_new])


def _tokens(engine: SpeculativeWhisper, pcm: list[np.ndarray], **options) -> list[list[int]]:
    return [r.tokens for r in _decode(engine, pcm, **options)]


class _FixedShapePasses:
    """The arithmetic of the passes a CUDA graph records (every cache slot attended), run eagerly."""

    def __init__(self, runner) -> None:
        self.runner = runner

    def run(self, tokens, start, cache):
        device = self.runner.device
        return self.runner.fixed_shape_states(tokens.to(device), start.to(device), cache)


@pytest.mark.parametrize(("device", "precision"), DEVICES)
@pytest.mark.parametrize("assistant", ["decoder_only", "full", "shortlisted"])
def test_speculative_equals_greedy_on_the_device(tiny, noise, device, precision, assistant) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny[assistant], precision=precision, device=device)
    assert engine.main.device.type == device and engine.assistant.device.type == device
    # language=None: the language is detected on the device first.
    greedy = _decode(engine, noise, speculative=False)
    assert [len(r.tokens) for r in greedy] == [4, 25, 13, 31]  # random weights never end early
    for policy in ({"draft_length": 4}, {"draft_length": 2, "adaptive_draft": True}, {}):  # {}: cost model
        speculative = _decode(engine, noise, speculative=True, **policy)
        assert [r.tokens for r in speculative] == [r.tokens for r in greedy], policy
        assert [r.language for r in speculative] == [r.language for r in greedy]
        assert sum(r.stats.main_passes for r in speculative) > 0


@pytest.mark.parametrize(("device", "precision"), DEVICES)
def test_measured_costs_grow_with_the_batch_on_the_device(tiny, device, precision) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"], precision=precision, device=device)
    costs = engine.costs()
    assert np.isfinite(costs.verify).all() and (costs.verify > 0).all()
    assert np.isfinite(costs.draft).all() and (costs.draft > 0).all()
    # Waiting for the device is part of the time: 16 rows x 17 tokens is no cheaper than 1 x 1.
    assert costs.verify[-1, -1] >= costs.verify[0, 0] * 0.9


@pytest.mark.parametrize(("device", "precision"), DEVICES)
def test_passes_over_every_cache_slot_decode_the_same(tiny, noise, device, precision) -> None:
    """CUDA graphs need fixed shapes, so their passes attend over all cache slots, later ones masked.
    Run eagerly on any device, such passes decode as the sliced ones do (fp32) and speculative equals
    greedy over them; recorded and replayed as graphs on a GPU, they give the same tokens again."""
    load = partial(
        SpeculativeWhisper.load, tiny["main"], tiny["decoder_only"], precision=precision, device=device
    )
    fixed = load(cuda_graphs=False)
    for runner in (fixed.main, fixed.assistant):
        runner.graphs = _FixedShapePasses(runner)
    reference = _tokens(fixed, noise, speculative=False)
    assert _tokens(fixed, noise, speculative=True, draft_length=4) == reference
    if precision == "fp32":
        assert _tokens(load(cuda_graphs=False), noise, speculative=False) == reference
    if device == "cuda":
        graphed = load()
        assert graphed.main.graphs is not None and graphed.assistant.graphs is not None
        for _ in range(2):  # a second request may find its cache where the first one's graphs expect it
            assert _tokens(graphed, noise, speculative=False) == reference
            assert _tokens(graphed, noise, speculative=True, draft_length=4) == reference
        assert graphed.main.graphs.replayed > 0 and graphed.assistant.graphs.replayed > 0
    else:
        assert load().main.graphs is None  # graphs are a CUDA feature
