// Vector arithmetic the kernels share that fast math may not regroup. The module is built with
// -ffast-math for the softmax's exp (exp.h), which lets the compiler reassociate plain vector adds;
// sums written with these keep the order in the source, so a result does not depend on how the
// compiler unrolls the code around it (a row count, a block's end).
#pragma once

#ifdef __AVX512F__
#include <immintrin.h>

inline __m512 exact_add(__m512 a, __m512 b) {
  return _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

inline __m512 exact_mul(__m512 a, __m512 b) {
  return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#endif
