"""Output heads: final decoder states to logits, and to greedy tokens.

Greedy decoding needs only the argmax of each position's logits after the logit filters, which
only ever forbid tokens (`mask` sets their logits to -inf). A head may therefore compute that
argmax without computing every logit exactly, as `ScreenedHead` does for the main model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .linear import Int8Linear, decoder_linear, draft_linear, int8_available

__all__ = ["FullHead", "Mask", "ScreenedHead", "ShortlistHead", "main_head"]

Mask = Callable[[Tensor], Tensor]  # logits [B, T, vocab] -> the same with forbidden tokens at -inf


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
    return token, torch.exp(best - logits.logsumexp(dim=-1))


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
        """Greedy tokens and their probabilities over the shortlist. The filters act on the full
        vocabulary, so they mark forbidden ids in a zero row that the shortlist then reads."""
        scores = self.linear(states)
        forbidden = mask(scores.new_zeros((*scores.shape[:-1], self.vocab_size)))
        position, probability = _choice(scores + forbidden.index_select(-1, self.shortlist))
        return self.shortlist[position], probability


class ScreenedHead(FullHead):
    """The exact fp32 greedy choice over the full vocabulary, from an int8 pass and a few fp32 rows.

    At batch 1 the fp32 vocabulary projection of whisper-base (51,865 x 512, 106 MB) is about a
    third of a main decoder step. An int8 copy scores every token with a proven error bound; a token
    whose upper bound is below another token's lower bound cannot be the argmax, and the few that
    remain (two per position on average on real speech, at most 56 in 600) are scored again in fp32.
    The result is the fp32 argmax itself, not an approximation of it.

    The bound: weights are rounded per row, `w = step * q + e` with `|e| <= step / 2`; activations are
    written in two levels on a power-of-two grid per row, `x = s * (k1 + k2 / 64) + r` with
    `|r| <= s / 128`, and both levels go through one int8 product whose arithmetic is exact
    (integers, 7-bit activations: AVX2's 16-bit pair sums cannot saturate). Hence
    `|w.x - score| <= step / 2 * ||x||_1 + s / 128 * ||step * q||_1`, plus fp32 rounding.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None, max_rows: int = 16) -> None:
        super().__init__(weight, bias)
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.int8 = Int8Linear(self.weight)
        self.half_step = self.int8.step / 2
        row_l1 = self.int8.q.abs().sum(dim=1) * self.int8.step
        self.grid_error = row_l1 / 128  # per unit of the activations' grid scale
        self.max_half_step, self.max_grid_error = float(self.half_step.max()), float(self.grid_error.max())
        self.max_row_l1 = float(row_l1.max())
        # Above this many positions per call the int8 pass (two rows per position) stops paying
        # (measured here on whisper-base: 16 rows 7.7 ms against 9.0 ms in fp32, 24 rows even).
        self.max_rows = max_rows
        # Past this many candidates, scoring them one by one is slower than the fp32 projection.
        self.max_candidates = 4096

    def greedy(self, states: Tensor, mask: Mask) -> Tensor:
        rows = states.reshape(-1, states.shape[-1])
        if len(rows) > self.max_rows:
            return super().greedy(states, mask)
        scores, scale = self._screen(rows)
        scores = mask(scores.view(*states.shape[:-1], -1)).view(len(rows), -1)
        # Two stages, both sound: a bound shared by a row's tokens (one cheap pass over the vocabulary)
        # keeps tens of tokens; each token's own bound keeps a few of those.
        bound = self._bound(rows, scale, self.max_half_step, self.max_grid_error)
        row, token = (scores >= scores.amax(dim=1, keepdim=True) - 2 * bound[:, None]).nonzero(as_tuple=True)
        if len(token) > self.max_candidates:
            return super().greedy(states, mask)
        score = scores[row, token]
        bound = self._bound(rows[row], scale[row], self.half_step[token], self.grid_error[token])
        best_lower = torch.full((len(rows),), -torch.inf).scatter_reduce_(0, row, score - bound, "amax")
        keep = score + bound >= best_lower[row]
        chosen = self._exact_argmax(rows, row[keep], token[keep])
        if (chosen == self.vocab_size).any():  # a row without candidates: non-finite states
            return super().greedy(states, mask)
        return chosen.view(states.shape[:-1])

    def _screen(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """Approximate logits `[R, vocab]` and each row's power-of-two activation grid `[R]`."""
        largest = rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny)
        scale = torch.exp2(torch.ceil(torch.log2(largest / 63)))
        coarse = torch.round(rows / scale[:, None])
        fine = torch.round((rows / scale[:, None] - coarse) * 64)
        # Integers in [-63, 63] on the unit grid; each row's power of two is multiplied back exactly.
        both = self.int8.on_grid(torch.cat([coarse, fine]), 1.0)
        scores = torch.add(both[: len(rows)], both[len(rows) :], alpha=1 / 64).mul_(scale[:, None])
        if self.bias is not None:
            scores += self.bias
        return scores, scale

    def _bound(
        self, rows: Tensor, scale: Tensor, half_step: Tensor | float, grid_error: Tensor | float
    ) -> Tensor:
        """Error bound of the scores of `rows` (on grids `scale`) for tokens with these weight steps
        and grid errors."""
        # fp32 rounding of the scaling and of the exact fp32 logits themselves, generously.
        slack = 1e-5 * rows.abs().amax(dim=-1) * self.max_row_l1 + 1e-3
        return rows.abs().sum(dim=-1) * half_step + scale * grid_error + slack

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
    """The screened head where int8 products run (x86 CPUs), the plain fp32 head elsewhere."""
    return ScreenedHead(weight, bias) if int8_available(weight) else FullHead(weight, bias)
