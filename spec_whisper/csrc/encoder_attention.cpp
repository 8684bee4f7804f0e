// Self-attention of the encoder's 1500 frames, on CPU.
//
// PyTorch's CPU attention ran whisper-base's encoder attention at about 150 GFLOP/s here, a third
// of what the machine's matrix products reach, and a third of the encoder's time once its linear
// layers ran through oneDNN. This kernel keeps a block of queries in registers against each head's
// transposed keys, which stay in the core's L2 cache (64 x 1500 floats per head), and takes the
// queries, keys and values straight from the fused projection's output, writing the result in the
// layout the output projection reads: no head transposes and no copies.
//
// Its tiles are sized for the vector registers: AVX-512's 32 of 16 floats, or AVX2's 16 of 8. A
// block's products with the values keep 6 queries x 64 outputs of accumulators, 24 AVX-512 registers
// but 48 AVX2 ones; built for AVX2 in one pass they spilled and ran 14x slower than PyTorch's
// attention, so AVX2 takes the 64 outputs in four passes of 16 (12 accumulators). Elsewhere
// `encoder_attention_supported` is false and the encoder takes PyTorch's attention.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "exp.h"

namespace {

#if defined(__AVX512F__)
#define SPEC_WHISPER_ENCODER_ATTENTION 1
constexpr int64_t kLanes = 16;  // floats per vector below: one register
constexpr int64_t kValueVectors = 4;  // output vectors per pass over the values: all 64 outputs
#elif defined(__AVX2__) && defined(__FMA__)
#define SPEC_WHISPER_ENCODER_ATTENTION 1
constexpr int64_t kLanes = 8;
constexpr int64_t kValueVectors = 2;
#else
constexpr int64_t kLanes = 8;  // not built for this target: the encoder takes PyTorch's attention
constexpr int64_t kValueVectors = 2;
#endif
constexpr int64_t kHeadDim = 64;
constexpr int64_t kQueries = 6;  // queries per block: 6 x 2 score accumulators fit either register file
constexpr int64_t kKeys = 2 * kLanes;  // keys per score tile

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }

// Each head's keys are packed tile by tile, `kt` [stride / kKeys][kHeadDim][kKeys], and its values
// pass by pass, `vp` [kHeadDim / kPass][frames][kPass]: every tile and every pass reads one run of
// memory that the prefetcher follows, where the fused projection's rows lie 3 * width floats apart.
constexpr int64_t kPass = kValueVectors * kLanes;  // outputs per pass over the values
constexpr int64_t kChunk = 256;  // frames per run of the values

// Scores of kQueries queries (rows of `q`, kHeadDim each) against one tile of packed keys, into
// `scores` [kQueries, stride] from column `key0`.
inline void score_tile(const float* q, const float* tile, int64_t stride, int64_t key0, float* scores) {
  Vec acc[kQueries][2] = {};
  for (int64_t d = 0; d < kHeadDim; ++d) {
    const Vec k0 = load(tile + d * kKeys), k1 = load(tile + d * kKeys + kLanes);
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

// One block of queries of one head: q [kQueries, kHeadDim] scaled, the head's packed keys `kt` and
// values `vp`, out rows every `out_step` floats.
void attend_block(const float* q, const float* kt, const float* vp, int64_t frames, int64_t stride,
                  float* scores, float* out, int64_t out_step, int64_t rows) {
  for (int64_t key0 = 0; key0 < stride; key0 += kKeys) score_tile(q, kt + key0 * kHeadDim, stride, key0, scores);
  float inverse[kQueries];
  for (int64_t i = 0; i < kQueries; ++i) inverse[i] = 1.f / exp_minus_max(scores + i * stride, frames);
  // The values in runs of kChunk frames, each run through every pass while its scores stay in the
  // core's L1 cache (all 6 x 1500 scores do not), the accumulators parked here between runs.
  Vec sums[kQueries][kHeadDim / kLanes] = {};
  for (int64_t l0 = 0; l0 < frames; l0 += kChunk) {
    const int64_t l1 = std::min(frames, l0 + kChunk);
    for (int64_t first = 0; first < kHeadDim; first += kPass) {
      const float* values = vp + first * frames;
      Vec acc[kQueries][kValueVectors];
      for (int64_t i = 0; i < kQueries; ++i)
        for (int64_t c = 0; c < kValueVectors; ++c) acc[i][c] = sums[i][first / kLanes + c];
      for (int64_t l = l0; l < l1; ++l) {
        Vec vs[kValueVectors];
        for (int64_t c = 0; c < kValueVectors; ++c) vs[c] = load(values + l * kPass + c * kLanes);
        for (int64_t i = 0; i < kQueries; ++i) {
          const float p = scores[i * stride + l];
          for (int64_t c = 0; c < kValueVectors; ++c) acc[i][c] += p * vs[c];
        }
      }
      for (int64_t i = 0; i < kQueries; ++i)
        for (int64_t c = 0; c < kValueVectors; ++c) sums[i][first / kLanes + c] = acc[i][c];
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < kHeadDim / kLanes; ++c) store(out + i * out_step + c * kLanes, sums[i][c] * inverse[i]);
  }
}

}  // namespace

bool encoder_attention_supported() {
#ifdef SPEC_WHISPER_ENCODER_ATTENTION
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
  // Keys and values packed per (row, head); keys zero past the last frame.
  auto keys = torch::zeros({B, heads, stride * kHeadDim}, qkv.options());
  auto values = torch::empty({B, heads, T * kHeadDim}, qkv.options());
  const float* src = qkv.data_ptr<float>();
  float* kt = keys.data_ptr<float>();
  float* vp = values.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const float* k = src + (bh / heads) * T * step + width + (bh % heads) * kHeadDim;
      const float* v = k + width;
      float* kh = kt + bh * stride * kHeadDim;
      float* vh = vp + bh * T * kHeadDim;
      for (int64_t l = 0; l < T; ++l) {
        for (int64_t d = 0; d < kHeadDim; ++d) {
          kh[l / kKeys * kKeys * kHeadDim + d * kKeys + l % kKeys] = k[l * step + d];
          vh[d / kPass * kPass * T + l * kPass + d % kPass] = v[l * step + d];
        }
      }
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
      attend_block(q, kt + bh * stride * kHeadDim, vp + bh * T * kHeadDim, T, stride, scores.data(),
                   dst + b * T * width + t0 * width + h * kHeadDim, width, rows);
    }
  });
  return out;
}
