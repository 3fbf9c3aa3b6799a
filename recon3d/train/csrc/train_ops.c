/* CPU fast paths of the training step, called from recon3d/train/cpu_ops.py through ctypes.
 *
 * 1. Fused SSIM (11-tap separable Gaussian window, valid region) and its gradient, float32 H×W×C images.
 * The same maths as recon3d.metrics.ssim_map (Wang et al. 2004): per channel, the blurred moments mx, my,
 * E[x²] + E[y²], E[xy] give S = (2·mx·my + C1)(2·sxy + C2) / ((mx² + my² + C1)(sxx + syy + C2)). S reads
 * E[x²] and E[y²] only through their sum, so the sum is blurred as one map (a blur is linear: four blurred
 * maps per channel, not five). The gradient of mean(S) w.r.t. x is the adjoint blur of three per-pixel maps
 * (dS/dmx, dS/dE[x²], dS/dE[xy]) combined as A + 2x·B + y·C: three more blurs instead of autograd's chain
 * through every intermediate.
 * Plain C (no torch headers) so it compiles in about a second; called through ctypes, which drops the GIL.
 *
 * Layout: every pass works on whole interleaved rows (W·C floats). The horizontal window of channel c at
 * column j reads row[(j + k)·C + c], taps C floats apart, so all channels run in one contiguous loop that
 * vectorises (no de-interleaving gather, no strided scatter of the gradient). The image is streamed once,
 * top to bottom, two output rows at a time (each input row loaded once for both: the vertical passes are
 * bound by loads from L2): the horizontal moments of the last 12 input rows and the derivative maps of the
 * last 12 output rows live in rings that stay in the L2 cache, instead of full-image intermediates that
 * would travel through memory four times.
 * Threads: the rows are cut into one band per thread; a band recomputes the 10-row halo it needs from its
 * neighbour (about 5 % more arithmetic for 400 rows on 2 threads) so bands never wait for each other.
 * Every value comes from the same code whichever band computes it, and the sums are kept per row and
 * added in order afterwards, so the result is the same for any thread count.
 * 2. The MCMC strategy's position noise in one pass per Gaussian (a dozen tensor ops in PyTorch).
 * 3. Adam over all parameter tensors in one pass, and a one-pass finiteness check.
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* glibc's vector expf (libmvec, linked by cpu_ops.py where it exists) so the noise loop vectorises; glibc
 * declares the SIMD variants itself only under -ffast-math */
#if defined(RECON3D_LIBMVEC) && defined(__x86_64__)
#pragma omp declare simd notinbranch
float expf(float);
#endif

#define KW 11
#define HALF (KW - 1)
#define RING (KW + 1) /* rows kept: one window plus one, as output rows are made two at a time */
#define NM 4          /* blurred moment maps: mx, my, E[x² + y²], E[xy] */

/* dst[j] = Σk w[k]·rows[k][j], j < n: eleven taps summed in registers (the loop vectorises over j). */
static void conv11(float *restrict dst, const float *const *rows, int n, const float *restrict w) {
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4], *r5 = rows[5],
                *r6 = rows[6], *r7 = rows[7], *r8 = rows[8], *r9 = rows[9], *r10 = rows[10];
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7],
                w8 = w[8], w9 = w[9], w10 = w[10];
#pragma omp simd
    for (int j = 0; j < n; ++j)
        dst[j] = w0 * r0[j] + w1 * r1[j] + w2 * r2[j] + w3 * r3[j] + w4 * r4[j] + w5 * r5[j] + w6 * r6[j] +
                 w7 * r7[j] + w8 * r8[j] + w9 * r9[j] + w10 * r10[j];
}

/* Two vertically adjacent output rows from 12 input rows: d0[j] = Σk w[k]·rows[k][j], d1[j] = Σk w[k]·rows[k + 1][j].
 * Each input row loaded once serves both (the vertical passes are bound by L2 loads); each output is the same
 * chain of multiply-adds as conv11 computes, so a row gets the same bits whichever way it was computed. */
static void conv11x2(float *restrict d0, float *restrict d1, const float *const *rows, int n, const float *restrict w) {
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4], *r5 = rows[5],
                *r6 = rows[6], *r7 = rows[7], *r8 = rows[8], *r9 = rows[9], *r10 = rows[10], *r11 = rows[11];
    const float w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3], w4 = w[4], w5 = w[5], w6 = w[6], w7 = w[7],
                w8 = w[8], w9 = w[9], w10 = w[10];
#pragma omp simd
    for (int j = 0; j < n; ++j) {
        const float a0 = r0[j], a1 = r1[j], a2 = r2[j], a3 = r3[j], a4 = r4[j], a5 = r5[j], a6 = r6[j], a7 = r7[j],
                    a8 = r8[j], a9 = r9[j], a10 = r10[j], a11 = r11[j];
        d0[j] = w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3 + w4 * a4 + w5 * a5 + w6 * a6 + w7 * a7 + w8 * a8 + w9 * a9 +
                w10 * a10;
        d1[j] = w0 * a1 + w1 * a2 + w2 * a3 + w3 * a4 + w4 * a5 + w5 * a6 + w6 * a7 + w7 * a8 + w8 * a9 + w9 * a10 +
                w10 * a11;
    }
}

/* dst[j] = Σk w[k]·src[j + k·step], j < n: a horizontal window pass along an interleaved row. */
static void hconv(float *restrict dst, const float *src, int n, int step, const float *restrict w) {
    const float *rows[KW];
    for (int k = 0; k < KW; ++k) rows[k] = src + (size_t)k * step;
    conv11(dst, rows, n, w);
}

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Floats of workspace one band needs (rings, row buffers), 64-byte multiples. */
static size_t band_floats(int W, int C) {
    const size_t w3 = (size_t)W * C, wo3 = (size_t)(W - HALF) * C;
    return 2 * round16(w3) /* x² + y², xy of a row */ + RING * NM * round16(wo3) /* horizontal moments ring */
           + 2 * NM * round16(wo3) /* vertical moments of two rows */ + RING * 3 * round16(wo3) /* derivative ring */
           + round16(wo3) /* zeros */ + 6 * round16(w3 + (size_t)HALF * C) /* padded vertical adjoint, two rows */
           + 3 * round16(w3) /* horizontal adjoint */;
}

/* Bands (threads) the rows are cut into: each at least two windows tall, so the halo stays a small share. */
static int band_count(int H, int threads) {
    int most = H / (2 * KW);
    if (most < 1) most = 1;
    return threads < 1 ? 1 : (threads < most ? threads : most);
}

/* Floats of workspace recon3d_image_loss needs for an H×W×C image on ``threads`` threads (the caller keeps
 * it between calls: fresh megabyte buffers every step would cost page faults). */
size_t recon3d_ssim_workspace(int H, int W, int C, int threads) {
    return (size_t)band_count(H, threads) * band_floats(W, C);
}

typedef struct {
    const float *x, *y;
    float *grad;
    int H, W, C, Ho;
    const float *w, *wr;
    float c1, c2, gscale, l1_coef;
    double *rl1, *rsq, *rs;
} loss_args;

/* SSIM of one output row from its NM vertical moments and, if dmx, the three derivative maps. */
static double ssim_row(const float *restrict v, size_t stride, float *restrict dmx, float *restrict dxx,
                       float *restrict dxy, int n, float c1, float c2, float gscale) {
    const float *restrict vmx = v, *restrict vmy = v + stride, *restrict vss = v + 2 * stride,
                          *restrict vxy = v + 3 * stride;
    double sum = 0.0;
    if (dmx) {
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; ++j) {
            const float mx = vmx[j], my = vmy[j];
            const float sxy = vxy[j] - mx * my, mm = mx * mx + my * my; /* sxx + syy = E[x² + y²] − mm */
            const float a1 = 2.f * mx * my + c1, a2 = 2.f * sxy + c2;
            const float b1 = mm + c1, b2 = (vss[j] - mm) + c2;
            const float inv = 1.f / (b1 * b2), s = a1 * a2 * inv, ig = inv * gscale;
            sum += s;
            /* dS/dmx = (dN − S·dD)/D with dN = 2my(a2 − a1), dD = 2mx(b2 − b1) (sxx, sxy depend on mx) */
            dmx[j] = (2.f * my * (a2 - a1) - s * 2.f * mx * (b2 - b1)) * ig;
            dxx[j] = -s * b1 * ig;  /* dS/dE[x²] */
            dxy[j] = 2.f * a1 * ig; /* dS/dE[xy] */
        }
    } else {
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < n; ++j) {
            const float mx = vmx[j], my = vmy[j];
            const float sxy = vxy[j] - mx * my, mm = mx * mx + my * my;
            sum += (2.f * mx * my + c1) * (2.f * sxy + c2) / ((mm + c1) * ((vss[j] - mm) + c2));
        }
    }
    return sum;
}

/* One band: gradient rows [r0, r1), the SSIM rows among them and their L1/MSE sums. */
static void loss_band(const loss_args *a, int r0, int r1, float *ws) {
    const int C = a->C, W3 = a->W * C, Wo3 = (a->W - HALF) * C, Ho = a->Ho;
    const size_t sw3 = round16((size_t)W3), swo3 = round16((size_t)Wo3), spad = round16((size_t)W3 + HALF * C);
    float *prod = ws;                       /* x² + y², xy of one input row */
    float *hring = prod + 2 * sw3;          /* slot r % RING: horizontal moments of input row r (NM rows) */
    float *vout = hring + RING * NM * swo3; /* vertical moments of the current two output rows */
    float *dring = vout + 2 * NM * swo3;    /* slot i % RING: dS/dmx, dS/dE[x²], dS/dE[xy] of output row i */
    float *zero = dring + RING * 3 * swo3;
    float *tpad = zero + swo3;             /* vertical adjoint of two rows, HALF·C zeros each side */
    float *u = tpad + 6 * spad;            /* horizontal adjoint (3 rows of W·C) */
    float *grad = a->grad;
    memset(zero, 0, sizeof(float) * (size_t)Wo3);
    if (grad)
        for (int q = 0; q < 6; ++q) {
            memset(tpad + q * spad, 0, sizeof(float) * HALF * C);
            memset(tpad + q * spad + HALF * C + Wo3, 0, sizeof(float) * HALF * C);
        }
    /* L1 and MSE sums of the band's own rows */
    for (int r = r0; r < r1; ++r) {
        const float *restrict xr = a->x + (size_t)r * W3, *restrict yr = a->y + (size_t)r * W3;
        double l1 = 0.0, sq = 0.0;
#pragma omp simd reduction(+ : l1, sq)
        for (int j = 0; j < W3; ++j) {
            const float xv = xr[j], e = xv - yr[j];
            const float ec = (xv < 0.f ? 0.f : (xv > 1.f ? 1.f : xv)) - yr[j]; /* fminf/fmaxf are libm calls */
            l1 += fabsf(e);
            sq += (double)(ec * ec);
        }
        a->rl1[r] = l1;
        a->rsq[r] = sq;
    }
    /* output rows whose derivative maps the band needs: its own, plus the 10 above for the vertical adjoint */
    const int dlo = grad ? (r0 - HALF > 0 ? r0 - HALF : 0) : r0;
    const int dhi = r1 < Ho ? r1 : Ho;
    const int end = grad ? (r1 > dhi ? r1 : dhi) : dhi;
    int next = dlo; /* next input row whose horizontal moments are due */
    const float *rows[RING];
    /* two rows per iteration: the SSIM rows i, i + 1 (below dhi), then the gradient rows i, i + 1 (in [r0, r1)) */
    for (int i = dlo; i < end; i += 2) {
        const int nf = i + 1 < dhi ? 2 : (i < dhi ? 1 : 0);
        if (nf) {
            while (next < i + nf + HALF) {
                const float *restrict xr = a->x + (size_t)next * W3, *restrict yr = a->y + (size_t)next * W3;
                float *restrict pss = prod, *restrict pxy = prod + sw3;
#pragma omp simd
                for (int j = 0; j < W3; ++j) {
                    pss[j] = xr[j] * xr[j] + yr[j] * yr[j];
                    pxy[j] = xr[j] * yr[j];
                }
                float *slot = hring + (size_t)(next % RING) * NM * swo3;
                hconv(slot, xr, Wo3, C, a->w);
                hconv(slot + swo3, yr, Wo3, C, a->w);
                hconv(slot + 2 * swo3, pss, Wo3, C, a->w);
                hconv(slot + 3 * swo3, pxy, Wo3, C, a->w);
                ++next;
            }
            for (int q = 0; q < NM; ++q) {
                for (int k = 0; k < KW + nf - 1; ++k) rows[k] = hring + (size_t)((i + k) % RING) * NM * swo3 + q * swo3;
                if (nf == 2)
                    conv11x2(vout + (size_t)q * swo3, vout + (size_t)(NM + q) * swo3, rows, Wo3, a->w);
                else
                    conv11(vout + (size_t)q * swo3, rows, Wo3, a->w);
            }
            for (int e = 0; e < nf; ++e) {
                float *dm = grad ? dring + (size_t)((i + e) % RING) * 3 * swo3 : NULL;
                const double s = ssim_row(vout + (size_t)e * NM * swo3, swo3, dm, dm ? dm + swo3 : NULL,
                                          dm ? dm + 2 * swo3 : NULL, Wo3, a->c1, a->c2, a->gscale);
                if (i + e >= r0) a->rs[i + e] = s;
            }
        }
        if (!grad) continue;
        const int g0 = i < r0 ? r0 : i, g1 = i + 2 < r1 ? i + 2 : r1; /* gradient rows [g0, g1) */
        if (g0 >= g1) continue;
        /* the vertical adjoint t[r] = Σk w[k]·d[r − k] (rows outside [0, Ho) are zeros), for rows g0.. */
        for (int q = 0; q < 3; ++q) {
            for (int k = 0; k < KW + (g1 - g0) - 1; ++k) {
                const int src = g0 - HALF + k; /* reversed window: wr[k] = w[HALF − k] */
                rows[k] = (src >= 0 && src < Ho) ? dring + (size_t)(src % RING) * 3 * swo3 + q * swo3 : zero;
            }
            if (g1 - g0 == 2)
                conv11x2(tpad + q * spad + HALF * C, tpad + (3 + q) * spad + HALF * C, rows, Wo3, a->wr);
            else
                conv11(tpad + q * spad + HALF * C, rows, Wo3, a->wr);
        }
        for (int r = g0; r < g1; ++r) {
            const float *tp = tpad + (size_t)(r - g0) * 3 * spad;
            /* the horizontal adjoint u[j] = Σk w[k]·t[j − k·C], as a forward pass over the padded row */
            for (int q = 0; q < 3; ++q) hconv(u + q * sw3, tp + q * spad, W3, C, a->wr);
            const float *restrict xr = a->x + (size_t)r * W3, *restrict yr = a->y + (size_t)r * W3;
            const float *restrict ua = u, *restrict ub = u + sw3, *restrict uc = u + 2 * sw3;
            float *restrict gr = grad + (size_t)r * W3;
            const float l1c = a->l1_coef;
#pragma omp simd
            for (int j = 0; j < W3; ++j) {
                const float av = xr[j], bv = yr[j];
                const float sgn = (float)((av > bv) - (av < bv)); /* d|x − y|/dx, 0 where equal */
                gr[j] = ua[j] + 2.f * av * ub[j] + bv * uc[j] + l1c * sgn;
            }
        }
    }
}

/* The training loss L = l1_coef·Σ|x − y| + ssim_coef·mean(S) (+ constants) in one call: sums[0] = Σ S over
 * the valid SSIM map, sums[1] = Σ|x − y|, sums[2] = Σ(clamp(x, 0, 1) − y)² (the PSNR's MSE), and, if grad is
 * not NULL, grad = dL/dx. x, y, grad: H×W×C row-major; ws: recon3d_ssim_workspace(H, W, C, threads) floats. */
void recon3d_image_loss(const float *x, const float *y, int H, int W, int C, const float *w, float c1, float c2,
                        float *grad, int threads, float *ws, float ssim_coef, float l1_coef, double *sums) {
    const int Ho = H - HALF, Wo = W - HALF;
    double *rows = malloc(sizeof(double) * 3 * (size_t)H);
    if (!rows) {
        sums[0] = sums[1] = sums[2] = NAN;
        return;
    }
    float wr[KW]; /* the window reversed: the adjoint passes written as forward sums */
    for (int k = 0; k < KW; ++k) wr[k] = w[KW - 1 - k];
    loss_args a = {x, y, grad, H, W, C, Ho, w, wr, c1, c2,
                   (float)((double)ssim_coef / ((double)C * (double)Ho * (double)Wo)), l1_coef,
                   rows, rows + H, rows + 2 * (size_t)H};
    const int bands = band_count(H, threads);
    const size_t per = band_floats(W, C);
#pragma omp parallel for num_threads(bands) schedule(static, 1)
    for (int b = 0; b < bands; ++b)
        loss_band(&a, (int)((long)H * b / bands), (int)((long)H * (b + 1) / bands), ws + (size_t)b * per);
    double total = 0.0, l1 = 0.0, sq = 0.0;
    for (int r = 0; r < H; ++r) {
        l1 += a.rl1[r];
        sq += a.rsq[r];
    }
    for (int i = 0; i < Ho; ++i) total += a.rs[i];
    free(rows);
    sums[0] = total;
    sums[1] = l1;
    sums[2] = sq;
}

/* MCMC position noise (Kheradmand et al. 2024) for n float32 Gaussians, in place on means:
 * means += factor · gate(σ(opacity)) · R diag(exp(2·scale)) Rᵀ z, gate(o) = σ(−100·(o − 0.005)),
 * R from the normalised quaternion (identity for a zero one). z is the n×3 standard normal draw.
 * Gaussians go in blocks of NB through one fixed-length SIMD loop (a short last block is padded), so every
 * one takes the same code path (vector expf where libmvec is linked) whatever the thread count or the
 * alignment of the tensors: a resumed run adds the same noise bit for bit. */
#define NB 16
static void noise_block(float *means, const float *scales, const float *quats, const float *opacities,
                        const float *z, float factor, long i0, int m) {
    float op[NB], q0[NB], q1[NB], q2[NB], q3[NB], s0[NB], s1[NB], s2[NB], z0[NB], z1[NB], z2[NB];
    float d0[NB], d1[NB], d2[NB];
    for (int l = 0; l < NB; ++l) {
        const int in = l < m;
        const long i = i0 + (in ? l : 0);
        op[l] = in ? opacities[i] : 0.f;
        q0[l] = in ? quats[4 * i] : 1.f;
        q1[l] = in ? quats[4 * i + 1] : 0.f;
        q2[l] = in ? quats[4 * i + 2] : 0.f;
        q3[l] = in ? quats[4 * i + 3] : 0.f;
        s0[l] = in ? scales[3 * i] : 0.f;
        s1[l] = in ? scales[3 * i + 1] : 0.f;
        s2[l] = in ? scales[3 * i + 2] : 0.f;
        z0[l] = in ? z[3 * i] : 0.f;
        z1[l] = in ? z[3 * i + 1] : 0.f;
        z2[l] = in ? z[3 * i + 2] : 0.f;
    }
#pragma omp simd
    for (int l = 0; l < NB; ++l) {
        const float o = 1.f / (1.f + expf(-op[l]));
        const float gate = 1.f / (1.f + expf(100.f * (o - 0.005f)));
        const float nrm = sqrtf(q0[l] * q0[l] + q1[l] * q1[l] + q2[l] * q2[l] + q3[l] * q3[l]);
        const int ok = nrm > 0.f;
        const float w = ok ? q0[l] / nrm : 1.f, x = ok ? q1[l] / nrm : 0.f, y = ok ? q2[l] / nrm : 0.f,
                    zz = ok ? q3[l] / nrm : 0.f;
        const float r0 = 1.f - 2.f * (y * y + zz * zz), r1 = 2.f * (x * y - w * zz), r2 = 2.f * (x * zz + w * y);
        const float r3 = 2.f * (x * y + w * zz), r4 = 1.f - 2.f * (x * x + zz * zz), r5 = 2.f * (y * zz - w * x);
        const float r6 = 2.f * (x * zz - w * y), r7 = 2.f * (y * zz + w * x), r8 = 1.f - 2.f * (x * x + y * y);
        const float e0 = expf(s0[l]), e1 = expf(s1[l]), e2 = expf(s2[l]);
        /* v = diag(s²)·Rᵀz, then R·v */
        const float v0 = (r0 * z0[l] + r3 * z1[l] + r6 * z2[l]) * (e0 * e0);
        const float v1 = (r1 * z0[l] + r4 * z1[l] + r7 * z2[l]) * (e1 * e1);
        const float v2 = (r2 * z0[l] + r5 * z1[l] + r8 * z2[l]) * (e2 * e2);
        const float g = gate * factor;
        d0[l] = (r0 * v0 + r1 * v1 + r2 * v2) * g;
        d1[l] = (r3 * v0 + r4 * v1 + r5 * v2) * g;
        d2[l] = (r6 * v0 + r7 * v1 + r8 * v2) * g;
    }
    for (int l = 0; l < m; ++l) {
        float *mi = means + 3 * (i0 + l);
        mi[0] += d0[l];
        mi[1] += d1[l];
        mi[2] += d2[l];
    }
}

void recon3d_mcmc_noise(float *means, const float *scales, const float *quats, const float *opacities,
                        const float *z, float factor, long n, int threads) {
    if (threads < 1) threads = 1;
    const long blocks = (n + NB - 1) / NB;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long b = 0; b < blocks; ++b) {
        const long i0 = b * NB;
        noise_block(means, scales, quats, opacities, z, factor, i0, (int)(n - i0 < NB ? n - i0 : NB));
    }
}

/* 3. Adam over several float32 tensors in one parallel region, with torch's fused Adam update
 * (aten FusedAdamKernel, the same order of operations):
 *   m ← m + (1 − β1)(g − m);  v ← β2·v + (1 − β2)·g²;  p ← p − step_size·m / (√v / √bc2 + eps).
 * Tensor t is rows[t] rows of width[t] floats of which only the first active[t] of each row are updated:
 * the caller passes active < width only where the rest have zero gradients and zero moments, where Adam
 * leaves p, m and v exactly as they are (the SH coefficients above the degree rendered so far). */
void recon3d_adam(int nt, float *const *p, const float *const *g, float *const *m, float *const *v,
                  const long *rows, const int *width, const int *active, const float *step_size, float c1,
                  float beta2, float c2, float bc2_sqrt, float eps, int threads) {
    /* c1 = 1 − β1, c2 = 1 − β2 rounded from double by the caller (1.f − 0.999f is 1.3e-5 off) */
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    for (int t = 0; t < nt; ++t) {
        float *restrict pt = p[t], *restrict mt = m[t], *restrict vt = v[t];
        const float *restrict gt = g[t];
        const float ss = step_size[t];
        const int wd = width[t], act = active[t];
        /* whole rows active: one flat loop; else row by row over the active prefix */
        const long outer = act == wd ? 1 : rows[t];
        const long inner = act == wd ? rows[t] * (long)wd : act;
#pragma omp for schedule(static) nowait
        for (long r = 0; r < outer; ++r) {
            const long base = r * wd;
#pragma omp simd
            for (long i = base; i < base + inner; ++i) {
                const float gi = gt[i];
                const float mi = mt[i] + c1 * (gi - mt[i]);
                const float vi = vt[i] * beta2 + c2 * gi * gi;
                mt[i] = mi;
                vt[i] = vi;
                pt[i] = pt[i] - ss * mi / (sqrtf(vi) / bc2_sqrt + eps);
            }
        }
    }
}

/* 1 if every float of the nt tensors is finite (an Inf or NaN times 0 is NaN; finite values give 0, so
 * the sum cannot overflow), else 0: one parallel pass instead of a reduction op per tensor. */
int recon3d_all_finite(int nt, const float *const *p, const long *sizes, int threads) {
    if (threads < 1) threads = 1;
    float acc = 0.f;
#pragma omp parallel num_threads(threads) reduction(+ : acc)
    for (int t = 0; t < nt; ++t) {
        const float *restrict pt = p[t];
        const long n = sizes[t], blocks = (n + 4095) / 4096;
#pragma omp for schedule(static) nowait
        for (long b = 0; b < blocks; ++b) {
            const long lo = b * 4096, hi = lo + 4096 < n ? lo + 4096 : n;
            float part = 0.f;
#pragma omp simd reduction(+ : part)
            for (long i = lo; i < hi; ++i) part += pt[i] * 0.f;
            acc += part;
        }
    }
    return acc == 0.f;
}
