// The rasterizer's constants, written down once.
// recon3d/constants.py parses this file, so the PyTorch reference and both kernel builds share them.
// Keep each as `constexpr <type> kName = <literal>;` on one line. Real constants are double so the
// float64 CPU build (used for finite-difference checks) sees exactly the value Python parses; kernels
// cast them to their scalar type with T(kName).
#pragma once

namespace recon3d {

constexpr int kTileSize = 16;               // tiles are kTileSize x kTileSize pixels
constexpr double kAlphaMax = 0.99;          // per-Gaussian alpha is clamped to this
constexpr double kAlphaMin = 0.00392156862745098;  // 1/255: fainter contributions are skipped
constexpr double kTransmittanceMin = 0.0001;  // stop compositing a pixel below this transmittance
constexpr double kMedianTransmittance = 0.5;  // median depth: the Gaussian whose blend takes T to <= this
constexpr double kLowPass = 0.3;            // added to the 2D covariance diagonal (pixels^2)
constexpr double kNearPlane = 0.01;         // Gaussians with view-space z below this are culled
constexpr double kFarPlane = 1e10;          // and beyond this
constexpr double kFrustumClamp = 1.3;       // x/z and y/z are clamped to this multiple of the half-FOV tangent for the Jacobian
constexpr double kSH_C0 = 0.28209479177387814;

}  // namespace recon3d
