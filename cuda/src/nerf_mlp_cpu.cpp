// CPU driver of the NeRF field's fused MLPs (C++17 + OpenMP + GCC vectors), called from
// recon3d/nerf/fused_mlp.py through ctypes. The maths is include/recon3d/nerf_mlp.h, shared with the CUDA
// driver (nerf_mlp_cuda.cu); this file only schedules it: blocks of 16 samples (one f32x16 / f64x16 lane
// each) in parallel over OpenMP threads, every layer of a block computed before the next block starts.
//
// Layouts: inputs and outputs the field exchanges with PyTorch are row major (N × features); what the
// backward and the weight-gradient GEMMs read (activations, per-layer output gradients) is feature major
// (features × N), so a block's 16 lanes of one feature are one contiguous 64-byte store and the caller's
// dW = G · Xᵀ runs as a plain GEMM over N. Scalars: float for training, double for the tests' checks.
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "recon3d/nerf_mlp.h"

using namespace recon3d;
using namespace recon3d::nerf_mlp;

namespace {

constexpr int kLanes = 16;

// Row-major rows i0 .. i0+m of an N × K array into K lanes (lanes past m are zero).
template <int K, typename T, typename V>
inline void load_rows(const T* src, int64_t i0, int m, V* dst) {
  alignas(64) T buf[K][kLanes];
  if (m < kLanes) memset(buf, 0, sizeof(buf));
  for (int l = 0; l < m; ++l) {
    const T* row = src + (i0 + l) * K;
    for (int k = 0; k < K; ++k) buf[k][l] = row[k];
  }
  memcpy(dst, buf, sizeof(buf));
}

// K lanes into row-major rows i0 .. i0+m of an N × K array.
template <int K, typename T, typename V>
inline void store_rows(const V* src, int64_t i0, int m, T* dst) {
  alignas(64) T buf[K][kLanes];
  memcpy(buf, src, sizeof(buf));
  for (int l = 0; l < m; ++l) {
    T* row = dst + (i0 + l) * K;
    for (int k = 0; k < K; ++k) row[k] = buf[k][l];
  }
}

// K lanes into columns i0 .. i0+m of a feature-major K × N array.
template <typename T, typename V>
inline void store_cols(int k_count, const V* src, int64_t n, int64_t i0, int m, T* dst) {
  for (int k = 0; k < k_count; ++k) memcpy(dst + k * n + i0, &src[k], sizeof(T) * m);
}

// Columns i0 .. i0+m of a feature-major K × N array into K lanes (lanes past m are zero).
template <typename T, typename V>
inline void load_cols(int k_count, const T* src, int64_t n, int64_t i0, int m, V* dst) {
  for (int k = 0; k < k_count; ++k) {
    if (m < kLanes) dst[k] = V{};
    memcpy(&dst[k], src + k * n + i0, sizeof(T) * m);
  }
}

// Scalar lanes of one feature.
template <typename T, typename V>
inline void load_scalars(const T* src, int64_t i0, int m, V* dst) {
  *dst = V{};
  memcpy(dst, src + i0, sizeof(T) * m);
}

template <typename T, typename V>
inline void store_scalars(const V* src, int64_t i0, int m, T* dst) {
  memcpy(dst + i0, src, sizeof(T) * m);
}

template <typename T>
void density(int64_t n, const T* P, const T* x, T* out_h0, int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kLanes;
    const int m = (int)(n - i0 < kLanes ? n - i0 : kLanes);
    V xv[kIn], h1[kHidden], d[kGeo];
    load_rows<kIn>(x, i0, m, xv);
    density_forward(P, xv, h1, d);
    store_scalars(&d[0], i0, m, out_h0);
  }
}

// Forward of both MLPs; the activations the backward needs are kept (feature major) when ``h1t`` is given.
template <typename T>
void forward(int64_t n, const T* P, const T* x, const T* sh, T* out_h0, T* out_logits, T* h1t, T* dt, T* c1t, T* c2t,
             int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kLanes;
    const int m = (int)(n - i0 < kLanes ? n - i0 : kLanes);
    V xv[kIn], shv[kSh], h1[kHidden], d[kGeo], c1[kHidden], c2[kHidden], out[kOut];
    load_rows<kIn>(x, i0, m, xv);
    load_rows<kSh>(sh, i0, m, shv);
    density_forward(P, xv, h1, d);
    color_forward(P, d, shv, c1, c2, out);
    store_scalars(&d[0], i0, m, out_h0);
    store_rows<kOut>(out, i0, m, out_logits);
    if (h1t) {
      store_cols(kHidden, h1, n, i0, m, h1t);
      store_cols(kGeo, d, n, i0, m, dt);
      store_cols(kHidden, c1, n, i0, m, c1t);
      store_cols(kHidden, c2, n, i0, m, c2t);
    }
  }
}

// Backward: per-layer output gradients (feature major), the features' gradient (row major) and the bias
// gradients (summed over samples: per-thread lane sums, then one reduction).
template <typename T>
void backward(int64_t n, const T* P, const T* h1t, const T* c1t, const T* c2t, const T* g_h0, const T* g_logits,
              T* g_c2t, T* g_c1t, T* g_dt, T* g_h1t, T* g_x, T* bias_grads, int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
  memset(bias_grads, 0, sizeof(T) * kBiasGrads);
#pragma omp parallel num_threads(threads)
  {
    V bacc[kBiasGrads];
    for (int j = 0; j < kBiasGrads; ++j) bacc[j] = V{};
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t i0 = b * kLanes;
      const int m = (int)(n - i0 < kLanes ? n - i0 : kLanes);
      V h1[kHidden], c1[kHidden], c2[kHidden], gh0, gout[kOut];
      V gc2[kHidden], gc1[kHidden], gd[kGeo], gh1[kHidden], gx[kIn];
      load_cols(kHidden, h1t, n, i0, m, h1);
      load_cols(kHidden, c1t, n, i0, m, c1);
      load_cols(kHidden, c2t, n, i0, m, c2);
      load_scalars(g_h0, i0, m, &gh0);
      load_rows<kOut>(g_logits, i0, m, gout);
      field_backward(P, h1, c1, c2, gh0, gout, gc2, gc1, gd, gh1, gx);
      store_cols(kHidden, gc2, n, i0, m, g_c2t);
      store_cols(kHidden, gc1, n, i0, m, g_c1t);
      store_cols(kGeo, gd, n, i0, m, g_dt);
      store_cols(kHidden, gh1, n, i0, m, g_h1t);
      store_rows<kIn>(gx, i0, m, g_x);
      // lanes past m hold zero gradients (their inputs were zero-padded), so they add nothing
      for (int j = 0; j < kHidden; ++j) bacc[j] += gh1[j];
      for (int j = 0; j < kGeo; ++j) bacc[kHidden + j] += gd[j];
      for (int j = 0; j < kHidden; ++j) bacc[kHidden + kGeo + j] += gc1[j];
      for (int j = 0; j < kHidden; ++j) bacc[2 * kHidden + kGeo + j] += gc2[j];
    }
#pragma omp critical
    for (int j = 0; j < kBiasGrads; ++j) {
      T s = T(0);
      for (int l = 0; l < kLanes; ++l) s += bacc[j][l];
      bias_grads[j] += s;
    }
  }
}

// The fused backward: per chunk of kChunk lane groups (kChunk·16 samples), the forward again (cheaper than
// writing the activations out and reading them back: 16 ms of stores for 14 ms of forward at 65,536
// samples), the backward through both MLPs, then every layer's weight gradient from the chunk's inputs and
// output gradients while they are in cache. Per-thread lane-form sums, added up once at the end; writes the
// features' gradient (row major) and every parameter's (packed layout).
constexpr int kChunk = 8;

template <typename T>
void backward_fused(int64_t n, const T* P, const T* x, const T* sh, const T* g_h0, const T* g_logits, T* g_x,
                    T* g_params, int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
  const int64_t chunks = (blocks + kChunk - 1) / kChunk;
  memset(g_params, 0, sizeof(T) * kParams);
#pragma omp parallel num_threads(threads)
  {
    V* acc = new V[kParams];
    for (int j = 0; j < kParams; ++j) acc[j] = V{};
    // chunk buffers, feature major (feature × lane group): each layer's inputs and output gradients
    V* xd1 = new V[kChunk * (kIn + kHidden + kColorIn + 2 * kHidden + kHidden + kGeo + 2 * kHidden + kOut)];
    V* xd2 = xd1 + kChunk * kIn;
    V* xc1 = xd2 + kChunk * kHidden;
    V* xc2 = xc1 + kChunk * kColorIn;
    V* xc3 = xc2 + kChunk * kHidden;
    V* gd1 = xc3 + kChunk * kHidden;
    V* gd2 = gd1 + kChunk * kHidden;
    V* gc1 = gd2 + kChunk * kGeo;
    V* gc2 = gc1 + kChunk * kHidden;
    V* gc3 = gc2 + kChunk * kHidden;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t b0 = c * kChunk;
      const int B = (int)(blocks - b0 < kChunk ? blocks - b0 : kChunk);
      for (int b = 0; b < B; ++b) {
        const int64_t i0 = (b0 + b) * kLanes;
        const int m = (int)(n - i0 < kLanes ? n - i0 : kLanes);
        V xv[kIn], shv[kSh], h1[kHidden], d[kGeo], c1[kHidden], c2[kHidden], out[kOut], gh0, gout[kOut];
        V g2[kHidden], g1[kHidden], gd[kGeo], gh1[kHidden], gx[kIn];
        load_rows<kIn>(x, i0, m, xv);
        load_rows<kSh>(sh, i0, m, shv);
        load_scalars(g_h0, i0, m, &gh0);
        load_rows<kOut>(g_logits, i0, m, gout);  // zero past m: those lanes add nothing to the sums
        density_forward(P, xv, h1, d);
        color_forward(P, d, shv, c1, c2, out);
        field_backward(P, h1, c1, c2, gh0, gout, g2, g1, gd, gh1, gx);
        store_rows<kIn>(gx, i0, m, g_x);
        for (int k = 0; k < kIn; ++k) xd1[k * B + b] = xv[k];
        for (int k = 0; k < kHidden; ++k) {
          xd2[k * B + b] = h1[k];
          xc2[k * B + b] = c1[k];
          xc3[k * B + b] = c2[k];
          gd1[k * B + b] = gh1[k];
          gc1[k * B + b] = g1[k];
          gc2[k * B + b] = g2[k];
        }
        for (int k = 0; k < kGeo - 1; ++k) xc1[k * B + b] = d[1 + k];
        for (int k = 0; k < kSh; ++k) xc1[(kGeo - 1 + k) * B + b] = shv[k];
        for (int k = 0; k < kGeo; ++k) gd2[k * B + b] = gd[k];
        for (int k = 0; k < kOut; ++k) gc3[k * B + b] = gout[k];
      }
      weight_grad_accumulate<kIn, kHidden>(B, gd1, xd1, acc + kWd1, acc + kBd1);
      weight_grad_accumulate<kHidden, kGeo>(B, gd2, xd2, acc + kWd2, acc + kBd2);
      weight_grad_accumulate<kColorIn, kHidden>(B, gc1, xc1, acc + kWc1, acc + kBc1);
      weight_grad_accumulate<kHidden, kHidden>(B, gc2, xc2, acc + kWc2, acc + kBc2);
      weight_grad_accumulate<kHidden, kOut>(B, gc3, xc3, acc + kWc3, acc + kBc3);
    }
#pragma omp critical
    for (int j = 0; j < kParams; ++j) {
      T s = T(0);
      for (int l = 0; l < kLanes; ++l) s += acc[j][l];
      g_params[j] += s;
    }
    delete[] xd1;
    delete[] acc;
  }
}

}  // namespace

extern "C" {

int r3d_nerf_mlp_params() { return kParams; }

#define R3D_MLP_ENTRY(SUFFIX, T)                                                                                      \
  void r3d_nerf_mlp_density_##SUFFIX(int64_t n, const T* P, const T* x, T* out_h0, int threads) {                    \
    density(n, P, x, out_h0, threads);                                                                                \
  }                                                                                                                   \
  void r3d_nerf_mlp_forward_##SUFFIX(int64_t n, const T* P, const T* x, const T* sh, T* out_h0, T* out_logits,       \
                                     T* h1t, T* dt, T* c1t, T* c2t, int threads) {                                    \
    forward(n, P, x, sh, out_h0, out_logits, h1t, dt, c1t, c2t, threads);                                             \
  }                                                                                                                   \
  void r3d_nerf_mlp_backward_##SUFFIX(int64_t n, const T* P, const T* h1t, const T* c1t, const T* c2t,               \
                                      const T* g_h0, const T* g_logits, T* g_c2t, T* g_c1t, T* g_dt, T* g_h1t,        \
                                      T* g_x, T* bias_grads, int threads) {                                           \
    backward(n, P, h1t, c1t, c2t, g_h0, g_logits, g_c2t, g_c1t, g_dt, g_h1t, g_x, bias_grads, threads);               \
  }                                                                                                                   \
  void r3d_nerf_mlp_backward_fused_##SUFFIX(int64_t n, const T* P, const T* x, const T* sh, const T* g_h0,           \
                                            const T* g_logits, T* g_x, T* g_params, int threads) {                    \
    backward_fused(n, P, x, sh, g_h0, g_logits, g_x, g_params, threads);                                              \
  }

R3D_MLP_ENTRY(f32, float)
R3D_MLP_ENTRY(f64, double)

}  // extern "C"
