/* CPU fast paths of the training step, called from recon3d/train/cpu_ops.py through ctypes.
 *
 * 1. Fused SSIM (11-tap separable Gaussian window, valid region) and its gradient, float32 H×W×C images.
 * The same maths as recon3d.metrics.ssim_map (Wang et al. 2004): per channel, the five blurred moments
 * mx, my, E[x²], E[y²], E[xy] give S = (2·mx·my + C1)(2·sxy + C2) / ((mx² + my² + C1)(sxx + syy + C2)).
 * The gradient of mean(S) w.r.t. x is the adjoint blur of three per-pixel maps (dS/dmx, dS/dE[x²], dS/dE[xy])
 * combined as A + 2x·B + y·C: three more blurs instead of autograd's chain through every intermediate.
 * Plain C (no torch headers) so it compiles in about a second; called through ctypes, which drops the GIL.
 * Rows of every pass are split over OpenMP threads; loops run along rows so the compiler vectorises them.
 * 2. The MCMC strategy's position noise in one pass per Gaussian (a dozen tensor ops in PyTorch).
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define KW 11

/* One row of the horizontal pass for x, y, x², y², xy (restrict: lets the compiler vectorise the 5 sums). */
static void hrow(const float *restrict a, const float *restrict b, float *restrict hx, size_t stride, int Wo,
                 const float *restrict w) {
    float *restrict hy = hx + stride, *restrict hxx = hy + stride, *restrict hyy = hxx + stride,
                    *restrict hxy = hyy + stride;
    /* sums kept in registers over the 11 taps (k innermost, unrolled; the compiler vectorises over j) */
    for (int j = 0; j < Wo; ++j) {
        float sx = 0.f, sy = 0.f, sxx = 0.f, syy = 0.f, sxy = 0.f;
        for (int k = 0; k < KW; ++k) {
            const float wk = w[k], av = a[j + k], bv = b[j + k];
            sx += wk * av;
            sy += wk * bv;
            sxx += wk * (av * av);
            syy += wk * (bv * bv);
            sxy += wk * (av * bv);
        }
        hx[j] = sx;
        hy[j] = sy;
        hxx[j] = sxx;
        hyy[j] = syy;
        hxy[j] = sxy;
    }
}

/* dst[j] = Σk w[k]·src[k·stride + j]: one output row of a vertical pass, summed in registers. */
static void vrow(const float *restrict src, size_t stride, float *restrict dst, int n, const float *restrict w) {
    for (int j = 0; j < n; ++j) {
        float acc = 0.f;
        for (int k = 0; k < KW; ++k) acc += w[k] * src[(size_t)k * stride + j];
        dst[j] = acc;
    }
}

/* SSIM and its three derivative maps along one output row (s is a scratch row, summed in double after). */
static double srow(const float *restrict mx_, const float *restrict my_, const float *restrict exx,
                   const float *restrict eyy, const float *restrict exy, float c1, float c2, float gscale,
                   float *restrict s_, float *restrict dmx, float *restrict dxx, float *restrict dxy, int Wo) {
    for (int j = 0; j < Wo; ++j) {
        const float mx = mx_[j], my = my_[j];
        const float sxx = exx[j] - mx * mx, syy = eyy[j] - my * my, sxy = exy[j] - mx * my;
        const float a1 = 2.f * mx * my + c1, a2 = 2.f * sxy + c2;
        const float b1 = mx * mx + my * my + c1, b2 = sxx + syy + c2;
        const float den = b1 * b2;
        s_[j] = (a1 * a2) / den;
    }
    if (dmx) {
        for (int j = 0; j < Wo; ++j) {
            const float mx = mx_[j], my = my_[j];
            const float sxx = exx[j] - mx * mx, syy = eyy[j] - my * my, sxy = exy[j] - mx * my;
            const float a1 = 2.f * mx * my + c1, a2 = 2.f * sxy + c2;
            const float b1 = mx * mx + my * my + c1, b2 = sxx + syy + c2;
            const float den = b1 * b2, s = s_[j];
            /* dS/dmx = (dN − S·dD)/D with dN = 2my(a2 − a1), dD = 2mx(b2 − b1) (sxx, sxy depend on mx) */
            dmx[j] = (2.f * my * (a2 - a1) - s * 2.f * mx * (b2 - b1)) / den * gscale;
            dxx[j] = -s * b1 / den * gscale; /* dS/dE[x²] */
            dxy[j] = 2.f * a1 / den * gscale; /* dS/dE[xy] */
        }
    }
    double sum = 0.0;
    for (int j = 0; j < Wo; ++j) sum += s_[j];
    return sum;
}

/* Floats of workspace recon3d_image_loss needs for an H×W×C image (the caller keeps it between calls:
 * fresh megabyte buffers every step would cost page faults). */
size_t recon3d_ssim_workspace(int H, int W, int C) {
    const size_t Ho = (size_t)H - (KW - 1), Wo = (size_t)W - (KW - 1);
    return (size_t)C * (8 * (size_t)H * Wo + 3 * Ho * Wo);
}

/* The training loss L = l1_coef·Σ|x − y| + ssim_coef·mean(S) (+ constants) in one call: sums[0] = Σ S over
 * the (H−10)×(W−10) maps of every channel, sums[1] = Σ|x − y|, sums[2] = Σ(clamp(x, 0, 1) − y)² (for PSNR);
 * when grad is not NULL it receives dL/dx = ssim_coef·d mean(S)/dx + l1_coef·sign(x − y).
 * Each pass covers every channel (C×rows in one parallel loop): four thread barriers per call, not four
 * per channel, which matters when the cores are shared and a barrier waits for a descheduled thread.
 * ws holds recon3d_ssim_workspace(H, W, C) floats. */
void recon3d_image_loss(const float *x, const float *y, int H, int W, int C, const float *w, float c1, float c2,
                        float *grad, int threads, float *ws, float ssim_coef, float l1_coef, double *sums) {
    const int Ho = H - (KW - 1), Wo = W - (KW - 1);
    const size_t hwo = (size_t)H * Wo, howo = (size_t)Ho * Wo;
    const float gscale = (float)((double)ssim_coef / ((double)C * (double)howo));
    float *h = ws;                  /* per channel: horizontal pass of x, y, xx, yy, xy (H×Wo each) */
    float *d = h + 5 * hwo * C;     /* per channel: dS/dmx, dS/dE[x²], dS/dE[xy] (Ho×Wo each) */
    float *t = d + 3 * howo * C;    /* per channel: their vertical adjoint (H×Wo each) */
    /* sums per (channel, row), added up in order afterwards: the same result for any thread count (an
     * OpenMP reduction combines partial sums in whatever order threads finish) */
    double *rows = malloc(sizeof(double) * (2 * (size_t)H + (size_t)Ho) * C);
    if (!rows) {
        sums[0] = sums[1] = sums[2] = NAN;
        return;
    }
    double *rl1 = rows, *rsq = rows + (size_t)H * C, *rs = rows + 2 * (size_t)H * C;
    if (threads < 1) threads = 1;
    const int n1 = C * H, n2 = C * Ho;
    float wr[KW]; /* the window reversed, for the adjoint passes written as forward sums */
    for (int k = 0; k < KW; ++k) wr[k] = w[KW - 1 - k];
#pragma omp parallel num_threads(threads)
    {
        float *px = malloc(sizeof(float) * 2 * (size_t)W);
        float *o = malloc(sizeof(float) * 9 * (size_t)W); /* 5 vertical-pass rows, an SSIM row, 3 adjoint rows */
        float *py = px ? px + W : NULL;
        /* 1. gather one channel's row, L1/MSE sums, horizontal pass */
#pragma omp for schedule(static)
        for (int cr = 0; cr < n1; ++cr) {
            const int c = cr / H, r = cr % H;
            double l1r = 0.0, sqr = 0.0;
            if (px && o) {
                for (int j = 0; j < W; ++j) {
                    const size_t i = ((size_t)r * W + j) * C + c;
                    const float a = x[i], b = y[i];
                    const float e = a - b, ec = (a < 0.f ? 0.f : (a > 1.f ? 1.f : a)) - b;
                    px[j] = a;
                    py[j] = b;
                    l1r += e < 0.f ? -e : e;
                    sqr += (double)ec * ec;
                }
                hrow(px, py, h + 5 * hwo * c + (size_t)r * Wo, hwo, Wo, w);
            }
            rl1[cr] = l1r;
            rsq[cr] = sqr;
        }
        /* 2. vertical pass, SSIM and its derivative maps, one output row at a time */
#pragma omp for schedule(static)
        for (int ci = 0; ci < n2; ++ci) {
            const int c = ci / Ho, i = ci % Ho;
            if (!(px && o)) {
                rs[ci] = NAN;
                continue;
            }
            const float *hc = h + 5 * hwo * c;
            for (int q = 0; q < 5; ++q) vrow(hc + q * hwo + (size_t)i * Wo, Wo, o + (size_t)q * Wo, Wo, w);
            float *dmx = grad ? d + 3 * howo * c + (size_t)i * Wo : NULL;
            rs[ci] = srow(o, o + Wo, o + 2 * Wo, o + 3 * Wo, o + 4 * Wo, c1, c2, gscale, o + 5 * Wo, dmx,
                          grad ? dmx + howo : NULL, grad ? dmx + 2 * howo : NULL, Wo);
        }
        if (grad) {
            /* 3. adjoint of the vertical pass: t[r] = Σk w[k]·d[r − k] over 0 ≤ r − k < Ho */
#pragma omp for schedule(static)
            for (int cr = 0; cr < n1; ++cr) {
                const int c = cr / H, r = cr % H;
                for (int q = 0; q < 3; ++q) {
                    float *restrict dst = t + 3 * hwo * c + q * hwo + (size_t)r * Wo;
                    const float *dq = d + 3 * howo * c + q * howo;
                    if (r >= KW - 1 && r < Ho) { /* every tap inside: t[r] = Σk wr[k]·d[r − 10 + k] */
                        vrow(dq + (size_t)(r - (KW - 1)) * Wo, Wo, dst, Wo, wr);
                        continue;
                    }
                    memset(dst, 0, sizeof(float) * Wo);
                    for (int k = 0; k < KW; ++k) {
                        const int i = r - k;
                        if (i < 0 || i >= Ho) continue;
                        const float wk = w[k];
                        const float *restrict src = dq + (size_t)i * Wo;
                        for (int j = 0; j < Wo; ++j) dst[j] += wk * src[j];
                    }
                }
            }
            /* 4. adjoint of the horizontal pass, then dL/dx = A + 2x·B + y·C + l1_coef·sign(x − y) */
#pragma omp for schedule(static)
            for (int cr = 0; cr < n1; ++cr) {
                const int c = cr / H, r = cr % H;
                if (!(px && o)) continue;
                float *restrict ua = o, *restrict ub = o + W, *restrict uc = o + 2 * (size_t)W;
                const float *ta = t + 3 * hwo * c + (size_t)r * Wo, *tb = ta + hwo, *tc = tb + hwo;
                /* u[j] = Σk w[k]·t[j − k] over 0 ≤ j − k < Wo; inside, Σk wr[k]·t[j − 10 + k] in registers */
                for (int j = 0; j < W; ++j) {
                    if (j == KW - 1 && Wo > KW - 1) {
                        for (; j < Wo; ++j) {
                            float sa = 0.f, sb = 0.f, sc = 0.f;
                            for (int k = 0; k < KW; ++k) {
                                const int jj = j - (KW - 1) + k;
                                sa += wr[k] * ta[jj];
                                sb += wr[k] * tb[jj];
                                sc += wr[k] * tc[jj];
                            }
                            ua[j] = sa;
                            ub[j] = sb;
                            uc[j] = sc;
                        }
                        if (j >= W) break;
                    }
                    float sa = 0.f, sb = 0.f, sc = 0.f;
                    for (int k = 0; k < KW; ++k) {
                        const int jj = j - k;
                        if (jj < 0 || jj >= Wo) continue;
                        sa += w[k] * ta[jj];
                        sb += w[k] * tb[jj];
                        sc += w[k] * tc[jj];
                    }
                    ua[j] = sa;
                    ub[j] = sb;
                    uc[j] = sc;
                }
                for (int j = 0; j < W; ++j) {
                    const size_t idx = ((size_t)r * W + j) * C + c;
                    const float a = x[idx], b = y[idx];
                    const float sgn = (float)((a > b) - (a < b)); /* d|x − y|/dx, 0 where equal */
                    grad[idx] = ua[j] + 2.f * a * ub[j] + b * uc[j] + l1_coef * sgn;
                }
            }
        }
        free(px);
        free(o);
    }
    double total = 0.0, l1 = 0.0, sq = 0.0;
    for (int k = 0; k < n1; ++k) {
        l1 += rl1[k];
        sq += rsq[k];
    }
    for (int k = 0; k < n2; ++k) total += rs[k];
    free(rows);
    sums[0] = total;
    sums[1] = l1;
    sums[2] = sq;
}

/* MCMC position noise (Kheradmand et al. 2024) for n float32 Gaussians, in place on means:
 * means += factor · gate(σ(opacity)) · R diag(exp(2·scale)) Rᵀ z, gate(o) = σ(−100·(o − 0.005)),
 * R from the normalised quaternion (identity for a zero one). z is the n×3 standard normal draw. */
void recon3d_mcmc_noise(float *means, const float *scales, const float *quats, const float *opacities,
                        const float *z, float factor, long n, int threads) {
    if (threads < 1) threads = 1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < n; ++i) {
        const float o = 1.f / (1.f + expf(-opacities[i]));
        const float gate = 1.f / (1.f + expf(100.f * (o - 0.005f)));
        const float *q = quats + 4 * i;
        const float nrm = sqrtf(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
        float w = 1.f, x = 0.f, y = 0.f, zz = 0.f;
        if (nrm > 0.f) {
            w = q[0] / nrm; x = q[1] / nrm; y = q[2] / nrm; zz = q[3] / nrm;
        }
        const float r[9] = {
            1.f - 2.f * (y * y + zz * zz), 2.f * (x * y - w * zz), 2.f * (x * zz + w * y),
            2.f * (x * y + w * zz), 1.f - 2.f * (x * x + zz * zz), 2.f * (y * zz - w * x),
            2.f * (x * zz - w * y), 2.f * (y * zz + w * x), 1.f - 2.f * (x * x + y * y),
        };
        const float *zi = z + 3 * i;
        float v[3];
        for (int j = 0; j < 3; ++j) {
            const float s = expf(scales[3 * i + j]);
            v[j] = (r[j] * zi[0] + r[3 + j] * zi[1] + r[6 + j] * zi[2]) * (s * s); /* diag(s²)·Rᵀz */
        }
        const float g = gate * factor;
        for (int k = 0; k < 3; ++k) means[3 * i + k] += (r[3 * k] * v[0] + r[3 * k + 1] * v[1] + r[3 * k + 2] * v[2]) * g;
    }
}
