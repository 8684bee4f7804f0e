"""Distillation on tiny random-weight models: initialisation, training, resuming, the output directory."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperConfig, WhisperForCausalLM, WhisperForConditionalGeneration

from spec_whisper.distillation import (
    CHECKPOINT_FILE,
    Clip,
    DistilConfig,
    LabelledSet,
    added_parameters,
    build_shortlist,
    distil,
    init_assistant,
    label_clips,
    train,
)
from spec_whisper.distillation.config import default_threads, idle_cores
from spec_whisper.distillation.student import _ffn_within_budget
from spec_whisper.distillation.training import last_hidden_states
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.loading import make_tiny_models
from spec_whisper.types import DecodingOptions

END = 50257
# Random weights never say end-of-text, so tests keep capped transcripts.
CONFIG = DistilConfig(
    steps=6,
    batch_size=3,
    require_end=False,
    max_new_tokens=10,
    train_vocab=300,
    shortlist=200,
    warmup_steps=2,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


def _noise_clips(n: int, heldout: bool, offset: int = 0) -> list[Clip]:
    def load(i: int) -> np.ndarray:
        rng = np.random.default_rng(i)
        return (0.1 * rng.standard_normal(16000 * (2 + i % 4))).astype(np.float32)

    return [
        Clip(f"noise-{i}", "en", "noise", heldout, lambda i=i: load(i)) for i in range(offset, offset + n)
    ]


@pytest.fixture(scope="module")
def labelled(tiny) -> tuple[SpeculativeWhisper, LabelledSet]:
    engine = SpeculativeWhisper.load(tiny["main"])
    return engine, label_clips(engine, _noise_clips(6, False), CONFIG, cache_dir=None)


def _main(tiny) -> WhisperForConditionalGeneration:
    return WhisperForConditionalGeneration.from_pretrained(tiny["main"])


def _fresh(tiny) -> WhisperForCausalLM:
    return init_assistant(_main(tiny), (0, -1))


def _vocab(data: LabelledSet) -> list[int]:
    labels = [x[p:] for x, p in zip(data.inputs, data.prompt_lens, strict=True)]
    return build_shortlist(labels, CONFIG.train_vocab, [END], [], 51865)


def test_init_copies_first_and_last_layers_and_embeddings(tiny) -> None:
    main = WhisperForConditionalGeneration.from_pretrained(tiny["main"])
    assistant = init_assistant(main, (0, -1))
    source, target = main.model.decoder, assistant.model.decoder
    assert len(target.layers) == 2
    for slot, index in ((0, 0), (1, 2)):
        for name, value in source.layers[index].state_dict().items():
            assert torch.equal(target.layers[slot].state_dict()[name], value), name
    assert torch.equal(target.embed_tokens.weight, source.embed_tokens.weight)
    assert torch.equal(target.embed_positions.weight, source.embed_positions.weight)
    assert assistant.proj_out.weight.data_ptr() == target.embed_tokens.weight.data_ptr()


def test_narrower_feed_forward_keeps_whole_units(tiny) -> None:
    main = WhisperForConditionalGeneration.from_pretrained(tiny["main"])
    assistant = init_assistant(main, (1,), ffn_dim=96)
    fc1, kept = main.model.decoder.layers[1].fc1.weight, assistant.model.decoder.layers[0].fc1.weight
    assert kept.shape == (96, fc1.shape[1])
    rows = [int((fc1 == row).all(dim=1).nonzero()) for row in kept]
    assert rows == sorted(rows)  # a subset of the main model's units, in their order


def test_feed_forward_width_fits_the_parameter_budget() -> None:
    # whisper-base's shape without its weights: 2 full layers would add 11.6% to the main model.
    config = WhisperConfig(d_model=512, encoder_layers=6, decoder_layers=6, decoder_ffn_dim=2048)
    config.update({"encoder_ffn_dim": 2048, "encoder_attention_heads": 8, "decoder_attention_heads": 8})
    with torch.device("meta"):
        main = WhisperForConditionalGeneration(config)
        ffn = _ffn_within_budget(main, 2, 0.10)
        assistant = init_assistant(main, (0, -1), ffn)
    assert ffn < 2048 and ffn % 128 == 0
    share = added_parameters(assistant) / sum(p.numel() for p in main.parameters())
    assert 0.09 < share <= 0.10


def test_shortlist_always_holds_end_of_text_and_prompt() -> None:
    labels = [torch.tensor([5, 5, 7, 9, 9, 9]), torch.tensor([7, 3])]
    required = [END, 50258, 50259, 50359, 50363]
    order = build_shortlist(labels, 8, required, excluded=[3], vocab=51865)
    assert order[:5] == required
    # The transcripts' most frequent token, then the lowest BPE id, and so on; the suppressed 3 never.
    assert order[5:8] == [9, 0, 5]
    assert build_shortlist(labels, 11, required, excluded=[3], vocab=51865)[5:] == [9, 0, 5, 1, 7, 2]
    assert build_shortlist(labels, 1, [END], [], 51865) == [END]
    assert len(build_shortlist(labels, 40, [END], [], 51865)) == 40  # filled with low (frequent) BPE ids
    # A language's everyday vocabulary takes the BPE ids' turns; when it runs out, the BPE ids go on.
    general = [700, 9, 3, 600]
    order = build_shortlist(labels, 11, required, excluded=[3], vocab=51865, general=general)
    assert order[5:] == [9, 700, 5, 600, 7, 0]


def test_word_token_order_counts_words_on_the_tokens_whisper_writes() -> None:
    pytest.importorskip("wordfreq")  # the offline extra, which the set-up installs
    from spec_whisper.distillation.vocabulary import single_token_spellings, word_token_order

    # A toy vocabulary: " the" and " house" are single tokens; every other word is spelled by letters.
    single = {0: " the", 1: " house", 2: " The"}
    letters = {chr(c): 10 + c for c in range(32, 127)}
    vocab = 300

    def decode(ids: list[int]) -> str:
        return single.get(ids[0], "?")

    def encode(text: str) -> list[int]:
        # Letters only, never the whole-word tokens (as a tokenizer that lost merges might).
        return [letters[ch] for ch in text if ch in letters]

    spellings = single_token_spellings(decode, vocab)
    assert spellings[" the"] == 0 and spellings[" The"] == 2
    order = word_token_order(spellings, encode, vocab, "en", words=2000)
    # " the" (the most frequent English word) on its own token, above " The" (its capitalised use),
    # above the rarer " house".
    assert order.index(0) < order.index(2) < order.index(1)
    assert order[0] == letters[" "]  # every spelled-out word counts on its space
    assert all(t < vocab for t in order)
    assert word_token_order(spellings, encode, vocab, "xx") == []  # a language wordfreq does not know


def test_training_lowers_the_loss_and_is_deterministic(tiny, labelled) -> None:
    _, data = labelled
    vocab = _vocab(data)
    runs = []
    for _ in range(2):
        assistant = _fresh(tiny)
        before = _full_loss(assistant, data, vocab)
        record = train(assistant, data, vocab, CONFIG, END, progress=False, main=_main(tiny))
        runs.append((before, _full_loss(assistant, data, vocab), assistant.state_dict(), record))
    (before, after, state, record), (_, _, again, _) = runs
    assert record["step"] == CONFIG.steps
    assert after < before
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_resume_continues_from_the_checkpoint(tiny, labelled, tmp_path: Path) -> None:
    _, data = labelled
    vocab = _vocab(data)
    main = _main(tiny)
    straight = _fresh(tiny)
    train(straight, data, vocab, CONFIG, END, progress=False, main=main)

    checkpoint = tmp_path / CHECKPOINT_FILE
    interrupted = _fresh(tiny)
    record = train(
        interrupted,
        data,
        vocab,
        CONFIG,
        END,
        checkpoint,
        checkpoint_every=1,
        progress=False,
        stop_after=2,
        main=main,
    )
    assert record["step"] == 2 and checkpoint.is_file()
    resumed = _fresh(tiny)
    record = train(resumed, data, vocab, CONFIG, END, checkpoint, progress=False, main=main)
    assert record["step"] == CONFIG.steps
    expected = straight.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def test_hidden_state_loss_pulls_the_assistant_towards_the_main_decoder(tiny, labelled) -> None:
    _, data = labelled
    vocab = _vocab(data)
    main = _main(tiny)
    teacher = last_hidden_states(main, data)
    with pytest.raises(ValueError, match="main model"):
        train(_fresh(tiny), data, vocab, CONFIG, END, progress=False)

    def distance(assistant: WhisperForCausalLM) -> float:
        own = last_hidden_states(assistant, data)
        return sum((a - t).pow(2).mean().item() for a, t in zip(own, teacher, strict=True))

    distances = {}
    for weight in (0.0, 1.0):
        assistant = _fresh(tiny)
        config = dataclasses.replace(CONFIG, hidden_weight=weight, steps=20)
        train(assistant, data, vocab, config, END, progress=False, main=main)
        distances[weight] = distance(assistant)
    assert distances[1.0] < 0.9 * distances[0.0]


def test_output_directory_loads_everywhere_and_drafts_exactly(tiny, tmp_path: Path) -> None:
    out = tmp_path / "assistant"
    clips = (_noise_clips(6, False), _noise_clips(2, True, offset=10))
    distil(tiny["main"], out, CONFIG, clips=clips, cache_dir=tmp_path / "cache", progress=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "shortlist.json",
        "README.md",
    } <= names
    stored = json.loads((out / "shortlist.json").read_text())
    shortlist = stored["token_ids"]
    assert END in shortlist and len(shortlist) == CONFIG.shortlist
    # One more per language of the training windows, of the same size.
    assert list(stored["by_language"]) == ["en"]
    assert END in stored["by_language"]["en"] and len(stored["by_language"]["en"]) == CONFIG.shortlist
    summary = json.loads((out / "distillation.json").read_text())
    assert summary["finished"] and summary["training"]["step"] == CONFIG.steps
    assert "acceptance" in (out / "README.md").read_text().lower()

    loaded = WhisperForCausalLM.from_pretrained(out)
    assert loaded.config.decoder_layers == 2

    engine = SpeculativeWhisper.load(tiny["main"], out)
    assert engine.assistant.shortlist.tolist() == sorted(shortlist)
    assert engine.assistant.head_for(["en"]).shortlist.tolist() == stored["by_language"]["en"]
    pcm = [c.load() for c in _noise_clips(3, True, offset=20)]
    states = engine.encode(engine.log_mel(pcm))
    greedy = engine.decode(states, [DecodingOptions(language="en", speculative=False, max_new_tokens=20)] * 3)
    spec = engine.decode(states, [DecodingOptions(language="en", draft_length=4, max_new_tokens=20)] * 3)
    assert [r.tokens for r in spec] == [r.tokens for r in greedy]
    assert sum(r.stats.drafted for r in spec) > 0

    # transformers' own assisted generation accepts it as a decoder-only assistant.
    main = WhisperForConditionalGeneration.from_pretrained(tiny["main"])
    mel = engine.log_mel(pcm[:1])
    kwargs = dict(max_new_tokens=8, do_sample=False, num_beams=1, language="en", task="transcribe")
    assert torch.equal(main.generate(mel, assistant_model=loaded, **kwargs), main.generate(mel, **kwargs))

    # A rerun with the same settings leaves the finished assistant alone.
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    distil(tiny["main"], out, CONFIG, clips=clips, cache_dir=tmp_path / "cache", progress=False)
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def _full_loss(assistant: WhisperForCausalLM, data: LabelledSet, vocab: list[int]) -> float:
    from spec_whisper.distillation.training import _collate, _loss, _targets

    head = assistant.model.decoder.embed_tokens.weight[torch.tensor(vocab)].detach()
    batch = _collate(data, _targets(data, vocab, 51865, END), list(range(len(data.inputs))), END)
    with torch.no_grad():
        return _loss(assistant, head, batch, CONFIG.hard_weight)[0].item()


def test_threads_follow_idle_cores_not_the_load_average() -> None:
    """A core kept busy by another process is seen at once, and never leaves fewer than one thread."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = idle_cores(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    cores = os.cpu_count() or 1
    assert 0.0 <= busy <= cores - 0.5
    assert 1 <= default_threads() <= cores
