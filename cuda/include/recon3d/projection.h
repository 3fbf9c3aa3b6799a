// Projection of one 3D Gaussian into one pinhole camera (EWA splatting with the 3DGS frustum clamp),
// covariance from log-scales and a quaternion, the opacity-aware support, and the hand-written backward.
// recon3d/backends/reference.py states the same maths in PyTorch; keep the two in step.
#pragma once

#include "common.h"

namespace recon3d {

template <typename T>
struct CameraT {
  T R[9];  // world-to-camera rotation, row-major
  T t[3];
  T fx, fy, cx, cy;
  T width, height;
  T center[3];  // camera centre in world coordinates, -R^T t
};

// viewmat: 4x4 row-major world-to-camera (OpenCV axes); intr: fx, fy, cx, cy; center: the camera centre
// in world coordinates (the caller computes it once; nullptr derives it from viewmat).
template <typename T>
R3D_HD CameraT<T> load_camera(const T* viewmat, const T* intr, const T* center, int width, int height) {
  CameraT<T> cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i * 3 + j] = viewmat[i * 4 + j];
    cam.t[i] = viewmat[i * 4 + 3];
  }
  cam.fx = intr[0];
  cam.fy = intr[1];
  cam.cx = intr[2];
  cam.cy = intr[3];
  cam.width = T(width);
  cam.height = T(height);
  for (int j = 0; j < 3; ++j)
    cam.center[j] = center ? center[j]
                           : -(cam.R[0 * 3 + j] * cam.t[0] + cam.R[1 * 3 + j] * cam.t[1] + cam.R[2 * 3 + j] * cam.t[2]);
  return cam;
}

// Normalised quaternion (w, x, y, z) -> rotation; a zero quaternion gives the identity.
template <typename T>
R3D_HD void quat_to_rotmat(const T q_raw[4], T R[9], T qn[4], T& norm) {
  norm = r_sqrt(q_raw[0] * q_raw[0] + q_raw[1] * q_raw[1] + q_raw[2] * q_raw[2] + q_raw[3] * q_raw[3]);
  if (norm > T(0)) {
    const T inv = T(1) / r_max(norm, T(1e-12));
    for (int i = 0; i < 4; ++i) qn[i] = q_raw[i] * inv;
  } else {
    qn[0] = T(1);
    qn[1] = qn[2] = qn[3] = T(0);
  }
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = T(1) - T(2) * (y * y + z * z);
  R[1] = T(2) * (x * y - w * z);
  R[2] = T(2) * (x * z + w * y);
  R[3] = T(2) * (x * y + w * z);
  R[4] = T(1) - T(2) * (x * x + z * z);
  R[5] = T(2) * (y * z - w * x);
  R[6] = T(2) * (x * z - w * y);
  R[7] = T(2) * (y * z + w * x);
  R[8] = T(1) - T(2) * (x * x + y * y);
}

// Gradient of the rotation matrix entries (gR) back to the raw quaternion, through the normalisation.
template <typename T>
R3D_HD void quat_to_rotmat_backward(const T qn[4], T norm, const T gR[9], T g_q_raw[4]) {
  const T w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  T g[4];
  g[0] = T(2) * (-z * gR[1] + y * gR[2] + z * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]);
  g[1] = T(2) * (y * gR[1] + z * gR[2] + y * gR[3] - T(2) * x * gR[4] - w * gR[5] + z * gR[6] + w * gR[7] -
                 T(2) * x * gR[8]);
  g[2] = T(2) * (-T(2) * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + z * gR[5] - w * gR[6] + z * gR[7] -
                 T(2) * y * gR[8]);
  g[3] = T(2) * (-T(2) * z * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - T(2) * z * gR[4] + y * gR[5] + x * gR[6] +
                 y * gR[7]);
  // the identity substitute (norm 0) is a constant: no gradient (a select, not a return: branch-free)
  const bool zero_q = !(norm > T(0));
  const T dot = g[0] * qn[0] + g[1] * qn[1] + g[2] * qn[2] + g[3] * qn[3];
  const T inv = T(1) / r_max(norm, T(1e-12));
  for (int i = 0; i < 4; ++i) g_q_raw[i] = zero_q ? T(0) : (g[i] - qn[i] * dot) * inv;
}

// Everything the forward computes for one camera and Gaussian; the backward recomputes it.
template <typename T>
struct ProjectionT {
  T p[3];         // view-space position
  T zs;           // z, or 1 where z is out of range (the reference's z_safe)
  T tx, ty;       // clamped x/z, y/z used in the Jacobian
  bool tx_free, ty_free;  // clamp inactive (the gradient reaches x/z)
  T Rq[9];        // rotation of the Gaussian
  T qn[4], qnorm;
  T s[3];         // exp(log-scales)
  T M[9];         // Rq * diag(s)
  T V[9];         // view-space covariance
  T J[6];         // Jacobian rows (J[1] = J[3] = 0)
  T a, b, c, det; // 2D covariance (low-pass included) and its determinant
  T conic[3];
  T mean2d[2];
  T opacity;      // activated opacity the blend uses (times the compensation in the anti-aliased mode)
  T sig, comp;    // anti-aliased mode only: sigmoid(logit) and sqrt(max(det Sigma2D / det(Sigma2D + LOW_PASS I), 0))
  T ext[2];
  int radius;     // 0 when culled
};

// Antialiased: the anti-aliased mode (gsplat's "antialiased", Mip-Splatting's 2D filter): the low-pass as
// always, and the opacity times sqrt(max(det Sigma2D / det(Sigma2D + LOW_PASS I), 0)), so a Gaussian
// smaller than a pixel keeps its integrated weight instead of growing into a blob. The default
// instantiation carries no trace of it.
template <typename T, bool Antialiased = false>
R3D_HD void project_gaussian(const T mean[3], const T logscale[3], const T quat[4], T opacity_logit,
                             const CameraT<T>& cam, ProjectionT<T>& P) {
  for (int i = 0; i < 3; ++i)
    P.p[i] = cam.R[i * 3 + 0] * mean[0] + cam.R[i * 3 + 1] * mean[1] + cam.R[i * 3 + 2] * mean[2] + cam.t[i];
  const T x = P.p[0], y = P.p[1], z = P.p[2];
  const bool z_ok = z >= T(kNearPlane) && z <= T(kFarPlane);
  P.zs = z_ok ? z : T(1);
  const T zs = P.zs;

  quat_to_rotmat(quat, P.Rq, P.qn, P.qnorm);
  for (int j = 0; j < 3; ++j) P.s[j] = r_exp(logscale[j]);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) P.M[i * 3 + j] = P.Rq[i * 3 + j] * P.s[j];
  T Sigma[9], RS[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      Sigma[i * 3 + j] = P.M[i * 3 + 0] * P.M[j * 3 + 0] + P.M[i * 3 + 1] * P.M[j * 3 + 1] + P.M[i * 3 + 2] * P.M[j * 3 + 2];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RS[i * 3 + j] = cam.R[i * 3 + 0] * Sigma[0 * 3 + j] + cam.R[i * 3 + 1] * Sigma[1 * 3 + j] +
                      cam.R[i * 3 + 2] * Sigma[2 * 3 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      P.V[i * 3 + j] = RS[i * 3 + 0] * cam.R[j * 3 + 0] + RS[i * 3 + 1] * cam.R[j * 3 + 1] + RS[i * 3 + 2] * cam.R[j * 3 + 2];

  const T margin_x = (T(kFrustumClamp) - T(1)) * T(0.5) * cam.width / cam.fx;
  const T margin_y = (T(kFrustumClamp) - T(1)) * T(0.5) * cam.height / cam.fy;
  const T ux = x / zs, uy = y / zs;
  const T lo_x = -cam.cx / cam.fx - margin_x, hi_x = (cam.width - cam.cx) / cam.fx + margin_x;
  const T lo_y = -cam.cy / cam.fy - margin_y, hi_y = (cam.height - cam.cy) / cam.fy + margin_y;
  P.tx = r_min(r_max(ux, lo_x), hi_x);
  P.ty = r_min(r_max(uy, lo_y), hi_y);
  P.tx_free = ux > lo_x && ux < hi_x;
  P.ty_free = uy > lo_y && uy < hi_y;
  P.J[0] = cam.fx / zs;
  P.J[1] = T(0);
  P.J[2] = -cam.fx * P.tx / zs;
  P.J[3] = T(0);
  P.J[4] = cam.fy / zs;
  P.J[5] = -cam.fy * P.ty / zs;
  const T* V = P.V;
  // rows of J V (J[1] = J[3] = 0)
  T JV0[3], JV1[3];
  for (int k = 0; k < 3; ++k) {
    JV0[k] = P.J[0] * V[0 * 3 + k] + P.J[2] * V[2 * 3 + k];
    JV1[k] = P.J[4] * V[1 * 3 + k] + P.J[5] * V[2 * 3 + k];
  }
  P.a = JV0[0] * P.J[0] + JV0[2] * P.J[2] + T(kLowPass);
  P.b = JV0[1] * P.J[4] + JV0[2] * P.J[5];
  P.c = JV1[1] * P.J[4] + JV1[2] * P.J[5] + T(kLowPass);
  P.det = P.a * P.c - P.b * P.b;
  const bool det_ok = P.det > T(0);
  const T det_safe = det_ok ? P.det : T(1);
  P.conic[0] = P.c / det_safe;
  P.conic[1] = -P.b / det_safe;
  P.conic[2] = P.a / det_safe;
  P.mean2d[0] = cam.fx * x / zs + cam.cx;
  P.mean2d[1] = cam.fy * y / zs + cam.cy;

  P.opacity = T(1) / (T(1) + r_exp(-opacity_logit));
  if constexpr (Antialiased) {
    const T a0 = P.a - T(kLowPass), c0 = P.c - T(kLowPass);
    const T ratio = (a0 * c0 - P.b * P.b) / det_safe;
    P.sig = P.opacity;
    P.comp = r_sqrt(r_max(ratio, T(0)));
    P.opacity = P.sig * P.comp;
  }
  const bool opac_ok = P.opacity >= T(kAlphaMin);
  // support: o * exp(-m^2/2) >= ALPHA_MIN  <=>  m^2 <= r2
  // log(max(x, 1)) written as max(log(x), 0) (equal for every x, NaN included): the call is unconditional,
  // so the CPU build's vectorised projection loop can use a vector log
  const T r2 = T(2) * r_max(r_log(P.opacity / T(kAlphaMin)), T(0));
  P.ext[0] = r_sqrt(r2 * r_max(P.a, T(0)));
  P.ext[1] = r_sqrt(r2 * r_max(P.c, T(0)));
  const T mx = P.mean2d[0], my = P.mean2d[1];
  // & rather than && (no short circuit): branch-free, so the CPU build's projection loop vectorises
  const bool on_screen = (mx + P.ext[0] > T(0)) & (mx - P.ext[0] < cam.width) & (my + P.ext[1] > T(0)) &
                         (my - P.ext[1] < cam.height);
  const bool visible = z_ok & det_ok & opac_ok & on_screen;
  P.radius = visible ? (int)r_ceil(r_max(P.ext[0], P.ext[1])) : 0;
}

// Camera gradients of one (camera, Gaussian) pair: world-to-camera rotation (row-major), translation,
// then fx, fy, cx, cy. The SH view direction's share goes through the camera centre, which the caller
// (torch) derives from the view matrix, so it is returned separately (kCamGradCenter).
constexpr int kCamGradView = 12, kCamGradIntr = 4, kCamGradCenter = 3;
constexpr int kCamGrads = kCamGradView + kCamGradIntr + kCamGradCenter;  // per camera: R 9, t 3, fx fy cx cy, centre 3

// Backward of project_gaussian for a visible Gaussian: upstream gradients of mean2d, conic, view depth
// and activated opacity; adds to the gradients of the mean, log-scales, raw quaternion and logit.
// CamGrad: also writes the pair's gradients of the world-to-camera R, t and fx, fy, cx, cy into g_cam
// (kCamGradView + kCamGradIntr values, assigned; `mean` is the Gaussian's world position). The default
// instantiation carries no trace of it.
template <typename T, bool CamGrad = false, bool Antialiased = false>
R3D_HD void project_gaussian_backward(const ProjectionT<T>& P, const CameraT<T>& cam, const T g_mean2d[2],
                                      const T g_conic[3], T g_depth, T g_opacity, T g_mean[3], T g_logscale[3],
                                      T g_quat[4], T& g_logit, const T* mean = nullptr, T* g_cam = nullptr) {
  if constexpr (Antialiased)
    g_logit += g_opacity * P.comp * P.sig * (T(1) - P.sig);
  else
    g_logit += g_opacity * P.opacity * (T(1) - P.opacity);

  // conic = inverse of [[a, b], [b, c]] stored as (c, -b, a) / det
  const T a = P.a, b = P.b, c = P.c;
  const T inv_det = T(1) / P.det, inv_det2 = inv_det * inv_det;
  T ga = g_conic[0] * (-c * c * inv_det2) + g_conic[1] * (b * c * inv_det2) +
         g_conic[2] * (inv_det - a * c * inv_det2);
  T gb = g_conic[0] * (T(2) * b * c * inv_det2) + g_conic[1] * (-inv_det - T(2) * b * b * inv_det2) +
         g_conic[2] * (T(2) * a * b * inv_det2);
  T gc = g_conic[0] * (inv_det - a * c * inv_det2) + g_conic[1] * (a * b * inv_det2) +
         g_conic[2] * (-a * a * inv_det2);
  if constexpr (Antialiased) {
    // comp = sqrt(D0 / D1), D0 = (a - lp)(c - lp) - b^2, D1 = det = a c - b^2; no gradient where clamped at 0
    const T a0 = a - T(kLowPass), c0 = c - T(kLowPass);
    const T d0 = a0 * c0 - b * b;
    const T g_ratio = P.comp > T(0) ? g_opacity * P.sig * T(0.5) / P.comp : T(0);
    const T g_d0 = g_ratio * inv_det, g_d1 = -g_ratio * d0 * inv_det2;
    ga += g_d0 * c0 + g_d1 * c;
    gc += g_d0 * a0 + g_d1 * a;
    gb += -T(2) * b * (g_d0 + g_d1);
  }
  // symmetric upstream G = [[ga, gb/2], [gb/2, gc]]
  const T G00 = ga, G01 = T(0.5) * gb, G11 = gc;
  const T* J = P.J;
  const T* V = P.V;
  // gV = J^T G J
  T GJ0[3], GJ1[3];  // rows of G J
  for (int k = 0; k < 3; ++k) {
    GJ0[k] = G00 * J[k] + G01 * J[3 + k];
    GJ1[k] = G01 * J[k] + G11 * J[3 + k];
  }
  T gV[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) gV[i * 3 + j] = J[i] * GJ0[j] + J[3 + i] * GJ1[j];
  // gJ = 2 G J V
  T gJ[6];
  for (int k = 0; k < 3; ++k) {
    gJ[k] = T(2) * (GJ0[0] * V[0 * 3 + k] + GJ0[1] * V[1 * 3 + k] + GJ0[2] * V[2 * 3 + k]);
    gJ[3 + k] = T(2) * (GJ1[0] * V[0 * 3 + k] + GJ1[1] * V[1 * 3 + k] + GJ1[2] * V[2 * 3 + k]);
  }
  const T zs = P.zs, x = P.p[0], y = P.p[1];
  const T izs = T(1) / zs, izs2 = izs * izs;
  T g_z = g_depth;
  T g_x = T(0), g_y = T(0);
  g_z += -cam.fx * izs2 * gJ[0] + cam.fx * P.tx * izs2 * gJ[2] - cam.fy * izs2 * gJ[4] + cam.fy * P.ty * izs2 * gJ[5];
  const T g_tx = -cam.fx * izs * gJ[2];
  const T g_ty = -cam.fy * izs * gJ[5];
  if (P.tx_free) {
    g_x += g_tx * izs;
    g_z += -g_tx * x * izs2;
  }
  if (P.ty_free) {
    g_y += g_ty * izs;
    g_z += -g_ty * y * izs2;
  }
  g_x += g_mean2d[0] * cam.fx * izs;
  g_y += g_mean2d[1] * cam.fy * izs;
  g_z += -(g_mean2d[0] * cam.fx * x + g_mean2d[1] * cam.fy * y) * izs2;
  for (int j = 0; j < 3; ++j) g_mean[j] += cam.R[0 * 3 + j] * g_x + cam.R[1 * 3 + j] * g_y + cam.R[2 * 3 + j] * g_z;
  if constexpr (CamGrad) {
    // p = R mean + t: dR_ij += g_p_i mean_j, dt_i = g_p_i. V = R Sigma R^T with gV symmetric (Sigma too):
    // dR += 2 gV R Sigma.
    const T g_p[3] = {g_x, g_y, g_z};
    T Sig[9], RSig[9];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        Sig[i * 3 + j] = P.M[i * 3 + 0] * P.M[j * 3 + 0] + P.M[i * 3 + 1] * P.M[j * 3 + 1] + P.M[i * 3 + 2] * P.M[j * 3 + 2];
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j)
        RSig[i * 3 + j] = cam.R[i * 3 + 0] * Sig[0 * 3 + j] + cam.R[i * 3 + 1] * Sig[1 * 3 + j] + cam.R[i * 3 + 2] * Sig[2 * 3 + j];
    for (int i = 0; i < 3; ++i) {
      for (int j = 0; j < 3; ++j)
        g_cam[i * 3 + j] = g_p[i] * mean[j] + T(2) * (gV[i * 3 + 0] * RSig[0 * 3 + j] + gV[i * 3 + 1] * RSig[1 * 3 + j] +
                                                      gV[i * 3 + 2] * RSig[2 * 3 + j]);
      g_cam[9 + i] = g_p[i];
    }
    // mean2d = f x / z + c; J = [[fx/z, 0, -fx tx/z], [0, fy/z, -fy ty/z]]; a clamped tx is the bound
    // b = -(cx + m W) / fx or (W - cx + m W) / fx, so db/dfx = -b / fx and db/dcx = -1 / fx (likewise y)
    T g_fx = g_mean2d[0] * x * izs + (gJ[0] - gJ[2] * P.tx) * izs;
    T g_fy = g_mean2d[1] * y * izs + (gJ[4] - gJ[5] * P.ty) * izs;
    T g_cx = g_mean2d[0], g_cy = g_mean2d[1];
    if (!P.tx_free) {
      g_fx += g_tx * (-P.tx / cam.fx);
      g_cx += g_tx * (-T(1) / cam.fx);
    }
    if (!P.ty_free) {
      g_fy += g_ty * (-P.ty / cam.fy);
      g_cy += g_ty * (-T(1) / cam.fy);
    }
    g_cam[12] = g_fx;
    g_cam[13] = g_fy;
    g_cam[14] = g_cx;
    g_cam[15] = g_cy;
  }

  // gSigma = R^T gV R
  T tmp[9], gS[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      tmp[i * 3 + j] = cam.R[0 * 3 + i] * gV[0 * 3 + j] + cam.R[1 * 3 + i] * gV[1 * 3 + j] + cam.R[2 * 3 + i] * gV[2 * 3 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      gS[i * 3 + j] = tmp[i * 3 + 0] * cam.R[0 * 3 + j] + tmp[i * 3 + 1] * cam.R[1 * 3 + j] + tmp[i * 3 + 2] * cam.R[2 * 3 + j];
  // Sigma = M M^T: gM = (gS + gS^T) M
  T gM[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      T acc = T(0);
      for (int k = 0; k < 3; ++k) acc += (gS[i * 3 + k] + gS[k * 3 + i]) * P.M[k * 3 + j];
      gM[i * 3 + j] = acc;
    }
  T gRq[9];
  for (int j = 0; j < 3; ++j) {
    T gs = T(0);
    for (int i = 0; i < 3; ++i) {
      gRq[i * 3 + j] = gM[i * 3 + j] * P.s[j];
      gs += gM[i * 3 + j] * P.Rq[i * 3 + j];
    }
    g_logscale[j] += gs * P.s[j];
  }
  T gq[4];
  quat_to_rotmat_backward(P.qn, P.qnorm, gRq, gq);
  for (int i = 0; i < 4; ++i) g_quat[i] += gq[i];
}

}  // namespace recon3d
