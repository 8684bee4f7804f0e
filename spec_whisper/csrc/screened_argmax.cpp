// The screened head's last steps in one call (`heads.ScreenedHead`): from the int8 screen's scores of
// every token and each score's error bound, the few tokens that can still be the argmax, their fp32
// logits, and the argmax itself.
//
// In PyTorch's operators these were about ten calls per pass over the vocabulary and the candidates
// (an `amax`, a comparison and a `nonzero` over a 51,865-wide row, then gathers, scatters and a
// `vecdot`), each with its own dispatch and allocation. Here: two passes over each row and a dot
// product per candidate.
//
// A candidate's logit is summed exactly as `few_rows_linear` sums an output (chunks of 64 terms, one
// fused multiply-add each in order, chunk sums added in order, then the bias), so the screened head
// and the full product (`FullHead`, which longer passes take) choose from the same bits.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "exact_simd.h"

namespace {

constexpr int64_t kChunk = 64;  // as few_rows_linear.cpp's

#ifdef SPEC_WHISPER_FEW_ROWS
// Scalar intrinsics: the compiler keeps their order under -ffast-math, as the vector kernel's
// `exact_add` keeps its.
inline float fma_ss(float a, float b, float c) {
  return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}
inline float add_ss(float a, float b) { return _mm_cvtss_f32(_mm_add_ss(_mm_set_ss(a), _mm_set_ss(b))); }
#else  // no few-row kernel to agree with (`ScreenedHead` needs it), so no order to keep
inline float fma_ss(float a, float b, float c) { return std::fma(a, b, c); }
inline float add_ss(float a, float b) { return a + b; }
#endif

float kernel_order_dot(const float* x, const float* w, int64_t K, float bias) {
  float total = 0.f;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    float sum = 0.f;
    const int64_t k1 = std::min(K, k0 + kChunk);
    for (int64_t k = k0; k < k1; ++k) sum = fma_ss(x[k], w[k], sum);
    total = add_ss(total, sum);
  }
  return add_ss(total, bias);
}

// Row r's greedy token, or -1 where the full product must decide (no finite candidate, too many).
int64_t row_argmax(const float* scores, int64_t V, const float* x, int64_t K, const float* weight, const float* bias,
                   const float* half_step, float l1, float slack, int64_t max_candidates, std::vector<int64_t>& found) {
  if (!std::isfinite(l1)) return -1;  // non-finite states: the full product gives what fp32 gives
  // Every token's true logit lies within score +- (l1 * half_step + slack): the best lower bound is
  // beaten only by tokens whose upper bound reaches it.
  float best_lower = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < V; ++j) best_lower = std::max(best_lower, scores[j] - (l1 * half_step[j] + slack));
  if (!std::isfinite(best_lower)) return -1;
  found.clear();
  for (int64_t j = 0; j < V; ++j)
    if (scores[j] + (l1 * half_step[j] + slack) >= best_lower) found.push_back(j);
  if (static_cast<int64_t>(found.size()) > max_candidates) return -1;
  int64_t chosen = -1;
  float best = -std::numeric_limits<float>::infinity();
  for (const int64_t j : found) {  // in id order: an equal logit keeps the lower id, as argmax does
    const float logit = kernel_order_dot(x, weight + j * K, K, bias ? bias[j] : 0.f);
    if (chosen < 0 || logit > best) chosen = j, best = logit;
  }
  return std::isfinite(best) ? chosen : -1;
}

}  // namespace

// scores [R, V] fp32 (the screen's, the logit filters applied), states [R, K] fp32, weight [V, K] fp32,
// bias [V] or none, half_step [V] and each row's l1 and slack [R]: a token's score is within
// l1[r] * half_step[j] + slack[r] of its fp32 logit. -> [R] int64 tokens, -1 where a row needs the
// full product.
torch::Tensor screened_argmax(const torch::Tensor& scores, const torch::Tensor& states, const torch::Tensor& weight,
                              const c10::optional<torch::Tensor>& bias, const torch::Tensor& half_step,
                              const torch::Tensor& l1, const torch::Tensor& slack, int64_t max_candidates) {
  auto fp32 = [](const torch::Tensor& t, int64_t dim) {
    return t.scalar_type() == torch::kFloat32 && t.device().is_cpu() && t.dim() == dim && t.is_contiguous();
  };
  TORCH_CHECK(fp32(scores, 2) && fp32(states, 2) && fp32(weight, 2) && fp32(half_step, 1) && fp32(l1, 1) &&
                  fp32(slack, 1),
              "screened_argmax takes contiguous fp32 CPU tensors");
  const int64_t R = scores.size(0), V = scores.size(1), K = states.size(1);
  TORCH_CHECK(states.size(0) == R && weight.size(0) == V && weight.size(1) == K && half_step.size(0) == V &&
                  l1.size(0) == R && slack.size(0) == R,
              "screened_argmax: shapes disagree");
  TORCH_CHECK(!bias.has_value() || (fp32(*bias, 1) && bias->size(0) == V), "screened_argmax: bias [V] fp32");
  auto chosen = torch::empty({R}, scores.options().dtype(torch::kInt64));
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  int64_t* out = chosen.data_ptr<int64_t>();
  at::parallel_for(0, R, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> found;
    for (int64_t r = begin; r < end; ++r)
      out[r] = row_argmax(scores.data_ptr<float>() + r * V, V, states.data_ptr<float>() + r * K, K,
                             weight.data_ptr<float>(), bp, half_step.data_ptr<float>(), l1.data_ptr<float>()[r],
                             slack.data_ptr<float>()[r], max_candidates, found);
  });
  return chosen;
}

// The fp32 logits of `tokens` for each row of `states`, summed as `screened_argmax` (and
// `few_rows_linear`) sum them: [R, K] and [V, K] fp32, [n] int64 -> [R, n].
torch::Tensor kernel_order_logits(const torch::Tensor& states, const torch::Tensor& weight,
                                  const torch::Tensor& tokens) {
  TORCH_CHECK(states.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32 &&
                  states.is_contiguous() && weight.is_contiguous() && tokens.scalar_type() == torch::kInt64 &&
                  states.size(1) == weight.size(1),
              "kernel_order_logits takes contiguous fp32 states [R, K] and weight [V, K], int64 tokens");
  const int64_t R = states.size(0), K = states.size(1), n = tokens.numel();
  auto out = torch::empty({R, n}, states.options());
  const auto ids = tokens.contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  float* logits = out.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t j = id[i];
      TORCH_CHECK(j >= 0 && j < weight.size(0), "kernel_order_logits: token out of range");
      logits[r * n + i] = kernel_order_dot(states.data_ptr<float>() + r * K, weight.data_ptr<float>() + j * K, K, 0.f);
    }
  return out;
}
