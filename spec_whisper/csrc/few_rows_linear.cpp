// `y = x W^T + b` for the few rows of a decoder pass (fp32, x86 CPUs with AVX-512).
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
// Every output is summed the same way whatever the rows beside it: chunks of 64 terms in order, one
// fused multiply-add each, chunk sums added in order, then the bias. A row gets the same bits in a
// 1-token greedy pass and in a verify pass of any size, which exactness relies on.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 64;  // outputs per packed block: four 16-lane registers
constexpr int64_t kChunk = 64;  // terms per partial sum: keeps the rounding error near blocked GEMM's
constexpr int64_t kAhead = 16;  // rows of a block prefetched ahead when streaming

#ifdef __AVX512F__
constexpr int64_t kLanes = 16;
constexpr int kRegisters = kBlock / kLanes;

// An addition fast math may not regroup (the module is built with -ffast-math for the attention's
// exp): the sums above must not depend on how the compiler unrolls each row count.
inline __m512 exact_add(__m512 a, __m512 b) {
  return _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
inline __m512 exact_mul(__m512 a, __m512 b) {
  return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

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

// All M rows times one block, four rows at a time (the block stays in cache between them). The
// last block of a vocabulary that is not a multiple of 64 goes through a scratch row.
template <typename W>
void block(const float* x, int64_t M, int64_t K, const W* w, const float* scale, const float* bias, float* y,
           int64_t out, int64_t valid, bool stream) {
  alignas(64) float scratch[4 * kBlock];
  for (int64_t m = 0; m < M; m += 4) {
    const int64_t rows = std::min<int64_t>(4, M - m);
    float* target = valid == kBlock ? y + m * out : scratch;
    const int64_t stride = valid == kBlock ? out : kBlock;
    const float* xm = x + m * K;
    switch (rows) {
      case 4: tile<4>(xm, K, w, scale, bias, target, stride, stream); break;
      case 3: tile<3>(xm, K, w, scale, bias, target, stride, stream); break;
      case 2: tile<2>(xm, K, w, scale, bias, target, stride, stream); break;
      default: tile<1>(xm, K, w, scale, bias, target, stride, stream); break;
    }
    if (valid != kBlock)
      for (int64_t r = 0; r < rows; ++r) std::memcpy(y + (m + r) * out, scratch + r * kBlock, valid * sizeof(float));
  }
}

template <typename W>
void product(const torch::Tensor& x, const torch::Tensor& packed, const float* scale, const float* bias,
             torch::Tensor& y, bool stream) {
  const int64_t M = x.size(0), K = x.size(1), blocks = packed.size(0), out = y.size(1);
  const float* xp = x.data_ptr<float>();
  const W* wp = packed.data_ptr<W>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t valid = std::min(kBlock, out - b * kBlock);
      block(xp, M, K, wp + b * K * kBlock, scale ? scale + b * kBlock : nullptr, bias + b * kBlock, yp + b * kBlock,
            out, valid, stream && M <= 4);
    }
  });
}
#endif

}  // namespace

bool few_rows_linear_supported() {
#ifdef __AVX512F__
  return true;
#else
  return false;
#endif
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
  TORCH_CHECK(few_rows_linear_supported(), "built without AVX-512");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: [M, K] contiguous fp32");
  TORCH_CHECK(packed.dim() == 3 && packed.size(1) == x.size(1) && packed.size(2) == kBlock, "packed weights");
  TORCH_CHECK(out_features > (packed.size(0) - 1) * kBlock && out_features <= packed.size(0) * kBlock,
              "out_features does not match the packed weights");
  const bool int8 = packed.scalar_type() == torch::kInt8;
  TORCH_CHECK(int8 == scale.has_value(), "int8 weights need their scale, fp32 weights none");
  auto y = torch::empty({x.size(0), out_features}, x.options());
#ifdef __AVX512F__
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
