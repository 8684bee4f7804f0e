"""Locust load test of the `whisper` ensemble over gRPC, with real clips from the shared speech set.

    locust -f loadtest/locustfile.py --headless --host 127.0.0.1:8001 -u 4 -r 4 --run-time 60s \
        --stop-timeout 120 --decoding speculative ClipUser

`--model whisper_long` sends the same requests to `whisper_long` (sequential windows that seek on
timestamps; `--corpus longform` for the 203 s recording).

Two users, two ways of reaching a batch of N (docs/api.md takes one clip per request):

- `ClipUser`: one clip per request; N of them running at once leave the batching to Triton's
  dynamic batcher.
- `ClipBatchUser`: one user sends `--clips-per-request` N clips at once, as N concurrent
  single-clip calls over one channel (a client-side batch); its Locust request is the whole batch,
  and its latency lasts until the last of the N answers is back.

`--stage decoder` sends the same clips to the `whisper_decoder` step alone, with the inputs the
ensemble's first two steps gave it, computed once (`--decoder-inputs`, made by
`decoder_stage.compute_decoder_inputs`; scripts/bench_load.py --stage decoder does both): the
decoder's capacity, free of the encoder's pace (see decoder_stage.py).

`--pack SECONDS` sends windows of consecutive clips joined, at most that long (`clips.pack_clips`):
dense speech, as a long recording's 30 s windows hold.

Each Locust request is reported with `response_length` = milliseconds of audio it carried, so
Locust's "average size" reads as audio per request. `--record-file` also writes one JSON line per
request (start time, latency, audio seconds, clip latencies, drafted/accepted tokens, error) for
exact percentiles and real-time factors (scripts/bench_load.py reads it).

Run it with a hard bound: `--run-time` plus `--stop-timeout` (in-flight requests finish, so no
abandoned work leaks into the next measurement) inside an outer `timeout`.
"""

# gevent first: Locust runs users as greenlets, and a gRPC call that blocks the OS thread stalls
# every user. This must run before anything else imports grpc (tritonclient does).
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

import gevent  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from locust.env import Environment  # noqa: E402
from spec_whisper_client import ClientError, TranscriptionResult, WhisperClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clips import CORPORA, DEFAULT_SPEECH_DIR, Clip, add_pack_option, load_clips  # noqa: E402
from decoder_stage import (  # noqa: E402
    DecoderResult,
    DecoderStageClient,
    SharedDecoderInputs,
    load_decoder_inputs,
)

__all__ = ["ClipBatchUser", "ClipUser"]

MODES = {"speculative": (True,), "plain": (False,), "both": (True, False)}


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("spec-whisper")
    group.add_argument(
        "--speech-dir",
        default=os.environ.get("SPEECH_DATA_DIR", str(DEFAULT_SPEECH_DIR)),
        help="folder with manifest.jsonl",
    )
    group.add_argument("--corpus", choices=sorted(CORPORA), default="librispeech")
    group.add_argument("--clip-limit", type=int, default=0, help="use only the first N clips (0: all)")
    add_pack_option(group)
    group.add_argument(
        "--decoding",
        choices=sorted(MODES),
        default="speculative",
        help="SPECULATIVE input of every request; 'both' alternates, reported under separate names",
    )
    group.add_argument("--clips-per-request", type=int, default=4, help="N of ClipBatchUser")
    group.add_argument("--detect-language", action="store_true", help="send no LANGUAGE")
    group.add_argument("--request-timeout", type=float, default=600.0, help="deadline of one call, s")
    group.add_argument("--record-file", default="", help="append one JSON line per request here")
    group.add_argument(
        "--stage",
        choices=["ensemble", "decoder"],
        default="ensemble",
        help="send audio to the whisper ensemble, or saved encoder states to whisper_decoder alone",
    )
    group.add_argument("--decoder-inputs", default="", help=".npz of decoder inputs for --stage decoder")
    group.add_argument(
        "--model",
        choices=["whisper", "whisper_long"],
        default="whisper",
        help="the ensemble, or whisper_long's sequential windows (say --corpus longform for long audio)",
    )


# Shared by every user of this process: the clips (decoded once) and the record file.
_clips: list[Clip] = []
_decoder_inputs: SharedDecoderInputs | None = None
_record: IO[str] | None = None
_user_numbers = itertools.count()


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    global _record, _decoder_inputs
    options = environment.parsed_options
    if options is None:  # used as a library without a command line: nothing to set up
        return
    if options.clips_per_request < 1:
        raise ValueError("--clips-per-request must be at least 1")
    _clips.extend(
        load_clips(Path(options.speech_dir), options.corpus, options.clip_limit or None, pack=options.pack)
    )
    if options.stage == "decoder":
        if not options.decoder_inputs:
            raise ValueError("--stage decoder needs --decoder-inputs")
        saved = load_decoder_inputs(Path(options.decoder_inputs))
        _decoder_inputs = SharedDecoderInputs(environment.host, saved)
    if options.record_file:
        _record = open(options.record_file, "a", encoding="utf-8")  # noqa: SIM115 - closed at quit


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    if _record is not None:
        _record.close()
    if _decoder_inputs is not None:
        _decoder_inputs.close()


class _WhisperUser(User):
    abstract = True
    # Closed loop: the next request leaves as soon as the last one is answered.
    wait_time = constant(0)
    host = "127.0.0.1:8001"
    clips_per_request = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        number = next(_user_numbers)
        # No retries: every failure must show up in the statistics.
        self.whisper = WhisperClient(
            self.host, model=options.model, retries=0, timeout_s=options.request_timeout
        )
        self.decoder = (
            DecoderStageClient(self.host, _decoder_inputs, options.request_timeout)
            if _decoder_inputs is not None
            else None
        )
        self.detect_language = bool(options.detect_language)
        # With --decoding both, odd and even users start on different modes.
        modes = MODES[options.decoding]
        self.modes = itertools.islice(itertools.cycle(modes), number % len(modes), None)
        # Users start at different clips so concurrent requests carry different audio.
        start = (number * 7) % len(_clips)
        self.clips = itertools.cycle(_clips[start:] + _clips[:start])

    def on_stop(self) -> None:
        # Close the channel ourselves: one left to the garbage collector hangs the process at exit.
        self.whisper.close()
        if self.decoder is not None:
            self.decoder.close()

    def _one(self, clip: Clip, speculative: bool) -> TranscriptionResult | DecoderResult | ClientError:
        try:
            if self.decoder is not None:
                result = self.decoder.decode(clip.id, speculative)
            else:
                result = self.whisper.transcribe(
                    (clip.pcm, 16000),
                    language=None if self.detect_language else clip.language,
                    speculative=speculative,
                )
        except ClientError as error:
            return error
        if not result.text.strip():
            return ClientError(f"empty transcript for clip {clip.id}")
        return result

    @task
    def transcribe(self) -> None:
        speculative = next(self.modes)
        batch = [next(self.clips) for _ in range(self.clips_per_request)]
        began_wall, began = time.time(), time.perf_counter()
        if len(batch) == 1:
            outcomes = [self._one(batch[0], speculative)]
        else:
            jobs = [gevent.spawn(self._one, clip, speculative) for clip in batch]
            gevent.joinall(jobs, raise_error=True)
            outcomes = [job.value for job in jobs]
        latency = time.perf_counter() - began
        self._report(batch, outcomes, speculative, began_wall, latency)

    def _report(
        self,
        batch: list[Clip],
        outcomes: list[TranscriptionResult | DecoderResult | ClientError],
        speculative: bool,
        began_wall: float,
        latency: float,
    ) -> None:
        errors = [o for o in outcomes if isinstance(o, ClientError)]
        results = [o for o in outcomes if not isinstance(o, ClientError)]
        audio_s = sum(clip.seconds for clip in batch)
        mode = "speculative" if speculative else "plain"
        suffix = f" x{len(batch)} clips" if len(batch) > 1 else ""
        self.environment.events.request.fire(
            request_type="grpc",
            name=f"whisper {mode}{suffix}",
            response_time=latency * 1000,
            response_length=round(audio_s * 1000),
            exception=errors[0] if errors else None,
            context={"audio_s": audio_s, "clips": len(batch), "speculative": speculative},
        )
        if _record is not None:
            record = {
                "start": began_wall,
                "latency_s": latency,
                "audio_s": audio_s,
                "clips": len(batch),
                "speculative": speculative,
                "ok": not errors,
                "error": str(errors[0]) if errors else None,
                "clip_latency_s": [r.latency_s for r in results],
                "drafted": sum(r.drafted for r in results),
                "accepted": sum(r.accepted for r in results),
            }
            _record.write(json.dumps(record) + "\n")
            _record.flush()


class ClipUser(_WhisperUser):
    """One clip per request; concurrent users are batched by the server."""


class ClipBatchUser(_WhisperUser):
    """`--clips-per-request` clips per Locust request, sent as that many concurrent calls."""

    def on_start(self) -> None:
        super().on_start()
        self.clips_per_request = self.environment.parsed_options.clips_per_request
