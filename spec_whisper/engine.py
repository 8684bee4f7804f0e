"""The engine: 16 kHz audio in, Whisper tokens and text out, with exact speculative decoding."""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .core_turns import CoreTurns
from .cost_model import DecoderCosts, LiveCosts, PassCosts, TableTiming, best_draft_length
from .cpu_kernels import kernels_available
from .decoder import WhisperDecoderRunner, shared_cross_attention
from .drafters import (
    MAX_DRAFT,
    PRIOR,
    PROBE_EVERY,
    AssistantDrafter,
    CostModelPolicy,
    DraftLengthPolicy,
    LengthPolicy,
)
from .encoder import WhisperEncoderRunner
from .features import HOP_LENGTH, N_FRAMES, LogMelSpectrogram
from .linear import FastLinear, prepacking_pays_for_many_rows
from .loading import AssistantEncoder, LoadedModels, load_models
from .logit_filters import LogitFilter, SuppressAtBegin, SuppressTokens, TimestampRules
from .longform import LongTranscription, transcribe_long
from .speculative import DecodeRequest, generate
from .tokens import SpecialTokens
from .types import DecodingOptions, DecodingStats, Transcription

logger = logging.getLogger(__name__)

__all__ = ["STAGES", "EncoderStates", "SpeculativeWhisper"]

# The most plain passes in a row before a request that stopped drafting probes with one draft, after
# its language's requests kept ending without drafting (`_learn_probing`; at first `PROBE_EVERY`).
_MOST_PROBE_EVERY = 1024
# About how many of a language's latest drafts its acceptance is learnt from, and how many drafts
# `PRIOR` counts as before the first (`_learn_acceptance`).
_ACCEPTANCE_MEMORY, _PRIOR_DRAFTS = 256, 16

# Encoder frames past a window's audio that the assistant still attends to (2 s). A 2-layer draft step
# reads its cross-attention keys and values over all 1,500 frames of a 30 s window, more bytes than its
# weights; a 10 s clip's step over the frames of its audio costs about a fifth less, its drafts just as
# often right (docs/benchmarks.md), and in a batch each row reads only its own window's frames. The
# main model attends to every frame: its tokens stay exact.
_ASSISTANT_FRAMES_PAST_AUDIO = 100

# A Triton model runs one of these; an in-process engine runs both.
STAGES = frozenset({"encoder", "decoder"})


@dataclass
class EncoderStates:
    main: Tensor  # [B, frames, d_model] from the main encoder
    assistant: Tensor | None = None  # [B, frames, d_assistant], only for an assistant with its own encoder
    samples: Tensor | None = None  # [B] audio samples in each row's window (the rest is padding), if known

    def rows(self, index: Tensor) -> EncoderStates:
        own = None if self.assistant is None else self.assistant[index]
        samples = None if self.samples is None else self.samples[index.cpu()]
        return EncoderStates(self.main[index], own, samples)


class SpeculativeWhisper:
    # The most a retiming of stale prices adds before a speculative batch, as a share of the last
    # one's passes (`_retime_some`).
    retime_share = 0.25

    def __init__(
        self,
        models: LoadedModels,
        device: str = "cpu",
        stages: Collection[str] = STAGES,
        int8_assistant: bool = True,
        turns: CoreTurns | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        """`int8_assistant`: run the assistant's products in int8 where the device has them (x86
        CPUs; with VNNI its activations in int8 too) and, on a CPU, its cross-attention over bf16
        keys and values: drafts need not be exact, the main model checks each one in fp32. `turns`:
        share the CPU's cores with other processes' stages by taking turns (serving on CPU;
        `core_turns`).
        `cuda_graphs`: on a CUDA device, replay decoder passes from recorded graphs."""
        if unknown := set(stages) - STAGES:
            raise ValueError(f"unknown stages {sorted(unknown)}; expected a subset of {sorted(STAGES)}")
        self.stages = frozenset(stages)
        self.models = models
        self.turns = turns or CoreTurns()
        self.device = torch.device(device)
        self.tokens = SpecialTokens.from_generation_config(models.generation_config)
        self.tokenizer = models.tokenizer
        self.n_mels = models.main.config.num_mel_bins
        self.features = LogMelSpectrogram(self.n_mels).to(self.device)
        self.main: WhisperDecoderRunner | None = None
        self.assistant: WhisperDecoderRunner | None = None
        self.main_encoder: WhisperEncoderRunner | None = None
        self.assistant_encoder: WhisperEncoderRunner | None = None
        if FastLinear.prepackable(models.main.proj_out.weight):
            with self.turns():  # the large products' path, timed on cores no other stage is using
                prepacking_pays_for_many_rows()
        if "encoder" in self.stages:
            self.main_encoder = WhisperEncoderRunner(models.main.model.encoder, self.turns)
            if models.assistant_has_encoder:
                self.assistant_encoder = WhisperEncoderRunner(models.assistant.model.encoder, self.turns)
        self._costs: PassCosts | None = None
        self._retiming: TableTiming | None = None  # stale rows of the table being timed again
        self._last_decode_s = 0.0  # the last speculative batch's passes
        self._drafts: dict[str, tuple[float, float]] = {}  # by language: (accepted, drafted), decaying
        self._probe_every: dict[str, int] = {}  # by language, learnt while decoding
        self._plain_passes: dict[str, int] = {}  # by language: the plain passes its last request ended with
        if "decoder" in self.stages:
            self.main = WhisperDecoderRunner(
                models.main.model.decoder, models.main.proj_out.weight, cuda_graphs=cuda_graphs
            )
            if models.assistant is not None:
                decoder = models.assistant.model.decoder
                # An assistant reading the main encoder's states may share its cross-attention cache.
                shared = (
                    None
                    if models.assistant_has_encoder
                    else shared_cross_attention(models.main.model.decoder, decoder)
                )
                head = models.assistant.proj_out.weight
                narrow = int8_assistant and self.device.type == "cpu" and kernels_available()
                self.assistant = WhisperDecoderRunner(
                    decoder,
                    head,
                    models.assistant_shortlist,
                    shared,
                    int8_assistant,
                    models.assistant_language_shortlists,
                    cuda_graphs,
                    torch.bfloat16 if narrow else None,
                )
        if self.stages != STAGES:
            _release_unused(models, self.stages)
        self.filters: list[LogitFilter] = [
            SuppressTokens(self.tokens.suppress),
            SuppressAtBegin(self.tokens.begin_suppress),
        ]
        t = self.tokens
        # In transformers' order: its timestamp processor runs after the suppressions.
        self.timestamp_filters = [
            *self.filters,
            TimestampRules(t.timestamp_begin, t.no_timestamps, t.end_of_text, t.max_initial_timestamp),
        ]

    @classmethod
    def load(
        cls,
        main: str | Path,
        assistant: str | Path | None = None,
        precision: str = "fp32",
        device: str = "cpu",
        assistant_encoder: AssistantEncoder = "auto",
        stages: Collection[str] = STAGES,
        int8_assistant: bool = True,
        turns: CoreTurns | None = None,
        cuda_graphs: bool = True,
    ) -> SpeculativeWhisper:
        """`stages`: what this process runs. A Triton encoder step loads with {"encoder"} and keeps no
        decoder weights; a decoder step with {"decoder"} keeps no encoder."""
        models = load_models(main, assistant, precision, device, assistant_encoder)
        return cls(models, device, stages, int8_assistant, turns, cuda_graphs)

    def costs(self) -> PassCosts:
        """Measured pass costs that pick the draft length: timed on first use (a few seconds), then
        rescaled by every speculative pass this engine runs (`LiveCosts`), and a batch size's row timed
        again where the passes show it was timed in a slow spell (`LiveCosts.stale_batches`), a slice
        at a time (`_retime_some`)."""
        if self._costs is None:
            assert self.main is not None, "no decoder stage"
            with self.turns():  # timed on cores no other stage is using
                self._costs = LiveCosts(DecoderCosts.measure(self.main, self.assistant, self._frames))
        elif isinstance(self._costs, LiveCosts):
            self._retime_some(self._costs)
        return self._costs

    def _retime_some(self, costs: LiveCosts) -> None:
        """Time stale rows of the table again, for at most `retime_share` of the last speculative
        batch's passes (and one timed pass) before each: timed at once, batch 16 held its request's
        batch about 7 s on whisper-base here. Meanwhile the stale prices stand, rescaled in place."""
        if self._retiming is None:
            if not (stale := costs.stale_batches()):
                return
            self._retiming = TableTiming(self.main, self.assistant, self._frames, batches=stale)
        with self.turns():
            table = self._retiming.advance(self.retime_share * self._last_decode_s)
        if table is None:
            return
        batches, self._retiming = self._retiming.batches, None
        costs.retimed(table, batches)
        logger.info("pass costs timed again for batch sizes %s: %s", batches, table.describe(batches))

    @property
    def _frames(self) -> int:
        return self.models.main.config.max_source_positions

    def check_language(self, language: str | None) -> None:
        self.tokens.check_language(language)

    @torch.inference_mode()
    def log_mel(self, pcm: Sequence[np.ndarray]) -> Tensor:
        """`[B, n_mels, 3000]` features of 16 kHz clips of at most 30 s each."""
        return self.features.from_pcm(list(pcm)).to(self.device)

    def encode_pcm(self, pcm: Sequence[np.ndarray]) -> EncoderStates:
        """`encode` 16 kHz clips of at most 30 s each."""
        return self.encode(self.log_mel(pcm), [len(x) for x in pcm])

    @torch.inference_mode()
    def encode(self, mel: Tensor, samples: Sequence[int] | None = None) -> EncoderStates:
        """`samples`: each window's audio samples before its padding, which lets the assistant skip
        attending to most of the padding."""
        if self.main_encoder is None:
            raise RuntimeError("this engine was loaded without its encoder stage")
        mel = mel.to(self.device, self.models.main.dtype)
        states = self.main_encoder(mel)
        own = None if self.assistant_encoder is None else self.assistant_encoder(mel)
        return EncoderStates(states, own, None if samples is None else torch.tensor(samples))

    @torch.inference_mode()
    def decode(self, states: EncoderStates, options: Sequence[DecodingOptions]) -> list[Transcription]:
        """Decode every row with its own options; rows sharing a decoding mode form one batch."""
        if self.main is None:
            raise RuntimeError("this engine was loaded without its decoder stage")
        if len(options) != states.main.shape[0]:
            raise ValueError(f"{len(options)} option sets for {states.main.shape[0]} encoded windows")
        for opts in options:
            self.check_language(opts.language)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, opts in enumerate(options):
            speculative = opts.speculative and self.assistant is not None
            groups[(speculative, opts.draft_length, opts.adaptive_draft, opts.timestamps)].append(i)
        results: list[Transcription | None] = [None] * len(options)
        for (speculative, draft_length, adaptive, timestamps), rows in groups.items():
            group = [options[i] for i in rows]
            decoded = self._decode_group(
                states.rows(torch.tensor(rows, device=states.main.device)),
                group,
                speculative,
                draft_length,
                adaptive,
                timestamps,
            )
            for i, result in zip(rows, decoded, strict=True):
                results[i] = result
        return results  # type: ignore[return-value]

    def _decode_group(
        self,
        states: EncoderStates,
        options: list[DecodingOptions],
        speculative: bool,
        draft_length: int | None,
        adaptive: bool,
        timestamps: bool = False,
    ) -> list[Transcription]:
        began = time.perf_counter()
        batch = len(options)
        with self.turns():
            cache = self.main.new_cache(states.main)
        languages, cached = [o.language or "en" for o in options], 0
        if self.tokens.multilingual and any(o.language is None for o in options):
            with self.turns():
                detected = self._detect_language(cache, batch)
            languages = [o.language or d for o, d in zip(options, detected, strict=True)]
            cached = 1
        prompt = torch.tensor(
            [self.tokens.prompt(lang, o.task, timestamps) for lang, o in zip(languages, options, strict=True)]
        )
        limit = prompt.shape[1] + torch.tensor([o.max_new_tokens for o in options])
        drafter, policy = None, None
        # What the engine learns of drafting, it learns per language and mode: with timestamps the
        # assistant, distilled without them, is right less often (63% of its drafts against 70-82%).
        modes = [f"{lang}+timestamps" if timestamps else lang for lang in languages]
        if speculative:
            assert self.assistant is not None
            own = states.assistant if states.assistant is not None else states.main
            policy = self.length_policy(batch, draft_length, adaptive, modes)
            with self.turns():
                assistant_cache = self.assistant.new_cache(own, cache, self.assistant_frames(states))
            # With timestamps its shortlist holds them too, for the drafts `TimestampRules` guesses.
            stamps = range(self.tokens.timestamp_begin, self.assistant.vocab_size) if timestamps else None
            head = self.assistant.head_for(languages, stamps)
            drafter = AssistantDrafter(self.assistant, assistant_cache, policy, head)
        decoding = time.perf_counter()
        tokens, stats = generate(
            self.main,
            cache,
            DecodeRequest(prompt, limit, cached),
            self.timestamp_filters if timestamps else self.filters,
            self.tokens.end_of_text,
            drafter,
            self.turns,
        )
        elapsed = time.perf_counter() - began
        if drafter is not None:
            self._last_decode_s = time.perf_counter() - decoding  # without a retiming's slice
            self._learn_acceptance(modes, stats)
        if isinstance(policy, CostModelPolicy):
            self._learn_probing(modes, policy)
        for s in stats:
            s.decode_s = elapsed
        return [
            Transcription(self.text(t), t, lang, s)
            for t, lang, s in zip(tokens, languages, stats, strict=True)
        ]

    def assistant_frames(self, states: EncoderStates) -> Tensor | None:
        """The encoder frames the assistant attends to in each row `[B]`: its window's audio and 2 s
        past it, on a CPU, where a draft step costs the bytes it reads (a GPU's graphed step costs
        its launches)."""
        if states.samples is None or self.device.type != "cpu":
            return None
        frames = states.main.shape[1]
        samples_per_frame = HOP_LENGTH * N_FRAMES // frames  # 320: the encoder halves the mel frames
        audio = -(-states.samples.long() // samples_per_frame)
        return (audio + _ASSISTANT_FRAMES_PAST_AUDIO).clamp(1, frames)

    def length_policy(
        self, batch: int, draft_length: int | None, adaptive: bool, languages: Sequence[str] = ()
    ) -> LengthPolicy:
        """How long each pass drafts: the cost model, or `draft_length` (+2/-1 when `adaptive`). The
        cost model starts each row from the acceptance its language has had so far (`acceptance`)
        and probes as often as its language's requests have found it worth (`_probe_every`), counting
        the plain passes its last request ended with (`_plain_passes`)."""
        if draft_length is None:
            rates = [self.acceptance(language) for language in languages]
            prior = [PRIOR if rate is None else rate for rate in rates] or PRIOR
            probing = [self._probe_every.get(language, PROBE_EVERY) for language in languages]
            probe_every = min(probing, default=PROBE_EVERY)
            plain = max((self._plain_passes.get(language, 0) for language in languages), default=0)
            return CostModelPolicy(
                self.costs(), batch, prior=prior, probe_every=probe_every, plain_passes=plain
            )
        return DraftLengthPolicy(batch, draft_length, adaptive)

    def _learn_acceptance(self, languages: Sequence[str], stats: Sequence[DecodingStats]) -> None:
        """The share of drafts the main model accepted, per language, over about its latest
        `_ACCEPTANCE_MEMORY` drafts: a request's first drafts are made before its own rows have shown
        theirs (FLEURS lost 7-10% to them on the prior alone: held-out English accepts 81% of its
        tokens, French 47%). Counted by drafts, not averaged by request: a request that drafted once
        weighed as much as one that drafted every pass, and after five one-draft requests French
        stood at 0.09 where half its drafts are right, and drafting never came back. `PRIOR` counts
        as `_PRIOR_DRAFTS` drafts: a French clip whose first 8 drafts held 1 right had put the
        language at 0.125, below what drafting needs, for good."""
        for language, s in zip(languages, stats, strict=True):
            if s.drafted:
                accepted, drafted = self._drafts.get(language, (PRIOR * _PRIOR_DRAFTS, _PRIOR_DRAFTS))
                kept = math.exp(-s.drafted / _ACCEPTANCE_MEMORY)
                accepted, drafted = kept * accepted + s.accepted, kept * drafted + s.drafted
                self._drafts[language] = accepted, drafted

    def acceptance(self, language: str) -> float | None:
        """The share of its drafts the main model accepted, for a language that has drafted
        (`_learn_acceptance`)."""
        if language not in self._drafts:
            return None
        accepted, drafted = self._drafts[language]
        return accepted / drafted

    def _learn_probing(self, languages: Sequence[str], policy: CostModelPolicy) -> None:
        """A language whose request ended without drafting, at an acceptance for which the start-up
        table's prices would not draft, probes half as often in the next (up to `_MOST_PROBE_EVERY`
        plain passes); one whose request ended drafting is back to `PROBE_EVERY`. A probe first feeds
        the assistant every token since it last drafted (after 32 plain passes, about two
        whisper-base passes' worth): with a probe in each request of 40-70 passes, FLEURS decoded
        below plain where the assistant is rarely right (docs/benchmarks.md). Otherwise the prices
        in place stopped the drafting, not the assistant: probing goes on as often as before, since
        probes are what tell the prices (`LiveCosts.markup`) that drafting pays again."""
        table = self._costs.table if isinstance(self._costs, LiveCosts) else self._costs
        for language in set(languages):
            self._plain_passes[language] = policy.plain_passes
            if not policy.stopped_drafting:
                self._probe_every[language] = PROBE_EVERY
                continue
            rate = self.acceptance(language)
            rows = [rate] * languages.count(language)
            if table is not None and rate is not None and best_draft_length(table, rows, MAX_DRAFT) == 0:
                known = self._probe_every.get(language, PROBE_EVERY)
                self._probe_every[language] = min(2 * known, _MOST_PROBE_EVERY)

    def _detect_language(self, cache, batch: int) -> list[str]:
        """Whisper's language detection: the most likely language token after `<|startoftranscript|>`."""
        start = torch.full((batch, 1), self.tokens.start_of_transcript)
        logits = self.main.forward(start, torch.zeros(batch, dtype=torch.long), cache)[:, 0].cpu()
        ids = torch.tensor(list(self.tokens.languages.values()))
        best = ids[logits[:, ids].argmax(-1)]
        return [self.tokens.language_of(int(t)) for t in best]

    def text(self, tokens: list[int]) -> str:
        """The words of `tokens`, special tokens and timestamps left out."""
        return self.tokens.text(self.tokenizer, tokens) if self.tokenizer else ""

    def transcribe(
        self,
        pcm: Sequence[np.ndarray],
        options: Sequence[DecodingOptions] | DecodingOptions | None = None,
    ) -> list[Transcription]:
        """Features, encoder and decoder for clips of at most 30 s; one option set or one per clip."""
        if options is None:
            options = DecodingOptions()
        if isinstance(options, DecodingOptions):
            options = [options] * len(pcm)
        began = time.perf_counter()
        mel = self.log_mel(pcm)
        featured = time.perf_counter()
        states = self.encode(mel, [len(x) for x in pcm])
        encoded = time.perf_counter()
        results = self.decode(states, options)
        for r in results:
            r.stats.features_s, r.stats.encoder_s = featured - began, encoded - featured
        return results

    def transcribe_long(
        self, recordings: Sequence[np.ndarray], options: DecodingOptions | None = None
    ) -> list[LongTranscription]:
        """Recordings of any length, in sequential 30 s windows that seek on timestamps, with the
        tokens of transformers' long-form `generate()` (`longform.py`)."""
        return transcribe_long(self, recordings, options or DecodingOptions())


def _release_unused(models: LoadedModels, stages: frozenset[str]) -> None:
    """Drop the weights a stage never runs: an encoder step's decoders, a decoder step's encoders and
    the Hugging Face copies of the layers that the runners already hold repacked."""
    if "decoder" not in stages:
        if not models.assistant_has_encoder:
            models.assistant = None
        for model in (models.main, models.assistant):
            if model is not None:
                model.model.decoder, model.proj_out = None, None
                model.model.encoder.layers = torch.nn.ModuleList()
        return
    for model in (models.main, models.assistant):
        if model is None:
            continue
        if hasattr(model.model, "encoder"):
            model.model.encoder = None
        model.model.decoder.layers = torch.nn.ModuleList()
