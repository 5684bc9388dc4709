"""C source of the fused HeterologousNorm kernels (compiled at first use by :mod:`fedhn.norms.kernel_build`, called
by the operators of :mod:`fedhn.norms.fused`).

It lives in a Python module so that it ships wherever the package's Python files go, including the
Flower App bundle (FAB), which carries only ``.py``/``.toml``/``.md``-like files.
"""

SOURCE = r"""/* Training-mode kernels of HeterologousNorm with the mean set bn and std sets pooled over the batch
 * (hn, hn_g<G>, and softmax mixtures such as mean=bn,std=bn+en), called by fedhn/norms/fused.py.
 *
 * Compiled with -DSCALAR=float or -DSCALAR=double. Inputs are contiguous (N, C, S). Std set k splits the
 * C channels into groups[k] groups of consecutive channels; its group statistics sit at offset
 * groups[0] + ... + groups[k-1] of set_mean / set_var. The statistics vector `stats` holds, in this order,
 * mean (C), set_mean (G), set_var (G, biased), invstd (C) and set_var_unbiased (G), G the total group count
 * of all sets. set_weight[k * C + c] is set k's weight in channel c
 * (the softmax weights of a mixture, per channel so that packed clients, whose channels are concatenated,
 * can each have their own).
 *
 * Forward: y = weight_c * (x - mean_c) * invstd_c + bias_c, invstd_c = (sum_k w_kc var_{k,g(c)} + eps)^-1/2,
 * var_{k,g} the biased variance of group g around its own mean. Backward, with a_c = weight_c * invstd_c:
 *   dx = a_c * (dy - mean_c(dy)) + sum_k coef_{k,g(c)} * (x - mean_{k,g(c)}),
 *   coef_{k,g} = 2 / M_{k,g} * sum_{c in g} w_kc dL/dv_c,  dL/dv_c = -weight_c * invstd_c^3 * sum_c(dy * (x - mean_c)) / 2.
 * Each direction makes the passes of nn.BatchNorm2d's CPU kernels: a reduction per channel (forward: over
 * x, twice, the second time mostly from cache; backward: over dy and x once), then one elementwise pass.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef SCALAR scalar;

/* Mean and biased variance of each channel, in two passes like BatchNorm's CPU kernel (the second one
 * mostly from cache): each (sample, channel) row is summed in SCALAR, rows are accumulated in double. */
static void channel_moments(const scalar *x, int64_t n, int64_t c, int64_t s, double *mean, double *var, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
        double total = 0.0, squares = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const scalar *row = x + (i * c + ch) * s;
            scalar sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < s; ++j) sum += row[j];
            total += sum;
        }
        const double m = total / ((double)n * (double)s);
        const scalar center = (scalar)m;
        for (int64_t i = 0; i < n; ++i) {
            const scalar *row = x + (i * c + ch) * s;
            scalar sum = 0;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < s; ++j) sum += (row[j] - center) * (row[j] - center);
            squares += sum;
        }
        mean[ch] = m;
        var[ch] = squares / ((double)n * (double)s) - (m - (double)center) * (m - (double)center);
    }
}

/* sum_dy[c] = sum(dy), sum_dy_xc[c] = sum(dy * (x - center[c])) over each channel; rows summed in SCALAR,
 * accumulated in double. */
static void channel_grad_sums(const scalar *dy, const scalar *x, int64_t n, int64_t c, int64_t s, const scalar *center,
                              double *sum_dy, double *sum_dy_xc, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t ch = 0; ch < c; ++ch) {
        const scalar m = center[ch];
        double a = 0.0, b = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            const scalar *dy_row = dy + (i * c + ch) * s, *x_row = x + (i * c + ch) * s;
            scalar row_a = 0, row_b = 0;
#pragma omp simd reduction(+ : row_a, row_b)
            for (int64_t j = 0; j < s; ++j) {
                row_a += dy_row[j];
                row_b += dy_row[j] * (x_row[j] - m);
            }
            a += row_a;
            b += row_b;
        }
        sum_dy[ch] = a;
        sum_dy_xc[ch] = b;
    }
}

/* out = a[c] * u + b[c] * (x - center[c]) + d[c] elementwise; u may be NULL (then a is ignored). */
static void channel_affine(const scalar *u, const scalar *x, scalar *out, int64_t n, int64_t c, int64_t s,
                           const scalar *a, const scalar *b, const scalar *center, const scalar *d, int threads) {
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
    for (int64_t r = 0; r < n * c; ++r) {
        const int64_t ch = r % c;
        const scalar cb = b[ch], cm = center[ch], cd = d[ch];
        const scalar *x_row = x + r * s;
        scalar *o = out + r * s;
        if (u) {
            const scalar ca = a[ch], *u_row = u + r * s;
#pragma omp simd
            for (int64_t j = 0; j < s; ++j) o[j] = ca * u_row[j] + cb * (x_row[j] - cm) + cd;
        } else {
#pragma omp simd
            for (int64_t j = 0; j < s; ++j) o[j] = cb * (x_row[j] - cm) + cd;
        }
    }
}

static int64_t total_groups(int64_t num_sets, const int64_t *groups) {
    int64_t total = 0;
    for (int64_t k = 0; k < num_sets; ++k) total += groups[k];
    return total;
}

/* Writes y and the statistics vector (the channel means, the moments of every std set, invstd). weight and
 * bias may be NULL. Returns 0, or 1 when out of memory. */
int fused_forward(const scalar *x, scalar *y, int64_t n, int64_t c, int64_t s, int64_t num_sets, const int64_t *groups,
                  const double *set_weight, const scalar *weight, const scalar *bias, double eps, scalar *stats,
                  int threads) {
    const int64_t g_total = total_groups(num_sets, groups);
    scalar *mean = stats, *set_mean = stats + c, *set_var = set_mean + g_total, *invstd = set_var + g_total,
           *set_var_unbiased = invstd + c;
    double *work = malloc(sizeof(double) * 3 * c);
    scalar *coef = malloc(sizeof(scalar) * 2 * c);
    if (!work || !coef) {
        free(work);
        free(coef);
        return 1;
    }
    double *channel_mean = work, *channel_var = work + c, *mixed_var = work + 2 * c;
    scalar *scale = coef, *shift = coef + c;
    channel_moments(x, n, c, s, channel_mean, channel_var, threads);
    for (int64_t ch = 0; ch < c; ++ch) mixed_var[ch] = 0.0;
    for (int64_t k = 0, offset = 0; k < num_sets; offset += groups[k], ++k) {
        const int64_t per_group = c / groups[k];
        const double *w = set_weight + k * c;
        for (int64_t g = 0; g < groups[k]; ++g) {
            const int64_t first = g * per_group;
            double group_mean = 0.0, group_var = 0.0;
            for (int64_t ch = first; ch < first + per_group; ++ch) group_mean += channel_mean[ch];
            group_mean /= (double)per_group;
            for (int64_t ch = first; ch < first + per_group; ++ch) {
                const double d = channel_mean[ch] - group_mean;
                group_var += channel_var[ch] + d * d;
            }
            group_var /= (double)per_group;
            set_mean[offset + g] = (scalar)group_mean;
            set_var[offset + g] = (scalar)group_var;
            const double count = (double)n * (double)s * (double)per_group;
            set_var_unbiased[offset + g] = (scalar)(group_var * count / (count - 1.0));
            for (int64_t ch = first; ch < first + per_group; ++ch) mixed_var[ch] += w[ch] * group_var;
        }
    }
    for (int64_t ch = 0; ch < c; ++ch) {
        const double r = 1.0 / sqrt(mixed_var[ch] + eps);
        mean[ch] = (scalar)channel_mean[ch];
        invstd[ch] = (scalar)r;
        scale[ch] = (scalar)(weight ? weight[ch] * r : r);
        shift[ch] = bias ? bias[ch] : (scalar)0;
    }
    channel_affine(NULL, x, y, n, c, s, NULL, scale, mean, shift, threads);
    free(work);
    free(coef);
    return 0;
}

/* Moves `rows` layers' running statistics (running_mean (C), running_var and running_center (G each; center may
 * be NULL)) towards the statistics vectors `stats` (rows of 2C + 3G) by `factor`: running += factor * (batch -
 * running), with torch.lerp's rounding (the other endpoint's form for factor >= 0.5). Returns 0. */
static void lerp(scalar *running, const scalar *batch, int64_t count, scalar factor) {
    for (int64_t i = 0; i < count; ++i)
        running[i] = factor < (scalar)0.5 ? running[i] + factor * (batch[i] - running[i])
                                          : batch[i] - (batch[i] - running[i]) * ((scalar)1 - factor);
}

int update_running(scalar *running_mean, scalar *running_var, scalar *running_center, const scalar *stats,
                    int64_t rows, int64_t c, int64_t g_total, double factor) {
    const int64_t length = 2 * c + 3 * g_total;
    for (int64_t r = 0; r < rows; ++r) {
        const scalar *row = stats + r * length;
        lerp(running_mean + r * c, row, c, (scalar)factor);
        lerp(running_var + r * g_total, row + length - g_total, g_total, (scalar)factor);
        if (running_center) lerp(running_center + r * g_total, row + c, g_total, (scalar)factor);
    }
    return 0;
}

/* Writes dx, grad_set_weight (d loss / d set_weight, laid out as set_weight), grad_weight and grad_bias, from the
 * forward's statistics vector. weight may be NULL. Returns 0, or 1 when out of memory. */
int fused_backward(const scalar *dy, const scalar *x, scalar *dx, int64_t n, int64_t c, int64_t s, int64_t num_sets,
                   const int64_t *groups, const double *set_weight, const scalar *weight, const scalar *stats,
                   scalar *grad_weight, scalar *grad_bias, double *grad_set_weight, int threads) {
    const int64_t g_total = total_groups(num_sets, groups);
    const scalar *mean = stats, *set_mean = stats + c, *set_var = set_mean + g_total, *invstd = set_var + g_total;
    double *work = malloc(sizeof(double) * 5 * c);
    scalar *coef = malloc(sizeof(scalar) * 3 * c);
    if (!work || !coef) {
        free(work);
        free(coef);
        return 1;
    }
    double *sum_dy = work, *sum_dy_xc = work + c, *grad_var = work + 2 * c, *x_coef = work + 3 * c,
           *offset_coef = work + 4 * c;
    channel_grad_sums(dy, x, n, c, s, mean, sum_dy, sum_dy_xc, threads);
    const double channel_count = (double)n * (double)s;
    for (int64_t ch = 0; ch < c; ++ch) {
        const double r = invstd[ch], w = weight ? weight[ch] : 1.0;
        grad_weight[ch] = (scalar)(r * sum_dy_xc[ch]);
        grad_bias[ch] = (scalar)sum_dy[ch];
        grad_var[ch] = -0.5 * w * r * r * r * sum_dy_xc[ch];
        x_coef[ch] = 0.0;
        offset_coef[ch] = -w * r * sum_dy[ch] / channel_count;
    }
    for (int64_t k = 0, offset = 0; k < num_sets; offset += groups[k], ++k) {
        const int64_t per_group = c / groups[k];
        const double group_count = channel_count * (double)per_group;
        const double *w = set_weight + k * c;
        double *grad_w = grad_set_weight + k * c;
        for (int64_t g = 0; g < groups[k]; ++g) {
            const int64_t first = g * per_group;
            double group_grad = 0.0;
            for (int64_t ch = first; ch < first + per_group; ++ch) {
                group_grad += w[ch] * grad_var[ch];
                grad_w[ch] = grad_var[ch] * (double)set_var[offset + g];
            }
            const double slope = 2.0 * group_grad / group_count;
            for (int64_t ch = first; ch < first + per_group; ++ch) {
                x_coef[ch] += slope;
                offset_coef[ch] += slope * ((double)mean[ch] - (double)set_mean[offset + g]);
            }
        }
    }
    scalar *a = coef, *b = coef + c, *d = coef + 2 * c;
    for (int64_t ch = 0; ch < c; ++ch) {
        a[ch] = (scalar)((weight ? weight[ch] : 1.0) * invstd[ch]);
        b[ch] = (scalar)x_coef[ch];
        d[ch] = (scalar)offset_coef[ch];
    }
    channel_affine(dy, x, dx, n, c, s, a, b, mean, d, threads);
    free(work);
    free(coef);
    return 0;
}
"""
