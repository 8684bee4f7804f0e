// The softmax arithmetic the attention kernels share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// e^x for x <= 0 in plain arithmetic, so that the compiler vectorises the softmax loop (the C
// library's expf is scalar here and cost as much as the rest of the kernel at 9 queries per row):
// x = n ln2 + r with |r| <= ln2 / 2, e^x = 2^n (1 + r + ... + r^6 / 720), within about 2e-7 relative.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.f);  // e^-87 is about the smallest normal float
  const float n = std::floor(x * 1.44269504f + 0.5f);
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.f / 720;
  p = p * r + 1.f / 120;
  p = p * r + 1.f / 24;
  p = p * r + 1.f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Replaces `row[0 .. n)` by e^(row - max(row)) and returns their sum: a softmax before its division.
inline float exp_minus_max(float* row, int64_t n) {
  const float top = *std::max_element(row, row + n);
  float total = 0.f;
#pragma omp simd reduction(+ : total)
  for (int64_t l = 0; l < n; ++l) {
    row[l] = exp_nonpositive(row[l] - top);
    total += row[l];
  }
  return total;
}
