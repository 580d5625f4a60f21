/* The elementwise math of one LSTM, GRU or RNN time step, fused into one pass over the step's arrays.
 *
 * Included twice by _kernels.c: once for the baseline instruction set and once compiled for
 * AVX2+FMA, every name suffixed by K(). Each loop is written so the compiler vectorizes it: no
 * branches (selects only), no library calls. numpy's float32 exp and tanh run at 2-4 ns an
 * element on CPUs without AVX-512 and each numpy call is one more pass over memory; here an
 * element of a step costs a few cycles.
 *
 * Layout as in layers/lstm.py and layers/gru.py: feature-major, a gate block is `m` = n*streams
 * contiguous floats, and the logistic gates' pre-activations come halved (the weights were), so
 * σ(z) = 1 / (1 + exp(-2 zh)).
 *
 * The loops go through the blocks CHUNK elements at a time, one array at a time within a chunk:
 * the blocks lie 4 KB multiples apart, so one loop reading and writing all of a step's twenty
 * arrays at the same offset would keep twenty lines in one set of the 8-way L1 cache and miss on
 * every access (it ran slower than numpy). A chunk's gates wait in small arrays on the stack.
 */
#define CHUNK 64
#define CHUNKS(e0, len, m) \
    for (Py_ssize_t e0 = 0, len = (m) < CHUNK ? (m) : CHUNK; e0 < (m); \
         e0 += CHUNK, len = (m) - e0 < CHUNK ? (m) - e0 : CHUNK)
#define EACH(j, len) _Pragma("GCC ivdep") for (Py_ssize_t j = 0; j < (len); j++)

/* exp(x) for float32 (Cephes' expf: 2^k times a degree-6 polynomial, about 1 ulp); x clamped to
 * [-87, 88] so that 2^k stays a normal float (exp(-87) = 1.6e-38, far below any gate's resolution). */
static inline __attribute__((always_inline)) float K(exp1)(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    x = x - k * 0.693359375f;
    x = x - k * -2.12194440e-4f;
    float z = x * x;
    float y = (((((1.9875691500e-4f * x + 1.3981999507e-3f) * x + 8.3334519073e-3f) * x
                 + 4.1665795894e-2f) * x + 1.6666665459e-1f) * x + 5.0000001201e-1f) * z + x + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return y * scale;
}

/* tanh(x) for float32: Cephes' odd polynomial below |x| = 0.625, 1 - 2/(exp(2|x|) + 1) above. */
static inline __attribute__((always_inline)) float K(tanh1)(float x)
{
    float a = x < 0.0f ? -x : x;
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
                    + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z * a + a;
    float big = 1.0f - 2.0f / (K(exp1)(2.0f * a) + 1.0f);
    float r = a < 0.625f ? small : big;
    return x < 0.0f ? -r : r;
}

/* σ(2 zh) for a pre-halved pre-activation zh. */
static inline __attribute__((always_inline)) float K(sigmoid2)(float zh)
{
    return 1.0f / (1.0f + K(exp1)(-2.0f * zh));
}

/* The layouts every step kernel takes (layers/lstm.py's `blocks`): `R` rows of `L` = m / R floats
 * per block. Feature-major (the training loops): R = 1, a gate block is L = n*streams contiguous
 * floats and block k starts at k L. Rows (the steppers): R = streams, row r of an array of B blocks
 * starts at r B L and its block k at r B L + k L, L = n. The wrappers in _kernels.c find R from the
 * arrays' shapes. */

/* LSTM, one step, one row: the gates from their pre-activations, the new cell and output.
 *   g (4 blocks): in: the recurrent part of the pre-activations i f o g (i f o halved); out: the gates
 *   c' = f c + i g,  tc = tanh(c'),  h' = o tc
 * With peepholes (peep, P = [pi pf po] / 2, halved like the i f o rows) i and f also see the cell
 * before the step, o the cell after it. Backward needs nothing more: it derives the gate deltas'
 * factors from g, c and tc (lstm_back). L floats of each block, block k at k B: B = L for whole
 * blocks, larger for a slice of the units (the step loop's threads, _loop.h). */
static inline __attribute__((always_inline)) void
K(lstm_row)(float *restrict g, const float *restrict xu, const float *restrict c, float *restrict c1,
            float *restrict tc, float *restrict h1, const float *restrict P, Py_ssize_t L, Py_ssize_t B,
            const int peep)
{
    CHUNKS(e0, len, L) {
        float i[CHUNK], f[CHUNK], gg[CHUNK], cn[CHUNK];
        float *gi = g + e0, *gf = g + B + e0, *go = g + 2 * B + e0, *gg_ = g + 3 * B + e0;
        const float *xi = xu + e0, *xf = xu + B + e0, *xo = xu + 2 * B + e0, *xg = xu + 3 * B + e0;
        const float *pi = P + e0, *pf = P + B + e0, *po = P + 2 * B + e0, *cp = c + e0;
        if (peep) {
            EACH(j, len) gi[j] = i[j] = K(sigmoid2)(gi[j] + xi[j] + pi[j] * cp[j]);
            EACH(j, len) gf[j] = f[j] = K(sigmoid2)(gf[j] + xf[j] + pf[j] * cp[j]);
        } else {
            EACH(j, len) gi[j] = i[j] = K(sigmoid2)(gi[j] + xi[j]);
            EACH(j, len) gf[j] = f[j] = K(sigmoid2)(gf[j] + xf[j]);
        }
        EACH(j, len) gg_[j] = gg[j] = K(tanh1)(gg_[j] + xg[j]);
        EACH(j, len) c1[e0 + j] = cn[j] = f[j] * cp[j] + i[j] * gg[j];
        if (peep) {
            EACH(j, len) go[j] = K(sigmoid2)(go[j] + xo[j] + po[j] * cn[j]);
        } else {
            EACH(j, len) go[j] = K(sigmoid2)(go[j] + xo[j]);
        }
        EACH(j, len) tc[e0 + j] = K(tanh1)(cn[j]);
        EACH(j, len) h1[e0 + j] = go[j] * tc[e0 + j];
    }
}

/* lstm_step over R rows (P NULL: no peepholes). */
static void K(lstm_step)(float *g, const float *xu, const float *c, float *c1, float *tc, float *h1,
                         const float *P, Py_ssize_t m, Py_ssize_t R)
{
    Py_ssize_t L = m / R;
    for (Py_ssize_t r = 0; r < R; r++) {
        Py_ssize_t a = 4 * L * r, s = L * r;
        if (P)
            K(lstm_row)(g + a, xu + a, c + s, c1 + s, tc + s, h1 + s, P + 3 * L * r, L, L, 1);
        else
            K(lstm_row)(g + a, xu + a, c + s, c1 + s, tc + s, h1 + s, NULL, L, L, 0);
    }
}

/* LSTM backward, one step (feature-major), from what the forward step left: the gates
 * g = [i f o gg], the cell c before the step and tc = tanh(c'). dh += DH; dc += dh o tanh'(c');
 * the gate deltas d = [dc gg σ'(i), dc c σ'(f), dh tc σ'(o), dc i tanh'(gg)]; then dc *= f, the
 * cell delta for the step before. With peepholes (peep, P = [pi pf po] not halved): do also
 * reaches the cell after the step, dc += do po, the cell before gets di pi + df pf besides dc f,
 * and dP += [di c, df c, do c'] per stream, c' = f c + i gg recomputed. m floats of each block, block
 * k at k B (B as in lstm_row). */
static inline __attribute__((always_inline)) void
K(lstm_back_body)(float *restrict dh, float *restrict dc, const float *restrict DH,
                  const float *restrict g, const float *restrict c, const float *restrict tc,
                  float *restrict d, const float *restrict P, float *restrict dP, Py_ssize_t m,
                  Py_ssize_t B, const int peep)
{
    CHUNKS(e0, len, m) {
        float h[CHUNK], cc[CHUNK], dd[CHUNK];
        const float *i = g + e0, *f = g + B + e0, *o = g + 2 * B + e0, *gg = g + 3 * B + e0;
        const float *cp = c + e0, *t = tc + e0, *pi = P + e0, *pf = P + B + e0, *po = P + 2 * B + e0;
        float *di = d + e0, *df = d + B + e0, *dg = d + 3 * B + e0;
        EACH(j, len) dh[e0 + j] = h[j] = dh[e0 + j] + DH[e0 + j];
        EACH(j, len) d[2 * B + e0 + j] = dd[j] = (o[j] - o[j] * o[j]) * t[j] * h[j];
        if (peep) {
            EACH(j, len) cc[j] = dc[e0 + j] + h[j] * ((1.0f - t[j] * t[j]) * o[j]) + dd[j] * po[j];
            EACH(j, len) dP[2 * B + e0 + j] += dd[j] * (f[j] * cp[j] + i[j] * gg[j]);
        } else {
            EACH(j, len) cc[j] = dc[e0 + j] + h[j] * ((1.0f - t[j] * t[j]) * o[j]);
        }
        EACH(j, len) di[j] = (i[j] - i[j] * i[j]) * gg[j] * cc[j];
        EACH(j, len) df[j] = (f[j] - f[j] * f[j]) * cp[j] * cc[j];
        EACH(j, len) dg[j] = (1.0f - gg[j] * gg[j]) * i[j] * cc[j];
        if (peep) {
            EACH(j, len) dP[e0 + j] += di[j] * cp[j];
            EACH(j, len) dP[B + e0 + j] += df[j] * cp[j];
            EACH(j, len) dc[e0 + j] = cc[j] * f[j] + di[j] * pi[j] + df[j] * pf[j];
        } else {
            EACH(j, len) dc[e0 + j] = cc[j] * f[j];
        }
    }
}

static void K(lstm_back)(float *dh, float *dc, const float *DH, const float *g, const float *c,
                         const float *tc, float *d, const float *P, float *dP, Py_ssize_t m)
{
    if (P)
        K(lstm_back_body)(dh, dc, DH, g, c, tc, d, P, dP, m, m, 1);
    else
        K(lstm_back_body)(dh, dc, DH, g, c, tc, d, NULL, NULL, m, m, 0);
}

/* GRU, first half of a step, one row: zr (2 blocks) holds the recurrent part of the halved
 * pre-activations of z and r, xu (3 blocks) the input part of z r c; out: the gates σ(z), σ(r),
 * and rh = r h, the input of wh. L floats of each block, block k at k B (as in lstm_row). */
static inline __attribute__((always_inline)) void
K(gru_zr_row)(float *restrict zr, const float *restrict xu, const float *restrict h, float *restrict rh,
              Py_ssize_t L, Py_ssize_t B)
{
    CHUNKS(e0, len, L) {
        float *z = zr + e0, *r = zr + B + e0;
        const float *xz = xu + e0, *xr = xu + B + e0;
        EACH(j, len) z[j] = K(sigmoid2)(z[j] + xz[j]);
        EACH(j, len) r[j] = K(sigmoid2)(r[j] + xr[j]);
        EACH(j, len) rh[e0 + j] = r[j] * h[e0 + j];
    }
}

static void K(gru_zr)(float *zr, const float *xu, const float *h, float *rh, Py_ssize_t m, Py_ssize_t R)
{
    Py_ssize_t L = m / R;
    for (Py_ssize_t r = 0; r < R; r++)
        K(gru_zr_row)(zr + 2 * L * r, xu + 3 * L * r, h + L * r, rh + L * r, L, L);
}

/* GRU, second half, one row: c holds wh(r h) (halved unless the candidate is tanh), xu's third
 * block uh(x); out: the candidate c = act(wh(r h) + uh(x)) and h' = c + z (h - c); in training
 * P = [(h - c) σ'(z), h σ'(r), (1 - z) act'(c)] (see gru.py). m floats of each block, block k at k B. */
static inline __attribute__((always_inline)) void
K(gru_body)(float *restrict c, const float *restrict xu, const float *restrict zr,
            const float *restrict h, float *restrict h1, float *restrict P, Py_ssize_t m,
            Py_ssize_t B, const int tanh_act, const int train)
{
    CHUNKS(e0, len, m) {
        float a[CHUNK], hc[CHUNK];
        const float *z = zr + e0, *r = zr + B + e0, *hp = h + e0, *xh = xu + 2 * B + e0;
        float *cp = c + e0;
        EACH(j, len) cp[j] = a[j] = tanh_act ? K(tanh1)(cp[j] + xh[j]) : K(sigmoid2)(cp[j] + xh[j]);
        EACH(j, len) hc[j] = hp[j] - a[j];
        EACH(j, len) h1[e0 + j] = a[j] + z[j] * hc[j];
        if (train) {
            EACH(j, len) P[e0 + j] = (z[j] - z[j] * z[j]) * hc[j];
            EACH(j, len) P[B + e0 + j] = (r[j] - r[j] * r[j]) * hp[j];
            EACH(j, len) P[2 * B + e0 + j] = (tanh_act ? 1.0f - a[j] * a[j] : a[j] - a[j] * a[j]) * (1.0f - z[j]);
        }
    }
}

static void K(gru_step)(float *c, const float *xu, const float *zr, const float *h, float *h1,
                        float *P, Py_ssize_t m, Py_ssize_t R, int tanh_act)
{
    Py_ssize_t L = m / R;
    for (Py_ssize_t r = 0; r < R; r++) {
        float *cr = c + L * r, *h1r = h1 + L * r, *Pr = P ? P + 3 * L * r : NULL;
        const float *xr = xu + 3 * L * r, *zrr = zr + 2 * L * r, *hr = h + L * r;
        if (P && tanh_act)
            K(gru_body)(cr, xr, zrr, hr, h1r, Pr, L, L, 1, 1);
        else if (P)
            K(gru_body)(cr, xr, zrr, hr, h1r, Pr, L, L, 0, 1);
        else if (tanh_act)
            K(gru_body)(cr, xr, zrr, hr, h1r, NULL, L, L, 1, 0);
        else
            K(gru_body)(cr, xr, zrr, hr, h1r, NULL, L, L, 0, 0);
    }
}

/* GRU backward, after the candidate's delta went through wh into drh: dz = dh P[z],
 * dr = drh P[r], and dh = dh z + drh r (wzr's share is added by a matmul after). m floats of each
 * block, block k at k B. */
static inline __attribute__((always_inline)) void
K(gru_back_body)(float *restrict dh, const float *restrict drh, const float *restrict zr,
                 const float *restrict P, float *restrict d, Py_ssize_t m, Py_ssize_t B)
{
    CHUNKS(e0, len, m) {
        EACH(j, len) d[e0 + j] = P[e0 + j] * dh[e0 + j];
        EACH(j, len) d[B + e0 + j] = P[B + e0 + j] * drh[e0 + j];
        EACH(j, len) dh[e0 + j] = dh[e0 + j] * zr[e0 + j] + drh[e0 + j] * zr[B + e0 + j];
    }
}

static void K(gru_back)(float *dh, const float *drh, const float *zr, const float *P, float *d, Py_ssize_t m)
{
    K(gru_back_body)(dh, drh, zr, P, d, m, m);
}

/* Darknet's activations that are x above zero and a x below (leaky a = 0.1, relie 0.01), in place:
 * the same bits as activations.py's max(x, a x), signed zeros and NaN included. */
static void K(slope_act)(float *x, Py_ssize_t m, float a)
{
    EACH(j, m) x[j] = x[j] > 0.0f ? x[j] : a * x[j];
}

/* Their derivative from the output y, 1 or a, times delta when there is one (delta through the
 * activation; delta may be out itself), as activations.py's gradient_into and delta_through. */
static void K(slope_grad)(const float *y, const float *delta, float *out, Py_ssize_t m, float a)
{
    if (delta) {
        EACH(j, m) out[j] = delta[j] * (y[j] > 0.0f ? 1.0f : a);
    } else {
        EACH(j, m) out[j] = y[j] > 0.0f ? 1.0f : a;
    }
}

/* One [rnn] step of layers/rnn.py for leaky and relie (slope a) after the self sub-layer's
 * product b: b = f(b + bias) in place and s1 = x + b (+ s, the shortcut), the next state. The
 * operations of rnn.py's numpy form, in its order: the same bits. */
static void K(rnn_step)(float *restrict b, const float *restrict bias, const float *restrict x,
                        float *restrict s1, const float *restrict s, Py_ssize_t m, float a)
{
    EACH(j, m) {
        float v = b[j] + bias[j];
        v = v > 0.0f ? v : a * v;
        b[j] = v;
        s1[j] = x[j] + v;
    }
    if (s) {
        EACH(j, m) s1[j] = s1[j] + s[j];
    }
}

/* Its way back, one step: ds1 += w (+ ds, the shortcut), the state's delta complete, then
 * d = ds1 f'(y), the delta before the activation (f'(y) = y > 0 ? 1 : a, from the output y). */
static void K(rnn_back)(float *restrict ds1, const float *restrict w, const float *restrict y,
                        float *restrict d, const float *restrict ds, Py_ssize_t m, float a)
{
    if (ds) {
        EACH(j, m) {
            float v = ds1[j] + w[j];
            v = v + ds[j];
            ds1[j] = v;
            d[j] = v * (y[j] > 0.0f ? 1.0f : a);
        }
    } else {
        EACH(j, m) {
            float v = ds1[j] + w[j];
            ds1[j] = v;
            d[j] = v * (y[j] > 0.0f ? 1.0f : a);
        }
    }
}

/* Softmax over each of the `slices` slices of `width` floats of x, at temperature t
 * (layers/softmax.py's forward, as Darknet: exp(x/t - max/t), then divided by the sum). The max
 * and the sum run in 8 lanes, so that they vectorize (a single running sum waits on each add). */
static void K(softmax)(const float *restrict x, float *restrict p, Py_ssize_t slices,
                       Py_ssize_t width, float t)
{
    for (Py_ssize_t s = 0; s < slices; s++) {
        const float *in = x + s * width;
        float *out = p + s * width;
        float lane[8], top = in[0], sum = 0.0f;
        Py_ssize_t body = width - width % 8, j;
        for (int l = 0; l < 8; l++)
            lane[l] = top;
        for (j = 0; j < body; j += 8)
            for (int l = 0; l < 8; l++)
                lane[l] = in[j + l] > lane[l] ? in[j + l] : lane[l];
        for (int l = 0; l < 8; l++)
            top = lane[l] > top ? lane[l] : top;
        for (; j < width; j++)
            top = in[j] > top ? in[j] : top;
        if (t == 1.0f) {
            EACH(k, width) out[k] = K(exp1)(in[k] - top);
        } else {
            float shift = top / t;
            EACH(k, width) out[k] = K(exp1)(in[k] / t - shift);
        }
        for (int l = 0; l < 8; l++)
            lane[l] = 0.0f;
        for (j = 0; j < body; j += 8)
            for (int l = 0; l < 8; l++)
                lane[l] += out[j + l];
        for (int l = 0; l < 8; l++)
            sum += lane[l];
        for (; j < width; j++)
            sum += out[j];
        EACH(k, width) out[k] = out[k] / sum;
    }
}
