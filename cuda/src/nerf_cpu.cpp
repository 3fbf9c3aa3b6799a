// CPU driver of the NeRF kernels (C++17 + OpenMP), called from recon3d/nerf/kernels.py through ctypes. The
// maths is include/recon3d/nerf.h, shared with the CUDA driver (nerf_cuda.cu); this file only schedules it:
//   hash encoding forward   level by level (one level's table in cache), parallel over points, in runs
//                           of 64 points whose table rows are prefetched before they are read
//   hash encoding backward  parallel over levels: a level's table rows are written by one thread only, so
//                           the scatter needs no atomics and no per-thread copies of the 48 MB table;
//                           runs of 64 points as the forward. Both use nerf.h's per-corner maths (level_cell,
//                           corner_weight, grid_row) that hash_level_forward/backward (the CUDA driver) use
//   compositing             parallel over rays (each ray's samples are contiguous)
//   ray marching            a counting pass, a prefix sum, a filling pass, each parallel over rays
// Scalars: float for training, double for the finite-difference checks (same code).
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "recon3d/nerf.h"

using namespace recon3d::nerf;

namespace {

// Points go in runs of kRun: first every point's 8 corner rows and weights (nerf.h's maths) with a prefetch of
// each row, then the reads / adds. A fine level's table (4 MB) is bigger than L2 and its rows are random, so
// each access waits on L3; the prefetches issued a run ahead let those waits overlap (1 thread, 65,536 points,
// 16 levels x 2^19: forward 42 -> 25 ms, backward 62 -> 36 ms CPU). Same operations in the same order per
// output as the one-point-at-a-time loop: bit-identical results.
constexpr int kRun = 64;

template <typename T>
struct CornerRun {
  uint32_t rows[kRun][8];
  T w[kRun][8];

  // corners of points i0 .. i0+m of one level, prefetching their rows of ``table`` (for writing: ``write``)
  int fill(const T* pos, int64_t i0, int64_t n, int res, uint32_t size, const T* table, bool write) {
    const int m = (int)(n - i0 < kRun ? n - i0 : kRun);
    for (int c = 0; c < m; ++c) {
      uint32_t cell[3];
      T frac[3];
      level_cell(pos + 3 * (i0 + c), res, cell, frac);
      for (int k = 0; k < 8; ++k) {
        w[c][k] = corner_weight(k, frac);
        rows[c][k] = grid_row(cell[0] + (k & 1), cell[1] + ((k >> 1) & 1), cell[2] + ((k >> 2) & 1), res, size);
        if (write)
          __builtin_prefetch(table + (size_t)rows[c][k] * kHashFeatures, 1, 3);
        else
          __builtin_prefetch(table + (size_t)rows[c][k] * kHashFeatures, 0, 3);
      }
    }
    return m;
  }
};

template <typename T>
void hash_forward(int64_t n, const T* pos, int levels, const int* res, const int64_t* offset, const T* table, T* out,
                  int threads) {
  // level by level, as the backward: one level's table (4 MB at 2^19 rows) stays in cache while every point
  // reads it; point by point, the 16 levels' 64 MB were read in turn for each point and evicted one another
  // (the forward took 4x the backward's time).
  for (int l = 0; l < levels; ++l) {
    const uint32_t size = (uint32_t)(offset[l + 1] - offset[l]);
    const T* level_table = table + offset[l] * kHashFeatures;
#pragma omp parallel num_threads(threads)
    {
      CornerRun<T> run;
#pragma omp for schedule(static)
      for (int64_t i0 = 0; i0 < n; i0 += kRun) {
        const int m = run.fill(pos, i0, n, res[l], size, level_table, false);
        for (int c = 0; c < m; ++c) {
          T acc[kHashFeatures] = {};
          for (int k = 0; k < 8; ++k)
            for (int f = 0; f < kHashFeatures; ++f)
              acc[f] += run.w[c][k] * level_table[(size_t)run.rows[c][k] * kHashFeatures + f];
          for (int f = 0; f < kHashFeatures; ++f) out[((i0 + c) * levels + l) * kHashFeatures + f] = acc[f];
        }
      }
    }
  }
}

template <typename T>
void hash_backward(int64_t n, const T* pos, int levels, const int* res, const int64_t* offset, const T* grad_out,
                   T* grad_table, int threads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int l = 0; l < levels; ++l) {
    const uint32_t size = (uint32_t)(offset[l + 1] - offset[l]);
    T* g = grad_table + offset[l] * kHashFeatures;
    CornerRun<T> run;
    for (int64_t i0 = 0; i0 < n; i0 += kRun) {
      const int m = run.fill(pos, i0, n, res[l], size, g, true);
      for (int c = 0; c < m; ++c) {
        const T* go = grad_out + ((i0 + c) * levels + l) * kHashFeatures;
        for (int k = 0; k < 8; ++k)
          for (int f = 0; f < kHashFeatures; ++f) g[(size_t)run.rows[c][k] * kHashFeatures + f] += run.w[c][k] * go[f];
      }
    }
  }
}

template <typename T>
void composite_fwd(int64_t rays, const int64_t* start, const T* sigma, const T* rgb, const T* t, const T* dt, T* weights,
                   T* out_rgb, T* out_opacity, T* out_depth, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
  for (int64_t r = 0; r < rays; ++r) {
    const int64_t s = start[r];
    const int n = (int)(start[r + 1] - s);
    composite_forward(n, sigma + s, rgb + 3 * s, t + s, dt + s, weights + s, out_rgb + 3 * r, out_opacity + r,
                      out_depth + r);
  }
}

template <typename T>
void composite_bwd(int64_t rays, const int64_t* start, const T* sigma, const T* rgb, const T* t, const T* dt,
                   const T* out_rgb, const T* out_opacity, const T* out_depth, const T* g_rgb, const T* g_opacity,
                   const T* g_depth, T* grad_sigma, T* grad_rgb, int threads) {
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
  for (int64_t r = 0; r < rays; ++r) {
    const int64_t s = start[r];
    const int n = (int)(start[r + 1] - s);
    composite_backward(n, sigma + s, rgb + 3 * s, t + s, dt + s, out_rgb + 3 * r, out_opacity[r], out_depth[r],
                       g_rgb + 3 * r, g_opacity[r], g_depth[r], grad_sigma + s, grad_rgb + 3 * s);
  }
}

}  // namespace

extern "C" {

void r3d_nerf_hash_forward_f32(int64_t n, const float* pos, int levels, const int* res, const int64_t* offset,
                               const float* table, float* out, int threads) {
  hash_forward(n, pos, levels, res, offset, table, out, threads);
}
void r3d_nerf_hash_forward_f64(int64_t n, const double* pos, int levels, const int* res, const int64_t* offset,
                               const double* table, double* out, int threads) {
  hash_forward(n, pos, levels, res, offset, table, out, threads);
}
void r3d_nerf_hash_backward_f32(int64_t n, const float* pos, int levels, const int* res, const int64_t* offset,
                                const float* grad_out, float* grad_table, int threads) {
  hash_backward(n, pos, levels, res, offset, grad_out, grad_table, threads);
}
void r3d_nerf_hash_backward_f64(int64_t n, const double* pos, int levels, const int* res, const int64_t* offset,
                                const double* grad_out, double* grad_table, int threads) {
  hash_backward(n, pos, levels, res, offset, grad_out, grad_table, threads);
}

void r3d_nerf_composite_forward_f32(int64_t rays, const int64_t* start, const float* sigma, const float* rgb,
                                    const float* t, const float* dt, float* weights, float* out_rgb,
                                    float* out_opacity, float* out_depth, int threads) {
  composite_fwd(rays, start, sigma, rgb, t, dt, weights, out_rgb, out_opacity, out_depth, threads);
}
void r3d_nerf_composite_forward_f64(int64_t rays, const int64_t* start, const double* sigma, const double* rgb,
                                    const double* t, const double* dt, double* weights, double* out_rgb,
                                    double* out_opacity, double* out_depth, int threads) {
  composite_fwd(rays, start, sigma, rgb, t, dt, weights, out_rgb, out_opacity, out_depth, threads);
}
void r3d_nerf_composite_backward_f32(int64_t rays, const int64_t* start, const float* sigma, const float* rgb,
                                     const float* t, const float* dt, const float* out_rgb, const float* out_opacity,
                                     const float* out_depth, const float* g_rgb, const float* g_opacity,
                                     const float* g_depth, float* grad_sigma, float* grad_rgb, int threads) {
  composite_bwd(rays, start, sigma, rgb, t, dt, out_rgb, out_opacity, out_depth, g_rgb, g_opacity, g_depth, grad_sigma,
                grad_rgb, threads);
}
void r3d_nerf_composite_backward_f64(int64_t rays, const int64_t* start, const double* sigma, const double* rgb,
                                     const double* t, const double* dt, const double* out_rgb,
                                     const double* out_opacity, const double* out_depth, const double* g_rgb,
                                     const double* g_opacity, const double* g_depth, double* grad_sigma,
                                     double* grad_rgb, int threads) {
  composite_bwd(rays, start, sigma, rgb, t, dt, out_rgb, out_opacity, out_depth, g_rgb, g_opacity, g_depth, grad_sigma,
                grad_rgb, threads);
}

// Counting pass: counts[r] = samples ray r keeps.
void r3d_nerf_march_count(int64_t rays, const float* origins, const float* dirs, const float* near, const float* far,
                          const float* fparams, const int* iparams, const uint8_t* grid, int64_t* counts,
                          int threads) {
  const MarchArgs a = march_args(fparams, iparams, grid);
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
  for (int64_t r = 0; r < rays; ++r)
    counts[r] = march_ray(a, origins + 3 * r, dirs + 3 * r, near[r], far[r], nullptr, nullptr, nullptr);
}

// Filling pass: ray r's samples go to [start[r], start[r + 1]) (start = exclusive prefix sum of counts).
void r3d_nerf_march_fill(int64_t rays, const float* origins, const float* dirs, const float* near, const float* far,
                         const float* fparams, const int* iparams, const uint8_t* grid, const int64_t* start,
                         float* t, float* dt, float* u, int threads) {
  const MarchArgs a = march_args(fparams, iparams, grid);
#pragma omp parallel for schedule(dynamic, 64) num_threads(threads)
  for (int64_t r = 0; r < rays; ++r) {
    const int64_t s = start[r];
    march_ray(a, origins + 3 * r, dirs + 3 * r, near[r], far[r], t + s, dt + s, u + 3 * s);
  }
}

}  // extern "C"
