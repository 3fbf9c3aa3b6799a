// The rasterizer's constants, written down once.
// recon3d/constants.py parses this file, so the PyTorch reference and both kernel builds share them.
// Keep each as `constexpr <type> kName = <literal>;` on one line.
#pragma once

namespace recon3d {

constexpr int kTileSize = 16;               // tiles are kTileSize x kTileSize pixels
constexpr float kAlphaMax = 0.99f;          // per-Gaussian alpha is clamped to this
constexpr float kAlphaMin = 0.00392156862745098f;  // 1/255: fainter contributions are skipped
constexpr float kTransmittanceMin = 0.0001f;  // stop compositing a pixel below this transmittance
constexpr float kLowPass = 0.3f;            // added to the 2D covariance diagonal (pixels^2)
constexpr float kNearPlane = 0.01f;         // Gaussians with view-space z below this are culled
constexpr float kFarPlane = 1e10f;          // and beyond this
constexpr float kFrustumClamp = 1.3f;       // x/z and y/z are clamped to this multiple of the half-FOV tangent for the Jacobian
constexpr float kSH_C0 = 0.28209479177387814f;

}  // namespace recon3d
