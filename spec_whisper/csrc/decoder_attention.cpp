// A decoder pass's attention on CPU: its few queries per row over the encoder's frames (cross-
// attention) or over the row's own cached tokens up to each query's position (self-attention).
//
// A Whisper decoder pass at batch 8 reads about 300 MB of cross-attention keys and values (8 rows x
// 6 layers x 1500 frames x 512 x 2 in fp32), the largest read of the pass. PyTorch's CPU attention
// tiles queries and keys for matrix products, packing each block of keys, which pays for long query
// blocks, not for the 1-17 queries per row of a decoder pass. Here every key and value row is read
// once, straight into a dot product with each query of its row: 1.3-2.6x faster than PyTorch's at
// batch 1-16 and 1-5 queries on the machine this was written on (docs/benchmarks.md). Self-attention
// needs a mask with PyTorch's; here each query simply stops at its own position.
//
// Both take and give the heads merged, as the projections around them do, and self-attention
// writes the pass's keys and values into the cache itself: one call per attention instead of about
// ten PyTorch operators, each of which costs 5-40 us in place, cold after a main pass (more than the
// arithmetic of a draft step's attention).
//
// A query's result does not depend on how many queries share the call: the same query gives the
// same bits in a 1-token greedy pass and in a verify pass, which exactness relies on.
//
// Keys and values may also be bf16 (an assistant's copy of the main model's, for drafts only): half
// the bytes of a draft step's largest read, widened to fp32 exactly as they are loaded. An assistant
// may also attend to fewer frames per row (its window's audio, not the padding): each row's queries
// then stop at that row's own frame count.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "exp.h"

namespace {

constexpr int64_t kHeadDim = 64;  // every Whisper size, tiny to large-v3

inline float widen(float x) { return x; }

// bf16 is the top half of an fp32: the same value, shifted back into place.
inline float widen(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
}

// softmax(scale q k^T) v for one (row, head): q [T, 64] with `q_stride` between queries, k and v
// [L, 64], out [T, 64] with `out_stride`. Query t sees keys [0, seen[t]). The scale, 64^-0.5, is a
// power of two, so scaling the product gives the bits of scaling the query first.
template <typename KV>
void attend(const float* q, int64_t q_stride, const KV* k, const KV* v, float* out, int64_t out_stride,
            int64_t T, int64_t L, const int64_t* seen, float scale, std::vector<float>& scores) {
  if (T == 0) return;
  scores.resize(T * L);
  const int64_t longest = *std::max_element(seen, seen + T);
  for (int64_t l = 0; l < longest; ++l) {
    const KV* key = k + l * kHeadDim;
    for (int64_t t = 0; t < T; ++t) {
      if (l >= seen[t]) continue;
      const float* query = q + t * q_stride;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < kHeadDim; ++d) dot += query[d] * widen(key[d]);
      scores[t * L + l] = dot * scale;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* row = scores.data() + t * L;
    const float inverse = 1.f / exp_minus_max(row, seen[t]);
#pragma omp simd
    for (int64_t l = 0; l < seen[t]; ++l) row[l] *= inverse;
  }
  for (int64_t t = 0; t < T; ++t) std::fill(out + t * out_stride, out + t * out_stride + kHeadDim, 0.f);
  for (int64_t l = 0; l < longest; ++l) {
    const KV* value = v + l * kHeadDim;
    for (int64_t t = 0; t < T; ++t) {
      if (l >= seen[t]) continue;
      const float weight = scores[t * L + l];
      float* o = out + t * out_stride;
#pragma omp simd
      for (int64_t d = 0; d < kHeadDim; ++d) o[d] += weight * widen(value[d]);
    }
  }
}

}  // namespace

// A decoder pass's self-attention from its fused projection, for one layer: qkv [B, T, 3 * H * 64]
// fp32 contiguous (queries not yet scaled), the layer's cache k and v [B, H, S, 64] fp32 contiguous,
// start [B] int64. Writes token t's key and value at position start[b] + t, then lets query t see
// positions [0, start[b] + t] -> [B, T, H * 64], the output projection's input.
torch::Tensor decoder_self_attention(const torch::Tensor& qkv, torch::Tensor& cache_k, torch::Tensor& cache_v,
                                     const torch::Tensor& start, double scale) {
  TORCH_CHECK(qkv.scalar_type() == torch::kFloat32 && cache_k.scalar_type() == torch::kFloat32 &&
                  cache_v.scalar_type() == torch::kFloat32,
              "decoder_self_attention takes fp32 tensors");
  TORCH_CHECK(qkv.device().is_cpu() && qkv.dim() == 3 && qkv.is_contiguous(),
              "decoder_self_attention takes a contiguous CPU qkv [B, T, 3 * width]");
  TORCH_CHECK(cache_k.dim() == 4 && cache_k.sizes() == cache_v.sizes() && cache_k.is_contiguous() &&
                  cache_v.is_contiguous() && cache_k.size(3) == kHeadDim,
              "decoder_self_attention takes contiguous caches [B, H, S, 64]");
  const int64_t B = qkv.size(0), T = qkv.size(1), H = cache_k.size(1), S = cache_k.size(2), W = H * kHeadDim;
  TORCH_CHECK(cache_k.size(0) == B && qkv.size(2) == 3 * W, "qkv and caches disagree");
  TORCH_CHECK(start.scalar_type() == torch::kInt64 && start.dim() == 1 && start.size(0) == B &&
                  start.is_contiguous() && start.device().is_cpu(),
              "decoder_self_attention takes start [B] of int64 on the CPU");
  const int64_t* first = start.data_ptr<int64_t>();
  std::vector<int64_t> seen(B * T);
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(first[b] >= 0 && first[b] + T <= S, "decoder_self_attention: tokens past the cache");
    for (int64_t t = 0; t < T; ++t) seen[b * T + t] = first[b] + t + 1;
  }
  auto out = torch::empty({B, T, W}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float* kp = cache_k.data_ptr<float>();
  float* vp = cache_v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      float* keys = kp + bh * S * kHeadDim;
      float* values = vp + bh * S * kHeadDim;
      for (int64_t t = 0; t < T; ++t) {
        const float* token = in + (b * T + t) * 3 * W + h * kHeadDim;
        std::memcpy(keys + (first[b] + t) * kHeadDim, token + W, kHeadDim * sizeof(float));
        std::memcpy(values + (first[b] + t) * kHeadDim, token + 2 * W, kHeadDim * sizeof(float));
      }
      attend(in + b * T * 3 * W + h * kHeadDim, 3 * W, keys, values, op + b * T * W + h * kHeadDim, W, T, S,
             seen.data() + b * T, static_cast<float>(scale), scores);
    }
  });
  return out;
}

// A decoder pass's cross-attention: q [B, T, H * 64] fp32 contiguous (not yet scaled), k and v
// [B, H, L, 64] both fp32 or both bf16, contiguous, and optionally the frames [B] int64 each row
// attends to (the first ones, at least one) -> [B, T, H * 64], the output projection's input.
torch::Tensor decoder_cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      double scale, const c10::optional<torch::Tensor>& frames) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && q.device().is_cpu() && q.dim() == 3 && q.is_contiguous(),
              "decoder_cross_attention takes contiguous fp32 CPU queries [B, T, width]");
  TORCH_CHECK(k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == torch::kFloat32 || k.scalar_type() == torch::kBFloat16),
              "decoder_cross_attention takes keys and values both fp32 or both bf16");
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.is_contiguous() && v.is_contiguous() &&
                  k.size(3) == kHeadDim && k.device().is_cpu(),
              "decoder_cross_attention takes contiguous CPU keys and values [B, H, L, 64]");
  const int64_t B = q.size(0), T = q.size(1), H = k.size(1), L = k.size(2), W = H * kHeadDim;
  TORCH_CHECK(k.size(0) == B && q.size(2) == W && L > 0, "keys, values and queries disagree");
  std::vector<int64_t> seen(B * T, L);
  if (frames.has_value()) {
    const auto& f = *frames;
    TORCH_CHECK(f.scalar_type() == torch::kInt64 && f.dim() == 1 && f.size(0) == B && f.is_contiguous() &&
                    f.device().is_cpu(),
                "decoder_cross_attention takes frames [B] of int64 on the CPU");
    const int64_t* rows = f.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      TORCH_CHECK(rows[b] > 0 && rows[b] <= L, "decoder_cross_attention: frames out of range");
      std::fill(seen.begin() + b * T, seen.begin() + (b + 1) * T, rows[b]);
    }
  }
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto run = [&](const auto* kp, const auto* vp) {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H;
        attend(qp + b * T * W + h * kHeadDim, W, kp + bh * L * kHeadDim, vp + bh * L * kHeadDim,
               op + b * T * W + h * kHeadDim, W, T, L, seen.data() + b * T, static_cast<float>(scale), scores);
      }
    });
  };
  if (k.scalar_type() == torch::kBFloat16) {
    run(reinterpret_cast<const uint16_t*>(k.data_ptr<at::BFloat16>()),
        reinterpret_cast<const uint16_t*>(v.data_ptr<at::BFloat16>()));
  } else {
    run(k.data_ptr<float>(), v.data_ptr<float>());
  }
  return out;
}
