"""Output heads: final decoder states to logits, and to greedy tokens.

Greedy decoding needs only the argmax of each position's logits after the logit filters, which
only ever forbid tokens (`mask` sets their logits to -inf). A head may therefore compute that
argmax without computing every logit exactly, as `ScreenedHead` does for the main model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .linear import FewRowsLinear, decoder_linear, draft_linear

__all__ = ["FullHead", "Mask", "ScreenedHead", "ShortlistHead", "main_head"]

# `mask(logits)` for logits [B, T, vocab], or `mask(scores, ids)` for scores over the vocabulary ids
# `ids` only: the same tensor with the forbidden tokens at -inf.
Mask = Callable[..., Tensor]


class FullHead:
    """Every logit in fp32."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.vocab_size = weight.shape[0]
        self.linear = decoder_linear(weight, bias)

    def logits(self, states: Tensor) -> Tensor:
        return self.linear(states)

    def greedy(self, states: Tensor, mask: Mask, every_logit: bool = False) -> Tensor:
        return mask(self.logits(states)).argmax(-1)

    def draft(self, states: Tensor, mask: Mask) -> tuple[Tensor, Tensor]:
        """Greedy tokens and their softmax probabilities, which tell a drafter when to stop."""
        return _choice(mask(self.logits(states)))


def _choice(logits: Tensor) -> tuple[Tensor, Tensor]:
    best, token = logits.max(dim=-1)
    # The softmax probability of the best: 1 / sum(exp(l - best)), without a second max. A position
    # whose filters forbade every scored token (a shortlist without the timestamp due) gets 0.
    probability = torch.exp(logits - best[..., None]).sum(dim=-1).reciprocal_()
    return token, probability.nan_to_num_(0.0)


class ShortlistHead:
    """An assistant's cheap head: only `shortlist` tokens are scored, the others get -inf, so a draft
    simply stops being right where it needs one. With `int8` the scores are approximate, which
    costs at most a little acceptance and never exactness, since the main model checks every draft."""

    def __init__(self, weight: Tensor, shortlist: Tensor, int8: bool = False) -> None:
        self.vocab_size = weight.shape[0]
        self.shortlist = shortlist.to(weight.device)
        rows = weight[self.shortlist]
        self.linear = draft_linear(rows, None) if int8 else decoder_linear(rows, None)

    def logits(self, states: Tensor) -> Tensor:
        scores = self.linear(states)
        full = scores.new_full((*scores.shape[:-1], self.vocab_size), -torch.inf)
        return full.index_copy_(-1, self.shortlist, scores)

    def greedy(self, states: Tensor, mask: Mask, every_logit: bool = False) -> Tensor:
        return self.draft(states, mask)[0]

    def draft(self, states: Tensor, mask: Mask) -> tuple[Tensor, Tensor]:
        """Greedy tokens and their probabilities over the shortlist, filtered there directly."""
        position, probability = _choice(mask(self.linear(states), self.shortlist))
        return self.shortlist[position], probability


class ScreenedHead(FullHead):
    """The exact fp32 greedy choice over the full vocabulary, from an int8 pass and a few fp32 rows.

    At batch 1 the fp32 vocabulary projection of whisper-base (51,865 x 512, 106 MB) is about a
    third of a main decoder step. An int8 copy scores every token with a proven error bound; a token
    whose upper bound is below another token's lower bound cannot be the argmax, and the few that
    remain (two per position on average on real speech) are scored again in fp32. The result is the
    fp32 argmax itself, not an approximation of it.

    The bound: weights are rounded per row, `w = step * q + e` with `|e| <= step / 2`, and the few-row
    kernel multiplies the fp32 activations by the integers `q` in fp32 (`FewRowsLinear(int8=True)`).
    Hence `|w.x - score| <= step / 2 * ||x||_1` plus the fp32 rounding of a sum of at most `K` terms,
    `gamma_K * sum |x_k q_k| <= gamma_K * 127 * ||x||_1` times `step`, with `gamma_K = K u / (1 - K u)`.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, max_rows: int = 4) -> None:
        super().__init__(weight, bias)
        self.weight = weight.detach().float().contiguous()
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.screen = FewRowsLinear(self.weight, self.bias, int8=True, stream=True)
        self.kernel = self.screen.kernel
        unit = torch.finfo(torch.float32).eps / 2
        width = weight.shape[1] + 2  # the sum's terms, the scaling and the bias
        gamma = width * unit / (1 - width * unit)
        self.half_step = (self.screen.step / 2 * (1 + 2 * 127 * gamma)).contiguous()
        self.max_row_l1 = float((self.weight.abs().sum(dim=1)).max())
        # Above this many positions per call the fp32 product (fp16 weights, `FewRowsLinear`) is faster:
        # the screen's tiles hold 4 rows (`bench_decoder_products.py --heads-only`, docs/benchmarks.md).
        self.max_rows = max_rows
        # Past this many candidates, scoring them one by one is slower than the fp32 projection.
        self.max_candidates = 4096

    @staticmethod
    def available(weight: Tensor) -> bool:
        return FewRowsLinear.available(weight)

    def greedy(self, states: Tensor, mask: Mask, every_logit: bool = False) -> Tensor:
        """`every_logit`: the mask reads every logit (a probability rule), so all are scored in fp32."""
        rows = states.reshape(-1, states.shape[-1])
        if every_logit or len(rows) > self.max_rows:
            return super().greedy(states, mask)
        scores = mask(self.screen(states)).reshape(len(rows), -1).contiguous()
        rows = rows.contiguous()
        l1, slack = self.row_bounds(rows)
        # Candidates and their fp32 logits in one call (`csrc/screened_argmax.cpp`), summed as the
        # full product sums them, so both heads choose from the same bits.
        chosen = self.kernel.screened_argmax(
            scores, rows, self.weight, self.bias, self.half_step, l1, slack, self.max_candidates
        )
        if (chosen < 0).any():  # non-finite states, or too many candidates to score one by one
            return super().greedy(states, mask)
        return chosen.view(states.shape[:-1])

    def row_bounds(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per row, `l1` and `slack`: the screen's score of token j is within `l1 * half_step[j] + slack`
        of its fp32 logit."""
        # fp32 rounding of the exact fp32 logits themselves, generously.
        slack = 1e-5 * rows.abs().amax(dim=-1) * self.max_row_l1 + 1e-3
        return rows.abs().sum(dim=-1), slack


def main_head(weight: Tensor, bias: Tensor | None = None) -> FullHead:
    """The screened head where the few-row kernel runs (x86 CPUs with AVX-512 or AVX2), fp32 elsewhere."""
    return ScreenedHead(weight, bias) if ScreenedHead.available(weight) else FullHead(weight, bias)
