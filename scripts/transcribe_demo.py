"""Start Triton on the model repository, transcribe a real clip over gRPC, print the result, stop.

    python scripts/prepare_models.py --offline   # once: whisper-base + assistant, no network
    python scripts/transcribe_demo.py            # a LibriSpeech clip, speculation on and off
    python scripts/transcribe_demo.py --clip my.wav --language de
    python scripts/transcribe_demo.py --url localhost:8001   # use a server that is already running

The clip is sent as file bytes (`AUDIO_FILE`), so any WAV/FLAC/OGG/MP3 works. It is transcribed
twice, with speculative decoding and with the main model alone: the text is the same, the stats and
the time differ.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import DEFAULT_REPOSITORY, PROJECT_ROOT, TritonServer  # scripts/ is not a package

SPEECH_DIR = Path(os.environ.get("SPEECH_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data" / "speech"))
DEFAULT_CLIP = SPEECH_DIR / "librispeech_test_other/1688/1688-142285-0000.flac"


def configured_main_model(repository: Path) -> Path:
    """The main model directory the repository's decoder will load (see prepare_models.py)."""
    config = (repository / "whisper_decoder" / "config.pbtxt").read_text()
    value = re.search(r'key:\s*"main_model"\s*value:\s*{\s*string_value:\s*"([^"]*)"', config)
    path = Path(value.group(1) if value else "")
    return path if path.is_absolute() else repository.resolve().parent / path


@contextlib.contextmanager
def server_url(url: str | None, repository: Path) -> Iterator[str]:
    if url:
        yield url
        return
    print(f"starting tritonserver on {repository} (loading the models takes a while) ...", flush=True)
    began = time.perf_counter()
    with TritonServer(repository, http_port=0, grpc_port=0, metrics_port=0) as server:
        print(f"ready in {time.perf_counter() - began:.0f} s at {server.grpc_url}", flush=True)
        yield server.grpc_url


def transcribe(client, data: bytes, language: str | None, speculative: bool) -> tuple[dict, float]:
    import tritonclient.grpc as grpcclient

    tensors = {"AUDIO_FILE": (np.array([[data]], dtype=np.object_), "BYTES")}
    tensors["SPECULATIVE"] = (np.array([[speculative]]), "BOOL")
    if language:
        tensors["LANGUAGE"] = (np.array([[language.encode()]], dtype=np.object_), "BYTES")
    inputs = []
    for name, (array, dtype) in tensors.items():
        inputs.append(grpcclient.InferInput(name, list(array.shape), dtype))
        inputs[-1].set_data_from_numpy(array)
    began = time.perf_counter()
    response = client.infer("whisper", inputs, client_timeout=600)
    elapsed = time.perf_counter() - began
    names = ("TEXT", "TOKENS", "LANGUAGE_USED", "STATS", "WINDOWS")
    return {name: response.as_numpy(name)[0] for name in names}, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="audio file to transcribe")
    parser.add_argument("--language", help="ISO 639-1 code; detected when omitted")
    parser.add_argument("--url", help="gRPC host:port of a running server; default: start one")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    args = parser.parse_args(argv)

    if not args.clip.is_file():
        parser.error(f"no clip at {args.clip}; pass --clip or set SPEECH_DATA_DIR")
    if not args.url and not (configured_main_model(args.repository) / "config.json").is_file():
        print(
            f"the repository's main model {configured_main_model(args.repository)} is missing; "
            "run: python scripts/prepare_models.py --offline",
            file=sys.stderr,
        )
        return 2
    import tritonclient.grpc as grpcclient

    data = args.clip.read_bytes()
    with server_url(args.url, args.repository) as url, grpcclient.InferenceServerClient(url) as client:
        print(f"clip: {args.clip}")
        texts = []
        for speculative in (True, False):
            result, elapsed = transcribe(client, data, args.language, speculative)
            drafted, accepted, passes = (int(v) for v in result["STATS"])
            rate = f"{accepted / drafted:.0%}" if drafted else "n/a"
            texts.append(result["TEXT"][0].decode())
            language = result["LANGUAGE_USED"][0].decode()
            print(
                f"\nspeculative={speculative}: {elapsed:.2f} s, language {language}, "
                f"{len(result['WINDOWS'])} window(s), {len(result['TOKENS'])} tokens\n"
                f"  drafted {drafted}, accepted {accepted} ({rate}), main decoder passes {passes}\n"
                f"  {texts[-1]}"
            )
        print("\nsame text with and without speculation:", texts[0] == texts[1])
    return 0 if texts[0] == texts[1] else 1


if __name__ == "__main__":
    sys.exit(main())
