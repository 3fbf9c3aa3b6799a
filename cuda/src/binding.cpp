// The one torch binding: torch tensors -> raw pointers, dispatched to the CPU driver, or to the CUDA
// driver when built with RECON3D_WITH_CUDA and given CUDA tensors. All maths lives in the drivers.
#include <torch/extension.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "recon3d/common.h"
#include "recon3d/driver.h"
#include "recon3d/projection.h"

#ifdef RECON3D_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace {

using torch::Tensor;

void check_input(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but the scene is on ", like.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

bool on_cuda(const Tensor& t) {
#ifdef RECON3D_WITH_CUDA
  return t.is_cuda();
#else
  TORCH_CHECK(!t.is_cuda(), "recon3d kernels were built without CUDA; rebuild them on a machine with nvcc");
  return false;
#endif
}

#ifdef RECON3D_WITH_CUDA
void* current_stream() { return (void*)at::cuda::getCurrentCUDAStream().stream(); }
#define R3D_DEVICE_GUARD(t) const at::cuda::OptionalCUDAGuard device_guard(device_of(t))
#else
#define R3D_DEVICE_GUARD(t) (void)0
#endif

template <typename T>
recon3d::SceneArgs<T> scene_args(const Tensor& means, const Tensor& scales, const Tensor& quats,
                                 const Tensor& opacities, const Tensor& sh0, const Tensor& shN,
                                 const Tensor& viewmats, const Tensor& intrinsics, const Tensor& centers, int64_t width,
                                 int64_t height, int64_t sh_degree, bool antialiased) {
  for (auto* p : {&scales, &quats, &opacities, &sh0, &shN, &viewmats, &intrinsics, &centers}) check_input(*p, "input", means);
  check_input(means, "means", means);
  recon3d::SceneArgs<T> s;
  s.N = means.size(0);
  s.C = (int)viewmats.size(0);
  s.width = (int)width;
  s.height = (int)height;
  s.sh_degree = (int)sh_degree;
  s.K = (int)shN.size(1);
  TORCH_CHECK((sh_degree + 1) * (sh_degree + 1) - 1 <= s.K, "sh_degree ", sh_degree, " needs more coefficients than shN holds");
  s.means = means.data_ptr<T>();
  s.scales = scales.data_ptr<T>();
  s.quats = quats.data_ptr<T>();
  s.opacities = opacities.data_ptr<T>();
  s.sh0 = sh0.data_ptr<T>();
  s.shN = s.K > 0 ? shN.data_ptr<T>() : nullptr;
  s.viewmats = viewmats.data_ptr<T>();
  s.intrinsics = intrinsics.data_ptr<T>();
  s.centers = centers.data_ptr<T>();
  s.antialiased = antialiased;
  return s;
}

std::vector<Tensor> project_forward(Tensor means, Tensor scales, Tensor quats, Tensor opacities, Tensor sh0,
                                    Tensor shN, Tensor viewmats, Tensor intrinsics, Tensor centers, int64_t width, int64_t height,
                                    int64_t sh_degree, int64_t num_threads, bool antialiased) {
  R3D_DEVICE_GUARD(means);
  const int64_t N = means.size(0), C = viewmats.size(0);
  auto opt = means.options();
  Tensor means2d = torch::empty({C, N, 2}, opt), conics = torch::empty({C, N, 3}, opt);
  Tensor colors = torch::empty({C, N, 3}, opt), opac = torch::empty({C, N}, opt), depths = torch::empty({C, N}, opt);
  Tensor radii = torch::empty({C, N}, opt.dtype(torch::kInt32)), extents = torch::empty({C, N, 2}, opt);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    auto s = scene_args<scalar_t>(means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height,
                                  sh_degree, antialiased);
    recon3d::ProjectedArgs<scalar_t> o;
    o.means2d = means2d.data_ptr<scalar_t>();
    o.conics = conics.data_ptr<scalar_t>();
    o.colors = colors.data_ptr<scalar_t>();
    o.opacities = opac.data_ptr<scalar_t>();
    o.depths = depths.data_ptr<scalar_t>();
    o.radii = radii.data_ptr<int32_t>();
    o.extents = extents.data_ptr<scalar_t>();
    if (N == 0) return;
    if (on_cuda(means)) {
#ifdef RECON3D_WITH_CUDA
      TORCH_CHECK((std::is_same<scalar_t, float>::value), "the cuda backend renders float32 scenes only");
      if constexpr (std::is_same<scalar_t, float>::value) recon3d::gpu::project_forward<float>(s, o, current_stream());
#endif
    } else {
      recon3d::cpu::project_forward<scalar_t>(s, (int)num_threads, o);
    }
  });
  return {means2d, conics, colors, opac, depths, radii, extents};
}

std::vector<Tensor> project_backward(Tensor means, Tensor scales, Tensor quats, Tensor opacities, Tensor sh0,
                                     Tensor shN, Tensor viewmats, Tensor intrinsics, Tensor centers, int64_t width, int64_t height,
                                     int64_t sh_degree, Tensor radii, Tensor g_means2d, Tensor g_conics,
                                     Tensor g_colors, Tensor g_opac, Tensor g_depths, int64_t num_threads,
                                     bool camera_grads, bool antialiased) {
  R3D_DEVICE_GUARD(means);
  // the CPU driver zeroes each Gaussian's slots itself (one pass over memory, in parallel); CUDA accumulates
  auto alloc = [&](const Tensor& like) { return means.is_cuda() ? torch::zeros_like(like) : torch::empty_like(like); };
  Tensor g_means = alloc(means), g_scales = alloc(scales), g_quats = alloc(quats);
  Tensor g_logits = alloc(opacities), g_sh0 = alloc(sh0), g_shN = alloc(shN);
  // camera gradients only when asked (C x kCamGrads: R, t, fx fy cx cy, centre); empty otherwise
  Tensor g_camera = camera_grads ? torch::zeros({viewmats.size(0), (int64_t)recon3d::kCamGrads}, means.options())
                                 : torch::empty({0}, means.options());
  if (means.size(0) == 0) return {g_means, g_scales, g_quats, g_logits, g_sh0, g_shN, g_camera};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    auto s = scene_args<scalar_t>(means, scales, quats, opacities, sh0, shN, viewmats, intrinsics, centers, width, height,
                                  sh_degree, antialiased);
    recon3d::ProjectGradArgs<scalar_t> g;
    g.g_means2d = g_means2d.data_ptr<scalar_t>();
    g.g_conics = g_conics.data_ptr<scalar_t>();
    g.g_colors = g_colors.data_ptr<scalar_t>();
    g.g_opacities = g_opac.data_ptr<scalar_t>();
    g.g_depths = g_depths.data_ptr<scalar_t>();
    g.g_means = g_means.data_ptr<scalar_t>();
    g.g_scales = g_scales.data_ptr<scalar_t>();
    g.g_quats = g_quats.data_ptr<scalar_t>();
    g.g_logits = g_logits.data_ptr<scalar_t>();
    g.g_sh0 = g_sh0.data_ptr<scalar_t>();
    g.g_shN = s.K > 0 ? g_shN.data_ptr<scalar_t>() : nullptr;
    g.g_camera = camera_grads ? g_camera.data_ptr<scalar_t>() : nullptr;
    if (on_cuda(means)) {
#ifdef RECON3D_WITH_CUDA
      if constexpr (std::is_same<scalar_t, float>::value)
        recon3d::gpu::project_backward<float>(s, radii.data_ptr<int32_t>(), g, current_stream());
#endif
    } else {
      recon3d::cpu::project_backward<scalar_t>(s, (int)num_threads, radii.data_ptr<int32_t>(), g);
    }
  });
  return {g_means, g_scales, g_quats, g_logits, g_sh0, g_shN, g_camera};
}

template <typename T>
recon3d::RasterArgs<T> raster_args(const Tensor& means2d, const Tensor& conics, const Tensor& colors,
                                   const Tensor& opac, const Tensor& depths, const Tensor& radii,
                                   const Tensor& extents, const Tensor& background, int64_t width, int64_t height,
                                   int64_t num_threads) {
  for (auto* p : {&conics, &colors, &opac, &depths, &radii, &extents, &background}) check_input(*p, "input", means2d);
  recon3d::RasterArgs<T> r;
  r.C = (int)means2d.size(0);
  r.N = means2d.size(1);
  r.width = (int)width;
  r.height = (int)height;
  r.num_threads = (int)num_threads;
  r.means2d = means2d.data_ptr<T>();
  r.conics = conics.data_ptr<T>();
  r.colors = colors.data_ptr<T>();
  r.opacities = opac.data_ptr<T>();
  r.depths = depths.data_ptr<T>();
  r.radii = radii.data_ptr<int32_t>();
  r.extents = extents.data_ptr<T>();
  r.background = background.data_ptr<T>();
  return r;
}

std::vector<Tensor> rasterize_forward(Tensor means2d, Tensor conics, Tensor colors, Tensor opac, Tensor depths,
                                      Tensor radii, Tensor extents, Tensor background, int64_t width, int64_t height,
                                      int64_t num_threads, int64_t extras) {
  // extras: bit 0 the median depth, bit 1 the per-pixel count of Gaussians composited (both optional)
  const bool median = extras & 1, count = extras & 2;
  R3D_DEVICE_GUARD(means2d);
  const int64_t C = means2d.size(0), N = means2d.size(1);
  TORCH_CHECK(C * N < (int64_t)std::numeric_limits<int32_t>::max(), "too many (camera, Gaussian) pairs (", C * N,
              "); render fewer cameras per call");
  // the CPU binning keeps tile coordinates in 16 bits
  TORCH_CHECK(recon3d::tiles_along((int)width) <= 32767 && recon3d::tiles_along((int)height) <= 32767, "image of ",
              width, "x", height, " pixels is too large (at most ", 16 * 32767, " per side)");
  auto opt = means2d.options();
  auto iopt = opt.dtype(torch::kInt32);
  const int64_t num_tiles = C * recon3d::tiles_along((int)width) * recon3d::tiles_along((int)height);
  Tensor rgb = torch::empty({C, height, width, 3}, opt), alpha = torch::empty({C, height, width}, opt);
  Tensor acc_depth = torch::empty({C, height, width}, opt), final_trans = torch::empty({C, height, width}, opt);
  Tensor last = torch::empty({C, height, width}, iopt);
  Tensor n_contrib = count ? torch::empty({C, height, width}, iopt) : torch::empty({0}, iopt);
  // median depth only when asked (an empty placeholder otherwise: the drivers then run the plain loops)
  Tensor median_depth = median ? torch::empty({C, height, width}, opt) : torch::empty({0}, opt);
  Tensor tiles_touched = torch::empty({C, N}, iopt), tile_ranges = torch::zeros({num_tiles, 2}, iopt);
  Tensor isect_ids, isect_rows;
  std::vector<Tensor> scratch_keep;
  recon3d::ScratchFn scratch = [&](size_t bytes) -> void* {
    scratch_keep.push_back(torch::empty({(int64_t)bytes}, opt.dtype(torch::kUInt8)));
    return scratch_keep.back().data_ptr();
  };
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_forward", [&] {
    auto r = raster_args<scalar_t>(means2d, conics, colors, opac, depths, radii, extents, background, width, height,
                                   num_threads);
    r.tiles_touched = tiles_touched.data_ptr<int32_t>();
    r.tile_ranges = tile_ranges.data_ptr<int32_t>();
    r.rgb = rgb.data_ptr<scalar_t>();
    r.alpha = alpha.data_ptr<scalar_t>();
    r.acc_depth = acc_depth.data_ptr<scalar_t>();
    r.final_trans = final_trans.data_ptr<scalar_t>();
    r.last = last.data_ptr<int32_t>();
    r.n_contrib = count ? n_contrib.data_ptr<int32_t>() : nullptr;
    if (median) r.median_depth = median_depth.data_ptr<scalar_t>();
    const bool gpu = on_cuda(means2d);
    int64_t total = 0;
    if (N > 0) {
#ifdef RECON3D_WITH_CUDA
      if (gpu) {
        if constexpr (std::is_same<scalar_t, float>::value) total = recon3d::gpu::count_tiles<float>(r, scratch, current_stream());
      }
#endif
      if (!gpu) total = recon3d::cpu::count_tiles<scalar_t>(r);
    }
    TORCH_CHECK(total < (int64_t)std::numeric_limits<int32_t>::max(), "too many tile-Gaussian intersections (",
                total, "); render at a lower resolution or with fewer Gaussians");
    isect_ids = torch::empty({std::max<int64_t>(total, 1)}, iopt);
    r.isect_ids = isect_ids.data_ptr<int32_t>();
    // only the CPU driver fills the row masks (its backward reads them); a placeholder elsewhere
    isect_rows = torch::empty({gpu ? 1 : std::max<int64_t>(total, 1)}, opt.dtype(torch::kInt16));
    if (!gpu) r.isect_rows = isect_rows.data_ptr<int16_t>();
    if (gpu) {
#ifdef RECON3D_WITH_CUDA
      if constexpr (std::is_same<scalar_t, float>::value) {
        if (total > 0) recon3d::gpu::bin_and_sort<float>(r, total, scratch, current_stream());
        recon3d::gpu::rasterize_forward<float>(r, current_stream());
      }
#endif
    } else {
      if (total > 0) recon3d::cpu::bin_and_sort<scalar_t>(r, total);
      recon3d::cpu::rasterize_forward<scalar_t>(r);
    }
  });
  return {rgb, alpha, acc_depth, final_trans, last, n_contrib, isect_ids, tile_ranges, isect_rows, median_depth};
}

std::vector<Tensor> rasterize_backward(Tensor means2d, Tensor conics, Tensor colors, Tensor opac, Tensor depths,
                                       Tensor radii, Tensor extents, Tensor background, int64_t width,
                                       int64_t height, Tensor isect_ids, Tensor tile_ranges, Tensor final_trans,
                                       Tensor last, Tensor isect_rows, Tensor g_rgb, Tensor g_alpha,
                                       Tensor g_acc_depth, int64_t num_threads) {
  R3D_DEVICE_GUARD(means2d);
  // the CPU driver writes every element; the CUDA one accumulates into zeros
  auto alloc = [&](const Tensor& like) { return means2d.is_cuda() ? torch::zeros_like(like) : torch::empty_like(like); };
  Tensor g_means2d = alloc(means2d), g_conics = alloc(conics);
  Tensor g_colors = alloc(colors), g_opac = alloc(opac), g_depths = alloc(depths);
  if (means2d.size(1) == 0) return {g_means2d, g_conics, g_colors, g_opac, g_depths};
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_backward", [&] {
    auto r = raster_args<scalar_t>(means2d, conics, colors, opac, depths, radii, extents, background, width, height,
                                   num_threads);
    r.isect_ids = isect_ids.data_ptr<int32_t>();
    r.tile_ranges = tile_ranges.data_ptr<int32_t>();
    r.final_trans = final_trans.data_ptr<scalar_t>();
    r.last = last.data_ptr<int32_t>();
    // the forward's row masks, when it was the CPU driver's forward over these very intersections
    if (!on_cuda(means2d) && isect_rows.scalar_type() == torch::kInt16 && isect_rows.numel() >= isect_ids.numel())
      r.isect_rows = isect_rows.data_ptr<int16_t>();
    recon3d::RasterGradArgs<scalar_t> g;
    g.g_rgb = g_rgb.data_ptr<scalar_t>();
    // an empty g_alpha / g_acc_depth: no gradient reaches that image (the loss reads rgb only). The CPU driver
    // reads such an image as zeros from a null pointer (no image-sized zero fill per call); the CUDA one is
    // handed zeros.
    if (on_cuda(means2d)) {
      if (g_alpha.numel() == 0) g_alpha = torch::zeros_like(final_trans);
      if (g_acc_depth.numel() == 0) g_acc_depth = torch::zeros_like(final_trans);
    }
    g.g_alpha = g_alpha.numel() ? g_alpha.data_ptr<scalar_t>() : nullptr;
    g.g_acc_depth = g_acc_depth.numel() ? g_acc_depth.data_ptr<scalar_t>() : nullptr;
    g.g_means2d = g_means2d.data_ptr<scalar_t>();
    g.g_conics = g_conics.data_ptr<scalar_t>();
    g.g_colors = g_colors.data_ptr<scalar_t>();
    g.g_opacities = g_opac.data_ptr<scalar_t>();
    g.g_depths = g_depths.data_ptr<scalar_t>();
    if (on_cuda(means2d)) {
#ifdef RECON3D_WITH_CUDA
      if constexpr (std::is_same<scalar_t, float>::value) recon3d::gpu::rasterize_backward<float>(r, g, current_stream());
#endif
    } else {
      recon3d::cpu::rasterize_backward<scalar_t>(r, g);
    }
  });
  return {g_means2d, g_conics, g_colors, g_opac, g_depths};
}

// Feature channels over the lists of a rasterize_forward call (its isect_ids and tile_ranges): N x K features ->
// C x H x W x K image, composited with the colour pass's weights.
std::vector<Tensor> rasterize_features_forward(Tensor means2d, Tensor conics, Tensor colors, Tensor opac, Tensor depths,
                                               Tensor radii, Tensor extents, Tensor background, int64_t width,
                                               int64_t height, Tensor isect_ids, Tensor tile_ranges, Tensor features,
                                               int64_t num_threads) {
  R3D_DEVICE_GUARD(means2d);
  check_input(features, "features", means2d);
  const int64_t C = means2d.size(0), K = features.size(1);
  TORCH_CHECK(features.dim() == 2 && features.size(0) == means2d.size(1), "features must be N x K");
  TORCH_CHECK(K >= 1 && K <= recon3d::kMaxFeatures, "features must have 1 to ", recon3d::kMaxFeatures, " channels");
  // the CUDA kernel accumulates into zeros; the CPU driver writes every pixel
  Tensor image = means2d.is_cuda() ? torch::zeros({C, height, width, K}, means2d.options())
                                   : torch::empty({C, height, width, K}, means2d.options());
  if (means2d.size(1) == 0) return {image.zero_()};
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_features_forward", [&] {
    auto r = raster_args<scalar_t>(means2d, conics, colors, opac, depths, radii, extents, background, width, height,
                                   num_threads);
    r.isect_ids = isect_ids.data_ptr<int32_t>();
    r.tile_ranges = tile_ranges.data_ptr<int32_t>();
    recon3d::FeatureArgs<scalar_t> f;
    f.K = (int)K;
    f.features = features.data_ptr<scalar_t>();
    f.image = image.data_ptr<scalar_t>();
    if (on_cuda(means2d)) {
#ifdef RECON3D_WITH_CUDA
      if constexpr (std::is_same<scalar_t, float>::value) recon3d::gpu::rasterize_features_forward<float>(r, f, current_stream());
#endif
    } else {
      recon3d::cpu::rasterize_features_forward<scalar_t>(r, f);
    }
  });
  return {image};
}

// Backward of rasterize_features_forward: {g_means2d, g_conics, g_opacities, g_features} of the feature loss.
std::vector<Tensor> rasterize_features_backward(Tensor means2d, Tensor conics, Tensor colors, Tensor opac,
                                                Tensor depths, Tensor radii, Tensor extents, Tensor background,
                                                int64_t width, int64_t height, Tensor isect_ids, Tensor tile_ranges,
                                                Tensor final_trans, Tensor last, Tensor isect_rows, Tensor features,
                                                Tensor g_image, int64_t num_threads) {
  R3D_DEVICE_GUARD(means2d);
  auto alloc = [&](const Tensor& like) { return means2d.is_cuda() ? torch::zeros_like(like) : torch::empty_like(like); };
  Tensor g_means2d = alloc(means2d), g_conics = alloc(conics), g_opac = alloc(opac), g_features = alloc(features);
  if (means2d.size(1) == 0) return {g_means2d.zero_(), g_conics.zero_(), g_opac.zero_(), g_features.zero_()};
  AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "rasterize_features_backward", [&] {
    auto r = raster_args<scalar_t>(means2d, conics, colors, opac, depths, radii, extents, background, width, height,
                                   num_threads);
    r.isect_ids = isect_ids.data_ptr<int32_t>();
    r.tile_ranges = tile_ranges.data_ptr<int32_t>();
    r.final_trans = final_trans.data_ptr<scalar_t>();
    r.last = last.data_ptr<int32_t>();
    if (!on_cuda(means2d) && isect_rows.scalar_type() == torch::kInt16 && isect_rows.numel() >= isect_ids.numel())
      r.isect_rows = isect_rows.data_ptr<int16_t>();
    recon3d::FeatureArgs<scalar_t> f;
    f.K = (int)features.size(1);
    f.features = features.data_ptr<scalar_t>();
    f.g_image = g_image.data_ptr<scalar_t>();
    f.g_means2d = g_means2d.data_ptr<scalar_t>();
    f.g_conics = g_conics.data_ptr<scalar_t>();
    f.g_opacities = g_opac.data_ptr<scalar_t>();
    f.g_features = g_features.data_ptr<scalar_t>();
    if (on_cuda(means2d)) {
#ifdef RECON3D_WITH_CUDA
      if constexpr (std::is_same<scalar_t, float>::value) recon3d::gpu::rasterize_features_backward<float>(r, f, current_stream());
#endif
    } else {
      recon3d::cpu::rasterize_features_backward<scalar_t>(r, f);
    }
  });
  return {g_means2d, g_conics, g_opac, g_features};
}

// Expected depth acc / alpha, 0 where alpha = 0 (recon3d.render.expected_depth, the same divisions), computed
// here in one pass instead of five torch ops (where, div, clamp, comparison, zeros) and their autograd nodes.
constexpr double kAlphaFloor = 1e-10;  // expected_depth's clamp_min

Tensor expected_depth_forward(Tensor acc_depth, Tensor alpha) {
  TORCH_CHECK(acc_depth.is_contiguous() && alpha.is_contiguous() && acc_depth.sizes() == alpha.sizes(),
              "expected_depth_forward takes two contiguous tensors of one shape");
  if (acc_depth.is_cuda())
    return torch::where(alpha > 0, acc_depth / alpha.clamp_min(kAlphaFloor), torch::zeros_like(alpha));
  Tensor depth = torch::empty_like(acc_depth);
  const int64_t n = depth.numel();
  AT_DISPATCH_FLOATING_TYPES(acc_depth.scalar_type(), "expected_depth_forward", [&] {
    const scalar_t* __restrict acc = acc_depth.data_ptr<scalar_t>();
    const scalar_t* __restrict al = alpha.data_ptr<scalar_t>();
    scalar_t* __restrict out = depth.data_ptr<scalar_t>();
    const scalar_t floor_ = scalar_t(kAlphaFloor);
    // the division for every pixel, then a select (the same quotient where alpha > 0): branch-free, so the loop
    // vectorises; in parallel chunks (a scalar loop of divisions cost ~0.4 ms per 600x400 image)
    at::parallel_for(0, n, 32768, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        const scalar_t a = al[i], q = acc[i] / (a > floor_ ? a : floor_);
        out[i] = a > scalar_t(0) ? q : scalar_t(0);
      }
    });
  });
  return depth;
}

// Backward of expected_depth_forward: {g_alpha + d depth/d alpha * g_depth, d depth/d acc * g_depth}, the
// gradients autograd derives for the torch expression (clamp_min passes the gradient where alpha >= its
// floor, the division's: -g (acc / a) / a). Undefined g_alpha / g_depth (None) are zero.
std::vector<Tensor> expected_depth_backward(Tensor acc_depth, Tensor alpha, c10::optional<Tensor> g_alpha,
                                            c10::optional<Tensor> g_depth) {
  const bool has_ga = g_alpha.has_value() && g_alpha->defined(), has_gd = g_depth.has_value() && g_depth->defined();
  if (!has_gd) return {has_ga ? *g_alpha : torch::zeros_like(alpha), torch::zeros_like(acc_depth)};
  const Tensor gd = g_depth->contiguous();
  if (acc_depth.is_cuda()) {
    const Tensor a = alpha.clamp_min(kAlphaFloor), on = alpha > 0;
    Tensor g_acc = torch::where(on, gd / a, torch::zeros_like(gd));
    Tensor g_al = torch::where(on & (alpha >= kAlphaFloor), -gd * ((acc_depth / a) / a), torch::zeros_like(gd));
    return {has_ga ? *g_alpha + g_al : g_al, g_acc};
  }
  const Tensor ga = has_ga ? g_alpha->contiguous() : Tensor();
  Tensor g_acc = torch::empty_like(acc_depth), g_al = torch::empty_like(alpha);
  const int64_t n = alpha.numel();
  AT_DISPATCH_FLOATING_TYPES(acc_depth.scalar_type(), "expected_depth_backward", [&] {
    const scalar_t* __restrict acc = acc_depth.data_ptr<scalar_t>();
    const scalar_t* __restrict al = alpha.data_ptr<scalar_t>();
    const scalar_t* __restrict g = gd.data_ptr<scalar_t>();
    const scalar_t* __restrict gin = has_ga ? ga.data_ptr<scalar_t>() : nullptr;
    scalar_t* __restrict o_acc = g_acc.data_ptr<scalar_t>();
    scalar_t* __restrict o_al = g_al.data_ptr<scalar_t>();
    const scalar_t floor_ = scalar_t(kAlphaFloor);
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t a = std::max(al[i], floor_);
      const bool on = al[i] > scalar_t(0);
      o_acc[i] = on ? g[i] / a : scalar_t(0);
      const scalar_t d = on && al[i] >= floor_ ? -g[i] * ((acc[i] / a) / a) : scalar_t(0);
      o_al[i] = gin ? gin[i] + d : d;
    }
  });
  return {g_al, g_acc};
}

// The pixel loops' vector exp (common.h fast_exp, as this build's SIMD flags compile it) on a float32 CPU
// tensor, 16 lanes at a time: for its accuracy test.
Tensor fast_exp_lanes(Tensor x) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && !x.is_cuda(), "fast_exp_lanes takes a float32 CPU tensor");
  Tensor in = x.contiguous().reshape({-1});
  Tensor out = torch::empty_like(in);
  const float* src = in.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t n = in.numel();
  for (int64_t i = 0; i < n; i += 16) {
    recon3d::f32x16 v{};
    const int64_t m = std::min<int64_t>(16, n - i);
    for (int64_t k = 0; k < m; ++k) v[k] = src[i + k];
    const recon3d::f32x16 e = recon3d::fast_exp(v);
    for (int64_t k = 0; k < m; ++k) dst[i + k] = e[k];
  }
  return out.reshape(x.sizes());
}

bool built_with_cuda() {
#ifdef RECON3D_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon3d rasterizer kernels (CPU + optional CUDA)";
  // the newer flags default to off, so older callers (tests, benchmarks) keep their positional calls
  m.def("project_forward", &project_forward, py::arg("means"), py::arg("scales"), py::arg("quats"),
        py::arg("opacities"), py::arg("sh0"), py::arg("shN"), py::arg("viewmats"), py::arg("intrinsics"),
        py::arg("centers"), py::arg("width"), py::arg("height"), py::arg("sh_degree"), py::arg("num_threads"),
        py::arg("antialiased") = false);
  m.def("project_backward", &project_backward, py::arg("means"), py::arg("scales"), py::arg("quats"),
        py::arg("opacities"), py::arg("sh0"), py::arg("shN"), py::arg("viewmats"), py::arg("intrinsics"),
        py::arg("centers"), py::arg("width"), py::arg("height"), py::arg("sh_degree"), py::arg("radii"),
        py::arg("g_means2d"), py::arg("g_conics"), py::arg("g_colors"), py::arg("g_opac"), py::arg("g_depths"),
        py::arg("num_threads"), py::arg("camera_grads") = false, py::arg("antialiased") = false);
  m.def("rasterize_forward", &rasterize_forward);
  m.def("rasterize_backward", &rasterize_backward);
  m.def("rasterize_features_forward", &rasterize_features_forward);
  m.def("rasterize_features_backward", &rasterize_features_backward);
  m.def("expected_depth_forward", &expected_depth_forward);
  m.def("expected_depth_backward", &expected_depth_backward);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("fast_exp_lanes", &fast_exp_lanes);
}
