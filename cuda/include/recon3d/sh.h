// Real spherical harmonics, degree 0-3, with the 3DGS basis and signs (recon3d/sh.py is the twin),
// and the hand-written backward to the coefficients and to the view direction.
#pragma once

#include "common.h"

namespace recon3d {

constexpr double kSH_C1 = 0.4886025119029199;
// scalars, not arrays: constexpr arrays are not usable in CUDA device code
constexpr double kSH_C2_0 = 1.0925484305920792, kSH_C2_1 = -1.0925484305920792, kSH_C2_2 = 0.31539156525252005,
                 kSH_C2_3 = -1.0925484305920792, kSH_C2_4 = 0.5462742152960396;
constexpr double kSH_C3_0 = -0.5900435899266435, kSH_C3_1 = 2.890611442640554, kSH_C3_2 = -0.4570457994644658,
                 kSH_C3_3 = 0.3731763325901154, kSH_C3_4 = -0.4570457994644658, kSH_C3_5 = 1.445305721320277,
                 kSH_C3_6 = -0.5900435899266435;

// Basis values (degree+1)^2 into `basis` for the unit direction (x, y, z).
template <typename T>
R3D_HD void sh_basis(int degree, T x, T y, T z, T* basis) {
  basis[0] = T(kSH_C0);
  if (degree < 1) return;
  basis[1] = -T(kSH_C1) * y;
  basis[2] = T(kSH_C1) * z;
  basis[3] = -T(kSH_C1) * x;
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  basis[4] = T(kSH_C2_0) * x * y;
  basis[5] = T(kSH_C2_1) * y * z;
  basis[6] = T(kSH_C2_2) * (T(2) * zz - xx - yy);
  basis[7] = T(kSH_C2_3) * x * z;
  basis[8] = T(kSH_C2_4) * (xx - yy);
  if (degree < 3) return;
  basis[9] = T(kSH_C3_0) * y * (T(3) * xx - yy);
  basis[10] = T(kSH_C3_1) * x * y * z;
  basis[11] = T(kSH_C3_2) * y * (T(4) * zz - xx - yy);
  basis[12] = T(kSH_C3_3) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  basis[13] = T(kSH_C3_4) * x * (T(4) * zz - xx - yy);
  basis[14] = T(kSH_C3_5) * z * (xx - yy);
  basis[15] = T(kSH_C3_6) * x * (xx - T(3) * yy);
}

// d basis_k / d(x, y, z) for k < (degree+1)^2, written into grad[k][3].
template <typename T>
R3D_HD void sh_basis_grad(int degree, T x, T y, T z, T (*grad)[3]) {
  R3D_UNROLL for (int k = 0; k < 16; ++k) grad[k][0] = grad[k][1] = grad[k][2] = T(0);
  if (degree < 1) return;
  grad[1][1] = -T(kSH_C1);
  grad[2][2] = T(kSH_C1);
  grad[3][0] = -T(kSH_C1);
  if (degree < 2) return;
  const T xx = x * x, yy = y * y, zz = z * z;
  grad[4][0] = T(kSH_C2_0) * y;
  grad[4][1] = T(kSH_C2_0) * x;
  grad[5][1] = T(kSH_C2_1) * z;
  grad[5][2] = T(kSH_C2_1) * y;
  grad[6][0] = -T(2) * T(kSH_C2_2) * x;
  grad[6][1] = -T(2) * T(kSH_C2_2) * y;
  grad[6][2] = T(4) * T(kSH_C2_2) * z;
  grad[7][0] = T(kSH_C2_3) * z;
  grad[7][2] = T(kSH_C2_3) * x;
  grad[8][0] = T(2) * T(kSH_C2_4) * x;
  grad[8][1] = -T(2) * T(kSH_C2_4) * y;
  if (degree < 3) return;
  grad[9][0] = T(kSH_C3_0) * T(6) * x * y;
  grad[9][1] = T(kSH_C3_0) * (T(3) * xx - T(3) * yy);
  grad[10][0] = T(kSH_C3_1) * y * z;
  grad[10][1] = T(kSH_C3_1) * x * z;
  grad[10][2] = T(kSH_C3_1) * x * y;
  grad[11][0] = T(kSH_C3_2) * (-T(2) * x * y);
  grad[11][1] = T(kSH_C3_2) * (T(4) * zz - xx - T(3) * yy);
  grad[11][2] = T(kSH_C3_2) * T(8) * y * z;
  grad[12][0] = T(kSH_C3_3) * (-T(6) * x * z);
  grad[12][1] = T(kSH_C3_3) * (-T(6) * y * z);
  grad[12][2] = T(kSH_C3_3) * (T(6) * zz - T(3) * xx - T(3) * yy);
  grad[13][0] = T(kSH_C3_4) * (T(4) * zz - T(3) * xx - yy);
  grad[13][1] = T(kSH_C3_4) * (-T(2) * x * y);
  grad[13][2] = T(kSH_C3_4) * T(8) * x * z;
  grad[14][0] = T(kSH_C3_5) * T(2) * x * z;
  grad[14][1] = T(kSH_C3_5) * (-T(2) * y * z);
  grad[14][2] = T(kSH_C3_5) * (xx - yy);
  grad[15][0] = T(kSH_C3_6) * (T(3) * xx - T(3) * yy);
  grad[15][1] = T(kSH_C3_6) * (-T(6) * x * y);
}

// Coefficient k of Gaussian g, channel ch: k = 0 lives in sh0 (N x 1 x 3), k >= 1 in shN (N x K x 3).
template <typename T>
R3D_HD T sh_coeff(const T* sh0, const T* shN, int K, int64_t g, int k, int ch) {
  return k == 0 ? sh0[g * 3 + ch] : shN[(g * K + (k - 1)) * 3 + ch];
}

// Unnormalised direction v (Gaussian mean minus camera centre) -> colour = max(SH(v/|v|) + 0.5, 0).
template <typename T>
R3D_HD void sh_color_forward(int degree, const T* sh0, const T* shN, int K, int64_t g, const T v[3], T color[3]) {
  T len = r_sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  len = r_max(len, T(1e-12));
  T basis[16];
  sh_basis(degree, v[0] / len, v[1] / len, v[2] / len, basis);
  const int nb = (degree + 1) * (degree + 1);
  R3D_UNROLL for (int ch = 0; ch < 3; ++ch) {
    T s = T(0);
    R3D_UNROLL for (int k = 0; k < nb; ++k) s += basis[k] * sh_coeff(sh0, shN, K, g, k, ch);
    s += T(0.5);
    color[ch] = s < T(0) ? T(0) : s;
  }
}

// Backward of sh_color_forward: adds d loss / d coefficient into g_sh0/g_shN (same layout as the
// coefficients, not atomic: the caller owns Gaussian g) and returns d loss / d v in g_v.
template <typename T>
R3D_HD void sh_color_backward(int degree, const T* sh0, const T* shN, int K, int64_t g, const T v[3],
                              const T g_color[3], T* g_sh0, T* g_shN, T g_v[3]) {
  T len = r_sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
  const T len_c = r_max(len, T(1e-12));
  const T d[3] = {v[0] / len_c, v[1] / len_c, v[2] / len_c};
  T basis[16];
  sh_basis(degree, d[0], d[1], d[2], basis);
  const int nb = (degree + 1) * (degree + 1);
  T gc[3];
  R3D_UNROLL for (int ch = 0; ch < 3; ++ch) {
    T s = T(0.5);
    R3D_UNROLL for (int k = 0; k < nb; ++k) s += basis[k] * sh_coeff(sh0, shN, K, g, k, ch);
    gc[ch] = s < T(0) ? T(0) : g_color[ch];  // clamp at 0 stops the gradient
  }
  R3D_UNROLL for (int k = 0; k < nb; ++k) {
    R3D_UNROLL for (int ch = 0; ch < 3; ++ch) {
      const T gk = basis[k] * gc[ch];
      if (k == 0)
        g_sh0[g * 3 + ch] += gk;
      else
        g_shN[(g * K + (k - 1)) * 3 + ch] += gk;
    }
  }
  g_v[0] = g_v[1] = g_v[2] = T(0);
  if (degree < 1) return;
  T bg[16][3];
  sh_basis_grad(degree, d[0], d[1], d[2], bg);
  T g_d[3] = {T(0), T(0), T(0)};
  R3D_UNROLL for (int k = 1; k < nb; ++k) {
    T w = T(0);
    R3D_UNROLL for (int ch = 0; ch < 3; ++ch) w += gc[ch] * sh_coeff(sh0, shN, K, g, k, ch);
    g_d[0] += w * bg[k][0];
    g_d[1] += w * bg[k][1];
    g_d[2] += w * bg[k][2];
  }
  // the clamped norm is constant where len <= 1e-12: no gradient (a select, not a return: branch-free)
  const bool tiny = len <= T(1e-12);
  const T dot = g_d[0] * d[0] + g_d[1] * d[1] + g_d[2] * d[2];
  for (int i = 0; i < 3; ++i) g_v[i] = tiny ? T(0) : (g_d[i] - d[i] * dot) / len;
}

}  // namespace recon3d
