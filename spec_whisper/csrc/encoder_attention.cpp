// Self-attention of the encoder's 1500 frames, on CPU.
//
// PyTorch's CPU attention ran whisper-base's encoder attention at about 150 GFLOP/s here, a third
// of what the machine's matrix products reach, and a third of the encoder's time once its linear
// layers ran through oneDNN. This kernel keeps a block of queries in registers against each head's
// transposed keys, which stay in the core's L2 cache (64 x 1500 floats per head), and takes the
// queries, keys and values straight from the fused projection's output, writing the result in the
// layout the output projection reads: no head transposes and no copies.
//
// Its tiles are sized for AVX-512's 32 registers of 16 floats. Built for narrower vectors (AVX2's
// 16 registers of 8), the same code spilled its accumulators and ran 14x slower than PyTorch's
// attention, so `encoder_attention_supported` is false there and the encoder takes PyTorch's.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "exp.h"

namespace {

constexpr int64_t kHeadDim = 64;
constexpr int64_t kLanes = 16;  // floats per vector below: one AVX-512 register
constexpr int64_t kQueries = 6;  // queries per block: 6 x 4 output accumulators fit 32 registers
constexpr int64_t kKeys = 2 * kLanes;  // keys per score tile

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// Scores of kQueries queries (rows of `q`, kHeadDim each) against keys `key0 .. key0 + kKeys` of
// the transposed keys `kt` [kHeadDim, stride], into `scores` [kQueries, stride].
inline void score_tile(const float* q, const float* kt, int64_t stride, int64_t key0, float* scores) {
  Vec acc[kQueries][2] = {};
  for (int64_t d = 0; d < kHeadDim; ++d) {
    const Vec k0 = load(kt + d * stride + key0), k1 = load(kt + d * stride + key0 + kLanes);
    for (int64_t i = 0; i < kQueries; ++i) {
      const float qd = q[i * kHeadDim + d];
      acc[i][0] += qd * k0;
      acc[i][1] += qd * k1;
    }
  }
  for (int64_t i = 0; i < kQueries; ++i) {
    store(scores + i * stride + key0, acc[i][0]);
    store(scores + i * stride + key0 + kLanes, acc[i][1]);
  }
}

// One block of queries of one head: q [kQueries, kHeadDim] scaled, keys transposed `kt`
// [kHeadDim, stride], values rows `v` (every `v_step` floats), out rows every `out_step` floats.
void attend_block(const float* q, const float* kt, const float* v, int64_t v_step, int64_t frames,
                  int64_t stride, float* scores, float* out, int64_t out_step, int64_t rows) {
  for (int64_t key0 = 0; key0 < stride; key0 += kKeys) score_tile(q, kt, stride, key0, scores);
  float inverse[kQueries];
  for (int64_t i = 0; i < kQueries; ++i) inverse[i] = 1.f / exp_minus_max(scores + i * stride, frames);
  Vec acc[kQueries][kHeadDim / kLanes] = {};
  for (int64_t l = 0; l < frames; ++l) {
    const float* value = v + l * v_step;
    Vec vs[kHeadDim / kLanes];
    for (int64_t c = 0; c < kHeadDim / kLanes; ++c) vs[c] = load(value + c * kLanes);
    for (int64_t i = 0; i < kQueries; ++i) {
      const float p = scores[i * stride + l];
      for (int64_t c = 0; c < kHeadDim / kLanes; ++c) acc[i][c] += p * vs[c];
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < kHeadDim / kLanes; ++c) store(out + i * out_step + c * kLanes, acc[i][c] * inverse[i]);
  }
}

}  // namespace

bool encoder_attention_supported() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
}

// qkv [B, T, 3 * H * 64]: queries (unscaled), keys and values side by side, as the fused projection
// writes them. Returns softmax(q k^T / 8) v as [B, T, H * 64].
torch::Tensor encoder_attention(const torch::Tensor& qkv, int64_t heads) {
  TORCH_CHECK(qkv.device().is_cpu() && qkv.scalar_type() == torch::kFloat32 && qkv.dim() == 3,
              "encoder_attention takes a 3-d fp32 CPU tensor");
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(2) == 3 * heads * kHeadDim, "encoder_attention takes heads of 64");
  const int64_t B = qkv.size(0), T = qkv.size(1), width = heads * kHeadDim, step = 3 * width;
  const int64_t stride = (T + kKeys - 1) / kKeys * kKeys;
  const float scale = 0.125f;  // 64 ** -0.5, a power of two: scaling first or last rounds the same
  auto out = torch::empty({B, T, width}, qkv.options());
  // Keys transposed per (row, head), zero past the last frame.
  auto keys = torch::zeros({B, heads, kHeadDim, stride}, qkv.options());
  const float* src = qkv.data_ptr<float>();
  float* kt = keys.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const float* k = src + (bh / heads) * T * step + width + (bh % heads) * kHeadDim;
      float* t = kt + bh * kHeadDim * stride;
      for (int64_t l = 0; l < T; ++l)
        for (int64_t d = 0; d < kHeadDim; ++d) t[d * stride + l] = k[l * step + d];
    }
  });
  const int64_t blocks = (T + kQueries - 1) / kQueries;
  at::parallel_for(0, B * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(kQueries * stride);
    float q[kQueries * kHeadDim];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks, b = bh / heads, h = bh % heads, t0 = (task % blocks) * kQueries;
      const int64_t rows = std::min(kQueries, T - t0);
      const float* row0 = src + b * T * step + t0 * step + h * kHeadDim;
      std::fill(q, q + kQueries * kHeadDim, 0.f);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t d = 0; d < kHeadDim; ++d) q[i * kHeadDim + d] = row0[i * step + d] * scale;
      attend_block(q, kt + bh * kHeadDim * stride, src + b * T * step + 2 * width + h * kHeadDim, step, T, stride,
                   scores.data(), dst + b * T * width + t0 * width + h * kHeadDim, width, rows);
    }
  });
  return out;
}
