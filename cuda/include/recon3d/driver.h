// The torch-free interface of the two rasterizer drivers (CPU: rasterizer_cpu.cpp, CUDA:
// rasterizer_cuda.cu). Every pointer is a dense row-major array; C cameras, N Gaussians, H x W images.
// The steps, in order: project -> count_tiles -> bin_and_sort -> rasterize_forward, and backward:
// rasterize_backward -> project_backward. The binding (binding.cpp) allocates every array.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <functional>

namespace recon3d {

// Scratch memory for a driver step (the binding hands out torch allocations that live for the call).
using ScratchFn = std::function<void*(size_t bytes)>;

template <typename T>
struct SceneArgs {
  int64_t N = 0;
  int C = 0, width = 0, height = 0;
  int sh_degree = 0;  // degree used (<= the stored one)
  int K = 0;          // stored higher-order coefficients per channel (shN is N x K x 3)
  const T* means = nullptr;       // N x 3
  const T* scales = nullptr;      // N x 3 (log)
  const T* quats = nullptr;       // N x 4 (w, x, y, z, any norm)
  const T* opacities = nullptr;   // N (logit)
  const T* sh0 = nullptr;         // N x 1 x 3
  const T* shN = nullptr;         // N x K x 3
  const T* viewmats = nullptr;    // C x 4 x 4 world-to-camera
  const T* intrinsics = nullptr;  // C x 4: fx, fy, cx, cy
  const T* centers = nullptr;     // C x 3 camera centres in world coordinates (view directions for SH)
  bool antialiased = false;       // the anti-aliased mode (projection.h project_gaussian)
};

template <typename T>
struct ProjectedArgs {  // C x N arrays written by project_forward
  T* means2d = nullptr;   // C x N x 2
  T* conics = nullptr;    // C x N x 3
  T* colors = nullptr;    // C x N x 3
  T* opacities = nullptr; // C x N (activated)
  T* depths = nullptr;    // C x N
  int32_t* radii = nullptr;  // C x N, 0 when culled
  T* extents = nullptr;   // C x N x 2 support half-extents in pixels
};

template <typename T>
struct ProjectGradArgs {
  const T* g_means2d = nullptr;
  const T* g_conics = nullptr;
  const T* g_colors = nullptr;
  const T* g_opacities = nullptr;
  const T* g_depths = nullptr;
  // outputs, zero-initialised by the caller
  T* g_means = nullptr;
  T* g_scales = nullptr;
  T* g_quats = nullptr;
  T* g_logits = nullptr;
  T* g_sh0 = nullptr;
  T* g_shN = nullptr;
  // optional (nullptr: not computed, no pass runs): C x kCamGrads camera gradients (projection.h: R row-major,
  // t, fx, fy, cx, cy, then the camera centre's, which reaches R and t through torch), fully written
  T* g_camera = nullptr;
};

template <typename T>
struct RasterArgs {
  int64_t N = 0;
  int C = 0, width = 0, height = 0;
  int num_threads = 1;
  const T* means2d = nullptr;
  const T* conics = nullptr;
  const T* colors = nullptr;
  const T* opacities = nullptr;
  const T* depths = nullptr;
  const int32_t* radii = nullptr;
  const T* extents = nullptr;
  const T* background = nullptr;  // C x 3
  // binning: tiles_touched C x N (filled by the CUDA driver; the CPU driver keeps its own per-call state
  // and uses the pointer only to pair count_tiles with bin_and_sort); isect_ids (total) Gaussian index per
  // intersection, grouped by camera-tile and sorted by depth inside; tile_ranges C x tiles x 2 (start, end)
  int32_t* tiles_touched = nullptr;
  int32_t* isect_ids = nullptr;
  int32_t* tile_ranges = nullptr;
  // CPU only (nullptr elsewhere): per intersection, bit k set where row k of the tile met the Gaussian's
  // support while still compositing; written by the forward so the backward need not redo the row test
  int16_t* isect_rows = nullptr;
  // per-pixel outputs, C x H x W (rgb x 3)
  T* rgb = nullptr;
  T* alpha = nullptr;
  T* acc_depth = nullptr;
  T* final_trans = nullptr;
  int32_t* last = nullptr;       // 1 + index (in the tile's list) of the last Gaussian composited
  int32_t* n_contrib = nullptr;  // Gaussians composited into the pixel (optional: nullptr skips it)
  // optional (nullptr: not computed, and the blend loops are the ones without it): the view-space z of the
  // Gaussian during whose blend the transmittance first falls to <= kMedianTransmittance, 0 where it never does
  T* median_depth = nullptr;
};

template <typename T>
struct RasterGradArgs {
  const T* g_rgb = nullptr;        // C x H x W x 3
  const T* g_alpha = nullptr;      // C x H x W; the CPU driver reads null as zeros
  const T* g_acc_depth = nullptr;  // C x H x W; the CPU driver reads null as zeros
  // outputs (fully written)
  T* g_means2d = nullptr;
  T* g_conics = nullptr;
  T* g_colors = nullptr;
  T* g_opacities = nullptr;
  T* g_depths = nullptr;
};

// Feature channels (render(features=F)): composited with the colour pass's weights over its tile lists,
// in a pass of their own (the colour loops are untouched). K <= kMaxFeatures.
constexpr int kMaxFeatures = 64;
template <typename T>
struct FeatureArgs {
  int K = 0;
  const T* features = nullptr;  // N x K
  T* image = nullptr;           // forward output, C x H x W x K (fully written)
  const T* g_image = nullptr;   // backward input, C x H x W x K
  // backward outputs: the feature loss's share of the screen-space gradients (C x N x 2 / 3 / 1) and the
  // features' gradient (N x K); fully written by the CPU driver, accumulated into zeros by the CUDA one
  T* g_means2d = nullptr;
  T* g_conics = nullptr;
  T* g_opacities = nullptr;
  T* g_features = nullptr;
};

inline int tiles_along(int pixels) { return (pixels + 15) / 16; }

namespace cpu {
template <typename T> void project_forward(const SceneArgs<T>& s, int num_threads, const ProjectedArgs<T>& out);
template <typename T> int64_t count_tiles(const RasterArgs<T>& r);
template <typename T> void bin_and_sort(const RasterArgs<T>& r, int64_t total);
template <typename T> void rasterize_forward(const RasterArgs<T>& r);
template <typename T> void rasterize_backward(const RasterArgs<T>& r, const RasterGradArgs<T>& g);
template <typename T>
void project_backward(const SceneArgs<T>& s, int num_threads, const int32_t* radii, const ProjectGradArgs<T>& g);
// after rasterize_forward over the same lists (r.final_trans, r.last, r.isect_rows as it wrote them)
template <typename T> void rasterize_features_forward(const RasterArgs<T>& r, const FeatureArgs<T>& f);
template <typename T> void rasterize_features_backward(const RasterArgs<T>& r, const FeatureArgs<T>& f);
}  // namespace cpu

namespace gpu {
// Same steps on device pointers, on the given CUDA stream (a cudaStream_t passed as void*).
template <typename T> void project_forward(const SceneArgs<T>& s, const ProjectedArgs<T>& out, void* stream);
template <typename T> int64_t count_tiles(const RasterArgs<T>& r, const ScratchFn& scratch, void* stream);
template <typename T> void bin_and_sort(const RasterArgs<T>& r, int64_t total, const ScratchFn& scratch, void* stream);
template <typename T> void rasterize_forward(const RasterArgs<T>& r, void* stream);
template <typename T> void rasterize_backward(const RasterArgs<T>& r, const RasterGradArgs<T>& g, void* stream);
template <typename T>
void project_backward(const SceneArgs<T>& s, const int32_t* radii, const ProjectGradArgs<T>& g, void* stream);
template <typename T> void rasterize_features_forward(const RasterArgs<T>& r, const FeatureArgs<T>& f, void* stream);
template <typename T> void rasterize_features_backward(const RasterArgs<T>& r, const FeatureArgs<T>& f, void* stream);
}  // namespace gpu

}  // namespace recon3d
