// CUDA driver of the NeRF kernels. Torch-free: raw device pointers and a stream, the same
// __host__ __device__ maths (include/recon3d/nerf.h) as the CPU driver that the CPU tests cover.
//   hash encoding forward   one thread per (point, level)
//   hash encoding backward  one thread per (point, level), atomicAdd into the table gradient
//   compositing             one thread per ray
//   ray marching            counting kernel, exclusive scan (cub), filling kernel, one thread per ray
#include <cuda_runtime.h>

#include <cub/cub.cuh>

#include "recon3d/nerf.h"

namespace recon3d {
namespace nerf {
namespace gpu {
namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

template <typename T>
__global__ void hash_forward_kernel(int64_t n, const T* pos, int levels, const int* res, const int64_t* offset,
                                    const T* table, T* out) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n * levels) return;
  const int64_t i = k / levels;
  const int l = (int)(k - i * levels);
  const uint32_t size = (uint32_t)(offset[l + 1] - offset[l]);
  hash_level_forward(pos + 3 * i, res[l], size, table + offset[l] * kHashFeatures, out + k * kHashFeatures);
}

struct AtomicAdd {
  template <typename T>
  __device__ void operator()(T* p, T v) const {
    atomicAdd(p, v);
  }
};

template <typename T>
__global__ void hash_backward_kernel(int64_t n, const T* pos, int levels, const int* res, const int64_t* offset,
                                     const T* grad_out, T* grad_table) {
  const int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= n * levels) return;
  const int64_t i = k / levels;
  const int l = (int)(k - i * levels);
  const uint32_t size = (uint32_t)(offset[l + 1] - offset[l]);
  hash_level_backward(pos + 3 * i, res[l], size, grad_out + k * kHashFeatures, grad_table + offset[l] * kHashFeatures,
                      AtomicAdd());
}

template <typename T>
__global__ void composite_forward_kernel(int64_t rays, const int64_t* start, const T* sigma, const T* rgb, const T* t,
                                         const T* dt, T* weights, T* out_rgb, T* out_opacity, T* out_depth) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  const int64_t s = start[r];
  composite_forward((int)(start[r + 1] - s), sigma + s, rgb + 3 * s, t + s, dt + s, weights + s, out_rgb + 3 * r,
                    out_opacity + r, out_depth + r);
}

template <typename T>
__global__ void composite_backward_kernel(int64_t rays, const int64_t* start, const T* sigma, const T* rgb, const T* t,
                                          const T* dt, const T* out_rgb, const T* out_opacity, const T* out_depth,
                                          const T* g_rgb, const T* g_opacity, const T* g_depth, T* grad_sigma,
                                          T* grad_rgb) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  const int64_t s = start[r];
  composite_backward((int)(start[r + 1] - s), sigma + s, rgb + 3 * s, t + s, dt + s, out_rgb + 3 * r, out_opacity[r],
                     out_depth[r], g_rgb + 3 * r, g_opacity[r], g_depth[r], grad_sigma + s, grad_rgb + 3 * s);
}

__global__ void march_count_kernel(int64_t rays, const float* origins, const float* dirs, const float* near,
                                   const float* far, MarchArgs a, int64_t* counts) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  counts[r] = march_ray(a, origins + 3 * r, dirs + 3 * r, near[r], far[r], nullptr, nullptr, nullptr);
}

__global__ void march_fill_kernel(int64_t rays, const float* origins, const float* dirs, const float* near,
                                  const float* far, MarchArgs a, const int64_t* start, float* t, float* dt, float* u) {
  const int64_t r = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rays) return;
  const int64_t s = start[r];
  march_ray(a, origins + 3 * r, dirs + 3 * r, near[r], far[r], t + s, dt + s, u + 3 * s);
}

}  // namespace
}  // namespace gpu
}  // namespace nerf
}  // namespace recon3d

using namespace recon3d::nerf;
using namespace recon3d::nerf::gpu;

extern "C" {

// Every launcher returns the cudaError_t of its launch (0 = success).
int r3d_nerf_cuda_hash_forward_f32(int64_t n, const float* pos, int levels, const int* res, const int64_t* offset,
                                   const float* table, float* out, void* stream) {
  if (n == 0) return 0;
  hash_forward_kernel<<<blocks_for(n * levels), kThreads, 0, (cudaStream_t)stream>>>(n, pos, levels, res, offset, table,
                                                                                     out);
  return (int)cudaGetLastError();
}

int r3d_nerf_cuda_hash_backward_f32(int64_t n, const float* pos, int levels, const int* res, const int64_t* offset,
                                    const float* grad_out, float* grad_table, void* stream) {
  if (n == 0) return 0;
  hash_backward_kernel<<<blocks_for(n * levels), kThreads, 0, (cudaStream_t)stream>>>(n, pos, levels, res, offset,
                                                                                      grad_out, grad_table);
  return (int)cudaGetLastError();
}

int r3d_nerf_cuda_composite_forward_f32(int64_t rays, const int64_t* start, const float* sigma, const float* rgb,
                                        const float* t, const float* dt, float* weights, float* out_rgb,
                                        float* out_opacity, float* out_depth, void* stream) {
  if (rays == 0) return 0;
  composite_forward_kernel<<<blocks_for(rays), kThreads, 0, (cudaStream_t)stream>>>(rays, start, sigma, rgb, t, dt,
                                                                                    weights, out_rgb, out_opacity,
                                                                                    out_depth);
  return (int)cudaGetLastError();
}

int r3d_nerf_cuda_composite_backward_f32(int64_t rays, const int64_t* start, const float* sigma, const float* rgb,
                                         const float* t, const float* dt, const float* out_rgb,
                                         const float* out_opacity, const float* out_depth, const float* g_rgb,
                                         const float* g_opacity, const float* g_depth, float* grad_sigma,
                                         float* grad_rgb, void* stream) {
  if (rays == 0) return 0;
  composite_backward_kernel<<<blocks_for(rays), kThreads, 0, (cudaStream_t)stream>>>(
      rays, start, sigma, rgb, t, dt, out_rgb, out_opacity, out_depth, g_rgb, g_opacity, g_depth, grad_sigma, grad_rgb);
  return (int)cudaGetLastError();
}

// March: counts (device, rays) and start (device, rays + 1) are filled; the caller reads start[rays] to
// size t/dt/u and calls r3d_nerf_cuda_march_fill. ``scratch``/``scratch_bytes``: cub's temporary storage
// (call with scratch = null to get the size in *scratch_bytes).
int r3d_nerf_cuda_march_count(int64_t rays, const float* origins, const float* dirs, const float* near,
                              const float* far, const float* fparams, const int* iparams, const uint8_t* grid,
                              int64_t* counts, int64_t* start, void* scratch, size_t* scratch_bytes, void* stream) {
  if (scratch == nullptr)
    return (int)cub::DeviceScan::ExclusiveSum(nullptr, *scratch_bytes, counts, start, rays + 1, (cudaStream_t)stream);
  const MarchArgs a = march_args(fparams, iparams, grid);
  // counts has rays + 1 entries, the last zero, so the exclusive scan's last entry is the total
  cudaMemsetAsync(counts + rays, 0, sizeof(int64_t), (cudaStream_t)stream);
  if (rays > 0)
    march_count_kernel<<<blocks_for(rays), kThreads, 0, (cudaStream_t)stream>>>(rays, origins, dirs, near, far, a,
                                                                                counts);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return (int)err;
  return (int)cub::DeviceScan::ExclusiveSum(scratch, *scratch_bytes, counts, start, rays + 1, (cudaStream_t)stream);
}

int r3d_nerf_cuda_march_fill(int64_t rays, const float* origins, const float* dirs, const float* near,
                             const float* far, const float* fparams, const int* iparams, const uint8_t* grid,
                             const int64_t* start, float* t, float* dt, float* u, void* stream) {
  if (rays == 0) return 0;
  const MarchArgs a = march_args(fparams, iparams, grid);
  march_fill_kernel<<<blocks_for(rays), kThreads, 0, (cudaStream_t)stream>>>(rays, origins, dirs, near, far, a, start, t,
                                                                             dt, u);
  return (int)cudaGetLastError();
}

}  // extern "C"
