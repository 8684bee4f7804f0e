// Cross-attention of a decoder pass's few queries over the encoder's frames, on CPU.
//
// A Whisper decoder pass at batch 8 reads about 300 MB of cross-attention keys and values (8 rows x
// 6 layers x 1500 frames x 512 x 2 in fp32), the largest read of the pass. PyTorch's CPU attention
// tiles queries and keys for matrix products, packing each block of keys, which pays for long query
// blocks, not for the 1-17 queries per row of a decoder pass. Here every key and value row is read
// once, straight into a dot product with each query of its row: 1.3-2.6x faster than PyTorch's at
// batch 1-16 and 1-5 queries on the machine this was written on (docs/benchmarks.md). A query's
// result does not depend on how many queries share the call: the same query gives the same bits in
// a 1-token greedy pass and in a verify pass.
//
// Keys and values may also be bf16 (an assistant's copy of the main model's, for drafts only): half
// the bytes of a draft step's largest read, widened to fp32 exactly as they are loaded.

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

// softmax(q k^T) v for one (row, head): q [T, 64] pre-scaled, k and v [L, 64], out [T, 64].
template <typename KV>
void attend(const float* q, const KV* k, const KV* v, float* out, int64_t T, int64_t L,
            std::vector<float>& scores) {
  scores.resize(T * L);
  for (int64_t l = 0; l < L; ++l) {
    const KV* key = k + l * kHeadDim;
    for (int64_t t = 0; t < T; ++t) {
      const float* query = q + t * kHeadDim;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t d = 0; d < kHeadDim; ++d) dot += query[d] * widen(key[d]);
      scores[t * L + l] = dot;
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    float* row = scores.data() + t * L;
    const float inverse = 1.f / exp_minus_max(row, L);
#pragma omp simd
    for (int64_t l = 0; l < L; ++l) row[l] *= inverse;
  }
  std::fill(out, out + T * kHeadDim, 0.f);
  for (int64_t l = 0; l < L; ++l) {
    const KV* value = v + l * kHeadDim;
    for (int64_t t = 0; t < T; ++t) {
      const float weight = scores[t * L + l];
      float* o = out + t * kHeadDim;
#pragma omp simd
      for (int64_t d = 0; d < kHeadDim; ++d) o[d] += weight * widen(value[d]);
    }
  }
}

}  // namespace

// q [B, H, T, 64] (already scaled) fp32, k and v [B, H, L, 64] both fp32 or both bf16, all
// contiguous CPU tensors -> [B, H, T, 64] fp32.
torch::Tensor cross_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32, "cross_attention takes fp32 queries");
  TORCH_CHECK(k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == torch::kFloat32 || k.scalar_type() == torch::kBFloat16),
              "cross_attention takes keys and values both fp32 or both bf16");
  for (const auto* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 4, "cross_attention takes 4-d CPU tensors");
    TORCH_CHECK(t->is_contiguous() && t->size(3) == kHeadDim, "cross_attention takes contiguous heads of 64");
  }
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), L = k.size(2);
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == B && k.size(1) == H, "keys, values and queries disagree");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto run = [&](const auto* kp, const auto* vp) {
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores;
      for (int64_t bh = begin; bh < end; ++bh) {
        attend(qp + bh * T * kHeadDim, kp + bh * L * kHeadDim, vp + bh * L * kHeadDim,
               op + bh * T * kHeadDim, T, L, scores);
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
