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

    def greedy(self, states: Tensor, mask: Mask) -> Tensor:
        return mask(self.logits(states)).argmax(-1)

    def draft(self, states: Tensor, mask: Mask) -> tuple[Tensor, Tensor]:
        """Greedy tokens and their softmax probabilities, which tell a drafter when to stop."""
        return _choice(mask(self.logits(states)))


def _choice(logits: Tensor) -> tuple[Tensor, Tensor]:
    best, token = logits.max(dim=-1)
    # The softmax probability of the best: 1 / sum(exp(l - best)), without a second max.
    return token, torch.exp(logits - best[..., None]).sum(dim=-1).reciprocal_()


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

    def greedy(self, states: Tensor, mask: Mask) -> Tensor:
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
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.screen = FewRowsLinear(self.weight, self.bias, int8=True, stream=True)
        unit = torch.finfo(torch.float32).eps / 2
        width = weight.shape[1] + 2  # the sum's terms, the scaling and the bias
        gamma = width * unit / (1 - width * unit)
        self.half_step = self.screen.step / 2 * (1 + 2 * 127 * gamma)
        self.max_half_step = float(self.half_step.max())
        self.max_row_l1 = float((self.weight.abs().sum(dim=1)).max())
        # Above this many positions per call the fp32 product (fp16 weights, `FewRowsLinear`) is faster:
        # the screen's tiles hold 4 rows (`bench_decoder_products.py --heads-only`, docs/benchmarks.md).
        self.max_rows = max_rows
        # Past this many candidates, scoring them one by one is slower than the fp32 projection.
        self.max_candidates = 4096

    @staticmethod
    def available(weight: Tensor) -> bool:
        return FewRowsLinear.available(weight)

    def greedy(self, states: Tensor, mask: Mask) -> Tensor:
        rows = states.reshape(-1, states.shape[-1])
        if len(rows) > self.max_rows:
            return super().greedy(states, mask)
        scores = mask(self.screen(states)).view(len(rows), -1)
        # Two stages, both sound: a bound shared by a row's tokens (one cheap pass over the vocabulary)
        # keeps tens of tokens; each token's own bound keeps a few of those.
        bound = self._bound(rows, self.max_half_step)
        row, token = (scores >= scores.amax(dim=1, keepdim=True) - 2 * bound[:, None]).nonzero(as_tuple=True)
        if len(token) > self.max_candidates:
            return super().greedy(states, mask)
        score = scores[row, token]
        bound = self._bound(rows[row], self.half_step[token])
        best_lower = torch.full((len(rows),), -torch.inf).scatter_reduce_(0, row, score - bound, "amax")
        keep = score + bound >= best_lower[row]
        chosen = self._exact_argmax(rows, row[keep], token[keep])
        if (chosen == self.vocab_size).any():  # a row without candidates: non-finite states
            return super().greedy(states, mask)
        return chosen.view(states.shape[:-1])

    def _bound(self, rows: Tensor, half_step: Tensor | float) -> Tensor:
        """Error bound of the screen's scores of `rows` for tokens with these (widened) half steps."""
        # fp32 rounding of the exact fp32 logits themselves, generously.
        slack = 1e-5 * rows.abs().amax(dim=-1) * self.max_row_l1 + 1e-3
        return rows.abs().sum(dim=-1) * half_step + slack

    def _exact_argmax(self, rows: Tensor, row: Tensor, token: Tensor) -> Tensor:
        """Per row, the candidate with the largest fp32 logit (the lowest token id among equals, as
        `argmax` over the full vocabulary would choose)."""
        exact = torch.linalg.vecdot(self.weight[token], rows[row])
        if self.bias is not None:
            exact += self.bias[token]
        best = torch.full((len(rows),), -torch.inf).scatter_reduce_(0, row, exact, "amax")
        tied = torch.where(exact == best[row], token, self.vocab_size)
        return torch.full((len(rows),), self.vocab_size).scatter_reduce_(0, row, tied, "amin")


def main_head(weight: Tensor, bias: Tensor | None = None) -> FullHead:
    """The screened head where the few-row kernel runs (x86 CPUs with AVX-512), fp32 elsewhere."""
    return ScreenedHead(weight, bias) if ScreenedHead.available(weight) else FullHead(weight, bias)
