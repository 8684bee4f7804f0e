"""Real clips from the shared speech folder, decoded once: what the load tests and benchmarks send.

Free of gevent and Locust, so scripts can import it without monkey-patching their own process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from spec_whisper_client.audio import SAMPLE_RATE, decode_audio

__all__ = [
    "CORPORA",
    "DEFAULT_SPEECH_DIR",
    "Clip",
    "add_pack_option",
    "load_clips",
    "pack_clips",
    "read_manifest",
]

# /work/main/loadtest/clips.py -> /work/shared/data/speech
DEFAULT_SPEECH_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
# Manifest path prefixes of each set; "all" is every short clip (no long-form recordings).
CORPORA = {
    "librispeech": ("librispeech_test_other/",),
    # The speakers the default assistant's distillation holds out (the last two by id): its acceptance
    # on them is what unseen speech gets; on the others it is inflated by training.
    "librispeech-heldout": ("librispeech_test_other/3005/", "librispeech_test_other/3331/"),
    "fleurs": ("fleurs/",),
    "all": ("librispeech_test_other/", "fleurs/"),
    "longform": ("longform/",),  # a 203 s recording: the server cuts it into 30 s windows
}


@dataclass(frozen=True)
class Clip:
    id: str
    language: str
    # The reference transcript from the manifest.
    text: str
    # float32 mono at 16 kHz.
    pcm: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_RATE


def read_manifest(speech_dir: Path) -> list[dict[str, Any]]:
    lines = (speech_dir / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_clips(
    speech_dir: Path,
    corpus: str = "librispeech",
    limit: int | None = None,
    language: str | None = None,
    skip: int = 0,
    pack: float = 0.0,
) -> list[Clip]:
    """The clips of one set (optionally one language), in manifest order, the first `limit` of them
    after the first `skip` (which are not decoded); with `pack`, joined into windows of at most `pack`
    seconds (`pack_clips`)."""
    entries = [
        e
        for e in read_manifest(speech_dir)
        if e["path"].startswith(CORPORA[corpus]) and language in (None, e["language"])
    ][skip:][:limit]
    if not entries:
        raise ValueError(f"no {corpus} clips (language {language}) in {speech_dir / 'manifest.jsonl'}")
    clips = [Clip(e["id"], e["language"], e["text"], decode_audio(speech_dir / e["path"])) for e in entries]
    return pack_clips(clips, pack) if pack else clips


def pack_clips(clips: list[Clip], seconds: float = 30.0, gap_s: float = 0.5) -> list[Clip]:
    """Consecutive clips joined, `gap_s` of silence apart, into windows of at most `seconds`: dense
    windows like a long recording's, whose transcripts are several times a short clip's. A clip
    longer than `seconds` stays a window of its own."""
    gap = np.zeros(round(gap_s * SAMPLE_RATE), dtype=np.float32)
    windows: list[list[Clip]] = []
    for clip in clips:
        current = windows[-1] if windows else []
        joined = sum(c.seconds for c in current) + gap_s * len(current) + clip.seconds
        if current and joined <= seconds and clip.language == current[0].language:
            current.append(clip)
        else:
            windows.append([clip])
    return [
        Clip(
            "+".join(c.id for c in window),
            window[0].language,
            " ".join(c.text for c in window),
            np.concatenate([part for c in window for part in (gap, c.pcm)][1:]),
        )
        for window in windows
    ]


def add_pack_option(parser: Any) -> None:
    """`--pack SECONDS` on an argparse parser or argument group (Locust's too): `load_clips(pack=)`."""
    parser.add_argument(
        "--pack", type=float, default=0.0, metavar="SECONDS",
        help="join consecutive clips, half a second of silence apart, into windows of at most SECONDS "
        "(dense windows, as a long recording's); 0: each clip alone",
    )  # fmt: skip
