"""`spec-whisper`: transcribe files with a Triton server, or check that it is ready.

Thin on purpose: argparse in, WhisperClient calls, formatting out. All behaviour worth testing
lives in the library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .client import WhisperClient
from .errors import ClientError, DeadlineExceeded, InvalidRequest, ServerUnavailable
from .results import TranscriptionResult
from .subtitles import to_srt, to_vtt

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_DEADLINE = 4
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  every file was transcribed (health: the server and model are ready)
  {EXIT_FAILED}  some files failed (bad audio, unknown language, ...); the others were written
  {EXIT_USAGE}  usage error (bad option, several srt/vtt files without --output, ...)
  {EXIT_UNAVAILABLE}  the server is unreachable, not ready, or does not serve the model
  {EXIT_DEADLINE}  a request ran past --timeout (after retries)
  Mixed failures exit with the first that applies of {EXIT_UNAVAILABLE}, {EXIT_DEADLINE}, {EXIT_FAILED}."""

MAIN_EPILOG = f"""\
examples:
  spec-whisper health --url localhost:8001
  spec-whisper transcribe talk.flac
  spec-whisper transcribe --language de --format srt --output subs/ *.mp3
  spec-whisper transcribe --format json --concurrency 16 clips/*.ogg > results.jsonl

{EXIT_CODES}
"""

TRANSCRIBE_EPILOG = f"""\
output:
  Without --output, results go to stdout: text prints the transcript (one file) or
  "FILE<TAB>TRANSCRIPT" lines (several files); json prints one JSON object per line
  (failed files become {{"file", "error", "error_type", "status"}} objects). srt and vtt
  need --output when there is more than one file.
  With --output DIR, each FILE is written to DIR/<FILE stem>.<txt|json|srt|vtt>.

subtitles:
  One cue per segment of the result. From the `whisper` ensemble a segment is the stretch of the
  transcript one 30 s window contributed, timed by the audio only that window covers (about one
  cue per 20 s); with --model whisper_long, Whisper's own segments, timed by its timestamp tokens
  (a cue per phrase).

examples:
  spec-whisper transcribe talk.flac
  spec-whisper transcribe --language en --no-speculative talk.flac
  spec-whisper transcribe --format vtt --output subs/ a.mp3 b.ogg
  spec-whisper transcribe --send-file-bytes --timeout 60 --concurrency 16 long/*.flac

{EXIT_CODES}
"""

EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.headers = _parse_headers(parser, args.header)
    try:
        if args.command == "health":
            return _health(parser, args)
        return _transcribe(parser, args)
    except KeyboardInterrupt:
        print("spec-whisper: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("server")
    group.add_argument("--url", default="localhost:8001", help="gRPC host:port (default: %(default)s)")
    group.add_argument("--model", default="whisper", help="model name (default: %(default)s)")
    group.add_argument("--ssl", action="store_true", help="use TLS (implied by the three PEM options)")
    group.add_argument("--root-certificates", metavar="PEM", help="CA bundle to verify the server (TLS)")
    group.add_argument("--private-key", metavar="PEM", help="client key for mutual TLS")
    group.add_argument("--certificate-chain", metavar="PEM", help="client certificate chain for mutual TLS")
    group.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="gRPC metadata for every call; repeatable",
    )

    parser = argparse.ArgumentParser(
        prog="spec-whisper",
        description="Transcribe audio with Whisper (exact speculative decoding) on a Triton server.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    health = commands.add_parser(
        "health",
        parents=[connection],
        help="check that the server and model are ready",
        description="Check that the server is live and ready and that the model is loaded.",
        epilog=f"exit codes:\n  {EXIT_OK}  ready\n  {EXIT_UNAVAILABLE}  not reachable or not ready",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    health.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="probe deadline in seconds (default: %(default)s)",
    )

    transcribe = commands.add_parser(
        "transcribe",
        parents=[connection],
        help="transcribe audio files",
        description="Transcribe WAV/FLAC/OGG/MP3 files, concurrently so that the server batches them.",
        epilog=TRANSCRIBE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    transcribe.add_argument("files", nargs="+", metavar="FILE", help="audio files")
    transcribe.add_argument("--language", help="ISO 639-1 code such as en or de (default: detect)")
    transcribe.add_argument(
        "--task",
        choices=("transcribe", "translate"),
        default="transcribe",
        help="translate produces English (default: %(default)s)",
    )
    transcribe.add_argument(
        "--no-speculative",
        dest="speculative",
        action="store_false",
        help="run the main model alone (same transcript, slower; for comparison)",
    )
    transcribe.add_argument(
        "--draft-length",
        type=_non_negative_int,
        metavar="N",
        help="tokens drafted per pass (default: server)",
    )
    transcribe.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        metavar="N",
        help="token limit per 30 s window (default: server)",
    )
    transcribe.add_argument(
        "--concurrency",
        type=_positive_int,
        default=8,
        metavar="N",
        help="requests in flight (default: %(default)s)",
    )
    transcribe.add_argument(
        "--format", choices=tuple(EXTENSIONS), default="text", help="output format (default: %(default)s)"
    )
    transcribe.add_argument("--output", type=Path, metavar="DIR", help="write one file per input into DIR")
    transcribe.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="deadline per request attempt in seconds (default: none)",
    )
    transcribe.add_argument(
        "--retries",
        type=_non_negative_int,
        default=3,
        metavar="N",
        help="retries on transient errors (default: 3)",
    )
    transcribe.add_argument(
        "--send-file-bytes",
        action="store_true",
        help="send the files as they are for the server to decode (default: decode here, send 16 kHz PCM)",
    )
    transcribe.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and there are several files)",
    )
    return parser


def _client(parser: argparse.ArgumentParser, args: argparse.Namespace, **settings: Any) -> WhisperClient:
    try:
        return WhisperClient(
            args.url,
            args.model,
            ssl=args.ssl or any((args.root_certificates, args.private_key, args.certificate_chain)),
            root_certificates=args.root_certificates,
            private_key=args.private_key,
            certificate_chain=args.certificate_chain,
            headers=args.headers,
            **settings,
        )
    except FileNotFoundError as error:  # a TLS file that does not exist
        parser.error(str(error))


def _health(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    with _client(parser, args, retries=0) as client:
        status = client.health(args.timeout)
    print(f"server   {args.url}")
    print(f"live     {_yes(status.server_live)}")
    print(f"ready    {_yes(status.server_ready)}")
    print(f"model    {args.model} {'ready' if status.model_ready else 'not ready'}")
    if status.error:
        print(f"spec-whisper: {status.error}", file=sys.stderr)
    return EXIT_OK if status.ok else EXIT_UNAVAILABLE


def _transcribe(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_outputs(parser, args)
    progress = args.progress
    if progress is None:
        progress = sys.stderr.isatty() and len(args.files) > 1
    with _client(parser, args, retries=args.retries, timeout_s=args.timeout) as client:
        # One probe up front: a wrong --url or a model still loading should fail in a second with
        # one clear message, not after every file has gone through its retries.
        status = client.health()
        if not status.ok:
            print(f"spec-whisper: {args.url}: {status.error}", file=sys.stderr)
            return EXIT_UNAVAILABLE
        try:
            results = client.transcribe_many(
                args.files,
                concurrency=args.concurrency,
                progress=progress,
                language=args.language,
                task=args.task,
                speculative=args.speculative,
                draft_length=args.draft_length,
                max_new_tokens=args.max_new_tokens,
                send_file_bytes=args.send_file_bytes,
            )
        except InvalidRequest as error:
            parser.error(str(error))
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
    for file, result in zip(args.files, results, strict=True):
        _emit(args, file, result)
    return _exit_code([result for result in results if isinstance(result, ClientError)])


def _parse_headers(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    headers = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--header expects KEY=VALUE, got {item!r}")
        headers[key.strip().lower()] = value  # gRPC rejects metadata keys with capitals
    return headers


def _check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.output is None:
        if args.format in ("srt", "vtt") and len(args.files) > 1:
            parser.error(f"--format {args.format} with several files needs --output DIR")
        return
    seen: dict[Path, str] = {}
    for file in args.files:
        target = _target(args, file)
        if target in seen:
            parser.error(f"{seen[target]} and {file} would both be written to {target}")
        seen[target] = file


def _target(args: argparse.Namespace, file: str) -> Path:
    return args.output / f"{Path(file).stem}.{EXTENSIONS[args.format]}"


def _emit(args: argparse.Namespace, file: str, result: TranscriptionResult | ClientError) -> None:
    if isinstance(result, ClientError):
        print(f"spec-whisper: {file}: {result}", file=sys.stderr)
        if args.format == "json" and args.output is None:
            record = {"file": file, "error": result.message, "error_type": type(result).__name__}
            print(json.dumps({**record, "status": result.status}, ensure_ascii=False))
        return
    if args.output is not None:
        with open(_target(args, file), "w", encoding="utf-8") as stream:
            _write(stream, args.format, file, result, several=False)
    else:
        _write(sys.stdout, args.format, file, result, several=len(args.files) > 1)


def _write(stream: TextIO, fmt: str, file: str, result: TranscriptionResult, *, several: bool) -> None:
    if fmt == "json":
        stream.write(json.dumps({"file": file, **result.to_dict()}, ensure_ascii=False) + "\n")
    elif fmt == "srt":
        stream.write(to_srt(result))
    elif fmt == "vtt":
        stream.write(to_vtt(result))
    else:
        text = result.text.strip()
        stream.write(f"{file}\t{text}\n" if several else text + "\n")


def _exit_code(errors: list[ClientError]) -> int:
    if any(isinstance(error, ServerUnavailable) for error in errors):
        return EXIT_UNAVAILABLE
    if any(isinstance(error, DeadlineExceeded) for error in errors):
        return EXIT_DEADLINE
    return EXIT_FAILED if errors else EXIT_OK


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _positive_int(text: str) -> int:
    return _bounded(text, int, 1, "an integer >= 1")


def _non_negative_int(text: str) -> int:
    return _bounded(text, int, 0, "an integer >= 0")


def _positive_float(text: str) -> float:
    value = _bounded(text, float, 0.0, "a number > 0")
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _bounded(text: str, kind: type[int] | type[float], low: float, expected: str) -> Any:
    # argparse would otherwise say "invalid _positive_int value", naming our helper.
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low or value != value:  # value != value catches NaN
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


if __name__ == "__main__":
    sys.exit(main())
