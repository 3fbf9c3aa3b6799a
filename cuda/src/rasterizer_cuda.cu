// CUDA driver of the rasterizer. Torch-free: it takes raw device pointers (see include/recon3d/driver.h)
// and uses the same __host__ __device__ maths as the CPU driver, which the CPU tests cover.
//   project   one thread per (camera, Gaussian)
//   binning   tiles per Gaussian -> inclusive scan (cub) -> 64-bit keys (camera*tiles + tile) << 32 | depth
//             bits -> cub::DeviceRadixSort -> per-tile [start, end) ranges
//   forward   one 16x16 block per tile, Gaussians streamed through shared memory in batches of 256
//   backward  same blocks walking back to front; per-Gaussian gradients reduced per warp, then atomicAdd
//   project backward  one thread per Gaussian looping over cameras (no atomics on the parameters)
#include <cuda_runtime.h>

#include <cub/cub.cuh>
#include <stdexcept>
#include <string>

#include "recon3d/blend.h"
#include "recon3d/driver.h"
#include "recon3d/projection.h"
#include "recon3d/sh.h"

namespace recon3d {
namespace gpu {

namespace {

constexpr int kBlock = kTileSize * kTileSize;  // 256 threads, one per pixel of a tile

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("recon3d CUDA ") + what + ": " + cudaGetErrorString(err));
}

cudaStream_t as_stream(void* s) { return reinterpret_cast<cudaStream_t>(s); }

int blocks_for(int64_t n, int threads) { return (int)((n + threads - 1) / threads); }

template <typename T, bool AA>
__global__ void project_forward_kernel(SceneArgs<T> s, ProjectedArgs<T> out) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)s.C * s.N) return;
  const int c = (int)(i / s.N);
  const int64_t g = i - (int64_t)c * s.N;
  const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
  ProjectionT<T> P;
  project_gaussian<T, AA>(s.means + 3 * g, s.scales + 3 * g, s.quats + 4 * g, s.opacities[g], cam, P);
  out.means2d[2 * i] = P.mean2d[0];
  out.means2d[2 * i + 1] = P.mean2d[1];
  for (int k = 0; k < 3; ++k) out.conics[3 * i + k] = P.conic[k];
  out.opacities[i] = P.opacity;
  out.depths[i] = P.p[2];
  out.radii[i] = P.radius;
  out.extents[2 * i] = P.ext[0];
  out.extents[2 * i + 1] = P.ext[1];
  T color[3] = {T(0), T(0), T(0)};
  if (P.radius > 0) {
    const T v[3] = {s.means[3 * g] - cam.center[0], s.means[3 * g + 1] - cam.center[1],
                    s.means[3 * g + 2] - cam.center[2]};
    sh_color_forward(s.sh_degree, s.sh0, s.shN, s.K, g, v, color);
  }
  for (int k = 0; k < 3; ++k) out.colors[3 * i + k] = color[k];
}

template <typename T>
__global__ void count_tiles_kernel(RasterArgs<T> r, int tiles_x, int tiles_y) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)r.C * r.N) return;
  int n = 0;
  if (r.radii[i] > 0) {
    int x0, x1, y0, y1;
    tile_rect(r.means2d[2 * i], r.means2d[2 * i + 1], r.extents[2 * i], r.extents[2 * i + 1], tiles_x, tiles_y, x0,
              x1, y0, y1);
    n = (x1 - x0) * (y1 - y0);
  }
  r.tiles_touched[i] = n;
}

// Keys sort by camera-tile first, then by depth: positive floats order like their bit patterns.
template <typename T>
__global__ void emit_keys_kernel(RasterArgs<T> r, const int64_t* offsets_inclusive, int tiles_x, int tiles_y,
                                 unsigned long long* keys, int32_t* values) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (int64_t)r.C * r.N || r.tiles_touched[i] == 0) return;
  const int c = (int)(i / r.N);
  const int32_t g = (int32_t)(i - (int64_t)c * r.N);
  int64_t o = offsets_inclusive[i] - r.tiles_touched[i];
  int x0, x1, y0, y1;
  tile_rect(r.means2d[2 * i], r.means2d[2 * i + 1], r.extents[2 * i], r.extents[2 * i + 1], tiles_x, tiles_y, x0, x1,
            y0, y1);
  const float depth = (float)r.depths[i];
  const unsigned int depth_bits = __float_as_uint(depth);  // depth >= NEAR_PLANE > 0 for visible Gaussians
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      const unsigned long long tile = (unsigned long long)c * tiles_x * tiles_y + (unsigned long long)y * tiles_x + x;
      keys[o] = (tile << 32) | depth_bits;
      values[o] = g;
      ++o;
    }
}

__global__ void tile_ranges_kernel(const unsigned long long* keys, int64_t total, int32_t* ranges) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const unsigned long long tile = keys[i] >> 32;
  if (i == 0 || (keys[i - 1] >> 32) != tile) ranges[2 * tile] = (int32_t)i;
  if (i == total - 1 || (keys[i + 1] >> 32) != tile) ranges[2 * tile + 1] = (int32_t)(i + 1);
}

// Median: also track the median depth (a template flag, so the plain kernel carries no trace of it).
template <typename T, bool Median>
__global__ void __launch_bounds__(kBlock) rasterize_forward_kernel(RasterArgs<T> r, int tiles_x, int tiles_y) {
  const int cam = blockIdx.z;
  const int tile = (cam * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int px_i = blockIdx.x * kTileSize + threadIdx.x, py_i = blockIdx.y * kTileSize + threadIdx.y;
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const bool inside = px_i < r.width && py_i < r.height;
  const T px = T(px_i) + T(0.5), py = T(py_i) + T(0.5);
  const int32_t start = r.tile_ranges[2 * tile], end = r.tile_ranges[2 * tile + 1];

  __shared__ T s_mx[kBlock], s_my[kBlock], s_ca[kBlock], s_cb[kBlock], s_cc[kBlock], s_op[kBlock];
  __shared__ T s_c0[kBlock], s_c1[kBlock], s_c2[kBlock], s_z[kBlock];

  T trans = T(1), a0 = T(0), a1 = T(0), a2 = T(0), ad = T(0), med = T(0);
  int32_t last = 0, cnt = 0;
  bool done = !inside;
  const T t_min = T(kTransmittanceMin);
  for (int32_t base = start; base < end; base += kBlock) {
    if (__syncthreads_count(done) == kBlock) break;  // also guards the shared arrays against overwrite
    const int32_t k = base + tid;
    if (k < end) {
      const int64_t g = (int64_t)cam * r.N + r.isect_ids[k];
      s_mx[tid] = r.means2d[2 * g];
      s_my[tid] = r.means2d[2 * g + 1];
      s_ca[tid] = r.conics[3 * g];
      s_cb[tid] = r.conics[3 * g + 1];
      s_cc[tid] = r.conics[3 * g + 2];
      s_op[tid] = r.opacities[g];
      s_c0[tid] = r.colors[3 * g];
      s_c1[tid] = r.colors[3 * g + 1];
      s_c2[tid] = r.colors[3 * g + 2];
      s_z[tid] = r.depths[g];
    }
    __syncthreads();
    const int n = min(kBlock, end - base);
    for (int j = 0; j < n && !done; ++j) {
      T a = blend_alpha<T, T>(s_mx[j] - px, s_my[j] - py, s_ca[j], s_cb[j], s_cc[j], s_op[j]);
      if (a <= T(0)) continue;
      const T nt = trans * (T(1) - a);
      if (nt < t_min) {
        done = true;
        break;
      }
      const T w = a * trans;
      a0 += w * s_c0[j];
      a1 += w * s_c1[j];
      a2 += w * s_c2[j];
      ad += w * s_z[j];
      // T only falls: the one blend that takes it from above 1/2 to at most 1/2
      if (Median && trans > T(kMedianTransmittance) && nt <= T(kMedianTransmittance)) med = s_z[j];
      trans = nt;
      last = base - start + j + 1;
      ++cnt;
    }
  }
  if (!inside) return;
  const int64_t pix = ((int64_t)cam * r.height + py_i) * r.width + px_i;
  r.rgb[3 * pix] = a0 + trans * r.background[3 * cam];
  r.rgb[3 * pix + 1] = a1 + trans * r.background[3 * cam + 1];
  r.rgb[3 * pix + 2] = a2 + trans * r.background[3 * cam + 2];
  r.alpha[pix] = T(1) - trans;
  r.acc_depth[pix] = ad;
  r.final_trans[pix] = trans;
  r.last[pix] = last;
  if (r.n_contrib) r.n_contrib[pix] = cnt;
  if (Median) r.median_depth[pix] = med;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kBlock)
    rasterize_backward_kernel(RasterArgs<T> r, RasterGradArgs<T> gr, int tiles_x, int tiles_y) {
  const int cam = blockIdx.z;
  const int tile = (cam * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int px_i = blockIdx.x * kTileSize + threadIdx.x, py_i = blockIdx.y * kTileSize + threadIdx.y;
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const int lane = tid & 31;
  const bool inside = px_i < r.width && py_i < r.height;
  const T px = T(px_i) + T(0.5), py = T(py_i) + T(0.5);
  const int32_t start = r.tile_ranges[2 * tile], end = r.tile_ranges[2 * tile + 1];

  __shared__ int32_t s_id[kBlock];
  __shared__ T s_mx[kBlock], s_my[kBlock], s_ca[kBlock], s_cb[kBlock], s_cc[kBlock], s_op[kBlock];
  __shared__ T s_c0[kBlock], s_c1[kBlock], s_c2[kBlock], s_z[kBlock];
  __shared__ int32_t s_max_last;

  T trans = T(1), gR = T(0), gG = T(0), gB = T(0), gD = T(0), fin = T(0);
  int32_t last = 0;
  if (inside) {
    const int64_t pix = ((int64_t)cam * r.height + py_i) * r.width + px_i;
    trans = r.final_trans[pix];
    last = r.last[pix];
    gR = gr.g_rgb[3 * pix];
    gG = gr.g_rgb[3 * pix + 1];
    gB = gr.g_rgb[3 * pix + 2];
    gD = gr.g_acc_depth[pix];
    fin = trans * (gr.g_alpha[pix] - (r.background[3 * cam] * gR + r.background[3 * cam + 1] * gG +
                                      r.background[3 * cam + 2] * gB));
  }
  if (tid == 0) s_max_last = 0;
  __syncthreads();
  atomicMax(&s_max_last, last);
  __syncthreads();
  const int32_t count = s_max_last;  // nothing after the latest last contributor matters
  T acc0 = T(0), acc1 = T(0), acc2 = T(0), accd = T(0);
  // batches from the back: [hi - kBlock, hi)
  for (int32_t hi = count; hi > 0; hi -= kBlock) {
    const int32_t lo = max(0, hi - kBlock);
    __syncthreads();
    const int32_t k = lo + tid;
    if (k < hi) {
      const int32_t id = r.isect_ids[start + k];
      const int64_t g = (int64_t)cam * r.N + id;
      s_id[tid] = id;
      s_mx[tid] = r.means2d[2 * g];
      s_my[tid] = r.means2d[2 * g + 1];
      s_ca[tid] = r.conics[3 * g];
      s_cb[tid] = r.conics[3 * g + 1];
      s_cc[tid] = r.conics[3 * g + 2];
      s_op[tid] = r.opacities[g];
      s_c0[tid] = r.colors[3 * g];
      s_c1[tid] = r.colors[3 * g + 1];
      s_c2[tid] = r.colors[3 * g + 2];
      s_z[tid] = r.depths[g];
    }
    __syncthreads();
    for (int32_t j = hi - 1; j >= lo; --j) {
      const int jj = j - lo;
      const T active = (inside && j < last) ? T(1) : T(0);
      T o_mx, o_my, o_ca, o_cb, o_cc, o_op, o_c0, o_c1, o_c2, o_z;
      blend_backward_step<T, T>(active, s_mx[jj] - px, s_my[jj] - py, s_ca[jj], s_cb[jj], s_cc[jj], s_op[jj],
                                s_c0[jj], s_c1[jj], s_c2[jj], s_z[jj], gR, gG, gB, gD, fin, trans, acc0, acc1, acc2,
                                accd, o_mx, o_my, o_ca, o_cb, o_cc, o_op, o_c0, o_c1, o_c2, o_z);
      // skip the reductions when no pixel of the warp got a contribution
      const bool any = __any_sync(0xffffffffu, o_c0 != T(0) || o_op != T(0) || o_z != T(0) || o_mx != T(0));
      if (!any) continue;
      o_mx = warp_sum(o_mx);
      o_my = warp_sum(o_my);
      o_ca = warp_sum(o_ca);
      o_cb = warp_sum(o_cb);
      o_cc = warp_sum(o_cc);
      o_op = warp_sum(o_op);
      o_c0 = warp_sum(o_c0);
      o_c1 = warp_sum(o_c1);
      o_c2 = warp_sum(o_c2);
      o_z = warp_sum(o_z);
      if (lane == 0) {
        const int64_t g = (int64_t)cam * r.N + s_id[jj];
        atomicAdd(gr.g_means2d + 2 * g, o_mx);
        atomicAdd(gr.g_means2d + 2 * g + 1, o_my);
        atomicAdd(gr.g_conics + 3 * g, o_ca);
        atomicAdd(gr.g_conics + 3 * g + 1, o_cb);
        atomicAdd(gr.g_conics + 3 * g + 2, o_cc);
        atomicAdd(gr.g_opacities + g, o_op);
        atomicAdd(gr.g_colors + 3 * g, o_c0);
        atomicAdd(gr.g_colors + 3 * g + 1, o_c1);
        atomicAdd(gr.g_colors + 3 * g + 2, o_c2);
        atomicAdd(gr.g_depths + g, o_z);
      }
    }
  }
}

// Feature channels: the forward kernel's loop (same batches, gates and stop), accumulating K features per
// pixel instead of the colour, so the weights are the colour pass's.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    features_forward_kernel(RasterArgs<T> r, FeatureArgs<T> f, int tiles_x, int tiles_y) {
  const int cam = blockIdx.z;
  const int tile = (cam * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int px_i = blockIdx.x * kTileSize + threadIdx.x, py_i = blockIdx.y * kTileSize + threadIdx.y;
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const bool inside = px_i < r.width && py_i < r.height;
  const T px = T(px_i) + T(0.5), py = T(py_i) + T(0.5);
  const int32_t start = r.tile_ranges[2 * tile], end = r.tile_ranges[2 * tile + 1];
  const int K = f.K;

  __shared__ int32_t s_id[kBlock];
  __shared__ T s_mx[kBlock], s_my[kBlock], s_ca[kBlock], s_cb[kBlock], s_cc[kBlock], s_op[kBlock];

  T trans = T(1);
  T acc[kMaxFeatures];
  for (int q = 0; q < kMaxFeatures; ++q) acc[q] = T(0);
  bool done = !inside;
  const T t_min = T(kTransmittanceMin);
  for (int32_t base = start; base < end; base += kBlock) {
    if (__syncthreads_count(done) == kBlock) break;
    const int32_t k = base + tid;
    if (k < end) {
      const int32_t id = r.isect_ids[k];
      const int64_t g = (int64_t)cam * r.N + id;
      s_id[tid] = id;
      s_mx[tid] = r.means2d[2 * g];
      s_my[tid] = r.means2d[2 * g + 1];
      s_ca[tid] = r.conics[3 * g];
      s_cb[tid] = r.conics[3 * g + 1];
      s_cc[tid] = r.conics[3 * g + 2];
      s_op[tid] = r.opacities[g];
    }
    __syncthreads();
    const int n = min(kBlock, end - base);
    for (int j = 0; j < n && !done; ++j) {
      const T a = blend_alpha<T, T>(s_mx[j] - px, s_my[j] - py, s_ca[j], s_cb[j], s_cc[j], s_op[j]);
      if (a <= T(0)) continue;
      const T nt = trans * (T(1) - a);
      if (nt < t_min) {
        done = true;
        break;
      }
      const T w = a * trans;
      const T* fj = f.features + (int64_t)s_id[j] * K;
      for (int q = 0; q < K; ++q) acc[q] += w * fj[q];
      trans = nt;
    }
  }
  if (!inside) return;
  const int64_t pix = ((int64_t)cam * r.height + py_i) * r.width + px_i;
  for (int q = 0; q < K; ++q) f.image[pix * K + q] = acc[q];
}

// Backward of features_forward_kernel: the colour backward's walk (back to front from the latest last
// contributor, from the colour pass's final transmittance), blend_backward_step_features per Gaussian and
// pixel, per-warp sums, then atomicAdd into the screen-space and feature gradients.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    features_backward_kernel(RasterArgs<T> r, FeatureArgs<T> f, int tiles_x, int tiles_y) {
  const int cam = blockIdx.z;
  const int tile = (cam * tiles_y + blockIdx.y) * tiles_x + blockIdx.x;
  const int px_i = blockIdx.x * kTileSize + threadIdx.x, py_i = blockIdx.y * kTileSize + threadIdx.y;
  const int tid = threadIdx.y * kTileSize + threadIdx.x;
  const int lane = tid & 31;
  const bool inside = px_i < r.width && py_i < r.height;
  const T px = T(px_i) + T(0.5), py = T(py_i) + T(0.5);
  const int32_t start = r.tile_ranges[2 * tile];
  const int K = f.K;

  __shared__ int32_t s_id[kBlock];
  __shared__ T s_mx[kBlock], s_my[kBlock], s_ca[kBlock], s_cb[kBlock], s_cc[kBlock], s_op[kBlock];
  __shared__ int32_t s_max_last;

  T trans = T(1);
  T gF[kMaxFeatures];
  for (int q = 0; q < kMaxFeatures; ++q) gF[q] = T(0);
  int32_t last = 0;
  if (inside) {
    const int64_t pix = ((int64_t)cam * r.height + py_i) * r.width + px_i;
    trans = r.final_trans[pix];
    last = r.last[pix];
    for (int q = 0; q < K; ++q) gF[q] = f.g_image[pix * K + q];
  }
  if (tid == 0) s_max_last = 0;
  __syncthreads();
  atomicMax(&s_max_last, last);
  __syncthreads();
  const int32_t count = s_max_last;
  T accg = T(0);
  for (int32_t hi = count; hi > 0; hi -= kBlock) {
    const int32_t lo = max(0, hi - kBlock);
    __syncthreads();
    const int32_t k = lo + tid;
    if (k < hi) {
      const int32_t id = r.isect_ids[start + k];
      const int64_t g = (int64_t)cam * r.N + id;
      s_id[tid] = id;
      s_mx[tid] = r.means2d[2 * g];
      s_my[tid] = r.means2d[2 * g + 1];
      s_ca[tid] = r.conics[3 * g];
      s_cb[tid] = r.conics[3 * g + 1];
      s_cc[tid] = r.conics[3 * g + 2];
      s_op[tid] = r.opacities[g];
    }
    __syncthreads();
    for (int32_t j = hi - 1; j >= lo; --j) {
      const int jj = j - lo;
      const T active = (inside && j < last) ? T(1) : T(0);
      const T* fj = f.features + (int64_t)s_id[jj] * K;
      T fg = T(0);
      for (int q = 0; q < K; ++q) fg += fj[q] * gF[q];
      T o_mx, o_my, o_ca, o_cb, o_cc, o_op;
      const T w = blend_backward_step_features<T, T>(active, s_mx[jj] - px, s_my[jj] - py, s_ca[jj], s_cb[jj],
                                                     s_cc[jj], s_op[jj], fg, trans, accg, o_mx, o_my, o_ca, o_cb,
                                                     o_cc, o_op);
      // skip the reductions when no pixel of the warp got a contribution
      if (!__any_sync(0xffffffffu, w != T(0) || o_op != T(0) || o_mx != T(0))) continue;
      o_mx = warp_sum(o_mx);
      o_my = warp_sum(o_my);
      o_ca = warp_sum(o_ca);
      o_cb = warp_sum(o_cb);
      o_cc = warp_sum(o_cc);
      o_op = warp_sum(o_op);
      const int64_t g = (int64_t)cam * r.N + s_id[jj];
      if (lane == 0) {
        atomicAdd(f.g_means2d + 2 * g, o_mx);
        atomicAdd(f.g_means2d + 2 * g + 1, o_my);
        atomicAdd(f.g_conics + 3 * g, o_ca);
        atomicAdd(f.g_conics + 3 * g + 1, o_cb);
        atomicAdd(f.g_conics + 3 * g + 2, o_cc);
        atomicAdd(f.g_opacities + g, o_op);
      }
      for (int q = 0; q < K; ++q) {
        const T v = warp_sum(w * gF[q]);
        if (lane == 0) atomicAdd(f.g_features + (int64_t)s_id[jj] * K + q, v);
      }
    }
  }
}

template <typename T, bool AA>
__global__ void project_backward_kernel(SceneArgs<T> s, const int32_t* radii, ProjectGradArgs<T> g) {
  const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= s.N) return;
  for (int c = 0; c < s.C; ++c) {
    const int64_t i = (int64_t)c * s.N + n;
    if (radii[i] <= 0) continue;
    const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
    ProjectionT<T> P;
    project_gaussian<T, AA>(s.means + 3 * n, s.scales + 3 * n, s.quats + 4 * n, s.opacities[n], cam, P);
    project_gaussian_backward<T, false, AA>(P, cam, g.g_means2d + 2 * i, g.g_conics + 3 * i, g.g_depths[i],
                                            g.g_opacities[i], g.g_means + 3 * n, g.g_scales + 3 * n,
                                            g.g_quats + 4 * n, g.g_logits[n]);
    const T v[3] = {s.means[3 * n] - cam.center[0], s.means[3 * n + 1] - cam.center[1],
                    s.means[3 * n + 2] - cam.center[2]};
    T g_v[3];
    sh_color_backward(s.sh_degree, s.sh0, s.shN, s.K, n, v, g.g_colors + 3 * i, g.g_sh0, g.g_shN, g_v);
    for (int k = 0; k < 3; ++k) g.g_means[3 * n + k] += g_v[k];
  }
}

// Camera gradients (ProjectGradArgs::g_camera), one thread per (camera, Gaussian): the pair's share, summed
// per warp where the warp's lanes share a camera (else per lane), then atomicAdd into the C x kCamGrads sums.
// Launched only when a camera parameter requires grad.
template <typename T, bool AA>
__global__ void camera_backward_kernel(SceneArgs<T> s, const int32_t* radii, ProjectGradArgs<T> g) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  const int64_t total = (int64_t)s.C * s.N;
  const int64_t ic = i < total ? i : total - 1;  // every lane takes part in the warp sums
  const int c = (int)(ic / s.N);
  const int64_t n = ic - (int64_t)c * s.N;
  T gc[kCamGrads];
  for (int k = 0; k < kCamGrads; ++k) gc[k] = T(0);
  if (i < total && radii[i] > 0) {
    const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
    ProjectionT<T> P;
    project_gaussian<T, AA>(s.means + 3 * n, s.scales + 3 * n, s.quats + 4 * n, s.opacities[n], cam, P);
    T gm[3] = {T(0), T(0), T(0)}, gs[3] = {T(0), T(0), T(0)}, gq[4] = {T(0), T(0), T(0), T(0)}, gl = T(0);
    project_gaussian_backward<T, true, AA>(P, cam, g.g_means2d + 2 * i, g.g_conics + 3 * i, g.g_depths[i],
                                       g.g_opacities[i], gm, gs, gq, gl, s.means + 3 * n, gc);
    const T v[3] = {s.means[3 * n] - cam.center[0], s.means[3 * n + 1] - cam.center[1],
                    s.means[3 * n + 2] - cam.center[2]};
    T l_sh0[3] = {T(0), T(0), T(0)}, l_shN[45], g_v[3];
    for (int k = 0; k < 45; ++k) l_shN[k] = T(0);
    // coefficient gradients into locals (discarded): only the direction's gradient is wanted here
    sh_color_backward(s.sh_degree, s.sh0 + 3 * n, s.K > 0 ? s.shN + n * s.K * 3 : s.shN, s.K, 0, v, g.g_colors + 3 * i,
                      l_sh0, l_shN, g_v);
    for (int k = 0; k < 3; ++k) gc[kCamGradView + kCamGradIntr + k] = -g_v[k];  // v = mean - centre
  }
  const int lane = threadIdx.x & 31;
  const int c_first = __shfl_sync(0xffffffffu, c, 0), c_last = __shfl_sync(0xffffffffu, c, 31);
  if (c_first == c_last) {
    for (int k = 0; k < kCamGrads; ++k) {
      const T v = warp_sum(gc[k]);
      if (lane == 0) atomicAdd(g.g_camera + (int64_t)c * kCamGrads + k, v);
    }
  } else if (i < total) {
    for (int k = 0; k < kCamGrads; ++k) atomicAdd(g.g_camera + (int64_t)c * kCamGrads + k, gc[k]);
  }
}

int bits_for(unsigned long long v) {
  int b = 0;
  while (v > 0) {
    ++b;
    v >>= 1;
  }
  return b;
}

}  // namespace

template <typename T>
void project_forward(const SceneArgs<T>& s, const ProjectedArgs<T>& out, void* stream) {
  const int64_t n = (int64_t)s.C * s.N;
  if (n == 0) return;
  if (s.antialiased)
    project_forward_kernel<T, true><<<blocks_for(n, 256), 256, 0, as_stream(stream)>>>(s, out);
  else
    project_forward_kernel<T, false><<<blocks_for(n, 256), 256, 0, as_stream(stream)>>>(s, out);
  check(cudaGetLastError(), "project_forward");
}

template <typename T>
int64_t count_tiles(const RasterArgs<T>& r, const ScratchFn& scratch, void* stream) {
  const int64_t n = (int64_t)r.C * r.N;
  if (n == 0) return 0;
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  count_tiles_kernel<T><<<blocks_for(n, 256), 256, 0, as_stream(stream)>>>(r, tx, ty);
  check(cudaGetLastError(), "count_tiles");
  // the inclusive scan is recomputed in bin_and_sort; here only the total is needed
  int64_t* total_d = static_cast<int64_t*>(scratch(sizeof(int64_t)));
  size_t temp_bytes = 0;
  check(cub::DeviceReduce::Sum(nullptr, temp_bytes, r.tiles_touched, total_d, (int)n, as_stream(stream)), "reduce size");
  void* temp = scratch(temp_bytes);
  check(cub::DeviceReduce::Sum(temp, temp_bytes, r.tiles_touched, total_d, (int)n, as_stream(stream)), "reduce");
  int64_t total = 0;
  check(cudaMemcpyAsync(&total, total_d, sizeof(int64_t), cudaMemcpyDeviceToHost, as_stream(stream)), "copy total");
  check(cudaStreamSynchronize(as_stream(stream)), "sync total");
  return total;
}

template <typename T>
void bin_and_sort(const RasterArgs<T>& r, int64_t total, const ScratchFn& scratch, void* stream) {
  if (total == 0) return;
  const int64_t n = (int64_t)r.C * r.N;
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  cudaStream_t st = as_stream(stream);
  int64_t* offsets = static_cast<int64_t*>(scratch(sizeof(int64_t) * n));
  size_t temp_bytes = 0;
  check(cub::DeviceScan::InclusiveSum(nullptr, temp_bytes, r.tiles_touched, offsets, (int)n, st), "scan size");
  void* temp = scratch(temp_bytes);
  check(cub::DeviceScan::InclusiveSum(temp, temp_bytes, r.tiles_touched, offsets, (int)n, st), "scan");

  auto* keys_in = static_cast<unsigned long long*>(scratch(sizeof(unsigned long long) * total));
  auto* keys_out = static_cast<unsigned long long*>(scratch(sizeof(unsigned long long) * total));
  auto* vals_in = static_cast<int32_t*>(scratch(sizeof(int32_t) * total));
  emit_keys_kernel<T><<<blocks_for(n, 256), 256, 0, st>>>(r, offsets, tx, ty, keys_in, vals_in);
  check(cudaGetLastError(), "emit_keys");
  const int end_bit = 32 + bits_for((unsigned long long)r.C * tx * ty);
  size_t sort_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, keys_out, vals_in, r.isect_ids, (int)total, 0,
                                        end_bit, st),
        "sort size");
  void* sort_temp = scratch(sort_bytes);
  check(cub::DeviceRadixSort::SortPairs(sort_temp, sort_bytes, keys_in, keys_out, vals_in, r.isect_ids, (int)total, 0,
                                        end_bit, st),
        "sort");
  tile_ranges_kernel<<<blocks_for(total, 256), 256, 0, st>>>(keys_out, total, r.tile_ranges);
  check(cudaGetLastError(), "tile_ranges");
}

template <typename T>
void rasterize_forward(const RasterArgs<T>& r, void* stream) {
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  dim3 grid(tx, ty, r.C), block(kTileSize, kTileSize, 1);
  if (r.median_depth)
    rasterize_forward_kernel<T, true><<<grid, block, 0, as_stream(stream)>>>(r, tx, ty);
  else
    rasterize_forward_kernel<T, false><<<grid, block, 0, as_stream(stream)>>>(r, tx, ty);
  check(cudaGetLastError(), "rasterize_forward");
}

template <typename T>
void rasterize_backward(const RasterArgs<T>& r, const RasterGradArgs<T>& g, void* stream) {
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  dim3 grid(tx, ty, r.C), block(kTileSize, kTileSize, 1);
  rasterize_backward_kernel<T><<<grid, block, 0, as_stream(stream)>>>(r, g, tx, ty);
  check(cudaGetLastError(), "rasterize_backward");
}

template <typename T>
void project_backward(const SceneArgs<T>& s, const int32_t* radii, const ProjectGradArgs<T>& g, void* stream) {
  if (s.N == 0) return;
  if (s.antialiased)
    project_backward_kernel<T, true><<<blocks_for(s.N, 128), 128, 0, as_stream(stream)>>>(s, radii, g);
  else
    project_backward_kernel<T, false><<<blocks_for(s.N, 128), 128, 0, as_stream(stream)>>>(s, radii, g);
  check(cudaGetLastError(), "project_backward");
  if (g.g_camera) {  // the binding hands it zeroed
    const int64_t n = (int64_t)s.C * s.N;
    if (s.antialiased)
      camera_backward_kernel<T, true><<<blocks_for(n, 128), 128, 0, as_stream(stream)>>>(s, radii, g);
    else
      camera_backward_kernel<T, false><<<blocks_for(n, 128), 128, 0, as_stream(stream)>>>(s, radii, g);
    check(cudaGetLastError(), "camera_backward");
  }
}

template <typename T>
void rasterize_features_forward(const RasterArgs<T>& r, const FeatureArgs<T>& f, void* stream) {
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  dim3 grid(tx, ty, r.C), block(kTileSize, kTileSize, 1);
  features_forward_kernel<T><<<grid, block, 0, as_stream(stream)>>>(r, f, tx, ty);
  check(cudaGetLastError(), "rasterize_features_forward");
}

template <typename T>
void rasterize_features_backward(const RasterArgs<T>& r, const FeatureArgs<T>& f, void* stream) {
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  dim3 grid(tx, ty, r.C), block(kTileSize, kTileSize, 1);
  features_backward_kernel<T><<<grid, block, 0, as_stream(stream)>>>(r, f, tx, ty);
  check(cudaGetLastError(), "rasterize_features_backward");
}

template void project_forward<float>(const SceneArgs<float>&, const ProjectedArgs<float>&, void*);
template void rasterize_features_forward<float>(const RasterArgs<float>&, const FeatureArgs<float>&, void*);
template void rasterize_features_backward<float>(const RasterArgs<float>&, const FeatureArgs<float>&, void*);

template int64_t count_tiles<float>(const RasterArgs<float>&, const ScratchFn&, void*);
template void bin_and_sort<float>(const RasterArgs<float>&, int64_t, const ScratchFn&, void*);
template void rasterize_forward<float>(const RasterArgs<float>&, void*);
template void rasterize_backward<float>(const RasterArgs<float>&, const RasterGradArgs<float>&, void*);
template void project_backward<float>(const SceneArgs<float>&, const int32_t*, const ProjectGradArgs<float>&, void*);

}  // namespace gpu
}  // namespace recon3d
