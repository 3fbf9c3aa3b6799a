// Shared maths of the NeRF field's fused MLPs (the "fully fused MLP" idea of tiny-cuda-nn / instant-ngp,
// Müller et al. 2021-22: a block of samples goes through every layer without its activations leaving the
// core's registers / L1, instead of one pass over memory per layer and per elementwise op).
//
// The network is recon3d/nerf/field.py's NerfField at its default shape:
//   density MLP  32 hash features -> 64 (ReLU) -> 16: raw σ (h0) and 15 geometry features
//   colour MLP   [15 geometry features, 16 SH of the view direction] = 31 -> 64 (ReLU) -> 64 (ReLU) -> 3 logits
// The SH basis of the view direction is computed here too (recon3d/sh.py's basis; 16 values from 3 inputs).
// σ = trunc_exp(h0 - 1) and colour = sigmoid(logits) stay in PyTorch (elementwise on N values, cheap).
//
// Every function here works on a "lane" type V: a scalar (the CUDA driver: one thread per sample) or, in
// the CPU driver, a GCC vector of 16 samples (f32x16 / f64x16 from common.h), so one call pushes 16 samples
// through a layer with the weights broadcast from memory. Weights are T (float or double); V's lanes are T.
//
// The parameters are one packed buffer (the layout below, PyTorch's nn.Linear order: W is out × in, row
// major, then b). The backward returns each layer's output gradient; the weight gradients dW = Σ g_out ⊗ x_in
// are summed over samples by weight_grad_accumulate (the CPU driver, per chunk of samples in cache) or by
// one GEMM per layer over all samples (the CUDA driver's caller).
#pragma once

#include "common.h"
#include "sh.h"

namespace recon3d {
namespace nerf_mlp {

constexpr int kIn = 32;      // hash features: 16 levels × 2
constexpr int kHidden = 64;  // width of both MLPs
constexpr int kGeo = 16;     // density MLP outputs: h0 (raw σ) and 15 geometry features
constexpr int kSh = 16;      // degree-3 SH basis of the view direction
constexpr int kColorIn = kGeo - 1 + kSh;  // 31
constexpr int kOut = 3;

// Offsets into the packed parameter buffer.
constexpr int kWd1 = 0;
constexpr int kBd1 = kWd1 + kHidden * kIn;
constexpr int kWd2 = kBd1 + kHidden;
constexpr int kBd2 = kWd2 + kGeo * kHidden;
constexpr int kWc1 = kBd2 + kGeo;
constexpr int kBc1 = kWc1 + kHidden * kColorIn;
constexpr int kWc2 = kBc1 + kHidden;
constexpr int kBc2 = kWc2 + kHidden * kHidden;
constexpr int kWc3 = kBc2 + kHidden;
constexpr int kBc3 = kWc3 + kOut * kHidden;
constexpr int kParams = kBc3 + kOut;

// Bias gradients (drivers that reduce them themselves): b_d1, b_d2, b_c1, b_c2 in this order.
constexpr int kBiasGrads = kHidden + kGeo + kHidden + kHidden;

template <typename V>
R3D_HD V relu(V x) {
  return lane_select<V>(x > V{}, x, V{});
}

// y[j] = b[j] + Σ_k W[j·IN + k]·x[k] (ReLU if RELU). Outputs go in register tiles of 8 (or all of them when
// there are fewer): one load of x[k] feeds 8 multiply-adds with broadcast weights.
template <int IN, int OUT, bool RELU, typename T, typename V>
R3D_HD void dense_forward(const T* W, const T* b, const V* x, V* y) {
  constexpr int TJ = OUT % 8 == 0 ? 8 : OUT;
  for (int j0 = 0; j0 < OUT; j0 += TJ) {
    V acc[TJ];
    R3D_UNROLL
    for (int t = 0; t < TJ; ++t) acc[t] = V{} + b[j0 + t];
    for (int k = 0; k < IN; ++k) {
      const V xk = x[k];
      R3D_UNROLL
      for (int t = 0; t < TJ; ++t) acc[t] += W[(j0 + t) * IN + k] * xk;
    }
    R3D_UNROLL
    for (int t = 0; t < TJ; ++t) y[j0 + t] = RELU ? relu(acc[t]) : acc[t];
  }
}

// Input gradient of a dense layer for its first NEED inputs: gx[k] = Σ_j W[j·IN + k]·gy[j].
template <int IN, int OUT, int NEED, typename T, typename V>
R3D_HD void dense_backward_input(const T* W, const V* gy, V* gx) {
  constexpr int TK = 8;
  R3D_UNROLL
  for (int k0 = 0; k0 < NEED; k0 += TK) {
    V acc[TK];
    R3D_UNROLL
    for (int t = 0; t < TK; ++t) acc[t] = V{};
    for (int j = 0; j < OUT; ++j) {
      const V g = gy[j];
      R3D_UNROLL
      for (int t = 0; t < TK; ++t)
        if (k0 + t < NEED) acc[t] += W[j * IN + k0 + t] * g;
    }
    R3D_UNROLL
    for (int t = 0; t < TK; ++t)
      if (k0 + t < NEED) gx[k0 + t] = acc[t];
  }
}

// The ReLU's backward folded into the incoming gradient: g where the (post-ReLU) activation is positive.
template <typename V>
R3D_HD void relu_backward(int n, const V* act, V* g) {
  for (int j = 0; j < n; ++j) g[j] = lane_select<V>(act[j] > V{}, g[j], V{});
}

// Degree-3 SH basis of unit directions (x, y, z) on lanes: sh.h's sh_basis (the 3DGS basis of recon3d/sh.py)
// written for a lane type (a GCC vector cannot be built from a scalar by a cast, so constants are added to V{}).
template <typename T, typename V>
R3D_HD void sh3_basis(V x, V y, V z, V b[kSh]) {
  const V xx = x * x, yy = y * y, zz = z * z;
  b[0] = V{} + T(kSH_C0);
  b[1] = -T(kSH_C1) * y;
  b[2] = T(kSH_C1) * z;
  b[3] = -T(kSH_C1) * x;
  b[4] = T(kSH_C2_0) * x * y;
  b[5] = T(kSH_C2_1) * y * z;
  b[6] = T(kSH_C2_2) * (T(2) * zz - xx - yy);
  b[7] = T(kSH_C2_3) * x * z;
  b[8] = T(kSH_C2_4) * (xx - yy);
  b[9] = T(kSH_C3_0) * y * (T(3) * xx - yy);
  b[10] = T(kSH_C3_1) * x * y * z;
  b[11] = T(kSH_C3_2) * y * (T(4) * zz - xx - yy);
  b[12] = T(kSH_C3_3) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = T(kSH_C3_4) * x * (T(4) * zz - xx - yy);
  b[14] = T(kSH_C3_5) * z * (xx - yy);
  b[15] = T(kSH_C3_6) * x * (xx - T(3) * yy);
}

// The density MLP alone: h1 (64, post-ReLU) and d (16: h0, then the geometry features).
template <typename T, typename V>
R3D_HD void density_forward(const T* P, const V x[kIn], V h1[kHidden], V d[kGeo]) {
  dense_forward<kIn, kHidden, true>(P + kWd1, P + kBd1, x, h1);
  dense_forward<kHidden, kGeo, false>(P + kWd2, P + kBd2, h1, d);
}

// The colour MLP from the density outputs and the SH basis: c1, c2 (64 each, post-ReLU) and the 3 logits.
template <typename T, typename V>
R3D_HD void color_forward(const T* P, const V d[kGeo], const V sh[kSh], V c1[kHidden], V c2[kHidden],
                          V out[kOut]) {
  V cin[kColorIn];
  for (int k = 0; k < kGeo - 1; ++k) cin[k] = d[1 + k];
  for (int k = 0; k < kSh; ++k) cin[kGeo - 1 + k] = sh[k];
  dense_forward<kColorIn, kHidden, true>(P + kWc1, P + kBc1, cin, c1);
  dense_forward<kHidden, kHidden, true>(P + kWc2, P + kBc2, c1, c2);
  dense_forward<kHidden, kOut, false>(P + kWc3, P + kBc3, c2, out);
}

// Backward of the whole field MLP given the forward's post-ReLU activations and the gradients of h0 and of
// the logits. Writes each layer's output gradient (pre-activation: the ReLU masks applied), which the weight
// gradients need — g_c2, g_c1 (64), g_d (16: g_h0, then the geometry features'), g_h1 (64) — and the hash
// features' gradient g_x (32). The SH inputs get none (the view direction is not learnt).
template <typename T, typename V>
R3D_HD void field_backward(const T* P, const V h1[kHidden], const V c1[kHidden], const V c2[kHidden], V g_h0,
                           const V g_out[kOut], V g_c2[kHidden], V g_c1[kHidden], V g_d[kGeo], V g_h1[kHidden],
                           V g_x[kIn]) {
  dense_backward_input<kHidden, kOut, kHidden>(P + kWc3, g_out, g_c2);
  relu_backward(kHidden, c2, g_c2);
  dense_backward_input<kHidden, kHidden, kHidden>(P + kWc2, g_c2, g_c1);
  relu_backward(kHidden, c1, g_c1);
  g_d[0] = g_h0;
  dense_backward_input<kColorIn, kHidden, kGeo - 1>(P + kWc1, g_c1, g_d + 1);
  dense_backward_input<kHidden, kGeo, kHidden>(P + kWd2, g_d, g_h1);
  relu_backward(kHidden, h1, g_h1);
  dense_backward_input<kIn, kHidden, kIn>(P + kWd1, g_h1, g_x);
}

// Weight and bias gradients of one layer summed over a chunk of B lane groups: dW[j·IN + k] += Σ_b G[j][b]·X[k][b]
// and db[j] += Σ_b G[j][b], with G (OUT × B) the layer's output gradients and X (IN × B) its inputs, both
// feature major. Each lane keeps its own partial sums (the caller adds the lanes up once at the end). Register
// tiles of 4 outputs × 4 inputs: 8 loads feed 16 multiply-adds.
template <int IN, int OUT, typename V>
R3D_HD void weight_grad_accumulate(int B, const V* G, const V* X, V* dW, V* db) {
  constexpr int TJ = OUT % 4 == 0 ? 4 : OUT;
  constexpr int TK = 4;
  for (int j0 = 0; j0 < OUT; j0 += TJ) {
    for (int k0 = 0; k0 < IN; k0 += TK) {
      V acc[TJ][TK];
      R3D_UNROLL
      for (int a = 0; a < TJ; ++a) {
        R3D_UNROLL
        for (int c = 0; c < TK; ++c) acc[a][c] = V{};
      }
      for (int b = 0; b < B; ++b) {
        V g[TJ], x[TK];
        R3D_UNROLL
        for (int a = 0; a < TJ; ++a) g[a] = G[(j0 + a) * B + b];
        R3D_UNROLL
        for (int c = 0; c < TK; ++c) x[c] = k0 + c < IN ? X[(k0 + c) * B + b] : V{};
        R3D_UNROLL
        for (int a = 0; a < TJ; ++a) {
          R3D_UNROLL
          for (int c = 0; c < TK; ++c) acc[a][c] += g[a] * x[c];
        }
      }
      R3D_UNROLL
      for (int a = 0; a < TJ; ++a) {
        R3D_UNROLL
        for (int c = 0; c < TK; ++c)
          if (k0 + c < IN) dW[(j0 + a) * IN + k0 + c] += acc[a][c];
      }
    }
    R3D_UNROLL
    for (int a = 0; a < TJ; ++a) {
      V s = V{};
      for (int b = 0; b < B; ++b) s += G[(j0 + a) * B + b];
      db[j0 + a] += s;
    }
  }
}

}  // namespace nerf_mlp
}  // namespace recon3d
