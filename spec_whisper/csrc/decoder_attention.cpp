// A decoder pass's attention on CPU: its few queries per row over the encoder's frames (cross-
// attention) or over the row's own cached tokens up to each query's position (self-attention).
//
// A Whisper decoder pass at batch 8 reads about 300 MB of cross-attention keys and values (8 rows x
// 6 layers x 1500 frames x 512 x 2 in fp32), the largest read of the pass. PyTorch's CPU attention
// tiles queries and keys for matrix products, packing each block of keys, which pays for long query
// blocks, not for the 1-17 queries per row of a decoder pass. Here every key and value row is read
// once, for all the queries of its row: 1.8-5.1x faster than PyTorch's at batch 1-16 and 1-9 queries
// on the machine this was written on (docs/benchmarks.md). Self-attention needs a mask with
// PyTorch's; here each query simply stops at its own position.
//
// With AVX-512 the keys go 16 at a time: each query's 16 dot products are summed across lanes
// together, and the values' weighted sum keeps up to 4 queries in registers. A verify pass's extra
// queries then cost little beside the read of the keys and values, which is what lets drafting pay at
// batch 8: there, over six layers, 3 queries per row ran 3.3x faster than PyTorch's attention in the
// same run, where the loop before (one dot product and one horizontal sum at a time) ran 2.0x
// (`scripts/bench_cross_attention.py`, docs/benchmarks.md).
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

#include "exact_simd.h"
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

#ifdef __AVX512F__
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const uint16_t* bf16) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bf16));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// Keys and values are read from memory once per pass, and a verify pass's several queries give the
// core enough arithmetic per key to hide that read, if the loads are asked for ahead: two blocks of 16
// keys ahead (the hardware's own prefetch left the arithmetic and the memory taking turns).
constexpr int64_t kAheadKeys = 32;

inline void prefetch(const void* begin, int64_t bytes) {
  const char* p = static_cast<const char*>(begin);
  for (int64_t i = 0; i < bytes; i += 64) _mm_prefetch(p + i, _MM_HINT_T0);
}

// The lane sums of 16 vectors as one vector, summed in the same tree for each (exact_add: a key's
// score must not depend on where its block ends). A horizontal sum per dot product cost more than its
// four multiply-adds, and verify passes make several per key.
inline __m512 lane_sums(const __m512 (&a)[16]) {
  __m512 pairs[8], quads[4];
  for (int i = 0; i < 8; ++i)  // per 128 bits: [a0 + a2, b0 + b2, a1 + a3, b1 + b3]
    pairs[i] = exact_add(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i)  // per 128 bits: the four vectors' sums over those 128 bits
    quads[i] = exact_add(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 low = exact_add(_mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(quads[0], quads[1], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 high = exact_add(_mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_f32x4(quads[2], quads[3], _MM_SHUFFLE(3, 2, 3, 2)));
  return exact_add(_mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(2, 0, 2, 0)),
                   _mm512_shuffle_f32x4(low, high, _MM_SHUFFLE(3, 1, 3, 1)));
}

// One query's dot products with keys [0, count) of a block of 16, as a vector (zero past count).
template <typename KV>
inline __m512 block_dots(const float* query, const KV* keys, int64_t count) {
  const __m512 q0 = load16(query), q1 = load16(query + 16), q2 = load16(query + 32), q3 = load16(query + 48);
  __m512 dots[16];
  for (int j = 0; j < 16; ++j) {
    if (j >= count) {
      dots[j] = _mm512_setzero_ps();
      continue;
    }
    const KV* key = keys + j * kHeadDim;
    __m512 sum = _mm512_mul_ps(q0, load16(key));
    sum = _mm512_fmadd_ps(q1, load16(key + 16), sum);
    sum = _mm512_fmadd_ps(q2, load16(key + 32), sum);
    dots[j] = _mm512_fmadd_ps(q3, load16(key + 48), sum);
  }
  return lane_sums(dots);
}

// scores[t][l] = scale q_t . k_l for l < seen[t], 16 keys at a time: each block of keys stays in the
// L1 cache while every query of the pass reads it.
template <typename KV>
void dot_scores(const float* q, int64_t q_stride, const KV* k, int64_t T, int64_t L, const int64_t* seen,
                int64_t longest, float scale, float* scores) {
  const __m512 scaled = _mm512_set1_ps(scale);
  for (int64_t l0 = 0; l0 < longest; l0 += 16) {
    const int64_t count = std::min<int64_t>(16, longest - l0);
    if (l0 + kAheadKeys < longest) prefetch(k + (l0 + kAheadKeys) * kHeadDim, 16 * kHeadDim * sizeof(KV));
    for (int64_t t = 0; t < T; ++t) {
      if (l0 >= seen[t]) continue;
      const __m512 dots = _mm512_mul_ps(block_dots(q + t * q_stride, k + l0 * kHeadDim, count), scaled);
      const int64_t kept = std::min<int64_t>(16, seen[t] - l0);
      _mm512_mask_storeu_ps(scores + t * L + l0, static_cast<__mmask16>((1u << kept) - 1), dots);
    }
  }
}

// out[t] = sum over l < seen[t] of weights[t][l] v_l, for up to G queries at once held in registers,
// each summed in key order whatever G is.
template <int G, typename KV>
void weigh_group(const float* weights, int64_t L, const KV* v, const int64_t* seen, float* out, int64_t out_stride) {
  __m512 total[G][4];
  int64_t longest = 0;
  for (int g = 0; g < G; ++g) {
    longest = std::max(longest, seen[g]);
    for (int c = 0; c < 4; ++c) total[g][c] = _mm512_setzero_ps();
  }
  for (int64_t l = 0; l < longest; ++l) {
    const KV* value = v + l * kHeadDim;
    if (l + kAheadKeys < longest) prefetch(value + kAheadKeys * kHeadDim, kHeadDim * sizeof(KV));
    const __m512 v0 = load16(value), v1 = load16(value + 16), v2 = load16(value + 32), v3 = load16(value + 48);
    for (int g = 0; g < G; ++g) {
      if (l >= seen[g]) continue;
      const __m512 w = _mm512_set1_ps(weights[g * L + l]);
      total[g][0] = _mm512_fmadd_ps(w, v0, total[g][0]);
      total[g][1] = _mm512_fmadd_ps(w, v1, total[g][1]);
      total[g][2] = _mm512_fmadd_ps(w, v2, total[g][2]);
      total[g][3] = _mm512_fmadd_ps(w, v3, total[g][3]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(out + g * out_stride + 16 * c, total[g][c]);
}

template <typename KV>
void weigh_values(const float* weights, int64_t L, const KV* v, int64_t T, const int64_t* seen, float* out,
                  int64_t out_stride) {
  for (int64_t t = 0; t < T; t += 4) {
    const float* w = weights + t * L;
    float* o = out + t * out_stride;
    switch (std::min<int64_t>(4, T - t)) {
      case 1: weigh_group<1>(w, L, v, seen + t, o, out_stride); break;
      case 2: weigh_group<2>(w, L, v, seen + t, o, out_stride); break;
      case 3: weigh_group<3>(w, L, v, seen + t, o, out_stride); break;
      default: weigh_group<4>(w, L, v, seen + t, o, out_stride); break;
    }
  }
}
#else
template <typename KV>
void dot_scores(const float* q, int64_t q_stride, const KV* k, int64_t T, int64_t L, const int64_t* seen,
                int64_t longest, float scale, float* scores) {
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
}

template <typename KV>
void weigh_values(const float* weights, int64_t L, const KV* v, int64_t T, const int64_t* seen, float* out,
                  int64_t out_stride) {
  for (int64_t t = 0; t < T; ++t) std::fill(out + t * out_stride, out + t * out_stride + kHeadDim, 0.f);
  const int64_t longest = *std::max_element(seen, seen + T);
  for (int64_t l = 0; l < longest; ++l) {
    const KV* value = v + l * kHeadDim;
    for (int64_t t = 0; t < T; ++t) {
      if (l >= seen[t]) continue;
      const float weight = weights[t * L + l];
      float* o = out + t * out_stride;
#pragma omp simd
      for (int64_t d = 0; d < kHeadDim; ++d) o[d] += weight * widen(value[d]);
    }
  }
}
#endif

// softmax(scale q k^T) v for one (row, head): q [T, 64] with `q_stride` between queries, k and v
// [L, 64], out [T, 64] with `out_stride`. Query t sees keys [0, seen[t]). The scale, 64^-0.5, is a
// power of two, so scaling the product gives the bits of scaling the query first.
template <typename KV>
void attend(const float* q, int64_t q_stride, const KV* k, const KV* v, float* out, int64_t out_stride,
            int64_t T, int64_t L, const int64_t* seen, float scale, std::vector<float>& scores) {
  if (T == 0) return;
  scores.resize(T * L);
  dot_scores(q, q_stride, k, T, L, seen, *std::max_element(seen, seen + T), scale, scores.data());
  for (int64_t t = 0; t < T; ++t) {
    float* row = scores.data() + t * L;
    const float inverse = 1.f / exp_minus_max(row, seen[t]);
#pragma omp simd
    for (int64_t l = 0; l < seen[t]; ++l) row[l] *= inverse;
  }
  weigh_values(scores.data(), L, v, T, seen, out, out_stride);
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
