// CUDA driver of the NeRF field's fused MLPs. Torch-free: raw device pointers and a stream, the same
// __host__ __device__ maths (include/recon3d/nerf_mlp.h) as the CPU driver that the CPU tests cover, with
// the lane type a plain float: one thread per sample carries it through every layer (its activations stay
// in registers / local memory; the weights, read by every thread of a warp at the same address, are
// broadcast from the cache). Feature-major arrays (features × N) make every per-feature store coalesced.
// The forward keeps the activations the backward needs; the backward writes every layer's output gradient and
// the caller forms the weight and bias gradients (cuBLAS GEMMs and sums over N).
#include <cuda_runtime.h>

#include "recon3d/nerf_mlp.h"

namespace recon3d {
namespace nerf_mlp {
namespace gpu {
namespace {

constexpr int kThreads = 128;

int blocks_for(int64_t n) { return (int)((n + kThreads - 1) / kThreads); }

__global__ void density_kernel(int64_t n, const float* P, const float* x, float* out_h0) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float xv[kIn], h1[kHidden], d[kGeo];
  for (int k = 0; k < kIn; ++k) xv[k] = x[i * kIn + k];
  density_forward(P, xv, h1, d);
  out_h0[i] = d[0];
}

__global__ void forward_kernel(int64_t n, const float* P, const float* x, const float* dirs, float* out_h0,
                               float* out_logits, float* h1t, float* dt, float* c1t, float* c2t) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float xv[kIn], shv[kSh], h1[kHidden], d[kGeo], c1[kHidden], c2[kHidden], out[kOut];
  for (int k = 0; k < kIn; ++k) xv[k] = x[i * kIn + k];
  sh3_basis<float>(dirs[3 * i], dirs[3 * i + 1], dirs[3 * i + 2], shv);
  density_forward(P, xv, h1, d);
  color_forward(P, d, shv, c1, c2, out);
  out_h0[i] = d[0];
  for (int k = 0; k < kOut; ++k) out_logits[i * kOut + k] = out[k];
  if (h1t) {
    for (int k = 0; k < kHidden; ++k) h1t[k * n + i] = h1[k];
    for (int k = 0; k < kGeo; ++k) dt[k * n + i] = d[k];
    for (int k = 0; k < kHidden; ++k) c1t[k * n + i] = c1[k];
    for (int k = 0; k < kHidden; ++k) c2t[k * n + i] = c2[k];
  }
}

__global__ void backward_kernel(int64_t n, const float* P, const float* h1t, const float* c1t, const float* c2t,
                                const float* g_h0, const float* g_logits, float* g_c2t, float* g_c1t, float* g_dt,
                                float* g_h1t, float* g_x) {
  const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float h1[kHidden], c1[kHidden], c2[kHidden], gout[kOut];
  float gc2[kHidden], gc1[kHidden], gd[kGeo], gh1[kHidden], gx[kIn];
  for (int k = 0; k < kHidden; ++k) {
    h1[k] = h1t[k * n + i];
    c1[k] = c1t[k * n + i];
    c2[k] = c2t[k * n + i];
  }
  for (int k = 0; k < kOut; ++k) gout[k] = g_logits[i * kOut + k];
  field_backward(P, h1, c1, c2, g_h0[i], gout, gc2, gc1, gd, gh1, gx);
  for (int k = 0; k < kHidden; ++k) {
    g_c2t[k * n + i] = gc2[k];
    g_c1t[k * n + i] = gc1[k];
    g_h1t[k * n + i] = gh1[k];
  }
  for (int k = 0; k < kGeo; ++k) g_dt[k * n + i] = gd[k];
  for (int k = 0; k < kIn; ++k) g_x[i * kIn + k] = gx[k];
}

}  // namespace
}  // namespace gpu
}  // namespace nerf_mlp
}  // namespace recon3d

using namespace recon3d::nerf_mlp;
using namespace recon3d::nerf_mlp::gpu;

extern "C" {

int r3d_nerf_mlp_cuda_density_f32(int64_t n, const float* P, const float* x, float* out_h0, void* stream) {
  if (n == 0) return 0;
  density_kernel<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(n, P, x, out_h0);
  return (int)cudaGetLastError();
}

int r3d_nerf_mlp_cuda_forward_f32(int64_t n, const float* P, const float* x, const float* dirs, float* out_h0,
                                  float* out_logits, float* h1t, float* dt, float* c1t, float* c2t, void* stream) {
  if (n == 0) return 0;
  forward_kernel<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(n, P, x, dirs, out_h0, out_logits, h1t, dt, c1t,
                                                                       c2t);
  return (int)cudaGetLastError();
}

int r3d_nerf_mlp_cuda_backward_f32(int64_t n, const float* P, const float* h1t, const float* c1t, const float* c2t,
                                   const float* g_h0, const float* g_logits, float* g_c2t, float* g_c1t, float* g_dt,
                                   float* g_h1t, float* g_x, void* stream) {
  if (n == 0) return 0;
  backward_kernel<<<blocks_for(n), kThreads, 0, (cudaStream_t)stream>>>(n, P, h1t, c1t, c2t, g_h0, g_logits, g_c2t,
                                                                        g_c1t, g_dt, g_h1t, g_x);
  return (int)cudaGetLastError();
}

}  // extern "C"
