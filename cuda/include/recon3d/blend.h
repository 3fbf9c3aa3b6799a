// Per-pixel front-to-back compositing of one Gaussian and its hand-written backward. The CPU driver
// calls these per lane of a 16-pixel row (so they are branch-free), the CUDA driver per thread.
#pragma once

#include "common.h"

namespace recon3d {

// exp in the per-pixel loops: libm on the GPU, the vectorisable polynomial on the CPU.
template <typename T>
R3D_HD T pixel_exp(T x) {
#if defined(__CUDA_ARCH__)
  return r_exp(x);
#else
  return fast_exp(x);
#endif
}

#if defined(RECON3D_HAVE_LANES) && defined(__AVX512F__)
// exp in the CPU pixel loops on 16 float lanes: fast_exp without its clamp at -80. The drivers run these
// loops with denormal results flushed to zero (FlushDenormals), which is what the clamp guards against
// otherwise (a denormal product takes a microcode assist): below -80 the Gaussian's alpha is far under
// ALPHA_MIN either way, so every gate, image and gradient comes out the same, one op per visit cheaper.
inline f32x16 pixel_exp(f32x16 x) { return fast_exp_unclamped(x); }
#endif

#if defined(RECON3D_HAVE_LANES) && defined(__AVX512F__)
// Flush-to-zero for denormal results while in scope (this thread's MXCSR, restored on exit): the CPU
// drivers hold one per tile around their pixel loops (see pixel_exp; other builds keep the clamp and
// leave the MXCSR alone).
struct FlushDenormals {
  unsigned saved;
  FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8000u); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};
#endif

// dx, dy = mean2d - pixel centre. Returns the clamped alpha where the Gaussian contributes and 0 where it
// does not (alpha >= ALPHA_MIN > 0, so "contributes" is "result > 0"). V is a scalar or a GCC vector of
// pixels (see common.h); T is the scalar type of the Gaussian's values. Every select comes straight from
// one comparison: combined masks compile to slow bit juggling on the CPU.
template <typename T, typename V>
R3D_HD V blend_alpha(V dx, V dy, T ca, T cb, T cc, T opacity) {
  const V power = T(-0.5) * (ca * dx * dx + cc * dy * dy) - cb * dx * dy;
  const V raw = opacity * pixel_exp(power);
  const V alpha = lane_select<V>(raw < T(kAlphaMax), raw, V{} + T(kAlphaMax));
  const V gated = lane_select<V>(alpha >= T(kAlphaMin), alpha, V{});
  return lane_select<V>(power <= T(0), gated, V{});
}

// One step of the back-to-front backward for a pixel. `active` is 1 where the Gaussian lies before the
// pixel's last contributor and 0 elsewhere; the step recomputes alpha, and where it contributes writes this
// pixel's gradient share into the o_* outputs (zero elsewhere) and moves the pixel state (transmittance
// `trans`, colour and depth accumulated behind: acc*) one Gaussian towards the camera.
// final_term = T_final * (dL/dalpha - background . dL/drgb).
template <typename T, typename V>
R3D_HD void blend_backward_step(V active, V dx, V dy, T ca, T cb, T cc, T opacity, T c0, T c1, T c2, T depth,
                                V g_r, V g_g, V g_b, V g_d, V final_term, V& trans, V& acc0, V& acc1, V& acc2,
                                V& accd, V& o_mx, V& o_my, V& o_ca, V& o_cb, V& o_cc, V& o_op, V& o_c0, V& o_c1,
                                V& o_c2, V& o_z) {
  const V zero = V{};
  const V power = T(-0.5) * (ca * dx * dx + cc * dy * dy) - cb * dx * dy;
  const V G = pixel_exp(power);
  const V raw = opacity * G;
  const V alpha = lane_select<V>(raw < T(kAlphaMax), raw, zero + T(kAlphaMax));
  V a = lane_select<V>(alpha >= T(kAlphaMin), alpha, zero);
  a = lane_select<V>(power <= T(0), a, zero) * active;  // alpha where it contributes, else 0
  const V one_minus = T(1) - alpha;
  const V inv_one_minus = lane_recip(one_minus);  // alpha <= ALPHA_MAX keeps it finite
  const V trans_i = trans * inv_one_minus;   // transmittance in front of this Gaussian
  const V w = a * trans_i;
  o_c0 = w * g_r;
  o_c1 = w * g_g;
  o_c2 = w * g_b;
  o_z = w * g_d;
  const V g_alpha = trans_i * ((c0 - acc0) * g_r + (c1 - acc1) * g_g + (c2 - acc2) * g_b + (depth - accd) * g_d) +
                    final_term * inv_one_minus;
  // the clamp at ALPHA_MAX stops the gradient; non-contributing lanes get none
  const V g_alpha_raw = lane_select<V>(raw <= T(kAlphaMax), g_alpha, zero);
  const V g_act = lane_select<V>(a > T(0), g_alpha_raw, zero);
  const V g_power = g_act * raw;
  o_op = g_act * G;
  o_mx = -g_power * (ca * dx + cb * dy);
  o_my = -g_power * (cc * dy + cb * dx);
  o_ca = T(-0.5) * g_power * dx * dx;
  o_cb = -g_power * dx * dy;
  o_cc = T(-0.5) * g_power * dy * dy;
  // a = 0 leaves the state unchanged: (0 * c + 1 * acc) and trans / 1 are exact
  const V keep = T(1) - a;
  acc0 = a * c0 + keep * acc0;
  acc1 = a * c1 + keep * acc1;
  acc2 = a * c2 + keep * acc2;
  accd = a * depth + keep * accd;
  trans = lane_select<V>(a > T(0), trans_i, trans);
}

// blend_backward_step for feature channels (the CUDA driver's feature pass): the pixel's "colour" is its
// features dotted with their upstream gradient (fg, per pixel), accg the same dot of the features
// accumulated behind; no background, alpha or depth term. Returns w = alpha T where the Gaussian
// contributes (0 elsewhere), which the caller multiplies with dL/dfeatures for the features' gradient.
template <typename T, typename V>
R3D_HD V blend_backward_step_features(V active, V dx, V dy, T ca, T cb, T cc, T opacity, V fg, V& trans, V& accg,
                                      V& o_mx, V& o_my, V& o_ca, V& o_cb, V& o_cc, V& o_op) {
  const V zero = V{};
  const V power = T(-0.5) * (ca * dx * dx + cc * dy * dy) - cb * dx * dy;
  const V G = pixel_exp(power);
  const V raw = opacity * G;
  const V alpha = lane_select<V>(raw < T(kAlphaMax), raw, zero + T(kAlphaMax));
  V a = lane_select<V>(alpha >= T(kAlphaMin), alpha, zero);
  a = lane_select<V>(power <= T(0), a, zero) * active;
  const V inv_one_minus = lane_recip(T(1) - alpha);
  const V trans_i = trans * inv_one_minus;
  const V w = a * trans_i;
  const V g_alpha = trans_i * (fg - accg);
  const V g_alpha_raw = lane_select<V>(raw <= T(kAlphaMax), g_alpha, zero);
  const V g_act = lane_select<V>(a > T(0), g_alpha_raw, zero);
  const V g_power = g_act * raw;
  o_op = g_act * G;
  o_mx = -g_power * (ca * dx + cb * dy);
  o_my = -g_power * (cc * dy + cb * dx);
  o_ca = T(-0.5) * g_power * dx * dx;
  o_cb = -g_power * dx * dy;
  o_cc = T(-0.5) * g_power * dy * dy;
  accg = a * fg + (T(1) - a) * accg;
  trans = lane_select<V>(a > T(0), trans_i, trans);
  return w;
}

// min(x, hi) as "x < hi ? x : hi" (the alpha clamp at ALPHA_MAX): a compare and a blend in general, one
// vminps on 16 float lanes with AVX-512 or AVX, whose definition is exactly that select (NaN included).
template <typename T, typename V>
R3D_HD V lane_cap(V x, T hi) {
  return lane_select<V>(x < hi, x, V{} + hi);
}
#if defined(RECON3D_HAVE_LANES) && defined(__AVX512F__)
inline f32x16 lane_cap(f32x16 x, float hi) { return (f32x16)_mm512_min_ps((__m512)x, _mm512_set1_ps(hi)); }
#elif defined(RECON3D_HAVE_LANES) && defined(__AVX__)
inline f32x16 lane_cap(f32x16 x, float hi) {
  typedef float f8 __attribute__((vector_size(32)));
  const f8 lo = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
  const f8 up = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const f8 l = (f8)_mm256_min_ps((__m256)lo, _mm256_set1_ps(hi)), u = (f8)_mm256_min_ps((__m256)up, _mm256_set1_ps(hi));
  return __builtin_shufflevector(l, u, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}
#endif

// Row forms for drivers that process a row of pixels as one vector (the CPU): dy = mean_y - row centre is
// one scalar for all lanes, so the quadratic form is two fused multiply-adds per lane, and the backward
// accumulates only the sums the conic/mean gradients need (their dx factors are applied once per Gaussian
// by blend_row_grads). Forward and backward of a driver must use the same form so they agree on which
// pixels a Gaussian reaches.
// hx = (-ca / 2) dx is the caller's, computed once per Gaussian and tile (row_hx) and kept in a variable or
// array: so the compiler never fuses it into the subtraction, and forward and backward round alike.
template <typename T, typename V>
R3D_HD V row_hx(V dx, T ca) {
  return (T(-0.5) * ca) * dx;
}
// The row's own terms of the power, cb dy and cc dy^2 / 2 (plain products: no fused multiply-add can
// round them differently anywhere). A driver computes them once per Gaussian for all 16 rows of a tile (a
// vector with rows as lanes, RowTerms) and the pixel loops read them back as scalars, which the compiler
// folds into the vector ops as broadcast operands: no scalar arithmetic or register broadcast per row.
template <typename T, typename V>
R3D_HD void row_terms(V dy, T cb, T cc, V& cbdy, V& hccdy2) {
  cbdy = cb * dy;
  hccdy2 = T(0.5) * cc * dy * dy;
}
template <typename T, typename V>
R3D_HD V row_power_pre(V dx, V hx, T cbdy, T hccdy2) {
  return dx * (hx - cbdy) - hccdy2;
}
template <typename T, typename V>
R3D_HD V row_power(V dx, V hx, T dy, T cb, T cc) {
  return row_power_pre<T, V>(dx, hx, cb * dy, T(0.5) * cc * dy * dy);
}

// blend_alpha in row form, the row's terms precomputed by row_terms.
template <typename T, typename V>
R3D_HD V blend_alpha_row(V dx, V hx, T cbdy, T hccdy2, T opacity) {
  const V power = row_power_pre<T, V>(dx, hx, cbdy, hccdy2);
  const V raw = opacity * pixel_exp(power);
  const V alpha = lane_cap(raw, T(kAlphaMax));
  const V gated = lane_select<V>(alpha >= T(kAlphaMin), alpha, V{});
  return lane_select<V>(power <= T(0), gated, V{});
}

// Per-Gaussian sums over the rows of a tile that blend_backward_row adds into (each a vector of lanes):
// With q = dL/dalpha_raw * G per pixel (G = exp(power), so dL/dpower = opacity q): op = sum q = dL/dopacity,
// p1 = sum q dy, p2 = sum q dy^2, c* = dL/dcolour, z = dL/ddepth. The opacity factor of the power's
// gradient is applied once per Gaussian (blend_row_grads): sum g_power = opacity op, no sum of its own.
template <typename V>
struct RowGradSums {
  V p1, p2, op, c0, c1, c2, z;
};

// blend_backward_step in row form: same maths, gradients added into S. The pixel state carries, instead of
// the colour and depth accumulated behind (acc*), their dot product with the pixel's upstream gradient,
// accg = acc0 g_r + acc1 g_g + acc2 g_b + accd g_d (all dL/dalpha needs): one vector instead of four.
// Lanes take part where the Gaussian's index j lies before the pixel's last contributor (j < last).
// dy2 = dy * dy and cbdy, hccdy2 (row_terms) come precomputed per row.
// The gates are nested selects, each on one comparison: they compile to one chain of masked compares.
template <typename T, typename V>
R3D_HD void blend_backward_row(T j, V last, V dx, V hx, T dy, T dy2, T cbdy, T hccdy2, T opacity, T c0, T c1, T c2,
                               T depth, V g_r, V g_g, V g_b, V g_d, V final_term, V& trans, V& accg,
                               RowGradSums<V>& S) {
  const V zero = V{};
  const V power = row_power_pre<T, V>(dx, hx, cbdy, hccdy2);
  const V G = pixel_exp(power);
  const V raw = opacity * G;
  const V alpha = lane_cap(raw, T(kAlphaMax));
  // where it contributes: one mask, so the later gates reuse it instead of comparing a > 0 again
  using M = MaskOf<V>;
  const M act = lane_select<M>(j < last, lane_select<M>(power <= T(0), alpha >= T(kAlphaMin), M{}), M{});
  const V a = lane_select<V>(act, alpha, zero);  // alpha where it contributes, else 0
  const V inv_one_minus = lane_recip(T(1) - alpha);
  const V trans_i = trans * inv_one_minus;
  const V w = a * trans_i;
  S.c0 += w * g_r;
  S.c1 += w * g_g;
  S.c2 += w * g_b;
  S.z += w * g_d;
  const V cg_diff = (c0 * g_r + c1 * g_g + c2 * g_b + depth * g_d) - accg;
  const V g_alpha = trans_i * cg_diff + final_term * inv_one_minus;
  // the clamp at ALPHA_MAX stops the gradient; non-contributing lanes get none
  const V g_act = lane_select<V>(lane_select<M>(act, raw <= T(kAlphaMax), M{}), g_alpha, zero);
  const V q = g_act * G;
  S.op += q;
  S.p1 += q * dy;
  S.p2 += q * dy2;
  accg = accg + a * cg_diff;  // a c + (1 - a) acc, dotted with g; a = 0 leaves it exact
  trans = lane_select<V>(act, trans_i, trans);
}

// blend_backward_row for feature channels (a pass of its own): the pixel's "colour" is its features dotted
// with their upstream gradient, fg = f . dL/dfeatures (per lane, the caller's), there is no background
// and no alpha/depth image, so final_term is 0. Returns w = alpha T per lane (0 where the Gaussian does not
// contribute), which the caller multiplies with dL/dfeatures for the features' own gradient.
template <typename T, typename V>
R3D_HD V blend_backward_row_features(T j, V last, V dx, V hx, T dy, T dy2, T cbdy, T hccdy2, T opacity, V fg,
                                     V& trans, V& accg, RowGradSums<V>& S) {
  const V zero = V{};
  const V power = row_power_pre<T, V>(dx, hx, cbdy, hccdy2);
  const V G = pixel_exp(power);
  const V raw = opacity * G;
  const V alpha = lane_cap(raw, T(kAlphaMax));
  using M = MaskOf<V>;
  const M act = lane_select<M>(j < last, lane_select<M>(power <= T(0), alpha >= T(kAlphaMin), M{}), M{});
  const V a = lane_select<V>(act, alpha, zero);
  const V inv_one_minus = lane_recip(T(1) - alpha);
  const V trans_i = trans * inv_one_minus;
  const V w = a * trans_i;
  const V cg_diff = fg - accg;
  const V g_alpha = trans_i * cg_diff;
  const V g_act = lane_select<V>(lane_select<M>(act, raw <= T(kAlphaMax), M{}), g_alpha, zero);
  const V q = g_act * G;
  S.op += q;
  S.p1 += q * dy;
  S.p2 += q * dy2;
  accg = accg + a * cg_diff;
  trans = lane_select<V>(act, trans_i, trans);
  return w;
}

// The conic and mean gradients from the row sums (per lane; the caller reduces over lanes):
// power = -ca dx^2 / 2 - cb dx dy - cc dy^2 / 2 with dx = mx - px, dy = my - py.
// p0, p1, p2 = sum g_power (1, dy, dy^2) with g_power = dL/dpower = opacity q.
template <typename T, typename V>
R3D_HD void blend_row_grads(const RowGradSums<V>& S, V dx, T ca, T cb, T cc, T opacity, V& g_mx, V& g_my, V& g_ca,
                            V& g_cb, V& g_cc) {
  const V p0 = opacity * S.op, p1 = opacity * S.p1, p2 = opacity * S.p2;
  g_mx = -(ca * dx * p0 + cb * p1);
  g_my = -(cc * p1 + cb * dx * p0);
  g_ca = T(-0.5) * dx * dx * p0;
  g_cb = -dx * p1;
  g_cc = T(-0.5) * p2;
}

// The support radius squared, inflated so float rounding in the tile and row tests never drops a pixel.
template <typename T>
R3D_HD T support_r2_margin(T r2) {
  return r2 * T(1.001) + T(1e-4);
}

}  // namespace recon3d

namespace recon3d {

// Half-open range of tiles [x0, x1) x [y0, y1) that the support box mean2d +- ext can touch. Slightly
// conservative (margin) so float rounding never drops a pixel the per-pixel test would keep.
template <typename T>
R3D_HD void tile_rect(T mx, T my, T ex, T ey, int tiles_x, int tiles_y, int& x0, int& x1, int& y0, int& y1) {
  const T ts = T(kTileSize);
  const T mex = ex * T(1.001) + T(0.01), mey = ey * T(1.001) + T(0.01);
  const T fx0 = r_min(r_max(r_floor((mx - mex) / ts), T(0)), T(tiles_x));
  const T fx1 = r_min(r_max(r_floor((mx + mex) / ts) + T(1), T(0)), T(tiles_x));
  const T fy0 = r_min(r_max(r_floor((my - mey) / ts), T(0)), T(tiles_y));
  const T fy1 = r_min(r_max(r_floor((my + mey) / ts) + T(1), T(0)), T(tiles_y));
  x0 = (int)fx0;
  x1 = (int)fx1;
  y0 = (int)fy0;
  y1 = (int)fy1;
}

// Support radius squared in Mahalanobis units: o * exp(-m^2 / 2) >= ALPHA_MIN  <=>  m^2 <= r2.
template <typename T>
R3D_HD T support_r2(T opacity) {
  return T(2) * r_log(r_max(opacity / T(kAlphaMin), T(1)));
}

}  // namespace recon3d
