"""The CTranslate2 -> Hugging Face conversion of the packaged whisper-base is exact.

Proof on real speech: transformers' greedy ``generate()`` on the converted model emits the same tokens,
token for token, as CTranslate2 running the original model.bin; the vocabulary and the special/timestamp
ids agree with CTranslate2's vocabulary.txt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from spec_whisper.ct2_convert import (
    convert_packaged_whisper_base,
    packaged_whisper_base_ct2_dir,
    read_vocabulary,
    sinusoids,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# Same default and override as tests/conftest.py: /work/main -> /work/shared/data/speech.
SPEECH_DIR = Path(os.environ.get("SPEECH_DATA_DIR", REPO.parent / "shared" / "data" / "speech"))
# (corpus, language, n-th clip of that corpus/language in manifest order)
CLIPS = [("librispeech", "en", i) for i in range(4)] + [
    ("fleurs", lang, 0) for lang in ("de", "fr", "es", "pt")
]


@pytest.fixture(scope="session")
def hf_dir() -> Path:
    return convert_packaged_whisper_base(REPO / "models" / "whisper-base")  # no-op when already there


@pytest.fixture(scope="session")
def ct2_dir() -> Iterator[Path]:
    with packaged_whisper_base_ct2_dir() as path:
        yield path


@pytest.fixture(scope="session")
def hf_model(hf_dir: Path) -> transformers.WhisperForConditionalGeneration:
    model, info = transformers.WhisperForConditionalGeneration.from_pretrained(
        hf_dir, output_loading_info=True
    )
    assert not any(info.values()), f"state dict does not fit the HF model: {info}"
    return model.eval()


@pytest.fixture(scope="session")
def processor(hf_dir: Path) -> transformers.WhisperProcessor:
    return transformers.WhisperProcessor.from_pretrained(hf_dir)


@pytest.fixture(scope="session")
def ct2_model(ct2_dir: Path) -> Any:
    return ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")


@pytest.fixture(scope="session")
def manifest_rows() -> list[dict[str, Any]]:
    if not (SPEECH_DIR / "manifest.jsonl").is_file():
        pytest.fail(f"speech clips not found at {SPEECH_DIR}; set SPEECH_DATA_DIR")
    lines = (SPEECH_DIR / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_vocabulary_matches_ct2(processor: transformers.WhisperProcessor, ct2_dir: Path) -> None:
    vocab = read_vocabulary(ct2_dir)
    tok = processor.tokenizer
    assert len(vocab) == len(tok) == 51865
    assert tok.convert_ids_to_tokens(list(range(len(vocab)))) == vocab


def test_text_encodes_to_the_tokens_whisper_writes(processor: transformers.WhisperProcessor) -> None:
    # The packaged tokenizer.json lost the merge "Ġ t" (restored by the converter): " the" came out as
    # " " + "the", tokens the model never writes.
    tok = processor.tokenizer
    for word in (" the", " to", " they", " that", " and", " noise"):
        assert tok.encode(word, add_special_tokens=False) == tok.convert_tokens_to_ids(["Ġ" + word[1:]])
    text = " The quick brown fox jumps over the lazy dog, then they talk."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text and 220 not in ids  # no lone spaces


def test_special_and_timestamp_ids(hf_model: Any, processor: transformers.WhisperProcessor) -> None:
    tok, gen = processor.tokenizer, hf_model.generation_config
    assert tok.convert_tokens_to_ids(["<|0.00|>", "<|0.02|>", "<|30.00|>"]) == [50364, 50365, 51864]
    assert list(tok.timestamp_ids()) == list(range(50364, 51865))
    # WhisperTokenizer takes the first timestamp id as all_special_ids[-1] + 1.
    assert tok.all_special_ids[-1] == gen.no_timestamps_token_id == 50363
    assert (gen.decoder_start_token_id, gen.eos_token_id, gen.pad_token_id) == (50258, 50257, 50257)
    assert gen.prev_sot_token_id == 50361 and gen.max_length == 448 and gen.is_multilingual
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358}
    assert len(gen.lang_to_id) == 99 and gen.lang_to_id["<|en|>"] == 50259
    assert all(tok.convert_ids_to_tokens(i) == t for t, i in gen.lang_to_id.items())
    assert gen.begin_suppress_tokens == [220, 50257]


def test_model_config_and_weights(hf_model: Any, processor: transformers.WhisperProcessor) -> None:
    cfg = hf_model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.num_mel_bins) == (51865, 512, 80)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (6, 6)
    assert (cfg.encoder_attention_heads, cfg.decoder_attention_heads) == (8, 8)
    assert (cfg.max_source_positions, cfg.max_target_positions) == (1500, 448)
    assert processor.feature_extractor.feature_size == 80
    assert hf_model.dtype == torch.float32
    assert hf_model.proj_out.weight.data_ptr() == hf_model.model.decoder.embed_tokens.weight.data_ptr()
    positions = hf_model.model.encoder.embed_positions.weight.detach()
    torch.testing.assert_close(positions, sinusoids(1500, 512).float(), atol=2e-3, rtol=0)


def _strip(tokens: list[int], prompt: list[int], eos: int) -> list[int]:
    """Drop the forced prompt and the final EOS if present (output conventions differ, not tokens)."""
    tokens = tokens[len(prompt) :] if tokens[: len(prompt)] == prompt else tokens
    return tokens[:-1] if tokens and tokens[-1] == eos else tokens


@pytest.mark.parametrize(("corpus", "language", "nth"), CLIPS, ids=[f"{c}-{lang}{n}" for c, lang, n in CLIPS])
def test_greedy_tokens_match_ctranslate2(
    corpus: str,
    language: str,
    nth: int,
    manifest_rows: list[dict[str, Any]],
    hf_model: Any,
    processor: transformers.WhisperProcessor,
    ct2_model: Any,
) -> None:
    row = [r for r in manifest_rows if r["corpus"] == corpus and r["language"] == language][nth]
    audio, rate = sf.read(SPEECH_DIR / row["path"], dtype="float32")
    assert rate == 16000 and audio.ndim == 1
    features = processor.feature_extractor(audio, sampling_rate=rate, return_tensors="np").input_features
    tok = processor.tokenizer
    prompt = tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    )

    with torch.inference_mode():
        hf_out = hf_model.generate(
            torch.from_numpy(features), language=language, task="transcribe", return_timestamps=False
        )
    ct2_out = ct2_model.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
        [prompt],
        beam_size=1,
        max_length=448,
        suppress_blank=True,
        suppress_tokens=[-1],  # -1: the suppress_ids from CTranslate2's config.json
    )

    hf_tokens = _strip(hf_out[0].tolist(), prompt, tok.eos_token_id)
    ct2_tokens = ct2_out[0].sequences_ids[0]
    assert hf_tokens == ct2_tokens, (tok.decode(hf_tokens), tok.decode(ct2_tokens))
    assert len(ct2_tokens) > 5, tok.decode(ct2_tokens)  # a real transcript, not an empty decode
