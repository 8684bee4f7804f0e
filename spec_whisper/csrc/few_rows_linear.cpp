// `y = x W^T + b` for the few rows of a decoder pass (fp32, x86 CPUs with AVX-512, or AVX2 with FMA and F16C).
//
// A decoder pass multiplies 1 to a few dozen rows by each weight matrix, so it is bound by reading
// the weights. oneDNN's prepacked inner product pays about a third more for a 4-row verify pass than
// for a 1-token greedy pass on whisper-base, and its 1-row path reads the weights below this
// machine's bandwidth. Here the weights are packed once in blocks of 64 outputs, `[N / 64][K][64]`,
// and read once per call in order; each k adds x[m, k] * w[n, k] into registers holding 64 outputs
// of up to 4 rows (docs/benchmarks.md).
//
// Weights that fp16 holds exactly (Whisper's checkpoints are published in fp16) are stored in fp16 and
// widened as they are loaded: half the bytes, the same products to the bit. Int8 weights (an
// assistant's, for drafts) are widened too, each output scaled by its row's step at the end: a
// quarter of the bytes, and activations kept in fp32.
//
// A main model's weights are read once per pass and never fit in the caches: with `stream` they are
// prefetched ahead as non-temporal data (passes of up to 4 rows, which read each block once), which
// made whisper-base's passes about 6% faster here.
//
// An assistant's drafts need not be exact, so its int8 weights can also meet int8 activations (each
// row rounded to its own 127 steps) in AVX-512 VNNI's byte dot products, which do 64 multiply-adds
// per instruction where widening int8 to fp32 does 16 and spends two more instructions on each 16
// weights. Those weights are packed `[N / 64][K / 4][64][4]` (four consecutive terms per output, as
// the instruction takes them) and the sums are integers, exact in any order.
//
// With AVX2 (x86-64-v3) the same sums run 8 lanes at a time over half a block (32 outputs, one cache
// line of fp16 weights) and two rows at a time, which fits AVX2's 16 registers; each output's terms
// are summed in the same order, so its bits are the AVX-512 kernel's.
//
// Every output is summed the same way whatever the rows beside it: chunks of 64 terms in order, one
// fused multiply-add each, chunk sums added in order, then the bias. A row gets the same bits in a
// 1-token greedy pass and in a verify pass of any size, which exactness relies on.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "exact_simd.h"

namespace {

constexpr int64_t kBlock = 64;  // outputs per packed block: four 16-lane registers
constexpr int64_t kChunk = 64;  // terms per partial sum: keeps the rounding error near blocked GEMM's
constexpr int64_t kAhead = 16;  // rows of a block prefetched ahead when streaming

#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
constexpr int kRegisters = kBlock / kLanes;

// 16 weights of one packed row as fp32: loaded, or widened from fp16 or int8 (exactly).
inline __m512 load16(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 load16(const at::Half* w) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
}
inline __m512 load16(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))));
}

// Rows x[0 .. R) (stride K) times one packed block `w [K][64]` -> y[r][0 .. 64) (stride `out`), each
// output times its weights' `scale` (int8 weights; none for fp32) plus its bias.
template <int R, typename W>
void tile(const float* x, int64_t K, const W* w, const float* scale, const float* bias, float* y, int64_t out,
          bool stream) {
  __m512 total[R][kRegisters];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) total[r][j] = _mm512_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    __m512 sum[R][kRegisters];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kRegisters; ++j) sum[r][j] = _mm512_setzero_ps();
    const int64_t k1 = std::min(K, k0 + kChunk);
    for (int64_t k = k0; k < k1; ++k) {
      if (stream) {
        const char* ahead = reinterpret_cast<const char*>(w + (k + kAhead) * kBlock);
        for (int64_t line = 0; line < kBlock * static_cast<int64_t>(sizeof(W)); line += 64)
          _mm_prefetch(ahead + line, _MM_HINT_NTA);
      }
      __m512 weights[kRegisters];
      for (int j = 0; j < kRegisters; ++j) weights[j] = load16(w + k * kBlock + j * kLanes);
      for (int r = 0; r < R; ++r) {
        const __m512 xk = _mm512_set1_ps(x[r * K + k]);
        for (int j = 0; j < kRegisters; ++j) sum[r][j] = _mm512_fmadd_ps(xk, weights[j], sum[r][j]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kRegisters; ++j) total[r][j] = exact_add(total[r][j], sum[r][j]);
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) {
      __m512 v = total[r][j];
      if (scale) v = exact_mul(v, _mm512_loadu_ps(scale + j * kLanes));
      _mm512_storeu_ps(y + r * out + j * kLanes, exact_add(v, _mm512_loadu_ps(bias + j * kLanes)));
    }
}

#elif defined(SPEC_WHISPER_FEW_ROWS)
constexpr int64_t kLanes = 8;
constexpr int64_t kHalf = 32;  // outputs summed at once: four 8-lane registers
constexpr int kRegisters = kHalf / kLanes;

inline __m256 load8(const float* w) { return _mm256_loadu_ps(w); }
inline __m256 load8(const at::Half* w) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))); }
inline __m256 load8(const int8_t* w) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}

// Rows x[0 .. R) (R <= 2, stride K) times 32 outputs of a packed block `w [K][64]` (w points at the
// first of them) -> y[r][0 .. 32), each output times its `scale` (int8 weights) plus its bias.
template <int R, typename W>
void half_tile(const float* x, int64_t K, const W* w, const float* scale, const float* bias, float* y, int64_t out) {
  __m256 total[R][kRegisters];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) total[r][j] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    __m256 sum[R][kRegisters];
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kRegisters; ++j) sum[r][j] = _mm256_setzero_ps();
    const int64_t k1 = std::min(K, k0 + kChunk);
    for (int64_t k = k0; k < k1; ++k) {
      __m256 xk[R];
      for (int r = 0; r < R; ++r) xk[r] = _mm256_set1_ps(x[r * K + k]);
      for (int j = 0; j < kRegisters; ++j) {
        const __m256 weights = load8(w + k * kBlock + j * kLanes);
        for (int r = 0; r < R; ++r) sum[r][j] = _mm256_fmadd_ps(xk[r], weights, sum[r][j]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kRegisters; ++j) total[r][j] = exact_add(total[r][j], sum[r][j]);
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) {
      __m256 v = total[r][j];
      if (scale) v = exact_mul(v, _mm256_loadu_ps(scale + j * kLanes));
      _mm256_storeu_ps(y + r * out + j * kLanes, exact_add(v, _mm256_loadu_ps(bias + j * kLanes)));
    }
}

// As the AVX-512 `tile`: each half of the block, two rows at a time (the block stays in cache between
// them). `stream` is not used: its prefetch distance is sized for whole-block reads (not tried here).
template <int R, typename W>
void tile(const float* x, int64_t K, const W* w, const float* scale, const float* bias, float* y, int64_t out,
          bool /*stream*/) {
  for (int64_t h = 0; h < kBlock; h += kHalf)
    for (int r = 0; r < R; r += 2) {
      const float* s = scale ? scale + h : nullptr;
      if (R - r >= 2)
        half_tile<2>(x + r * K, K, w + h, s, bias + h, y + r * out + h, out);
      else
        half_tile<1>(x + r * K, K, w + h, s, bias + h, y + r * out + h, out);
    }
}
#endif

#ifdef SPEC_WHISPER_FEW_ROWS
// All M rows times every block of 64 outputs of y [M, out], blocks shared out between the threads,
// four rows at a time within a block (which stays in cache between them):
// `tile(std::integral_constant<int, R>{}, b, m, target, stride)` computes rows m .. m + R of block b
// into `target`. The last block of a vocabulary that is not a multiple of 64 goes through a scratch row.
template <typename Tile>
void blocks(int64_t M, int64_t count, float* y, int64_t out, Tile&& tile) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float scratch[4 * kBlock];
    for (int64_t b = begin; b < end; ++b) {
      float* yb = y + b * kBlock;
      const int64_t valid = std::min(kBlock, out - b * kBlock);
      for (int64_t m = 0; m < M; m += 4) {
        const int64_t rows = std::min<int64_t>(4, M - m);
        float* target = valid == kBlock ? yb + m * out : scratch;
        const int64_t stride = valid == kBlock ? out : kBlock;
        switch (rows) {
          case 4: tile(std::integral_constant<int, 4>{}, b, m, target, stride); break;
          case 3: tile(std::integral_constant<int, 3>{}, b, m, target, stride); break;
          case 2: tile(std::integral_constant<int, 2>{}, b, m, target, stride); break;
          default: tile(std::integral_constant<int, 1>{}, b, m, target, stride); break;
        }
        if (valid != kBlock)
          for (int64_t r = 0; r < rows; ++r)
            std::memcpy(yb + (m + r) * out, scratch + r * kBlock, valid * sizeof(float));
      }
    }
  });
}

template <typename W>
void product(const torch::Tensor& x, const torch::Tensor& packed, const float* scale, const float* bias,
             torch::Tensor& y, bool stream) {
  const int64_t M = x.size(0), K = x.size(1);
  const float* xp = x.data_ptr<float>();
  const W* wp = packed.data_ptr<W>();
  blocks(M, packed.size(0), y.data_ptr<float>(), y.size(1), [&](auto rows, int64_t b, int64_t m, float* target,
                                                                  int64_t stride) {
    const int64_t o = b * kBlock;
    tile<decltype(rows)::value>(xp + m * K, K, wp + b * K * kBlock, scale ? scale + o : nullptr, bias + o, target,
                                stride, stream && M <= 4);
  });
}
#endif

#ifdef __AVX512VNNI__
// Rows of x rounded to int8 steps of their own, shifted by 128 into unsigned bytes (VNNI multiplies
// unsigned by signed bytes): x[m, k] ~ step[m] * (q[m, k] - 128).
void quantize_rows(const float* x, int64_t M, int64_t K, uint8_t* q, float* step) {
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K;
    __m512 peak = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += kLanes) peak = _mm512_max_ps(peak, _mm512_abs_ps(_mm512_loadu_ps(row + k)));
    const float largest = _mm512_reduce_max_ps(peak);
    step[m] = largest > 0.0f ? largest / 127.0f : 1.0f;
    const __m512 inverse = _mm512_set1_ps(1.0f / step[m]);
    const __m512i offset = _mm512_set1_epi32(128);
    for (int64_t k = 0; k < K; k += kLanes) {
      const __m512i rounded = _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_loadu_ps(row + k), inverse),
                                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i shifted = _mm512_add_epi32(_mm512_max_epi32(_mm512_min_epi32(rounded, _mm512_set1_epi32(127)),
                                                                _mm512_set1_epi32(-127)),
                                               offset);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + m * K + k), _mm512_cvtepi32_epi8(shifted));
    }
  }
}

// Rows q[0 .. R) (stride K) times one block packed `[K / 4][64][4]` -> y[r][0 .. 64): the integer
// sums, less 128 times each output's weight sum (`scale[1]`), times both steps, plus the bias.
template <int R>
void byte_tile(const uint8_t* q, const float* row_step, int64_t K, const int8_t* w, const float* weight_step,
               const float* weight_sum, const float* bias, float* y, int64_t out) {
  __m512i sum[R][kRegisters];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) sum[r][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 4) {
    __m512i weights[kRegisters];
    for (int j = 0; j < kRegisters; ++j) weights[j] = _mm512_loadu_si512(w + k * kBlock + j * 64);
    for (int r = 0; r < R; ++r) {
      const __m512i xk = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q + r * K + k));
      for (int j = 0; j < kRegisters; ++j) sum[r][j] = _mm512_dpbusd_epi32(sum[r][j], xk, weights[j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kRegisters; ++j) {
      const __m512i shift = _mm512_slli_epi32(_mm512_cvtps_epi32(_mm512_loadu_ps(weight_sum + j * kLanes)), 7);
      const __m512 exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(sum[r][j], shift));
      const __m512 steps = _mm512_mul_ps(_mm512_loadu_ps(weight_step + j * kLanes), _mm512_set1_ps(row_step[r]));
      _mm512_storeu_ps(y + r * out + j * kLanes,
                       _mm512_fmadd_ps(exact, steps, _mm512_loadu_ps(bias + j * kLanes)));
    }
}

void byte_product(const torch::Tensor& x, const torch::Tensor& packed, const float* weight_step,
                  const float* weight_sum, const float* bias, torch::Tensor& y) {
  const int64_t M = x.size(0), K = x.size(1);
  std::vector<uint8_t> q(M * K);
  std::vector<float> row_step(M);
  quantize_rows(x.data_ptr<float>(), M, K, q.data(), row_step.data());
  const int8_t* wp = packed.data_ptr<int8_t>();
  blocks(M, packed.size(0), y.data_ptr<float>(), y.size(1), [&](auto rows, int64_t b, int64_t m, float* target,
                                                                  int64_t stride) {
    const int64_t o = b * kBlock;
    byte_tile<decltype(rows)::value>(q.data() + m * K, row_step.data() + m, K, wp + b * K * kBlock, weight_step + o,
                                     weight_sum + o, bias + o, target, stride);
  });
}
#endif

}  // namespace

bool few_rows_linear_supported() {
#ifdef SPEC_WHISPER_FEW_ROWS
  return true;
#else
  return false;
#endif
}

bool few_rows_linear_bytes_supported() {
#ifdef __AVX512VNNI__
  return true;
#else
  return false;
#endif
}

// [N, K] int8 weights, [N] bias and per-output steps -> weights packed as [ceil(N / 64), K / 4, 64, 4] for
// int8 activations, bias padded, and [2, ceil(N / 64) * 64] steps and weight sums (exact in fp32).
std::vector<torch::Tensor> few_rows_linear_pack_bytes(const torch::Tensor& weight, const torch::Tensor& bias,
                                                      const torch::Tensor& step) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kInt8, "weight: [N, K] int8");
  const int64_t N = weight.size(0), K = weight.size(1), blocks = (N + kBlock - 1) / kBlock;
  TORCH_CHECK(K % 16 == 0, "int8 activations need K a multiple of 16");
  auto padded = torch::zeros({blocks * kBlock, K}, weight.options());
  padded.narrow(0, 0, N).copy_(weight);
  auto packed = padded.view({blocks, kBlock, K / 4, 4}).permute({0, 2, 1, 3}).contiguous();
  auto scale = torch::zeros({2, blocks * kBlock}, bias.options().dtype(torch::kFloat32));
  scale[0].narrow(0, 0, N).copy_(step);
  scale[1].narrow(0, 0, N).copy_(weight.to(torch::kFloat32).sum(1));
  auto padded_bias = torch::zeros({blocks * kBlock}, bias.options().dtype(torch::kFloat32));
  padded_bias.narrow(0, 0, N).copy_(bias);
  return {packed, padded_bias, scale};
}

// [N, K] weights (fp32, fp16, or int8 with per-output `scale`) and [N] bias -> weights packed as
// [ceil(N / 64), K, 64], and bias and scale padded to ceil(N / 64) * 64 (padding outputs are zeros that
// the product never writes out).
std::vector<torch::Tensor> few_rows_linear_pack(const torch::Tensor& weight, const torch::Tensor& bias,
                                                const c10::optional<torch::Tensor>& scale) {
  const bool int8 = weight.scalar_type() == torch::kInt8;
  const bool wide = weight.scalar_type() == torch::kFloat32 || weight.scalar_type() == torch::kHalf;
  TORCH_CHECK(weight.dim() == 2 && (int8 || wide), "weight: [N, K] fp32, fp16 or int8");
  TORCH_CHECK(int8 == scale.has_value(), "int8 weights need their scale, fp32 weights none");
  const int64_t N = weight.size(0), K = weight.size(1), blocks = (N + kBlock - 1) / kBlock;
  auto pad = [&](const torch::Tensor& t) {
    auto padded = torch::zeros({blocks * kBlock}, bias.options().dtype(torch::kFloat32));
    padded.narrow(0, 0, N).copy_(t);
    return padded;
  };
  auto padded = torch::zeros({blocks * kBlock, K}, weight.options());
  padded.narrow(0, 0, N).copy_(weight);
  auto packed = padded.view({blocks, kBlock, K}).transpose(1, 2).contiguous();
  return {packed, pad(bias), int8 ? pad(*scale) : torch::Tensor()};
}

torch::Tensor few_rows_linear(const torch::Tensor& x, const torch::Tensor& packed, const torch::Tensor& bias,
                              const c10::optional<torch::Tensor>& scale, int64_t out_features, bool stream) {
  TORCH_CHECK(few_rows_linear_supported(), "built without AVX-512 or AVX2 with FMA and F16C");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: [M, K] contiguous fp32");
  const bool bytes = packed.dim() == 4;  // int8 weights packed for int8 activations
  TORCH_CHECK(bytes ? packed.size(1) * 4 == x.size(1) && packed.size(2) == kBlock && packed.size(3) == 4
                    : packed.dim() == 3 && packed.size(1) == x.size(1) && packed.size(2) == kBlock,
              "packed weights");
  TORCH_CHECK(out_features > (packed.size(0) - 1) * kBlock && out_features <= packed.size(0) * kBlock,
              "out_features does not match the packed weights");
  const bool int8 = packed.scalar_type() == torch::kInt8;
  TORCH_CHECK(int8 == scale.has_value(), "int8 weights need their scale, fp32 weights none");
  auto y = torch::empty({x.size(0), out_features}, x.options());
  if (bytes) {
#ifdef __AVX512VNNI__
    const float* steps = scale->data_ptr<float>();
    byte_product(x, packed, steps, steps + scale->size(1), bias.data_ptr<float>(), y);
    return y;
#else
    TORCH_CHECK(false, "built without AVX-512 VNNI");
#endif
  }
#ifdef SPEC_WHISPER_FEW_ROWS
  const float* bp = bias.data_ptr<float>();
  if (int8)
    product<int8_t>(x, packed, scale->data_ptr<float>(), bp, y, stream);
  else if (packed.scalar_type() == torch::kHalf)
    product<at::Half>(x, packed, nullptr, bp, y, stream);
  else
    product<float>(x, packed, nullptr, bp, y, stream);
#endif
  return y;
}
