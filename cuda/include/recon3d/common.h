// Portable building blocks for the shared rasterizer maths: compiled by g++ for the CPU driver and by
// nvcc for the CUDA driver. No torch, no std containers: only scalars and fixed-size arrays.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define R3D_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always inlined on the host too: the drivers call these per Gaussian or per pixel, and inlining lets
// constant arguments (the SH degree) fold into straight-line code
#define R3D_HD inline __attribute__((always_inline))
#else
#define R3D_HD inline
#endif

#include "constants.h"

// Full unrolling of the short fixed-count loops (SH coefficients): g++'s default limits leave the degree-3
// loops rolled, which keeps the CPU build's projection loop from vectorising over Gaussians.
#if defined(__CUDACC__)
#define R3D_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define R3D_UNROLL _Pragma("GCC unroll 16")
#else
#define R3D_UNROLL
#endif

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
// polynomial (|rel err| < 2e-7 on [-80, 0]) that vectorises over a row of pixels, unlike libm's expf.
// Clamped at -80, not at the float limit: opacity (>= 1/255) times exp(-80) is still a normal float, and a
// product that comes out denormal costs a microcode assist (~100+ cycles) in the pixel loops.
R3D_HD float fast_exp(float x) {
  x = x < -80.0f ? -80.0f : (x > 88.0f ? 88.0f : x);
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: the sum's low mantissa bits hold n, no float->int
  // conversion or floor (neither vectorises inside the pixel loops with gcc). Needs no -ffast-math.
  union {
    float f;
    int32_t i;
  } shifted, magic, scale;
  magic.f = 12582912.0f;
  shifted.f = x * 1.44269504088896341f + magic.f;
  const int32_t ni = shifted.i - magic.i;
  const float n = shifted.f - magic.f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  scale.i = (ni + 127) << 23;  // 2^n
  return p * scale.f;
}
R3D_HD double fast_exp(double x) { return exp(x); }

// Lane-generic helpers: the blending maths in blend.h is written once for a "lane" type V that is a
// scalar (CUDA: one thread per pixel) or, in the CPU build, a GCC vector of 16 pixels (one tile row).
// 1 / x: a plain division, except on 16 float lanes with AVX-512 (below), where it is the costliest op of
// the backward's inner loop.
template <typename V>
R3D_HD V lane_recip(V x) {
  return V{} + 1 / x;
}
R3D_HD float lane_recip(float x) { return 1.0f / x; }
R3D_HD double lane_recip(double x) { return 1.0 / x; }

template <typename V>
using MaskOf = decltype(V{} < V{});  // bool for scalars, an integer vector for GCC vectors
template <typename V>
R3D_HD V lane_select(MaskOf<V> m, V a, V b) {
  return m ? a : b;
}

}  // namespace recon3d

#if !defined(__CUDACC__) && defined(__GNUC__)
// 16-lane vectors for the CPU driver's row loops. GCC lowers them to AVX-512, AVX2 or SSE as the build
// flags allow, so no intrinsics and no per-ISA code paths are needed.
#define RECON3D_HAVE_LANES 1
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
namespace recon3d {
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef double f64x16 __attribute__((vector_size(128)));

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  typedef f32x16 type;
};
template <>
struct Lanes<double> {
  typedef f64x16 type;
};

#if defined(__AVX512F__)
// exp on 16 lanes with AVX-512: 2^t with t = x log2(e) split as n + f (n integer, |f| <= 1/2), 2^f by a
// degree-5 fit (relative error 8e-8) evaluated in Estrin form, and vscalefps for the 2^n (no clamps, no
// integer tricks: it saturates to 0 and inf by itself). The blend loops are latency-bound on this chain:
// 10 dependent vector ops instead of the 17 of the generic version below. Relative error < 4e-7 where
// alphas are decided (x > -7), < 3e-6 down to -80 (log2(e) in float); the forward tolerance is 1e-4.
// The chain without a clamp: below about -87 its result is denormal (see fast_exp and blend.h's pixel_exp).
inline f32x16 fast_exp_unclamped(f32x16 x) {
  const __m512 t = _mm512_mul_ps((__m512)x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // f = x log2(e) - n in one rounding (fma), not t - n: t's own rounding would cost up to ~5e-7
  const f32x16 f = (f32x16)_mm512_fmsub_ps((__m512)x, _mm512_set1_ps(1.44269504088896341f), n);
  const f32x16 f2 = f * f;
  const f32x16 p01 = f * 6.9314694916e-01f + 1.0000000710e+00f;
  const f32x16 p23 = f * 5.5507426160e-02f + 2.4022121754e-01f;
  const f32x16 p45 = f * 1.3266970386e-03f + 9.6754597455e-03f;
  const f32x16 p = p01 + f2 * (p23 + f2 * p45);
  return (f32x16)_mm512_scalef_ps((__m512)p, n);
}
inline f32x16 fast_exp(f32x16 x) {
  // clamped at -80 so opacity (>= 1/255) times the result stays a normal float: denormal products take a
  // microcode assist (~100+ cycles), and lanes far outside a small Gaussian's support hit this all the time
  // vmaxps(-80, x) is exactly "x < -80 ? -80 : x" (NaN included) in one op instead of compare + blend
  return fast_exp_unclamped((f32x16)_mm512_max_ps(_mm512_set1_ps(-80.0f), (__m512)x));
}
#else
// The polynomial exp above, on 16 lanes at once.
inline f32x16 fast_exp(f32x16 x) {
#if defined(__AVX__)
  // vmaxps(-80, x) / vminps(88, x) are exactly the two selects below (NaN included), one op per half
  {
    typedef float f8 __attribute__((vector_size(32)));
    const f8 lo = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
    const f8 hi = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m256 l = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-80.0f), (__m256)lo));
    const __m256 h = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-80.0f), (__m256)hi));
    x = __builtin_shufflevector((f8)l, (f8)h, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
#else
  x = x < -80.0f ? f32x16{} - 80.0f : x;  // see the scalar version
  x = x > 88.0f ? f32x16{} + 88.0f : x;
#endif
  const f32x16 magic = f32x16{} + 12582912.0f;
  const f32x16 shifted = x * 1.44269504088896341f + magic;
  const i32x16 ni = (i32x16)shifted - (i32x16)magic;
  const f32x16 n = shifted - magic;
  f32x16 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  f32x16 p = f32x16{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * (f32x16)((ni + 127) << 23);
}
#endif
// float64 is the test build: exact libm exp per lane.
inline f64x16 fast_exp(f64x16 x) {
  for (int i = 0; i < 16; ++i) x[i] = exp(x[i]);
  return x;
}

#if defined(__AVX512F__)
// 14-bit hardware estimate refined by one Newton step (~1 ulp; the backward's tolerance is far looser):
// a third of the cost of vdivps on 16 lanes.
inline f32x16 lane_recip(f32x16 x) {
  const f32x16 e = (f32x16)_mm512_rcp14_ps((__m512)x);
  return e * (2.0f - x * e);
}
#endif

// Horizontal reductions as halving trees (element-by-element loops compile to 16 lane extractions).
inline float lane_sum(f32x16 v) {
  typedef float f8 __attribute__((vector_size(32)));
  typedef float f4 __attribute__((vector_size(16)));
  const f8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const f4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}
inline double lane_sum(f64x16 v) {
  double s = 0.0;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}
template <typename M>
inline bool lane_any(M m) {
  for (int i = 0; i < 16; ++i)
    if (m[i]) return true;
  return false;
}
// All lanes of an i32 mask set (-1): AND-reduce as a tree.
inline bool lane_all(i32x16 m) {
  typedef int32_t i8 __attribute__((vector_size(32)));
  typedef int32_t i4 __attribute__((vector_size(16)));
  const i8 a = __builtin_shufflevector(m, m, 0, 1, 2, 3, 4, 5, 6, 7) &
               __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15);
  const i4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) & __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return ((b[0] & b[1]) & (b[2] & b[3])) != 0;
}
template <typename M>
inline bool lane_all(M m) {
  for (int i = 0; i < 16; ++i)
    if (!m[i]) return false;
  return true;
}
}  // namespace recon3d
#endif  // RECON3D_HAVE_LANES
