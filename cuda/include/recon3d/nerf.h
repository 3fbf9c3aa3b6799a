// Shared maths of the NeRF kernels: the multiresolution hash encoding (Müller et al. 2022) and volume
// compositing along a ray (Mildenhall et al. 2020), each with its hand-written backward, plus the ray
// marcher that places samples where the occupancy grid says the field is not empty. Compiled by g++ for
// the CPU driver (src/nerf_cpu.cpp) and by nvcc for the CUDA driver (src/nerf_cuda.cu); no torch.
// recon3d/nerf/reference.py is the dense PyTorch twin of every function here (the tests' oracle).
#pragma once

#include "common.h"

namespace recon3d {
namespace nerf {

constexpr int kHashFeatures = 2;                  // features per level (instant-ngp's F)
constexpr double kNerfTransmittanceMin = 0.0001;  // a ray stops once its transmittance is below this
constexpr uint32_t kHashPrime1 = 2654435761u;     // the spatial hash's primes (x's is 1)
constexpr uint32_t kHashPrime2 = 805459861u;

// Row of the level's table that grid vertex (x, y, z) uses. A level whose (res + 1)^3 vertices fit its
// table is indexed densely (no collisions); finer ones are hashed: xor of coordinate times prime, mod size.
R3D_HD uint32_t grid_row(uint32_t x, uint32_t y, uint32_t z, uint32_t res, uint32_t size) {
  const uint64_t side = (uint64_t)res + 1;
  if (side * side * side <= (uint64_t)size) return (uint32_t)(x + side * (y + side * z));
  return (x ^ (y * kHashPrime1) ^ (z * kHashPrime2)) % size;
}

// The cell of one level a point falls in and its trilinear fractions; the point (in [0, 1]^3, clamped)
// is scaled to [0, res] and the cell's lower corner is kept below res so its upper corner exists.
template <typename T>
R3D_HD void level_cell(const T* pos, int res, uint32_t cell[3], T frac[3]) {
  for (int d = 0; d < 3; ++d) {
    T p = pos[d];
    p = p < T(0) ? T(0) : (p > T(1) ? T(1) : p);
    p *= T(res);
    int c = (int)r_floor(p);
    c = c > res - 1 ? res - 1 : c;
    cell[d] = (uint32_t)c;
    frac[d] = p - T(c);
  }
}

// Trilinear weight of corner k (bit d of k set = the upper vertex along axis d).
template <typename T>
R3D_HD T corner_weight(int k, const T frac[3]) {
  T w = T(1);
  for (int d = 0; d < 3; ++d) w *= (k >> d) & 1 ? frac[d] : T(1) - frac[d];
  return w;
}

// Forward of one level: out[f] = Σ_corners w · table[row][f]. ``table`` is this level's rows × F.
template <typename T>
R3D_HD void hash_level_forward(const T* pos, int res, uint32_t size, const T* table, T* out) {
  uint32_t cell[3];
  T frac[3];
  level_cell(pos, res, cell, frac);
  T acc[kHashFeatures] = {};
  R3D_UNROLL
  for (int k = 0; k < 8; ++k) {
    const T w = corner_weight(k, frac);
    const uint32_t row = grid_row(cell[0] + (k & 1), cell[1] + ((k >> 1) & 1), cell[2] + ((k >> 2) & 1), res, size);
    for (int f = 0; f < kHashFeatures; ++f) acc[f] += w * table[(size_t)row * kHashFeatures + f];
  }
  for (int f = 0; f < kHashFeatures; ++f) out[f] = acc[f];
}

// Backward of one level: d table[row][f] += w · grad_out[f] through ``add`` (a plain += where one thread
// owns the level, an atomic add on the GPU).
template <typename T, typename Add>
R3D_HD void hash_level_backward(const T* pos, int res, uint32_t size, const T* grad_out, T* grad_table, Add add) {
  uint32_t cell[3];
  T frac[3];
  level_cell(pos, res, cell, frac);
  R3D_UNROLL
  for (int k = 0; k < 8; ++k) {
    const T w = corner_weight(k, frac);
    const uint32_t row = grid_row(cell[0] + (k & 1), cell[1] + ((k >> 1) & 1), cell[2] + ((k >> 2) & 1), res, size);
    for (int f = 0; f < kHashFeatures; ++f) add(&grad_table[(size_t)row * kHashFeatures + f], w * grad_out[f]);
  }
}

// Front-to-back compositing of one ray's n samples: colour, opacity and depth (Σ w·t), and each sample's
// weight w_i = T_i·(1 − exp(−σ_i·δ_i)). A sample reached with transmittance below kNerfTransmittanceMin is
// not composited (nor is any after it): weight 0. Returns how many samples were composited.
template <typename T>
R3D_HD int composite_forward(int n, const T* sigma, const T* rgb, const T* t, const T* dt, T* weights, T out_rgb[3],
                             T* out_opacity, T* out_depth) {
  T trans = T(1), acc_rgb[3] = {T(0), T(0), T(0)}, acc_op = T(0), acc_depth = T(0);
  int used = 0;
  for (int i = 0; i < n; ++i) {
    if (trans < T(kNerfTransmittanceMin)) {
      weights[i] = T(0);
      continue;
    }
    const T decay = r_exp(-sigma[i] * dt[i]);
    const T w = trans * (T(1) - decay);
    weights[i] = w;
    for (int c = 0; c < 3; ++c) acc_rgb[c] += w * rgb[3 * i + c];
    acc_op += w;
    acc_depth += w * t[i];
    trans *= decay;
    used = i + 1;
  }
  for (int c = 0; c < 3; ++c) out_rgb[c] = acc_rgb[c];
  *out_opacity = acc_op;
  *out_depth = acc_depth;
  return used;
}

// Backward of composite_forward given its outputs (colour, opacity, depth) and their gradients. With
// s_i = σ_i·δ_i, dw_k/ds_i is T_{i+1} for k = i and −w_k for k > i, so
//   dL/dσ_i = δ_i·[T_{i+1}·(g·c_i + g_A + g_D·t_i) − g·Σ_{k>i} w_k c_k − g_A·Σ_{k>i} w_k − g_D·Σ_{k>i} w_k t_k]
// with the suffix sums taken as total − prefix (one front-to-back pass, no stored transmittances).
template <typename T>
R3D_HD void composite_backward(int n, const T* sigma, const T* rgb, const T* t, const T* dt, const T out_rgb[3],
                               T out_opacity, T out_depth, const T g_rgb[3], T g_opacity, T g_depth, T* grad_sigma,
                               T* grad_rgb) {
  T trans = T(1), pre_rgb[3] = {T(0), T(0), T(0)}, pre_op = T(0), pre_depth = T(0);
  for (int i = 0; i < n; ++i) {
    if (trans < T(kNerfTransmittanceMin)) {
      grad_sigma[i] = T(0);
      for (int c = 0; c < 3; ++c) grad_rgb[3 * i + c] = T(0);
      continue;
    }
    const T decay = r_exp(-sigma[i] * dt[i]);
    const T w = trans * (T(1) - decay);
    const T next = trans * decay;
    T gc = T(0), g_suffix = T(0);
    for (int c = 0; c < 3; ++c) {
      const T ci = rgb[3 * i + c];
      pre_rgb[c] += w * ci;
      gc += g_rgb[c] * ci;
      g_suffix += g_rgb[c] * (out_rgb[c] - pre_rgb[c]);
      grad_rgb[3 * i + c] = w * g_rgb[c];
    }
    pre_op += w;
    pre_depth += w * t[i];
    const T ds = next * (gc + g_opacity + g_depth * t[i]) - g_suffix - g_opacity * (out_opacity - pre_op) -
                 g_depth * (out_depth - pre_depth);
    grad_sigma[i] = dt[i] * ds;
    trans = next;
  }
}

// Where the ray marcher's points live: the training frame mapped into the unit cube the hash grid and the
// occupancy grid cover. Bounded: an axis-aligned box. Contracted (unbounded scenes, Mip-NeRF 360 style with
// the L∞ norm so the contracted space fills a cube): x/r inside the unit ball of radius r, else
// (2 − 1/|y|∞)·y/|y|∞ with y = x/r, then [−2, 2]^3 -> [0, 1]^3.
struct MarchArgs {
  float box_min[3];
  float box_max[3];
  int contracted;    // 1: contraction with radius ``radius`` about ``box_min`` taken as the centre
  float radius;
  const uint8_t* grid;  // res^3 occupancy flags, x fastest
  int grid_res;
  float dt_min;      // smallest step (training frame units)
  float dt_max;      // largest step
  float cone;        // step = clamp(t·cone, dt_min, dt_max): constant for cone 0
  int max_samples;   // per ray
  // contracted scenes: beyond the inner cube a step is at least ``shell_step`` of the contracted L∞ coordinate
  // (0: off). The contraction squeezes the shell, so steps of t·cone there would put hundreds of samples into
  // a few far cells that the hash grid cannot tell apart.
  float shell_step;
};

// The marcher's arguments from the drivers' flat parameter arrays (host side, both builds): fparams = box_min[3],
// box_max[3], radius, dt_min, dt_max, cone, shell_step; iparams = contracted, grid_res, max_samples.
inline MarchArgs march_args(const float* fparams, const int* iparams, const uint8_t* grid) {
  MarchArgs a;
  for (int k = 0; k < 3; ++k) {
    a.box_min[k] = fparams[k];
    a.box_max[k] = fparams[3 + k];
  }
  a.radius = fparams[6];
  a.dt_min = fparams[7];
  a.dt_max = fparams[8];
  a.cone = fparams[9];
  a.shell_step = fparams[10];
  a.contracted = iparams[0];
  a.grid_res = iparams[1];
  a.max_samples = iparams[2];
  a.grid = grid;
  return a;
}

// The step at distance t along the ray from o in direction d (the ray ends at t_end).
R3D_HD float march_step(const MarchArgs& a, const float o[3], const float d[3], float t, float t_end) {
  float dt = t * a.cone;
  if (a.contracted && a.shell_step > 0.0f) {
    float s = 0.0f, dinf = 0.0f;  // L∞ distance from the centre in radii, L∞ norm of the direction
    for (int k = 0; k < 3; ++k) {
      const float y = fabsf(o[k] + t * d[k] - a.box_min[k]);
      s = y > s ? y : s;
      dinf = fabsf(d[k]) > dinf ? fabsf(d[k]) : dinf;
    }
    s /= a.radius;
    if (s > 1.0f) {
      // the contracted coordinate there is m = 2 − 1/s; the L∞ distance grows at most |d|∞ as fast as t, so
      // a step of δs²/(1 − δs)/|d|∞ radii moves m by at most δ; where m + δ passes 2 the step ends the ray
      const float q = a.shell_step * s;
      const float shell = q < 1.0f ? a.shell_step * s * s * a.radius / ((1.0f - q) * dinf) : t_end - t;
      dt = shell > dt ? shell : dt;
    }
  }
  return dt < a.dt_min ? a.dt_min : (dt > a.dt_max ? a.dt_max : dt);
}

template <typename T>
R3D_HD void to_unit_cube(const MarchArgs& a, const T x[3], T u[3]) {
  if (!a.contracted) {
    for (int d = 0; d < 3; ++d) u[d] = (x[d] - T(a.box_min[d])) / (T(a.box_max[d]) - T(a.box_min[d]));
    return;
  }
  T y[3], m = T(0);
  for (int d = 0; d < 3; ++d) {
    y[d] = (x[d] - T(a.box_min[d])) / T(a.radius);
    const T ay = y[d] < T(0) ? -y[d] : y[d];
    m = ay > m ? ay : m;
  }
  const T s = m <= T(1) ? T(1) : (T(2) - T(1) / m) / m;
  for (int d = 0; d < 3; ++d) u[d] = (y[d] * s + T(2)) * T(0.25);
}

// Entry and exit distances of a ray through the marcher's region (the box; everything for contraction).
R3D_HD bool ray_range(const MarchArgs& a, const float o[3], const float d[3], float near, float far, float* t0,
                      float* t1) {
  if (a.contracted) {
    *t0 = near;
    *t1 = far;
    return far > near;
  }
  float lo = near, hi = far;
  for (int k = 0; k < 3; ++k) {
    const float inv = 1.0f / (fabsf(d[k]) > 1e-12f ? d[k] : (d[k] < 0 ? -1e-12f : 1e-12f));
    float ta = (a.box_min[k] - o[k]) * inv, tb = (a.box_max[k] - o[k]) * inv;
    if (ta > tb) {
      const float s = ta;
      ta = tb;
      tb = s;
    }
    lo = ta > lo ? ta : lo;
    hi = tb < hi ? tb : hi;
  }
  *t0 = lo;
  *t1 = hi;
  return hi > lo;
}

// March one ray: step from its entry to its exit and keep the sample midpoints whose occupancy cell is
// set (at most max_samples). ``out_t``/``out_dt``/``out_u`` may be null (counting pass). Returns the count.
R3D_HD int march_ray(const MarchArgs& a, const float o[3], const float d[3], float near, float far, float* out_t,
                     float* out_dt, float* out_u) {
  float t0, t1;
  if (!ray_range(a, o, d, near, far, &t0, &t1)) return 0;
  int n = 0;
  float t = t0;
  const int res = a.grid_res;
  while (t < t1 && n < a.max_samples) {
    const float dt = march_step(a, o, d, t, t1);
    const float mid = t + 0.5f * dt;
    const float x[3] = {o[0] + mid * d[0], o[1] + mid * d[1], o[2] + mid * d[2]};
    float u[3];
    to_unit_cube(a, x, u);
    int cell[3];
    bool inside = true;
    for (int k = 0; k < 3; ++k) {
      inside = inside && u[k] >= 0.0f && u[k] <= 1.0f;
      int c = (int)(u[k] * res);
      cell[k] = c < 0 ? 0 : (c > res - 1 ? res - 1 : c);
    }
    if (inside && a.grid[cell[0] + res * (cell[1] + res * cell[2])]) {
      if (out_t) {
        out_t[n] = mid;
        out_dt[n] = dt;
        for (int k = 0; k < 3; ++k) out_u[3 * n + k] = u[k];
      }
      ++n;
    }
    t += dt;
  }
  return n;
}

}  // namespace nerf
}  // namespace recon3d
