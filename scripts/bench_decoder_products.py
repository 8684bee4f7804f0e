"""The decoder's products: oneDNN against the few-row kernel (fp32 and fp16 weights), fbgemm's int8
against the kernel's int8 weights for the assistant (with fp32 activations, and with int8 ones on
VNNI), in turns on real clips.

    python scripts/bench_decoder_products.py --threads 2       # --batch 1 8 on --clips 8 from --skip 40
    python scripts/bench_decoder_products.py --threads 2 --heads-only

Then the main model's head alone, right after the decoder layers of its pass (real decoder states),
as in decoding: the screened head
(an int8 screen and a few fp32 rows) against the fp16-stored full projection, which `ScreenedHead`
falls back to above `max_rows` positions per call.

A main pass of 1, 2, 4 and 6 tokens per row (the screened head and the logit filters included) with
each way of computing the layers' products, and an assistant draft step right after a main pass (which
has left the assistant cold, as in decoding), best of the rounds. The ways take
turns round by round so that a slow spell of this shared machine lands on all of them. Every way must
choose the same greedy tokens; the few-row kernel's ways must agree to the bit.
"""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from transformers import WhisperForCausalLM, WhisperForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# bench_engine: scripts/, beside this file
from bench_engine import best_ms, english_clips, in_place, in_place_arguments, record

from spec_whisper.decoder import WhisperDecoderRunner
from spec_whisper.engine import SpeculativeWhisper
from spec_whisper.heads import FullHead, ScreenedHead
from spec_whisper.linear import FastLinear, FewRowsLinear, Int8Linear, draft_linear, fuse_linears

MAIN_WAYS = {
    "oneDNN fp32": FastLinear,
    "few-row fp32": partial(FewRowsLinear, fp16=False),
    "few-row fp16": FewRowsLinear,
}
DRAFT_WAYS = {"fbgemm int8": Int8Linear, "few-row int8": partial(FewRowsLinear, int8=True)}
if FewRowsLinear.bytes_available():  # int8 activations too, on VNNI: the assistant's default where it runs
    DRAFT_WAYS["few-row int8 x int8"] = partial(FewRowsLinear, int8=True, int8_activations=True)


def set_products(
    runner: WhisperDecoderRunner, hf_layers, make: Callable, head_rows: torch.Tensor | None
) -> None:
    """Rebuild `runner`'s per-pass products (not the once-per-request cross-attention keys and values)
    from the Hugging Face layers with `make(weight, bias)`, and its head's product over `head_rows`."""
    for layer, hf in zip(runner.layers, hf_layers, strict=True):
        attn, cross = hf.self_attn, hf.encoder_attn
        layer.self_qkv = fuse_linears(attn.q_proj, attn.k_proj, attn.v_proj, kind=make)
        layer.self_out = make(attn.out_proj.weight, attn.out_proj.bias)
        layer.cross_q = make(cross.q_proj.weight, cross.q_proj.bias)
        layer.cross_out = make(cross.out_proj.weight, cross.out_proj.bias)
        layer.fc1, layer.fc2 = make(hf.fc1.weight, hf.fc1.bias), make(hf.fc2.weight, hf.fc2.bias)
    if head_rows is not None:
        runner.head.linear = make(head_rows, None)
    runner.fuse_layers()  # the fused layers hold their own products: one call per layer only for few-row ones


@torch.inference_mode()
def main_table(engine, hf_main, pcm, batches: list[int], rounds: int) -> list[str]:
    main, assistant = engine.main, engine.assistant
    hf_assistant = engine.models.assistant.model.decoder.layers
    shortlist_rows = engine.models.assistant.proj_out.weight[assistant.head.shortlist]
    ways = list(MAIN_WAYS)
    out = [
        "| batch | pass | " + " | ".join(f"{w} ms" for w in ways) + " | fp16 kernel over oneDNN |",
        "|---|---|" + "---|" * (len(ways) + 1),
    ]
    for batch in batches:
        primed = in_place(engine, pcm[:batch], ahead=7)
        start, cache, own, mask = primed.start, primed.cache, primed.own, primed.mask
        passes = {n: primed.following(n) for n in (1, 2, 4, 6)}
        times = {(w, n): float("inf") for w in [*ways, *DRAFT_WAYS] for n in [*passes, 0]}
        chosen: dict[tuple[str, int], torch.Tensor] = {}
        step = passes[1]
        for _ in range(rounds):
            for way in ways:
                set_products(main, hf_main.layers, MAIN_WAYS[way], None)
                for n, new in passes.items():
                    run = partial(main.greedy, new, start, cache, mask, n)
                    times[way, n] = min(times[way, n], best_ms(run, 3, warm_up=False))
                    chosen[way, n] = run()
            for way, make in DRAFT_WAYS.items():
                set_products(assistant, hf_assistant, make, shortlist_rows)
                draft = partial(assistant.draft, step, start, own, mask)
                spent = float("inf")
                for _ in range(3):
                    main.greedy(passes[4], start, cache, mask, 4)  # the assistant goes cold, as in decoding
                    spent = min(spent, best_ms(draft, 1, warm_up=False))
                times[way, 0] = min(times[way, 0], spent)
        set_products(main, hf_main.layers, MAIN_WAYS["few-row fp16"], None)
        set_products(assistant, hf_assistant, draft_linear, shortlist_rows)
        for n in passes:
            assert all(torch.equal(chosen[w, n], chosen[ways[0], n]) for w in ways), (
                "the ways chose differently"
            )
            row = " | ".join(f"{times[w, n]:.2f}" for w in ways)
            gain = times["oneDNN fp32", n] / times["few-row fp16", n]
            out.append(f"| {batch} | main, {n} token{'s' if n > 1 else ''} | {row} | {gain:.2f}x |")
        steps = ", ".join(f"{way} {times[way, 0]:.2f} ms" for way in DRAFT_WAYS)
        best = min(times[way, 0] for way in DRAFT_WAYS)
        out.append(
            f"| {batch} | assistant step after a main pass: {steps} | | | | "
            f"{times['fbgemm int8', 0] / best:.2f}x |"
        )
    return out


@torch.inference_mode()
def head_table(engine, pcm, batches: list[int], rounds: int) -> list[str]:
    main = engine.main
    head = main.head
    if not isinstance(head, ScreenedHead):
        return ["(no screened head here: the few-row kernel did not build)"]
    limit, head.max_rows = head.max_rows, 1 << 30  # screen at every size; the fp16 product is its parent's
    full = partial(FullHead.greedy, head)
    out = [
        f"| batch | positions per row | screened ms | fp16 full ms | screened's gain (max_rows {limit}) |",
        "|---|---|---|---|---|",
    ]
    for batch in batches:
        primed = in_place(engine, pcm[:batch], ahead=7)
        for n in (1, 2, 3, 4, 6):
            states = main.states(primed.following(n), primed.start, primed.cache)[:, -n:]
            agree = torch.equal(head.greedy(states, primed.mask), full(states, primed.mask))
            assert agree, "the heads chose differently"
            layers = partial(main.states, primed.following(n), primed.start, primed.cache)
            screened = full_ms = float("inf")
            for _ in range(rounds * 3):  # each right after the layers, as in a pass
                layers()
                screened = min(screened, best_ms(partial(head.greedy, states, primed.mask), 1, warm_up=False))
                layers()
                full_ms = min(full_ms, best_ms(partial(full, states, primed.mask), 1, warm_up=False))
            out.append(f"| {batch} | {n} | {screened:.2f} | {full_ms:.2f} | {full_ms / screened:.2f}x |")
    head.max_rows = limit
    return out


def _heads_only_option(parser: ArgumentParser) -> None:
    parser.add_argument("--heads-only", action="store_true", help="time the heads alone")


def main() -> None:
    args = in_place_arguments(__doc__, _heads_only_option)
    engine = SpeculativeWhisper.load(args.main, args.assistant)
    if not isinstance(engine.main.layers[0].fc1, FewRowsLinear):
        sys.exit("the few-row kernel did not build here: nothing to compare")
    hf_main = WhisperForConditionalGeneration.from_pretrained(args.main).model.decoder
    engine.models.assistant = WhisperForCausalLM.from_pretrained(args.assistant)  # its layers again
    pcm = english_clips(args.speech_dir, args.skip, args.clips, args.pack)
    tables = [] if args.heads_only else [*main_table(engine, hf_main, pcm, args.batch, args.rounds), ""]
    report = "\n".join([*tables, *head_table(engine, pcm, args.batch, args.rounds)])
    print(report)
    record(args.record, "Decoder products", report)


if __name__ == "__main__":
    main()
