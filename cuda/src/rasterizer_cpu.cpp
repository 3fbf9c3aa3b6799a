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

// Bit k set where lane k has nt < t_min and w > 0 (a running pixel that stops): with AVX-512 two compares,
// the second masked by the first, and no vector mask materialised.
inline uint32_t stop_bits(f32x16 nt, float t_min, f32x16 w) {
#if defined(__AVX512F__)
  const __mmask16 lo = _mm512_cmp_ps_mask((__m512)nt, _mm512_set1_ps(t_min), _CMP_LT_OQ);
  return (uint32_t)_mm512_mask_cmp_ps_mask(lo, (__m512)w, _mm512_setzero_ps(), _CMP_GT_OQ);
#else
  return mask_bits(nt < t_min) & mask_bits(w > 0.0f);
#endif
}
inline uint32_t stop_bits(f64x16 nt, double t_min, f64x16 w) { return mask_bits((nt < t_min) & (w > 0.0)); }

template <typename V>
inline V lane_sqrt(V v) {
  for (int k = 0; k < 16; ++k) v[k] = r_sqrt(v[k]);  // vectorised (sqrtps) under -fno-math-errno
  return v;
}

// support_meets_row (blend.h) for all 16 rows of a tile at once (lanes = rows, py = their centres), with
// 1/ca at hand instead of a division: bit k set where row k may hold a pixel of the Gaussian's support.
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

namespace {
// Projection of Gaussians [lo, hi) into camera c with SH degree D. For float g++ vectorises the loop: 16
// Gaussians per AVX-512 vector (8 with AVX2), expf/logf through glibc's vector variants (declared above),
// every branch of the shared maths a select. For double (the test build) no vector exp is declared, so the
// loop stays scalar. ivdep, not `omp simd`: the latter privatises the ProjectionT struct into an array
// before inlining, which stops the vectoriser.
template <typename T, int D>
void project_range(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                   const ProjectedArgs<T>& out) {
  const CameraT<T> cam = cam_in;  // a local copy: its fields become loop invariants
  // every pointer in a local: loads through the argument structs inside the loop would not vectorise
  const int64_t N = s.N;
  const int K = s.K;
  const T* __restrict means = s.means;
  const T* __restrict scales = s.scales;
  const T* __restrict quats = s.quats;
  const T* __restrict logits = s.opacities;
  const T* __restrict sh0 = s.sh0;
  const T* __restrict shN = s.shN;
  T* __restrict o_means2d = out.means2d + (int64_t)c * N * 2;
  T* __restrict o_conics = out.conics + (int64_t)c * N * 3;
  T* __restrict o_colors = out.colors + (int64_t)c * N * 3;
  T* __restrict o_opac = out.opacities + (int64_t)c * N;
  T* __restrict o_depths = out.depths + (int64_t)c * N;
  int32_t* __restrict o_radii = out.radii + (int64_t)c * N;
  T* __restrict o_ext = out.extents + (int64_t)c * N * 2;
#pragma GCC ivdep
  for (int64_t g = lo; g < hi; ++g) {
    ProjectionT<T> P;
    project_gaussian(means + 3 * g, scales + 3 * g, quats + 4 * g, logits[g], cam, P);
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
      switch (s.sh_degree) {
        case 0: project_range<T, 0>(s, cam, c, lo, hi, out); break;
        case 1: project_range<T, 1>(s, cam, c, lo, hi, out); break;
        case 2: project_range<T, 2>(s, cam, c, lo, hi, out); break;
        default: project_range<T, 3>(s, cam, c, lo, hi, out); break;
      }
    }
  }
}

namespace {
// Visible (camera, Gaussian) indices c*N+g (radius > 0) ordered by camera, then depth, then index. Filling
// the tile lists in this order (a stable counting sort by tile) leaves every list depth-sorted: no per-tile
// sort. It reads radii, not tiles_touched, so count_tiles can run it on one thread while the others count.
template <typename T>
void visible_in_depth_order(const RasterArgs<T>& r, std::vector<int64_t>& order) {
  order.clear();
  for (int64_t i = 0; i < (int64_t)r.C * r.N; ++i)
    if (r.radii[i] > 0) order.push_back(i);
  // float64 (the test build): exact comparison sort on (camera, depth, index)
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    const int64_t ca = a / r.N, cb = b / r.N;
    if (ca != cb) return ca < cb;
    if (r.depths[a] != r.depths[b]) return r.depths[a] < r.depths[b];
    return a < b;
  });
}

template <>
void visible_in_depth_order<float>(const RasterArgs<float>& r, std::vector<int64_t>& order) {
  if (r.C > 65535) {  // the key below holds 16 bits of camera index
    std::vector<int64_t> tmp;
    order.clear();
    for (int64_t i = 0; i < (int64_t)r.C * r.N; ++i)
      if (r.radii[i] > 0) order.push_back(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return a / r.N != b / r.N ? a / r.N < b / r.N : r.depths[a] < r.depths[b];
    });
    return;
  }
  // LSD radix sort (stable: ties keep index order) of keys camera (16 bits) | depth bits (32 bits; positive
  // floats order like their bit patterns), 16 bits per pass, carrying the index along.
  std::vector<uint64_t> keys, keys_tmp;
  std::vector<int64_t> tmp;
  order.clear();
  for (int64_t i = 0; i < (int64_t)r.C * r.N; ++i) {
    if (r.radii[i] <= 0) continue;
    uint32_t bits;
    memcpy(&bits, &r.depths[i], 4);
    keys.push_back(((uint64_t)(r.C == 1 ? 0 : i / r.N) << 32) | bits);
    order.push_back(i);
  }
  keys_tmp.resize(keys.size());
  tmp.resize(keys.size());
  // 11-bit digits keep the histogram in L1 and the scatter to 2048 streams; a 4th pass sorts cameras
  const int shifts[4] = {0, 11, 22, 32};
  const int widths[4] = {11, 11, 10, 16};
  const int passes = r.C > 1 ? 4 : 3;
  std::vector<uint32_t> hist(1 << 16);
  for (int pass = 0; pass < passes; ++pass) {
    const int shift = shifts[pass];
    const uint64_t mask = (1ull << widths[pass]) - 1;
    std::fill(hist.begin(), hist.begin() + (mask + 1), 0u);
    for (uint64_t k : keys) ++hist[(k >> shift) & mask];
    uint32_t run = 0;
    for (uint64_t b = 0; b <= mask; ++b) {
      const uint32_t c = hist[b];
      hist[b] = run;
      run += c;
    }
    for (size_t k = 0; k < keys.size(); ++k) {
      const uint32_t dst = hist[(keys[k] >> shift) & mask]++;
      keys_tmp[dst] = keys[k];
      tmp[dst] = order[k];
    }
    keys.swap(keys_tmp);
    order.swap(tmp);
  }
}
}  // namespace

namespace {
// The tiles each (camera, Gaussian) touches, found once by count_tiles and read back by bin_and_sort (the
// binding calls the two back to back on one thread): tiles[off[i] .. off[i] + tiles_touched[i]) are
// global tile indices cam * tiles + y * tiles_x + x. thread_local, so concurrent renders never share it.
struct TileCache {
  const int32_t* key = nullptr;  // r.tiles_touched of the call that filled it
  int64_t count = 0;
  std::vector<int32_t> tiles;
  std::vector<int64_t> off;
  std::vector<int64_t> start;                  // chunk q's tiles begin at start[q]
  std::vector<std::vector<int32_t>> chunk_tiles;  // per chunk of Gaussians, kept across calls
  std::vector<int64_t> order;                  // visible_in_depth_order, found while counting
  bool has_order = false;
};
thread_local TileCache tile_cache;

template <typename T>
int tiles_of(const RasterArgs<T>& r, int64_t i, int tx, int ty, int32_t* out) {
  if (r.radii[i] <= 0) return 0;
  const int64_t cam = r.C == 1 ? 0 : i / r.N;  // a 64-bit division per Gaussian is not free
  int x0, x1, y0, y1;
  tile_rect(r.means2d[2 * i], r.means2d[2 * i + 1], r.extents[2 * i], r.extents[2 * i + 1], tx, ty, x0, x1, y0, y1);
  const int32_t base = (int32_t)(cam * tx * ty);
  int n = 0;
  // small boxes are kept whole: the exact test costs more than it saves there
  if ((x1 - x0) * (y1 - y0) <= 2) {
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) out[n++] = base + y * tx + x;
    return n;
  }
  const T mx = r.means2d[2 * i], my = r.means2d[2 * i + 1], ca = r.conics[3 * i], cb = r.conics[3 * i + 1],
          cc = r.conics[3 * i + 2], r2 = support_r2(r.opacities[i]), ica = T(1) / ca, icc = T(1) / cc;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) {
      out[n] = base + y * tx + x;
      n += tile_touches(mx, my, ca, cb, cc, ica, icc, r2, x, y, r.width, r.height) ? 1 : 0;
    }
  return n;
}
}  // namespace

template <typename T>
int64_t count_tiles(const RasterArgs<T>& r) {
  const StageTimer timer_("count_tiles");
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  const int64_t total_g = (int64_t)r.C * r.N;
  const int nt = threads_for(r.num_threads);
  TileCache& tc = tile_cache;
  tc.key = nullptr;
  tc.has_order = false;
  if (tc.off.size() < (size_t)total_g) tc.off.resize(total_g);
  // chunks of Gaussians handed out dynamically, each filling its own list (concatenated in chunk order
  // below), so one thread can sort the visible Gaussians by depth (bin_and_sort's serial step) meanwhile
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (total_g + kChunk - 1) / kChunk;
  if ((int64_t)tc.chunk_tiles.size() < chunks) tc.chunk_tiles.resize(chunks);
  tc.start.assign(chunks + 1, 0);
  int64_t* off = tc.off.data();
  const int64_t max_box = (int64_t)tx * ty;
  const bool sort_here = nt > 1;
#pragma omp parallel num_threads(nt)
  {
    if (sort_here) {
#pragma omp single nowait
      {
        visible_in_depth_order<T>(r, tc.order);
        tc.has_order = true;
      }
    }
    std::vector<int32_t> box((size_t)max_box);  // a support box can cover the whole image
#pragma omp for schedule(dynamic, 1)
    for (int64_t q = 0; q < chunks; ++q) {
      std::vector<int32_t>& loc = tc.chunk_tiles[q];
      loc.clear();
      const int64_t lo = q * kChunk, hi = std::min(total_g, lo + kChunk);
      for (int64_t i = lo; i < hi; ++i) {
        int32_t* dst = box.data();
        const int n = tiles_of(r, i, tx, ty, dst);
        off[i] = (int64_t)loc.size();
        loc.insert(loc.end(), dst, dst + n);
        r.tiles_touched[i] = n;
      }
      tc.start[q + 1] = (int64_t)loc.size();
    }
    // implicit barrier: every chunk (and the sort) is done
#pragma omp single
    {
      for (int64_t q = 0; q < chunks; ++q) tc.start[q + 1] += tc.start[q];
      if (tc.tiles.size() < (size_t)tc.start[chunks]) tc.tiles.resize(tc.start[chunks]);
    }
#pragma omp for schedule(static)
    for (int64_t q = 0; q < chunks; ++q) {
      const std::vector<int32_t>& loc = tc.chunk_tiles[q];
      if (!loc.empty()) memcpy(tc.tiles.data() + tc.start[q], loc.data(), loc.size() * sizeof(int32_t));
      const int64_t lo = q * kChunk, hi = std::min(total_g, lo + kChunk);
      for (int64_t i = lo; i < hi; ++i) off[i] += tc.start[q];
    }
  }
  tc.key = r.tiles_touched;
  tc.count = total_g;
  return tc.start[chunks];
}

template <typename T>
void bin_and_sort(const RasterArgs<T>& r, int64_t total) {
  const StageTimer timer_("bin_and_sort");
  const int tx = tiles_along(r.width), ty = tiles_along(r.height);
  const int64_t num_tiles = (int64_t)r.C * tx * ty;
  const int nt = threads_for(r.num_threads);
  if (tile_cache.key != r.tiles_touched || tile_cache.count != (int64_t)r.C * r.N) count_tiles<T>(r);
  std::vector<int64_t>& order = tile_cache.order;
  if (!tile_cache.has_order) {  // one thread: count_tiles left the sort to us
    const StageTimer sort_timer_("  depth_sort");
    visible_in_depth_order<T>(r, order);
  }
  tile_cache.has_order = false;  // used once
  const int64_t n_vis = (int64_t)order.size();
  const int32_t* tiles = tile_cache.tiles.data();
  const int64_t* off = tile_cache.off.data();
  // Per-thread histograms over a static split of the depth-ordered list keep the fill lock-free and the
  // lists depth-sorted (thread t's entries of a tile follow thread t-1's).
  std::vector<int64_t> counts((size_t)nt * num_tiles, 0);
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    const int64_t lo = n_vis * t / nth, hi = n_vis * (t + 1) / nth;
    int64_t* cnt = counts.data() + (size_t)t * num_tiles;
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t i = order[q];
      const int32_t* tl = tiles + off[i];
      for (int k = 0, n = r.tiles_touched[i]; k < n; ++k) ++cnt[tl[k]];
    }
#pragma omp barrier
#pragma omp single
    {
      int64_t run = 0;
      for (int64_t tile = 0; tile < num_tiles; ++tile) {
        r.tile_ranges[2 * tile] = (int32_t)run;
        for (int th = 0; th < nth; ++th) {
          int64_t& c = counts[(size_t)th * num_tiles + tile];
          const int64_t n = c;
          c = run;
          run += n;
        }
        r.tile_ranges[2 * tile + 1] = (int32_t)run;
      }
    }
    for (int64_t q = lo; q < hi; ++q) {
      const int64_t i = order[q];
      const int32_t g = (int32_t)(r.C == 1 ? i : i % r.N);
      const int32_t* tl = tiles + off[i];
      for (int k = 0, n = r.tiles_touched[i]; k < n; ++k) r.isect_ids[cnt[tl[k]]++] = g;
    }
  }
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
    constexpr int kAhead = 8;  // records are scattered in memory: ask for them a few Gaussians early
    for (int j = 0; j < std::min(n, kAhead); ++j) __builtin_prefetch(base[ids[j]].v);
    for (int j = 0; j < n && alive; ++j) {
      if (j + kAhead < n) __builtin_prefetch(base[ids[j + kAhead]].v);
      const T* p = base[ids[j]].v;
      uint32_t bits = rows_meeting_support<T>(p, py_rows, x_lo, x_hi) & alive;
      // a row dead here has every pixel's last contributor before j, so the backward (which also masks
      // rows by j < their last contributor) loses nothing by reading these masked bits
      if (rows_out) rows_out[j] = (int16_t)bits;
      if (bits == 0) continue;
      const T mx = p[0], my = p[1], ca = p[2], cb = p[3], cc = p[4], op = p[5], c0 = p[6], c1 = p[7], c2 = p[8],
              zz = p[9];
      const V dx = mx - px;
      const V jn = V{} + T(j + 1);
      while (bits) {
        const int row = __builtin_ctz(bits);
        bits &= bits - 1;
        const T py = T(y0 + row) + T(0.5);
        V a = blend_alpha_row<T, V>(dx, my - py, ca, cb, cc, op);
        const V tr = trans[row];
        V w = a * tr;  // 0 on stopped lanes (tr = 0) and where the Gaussian does not contribute (a = 0)
        V nt = tr * (T(1) - a);  // = tr exactly where a = 0
        // lanes that would stop here: still running (w > 0; tr >= T_MIN and a >= ALPHA_MIN keep w normal)
        if (stop_bits(nt, t_min, w)) {
          const auto stop = (nt < t_min) & (w > T(0));
          stopped[row] = lane_select<V>(stop, tr, stopped[row]);
          a = lane_select<V>(stop, V{}, a);
          w = lane_select<V>(stop, V{}, w);
          nt = lane_select<V>(stop, V{}, nt);
          if (mask_bits(nt > T(0)) == 0) alive &= ~(1u << row);
        }
        a0[row] += w * c0;
        a1[row] += w * c1;
        a2[row] += w * c2;
        ad[row] += w * zz;
        if constexpr (Median) {
          // T only falls, so "T > 1/2 before and <= 1/2 after" picks one Gaussian per pixel. A skipped lane
          // (a = 0) has nt = tr and fails the test; a stopping one has tr < t_min / (1 - ALPHA_MAX), far
          // below 1/2, and a stopped one tr = 0, so both fail too.
          med[row] = lane_select<V>(nt <= T(kMedianTransmittance),
                                    lane_select<V>(tr > T(kMedianTransmittance), V{} + zz, med[row]), med[row]);
        }
        trans[row] = nt;
        last[row] = lane_select<V>(w > T(0), jn, last[row]);
        if constexpr (Count) cnt[row] += lane_select<V>(w > T(0), V{} + T(1), V{});
      }
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
          gD[row][k] = gr.g_acc_depth[pix];
          fin[row][k] = trans[row][k] * (gr.g_alpha[pix] - (bg0 * gR[row][k] + bg1 * gG[row][k] + bg2 * gB[row][k]));
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
        // rows that may hold a pixel of the support and have a contributor at or behind j
        // the forward's row masks cover every j below jmax (it composited at least that far)
        const uint32_t sup = rows_in ? (uint32_t)(uint16_t)rows_in[j] : rows_meeting_support<T>(p, py_rows, x_lo, x_hi);
        uint32_t bits = sup & mask_bits(T(j) < jmax_v) & row_mask;
        if (bits == 0) continue;
        const T mx = p[0], my = p[1], ca = p[2], cb = p[3], cc = p[4], op = p[5], c0 = p[6], c1 = p[7], c2 = p[8],
                zz = p[9];
        const V dx = mx - px;
        RowGradSums<V> S{};
        while (bits) {
          const int row = __builtin_ctz(bits);
          bits &= bits - 1;
          const T py = T(y0 + row) + T(0.5);
          blend_backward_row<T, V>(T(j), last[row], dx, my - py, ca, cb, cc, op, c0, c1, c2, zz, gR[row], gG[row], gB[row],
                                   gD[row], fin[row], trans[row], accg[row], S);
        }
        V s_mx, s_my, s_ca, s_cb, s_cc;
        blend_row_grads<T, V>(S, dx, ca, cb, cc, s_mx, s_my, s_ca, s_cb, s_cc);
        // the ten lane sums at once (lane q of `sums` is gradient q)
        const V sums = lane_sums10<V>(s_mx, s_my, s_ca, s_cb, s_cc, S.op, S.c0, S.c1, S.c2, S.z);
        // this thread's buffer: no other thread writes it, and a Gaussian appears once per tile list
        T* a = mine_cam + (int64_t)ids[j] * NG;
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

namespace {
// Backward of the projection for Gaussians [lo, hi) and camera c, SH degree D; vectorised over Gaussians
// like project_range (for float). Culled Gaussians run the maths too (a branch would stop the vectoriser)
// and get zero through a select. First: camera 0, which assigns the outputs (no zero-fill, no read);
// later cameras add to them in the same order as the scalar code (projection terms, then the SH term).
// no-tree-sink: g++ would otherwise sink the upstream colour loads into the SH clamp's branch, and a
// conditional strided load does not vectorise.
template <typename T, int D, bool First>
__attribute__((optimize("no-tree-sink"))) void project_backward_range(const SceneArgs<T>& s, const CameraT<T>& cam_in, int c, int64_t lo, int64_t hi,
                            const int32_t* radii, const ProjectGradArgs<T>& g) {
  constexpr int kNB = (D + 1) * (D + 1) - 1;  // higher-order coefficients used
  const CameraT<T> cam = cam_in;
  const int64_t N = s.N;
  const int K = s.K;
  const T* __restrict means = s.means;
  const T* __restrict scales = s.scales;
  const T* __restrict quats = s.quats;
  const T* __restrict logits = s.opacities;
  const T* __restrict sh0 = s.sh0;
  const T* __restrict shN = s.shN;
  const int32_t* __restrict rad = radii + (int64_t)c * N;
  const T* __restrict u_means2d = g.g_means2d + (int64_t)c * N * 2;
  const T* __restrict u_conics = g.g_conics + (int64_t)c * N * 3;
  const T* __restrict u_colors = g.g_colors + (int64_t)c * N * 3;
  const T* __restrict u_opac = g.g_opacities + (int64_t)c * N;
  const T* __restrict u_depths = g.g_depths + (int64_t)c * N;
  T* __restrict o_means = g.g_means;
  T* __restrict o_scales = g.g_scales;
  T* __restrict o_quats = g.g_quats;
  T* __restrict o_logits = g.g_logits;
  T* __restrict o_sh0 = g.g_sh0;
  T* __restrict o_shN = g.g_shN;
#pragma GCC ivdep
  for (int64_t n = lo; n < hi; ++n) {
    ProjectionT<T> P;
    project_gaussian(means + 3 * n, scales + 3 * n, quats + 4 * n, logits[n], cam, P);
    T gm[3] = {T(0), T(0), T(0)}, gs[3] = {T(0), T(0), T(0)}, gq[4] = {T(0), T(0), T(0), T(0)}, gl = T(0);
    // culled: the rasterizer never used it, every gradient is zero. Its colour gradient is zeroed on the way
    // in (the SH maths is finite for any input, so its outputs come out zero without a select); the
    // projection's, which may be inf/NaN for a culled Gaussian, through a select on the way out.
    const bool vis = rad[n] > 0;
    const T uc0 = u_colors[3 * n], uc1 = u_colors[3 * n + 1], uc2 = u_colors[3 * n + 2];  // unconditional loads
    const T ucol[3] = {vis ? uc0 : T(0), vis ? uc1 : T(0), vis ? uc2 : T(0)};
    project_gaussian_backward(P, cam, u_means2d + 2 * n, u_conics + 3 * n, u_depths[n], u_opac[n], gm, gs, gq, gl);
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

template <typename T, bool First>
void project_backward_dispatch(const SceneArgs<T>& s, const CameraT<T>& cam, int c, int64_t lo, int64_t hi,
                               const int32_t* radii, const ProjectGradArgs<T>& g) {
  switch (s.sh_degree) {  // literal degrees, as in project_forward
    case 0: project_backward_range<T, 0, First>(s, cam, c, lo, hi, radii, g); break;
    case 1: project_backward_range<T, 1, First>(s, cam, c, lo, hi, radii, g); break;
    case 2: project_backward_range<T, 2, First>(s, cam, c, lo, hi, radii, g); break;
    default: project_backward_range<T, 3, First>(s, cam, c, lo, hi, radii, g); break;
  }
}
}  // namespace

template <typename T>
void project_backward(const SceneArgs<T>& s, int num_threads, const int32_t* radii, const ProjectGradArgs<T>& g) {
  const StageTimer timer_("project_backward");
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
  template void project_backward<T>(const SceneArgs<T>&, int, const int32_t*, const ProjectGradArgs<T>&);
R3D_INSTANTIATE(float)
R3D_INSTANTIATE(double)
#undef R3D_INSTANTIATE

}  // namespace cpu
}  // namespace recon3d
