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

// dx, dy = mean2d - pixel centre. Returns the clamped alpha and sets `ok` when it contributes.
template <typename T>
R3D_HD T blend_alpha(T dx, T dy, T ca, T cb, T cc, T opacity, bool& ok) {
  const T power = T(-0.5) * (ca * dx * dx + cc * dy * dy) - cb * dx * dy;
  const T raw = opacity * pixel_exp(power);
  const T alpha = raw < T(kAlphaMax) ? raw : T(kAlphaMax);
  ok = (power <= T(0)) && (alpha >= T(kAlphaMin));
  return alpha;
}

// One step of the back-to-front backward for a pixel. `active` says the Gaussian was composited into
// this pixel in the forward (it lies before the pixel's last contributor); the step recomputes alpha,
// and when it contributes writes this pixel's gradient share into the g_* outputs (zero otherwise) and
// moves the pixel state (transmittance `trans`, colour/depth accumulated behind: acc*) one Gaussian
// towards the camera. final_term = T_final * (dL/dalpha - background . dL/drgb).
template <typename T>
R3D_HD void blend_backward_step(bool active, T dx, T dy, T ca, T cb, T cc, T opacity, T c0, T c1, T c2, T depth,
                                T g_r, T g_g, T g_b, T g_d, T final_term, T& trans, T& acc0, T& acc1, T& acc2,
                                T& accd, T& o_mx, T& o_my, T& o_ca, T& o_cb, T& o_cc, T& o_op, T& o_c0, T& o_c1,
                                T& o_c2, T& o_z) {
  const T power = T(-0.5) * (ca * dx * dx + cc * dy * dy) - cb * dx * dy;
  const T G = pixel_exp(power);
  const T raw = opacity * G;
  const T alpha = raw < T(kAlphaMax) ? raw : T(kAlphaMax);
  const bool act = active && (power <= T(0)) && (alpha >= T(kAlphaMin));
  const T one_minus = T(1) - alpha;
  const T trans_i = trans / one_minus;  // transmittance in front of this Gaussian
  const T w = act ? alpha * trans_i : T(0);
  o_c0 = w * g_r;
  o_c1 = w * g_g;
  o_c2 = w * g_b;
  o_z = w * g_d;
  const T g_alpha = trans_i * ((c0 - acc0) * g_r + (c1 - acc1) * g_g + (c2 - acc2) * g_b + (depth - accd) * g_d) +
                    final_term / one_minus;
  const bool pass = act && (raw <= T(kAlphaMax));  // the clamp stops the gradient
  const T g_power = pass ? g_alpha * raw : T(0);
  o_op = pass ? g_alpha * G : T(0);
  o_mx = -g_power * (ca * dx + cb * dy);
  o_my = -g_power * (cc * dy + cb * dx);
  o_ca = T(-0.5) * g_power * dx * dx;
  o_cb = -g_power * dx * dy;
  o_cc = T(-0.5) * g_power * dy * dy;
  acc0 = act ? alpha * c0 + one_minus * acc0 : acc0;
  acc1 = act ? alpha * c1 + one_minus * acc1 : acc1;
  acc2 = act ? alpha * c2 + one_minus * acc2 : acc2;
  accd = act ? alpha * depth + one_minus * accd : accd;
  trans = act ? trans_i : trans;
}

// Conservative test of whether the support ellipse (m^2 <= r2) meets pixel centres x in [x_lo, x_hi] on the
// row with centre py. Used to skip a Gaussian for a whole row; the per-pixel test stays exact.
template <typename T>
R3D_HD bool support_meets_row(T mx, T my, T ca, T cb, T cc, T r2, T py, T x_lo, T x_hi) {
  const T dy = my - py;
  const T r2m = r2 * T(1.001) + T(1e-4);
  const T disc = cb * cb * dy * dy - ca * (cc * dy * dy - r2m);
  if (disc < T(0)) return false;
  const T root = r_sqrt(disc);
  // dx = mx - px lies in [(-cb dy - root)/ca, (-cb dy + root)/ca]
  const T dx_lo = (-cb * dy - root) / ca, dx_hi = (-cb * dy + root) / ca;
  const T px_lo = mx - dx_hi - T(0.01), px_hi = mx - dx_lo + T(0.01);
  return px_hi >= x_lo && px_lo <= x_hi;
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
