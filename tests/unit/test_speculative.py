"""Speculative decoding equals greedy decoding, token for token, on tiny random-weight models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import WhisperForConditionalGeneration

from spec_whisper import drafters
from spec_whisper.decoder import WhisperDecoderRunner, compaction_order, shared_cross_attention
from spec_whisper.drafters import DraftLengthPolicy
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.loading import make_tiny_models
from spec_whisper.types import DecodingOptions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_tiny_models(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def noise() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(16000 * s)).astype(np.float32) for s in (2, 5, 9, 14, 3, 30)]


def _decode(
    engine: SpeculativeWhisper, pcm: list[np.ndarray], language: str = "en", **options
) -> list[list[int]]:
    states = engine.encode_pcm(pcm)
    max_new = options.pop("max_new", [30] * len(pcm))
    opts = [DecodingOptions(language=language, max_new_tokens=m, **options) for m in max_new]
    return [r.tokens for r in engine.decode(states, opts)]


@pytest.mark.parametrize("assistant", ["decoder_only", "full", "main"])
@pytest.mark.parametrize("draft_length", [1, 4, 7])
def test_speculative_equals_greedy(tiny, noise, assistant: str, draft_length: int) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny[assistant])
    # Different limits per row make rows finish at different steps and leave the batch mid-way.
    max_new = [5, 30, 17, 1, 44, 9]
    greedy = _decode(engine, noise, speculative=False, max_new=list(max_new))
    speculative = _decode(engine, noise, speculative=True, draft_length=draft_length, max_new=list(max_new))
    assert speculative == greedy
    assert [len(t) for t in greedy] == max_new  # random weights never say end-of-text here


def test_batch_rows_equal_single_rows(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"])
    batched = _decode(engine, noise, speculative=True)
    singles = [_decode(engine, [clip], speculative=True)[0] for clip in noise]
    assert batched == singles


@pytest.mark.parametrize("assistant", ["decoder_only", "full"])
def test_the_assistant_attends_to_the_audio_and_two_seconds_past_it(tiny, noise, assistant: str) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny[assistant])
    short = engine.encode_pcm([noise[0], noise[4]])  # 2 s and 3 s: 100 and 150 frames of audio
    assert engine.assistant_frames(short).tolist() == [100 + 100, 150 + 100]
    assert engine.assistant_frames(engine.encode_pcm(noise[4:6])).tolist() == [250, 1500]  # 3 s, 30 s
    assert engine.assistant_frames(engine.encode(engine.log_mel(noise[:1]))) is None  # length unknown
    own = short.assistant if short.assistant is not None else short.main
    main_cache = engine.main.new_cache(short.main)
    frames = engine.assistant_frames(short)
    trimmed, whole = (engine.assistant.new_cache(own, main_cache, f) for f in (frames, None))
    assert {k.shape[2] for k in (*trimmed.cross_k, *trimmed.cross_v)} == {250}  # the batch's most
    assert all(k.is_contiguous() for k in (*trimmed.cross_k, *trimmed.cross_v))
    prompt = torch.tensor([engine.tokens.prompt("en", "transcribe")] * 2)
    at_zero = torch.zeros(2, dtype=torch.long)
    first = engine.assistant.new_cache(own[:1], engine.main.new_cache(short.main[:1]), frames[:1])
    with torch.inference_mode():
        near, far = (engine.assistant.forward(prompt, at_zero, c) for c in (trimmed, whole))
        alone = engine.assistant.forward(prompt[:1], at_zero[:1], first)
    moved = (near[:1] - far[:1]).abs().max()
    assert moved > 0.01  # the drafts come from fewer frames ...
    # ... each row's own, whatever the batch's longest, up to rounding: the attention over 250 frames
    # and over 200 differs in its last bits, which the int8 products' rounding of the activations
    # can turn into a whole step of it (0.0085 here against 0.30 for all frames)
    assert (near[:1] - alone).abs().max() < moved / 10
    options = [DecodingOptions(language="en", max_new_tokens=30, draft_length=4)] * 2
    plain = [replace(o, speculative=False) for o in options]
    speculative = [r.tokens for r in engine.decode(short, options)]
    assert speculative == [r.tokens for r in engine.decode(short, plain)]  # ... and the output is exact


def test_greedy_equals_transformers_generate(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"])
    mel = engine.log_mel(noise[:3])
    ours = [r.tokens for r in engine.decode(engine.encode(mel), [DecodingOptions(max_new_tokens=25)] * 3)]
    reference = WhisperForConditionalGeneration.from_pretrained(tiny["main"])
    out = reference.generate(mel, task="transcribe", max_new_tokens=25, do_sample=False, num_beams=1)
    theirs = [[t for t in row.tolist() if t < 50257] for row in out]
    assert ours == theirs


def test_identical_assistant_accepts_every_draft(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    states = engine.encode(engine.log_mel(noise[:2]))
    options = DecodingOptions(language="en", max_new_tokens=40, draft_length=4, adaptive_draft=False)
    for result in engine.decode(states, [options] * 2):
        assert result.stats.accepted == result.stats.drafted > 0
        # Every pass yields its 4 drafts plus the main model's own token: 40 tokens in 8 passes.
        assert result.stats.main_passes == 8


def test_random_assistant_is_rejected_and_output_unchanged(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"])
    states = engine.encode(engine.log_mel(noise[:1]))
    spec = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=30, draft_length=3)])[0]
    plain = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=30, speculative=False)])[0]
    assert spec.tokens == plain.tokens
    assert spec.stats.acceptance_rate < 0.2
    assert plain.stats.drafted == 0 and plain.stats.main_passes == 30


def test_drafts_that_run_past_max_length_are_cut(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    for limit in (1, 2, 3, 6):
        spec = _decode(engine, noise[:2], speculative=True, draft_length=8, max_new=[limit, limit])
        assert [len(t) for t in spec] == [limit, limit]
        assert spec == _decode(engine, noise[:2], speculative=False, max_new=[limit, limit])


def test_mixed_modes_in_one_batch(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["decoder_only"])
    states = engine.encode(engine.log_mel(noise[:4]))
    options = [
        DecodingOptions(language="en", speculative=True, draft_length=3, max_new_tokens=20),
        DecodingOptions(language="de", speculative=False, max_new_tokens=20),
        DecodingOptions(language=None, speculative=True, draft_length=2, max_new_tokens=20),
        DecodingOptions(language="fr", task="translate", speculative=False, max_new_tokens=20),
    ]
    mixed = engine.decode(states, options)
    for i, opts in enumerate(options):
        alone = engine.decode(states.rows(torch.tensor([i])), [opts])[0]
        assert mixed[i].tokens == alone.tokens
        assert mixed[i].language == alone.language
    assert mixed[1].language == "de"
    assert mixed[0].stats.drafted > 0 and mixed[1].stats.drafted == 0


def test_unknown_language_is_refused(tiny, noise) -> None:
    engine = SpeculativeWhisper.load(tiny["main"])
    states = engine.encode(engine.log_mel(noise[:1]))
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        engine.decode(states, [DecodingOptions(language="xx")])


def test_compaction_order_moves_only_rows_past_the_new_end() -> None:
    finished = torch.tensor([False, True, False, True, False, False])
    order = compaction_order(finished)
    assert order.tolist() == [0, 4, 2, 5]
    assert sorted(order.tolist()) == (~finished).nonzero().flatten().tolist()


def test_adaptive_draft_length_grows_by_two_and_shrinks_by_one() -> None:
    policy = DraftLengthPolicy(batch=1, initial=5, adaptive=True)
    policy.observe(torch.tensor([5]), k=5)
    assert policy.current() == 7
    policy.observe(torch.tensor([2]), k=7)
    assert policy.current() == 6
    fixed = DraftLengthPolicy(batch=1, initial=5, adaptive=False)
    fixed.observe(torch.tensor([0]), k=5)
    assert fixed.current() == 5


def test_shortlist_head_drafts_only_listed_tokens(tiny, noise, tmp_path: Path) -> None:
    import json
    import shutil

    plain = SpeculativeWhisper.load(tiny["main"])
    greedy = _decode(plain, noise[:2], speculative=False)
    used = sorted({t for row in greedy for t in row})
    for listed, expect_all_accepted in ((used, True), ([t for t in range(1000) if t not in used], False)):
        assistant = tmp_path / f"shortlisted-{expect_all_accepted}"
        shutil.copytree(tiny["main"], assistant)
        (assistant / "shortlist.json").write_text(json.dumps({"token_ids": listed}))
        engine = SpeculativeWhisper.load(tiny["main"], assistant)
        assert engine.assistant.shortlist.tolist() == listed
        states = engine.encode(engine.log_mel(noise[:2]))
        results = engine.decode(
            states, [DecodingOptions(language="en", max_new_tokens=30, draft_length=4)] * 2
        )
        assert [r.tokens for r in results] == greedy
        rate = sum(r.stats.accepted for r in results) / sum(r.stats.drafted for r in results)
        assert rate == 1.0 if expect_all_accepted else rate == 0.0


def test_a_batch_of_one_language_drafts_from_that_languages_shortlist(tiny, noise, tmp_path: Path) -> None:
    import json
    import shutil

    plain = SpeculativeWhisper.load(tiny["main"])
    used = {
        lang: sorted({t for row in _decode(plain, noise[:2], speculative=False, language=lang) for t in row})
        for lang in ("en", "de")
    }
    everything_else = [t for t in range(1000) if t not in used["en"] + used["de"]]
    assistant = tmp_path / "by-language"
    shutil.copytree(tiny["main"], assistant)  # the main model itself: right wherever its head may say so
    shortlists = {"token_ids": everything_else, "by_language": {"en": used["en"], "de": used["de"]}}
    (assistant / "shortlist.json").write_text(json.dumps(shortlists))
    engine = SpeculativeWhisper.load(tiny["main"], assistant)
    assert sorted(engine.assistant.language_heads) == ["de", "en"]
    states = engine.encode(engine.log_mel(noise[:2]))

    def acceptance(languages: list[str]) -> float:
        options = [DecodingOptions(language=lang, max_new_tokens=30, draft_length=4) for lang in languages]
        results = engine.decode(states, options)
        expected = [
            _decode(plain, noise[i : i + 1], speculative=False, language=lang)[0]
            for i, lang in enumerate(languages)
        ]
        assert [r.tokens for r in results] == expected
        return sum(r.stats.accepted for r in results) / sum(r.stats.drafted for r in results)

    assert acceptance(["en", "en"]) == 1.0  # English rows draft from the English list
    assert acceptance(["de", "de"]) == 1.0
    assert acceptance(["en", "de"]) == 0.0  # a mixed batch drafts from the shared list
    assert engine.assistant.head_for(["fr"]) is engine.assistant.head


@pytest.mark.parametrize("assistant", ["decoder_only", "full"])
def test_stage_engines_split_the_work_and_the_weights(tiny, noise, assistant: str) -> None:
    whole = SpeculativeWhisper.load(tiny["main"], tiny[assistant], assistant_encoder="own")
    encoder = SpeculativeWhisper.load(
        tiny["main"], tiny[assistant], stages={"encoder"}, assistant_encoder="own"
    )
    decoder = SpeculativeWhisper.load(
        tiny["main"], tiny[assistant], stages={"decoder"}, assistant_encoder="own"
    )
    options = [DecodingOptions(language="en", max_new_tokens=20, draft_length=3)] * 2
    states = encoder.encode(encoder.log_mel(noise[:2]))
    split = [r.tokens for r in decoder.decode(states, options)]
    assert split == [r.tokens for r in whole.decode(whole.encode(whole.log_mel(noise[:2])), options)]

    def parameters(engine: SpeculativeWhisper) -> int:
        models = [engine.models.main, engine.models.assistant]
        return sum(p.numel() for m in models if m is not None for p in m.parameters())

    assert encoder.main is None and decoder.models.main.model.encoder is None
    assert parameters(encoder) + parameters(decoder) < parameters(whole)
    with pytest.raises(RuntimeError, match="without its decoder stage"):
        encoder.decode(states, options)
    with pytest.raises(RuntimeError, match="without its encoder stage"):
        decoder.encode(decoder.log_mel(noise[:2]))
    with pytest.raises(ValueError, match="unknown stages"):
        SpeculativeWhisper.load(tiny["main"], stages={"vocoder"})


@pytest.fixture(scope="module")
def copied_assistant(tiny, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder-only assistant made as the distillation makes one: copies of the main decoder's
    first and last layers (their cross-attention projections unchanged), with a perturbed layer 0."""
    from spec_whisper.distillation.student import init_assistant

    main = WhisperForConditionalGeneration.from_pretrained(tiny["main"])
    assistant = init_assistant(main, layers=(0, -1))
    with torch.no_grad():  # what training does to every weight but the frozen cross-attention keys/values
        layer = assistant.model.decoder.layers[0]
        for p in (*layer.self_attn.parameters(), *layer.fc1.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("copied") / "assistant"
    assistant.save_pretrained(path)
    return path


def test_copied_cross_attention_is_found_and_changed_projections_are_not(tiny, copied_assistant) -> None:
    from transformers import WhisperForCausalLM

    main = WhisperForConditionalGeneration.from_pretrained(tiny["main"]).model.decoder
    assistant = WhisperForCausalLM.from_pretrained(copied_assistant).model.decoder
    assert shared_cross_attention(main, assistant) == [0, 2]
    with torch.no_grad():
        assistant.layers[1].encoder_attn.v_proj.bias.add_(1e-3)
    assert shared_cross_attention(main, assistant) == [0, None]
    random = WhisperForCausalLM.from_pretrained(tiny["decoder_only"]).model.decoder
    assert shared_cross_attention(main, random) == [None]


def test_shared_cross_attention_cache_is_the_main_one_and_drafts_are_unchanged(
    tiny, noise, copied_assistant
) -> None:
    # fp32 assistant products: the comparison below is between two fp32 runs.
    engine = SpeculativeWhisper.load(tiny["main"], copied_assistant, int8_assistant=False)
    assistant = engine.assistant
    assert assistant.cross_from == [0, 2] and all(layer.cross_kv is None for layer in assistant.layers)
    states = engine.encode(engine.log_mel(noise[:3])).main
    with torch.inference_mode():
        main_cache = engine.main.new_cache(states)
        shared = assistant.new_cache(states, main_cache)
        assert shared.cross_k[1] is main_cache.cross_k[2] and shared.cross_v[0] is main_cache.cross_v[0]
        # The same assistant computing its own cross-attention cache drafts the same logits.
        hf = engine.models.assistant
        own = WhisperDecoderRunner(hf.model.decoder, hf.proj_out.weight)
        tokens, start = torch.randint(0, 1000, (3, 4)), torch.tensor([0, 2, 5])
        expected = own.forward(tokens, start, own.new_cache(states))
        torch.testing.assert_close(assistant.forward(tokens, start, shared), expected)
        # Retiring rows compacts the shared tensors once through each cache; the second move is a no-op.
        order = compaction_order(torch.tensor([True, False, False]))
        main_cache, shared = main_cache.select(order), shared.select(order)
        assert torch.equal(shared.cross_k[1], main_cache.cross_k[2])
        torch.testing.assert_close(assistant.forward(tokens[order], start[order], shared), expected[order])
    with pytest.raises(ValueError, match="cross-attention cache"):
        assistant.new_cache(states)


def test_an_int8_assistant_reads_a_bf16_copy_of_the_shared_cross_attention(
    tiny, noise, copied_assistant
) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], copied_assistant)  # int8 products: drafts approximate
    assistant = engine.assistant
    states = engine.encode(engine.log_mel(noise[:3])).main
    with torch.inference_mode():
        main_cache = engine.main.new_cache(states)
        narrow = assistant.new_cache(states, main_cache)
        assert narrow.cross_k[1].dtype == torch.bfloat16 and main_cache.cross_k[2].dtype == torch.float32
        assert torch.equal(narrow.cross_k[1], main_cache.cross_k[2].bfloat16())
        # A copy, so retiring rows must move its rows as well as the main model's.
        order = compaction_order(torch.tensor([True, False, False]))
        main_cache, narrow = main_cache.select(order), narrow.select(order)
        assert torch.equal(narrow.cross_v[0], main_cache.cross_v[0].bfloat16())


def test_speculative_with_a_shared_cross_attention_cache_equals_greedy(tiny, noise, copied_assistant) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], copied_assistant)
    max_new = [5, 30, 17, 1, 44, 9]  # rows leave the batch at different passes
    greedy = _decode(engine, noise, speculative=False, max_new=list(max_new))
    for draft_length in (None, 3):
        assert _decode(engine, noise, draft_length=draft_length, max_new=list(max_new)) == greedy


def test_cost_model_drafts_on_while_the_assistant_is_sure(tiny, noise) -> None:
    """The identical assistant is sure of nothing (random weights: flat distributions), so with
    verification made cheap the cost model still stops each draft after its first token; made
    certain, it drafts on."""
    from spec_whisper.cost_model import BATCHES, TOKENS, DecoderCosts

    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    verify = np.array([[b * (1 + 0.01 * (t - 1)) for t in TOKENS] for b in BATCHES])
    engine._costs = DecoderCosts(verify, np.array([0.05 * b for b in BATCHES], dtype=float))
    states = engine.encode(engine.log_mel(noise[:2]))
    options = [DecodingOptions(language="en", max_new_tokens=30)] * 2
    plain = engine.decode(states, [DecodingOptions(language="en", max_new_tokens=30, speculative=False)] * 2)
    unsure = engine.decode(states, options)
    assert [r.tokens for r in unsure] == [r.tokens for r in plain]
    assert all(r.stats.drafted == r.stats.main_passes for r in unsure)  # one draft per verify pass
    head = engine.assistant.head
    certain = head.draft
    head.draft = lambda states, mask: (certain(states, mask)[0], torch.ones(states.shape[:-1]))
    sure = engine.decode(states, options)
    assert [r.tokens for r in sure] == [r.tokens for r in plain]
    assert all(r.stats.drafted > 2 * r.stats.main_passes for r in sure)


class _PlainThenDrafting:
    """A length policy that decodes plainly for `plain` passes, then drafts 2 tokens a pass, and keeps
    the pass times it is handed."""

    def __init__(self, plain: int) -> None:
        self.plain, self.timed = plain, []

    def current(self) -> int:
        self.plain -= 1
        return 0 if self.plain >= 0 else 2

    def extend(self, drafted: int, chain: list[float], expected: float) -> bool:
        return drafted < 2

    def observe(self, n_accepted, k: int, timed=None) -> None:
        self.timed.append((k, timed))

    def keep(self, rows) -> None:
        pass


def test_catching_up_after_plain_passes_is_left_out_of_the_drafting_price(tiny, noise, monkeypatch) -> None:
    engine = SpeculativeWhisper.load(tiny["main"], tiny["main"])
    policy = _PlainThenDrafting(plain=6)
    monkeypatch.setattr(engine, "length_policy", lambda *args: policy)
    raw = []
    observe = drafters.AssistantDrafter.observe

    def spy(self, n_accepted, k, timed=None):
        raw.append((timed, self._catch_up_s))
        return observe(self, n_accepted, k, timed)

    monkeypatch.setattr(drafters.AssistantDrafter, "observe", spy)
    tokens = _decode(engine, noise[:1], max_new=[30])
    assert tokens == _decode(engine, noise[:1], speculative=False, max_new=[30])
    drafting = [(r, c, t) for (r, c), (k, t) in zip(raw, policy.timed, strict=True) if k]
    (first_raw, caught_up, first), *steady = drafting
    assert caught_up > 0 and first.draft_s == pytest.approx(first_raw.draft_s - caught_up)
    assert steady and all(c == 0 and t.draft_s == r.draft_s for r, c, t in steady)
