// CPU driver of the NeRF field's fused MLPs (C++17 + OpenMP + GCC vectors), called from
// recon3d/nerf/fused_mlp.py through ctypes. The maths is include/recon3d/nerf_mlp.h, shared with the CUDA
// driver (nerf_mlp_cuda.cu); this file only schedules it: blocks of 16 samples (one f32x16 / f64x16 lane
// each) in parallel over OpenMP threads, every layer of a block computed before the next block starts.
//
// Inputs and outputs are row major (N × features), as PyTorch holds them; the view directions come in (N × 3)
// and their SH basis is made here. Nothing is kept between the forward and the backward: the backward runs
// the forward again (see backward_fused). Scalars: float for training, double for the tests' checks.
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

// Directions (row major N × 3) of rows i0 .. i0+m -> their SH basis on lanes (zero directions past m).
template <typename T, typename V>
inline void load_sh(const T* dirs, int64_t i0, int m, V* sh) {
  V d[3];
  load_rows<3>(dirs, i0, m, d);
  sh3_basis<T>(d[0], d[1], d[2], sh);
}

// Forward of both MLPs (nothing kept: the backward runs it again).
template <typename T>
void forward(int64_t n, const T* P, const T* x, const T* dirs, T* out_h0, T* out_logits, int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t i0 = b * kLanes;
    const int m = (int)(n - i0 < kLanes ? n - i0 : kLanes);
    V xv[kIn], shv[kSh], h1[kHidden], d[kGeo], c1[kHidden], c2[kHidden], out[kOut];
    load_rows<kIn>(x, i0, m, xv);
    load_sh(dirs, i0, m, shv);
    density_forward(P, xv, h1, d);
    color_forward(P, d, shv, c1, c2, out);
    store_scalars(&d[0], i0, m, out_h0);
    store_rows<kOut>(out, i0, m, out_logits);
  }
}

// The fused backward: per chunk of kChunk lane groups (kChunk·16 samples), the forward again (cheaper than
// writing the activations out and reading them back: 16 ms of stores for 14 ms of forward at 65,536
// samples), the backward through both MLPs, then every layer's weight gradient from the chunk's inputs and
// output gradients while they are in cache. Per-thread lane-form sums, added up once at the end (static
// schedule, thread order: deterministic for a given thread count); writes the features' gradient (row major)
// and every parameter's (packed layout).
constexpr int kChunk = 8;

template <typename T>
void backward_fused(int64_t n, const T* P, const T* x, const T* dirs, const T* g_h0, const T* g_logits, T* g_x,
                    T* g_params, int threads) {
  typedef typename Lanes<T>::type V;
  const int64_t blocks = (n + kLanes - 1) / kLanes;
  const int64_t chunks = (blocks + kChunk - 1) / kChunk;
  memset(g_params, 0, sizeof(T) * kParams);
  // per-thread sums added in thread order after the loop (not in a critical section's arrival order): the
  // same thread count gives bit-identical gradients run to run (a resumed run retraces the original)
  T* partial = new T[(size_t)threads * kParams]();
  int used = 1;
#pragma omp parallel num_threads(threads)
  {
#pragma omp single
    used = omp_get_num_threads();
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
        load_sh(dirs, i0, m, shv);
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
    T* mine = partial + (size_t)omp_get_thread_num() * kParams;
    for (int j = 0; j < kParams; ++j) {
      T s = T(0);
      for (int l = 0; l < kLanes; ++l) s += acc[j][l];
      mine[j] = s;
    }
    delete[] xd1;
    delete[] acc;
  }
  for (int t = 0; t < used; ++t)
    for (int j = 0; j < kParams; ++j) g_params[j] += partial[(size_t)t * kParams + j];
  delete[] partial;
}

}  // namespace

extern "C" {

int r3d_nerf_mlp_params() { return kParams; }

#define R3D_MLP_ENTRY(SUFFIX, T)                                                                                      \
  void r3d_nerf_mlp_density_##SUFFIX(int64_t n, const T* P, const T* x, T* out_h0, int threads) {                    \
    density(n, P, x, out_h0, threads);                                                                                \
  }                                                                                                                   \
  void r3d_nerf_mlp_forward_##SUFFIX(int64_t n, const T* P, const T* x, const T* dirs, T* out_h0, T* out_logits,     \
                                     int threads) {                                                                   \
    forward(n, P, x, dirs, out_h0, out_logits, threads);                                                              \
  }                                                                                                                   \
  void r3d_nerf_mlp_backward_fused_##SUFFIX(int64_t n, const T* P, const T* x, const T* dirs, const T* g_h0,         \
                                            const T* g_logits, T* g_x, T* g_params, int threads) {                    \
    backward_fused(n, P, x, dirs, g_h0, g_logits, g_x, g_params, threads);                                            \
  }

R3D_MLP_ENTRY(f32, float)
R3D_MLP_ENTRY(f64, double)

}  // extern "C"
