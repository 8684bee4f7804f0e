// Vector arithmetic the kernels share that fast math may not regroup. The module is built with
// -ffast-math for the softmax's exp (exp.h), which lets the compiler reassociate plain vector adds and
// contract a multiply and an add into one; sums written with these keep the order in the source, so a
// result does not depend on how the compiler unrolls the code around it (a row count, a block's end).
#pragma once

// The few-row products (few_rows_linear.cpp) and the screened head that must agree with them
// (screened_argmax.cpp): AVX-512, or AVX2 with FMA and F16C (x86-64-v3).
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#define SPEC_WHISPER_FEW_ROWS 1
#include <immintrin.h>
#endif

#ifdef __AVX512F__
inline __m512 exact_add(__m512 a, __m512 b) {
  return _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

inline __m512 exact_mul(__m512 a, __m512 b) {
  return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#elif defined(SPEC_WHISPER_FEW_ROWS)
// AVX2 has no per-instruction rounding to pin an operation with: an empty asm statement hides each
// result from the optimiser, so nothing can be regrouped or fused across it.
inline __m256 exact_add(__m256 a, __m256 b) {
  __m256 sum = _mm256_add_ps(a, b);
  asm("" : "+x"(sum));
  return sum;
}

inline __m256 exact_mul(__m256 a, __m256 b) {
  __m256 product = _mm256_mul_ps(a, b);
  asm("" : "+x"(product));
  return product;
}
#endif
