/* [sru]'s recurrence (layers/sru.py), over all T steps in one call: the numpy references
 * sru_step and sru_back there are what these must equal (tests/test_sru.py), to float32 rounding.
 *
 * Included by _kinds.h three times: twice for the kernels, K()-named (baseline and AVX2+FMA, after
 * _steps.h, whose K(sigmoid2) and K(tanh1) they use), and once with KIND_WRAPPERS defined for the Python
 * functions and SRU_METHODS, their method-table entries.
 *
 * Layout: rows, as the layer's one matmul makes them. Z (T, S, k n), k = 3 or 4, the blocks
 * x~ | wf(x) | wr(x) [| ws(x)] of n each per step and stream; C (T+1, S, n) the cells, C[0] the one
 * before the datum; v (2n + k n,) = vf | vr | the sub-layers' biases (zero where batchnorm or the input
 * projection added them). With k = 3 the highway s is the layer's input: rows (T, S, n), or for
 * one-hot input the ids (T, S) int64 of its rows, s_j = [j == id] made in the loop (no rows read).
 * Each (step, stream) is a few loops over the n features that the compiler vectorizes (one loop
 * per gate: GCC vectorizes the two sigmoids fused in one loop 6x slower); the steps run in order,
 * since c' needs c. But a stream's unit needs no other stream's, nor unit's: sru_step takes a range
 * of streams [s0, s1), sru_back one of streams and one of units [j0, j1), and the wrappers share them among the step
 * loops' team (_loop.h), each thread all T steps of its share with no barrier between them
 * (team_share, _kernels.c). The loops are memory-bound (T S n = 512K elements per array at 32
 * streams x 64 steps x 256): the second core brings its bandwidth.
 */
#ifndef KIND_WRAPPERS

#define SRU_PIECE 512  /* the most units sru_back sums at once (its sums on the stack: 12 KB) */

/* Forward: the biases added to Z's blocks (in place: backward reads x~ and s from Z), then
 * f = σ(wf(x) + vf c), r = σ(wr(x) + vr c) into the wf, wr blocks of Z; C[t+1] = c' = f c + (1 - f) x~.
 * With H (T, S, n): also the output h' = r (g(c') - s) + s for g linear or tanh (`tanh_g`), s from
 * Z's ws block (k = 4), from `hs` (T, S, n) or the one-hot `ids` (T, S) (k = 3). Given W (n, k n)
 * with the ids, each row of Z is first copied from W's row at its id (the one-hot input's products,
 * a row gather: Z is read from cache, not from memory, after). Per row the two gates are a loop
 * each and the rest one loop, a tanh g two more (sru_step_row, its flags and NULLs constants where
 * it is called). */
static inline __attribute__((always_inline)) void K(sru_step_row)(
    float *restrict x, const float *restrict b, const float *restrict c, float *restrict c1,
    float *restrict h, const float *restrict hs, Py_ssize_t id, Py_ssize_t n, int ws, int with_h, int tanh_g)
{
    const float *f = x + n, *r = x + 2 * n;
    float *wsx = x + 3 * n;
    EACH(j, n) {
        float xj = x[j] + b[j];
        float c1j = f[j] * c[j] + (1.0f - f[j]) * xj;
        x[j] = xj;
        c1[j] = c1j;
        float sj = ws ? wsx[j] + b[3 * n + j] : !with_h ? 0.0f : hs ? hs[j] : j == id ? 1.0f : 0.0f;
        if (ws)
            wsx[j] = sj;
        if (with_h)
            h[j] = tanh_g ? c1j : r[j] * (c1j - sj) + sj;
    }
    if (with_h && tanh_g) {
        EACH(j, n) h[j] = K(tanh1)(h[j]);
        EACH(j, n) {
            float sj = ws ? wsx[j] : hs ? hs[j] : j == id ? 1.0f : 0.0f;
            h[j] = r[j] * (h[j] - sj) + sj;
        }
    }
}

static inline __attribute__((always_inline)) void K(sru_step_all)(
    float *restrict Z, const float *restrict v, float *restrict C, float *restrict H, const float *restrict hs,
    const int64_t *restrict ids, const float *restrict W, Py_ssize_t T, Py_ssize_t S, Py_ssize_t n,
    Py_ssize_t k, Py_ssize_t s0, Py_ssize_t s1, int tanh_g)
{
    const float *vf = v, *vr = v + n, *b = v + 2 * n;
    for (Py_ssize_t t = 0; t < T; t++)
        for (Py_ssize_t s = s0; s < s1; s++) {
            Py_ssize_t row = t * S + s;
            float *x = Z + row * k * n, *f = x + n, *r = x + 2 * n;
            if (W)
                memcpy(x, W + ids[row] * k * n, k * n * sizeof(float));
            const float *c = C + row * n;
            float *c1 = C + (row + S) * n, *h = H ? H + row * n : NULL;
            EACH(j, n) f[j] = K(sigmoid2)(0.5f * ((f[j] + b[n + j]) + vf[j] * c[j]));
            EACH(j, n) r[j] = K(sigmoid2)(0.5f * ((r[j] + b[2 * n + j]) + vr[j] * c[j]));
            if (k == 4 && H)
                K(sru_step_row)(x, b, c, c1, h, NULL, -1, n, 1, 1, tanh_g);
            else if (k == 4)
                K(sru_step_row)(x, b, c, c1, NULL, NULL, -1, n, 1, 0, 0);
            else if (H && ids)
                K(sru_step_row)(x, b, c, c1, h, NULL, ids[row], n, 0, 1, tanh_g);
            else if (H)
                K(sru_step_row)(x, b, c, c1, h, hs + row * n, -1, n, 0, 1, tanh_g);
            else
                K(sru_step_row)(x, b, c, c1, NULL, NULL, -1, n, 0, 0, 0);
        }
}

/* sru_step for the streams [s0, s1) only: a stream's recurrence is its own, so a thread can run all
 * T steps of its streams, whole rows, with no other thread's (team_share, _kernels.c). */
static void K(sru_step)(float *restrict Z, const float *restrict v, float *restrict C, float *restrict H,
                        const float *restrict hs, const int64_t *restrict ids, const float *restrict W,
                        Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s0, Py_ssize_t s1,
                        int tanh_g)
{
    if (tanh_g)
        K(sru_step_all)(Z, v, C, H, hs, ids, W, T, S, n, k, s0, s1, 1);
    else
        K(sru_step_all)(Z, v, C, H, hs, ids, W, T, S, n, k, s0, s1, 0);
}

#ifdef HAVE_AVX2
/* sru_step compiled for AVX-512 (16 lanes), on CPUs that have it: the step is bound by its two
 * sigmoids' arithmetic more than by memory (a call whose arrays sit in cache took 0.8 of the time
 * of one from memory), and 16 lanes do it in fewer instructions. The same operations per element,
 * inlined from the AVX2 pass's: the same bits (tests/test_sru.py). */
__attribute__((target("avx512f,avx2,fma"))) static void sru_step_wide(
    float *restrict Z, const float *restrict v, float *restrict C, float *restrict H, const float *restrict hs,
    const int64_t *restrict ids, const float *restrict W, Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k,
    Py_ssize_t s0, Py_ssize_t s1, int tanh_g)
{
    if (tanh_g)
        K(sru_step_all)(Z, v, C, H, hs, ids, W, T, S, n, k, s0, s1, 1);
    else
        K(sru_step_all)(Z, v, C, H, hs, ids, W, T, S, n, k, s0, s1, 0);
}
#endif

/* Backward, last step first. Without dh: dZ comes in with δc' from h' in its x~ block and δr in its
 * wr block. With dh (T, S, n), the delta of h' for g linear or tanh (`tanh_g`), they are made here,
 * each row just before its step: δr = dh (g(c') - s), δc' = dh r g'(c') (g(c') made again, into the
 * wr block first), and δs = dh - dh r into dZ's ws block (k = 4) or into ds (k = 3, s from hs; none
 * for one-hot `ids`, whose delta goes nowhere: given dW (n, k n) instead, each finished row of dZ is
 * added to dW's row at its id, the one-hot input's weight gradient, while the row is in cache, and
 * dZ may then hold D = 2 steps, step t's rows at t mod 2: nothing after reads them). Then the
 * deltas of x~, wf(x), wr(x) replace them: δc = δc' f + δwf vf + δwr vr reaches the step before's
 * δc' (not past the first step: truncated BPTT). The sums of the gradients: dv (2n + k n,) +=
 * [Σ δwf c, Σ δwr c, Σ of dZ's rows (the biases' gradient)], each made first in a sum of the call's
 * own (sru_back_all's `acc`, for at most SRU_PIECE units): a thread then writes no cache line of
 * dv, which the threads share, at every row. One row (step, stream) is one loop over its units
 * (sru_back_row), so that each array is read once per row; its flags and NULLs are constants where
 * it is called, and the compiler makes one loop of each. */
static inline __attribute__((always_inline)) void K(sru_back_row)(
    float *restrict dx, const float *restrict x, const float *restrict c, const float *restrict c1,
    const float *restrict v, float *restrict dv, const float *restrict d, const float *restrict sj,
    Py_ssize_t id, float *restrict dsj, float *restrict before, Py_ssize_t n, Py_ssize_t m, Py_ssize_t k,
    int with_dh, int carry_in, int carry_out, int tanh_g)
{
    const float *f = x + n, *r = x + 2 * n, *vf = v, *vr = v + n;
    float *df = dx + n, *dr = dx + 2 * n, *dvf = dv, *dvr = dv + SRU_PIECE, *db = dv + 2 * SRU_PIECE;
    if (with_dh && tanh_g)
        EACH(j, m) dr[j] = K(tanh1)(c1[j]);
    EACH(j, m) {
        float g = with_dh && tanh_g ? dr[j] : c1[j];
        float dc = with_dh ? (carry_in ? dx[j] : 0.0f) + (tanh_g ? d[j] * r[j] * (1.0f - g * g) : d[j] * r[j])
                           : dx[j];  /* δc' */
        float s = sj ? sj[j] : j == id ? 1.0f : 0.0f;
        float drj = (with_dh ? d[j] * (g - s) : dr[j]) * r[j] * (1.0f - r[j]);
        float dfj = dc * (c[j] - x[j]) * f[j] * (1.0f - f[j]);
        float dxj = dc * (1.0f - f[j]);
        if (with_dh && dsj)
            dsj[j] = d[j] - d[j] * r[j];
        if (carry_out) {
            float carry = dc * f[j] + dfj * vf[j] + drj * vr[j];
            before[j] = with_dh ? carry : before[j] + carry;
        }
        dx[j] = dxj;
        df[j] = dfj;
        dr[j] = drj;
        dvf[j] += dfj * c[j];
        dvr[j] += drj * c[j];
        db[j] += dxj;
        db[SRU_PIECE + j] += dfj;
        db[2 * SRU_PIECE + j] += drj;
    }
    if (k == 4)
        EACH(j, m) db[3 * SRU_PIECE + j] += dx[3 * n + j];
}

/* sru_back for s given as rows (one_hot 0: Z's ws block or hs) or as ids (one_hot 1). */
static inline __attribute__((always_inline)) void K(sru_back_all)(
    float *restrict dZ, const float *restrict Z, const float *restrict C, const float *restrict v,
    float *restrict dv, const float *restrict dh, const float *restrict hs, const int64_t *restrict ids,
    float *restrict ds, float *restrict dW, Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k,
    Py_ssize_t D, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t s0, Py_ssize_t s1, int one_hot, int tanh_g)
{
    Py_ssize_t m = j1 - j0;
    float acc[(2 + 4) * SRU_PIECE] __attribute__((aligned(64))) = {0};  /* dv's blocks, SRU_PIECE apart */
    v += j0;
    for (Py_ssize_t t = T - 1; t >= 0; t--)
        for (Py_ssize_t s = s0; s < s1; s++) {
            Py_ssize_t row = t * S + s;
            const float *x = Z + row * k * n + j0, *c = C + row * n + j0, *c1 = C + (row + S) * n + j0;
            float *dx = dZ + (t % D * S + s) * k * n + j0;
            float *before = t ? dZ + ((t - 1) % D * S + s) * k * n + j0 : NULL;
            if (!dh) {
                if (t)
                    K(sru_back_row)(dx, x, c, c1, v, acc, NULL, NULL, -1, NULL, before, n, m, k, 0, 1, 1, 0);
                else
                    K(sru_back_row)(dx, x, c, c1, v, acc, NULL, NULL, -1, NULL, NULL, n, m, k, 0, 1, 0, 0);
                continue;
            }
            const float *d = dh + row * n + j0, *sj = one_hot ? NULL : k == 4 ? x + 3 * n : hs + row * n + j0;
            float *dsj = one_hot ? NULL : k == 4 ? dx + 3 * n : ds + row * n + j0;
            Py_ssize_t id = one_hot ? ids[row] - j0 : -1;
            if (t == T - 1 && t)  /* dx holds the step after's δc from t < T - 1 on */
                K(sru_back_row)(dx, x, c, c1, v, acc, d, sj, id, dsj, before, n, m, k, 1, 0, 1, tanh_g);
            else if (t == T - 1)
                K(sru_back_row)(dx, x, c, c1, v, acc, d, sj, id, dsj, NULL, n, m, k, 1, 0, 0, tanh_g);
            else if (t)
                K(sru_back_row)(dx, x, c, c1, v, acc, d, sj, id, dsj, before, n, m, k, 1, 1, 1, tanh_g);
            else
                K(sru_back_row)(dx, x, c, c1, v, acc, d, sj, id, dsj, NULL, n, m, k, 1, 1, 0, tanh_g);
            if (one_hot && dW)
                for (Py_ssize_t q = 0; q < k; q++) {
                    float *g = dW + ids[row] * k * n + q * n + j0;
                    EACH(j, m) g[j] += dx[q * n + j];
                }
        }
    for (Py_ssize_t q = 0; q < 2 + k; q++)
        EACH(j, m) dv[q * n + j0 + j] += acc[q * SRU_PIECE + j];
}

static void K(sru_back)(float *restrict dZ, const float *restrict Z, const float *restrict C,
                        const float *restrict v, float *restrict dv, const float *restrict dh,
                        const float *restrict hs, const int64_t *restrict ids, float *restrict ds,
                        float *restrict dW, Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k, Py_ssize_t D,
                        Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t s0, Py_ssize_t s1, int tanh_g)
{
    for (Py_ssize_t p0 = j0, p1; p0 < j1; p0 = p1) {  /* pieces of SRU_PIECE units: acc's size */
        p1 = j1 - p0 > SRU_PIECE ? p0 + SRU_PIECE : j1;
        if (ids && tanh_g)
            K(sru_back_all)(dZ, Z, C, v, dv, dh, NULL, ids, NULL, dW, T, S, n, k, D, p0, p1, s0, s1, 1, 1);
        else if (ids)
            K(sru_back_all)(dZ, Z, C, v, dv, dh, NULL, ids, NULL, dW, T, S, n, k, D, p0, p1, s0, s1, 1, 0);
        else if (tanh_g)
            K(sru_back_all)(dZ, Z, C, v, dv, dh, hs, NULL, ds, NULL, T, S, n, k, D, p0, p1, s0, s1, 0, 1);
        else
            K(sru_back_all)(dZ, Z, C, v, dv, dh, hs, NULL, ds, NULL, T, S, n, k, D, p0, p1, s0, s1, 0, 0);
    }
}

#else

/* One call of sru_step or sru_back, its arguments as the kernels take them (W: the table forward, dW
 * backward), shared among the threads (team_share), each thread all T steps of its share: the steps'
 * order binds a stream's unit only to itself, so the threads meet at no barrier inside the call.
 * Both share the streams, whole rows (a thread's pass over half of each row ran 1.1-1.2x slower
 * forward, 1.2-1.4x backward). Backward's gradient sums over the streams are made per group of
 * streams, SRU_GROUPS groups of ceil(S / SRU_GROUPS) (fixed by S alone), each into a sum of its own
 * (`sums`), and those are added to dv in the groups' order after the call: the same additions in the
 * same order on any number of threads.
 * The one exception is backward with one-hot ids and dW, whose rows of dW gather every stream:
 * it shares the units, in shares of SRU_SHARE, a multiple of the vector width. Either way each
 * element is made by the same code on any threads: the same bits. */
#define SRU_SHARE 16
#define SRU_GROUPS 4
typedef struct {
    int g;
    float *dZ, *Z, *C, *H, *dv, *ds, *W, *sums;
    const float *v, *dh, *hs;
    const int64_t *ids;
    Py_ssize_t T, S, n, k, D, G;  /* G: the streams of a group of backward's sums */
} sru_job;

static void sru_streams(const void *job, Py_ssize_t s0, Py_ssize_t s1)
{
    const sru_job *J = job;
#ifdef HAVE_AVX2
    if (avx512) {
        sru_step_wide(J->Z, J->v, J->C, J->H, J->hs, J->ids, J->W, J->T, J->S, J->n, J->k, s0, s1, J->g);
        return;
    }
#endif
    CALL(sru_step, J->Z, J->v, J->C, J->H, J->hs, J->ids, J->W, J->T, J->S, J->n, J->k, s0, s1, J->g);
}

static void sru_units(const void *job, Py_ssize_t j0, Py_ssize_t j1)
{
    const sru_job *J = job;
    CALL(sru_back, J->dZ, J->Z, J->C, J->v, J->dv, J->dh, J->hs, J->ids, J->ds, J->W, J->T, J->S, J->n, J->k,
         J->D, j0, j1, 0, J->S, J->g);
}

/* The stream groups [g0, g1), each summing into its own of `sums` (zeros before), SRU_GW(J) apart. */
#define SRU_GW(J) (((2 + (J)->k) * (J)->n + 15) / 16 * 16)  /* whole cache lines: no line shared by two */
static void sru_groups(const void *job, Py_ssize_t g0, Py_ssize_t g1)
{
    const sru_job *J = job;
    for (Py_ssize_t q = g0; q < g1; q++) {
        Py_ssize_t s0 = q * J->G, s1 = s0 + J->G < J->S ? s0 + J->G : J->S;
        CALL(sru_back, J->dZ, J->Z, J->C, J->v, J->sums + q * SRU_GW(J), J->dh, J->hs, NULL, J->ds, NULL, J->T,
             J->S, J->n, J->k, J->D, 0, J->n, s0, s1, J->g);
    }
}

/* Whether the highway argument holds int64 ids (one-hot rows) rather than float32 rows. */
static int holds_ids(PyObject *obj)
{
    Py_buffer b;
    if (PyObject_GetBuffer(obj, &b, PyBUF_ND | PyBUF_FORMAT) < 0) {
        PyErr_Clear();  /* get_typed then says what it expected */
        return 0;
    }
    int ids = b.itemsize == 8 && (strcmp(b.format, "q") == 0 || strcmp(b.format, "l") == 0);
    PyBuffer_Release(&b);
    return ids;
}

/* T, S, n, k of Z (T, S, k n), C (T+1, S, n), v and dv (2n + k n,), H, ds (T, S, n) where given
 * (NULL: not given) and hs, (T, S, n) rows or with `ids` (T, S) ids in [0, n); hs given exactly
 * when k = 3 and H (dh) is, and ds exactly with rows hs in backward; W (or dW) (n, k n) only with
 * ids. 0, or -1 with a ValueError. */
static int sru_shapes(const Py_buffer *Z, const Py_buffer *C, const Py_buffer *v, const Py_buffer *dv,
                      const Py_buffer *H, const Py_buffer *hs, const Py_buffer *ds, const Py_buffer *W, int ids,
                      Py_ssize_t dims[4])
{
    Py_ssize_t n = C->ndim == 3 ? C->shape[2] : 0;
    Py_ssize_t k = n && Z->ndim == 3 ? Z->shape[2] / n : 0;
    int ok = Z->ndim == 3 && C->ndim == 3 && v->ndim == 1 && n && (k == 3 || k == 4) && Z->shape[2] == k * n &&
             C->shape[0] == Z->shape[0] + 1 && C->shape[1] == Z->shape[1] && v->shape[0] == (2 + k) * n &&
             (!dv || (dv->ndim == 1 && dv->shape[0] == (2 + k) * n)) && (!H || (k == 3) == (hs != NULL)) &&
             (!dv || !H || (hs != NULL && !ids) == (ds != NULL));
    const Py_buffer *rows[] = {H, ids ? NULL : hs, ds};
    for (int i = 0; i < 3; i++)
        ok = ok && (!rows[i] || (rows[i]->ndim == 3 && rows[i]->shape[0] == Z->shape[0] &&
                                 rows[i]->shape[1] == Z->shape[1] && rows[i]->shape[2] == n));
    ok = ok && (!ids || (hs->ndim == 2 && hs->shape[0] == Z->shape[0] && hs->shape[1] == Z->shape[1]));
    ok = ok && (!W || (ids && W->ndim == 2 && W->shape[0] == n && W->shape[1] == k * n));
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "sru: Z (T, S, k n) with k 3 or 4, C (T+1, S, n), v and dv (2n + k n,), "
                                          "h' and its delta (T, S, n), with s exactly when k = 3: rows (T, S, n) "
                                          "and their delta, or ids (T, S) and optionally W or dW (n, k n)");
        return -1;
    }
    dims[0] = Z->shape[0], dims[1] = Z->shape[1], dims[2] = n, dims[3] = k;
    return ids ? check_ids(hs->buf, Z->shape[0] * Z->shape[1], n, "sru") : 0;
}

/* The keyword g=: 0 (linear, the default) or 1 (tanh), the g that the kernels apply; -1 with a
 * TypeError or ValueError for anything else. */
static int sru_g(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!kwnames || PyTuple_GET_SIZE(kwnames) == 0)
        return 0;
    if (PyTuple_GET_SIZE(kwnames) != 1 || PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "g")) {
        PyErr_SetString(PyExc_TypeError, "sru: the one keyword is g");
        return -1;
    }
    long g = PyLong_AsLong(args[nargs]);
    if (g == -1 && PyErr_Occurred())
        return -1;
    if (g != 0 && g != 1) {
        PyErr_SetString(PyExc_ValueError, "sru: g is 0 (linear) or 1 (tanh)");
        return -1;
    }
    return (int)g;
}

static PyObject *sru_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    int g = sru_g(args, nargs, kwnames);
    if (g < 0)
        return NULL;
    if (nargs < 3 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError, "sru_step(Z, v, C[, H[, s[, W]]], g=0)");
        return NULL;
    }
    int ids = nargs > 4 && holds_ids(args[4]);
    if (get_typed(args, b, ids ? "FfFFqf" : "FfFFff", (int)nargs) < 0)
        return NULL;
    if (sru_shapes(&b[0], &b[2], &b[1], NULL, nargs > 3 ? &b[3] : NULL, nargs > 4 ? &b[4] : NULL, NULL,
                   nargs > 5 ? &b[5] : NULL, ids, d) < 0) {
        release(b, (int)nargs);
        return NULL;
    }
    sru_job J = {.g = g, .Z = F(0), .v = F(1), .C = F(2), .H = nargs > 3 ? F(3) : NULL,
                  .hs = nargs > 4 && !ids ? F(4) : NULL, .ids = ids ? (const int64_t *)b[4].buf : NULL,
                  .W = nargs > 5 ? F(5) : NULL, .T = d[0], .S = d[1], .n = d[2], .k = d[3]};
    PyObject *result = team_share(sru_streams, &J, J.S, 1, J.T * J.S * J.n);
    release(b, (int)nargs);
    return result;
}

static PyObject *sru_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    int g = sru_g(args, nargs, kwnames);
    if (g < 0)
        return NULL;
    if (nargs < 5 || nargs > 8) {
        PyErr_SetString(PyExc_TypeError, "sru_back(dZ, Z, C, v, dv[, dh[, s[, ds or dW]]], g=0)");
        return NULL;
    }
    int ids = nargs > 6 && holds_ids(args[6]);
    if (get_typed(args, b, ids ? "FfffFfqF" : "FfffFffF", (int)nargs) < 0)
        return NULL;
    const Py_buffer *last = nargs > 7 ? &b[7] : NULL;  /* ds for rows s, dW for ids */
    if (sru_shapes(&b[1], &b[2], &b[3], &b[4], nargs > 5 ? &b[5] : NULL, nargs > 6 ? &b[6] : NULL,
                   ids ? NULL : last, ids ? last : NULL, ids, d) < 0) {
        release(b, (int)nargs);
        return NULL;
    }
    Py_ssize_t D = b[0].ndim == 3 && b[0].shape[1] == d[1] && b[0].shape[2] == d[2] * d[3] ? b[0].shape[0] : 0;
    if (D != d[0] && !(D == 2 && ids && last)) {
        PyErr_SetString(PyExc_ValueError, "sru_back: dZ must have Z's shape (or 2 steps of it, with ids and dW)");
        release(b, (int)nargs);
        return NULL;
    }
    sru_job J = {.g = g, .dZ = F(0), .Z = F(1), .C = F(2), .v = F(3), .dv = F(4),
                  .dh = nargs > 5 ? F(5) : NULL, .hs = nargs > 6 && !ids ? F(6) : NULL,
                  .ids = ids ? (const int64_t *)b[6].buf : NULL, .ds = last && !ids ? F(7) : NULL,
                  .W = last && ids ? F(7) : NULL, .T = d[0], .S = d[1], .n = d[2], .k = d[3], .D = D};
    PyObject *result;
    if (J.ids) {
        result = team_share(sru_units, &J, J.n, SRU_SHARE, J.T * J.S * J.n);
    } else {
        J.G = (J.S + SRU_GROUPS - 1) / SRU_GROUPS;
        Py_ssize_t groups = (J.S + J.G - 1) / J.G, gw = SRU_GW(&J);
        J.sums = PyMem_Calloc(groups * gw, sizeof(float));
        result = J.sums ? team_share(sru_groups, &J, groups, 1, J.T * J.S * J.n) : PyErr_NoMemory();
        for (Py_ssize_t q = 0; result && q < groups; q++)
            for (Py_ssize_t i = 0; i < (2 + J.k) * J.n; i++)
                J.dv[i] += J.sums[q * gw + i];
        PyMem_Free(J.sums);
    }
    release(b, (int)nargs);
    return result;
}

#define SRU_METHOD(name, doc) {#name, (PyCFunction)(void (*)(void))name, METH_FASTCALL | METH_KEYWORDS, doc}
#define SRU_METHODS \
    SRU_METHOD(sru_step, "sru_step(Z, v, C[, H[, s[, W]]], g=0): [sru]'s biases added to Z, its gates f, r in place and the cells C[1:] over all steps; h' for g linear (0) or tanh (1) into H (s: rows, or one-hot ids, with which Z can be gathered from W)"), \
    SRU_METHOD(sru_back, "sru_back(dZ, Z, C, v, dv[, dh[, s[, ds or dW]]], g=0): back through sru_step, deltas in place in dZ; the gradients' sums dv accumulated (ds with rows s; with ids, dW += dZ's rows at their ids)"),

#endif
