// Portable building blocks for the shared rasterizer maths: compiled by g++ for the CPU driver and by
// nvcc for the CUDA driver. No torch, no std containers: only scalars and fixed-size arrays.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define R3D_HD __host__ __device__ __forceinline__
#else
#define R3D_HD inline
#endif

#include "constants.h"

namespace recon3d {

// Overloads instead of std:: so the same call compiles in device code for float and double.
R3D_HD float r_exp(float x) { return expf(x); }
R3D_HD double r_exp(double x) { return exp(x); }
R3D_HD float r_log(float x) { return logf(x); }
R3D_HD double r_log(double x) { return log(x); }
R3D_HD float r_sqrt(float x) { return sqrtf(x); }
R3D_HD double r_sqrt(double x) { return sqrt(x); }
R3D_HD float r_ceil(float x) { return ceilf(x); }
R3D_HD double r_ceil(double x) { return ceil(x); }
R3D_HD float r_floor(float x) { return floorf(x); }
R3D_HD double r_floor(double x) { return floor(x); }
template <typename T> R3D_HD T r_min(T a, T b) { return a < b ? a : b; }
template <typename T> R3D_HD T r_max(T a, T b) { return a > b ? a : b; }

// Exponential used in the per-pixel loops of the CPU build for float: a branch-free Cephes-style
// polynomial (|rel err| < 2e-7 on [-87, 0]) that vectorises over a row of pixels, unlike libm's expf.
R3D_HD float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = r_floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } scale;
  scale.i = ((int32_t)n + 127) << 23;
  return p * scale.f;
}
R3D_HD double fast_exp(double x) { return exp(x); }

}  // namespace recon3d
