// CPU driver of the rasterizer (C++17 + OpenMP). The maths lives in include/recon3d/*.h, shared with the
// CUDA driver; this file only schedules it: projection in parallel over Gaussians; binning that finds each
// Gaussian's tiles once (count_tiles) and fills the tile lists in depth order from one radix sort of the
// visible Gaussians (no per-tile sort); per-tile compositing where a 16-pixel row of a tile is one SIMD
// vector (no per-pixel branches), Gaussian-outer and row-inner with the 16 rows' state in L1 and rows and
// tiles retired once every pixel has stopped. The backward walks each tile's Gaussians back to front from
// the last contributor and sums gradients per tile, then into per-thread buffers summed at the end (no
// atomics). RECON3D_PROFILE=1 prints each step's wall and CPU time.
#include <omp.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

// glibc's vector expf/logf (libmvec, linked by kernels.py where it exists), so the projection loops that
// call them vectorise; glibc declares them itself only under -ffast-math. float only: the double loops
// stay scalar (and bit-identical to the plain ones).
#if defined(RECON3D_LIBMVEC) && defined(__x86_64__)
extern "C" {
#pragma omp declare simd notinbranch
float expf(float) noexcept;
#pragma omp declare simd notinbranch
float logf(float) noexcept;
}
#endif

#include <algorithm>
#include <chrono>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "recon3d/blend.h"
#include "recon3d/driver.h"
#include "recon3d/projection.h"
#include "recon3d/sh.h"

namespace recon3d {
namespace cpu {

namespace {
constexpr int kTS = kTileSize;
static_assert(kTS == 16, "the CPU row loops assume 16-pixel tiles");

template <typename T>
using LanesT = typename Lanes<T>::type;

template <typename T>
LanesT<T> lane_iota() {
  LanesT<T> v{};
  for (int k = 0; k < kTS; ++k) v[k] = T(k);
  return v;
}

int threads_for(int requested) { return requested > 0 ? requested : 1; }

// RECON3D_PROFILE=1 prints each driver step's wall time to stderr (profiling without perf).
// The CPU time (all threads) is printed too: on a shared machine it is the steadier figure.
struct StageTimer {
  const char* name;
  bool on;
  std::chrono::steady_clock::time_point t0;
  double cpu0 = 0;
  explicit StageTimer(const char* n) : name(n), on(enabled()), t0(std::chrono::steady_clock::now()) {
    if (on) cpu0 = cpu_ms();
  }
  ~StageTimer() {
    if (on)
      fprintf(stderr, "recon3d %-18s %8.2f ms wall %8.2f ms cpu\n", name,
              std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
              cpu_ms() - cpu0);
  }
  static double cpu_ms() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  }
  static bool enabled() {
    static const bool e = getenv("RECON3D_PROFILE") != nullptr && getenv("RECON3D_PROFILE")[0] == '1';
    return e;
  }
};

// What the tile loops read of one (camera, Gaussian), packed into one cache line by pack_gaussians: the
// per-tile gather then costs one miss per Gaussian instead of one per input array (and no log/division).
// mx, my, conic a, b, c, opacity, rgb, depth, support r2 (with margin), 1/a; 4 slots of padding.
template <typename T>
struct alignas(64) PackedT {
  T v[16];
};

template <typename T>
void pack_gaussians(const RasterArgs<T>& r, std::vector<PackedT<T>>& out) {
  const int64_t CN = (int64_t)r.C * r.N;
  if (out.size() < (size_t)CN) out.resize(CN);
  PackedT<T>* o = out.data();
#pragma omp parallel for schedule(static) num_threads(threads_for(r.num_threads))
  for (int64_t g = 0; g < CN; ++g) {
    if (r.radii[g] <= 0) continue;  // never binned, never read
    T* p = o[g].v;
    p[0] = r.means2d[2 * g];
    p[1] = r.means2d[2 * g + 1];
    p[2] = r.conics[3 * g];
    p[3] = r.conics[3 * g + 1];
    p[4] = r.conics[3 * g + 2];
    p[5] = r.opacities[g];
    p[6] = r.colors[3 * g];
    p[7] = r.colors[3 * g + 1];
    p[8] = r.colors[3 * g + 2];
    p[9] = r.depths[g];
    p[10] = support_r2_margin(support_r2(p[5]));
    p[11] = T(1) / p[2];
  }
}

// Bit k set where lane k of a comparison result is true.
inline uint32_t mask_bits(MaskOf<f32x16> m) {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  return (uint32_t)_mm512_movepi32_mask((__m512i)m);
#elif defined(__AVX__)
  typedef int32_t i8v __attribute__((vector_size(32)));
  const i8v lo = __builtin_shufflevector(m, m, 0, 1, 2, 3, 4, 5, 6, 7);
  const i8v hi = __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15);
  return (uint32_t)_mm256_movemask_ps((__m256)lo) | ((uint32_t)_mm256_movemask_ps((__m256)hi) << 8);
#else
  uint32_t b = 0;
  for (int k = 0; k < 16; ++k) b |= (m[k] ? 1u : 0u) << k;
  return b;
#endif
}
template <typename M>
inline uint32_t mask_bits(M m) {
  uint32_t b = 0;
  for (int k = 0; k < 16; ++k) b |= (m[k] ? 1u : 0u) << k;
  return b;
}

// The forward's per-visit gates on w > 0 from one comparison: positive_bits gives its lanes as bits (a mask
// register with AVX-512), stop_bits_within the lanes among them with nt < t_min, and select_positive picks
// x where w > 0 and y elsewhere, given w's bits (a masked blend with AVX-512; the other builds compare w
// again, which is the same set of lanes).
inline uint32_t positive_bits(f32x16 w) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)w, _mm512_setzero_ps(), _CMP_GT_OQ);
#else
  return mask_bits(w > 0.0f);
#endif
}
inline uint32_t positive_bits(f64x16 w) { return mask_bits(w > 0.0); }
inline uint32_t stop_bits_within(uint32_t kw, f32x16 nt, float t_min) {
#if defined(__AVX512F__)
  return _mm512_mask_cmp_ps_mask((__mmask16)kw, (__m512)nt, _mm512_set1_ps(t_min), _CMP_LT_OQ);
#else
  return kw & mask_bits(nt < t_min);
#endif
}
inline uint32_t stop_bits_within(uint32_t kw, f64x16 nt, double t_min) { return kw & mask_bits(nt < t_min); }
inline f32x16 select_positive(uint32_t kw, f32x16 w, f32x16 x, f32x16 y) {
#if defined(__AVX512F__)
  (void)w;
  return (f32x16)_mm512_mask_blend_ps((__mmask16)kw, (__m512)y, (__m512)x);
#else
  (void)kw;
  return lane_select<f32x16>(w > 0.0f, x, y);
#endif
}
inline f64x16 select_positive(uint32_t, f64x16 w, f64x16 x, f64x16 y) { return lane_select<f64x16>(w > 0.0, x, y); }

// Appends (b << 4 | row) for every set bit of `bits` (a 16-row mask) to out, returns how many: one
// compress and one full 16-int store with AVX-512 (out needs 16 writable slots), no branch per row.
inline int append_visits(int32_t* out, uint32_t bits, int b) {
#if defined(__AVX512F__)
  const __m512i v = _mm512_add_epi32(_mm512_set1_epi32(b << 4),
                                     _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  _mm512_storeu_si512((void*)out, _mm512_maskz_compress_epi32((__mmask16)bits, v));
  return __builtin_popcount(bits);
#else
  int k = 0;
  for (; bits; bits &= bits - 1) out[k++] = (b << 4) | __builtin_ctz(bits);
  return k;
#endif
}

template <typename V>
inline V lane_sqrt(V v) {
  for (int k = 0; k < 16; ++k) v[k] = r_sqrt(v[k]);  // vectorised (sqrtps) under -fno-math-errno
  return v;
}

// Which of a tile's 16 rows (lanes = rows, py = their centres) may hold a pixel centre x in [x_lo, x_hi] of the
// Gaussian's support (m^2 <= r2, r2 inflated by support_r2_margin; ica = 1 / conic a): on row py the support
// spans dx = mx - px in [(-cb dy - root) / ca, (-cb dy + root) / ca], root = sqrt(cb^2 dy^2 - ca (cc dy^2 - r2)),
// widened by 0.01 px. Conservative: the per-pixel test stays exact. Bit k set where row k may hold one.
template <typename T>
inline uint32_t rows_meeting_support(T mx, T my, T ca, T cb, T cc, T r2, T ica, const LanesT<T>& py, T x_lo,
                                     T x_hi) {
  using V = LanesT<T>;
  const V dy = my - py;
  const V dy2 = dy * dy;
  const V disc = cb * cb * dy2 - ca * (cc * dy2 - r2);
  const V root = lane_sqrt(lane_select<V>(disc > T(0), disc, V{}));
  const V px_lo = mx - (-cb * dy + root) * ica - T(0.01), px_hi = mx - (-cb * dy - root) * ica + T(0.01);
  // three comparisons folded into one: disc < 0 pushes px_hi below x_lo
  const V hi_ok = lane_select<V>(disc >= T(0), px_hi, V{} + (x_lo - T(1)));
  const V lo_ok = lane_select<V>(px_lo <= x_hi, hi_ok, V{} + (x_lo - T(1)));
  return mask_bits(lo_ok >= x_lo);
}
// the same on a packed record (PackedT layout)
template <typename T>
inline uint32_t rows_meeting_support(const T* p, const LanesT<T>& py, T x_lo, T x_hi) {
  return rows_meeting_support<T>(p[0], p[1], p[2], p[3], p[4], p[10], p[11], py, x_lo, x_hi);
}

// Horizontal sums of ten 16-lane vectors at once: lane q of the result is the sum of the lanes of the q-th
// argument. A transpose-and-add tree (each level halves the lanes per input and doubles the inputs per
// vector) costs about half the shuffles and adds of ten separate halving trees.
template <typename V>
inline V lane_sums10(V v0, V v1, V v2, V v3, V v4, V v5, V v6, V v7, V v8, V v9) {
  const V z{};
  const V v[16] = {v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, z, z, z, z, z, z};
  V a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-7: 8 partial sums of v[i]; 8-15: of v[i + 8]
    a[i] = __builtin_shufflevector(v[i], v[i + 8], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(v[i], v[i + 8], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)  // 4 partial sums each of v[i], v[i + 4], v[i + 8], v[i + 12]
    b[i] = __builtin_shufflevector(a[i], a[i + 4], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           __builtin_shufflevector(a[i], a[i + 4], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)  // 2 partial sums each of v[i], v[i + 2], ..., v[i + 14]
    c[i] = __builtin_shufflevector(b[i], b[i + 2], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(b[i], b[i + 2], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

// Tiles in decreasing order of list length. The tile loops hand tiles out dynamically in this order, so the
// costliest start first and no thread is left alone with a long tile at the end while the others idle.
inline void tiles_by_cost(const int32_t* tile_ranges, int64_t num_tiles, std::vector<int32_t>& order) {
  order.resize(num_tiles);
  for (int64_t t = 0; t < num_tiles; ++t) order[t] = (int32_t)t;
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return tile_ranges[2 * a + 1] - tile_ranges[2 * a] > tile_ranges[2 * b + 1] - tile_ranges[2 * b];
  });
}
}  // namespace

// The locals each projection loop function starts with, written once for the forward's pair of loop functions
// and once for the backward's (fused and split): one local per pointer, because loads through the argument
// structs inside the loops would not vectorise. Macros, not a struct or a helper: the loops must see plain
// __restrict locals, and the expansion is token for token what each function declared before (the same code).
#define R3D_PROJECT_SCENE_LOCALS(s)                                                                                   \
  const int64_t N = (s).N;                                                                                            \
  const int K = (s).K;                                                                                                \
  const T* __restrict means = (s).means;                                                                              \
  const T* __restrict scales = (s).scales;                                                                            \
  const T* __restrict quats = (s).quats;                                                                              \
  const T* __restrict logits = (s).opacities;                                                                         \
  const T* __restrict sh0 = (s).sh0;                                                                                  \
  const T* __restrict shN = (s).shN;
#define R3D_PROJECT_FORWARD_LOCALS(s, out, c)                                                                         \
  R3D_PROJECT_SCENE_LOCALS(s)                                                                                         \
  T* __restrict o_means2d = (out).means2d + (int64_t)(c) * N * 2;                                                     \
  T* __restrict o_conics = (out).conics + (int64_t)(c) * N * 3;                                                       \
  T* __restrict o_colors = (out).colors + (int64_t)(c) * N * 3;                                                       \
  T* __restrict o_opac = (out).opacities + (int64_t)(c) * N;                                                          \
  T* __restrict o_depths = (out).depths + (int64_t)(c) * N;                                                           \
  int32_t* __restrict o_radii = (out).radii + (int64_t)(c) * N;                                                       \
  T* __restrict o_ext = (out).extents + (int64_t)(c) * N * 2;
#define R3D_PROJECT_BACKWARD_LOCALS(s, g, radii, c)                                                                   \
  R3D_PROJECT_SCENE_LOCALS(s)                                                                                         \
  const int32_t* __restrict rad = (radii) + (int64_t)(c) * N;                                                         \
  const T* __restrict u_means2d = (g).g_means2d + (int64_t)(c) * N * 2;                                               \
  const T* __restrict u_conics = (g).g_conics + (int64_t)(c) * N * 3;                                                 \
  const T* __restrict u_colors = (g).g_colors + (int64_t)(c) * N * 3;                                                 \
  const T* __restrict u_opac = (g).g_opacities + (int64_t)(c) * N;                                                    \
  const T* __restrict u_depths = (g).g_depths + (int64_t)(c) * N;                                                     \
  T* __restrict o_means = (g).g_means;                                                                                \
  T* __restrict o_scales = (g).g_scales;                                                                              \
  T* __restrict o_quats = (g).g_quats;                                                                                \
  T* __restrict o_logits = (g).g_logits;                                                                              \
  T* __restrict o_sh0 = (g).g_sh0;                                                                                    \
  T* __restrict o_shN = (g).g_shN;

namespace {
// Projection of Gaussians [lo, hi) into camera c with SH degree D. For float g++ vectorises the loop: 16
// Gaussians per AVX-512 vector (8 with AVX2), expf/logf through glibc's vector variants (declared above),
// every branch of the shared maths a select. For double (the test build) no vector exp is declared, so the
// loop stays scalar. ivdep, not `omp simd`: the latter privatises the ProjectionT struct into an array
// before inlining, which stops the vectoriser.
template <typename T, int D, bool AA>
void project_range_fused(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                   const ProjectedArgs<T>& out) {
  const CameraT<T> cam = cam_in;  // a local copy: its fields become loop invariants
  // every pointer in a local: loads through the argument structs inside the loop would not vectorise
  R3D_PROJECT_FORWARD_LOCALS(s, out, c);
#pragma GCC ivdep
  for (int64_t g = lo; g < hi; ++g) {
    ProjectionT<T> P;
    project_gaussian<T, AA>(means + 3 * g, scales + 3 * g, quats + 4 * g, logits[g], cam, P);
    o_means2d[2 * g] = P.mean2d[0];
    o_means2d[2 * g + 1] = P.mean2d[1];
    for (int k = 0; k < 3; ++k) o_conics[3 * g + k] = P.conic[k];
    o_opac[g] = P.opacity;
    o_depths[g] = P.p[2];
    o_radii[g] = P.radius;
    o_ext[2 * g] = P.ext[0];
    o_ext[2 * g + 1] = P.ext[1];
    // SH for every Gaussian (a branch would stop the vectoriser), zeroed where culled
    T color[3];
    const T v[3] = {means[3 * g] - cam.center[0], means[3 * g + 1] - cam.center[1], means[3 * g + 2] - cam.center[2]};
    sh_color_forward(D, sh0, shN, K, g, v, color);
    for (int k = 0; k < 3; ++k) o_colors[3 * g + k] = P.radius > 0 ? color[k] : T(0);
  }
}
template <typename T, int D, bool AA>
void project_range_split(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                   const ProjectedArgs<T>& out) {
  const CameraT<T> cam = cam_in;  // a local copy: its fields become loop invariants
  // every pointer in a local: loads through the argument structs inside the loop would not vectorise
  R3D_PROJECT_FORWARD_LOCALS(s, out, c);
#pragma GCC ivdep
  for (int64_t g = lo; g < hi; ++g) {
    ProjectionT<T> P;
    project_gaussian<T, AA>(means + 3 * g, scales + 3 * g, quats + 4 * g, logits[g], cam, P);
    o_means2d[2 * g] = P.mean2d[0];
    o_means2d[2 * g + 1] = P.mean2d[1];
    for (int k = 0; k < 3; ++k) o_conics[3 * g + k] = P.conic[k];
    o_opac[g] = P.opacity;
    o_depths[g] = P.p[2];
    o_radii[g] = P.radius;
    o_ext[2 * g] = P.ext[0];
    o_ext[2 * g + 1] = P.ext[1];
  }
  // SH in a loop of its own (see project_backward_split: one loop holding both spilled registers)
#pragma GCC ivdep
  for (int64_t g = lo; g < hi; ++g) {
    // SH for every Gaussian (a branch would stop the vectoriser), zeroed where culled
    T color[3];
    const T v[3] = {means[3 * g] - cam.center[0], means[3 * g + 1] - cam.center[1], means[3 * g + 2] - cam.center[2]};
    sh_color_forward(D, sh0, shN, K, g, v, color);
    for (int k = 0; k < 3; ++k) o_colors[3 * g + k] = o_radii[g] > 0 ? color[k] : T(0);
  }
}
// float: the split loops on the part of the range that the fused loop ran 16 lanes wide, the fused loop on its
// tail (as project_backward_range, and for the same reason: the same Gaussians through the same code, so every
// result stays bit-identical); double: the fused loop.
template <typename T, int D, bool AA>
void project_range(const SceneArgs<T>& s, const CameraT<T>& cam, int c, int64_t lo, int64_t hi,
                   const ProjectedArgs<T>& out) {
  if constexpr (std::is_same<T, float>::value) {
    const int64_t wide = hi > lo ? 16 * ((hi - lo - 1) / 16) : 0;
    if (wide > 0) project_range_split<T, D, AA>(s, cam, c, lo, lo + wide, out);
    if (lo + wide < hi) project_range_fused<T, D, AA>(s, cam, c, lo + wide, hi, out);
  } else {
    project_range_fused<T, D, AA>(s, cam, c, lo, hi, out);
  }
}
}  // namespace

template <typename T>
void project_forward(const SceneArgs<T>& s, int num_threads, const ProjectedArgs<T>& out) {
  const StageTimer timer_("project_forward");
  const int64_t N = s.N;
  constexpr int64_t kChunk = 2048;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  for (int c = 0; c < s.C; ++c) {
    const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
#pragma omp parallel for schedule(static) num_threads(threads_for(num_threads))
    for (int64_t q = 0; q < chunks; ++q) {
      const int64_t lo = q * kChunk, hi = std::min(N, lo + kChunk);
      // a literal degree per case, so the inlined SH loops unroll into straight-line code
      if (s.antialiased) {
        switch (s.sh_degree) {
          case 0: project_range<T, 0, true>(s, cam, c, lo, hi, out); break;
          case 1: project_range<T, 1, true>(s, cam, c, lo, hi, out); break;
          case 2: project_range<T, 2, true>(s, cam, c, lo, hi, out); break;
          default: project_range<T, 3, true>(s, cam, c, lo, hi, out); break;
        }
      } else {
        switch (s.sh_degree) {
          case 0: project_range<T, 0, false>(s, cam, c, lo, hi, out); break;
          case 1: project_range<T, 1, false>(s, cam, c, lo, hi, out); break;
          case 2: project_range<T, 2, false>(s, cam, c, lo, hi, out); break;
          default: project_range<T, 3, false>(s, cam, c, lo, hi, out); break;
        }
      }
    }
  }
}

namespace {
// What count_tiles leaves for bin_and_sort (the binding calls the two back to back on one thread), kept
// across calls so no step allocates or faults in fresh pages. thread_local: concurrent renders never share it.
//  order[cam_start[c] .. cam_start[c + 1]): camera c's visible Gaussians (radius > 0) in depth order, then
//    index order; filling the tile lists in this order leaves every list depth-sorted (no per-tile sort).
//  The order is cut into `parts` contiguous runs; count_tiles finds each Gaussian's tiles once, in order,
//  into its part's tile buffer (part_tiles, part_size) with their number in ntiles[q], and counts each
//  part's entries per tile (hist, parts x num_tiles); bin_and_sort turns the counts into write cursors and
//  replays the buffers: one pass over the Gaussians' data, in the order the lists need.
template <typename T>
struct alignas(sizeof(T) == 4 ? 32 : 64) BinRecT {
  // mean x, y; conic a, b, c; the tile test's limit (support radius^2, inflated by support_r2_margin)
  T v[6];
  int16_t box[4];  // the support box's tiles [x0, x1) x [y0, y1) (tile_rect)
};

struct BinState {
  const int32_t* key = nullptr;  // r.tiles_touched of the call that filled it
  int64_t count = 0;             // its C * N
  int parts = 0;
  std::vector<int32_t> order, order_tmp;
  std::vector<uint32_t> keys, keys_tmp;
  std::vector<int64_t> cam_start;
  std::vector<int64_t> part_lo;
  std::vector<int32_t> ntiles;
  std::vector<std::vector<int32_t>> part_tiles;
  std::vector<int64_t> part_size;
  std::vector<int32_t> hist;
  std::vector<uint32_t> radix_hist;
  std::vector<BinRecT<float>> rec_f;
  std::vector<BinRecT<double>> rec_d;
  template <typename T> BinRecT<T>* records(size_t n);
};
template <> BinRecT<float>* BinState::records<float>(size_t n) {
  if (rec_f.size() < n) rec_f.resize(n);
  return rec_f.data();
}
template <> BinRecT<double>* BinState::records<double>(size_t n) {
  if (rec_d.size() < n) rec_d.resize(n);
  return rec_d.data();
}
thread_local BinState bin_state;

// Gaussians [lo, hi) of camera c packed for the tile test, in index order (sequential reads); the test then
// reads them in depth order, one half line each instead of four arrays. The support radii first, in a loop
// of their own that vectorises (glibc's vector logf) for float.
template <typename T>
void pack_bin_records(const RasterArgs<T>& r, int c, int64_t lo, int64_t hi, BinRecT<T>* __restrict rec) {
  constexpr int64_t kBlock = 256;
  T lim[kBlock];
  int32_t bx0[kBlock], bx1[kBlock], by0[kBlock], by1[kBlock];
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  const int64_t off = (int64_t)c * r.N;
  const T* __restrict opac = r.opacities + off;
  const T* __restrict m = r.means2d + 2 * off;
  const T* __restrict e = r.extents + 2 * off;
  const T* __restrict k = r.conics + 3 * off;
  for (int64_t b0 = lo; b0 < hi; b0 += kBlock) {
    const int64_t n = std::min(kBlock, hi - b0);
    // the per-Gaussian scalar work of the tile test (log, box), in a loop that vectorises
#pragma GCC ivdep
    for (int64_t j = 0; j < n; ++j) {
      const int64_t g = b0 + j;
      lim[j] = support_r2_margin(support_r2(opac[g]));
      int x0, x1, y0, y1;
      tile_rect(m[2 * g], m[2 * g + 1], e[2 * g], e[2 * g + 1], tx, ty, x0, x1, y0, y1);
      bx0[j] = x0;
      bx1[j] = x1;
      by0[j] = y0;
      by1[j] = y1;
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t g = b0 + j;
      BinRecT<T>& o = rec[off + g];
      o.v[0] = m[2 * g];
      o.v[1] = m[2 * g + 1];
      o.v[2] = k[3 * g];
      o.v[3] = k[3 * g + 1];
      o.v[4] = k[3 * g + 2];
      o.v[5] = lim[j];
      o.box[0] = (int16_t)bx0[j];
      o.box[1] = (int16_t)bx1[j];
      o.box[2] = (int16_t)by0[j];
      o.box[3] = (int16_t)by1[j];
    }
  }
}

// Visible Gaussians per camera in (depth, index) order into b.order / b.cam_start.
// float64 (the test build): an exact comparison sort.
template <typename T>
void visible_in_depth_order(const RasterArgs<T>& r, int /*nt*/, BinState& b) {
  const int64_t N = r.N;
  BinRecT<T>* rec = b.records<T>((size_t)r.C * N);
  for (int c = 0; c < r.C; ++c) pack_bin_records<T>(r, c, 0, N, rec);
  b.order.resize((size_t)r.C * N);
  b.cam_start.assign(r.C + 1, 0);
  int64_t n = 0;
  for (int c = 0; c < r.C; ++c) {
    const int32_t* rad = r.radii + (int64_t)c * N;
    const T* dep = r.depths + (int64_t)c * N;
    const int64_t s = n;
    for (int64_t g = 0; g < N; ++g)
      if (rad[g] > 0) b.order[n++] = (int32_t)g;
    std::sort(b.order.begin() + s, b.order.begin() + n,
              [&](int32_t a, int32_t q) { return dep[a] != dep[q] ? dep[a] < dep[q] : a < q; });
    b.cam_start[c + 1] = n;
  }
}

// float: a parallel LSD radix sort per camera on the depth's bit pattern (visible depths are positive, and
// positive floats order like their bits), 11/11/10-bit digits (histograms in L1), stable, so ties keep
// index order. The first pass reads radii and depths directly (no separate compaction); each thread
// histograms and scatters its own contiguous range, so the scatter is stable across threads too.
template <>
void visible_in_depth_order<float>(const RasterArgs<float>& r, int nt, BinState& b) {
  const int64_t N = r.N;
  const size_t CN = (size_t)r.C * N;
  for (auto* v : {&b.order, &b.order_tmp})
    if (v->size() < CN) v->resize(CN);
  for (auto* v : {&b.keys, &b.keys_tmp})
    if (v->size() < CN) v->resize(CN);
  b.cam_start.assign(r.C + 1, 0);
  constexpr int kBuckets = 2048;
  if (b.radix_hist.size() < (size_t)nt * kBuckets) b.radix_hist.resize((size_t)nt * kBuckets);
  uint32_t* const hist = b.radix_hist.data();
  int32_t* const ord[2] = {b.order.data(), b.order_tmp.data()};
  uint32_t* const key[2] = {b.keys.data(), b.keys_tmp.data()};
  int64_t* const cam_start = b.cam_start.data();
  BinRecT<float>* const rec = b.records<float>(CN);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), nth = omp_get_num_threads();
    uint32_t* h = hist + (size_t)t * kBuckets;
    for (int c = 0; c < r.C; ++c) {
      const int32_t* rad = r.radii + (int64_t)c * N;
      const uint32_t* dep = reinterpret_cast<const uint32_t*>(r.depths + (int64_t)c * N);
      const int64_t base = cam_start[c];
      // pass 0 writes buffer 0, pass 1 buffer 1, pass 2 buffer 0 (= b.order)
      for (int pass = 0; pass < 3; ++pass) {
        const int shift = 11 * pass;
        const uint32_t mask = pass == 2 ? 1023u : 2047u;
        memset(h, 0, sizeof(uint32_t) * kBuckets);
        int64_t lo, hi;
        if (pass == 0) {
          lo = N * t / nth;
          hi = N * (t + 1) / nth;
          pack_bin_records<float>(r, c, lo, hi, rec);
          for (int64_t g = lo; g < hi; ++g)
            if (rad[g] > 0) ++h[dep[g] & mask];
        } else {
          const int64_t nv = cam_start[c + 1] - base;
          lo = base + nv * t / nth;
          hi = base + nv * (t + 1) / nth;
          const uint32_t* kin = key[pass & 1 ? 0 : 1];
          for (int64_t k = lo; k < hi; ++k) ++h[(kin[k] >> shift) & mask];
        }
#pragma omp barrier
#pragma omp single
        {
          uint32_t run = (uint32_t)base;  // positions fit 32 bits: C * N < 2^31 is checked by the caller
          for (uint32_t d = 0; d <= mask; ++d)
            for (int th = 0; th < nth; ++th) {
              uint32_t& v = hist[(size_t)th * kBuckets + d];
              const uint32_t n = v;
              v = run;
              run += n;
            }
          if (pass == 0) cam_start[c + 1] = run;
        }  // implicit barrier
        if (pass == 0) {
          int32_t* vo = ord[0];
          uint32_t* ko = key[0];
          for (int64_t g = lo; g < hi; ++g)
            if (rad[g] > 0) {
              const uint32_t d = h[dep[g] & mask]++;
              ko[d] = dep[g];
              vo[d] = (int32_t)g;
            }
        } else {
          const int src = pass & 1 ? 0 : 1, dst = 1 - src;
          const uint32_t* kin = key[src];
          const int32_t* vin = ord[src];
          uint32_t* ko = key[dst];
          int32_t* vo = ord[dst];
          const bool last = pass == 2;
          for (int64_t k = lo; k < hi; ++k) {
            const uint32_t d = h[(kin[k] >> shift) & mask]++;
            if (!last) ko[d] = kin[k];
            vo[d] = vin[k];
          }
        }
#pragma omp barrier
      }
    }
  }
}

// Whether the inflated support ellipse (m^2 <= lim) reaches a pixel centre of each of 16 tiles at once (lanes:
// tile columns txv, rows tyv), branch-free: the quadratic form's minimum over the tile's box of pixel centres is
// at the mean when the box holds it, else on one of the four edges (a 1D clamped minimum each); ica = 1 / ca,
// icc = 1 / cc. Bit k set where lane k's tile holds a pixel centre the support reaches.
template <typename T>
inline uint32_t tiles_touch_lanes(T mx, T my, T ca, T cb, T cc, T ica, T icc, T lim, const LanesT<T>& txv,
                                  const LanesT<T>& tyv, T width, T height) {
  using V = LanesT<T>;
  const T ts = T(kTileSize);
  auto vmin = [](V a, V b) { return lane_select<V>(a < b, a, b); };
  auto vmax = [](V a, V b) { return lane_select<V>(a > b, a, b); };
  const V px0 = txv * ts + T(0.5), px1 = vmin(txv * ts + (ts - T(0.5)), V{} + (width - T(0.5)));
  const V py0 = tyv * ts + T(0.5), py1 = vmin(tyv * ts + (ts - T(0.5)), V{} + (height - T(0.5)));
  const V dx0 = mx - px1, dx1 = mx - px0, dy0 = my - py1, dy1 = my - py0;
  const uint32_t inside = mask_bits(dx0 <= T(0)) & mask_bits(dx1 >= T(0)) & mask_bits(dy0 <= T(0)) &
                          mask_bits(dy1 >= T(0));
  V best = V{} + (lim + T(1));
  {  // edges dy = const: ca dx^2 + 2 cb dx dy + cc dy^2 over dx in [dx0, dx1]
    V dx = vmin(vmax(-cb * dy0 * ica, dx0), dx1);
    best = vmin(best, ca * dx * dx + T(2) * cb * dx * dy0 + cc * dy0 * dy0);
    dx = vmin(vmax(-cb * dy1 * ica, dx0), dx1);
    best = vmin(best, ca * dx * dx + T(2) * cb * dx * dy1 + cc * dy1 * dy1);
  }
  {  // edges dx = const
    V dy = vmin(vmax(-cb * dx0 * icc, dy0), dy1);
    best = vmin(best, ca * dx0 * dx0 + T(2) * cb * dx0 * dy + cc * dy * dy);
    dy = vmin(vmax(-cb * dx1 * icc, dy0), dy1);
    best = vmin(best, ca * dx1 * dx1 + T(2) * cb * dx1 * dy + cc * dy * dy);
  }
  return inside | mask_bits(best <= lim);
}

// Lane k -> (column, row) of a box bw tiles wide when 16 / bw of its rows share a vector (bw <= 16).
struct BoxLanes {
  alignas(64) int32_t col[17][16];
  alignas(64) int32_t row[17][16];
  BoxLanes() {
    for (int bw = 1; bw <= 16; ++bw)
      for (int k = 0; k < 16; ++k) {
        col[bw][k] = k % bw;
        row[bw][k] = k / bw;
      }
  }
};
const BoxLanes box_lanes;

// Append the set lanes of idx (bits) to out; returns how many. With AVX-512 a compress into a register and one
// full 16-int store (out needs 16 writable slots): the memory form of vpcompressd is microcoded on AMD Zen 4
// (tens of cycles; it was a third of count_tiles there).
inline int append_lanes(const i32x16& idx, uint32_t bits, int32_t* out) {
#if defined(__AVX512F__)
  _mm512_storeu_si512((void*)out, _mm512_maskz_compress_epi32((__mmask16)bits, (__m512i)idx));
  return __builtin_popcount(bits);
#else
  int n = 0;
  for (; bits; bits &= bits - 1) out[n++] = idx[__builtin_ctz(bits)];
  return n;
#endif
}

// The tiles (global indices cam * tiles + y * tiles_x + x) that packed Gaussian p of camera cam reaches, into
// out: the support box's tiles, and past 2 tiles only those the ellipse reaches, tested 16 at a time.
template <typename T>
int tiles_of(const RasterArgs<T>& r, const BinRecT<T>& rec, int cam, int tx, int ty, int32_t* out) {
  const T* p = rec.v;
  const int x0 = rec.box[0], x1 = rec.box[1], y0 = rec.box[2], y1 = rec.box[3];
  const int32_t base = cam * tx * ty;
  int n = 0;
  // small boxes are kept whole: the exact test costs more than it saves there
  if ((x1 - x0) * (y1 - y0) <= 2) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) out[n++] = base + y * tx + x;
    return n;
  }
  using V = LanesT<T>;
  const T mx = p[0], my = p[1], ca = p[2], cb = p[3], cc = p[4], lim = p[5], ica = T(1) / ca, icc = T(1) / cc;
  const T W = T(r.width), H = T(r.height);
  const int bw = x1 - x0;
  const i32x16 iota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  if (bw <= 16) {
    const int rpv = 16 / bw;  // box rows per vector
    const i32x16 col = *reinterpret_cast<const i32x16*>(box_lanes.col[bw]);
    const i32x16 row = *reinterpret_cast<const i32x16*>(box_lanes.row[bw]);
    const uint32_t lanes = (1u << (rpv * bw)) - 1;
    for (int y = y0; y < y1; y += rpv) {
      const i32x16 txi = col + x0, tyi = row + y;
      const uint32_t valid = lanes & mask_bits(tyi < y1);
      const uint32_t hit = valid & tiles_touch_lanes<T>(mx, my, ca, cb, cc, ica, icc, lim, __builtin_convertvector(txi, V),
                                                         __builtin_convertvector(tyi, V), W, H);
      n += append_lanes(tyi * tx + txi + base, hit, out + n);
    }
    return n;
  }
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; x += 16) {
      const i32x16 txi = iota + x, tyi = i32x16{} + y;
      const uint32_t hit = mask_bits(txi < x1) & tiles_touch_lanes<T>(mx, my, ca, cb, cc, ica, icc, lim,
                                                                      __builtin_convertvector(txi, V),
                                                                      __builtin_convertvector(tyi, V), W, H);
      n += append_lanes(tyi * tx + txi + base, hit, out + n);
    }
  return n;
}
}  // namespace

template <typename T>
int64_t count_tiles(const RasterArgs<T>& r) {
  const StageTimer timer_("count_tiles");
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const int nt = threads_for(r.num_threads);
  BinState& b = bin_state;
  b.key = nullptr;
  {
    const StageTimer sort_timer_("  depth_sort");
    visible_in_depth_order<T>(r, nt, b);
  }
  const int64_t n_vis = b.cam_start[r.C];
  // a few parts per thread, handed out dynamically: a thread that drew large Gaussians is not waited for
  const int parts = (int)std::max<int64_t>(1, std::min<int64_t>(4 * nt, n_vis / 512));
  b.parts = parts;
  b.part_lo.resize(parts + 1);
  for (int p = 0; p <= parts; ++p) b.part_lo[p] = n_vis * p / parts;
  if (b.ntiles.size() < (size_t)n_vis) b.ntiles.resize(n_vis);
  if ((int)b.part_tiles.size() < parts) b.part_tiles.resize(parts);
  b.part_size.assign(parts, 0);
  if (b.hist.size() < (size_t)parts * num_tiles) b.hist.resize((size_t)parts * num_tiles);
  // a support box can cover the whole image; + 16: append_lanes stores 16 ints whatever it appends
  const int64_t max_box = (int64_t)tx * ty + 16;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int p = 0; p < parts; ++p) {
    const int64_t lo = b.part_lo[p], hi = b.part_lo[p + 1];
    int32_t* cnt = b.hist.data() + (size_t)p * num_tiles;
    memset(cnt, 0, sizeof(int32_t) * num_tiles);
    std::vector<int32_t>& buf = b.part_tiles[p];
    int cam = (int)(std::upper_bound(b.cam_start.begin(), b.cam_start.end(), lo) - b.cam_start.begin()) - 1;
    int64_t pos = 0;
    // the Gaussians come in depth order, i.e. at random places in the records: ask for them early
    const BinRecT<T>* rec = b.records<T>(0);
    constexpr int64_t kAhead = 12;
    for (int64_t q = lo; q < hi; ++q) {
      while (q >= b.cam_start[cam + 1]) ++cam;
      if (q + kAhead < hi) {
        const int64_t qa = q + kAhead;
        int ca = cam;
        while (qa >= b.cam_start[ca + 1]) ++ca;
        __builtin_prefetch(rec[(int64_t)ca * r.N + b.order[qa]].v);
      }
      if (pos + max_box > (int64_t)buf.size()) buf.resize(std::max<size_t>(2 * buf.size(), pos + max_box));
      int32_t* out = buf.data() + pos;
      const int n = tiles_of(r, rec[(int64_t)cam * r.N + b.order[q]], cam, tx, ty, out);
      b.ntiles[q] = n;
      pos += n;
    }
    // counted afterwards, not per Gaussian: reading back a just-written (compress-)store stalls on forwarding
    const int32_t* tl = buf.data();
    for (int64_t k = 0; k < pos; ++k) ++cnt[tl[k]];
    b.part_size[p] = pos;
  }
  int64_t total = 0;
  for (int p = 0; p < parts; ++p) total += b.part_size[p];
  b.key = r.tiles_touched;
  b.count = (int64_t)r.C * r.N;
  return total;
}

template <typename T>
void bin_and_sort(const RasterArgs<T>& r, int64_t total) {
  const StageTimer timer_("bin_and_sort");
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const int nt = threads_for(r.num_threads);
  BinState& b = bin_state;
  if (b.key != r.tiles_touched || b.count != (int64_t)r.C * r.N) count_tiles<T>(r);
  const int parts = b.parts;
  // each part's count of a tile becomes its write cursor there: parts in order, so each list stays in order
  int32_t* const hist = b.hist.data();
  int64_t run = 0;
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    r.tile_ranges[2 * tile] = (int32_t)run;
    for (int p = 0; p < parts; ++p) {
      int32_t& c = hist[(size_t)p * num_tiles + tile];
      const int32_t n = c;
      c = (int32_t)run;
      run += n;
    }
    r.tile_ranges[2 * tile + 1] = (int32_t)run;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int p = 0; p < parts; ++p) {
    int32_t* cnt = hist + (size_t)p * num_tiles;
    const int32_t* tl = b.part_tiles[p].data();
    for (int64_t q = b.part_lo[p], hi = b.part_lo[p + 1]; q < hi; ++q) {
      const int32_t g = b.order[q];
      for (int k = 0, n = b.ntiles[q]; k < n; ++k) r.isect_ids[cnt[tl[k]]++] = g;
      tl += b.ntiles[q];
    }
  }
  b.key = nullptr;  // used once
  (void)total;
}

namespace {
// Median / Count select the loop that also tracks the median depth / the number of Gaussians composited:
// chosen once per call, so the plain loop carries no trace of either.
template <typename T, bool Median, bool Count>
void rasterize_forward_impl(const RasterArgs<T>& r) {
  const int W = r.width, H = r.height;
  const int tx = tiles_along(W), ty = tiles_along(H);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const T t_min = T(kTransmittanceMin);
  using V = LanesT<T>;
  const V iota = lane_iota<T>();
  // thread_local: concurrent renders never share it; the workers see it only through this pointer (a
  // thread_local named inside the parallel region would be each worker's own, empty, copy)
  thread_local std::vector<PackedT<T>> packed_store;
  pack_gaussians(r, packed_store);
  const PackedT<T>* const packed = packed_store.data();
  thread_local std::vector<int32_t> order_store;
  tiles_by_cost(r.tile_ranges, num_tiles, order_store);
  const int32_t* const order = order_store.data();
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(r.num_threads))
  for (int64_t q = 0; q < num_tiles; ++q) {
    const FlushDenormals ftz_;  // the pixel loops' exp has no clamp (pixel_exp)
    const int64_t tile = order[q];
    const int cam = (int)(tile / ((int64_t)tx * ty));
    const int tl = (int)(tile - (int64_t)cam * tx * ty);
    const int x0 = (tl % tx) * kTS, y0 = (tl / tx) * kTS;
    const int32_t s = r.tile_ranges[2 * tile], n = r.tile_ranges[2 * tile + 1] - s;
    const int32_t* ids = r.isect_ids + s;
    int16_t* const rows_out = r.isect_rows ? r.isect_rows + s : nullptr;
    const PackedT<T>* base = packed + (int64_t)cam * r.N;
    const T bg0 = r.background[3 * cam], bg1 = r.background[3 * cam + 1], bg2 = r.background[3 * cam + 2];
    const int xe = std::min(x0 + kTS, W);
    const T x_lo = T(x0) + T(0.5), x_hi = T(xe) - T(0.5);
    const V px = iota + (T(x0) + T(0.5));
    const int rows = std::min(kTS, H - y0);
    const V py_rows = iota + (T(y0) + T(0.5));
    // Gaussian-outer, row-inner: each Gaussian (in depth order) visits only the rows its support reaches
    // and that still hold a live pixel; the 16 rows' state stays in L1. A pixel that stops (its
    // transmittance would fall below T_MIN) parks its final transmittance in `stopped` and gets trans = 0:
    // then w = a * trans is 0 for it and trans * (1 - a) keeps it 0, so the common path needs no live mask
    // (fewer ops and no extra state on the row's dependency chain) and only a stop takes the rare branch.
    // A row leaves `alive` once every pixel in it has stopped, the tile ends once every row has.
    V trans[kTS], a0[kTS], a1[kTS], a2[kTS], ad[kTS], last[kTS], cnt[kTS], stopped[kTS];
    V med[Median ? kTS : 1];
    // lanes past the image edge start stopped (trans 0) so they never hold a row open
    const V inside = lane_select<V>(px < T(W), V{} + T(1), V{});
    for (int row = 0; row < kTS; ++row) {
      trans[row] = inside;
      a0[row] = a1[row] = a2[row] = ad[row] = last[row] = cnt[row] = stopped[row] = V{};
      if constexpr (Median) med[row] = V{};
    }
    uint32_t alive = (1u << rows) - 1;
    // Gaussians in batches of kBatch: first their row masks, flattened into one list of (Gaussian, row)
    // visits, then one loop over the visits. The per-Gaussian row loop it replaces ended on a
    // data-dependent branch (as did "no row here"), a mispredict per Gaussian. A row that dies inside a
    // batch is still visited by the batch's later Gaussians: its pixels have trans 0, so nothing changes.
    // rows_out gets, per Gaussian, the rows where it drew a pixel (w > 0 on some lane), not the rows it
    // visited: the backward's active lanes (alpha > 0 and j < last) are exactly the lanes with w > 0 here
    // (j < last means the pixel had not stopped at j, so trans >= T_MIN and w = alpha trans > 0; w > 0
    // means j + 1 <= last), and a visit with no active lane changes nothing in the backward (its sums get
    // +0, its state stays), so it skips those visits (about 1 in 9 at 100k/400²) and Gaussians with none.
    constexpr int kBatch = 16;
    int32_t visits[kBatch * kTS + kTS];  // (j - j0) << 4 | row; kTS spare: the compressing store writes 16
    const T* recs[kBatch];
    T jn_of[kBatch];  // j + 1 (the 1-based index that `last` records)
    V dx_of[kBatch], hx_of[kBatch];  // mean x - pixel x per lane, and row_hx of it
    V cbdy_of[kBatch], hccdy2_of[kBatch];  // row_terms of each row (rows as lanes)
    uint32_t drawn[kBatch];  // rows where the Gaussian drew a pixel, for rows_out
    for (int j = 0; j < std::min(n, kBatch); ++j) __builtin_prefetch(base[ids[j]].v);
    for (int j0 = 0; j0 < n && alive; j0 += kBatch) {
      const int nb = std::min(kBatch, n - j0);
      int nv = 0;
      for (int b = 0; b < nb; ++b) {
        const int j = j0 + b;
        // records are scattered in memory: ask for the next batch's while this one is composited
        if (j + kBatch < n) __builtin_prefetch(base[ids[j + kBatch]].v);
        const T* p = base[ids[j]].v;
        const uint32_t bits = rows_meeting_support<T>(p, py_rows, x_lo, x_hi) & alive;
        drawn[b] = 0;
        recs[b] = p;
        jn_of[b] = T(j + 1);
        dx_of[b] = p[0] - px;
        hx_of[b] = row_hx<T, V>(dx_of[b], p[2]);
        row_terms<T, V>(p[1] - py_rows, p[3], p[4], cbdy_of[b], hccdy2_of[b]);
        nv += append_visits(visits + nv, bits, b);
      }
      for (int i = 0; i < nv; ++i) {
        const int b = visits[i] >> 4, row = visits[i] & (kTS - 1);
        const T* p = recs[b];
        V a = blend_alpha_row<T, V>(dx_of[b], hx_of[b], cbdy_of[b][row], hccdy2_of[b][row], p[5]);
        const V tr = trans[row];
        V w = a * tr;  // 0 on stopped lanes (tr = 0) and where the Gaussian does not contribute (a = 0)
        V nt = tr * (T(1) - a);  // = tr exactly where a = 0
        // lanes that would stop here: still running (w > 0; tr >= T_MIN and a >= ALPHA_MIN keep w normal)
        uint32_t kw = positive_bits(w);  // w > 0 after the stop below: the gates of `drawn`, `last`, `cnt`
        if (const uint32_t ks = stop_bits_within(kw, nt, t_min)) {
          const auto stop = (nt < t_min) & (w > T(0));
          stopped[row] = lane_select<V>(stop, tr, stopped[row]);
          a = lane_select<V>(stop, V{}, a);
          w = lane_select<V>(stop, V{}, w);
          nt = lane_select<V>(stop, V{}, nt);
          kw &= ~ks;
          if (mask_bits(nt > T(0)) == 0) alive &= ~(1u << row);
        }
        a0[row] += w * p[6];
        a1[row] += w * p[7];
        a2[row] += w * p[8];
        ad[row] += w * p[9];
        if constexpr (Median) {
          // T only falls, so "T > 1/2 before and <= 1/2 after" picks one Gaussian per pixel. A skipped lane
          // (a = 0) has nt = tr and fails the test; a stopping one has tr < t_min / (1 - ALPHA_MAX), far
          // below 1/2, and a stopped one tr = 0, so both fail too.
          med[row] = lane_select<V>(nt <= T(kMedianTransmittance),
                                    lane_select<V>(tr > T(kMedianTransmittance), V{} + p[9], med[row]), med[row]);
        }
        trans[row] = nt;
        drawn[b] |= (uint32_t)(kw != 0) << row;
        last[row] = select_positive(kw, w, V{} + jn_of[b], last[row]);
        if constexpr (Count) cnt[row] += select_positive(kw, w, V{} + T(1), V{});
      }
      if (rows_out)
        for (int b = 0; b < nb; ++b) rows_out[j0 + b] = (int16_t)drawn[b];
    }
    for (int row = 0; row < rows; ++row)  // the stopped pixels' transmittance back in place
      trans[row] = lane_select<V>(trans[row] > T(0), trans[row], stopped[row]);
    for (int row = 0; row < rows; ++row) {
      const int py_i = y0 + row;
      for (int k = 0; k < xe - x0; ++k) {
        const int64_t pix = ((int64_t)cam * H + py_i) * W + x0 + k;
        r.rgb[3 * pix] = a0[row][k] + trans[row][k] * bg0;
        r.rgb[3 * pix + 1] = a1[row][k] + trans[row][k] * bg1;
        r.rgb[3 * pix + 2] = a2[row][k] + trans[row][k] * bg2;
        r.alpha[pix] = T(1) - trans[row][k];
        r.acc_depth[pix] = ad[row][k];
        r.final_trans[pix] = trans[row][k];
        r.last[pix] = (int32_t)last[row][k];
        if constexpr (Count) r.n_contrib[pix] = (int32_t)cnt[row][k];
        if constexpr (Median) r.median_depth[pix] = med[row][k];
      }
    }
  }
}
}  // namespace

template <typename T>
void rasterize_forward(const RasterArgs<T>& r) {
  const StageTimer timer_("rasterize_forward");
  if (r.median_depth)
    r.n_contrib ? rasterize_forward_impl<T, true, true>(r) : rasterize_forward_impl<T, true, false>(r);
  else
    r.n_contrib ? rasterize_forward_impl<T, false, true>(r) : rasterize_forward_impl<T, false, false>(r);
}

template <typename T>
void rasterize_backward(const RasterArgs<T>& r, const RasterGradArgs<T>& gr) {
  const StageTimer timer_("rasterize_backward");
  const int W = r.width, H = r.height;
  const int tx = tiles_along(W), ty = tiles_along(H);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const int64_t CN = (int64_t)r.C * r.N;
  const int nt = threads_for(r.num_threads);
  constexpr int NG = 10;  // mx, my, ca, cb, cc, opacity, r, g, b, depth
  using V = LanesT<T>;
  const V iota = lane_iota<T>();
  // per-thread gradient sums; each thread zeroes its own part (no serial zero-fill of the whole buffer)
  // kept across calls (thread_local, reached by the workers through the pointer): no fresh pages to fault in
  thread_local std::vector<T> buffer_store;
  if (buffer_store.size() < (size_t)nt * CN * NG) buffer_store.resize((size_t)nt * CN * NG);
  T* const buffers = buffer_store.data();
  // thread_local: concurrent renders never share it; the workers see it only through this pointer (a
  // thread_local named inside the parallel region would be each worker's own, empty, copy)
  thread_local std::vector<PackedT<T>> packed_store;
  pack_gaussians(r, packed_store);
  const PackedT<T>* const packed = packed_store.data();
  thread_local std::vector<int32_t> order_store;
  tiles_by_cost(r.tile_ranges, num_tiles, order_store);
  const int32_t* const order = order_store.data();
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    T* mine = buffers + (size_t)t * CN * NG;
    memset(mine, 0, sizeof(T) * CN * NG);
#pragma omp for schedule(dynamic, 1)
    for (int64_t q = 0; q < num_tiles; ++q) {
      const FlushDenormals ftz_;  // the pixel loops' exp has no clamp (pixel_exp)
      const int64_t tile = order[q];
      const int cam = (int)(tile / ((int64_t)tx * ty));
      const int tl = (int)(tile - (int64_t)cam * tx * ty);
      const int x0 = (tl % tx) * kTS, y0 = (tl / tx) * kTS;
      const int32_t s = r.tile_ranges[2 * tile], n = r.tile_ranges[2 * tile + 1] - s;
      if (n == 0) continue;
      const T bg0 = r.background[3 * cam], bg1 = r.background[3 * cam + 1], bg2 = r.background[3 * cam + 2];
      const int xe = std::min(x0 + kTS, W);
      const T x_lo = T(x0) + T(0.5), x_hi = T(xe) - T(0.5);
      const V px = iota + (T(x0) + T(0.5));
      // Gaussian-outer, row-inner: the 16 rows' pixel state lives in L1-resident arrays, so the per-Gaussian
      // gradient sums stay vectors across rows and need one horizontal reduction per Gaussian, not per row.
      const int rows = std::min(kTS, H - y0);
      V trans[kTS], accg[kTS], gR[kTS], gG[kTS], gB[kTS], gD[kTS], fin[kTS], last[kTS];
      int jmax_row[kTS];
      int jmax = 0;
      for (int row = 0; row < rows; ++row) {
        trans[row] = V{} + T(1);
        accg[row] = gR[row] = gG[row] = gB[row] = gD[row] = fin[row] = last[row] = V{};
        jmax_row[row] = 0;
        for (int k = 0; k < xe - x0; ++k) {
          const int64_t pix = ((int64_t)cam * H + y0 + row) * W + x0 + k;
          trans[row][k] = r.final_trans[pix];
          last[row][k] = T(r.last[pix]);
          gR[row][k] = gr.g_rgb[3 * pix];
          gG[row][k] = gr.g_rgb[3 * pix + 1];
          gB[row][k] = gr.g_rgb[3 * pix + 2];
          gD[row][k] = gr.g_acc_depth ? gr.g_acc_depth[pix] : T(0);  // null: no depth/alpha gradient (zeros)
          fin[row][k] = trans[row][k] * ((gr.g_alpha ? gr.g_alpha[pix] : T(0)) - (bg0 * gR[row][k] + bg1 * gG[row][k] + bg2 * gB[row][k]));
          jmax_row[row] = std::max(jmax_row[row], (int)r.last[pix]);
        }
        jmax = std::max(jmax, jmax_row[row]);
      }
      // only Gaussians in front of some pixel's last contributor get gradients
      if (jmax == 0) continue;
      const int32_t* ids = r.isect_ids + s;
      const int16_t* const rows_in = r.isect_rows ? r.isect_rows + s : nullptr;
      const PackedT<T>* base = packed + (int64_t)cam * r.N;
      T* const mine_cam = mine + (int64_t)cam * r.N * NG;
      const V py_rows = iota + (T(y0) + T(0.5));
      const uint32_t row_mask = (1u << rows) - 1;
      V jmax_v = V{};
      for (int row = 0; row < rows; ++row) jmax_v[row] = T(jmax_row[row]);
      // Records and gradient sums are scattered in memory: ask for both a few Gaussians early. The sums
      // (NG floats, may straddle two lines) were the backward's costliest miss, taken at the final +=.
      constexpr int kAhead = 8;
      auto prefetch = [&](int jj) {
        const int32_t id = ids[jj];
        __builtin_prefetch(base[id].v);
        const T* a = mine_cam + (int64_t)id * NG;
        __builtin_prefetch(a, 1);
        __builtin_prefetch(a + NG - 1, 1);
      };
      for (int j = jmax - 1; j >= std::max(0, jmax - kAhead); --j) prefetch(j);
      for (int j = jmax - 1; j >= 0; --j) {
        if (j >= kAhead) prefetch(j - kAhead);
        const T* p = base[ids[j]].v;
        // rows where Gaussian j has an active lane: the forward's record of the rows where it drew a pixel
        // (it wrote every j below jmax: it composited at least that far), else the rows its support may reach
        // that have a contributor at or behind j
        const uint32_t sup = rows_in ? (uint32_t)(uint16_t)rows_in[j] : rows_meeting_support<T>(p, py_rows, x_lo, x_hi);
        uint32_t bits = sup & mask_bits(T(j) < jmax_v) & row_mask;
        if (bits == 0) continue;
        const T mx = p[0], my = p[1], ca = p[2], cb = p[3], cc = p[4], op = p[5], c0 = p[6], c1 = p[7], c2 = p[8],
                zz = p[9];
        const V dx = mx - px;
        const V hx = row_hx<T, V>(dx, ca);
        // the rows' dy terms for all 16 rows at once (rows as lanes), read back per row as scalars
        const V dy = my - py_rows;
        const V dy2 = dy * dy;
        V cbdy, hccdy2;
        row_terms<T, V>(dy, cb, cc, cbdy, hccdy2);
        RowGradSums<V> S{};
        while (bits) {
          const int row = __builtin_ctz(bits);
          bits &= bits - 1;
          blend_backward_row<T, V>(T(j), last[row], dx, hx, dy[row], dy2[row], cbdy[row], hccdy2[row], op, c0, c1, c2,
                                   zz, gR[row], gG[row], gB[row], gD[row], fin[row], trans[row], accg[row], S);
        }
        V s_mx, s_my, s_ca, s_cb, s_cc;
        blend_row_grads<T, V>(S, dx, ca, cb, cc, op, s_mx, s_my, s_ca, s_cb, s_cc);
        // the ten lane sums at once (lane q of `sums` is gradient q)
        const V sums = lane_sums10<V>(s_mx, s_my, s_ca, s_cb, s_cc, S.op, S.c0, S.c1, S.c2, S.z);
        // this thread's buffer: no other thread writes it, and a Gaussian appears once per tile list
        T* a = mine_cam + (int64_t)ids[j] * NG;
#if defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value) {
          // the ten += in one masked vector read-add-write (the same ten float additions)
          const __m512 cur = _mm512_maskz_loadu_ps((__mmask16)0x3ff, a);
          _mm512_mask_storeu_ps(a, (__mmask16)0x3ff, _mm512_add_ps(cur, (__m512)sums));
        } else
#endif
          for (int q = 0; q < NG; ++q) a[q] += sums[q];
      }
    }
    // implicit barrier of the omp for: every thread's buffer is complete
#pragma omp for schedule(static)
    for (int64_t i = 0; i < CN; ++i) {
      T v[NG];
      for (int q = 0; q < NG; ++q) v[q] = buffers[(size_t)i * NG + q];
      for (int th = 1; th < nt; ++th)
        for (int q = 0; q < NG; ++q) v[q] += buffers[((size_t)th * CN + i) * NG + q];
      gr.g_means2d[2 * i] = v[0];
      gr.g_means2d[2 * i + 1] = v[1];
      gr.g_conics[3 * i] = v[2];
      gr.g_conics[3 * i + 1] = v[3];
      gr.g_conics[3 * i + 2] = v[4];
      gr.g_opacities[i] = v[5];
      gr.g_colors[3 * i] = v[6];
      gr.g_colors[3 * i + 1] = v[7];
      gr.g_colors[3 * i + 2] = v[8];
      gr.g_depths[i] = v[9];
    }
  }
}

// Feature channels: a pass of their own over the colour pass's tile lists, the same loop shape and the same
// per-visit maths (blend_alpha_row on the packed records, the same stop), so every pixel's weights are the
// colour pass's bit for bit; the colour loops above carry no trace of it.
template <typename T>
void rasterize_features_forward(const RasterArgs<T>& r, const FeatureArgs<T>& f) {
  const StageTimer timer_("rasterize_features_forward");
  const int W = r.width, H = r.height, K = f.K;
  const int tx = tiles_along(W), ty = tiles_along(H);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const T t_min = T(kTransmittanceMin);
  using V = LanesT<T>;
  const V iota = lane_iota<T>();
  thread_local std::vector<PackedT<T>> packed_store;
  pack_gaussians(r, packed_store);
  const PackedT<T>* const packed = packed_store.data();
  const T* const feats = f.features;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_for(r.num_threads))
  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    const FlushDenormals ftz_;
    const int cam = (int)(tile / ((int64_t)tx * ty));
    const int tl = (int)(tile - (int64_t)cam * tx * ty);
    const int x0 = (tl % tx) * kTS, y0 = (tl / tx) * kTS;
    const int32_t s = r.tile_ranges[2 * tile], n = r.tile_ranges[2 * tile + 1] - s;
    const int32_t* ids = r.isect_ids + s;
    const PackedT<T>* base = packed + (int64_t)cam * r.N;
    const int xe = std::min(x0 + kTS, W);
    const T x_lo = T(x0) + T(0.5), x_hi = T(xe) - T(0.5);
    const V px = iota + (T(x0) + T(0.5));
    const int rows = std::min(kTS, H - y0);
    const V py_rows = iota + (T(y0) + T(0.5));
    V trans[kTS];
    V acc[kTS][kMaxFeatures];
    const V inside = lane_select<V>(px < T(W), V{} + T(1), V{});
    for (int row = 0; row < kTS; ++row) {
      trans[row] = inside;
      for (int k = 0; k < K; ++k) acc[row][k] = V{};
    }
    uint32_t alive = (1u << rows) - 1;
    for (int j = 0; j < n && alive; ++j) {
      const int32_t id = ids[j];
      const T* p = base[id].v;
      uint32_t bits = rows_meeting_support<T>(p, py_rows, x_lo, x_hi) & alive;
      if (bits == 0) continue;
      // as the colour pass: dx and hx kept in variables, the rows' dy terms as vectors read per row
      const V dx = p[0] - px;
      const V hx = row_hx<T, V>(dx, p[2]);
      V cbdy, hccdy2;
      row_terms<T, V>(p[1] - py_rows, p[3], p[4], cbdy, hccdy2);
      const T* fg = feats + (int64_t)id * K;
      while (bits) {
        const int row = __builtin_ctz(bits);
        bits &= bits - 1;
        V a = blend_alpha_row<T, V>(dx, hx, cbdy[row], hccdy2[row], p[5]);
        const V tr = trans[row];
        V w = a * tr;
        V nt = tr * (T(1) - a);
        const auto stop = (nt < t_min) & (w > T(0));
        if (mask_bits(stop)) {
          w = lane_select<V>(stop, V{}, w);
          nt = lane_select<V>(stop, V{}, nt);
          if (mask_bits(nt > T(0)) == 0) alive &= ~(1u << row);
        }
        for (int k = 0; k < K; ++k) acc[row][k] += w * fg[k];
        trans[row] = nt;
      }
    }
    for (int row = 0; row < rows; ++row) {
      for (int x = 0; x < xe - x0; ++x) {
        T* o = f.image + ((((int64_t)cam * H + y0 + row) * W + x0 + x) * K);
        for (int k = 0; k < K; ++k) o[k] = acc[row][k][x];
      }
    }
  }
}

// Backward of rasterize_features_forward: back to front from each pixel's last contributor (the colour
// pass's `last` and final transmittance: the weights are the same), blend_backward_row_features per row
// visit; per-thread sums of the screen-space gradients and per-(camera, Gaussian) feature gradients,
// added at the end (no atomics).
template <typename T>
void rasterize_features_backward(const RasterArgs<T>& r, const FeatureArgs<T>& f) {
  const StageTimer timer_("rasterize_features_backward");
  const int W = r.width, H = r.height, K = f.K;
  const int tx = tiles_along(W), ty = tiles_along(H);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const int64_t CN = (int64_t)r.C * r.N;
  const int nt = threads_for(r.num_threads);
  const int NG = 6 + K;  // mx, my, ca, cb, cc, opacity, then the K features
  using V = LanesT<T>;
  const V iota = lane_iota<T>();
  std::vector<T> buffers((size_t)nt * CN * NG);
  thread_local std::vector<PackedT<T>> packed_store;
  pack_gaussians(r, packed_store);
  const PackedT<T>* const packed = packed_store.data();
  const T* const feats = f.features;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    T* mine = buffers.data() + (size_t)t * CN * NG;
    memset(mine, 0, sizeof(T) * CN * NG);
#pragma omp for schedule(dynamic, 1)
    for (int64_t tile = 0; tile < num_tiles; ++tile) {
      const FlushDenormals ftz_;
      const int cam = (int)(tile / ((int64_t)tx * ty));
      const int tl = (int)(tile - (int64_t)cam * tx * ty);
      const int x0 = (tl % tx) * kTS, y0 = (tl / tx) * kTS;
      const int32_t s = r.tile_ranges[2 * tile], n = r.tile_ranges[2 * tile + 1] - s;
      if (n == 0) continue;
      const int xe = std::min(x0 + kTS, W);
      const T x_lo = T(x0) + T(0.5), x_hi = T(xe) - T(0.5);
      const V px = iota + (T(x0) + T(0.5));
      const int rows = std::min(kTS, H - y0);
      V trans[kTS], accg[kTS], last[kTS];
      V gF[kTS][kMaxFeatures];
      int jmax = 0;
      V jmax_v = V{};
      for (int row = 0; row < rows; ++row) {
        trans[row] = V{} + T(1);
        accg[row] = last[row] = V{};
        for (int k = 0; k < K; ++k) gF[row][k] = V{};
        int jr = 0;
        for (int x = 0; x < xe - x0; ++x) {
          const int64_t pix = ((int64_t)cam * H + y0 + row) * W + x0 + x;
          trans[row][x] = r.final_trans[pix];
          last[row][x] = T(r.last[pix]);
          for (int k = 0; k < K; ++k) gF[row][k][x] = f.g_image[pix * K + k];
          jr = std::max(jr, (int)r.last[pix]);
        }
        jmax_v[row] = T(jr);
        jmax = std::max(jmax, jr);
      }
      if (jmax == 0) continue;
      const int32_t* ids = r.isect_ids + s;
      const int16_t* const rows_in = r.isect_rows ? r.isect_rows + s : nullptr;
      const PackedT<T>* base = packed + (int64_t)cam * r.N;
      T* const mine_cam = mine + (int64_t)cam * r.N * NG;
      const V py_rows = iota + (T(y0) + T(0.5));
      const uint32_t row_mask = (1u << rows) - 1;
      for (int j = jmax - 1; j >= 0; --j) {
        const int32_t id = ids[j];
        const T* p = base[id].v;
        const uint32_t sup = rows_in ? (uint32_t)(uint16_t)rows_in[j] : rows_meeting_support<T>(p, py_rows, x_lo, x_hi);
        uint32_t bits = sup & mask_bits(T(j) < jmax_v) & row_mask;
        if (bits == 0) continue;
        const T ca = p[2], cb = p[3], cc = p[4], op = p[5];
        const V dx = p[0] - px;
        const V hx = row_hx<T, V>(dx, ca);
        const V dy = p[1] - py_rows;
        const V dy2 = dy * dy;
        V cbdy, hccdy2;
        row_terms<T, V>(dy, cb, cc, cbdy, hccdy2);
        const T* fj = feats + (int64_t)id * K;
        RowGradSums<V> S{};
        V SF[kMaxFeatures];
        for (int k = 0; k < K; ++k) SF[k] = V{};
        while (bits) {
          const int row = __builtin_ctz(bits);
          bits &= bits - 1;
          V fg = V{};
          for (int k = 0; k < K; ++k) fg += fj[k] * gF[row][k];
          const V w = blend_backward_row_features<T, V>(T(j), last[row], dx, hx, dy[row], dy2[row], cbdy[row],
                                                        hccdy2[row], op, fg, trans[row], accg[row], S);
          for (int k = 0; k < K; ++k) SF[k] += w * gF[row][k];
        }
        V s_mx, s_my, s_ca, s_cb, s_cc;
        blend_row_grads<T, V>(S, dx, ca, cb, cc, op, s_mx, s_my, s_ca, s_cb, s_cc);
        T* a = mine_cam + (int64_t)id * NG;
        a[0] += lane_sum(s_mx);
        a[1] += lane_sum(s_my);
        a[2] += lane_sum(s_ca);
        a[3] += lane_sum(s_cb);
        a[4] += lane_sum(s_cc);
        a[5] += lane_sum(S.op);
        for (int k = 0; k < K; ++k) a[6 + k] += lane_sum(SF[k]);
      }
    }
    // implicit barrier: every thread's buffer is complete
#pragma omp for schedule(static)
    for (int64_t i = 0; i < CN; ++i) {
      T v[6];
      for (int q = 0; q < 6; ++q) v[q] = buffers[(size_t)i * NG + q];
      for (int th = 1; th < nt; ++th)
        for (int q = 0; q < 6; ++q) v[q] += buffers[((size_t)th * CN + i) * NG + q];
      f.g_means2d[2 * i] = v[0];
      f.g_means2d[2 * i + 1] = v[1];
      f.g_conics[3 * i] = v[2];
      f.g_conics[3 * i + 1] = v[3];
      f.g_conics[3 * i + 2] = v[4];
      f.g_opacities[i] = v[5];
    }
#pragma omp for schedule(static)
    for (int64_t g = 0; g < r.N; ++g) {
      for (int k = 0; k < K; ++k) {
        T v = T(0);
        for (int c = 0; c < r.C; ++c)
          for (int th = 0; th < nt; ++th) v += buffers[((size_t)th * CN + (int64_t)c * r.N + g) * NG + 6 + k];
        f.g_features[g * K + k] = v;
      }
    }
  }
}

namespace {
// Backward of the projection for Gaussians [lo, hi) and camera c, SH degree D, in one loop (the double build and
// the float ranges' tails: project_backward_range); vectorised over Gaussians like project_range (for float). Culled Gaussians run the maths too (a branch would stop the vectoriser)
// and get zero through a select. First: camera 0, which assigns the outputs (no zero-fill, no read);
// later cameras add to them in the same order as the scalar code (projection terms, then the SH term).
// no-tree-sink: g++ would otherwise sink the upstream colour loads into the SH clamp's branch, and a
// conditional strided load does not vectorise.
template <typename T, int D, bool First, bool AA>
__attribute__((optimize("no-tree-sink"))) void project_backward_fused(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                            const int32_t* radii, const ProjectGradArgs<T>& g) {
  constexpr int kNB = (D + 1) * (D + 1) - 1;  // higher-order coefficients used
  const CameraT<T> cam = cam_in;
  R3D_PROJECT_BACKWARD_LOCALS(s, g, radii, c);
#pragma GCC ivdep
  for (int64_t n = lo; n < hi; ++n) {
    ProjectionT<T> P;
    project_gaussian<T, AA>(means + 3 * n, scales + 3 * n, quats + 4 * n, logits[n], cam, P);
    T gm[3] = {T(0), T(0), T(0)}, gs[3] = {T(0), T(0), T(0)}, gq[4] = {T(0), T(0), T(0), T(0)}, gl = T(0);
    // culled: the rasterizer never used it, every gradient is zero. Its colour gradient is zeroed on the way
    // in (the SH maths is finite for any input, so its outputs come out zero without a select); the
    // projection's, which may be inf/NaN for a culled Gaussian, through a select on the way out.
    const bool vis = rad[n] > 0;
    const T uc0 = u_colors[3 * n], uc1 = u_colors[3 * n + 1], uc2 = u_colors[3 * n + 2];  // unconditional loads
    const T ucol[3] = {vis ? uc0 : T(0), vis ? uc1 : T(0), vis ? uc2 : T(0)};
    project_gaussian_backward<T, false, AA>(P, cam, u_means2d + 2 * n, u_conics + 3 * n, u_depths[n], u_opac[n], gm, gs,
                                            gq, gl);
    const T v[3] = {means[3 * n] - cam.center[0], means[3 * n + 1] - cam.center[1], means[3 * n + 2] - cam.center[2]};
    T l_sh0[3] = {T(0), T(0), T(0)}, l_shN[kNB > 0 ? 3 * kNB : 1], g_v[3];
#pragma GCC unroll 48
    for (int k = 0; k < 3 * kNB; ++k) l_shN[k] = T(0);  // unrolled stores: a memset would stop the vectoriser
    sh_color_backward(D, sh0 + 3 * n, kNB > 0 ? shN + n * K * 3 : shN, K, 0, v, ucol, l_sh0, l_shN, g_v);
    for (int k = 0; k < 3; ++k) {
      const T pm = vis ? gm[k] : T(0), ps = vis ? gs[k] : T(0);
      o_means[3 * n + k] = ((First ? T(0) : o_means[3 * n + k]) + pm) + g_v[k];
      o_scales[3 * n + k] = (First ? T(0) : o_scales[3 * n + k]) + ps;
      o_sh0[3 * n + k] = (First ? T(0) : o_sh0[3 * n + k]) + l_sh0[k];
    }
    for (int k = 0; k < 4; ++k) o_quats[4 * n + k] = (First ? T(0) : o_quats[4 * n + k]) + (vis ? gq[k] : T(0));
    o_logits[n] = (First ? T(0) : o_logits[n]) + (vis ? gl : T(0));
#pragma GCC unroll 48
    for (int k = 0; k < 3 * kNB; ++k) o_shN[n * K * 3 + k] = (First ? T(0) : o_shN[n * K * 3 + k]) + l_shN[k];
  }
}

// The same maths as project_backward_fused in two loops (below); the float build's 16-lane part of each range.
template <typename T, int D, bool First, bool AA>
__attribute__((optimize("no-tree-sink"))) void project_backward_split(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                            const int32_t* radii, const ProjectGradArgs<T>& g) {
  constexpr int kNB = (D + 1) * (D + 1) - 1;  // higher-order coefficients used
  const CameraT<T> cam = cam_in;
  R3D_PROJECT_BACKWARD_LOCALS(s, g, radii, c);
  // Two loops over the range, each vectorised over Gaussians: the projection's backward, then the SH
  // backward (float only, on the part of a range that project_backward_fused runs 16 lanes wide: see
  // project_backward_range). One loop holding both kept too many vectors live (16 basis values, 45 coefficient
  // gradients, the covariance chain): a third of its time went to register spills. The means gradient is
  // summed in the same order as before, ((previous + projection term) + SH term): the first loop stores
  // the inner sum, the second adds the SH term to it.
#pragma GCC ivdep
  for (int64_t n = lo; n < hi; ++n) {
    ProjectionT<T> P;
    project_gaussian<T, AA>(means + 3 * n, scales + 3 * n, quats + 4 * n, logits[n], cam, P);
    T gm[3] = {T(0), T(0), T(0)}, gs[3] = {T(0), T(0), T(0)}, gq[4] = {T(0), T(0), T(0), T(0)}, gl = T(0);
    // culled: the rasterizer never used it, every gradient is zero; the projection's, which may be inf/NaN
    // for a culled Gaussian, through a select on the way out
    const bool vis = rad[n] > 0;
    project_gaussian_backward<T, false, AA>(P, cam, u_means2d + 2 * n, u_conics + 3 * n, u_depths[n], u_opac[n], gm, gs,
                                            gq, gl);
    for (int k = 0; k < 3; ++k) {
      const T pm = vis ? gm[k] : T(0), ps = vis ? gs[k] : T(0);
      o_means[3 * n + k] = (First ? T(0) : o_means[3 * n + k]) + pm;
      o_scales[3 * n + k] = (First ? T(0) : o_scales[3 * n + k]) + ps;
    }
    for (int k = 0; k < 4; ++k) o_quats[4 * n + k] = (First ? T(0) : o_quats[4 * n + k]) + (vis ? gq[k] : T(0));
    o_logits[n] = (First ? T(0) : o_logits[n]) + (vis ? gl : T(0));
  }
#pragma GCC ivdep
  for (int64_t n = lo; n < hi; ++n) {
    // a culled Gaussian's colour gradient is zeroed on the way in (the SH maths is finite for any input, so
    // its outputs come out zero without a select)
    const bool vis = rad[n] > 0;
    const T uc0 = u_colors[3 * n], uc1 = u_colors[3 * n + 1], uc2 = u_colors[3 * n + 2];  // unconditional loads
    const T ucol[3] = {vis ? uc0 : T(0), vis ? uc1 : T(0), vis ? uc2 : T(0)};
    const T v[3] = {means[3 * n] - cam.center[0], means[3 * n + 1] - cam.center[1], means[3 * n + 2] - cam.center[2]};
    T l_sh0[3] = {T(0), T(0), T(0)}, l_shN[kNB > 0 ? 3 * kNB : 1], g_v[3];
#pragma GCC unroll 48
    for (int k = 0; k < 3 * kNB; ++k) l_shN[k] = T(0);  // unrolled stores: a memset would stop the vectoriser
    sh_color_backward(D, sh0 + 3 * n, kNB > 0 ? shN + n * K * 3 : shN, K, 0, v, ucol, l_sh0, l_shN, g_v);
    for (int k = 0; k < 3; ++k) {
      o_means[3 * n + k] = o_means[3 * n + k] + g_v[k];
      o_sh0[3 * n + k] = (First ? T(0) : o_sh0[3 * n + k]) + l_sh0[k];
    }
#pragma GCC unroll 48
    for (int k = 0; k < 3 * kNB; ++k) o_shN[n * K * 3 + k] = (First ? T(0) : o_shN[n * K * 3 + k]) + l_shN[k];
  }
}

// float: the split loops on the longest prefix that the fused loop ran on 16 lanes, the fused loop on the rest.
// The fused loop leaves its last 1-16 Gaussians (16 * floor((n - 1) / 16) run 16 wide) to its 8-lane and scalar
// epilogues, whose rounding differs (the 8-lane and scalar expf, other contractions); giving the same Gaussians
// to the same code keeps every result bit-identical (the split loops' 16-lane code rounds as the fused loop's;
// checked against the fused build at 100k and by tests/test_render_default_fixture.py). double (the test build,
// never vectorised here) keeps the fused loop: the split SH loop vectorises for double and rounds differently.
template <typename T, int D, bool First, bool AA>
void project_backward_range(const SceneArgs<T>& s, const CameraT<T>& cam, int c, int64_t lo, int64_t hi,
                            const int32_t* radii, const ProjectGradArgs<T>& g) {
  if constexpr (std::is_same<T, float>::value) {
    const int64_t wide = hi > lo ? 16 * ((hi - lo - 1) / 16) : 0;
    if (wide > 0) project_backward_split<T, D, First, AA>(s, cam, c, lo, lo + wide, radii, g);
    if (lo + wide < hi) project_backward_fused<T, D, First, AA>(s, cam, c, lo + wide, hi, radii, g);
  } else {
    project_backward_fused<T, D, First, AA>(s, cam, c, lo, hi, radii, g);
  }
}

template <typename T, bool First>
void project_backward_dispatch(const SceneArgs<T>& s, const CameraT<T>& cam, int c, int64_t lo, int64_t hi,
                               const int32_t* radii, const ProjectGradArgs<T>& g) {
  if (s.antialiased) {
    switch (s.sh_degree) {  // literal degrees, as in project_forward
      case 0: project_backward_range<T, 0, First, true>(s, cam, c, lo, hi, radii, g); break;
      case 1: project_backward_range<T, 1, First, true>(s, cam, c, lo, hi, radii, g); break;
      case 2: project_backward_range<T, 2, First, true>(s, cam, c, lo, hi, radii, g); break;
      default: project_backward_range<T, 3, First, true>(s, cam, c, lo, hi, radii, g); break;
    }
    return;
  }
  switch (s.sh_degree) {  // literal degrees, as in project_forward
    case 0: project_backward_range<T, 0, First, false>(s, cam, c, lo, hi, radii, g); break;
    case 1: project_backward_range<T, 1, First, false>(s, cam, c, lo, hi, radii, g); break;
    case 2: project_backward_range<T, 2, First, false>(s, cam, c, lo, hi, radii, g); break;
    default: project_backward_range<T, 3, First, false>(s, cam, c, lo, hi, radii, g); break;
  }
}
}  // namespace

namespace {
// Camera gradients (ProjectGradArgs::g_camera) of Gaussians [lo, hi) in camera c, summed into acc
// (kCamGrads values): a pass of its own, run only when a camera parameter requires grad, so the
// parameter backward above is untouched. It recomputes the projection and the SH direction gradient.
template <typename T, int D, bool AA>
void camera_backward_range(const SceneArgs<T>& s, const CameraT<T>& cam, int c, int64_t lo, int64_t hi,
                           const int32_t* radii, const ProjectGradArgs<T>& g, T* acc) {
  constexpr int kNB = (D + 1) * (D + 1) - 1;
  const int64_t N = s.N;
  const int K = s.K;
  for (int64_t n = lo; n < hi; ++n) {
    const int64_t i = (int64_t)c * N + n;
    if (radii[i] <= 0) continue;  // culled: the rasterizer never used it
    ProjectionT<T> P;
    project_gaussian<T, AA>(s.means + 3 * n, s.scales + 3 * n, s.quats + 4 * n, s.opacities[n], cam, P);
    T gm[3] = {T(0), T(0), T(0)}, gs[3] = {T(0), T(0), T(0)}, gq[4] = {T(0), T(0), T(0), T(0)}, gl = T(0);
    T gc[kCamGradView + kCamGradIntr];
    project_gaussian_backward<T, true, AA>(P, cam, g.g_means2d + 2 * i, g.g_conics + 3 * i, g.g_depths[i],
                                       g.g_opacities[i], gm, gs, gq, gl, s.means + 3 * n, gc);
    const T v[3] = {s.means[3 * n] - cam.center[0], s.means[3 * n + 1] - cam.center[1], s.means[3 * n + 2] - cam.center[2]};
    T l_sh0[3] = {T(0), T(0), T(0)}, l_shN[kNB > 0 ? 3 * kNB : 1] = {}, g_v[3];
    sh_color_backward(D, s.sh0 + 3 * n, kNB > 0 ? s.shN + n * K * 3 : s.shN, K, 0, v, g.g_colors + 3 * i, l_sh0, l_shN, g_v);
    for (int k = 0; k < kCamGradView + kCamGradIntr; ++k) acc[k] += gc[k];
    // v = mean - centre
    for (int k = 0; k < 3; ++k) acc[kCamGradView + kCamGradIntr + k] -= g_v[k];
  }
}

template <typename T>
void camera_backward(const SceneArgs<T>& s, int num_threads, const int32_t* radii, const ProjectGradArgs<T>& g) {
  constexpr int64_t kChunk = 2048;
  const int64_t chunks = std::max<int64_t>(1, (s.N + kChunk - 1) / kChunk);
  // per chunk and camera partial sums, added in chunk order: deterministic for any thread count
  std::vector<T> partial((size_t)chunks * s.C * kCamGrads, T(0));
#pragma omp parallel for schedule(static) num_threads(threads_for(num_threads))
  for (int64_t q = 0; q < chunks; ++q) {
    const int64_t lo = q * kChunk, hi = std::min(s.N, lo + kChunk);
    for (int c = 0; c < s.C; ++c) {
      const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
      T* acc = partial.data() + ((size_t)q * s.C + c) * kCamGrads;
      if (s.antialiased) {
        switch (s.sh_degree) {
          case 0: camera_backward_range<T, 0, true>(s, cam, c, lo, hi, radii, g, acc); break;
          case 1: camera_backward_range<T, 1, true>(s, cam, c, lo, hi, radii, g, acc); break;
          case 2: camera_backward_range<T, 2, true>(s, cam, c, lo, hi, radii, g, acc); break;
          default: camera_backward_range<T, 3, true>(s, cam, c, lo, hi, radii, g, acc); break;
        }
      } else {
        switch (s.sh_degree) {
          case 0: camera_backward_range<T, 0, false>(s, cam, c, lo, hi, radii, g, acc); break;
          case 1: camera_backward_range<T, 1, false>(s, cam, c, lo, hi, radii, g, acc); break;
          case 2: camera_backward_range<T, 2, false>(s, cam, c, lo, hi, radii, g, acc); break;
          default: camera_backward_range<T, 3, false>(s, cam, c, lo, hi, radii, g, acc); break;
        }
      }
    }
  }
  for (int64_t k = 0; k < (int64_t)s.C * kCamGrads; ++k) {
    T v = T(0);
    for (int64_t q = 0; q < chunks; ++q) v += partial[(size_t)q * s.C * kCamGrads + k];
    g.g_camera[k] = v;
  }
}
}  // namespace

template <typename T>
void project_backward(const SceneArgs<T>& s, int num_threads, const int32_t* radii, const ProjectGradArgs<T>& g) {
  const StageTimer timer_("project_backward");
  if (g.g_camera) camera_backward(s, num_threads, radii, g);
  const int64_t N = s.N;
  const int used = (s.sh_degree + 1) * (s.sh_degree + 1) - 1;  // coefficients the loops write
  constexpr int64_t kChunk = 2048;
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  if (s.C == 0) {
#pragma omp parallel for schedule(static) num_threads(threads_for(num_threads))
    for (int64_t n = 0; n < N; ++n) {
      for (int k = 0; k < 3; ++k) g.g_means[3 * n + k] = g.g_scales[3 * n + k] = g.g_sh0[3 * n + k] = T(0);
      for (int k = 0; k < 4; ++k) g.g_quats[4 * n + k] = T(0);
      g.g_logits[n] = T(0);
      if (s.K > 0) memset(g.g_shN + n * s.K * 3, 0, sizeof(T) * s.K * 3);
    }
    return;
  }
  // chunks of Gaussians in parallel, each through every camera (a Gaussian's outputs belong to one thread)
#pragma omp parallel for schedule(static) num_threads(threads_for(num_threads))
  for (int64_t q = 0; q < chunks; ++q) {
    const int64_t lo = q * kChunk, hi = std::min(N, lo + kChunk);
    // the binding hands out uninitialised outputs; the loops write the first `used` coefficients only
    if (s.K > used)
      for (int64_t n = lo; n < hi; ++n) memset(g.g_shN + (n * s.K + used) * 3, 0, sizeof(T) * (s.K - used) * 3);
    for (int c = 0; c < s.C; ++c) {
      const CameraT<T> cam = load_camera(s.viewmats + 16 * c, s.intrinsics + 4 * c, s.centers ? s.centers + 3 * c : nullptr, s.width, s.height);
      if (c == 0)
        project_backward_dispatch<T, true>(s, cam, c, lo, hi, radii, g);
      else
        project_backward_dispatch<T, false>(s, cam, c, lo, hi, radii, g);
    }
  }
}

#define R3D_INSTANTIATE(T)                                                                                   \
  template void project_forward<T>(const SceneArgs<T>&, int, const ProjectedArgs<T>&);                      \
  template int64_t count_tiles<T>(const RasterArgs<T>&);                                                    \
  template void bin_and_sort<T>(const RasterArgs<T>&, int64_t);                                             \
  template void rasterize_forward<T>(const RasterArgs<T>&);                                                 \
  template void rasterize_backward<T>(const RasterArgs<T>&, const RasterGradArgs<T>&);                      \
  template void project_backward<T>(const SceneArgs<T>&, int, const int32_t*, const ProjectGradArgs<T>&);   \
  template void rasterize_features_forward<T>(const RasterArgs<T>&, const FeatureArgs<T>&);                 \
  template void rasterize_features_backward<T>(const RasterArgs<T>&, const FeatureArgs<T>&);
R3D_INSTANTIATE(float)
R3D_INSTANTIATE(double)
#undef R3D_INSTANTIATE

}  // namespace cpu
}  // namespace recon3d
