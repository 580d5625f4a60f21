/* [sru]'s recurrence (layers/sru.py), over all T steps in one call: the numpy references
 * sru_step and sru_back there are what these must equal (tests/test_sru.py), to float32 rounding.
 *
 * Included by _kinds.h three times: twice for the kernels, K()-named (baseline and AVX2+FMA, after
 * _steps.h, whose K(sigmoid2) they use), and once with KIND_WRAPPERS defined for the Python
 * functions and SRU_METHODS, their method-table entries.
 *
 * Layout: rows, as the layer's one matmul makes them. Z (T, S, k n), k = 3 or 4, the blocks
 * x~ | wf(x) | wr(x) [| ws(x)] of n each per step and stream; C (T+1, S, n) the cells, C[0] the one
 * before the datum; v (2n + k n,) = vf | vr | the sub-layers' biases (zero where batchnorm or the input
 * projection added them). Each (step, stream) is a few loops over the n features that
 * the compiler vectorizes (one loop per gate: GCC vectorizes the two sigmoids fused in one loop 6x
 * slower); the steps run in order, since c' needs c. The streams are independent: with more than one
 * BLAS thread a call shares them with a helper thread (sru_run). The loops are memory-bound (T S n =
 * 512K elements per array at 32 streams x 64 steps x 256), and one core's share of the memory
 * bandwidth is what limits them: two cores, when both are free, run them faster.
 */
#ifndef KIND_WRAPPERS

#ifndef SRU_GROUP
#define SRU_GROUP 4  /* streams per share of a call (sru_run), and per row of backward's sums */
#endif

/* Forward: the biases added to Z's blocks (in place: backward reads x~ and s from Z), then
 * f = σ(wf(x) + vf c), r = σ(wr(x) + vr c) into the wf, wr blocks of Z; C[t+1] = c' = f c + (1 - f) x~.
 * With H (T, S, n): also h' = r (c' - s) + s, the output for a linear g, s from Z's ws block (k = 4)
 * or from `hs` (T, S, n) (k = 3). Per row the two gates are a loop each and the rest one loop
 * (sru_step_row, its flags constants where it is called). */
static inline __attribute__((always_inline)) void K(sru_step_row)(
    float *restrict x, const float *restrict b, const float *restrict c, float *restrict c1,
    float *restrict h, const float *restrict hs, Py_ssize_t n, int ws, int with_h)
{
    const float *f = x + n, *r = x + 2 * n;
    float *wsx = x + 3 * n;
    EACH(j, n) {
        float xj = x[j] + b[j];
        float c1j = f[j] * c[j] + (1.0f - f[j]) * xj;
        x[j] = xj;
        c1[j] = c1j;
        float sj = ws ? wsx[j] + b[3 * n + j] : with_h ? hs[j] : 0.0f;
        if (ws)
            wsx[j] = sj;
        if (with_h)
            h[j] = r[j] * (c1j - sj) + sj;
    }
}

static void K(sru_step)(float *restrict Z, const float *restrict v, float *restrict C, float *restrict H,
                        const float *restrict hs, Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k,
                        Py_ssize_t s0, Py_ssize_t s1)
{
    const float *vf = v, *vr = v + n, *b = v + 2 * n;
    for (Py_ssize_t t = 0; t < T; t++)
        for (Py_ssize_t s = s0; s < s1; s++) {
            Py_ssize_t row = t * S + s;
            float *x = Z + row * k * n, *f = x + n, *r = x + 2 * n;
            const float *c = C + row * n;
            float *c1 = C + (row + S) * n, *h = H ? H + row * n : NULL;
            EACH(j, n) f[j] = K(sigmoid2)(0.5f * ((f[j] + b[n + j]) + vf[j] * c[j]));
            EACH(j, n) r[j] = K(sigmoid2)(0.5f * ((r[j] + b[2 * n + j]) + vr[j] * c[j]));
            if (k == 4 && H)
                K(sru_step_row)(x, b, c, c1, h, NULL, n, 1, 1);
            else if (k == 4)
                K(sru_step_row)(x, b, c, c1, NULL, NULL, n, 1, 0);
            else if (H)
                K(sru_step_row)(x, b, c, c1, h, hs + row * n, n, 0, 1);
            else
                K(sru_step_row)(x, b, c, c1, NULL, NULL, n, 0, 0);
        }
}

/* Backward, last step first. Without dh: dZ comes in with δc' from h' in its x~ block and δr in its
 * wr block. With dh (T, S, n), the delta of h' for a linear g, they are made here, each row just
 * before its step: δr = dh (c' - s), δc' = dh r, and δs = dh - dh r into dZ's ws block (k = 4) or
 * into ds (k = 3, s from hs). Then the deltas of x~, wf(x), wr(x) replace them: δc = δc' f +
 * δwf vf + δwr vr reaches the step before's δc' (not past the first step: truncated BPTT). The sums
 * of the gradients: dv's row s / SRU_GROUP, (2n + k n,) per share of streams, += [Σ δwf c, Σ δwr c,
 * Σ of dZ's rows (the biases' gradient)] over stream s's rows (sru_run adds the rows up in order).
 * One row (step, stream) is one loop over its n features (sru_back_row), so that each array is read
 * once per row; its flags are constants where it is called, and the compiler makes one loop of each. */
static inline __attribute__((always_inline)) void K(sru_back_row)(
    float *restrict dx, const float *restrict x, const float *restrict c, const float *restrict c1,
    const float *restrict v, float *restrict dv, const float *restrict d, const float *restrict sj,
    float *restrict dsj, float *restrict before, Py_ssize_t n, Py_ssize_t k, int with_dh, int carry_in,
    int carry_out)
{
    const float *f = x + n, *r = x + 2 * n, *vf = v, *vr = v + n;
    float *df = dx + n, *dr = dx + 2 * n, *dvf = dv, *dvr = dv + n, *db = dv + 2 * n;
    EACH(j, n) {
        float dc = with_dh ? (carry_in ? dx[j] : 0.0f) + d[j] * r[j] : dx[j];  /* δc' */
        float drj = (with_dh ? d[j] * (c1[j] - sj[j]) : dr[j]) * r[j] * (1.0f - r[j]);
        float dfj = dc * (c[j] - x[j]) * f[j] * (1.0f - f[j]);
        float dxj = dc * (1.0f - f[j]);
        if (with_dh)
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
        db[n + j] += dfj;
        db[2 * n + j] += drj;
    }
    if (k == 4)
        EACH(j, n) db[3 * n + j] += dx[3 * n + j];
}

static void K(sru_back)(float *restrict dZ, const float *restrict Z, const float *restrict C,
                        const float *restrict v, float *restrict dv, const float *restrict dh,
                        const float *restrict hs, float *restrict ds,
                        Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k, Py_ssize_t s0, Py_ssize_t s1)
{
    for (Py_ssize_t t = T - 1; t >= 0; t--)
        for (Py_ssize_t s = s0; s < s1; s++) {
            Py_ssize_t row = t * S + s;
            float *sums = dv + s / SRU_GROUP * (2 + k) * n;
            const float *x = Z + row * k * n, *c = C + row * n, *c1 = C + (row + S) * n;
            float *dx = dZ + row * k * n, *before = t ? dZ + (row - S) * k * n : NULL;
            if (!dh) {
                if (t)
                    K(sru_back_row)(dx, x, c, c1, v, sums, NULL, NULL, NULL, before, n, k, 0, 1, 1);
                else
                    K(sru_back_row)(dx, x, c, c1, v, sums, NULL, NULL, NULL, NULL, n, k, 0, 1, 0);
                continue;
            }
            const float *d = dh + row * n, *sj = k == 4 ? x + 3 * n : hs + row * n;
            float *dsj = k == 4 ? dx + 3 * n : ds + row * n;
            if (t == T - 1 && t)  /* dx holds the step after's δc from t < T - 1 on */
                K(sru_back_row)(dx, x, c, c1, v, sums, d, sj, dsj, before, n, k, 1, 0, 1);
            else if (t == T - 1)
                K(sru_back_row)(dx, x, c, c1, v, sums, d, sj, dsj, NULL, n, k, 1, 0, 0);
            else if (t)
                K(sru_back_row)(dx, x, c, c1, v, sums, d, sj, dsj, before, n, k, 1, 1, 1);
            else
                K(sru_back_row)(dx, x, c, c1, v, sums, d, sj, dsj, NULL, n, k, 1, 1, 0);
        }
}

#else

#if defined(__GNUC__) && !defined(_WIN32)
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#define SRU_HELPER 1
#else
#define SRU_HELPER 0
#endif

/* One call of sru_step or sru_back. On one thread it runs every stream in one pass. With
 * darknetpy.kernels.threads() > 1 its streams go in shares of SRU_GROUP that this thread and one
 * helper started for the call claim from a counter: claimed, not fixed halves, so that on a busy
 * machine a helper that gets no core claims nothing and this thread does all the shares, waiting at
 * most for the one the helper runs. Backward sums each share's gradients into its own row of
 * `partial`, added to dv in order after: the same bits on one thread or two. Heap-allocated: the
 * helper may outlive the call (`refs`: the last of the two to let go frees it). */
struct sru_job {
    int back;
    float *Z, *C, *H, *dZ, *ds, *partial;
    const float *v, *hs, *dh;
    Py_ssize_t T, S, n, k, groups;
#if SRU_HELPER
    atomic_long next, done;
    atomic_int refs;
#endif
};

/* Streams [s0, s1) of the job, on this thread. */
static void sru_streams(struct sru_job *j, Py_ssize_t s0, Py_ssize_t s1)
{
    if (j->back)
        CALL(sru_back, j->dZ, j->Z, j->C, j->v, j->partial, j->dh, j->hs, j->ds, j->T, j->S, j->n, j->k, s0, s1);
    else
        CALL(sru_step, j->Z, j->v, j->C, j->H, j->hs, j->T, j->S, j->n, j->k, s0, s1);
}

static void sru_release(struct sru_job *j)
{
#if SRU_HELPER
    if (atomic_fetch_sub(&j->refs, 1) != 1)
        return;
#endif
    free(j->partial);
    free(j);
}

#if SRU_HELPER
static void sru_claim(struct sru_job *j)
{
    long g;
    while ((g = atomic_fetch_add(&j->next, 1)) < j->groups) {
        sru_streams(j, g * SRU_GROUP, g * SRU_GROUP + SRU_GROUP < j->S ? g * SRU_GROUP + SRU_GROUP : j->S);
        atomic_fetch_add(&j->done, 1);
    }
}

static void *sru_helper(void *arg)
{
    sru_claim(arg);
    sru_release(arg);
    return NULL;
}
#endif

/* The threads a call may use: darknetpy.kernels.threads() (BLAS's thread count), asked once. */
static int sru_threads(void)
{
    static int count;
    if (!count) {
        PyObject *mod = PyImport_ImportModule("darknetpy.kernels");
        PyObject *n = mod ? PyObject_CallMethod(mod, "threads", NULL) : NULL;
        long value = n ? PyLong_AsLong(n) : 1;
        Py_XDECREF(n);
        Py_XDECREF(mod);
        PyErr_Clear();
        count = value < 1 ? 1 : (int)value;
    }
    return count;
}

/* Run `job` (from sru_job_new) on up to `threads` threads and free it; backward, dv (2n + k n,) +=
 * its shares' sums in order. Runs without the GIL. Small calls (a generation step) and a helper that
 * fails to start leave it all to this thread. */
static void sru_run(struct sru_job *j, float *dv, int threads)
{
    int helped = 0;
#if SRU_HELPER
    pthread_t helper;
    pthread_attr_t attr;
    if (threads > 1 && j->groups > 1 && j->T * j->S * j->n >= (1 << 16) && pthread_attr_init(&attr) == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        atomic_fetch_add(&j->refs, 1);
        helped = pthread_create(&helper, &attr, sru_helper, j) == 0;
        if (!helped)
            atomic_fetch_sub(&j->refs, 1);
        pthread_attr_destroy(&attr);
    }
    if (helped) {
        sru_claim(j);
        while (atomic_load(&j->done) < j->groups)
            sched_yield();
    }
#endif
    if (!helped)
        sru_streams(j, 0, j->S);
    if (j->back) {
        Py_ssize_t sums = (2 + j->k) * j->n;
        for (Py_ssize_t g = 0; g < j->groups; g++)
            for (Py_ssize_t i = 0; i < sums; i++)
                dv[i] += j->partial[g * sums + i];
    }
    sru_release(j);
}

/* A job for T, S, n, k (dims), its sums zeroed; NULL with a MemoryError. */
static struct sru_job *sru_job_new(int back, const Py_ssize_t dims[4])
{
    struct sru_job *j = calloc(1, sizeof *j);
    Py_ssize_t groups = (dims[1] + SRU_GROUP - 1) / SRU_GROUP;
    float *partial = back ? calloc((size_t)(groups * (2 + dims[3]) * dims[2]), sizeof(float)) : NULL;
    if (!j || (back && !partial)) {
        free(j);
        free(partial);
        PyErr_NoMemory();
        return NULL;
    }
    j->back = back, j->partial = partial, j->groups = groups;
    j->T = dims[0], j->S = dims[1], j->n = dims[2], j->k = dims[3];
#if SRU_HELPER
    atomic_init(&j->next, 0);
    atomic_init(&j->done, 0);
    atomic_init(&j->refs, 1);
#endif
    return j;
}

/* T, S, n, k of Z (T, S, k n), C (T+1, S, n), v and dv (2n + k n,), H, hs, ds (T, S, n) where given
 * (NULL: not given); hs (and ds) given exactly when k = 3 and H (dh) is. 0, or -1 with a ValueError. */
static int sru_shapes(const Py_buffer *Z, const Py_buffer *C, const Py_buffer *v, const Py_buffer *dv,
                      const Py_buffer *H, const Py_buffer *hs, const Py_buffer *ds, Py_ssize_t dims[4])
{
    Py_ssize_t n = C->ndim == 3 ? C->shape[2] : 0;
    Py_ssize_t k = n && Z->ndim == 3 ? Z->shape[2] / n : 0;
    int ok = Z->ndim == 3 && C->ndim == 3 && v->ndim == 1 && n && (k == 3 || k == 4) && Z->shape[2] == k * n &&
             C->shape[0] == Z->shape[0] + 1 && C->shape[1] == Z->shape[1] && v->shape[0] == (2 + k) * n &&
             (!dv || (dv->ndim == 1 && dv->shape[0] == (2 + k) * n)) && (!H || (k == 3) == (hs != NULL));
    const Py_buffer *rows[] = {H, hs, ds};
    for (int i = 0; i < 3; i++)
        ok = ok && (!rows[i] || (rows[i]->ndim == 3 && rows[i]->shape[0] == Z->shape[0] &&
                                 rows[i]->shape[1] == Z->shape[1] && rows[i]->shape[2] == n));
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "sru: Z (T, S, k n) with k 3 or 4, C (T+1, S, n), v and dv (2n + k n,), "
                                          "h' and its delta (T, S, n), with s (T, S, n) exactly when k = 3");
        return -1;
    }
    dims[0] = Z->shape[0], dims[1] = Z->shape[1], dims[2] = n, dims[3] = k;
    return 0;
}

static PyObject *sru_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "sru_step(Z, v, C[, H[, s]])");
        return NULL;
    }
    if (get_typed(args, b, "FfFFf", (int)nargs) < 0)
        return NULL;
    if (sru_shapes(&b[0], &b[2], &b[1], NULL, nargs > 3 ? &b[3] : NULL, nargs > 4 ? &b[4] : NULL, NULL, d) < 0) {
        release(b, (int)nargs);
        return NULL;
    }
    struct sru_job *j = sru_job_new(0, d);
    if (!j) {
        release(b, (int)nargs);
        return NULL;
    }
    j->Z = F(0), j->v = F(1), j->C = F(2), j->H = nargs > 3 ? F(3) : NULL, j->hs = nargs > 4 ? F(4) : NULL;
    int threads = sru_threads();
    Py_BEGIN_ALLOW_THREADS
    sru_run(j, NULL, threads);
    Py_END_ALLOW_THREADS
    return done(b, nargs);
}

static PyObject *sru_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    if (nargs != 5 && nargs != 6 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "sru_back(dZ, Z, C, v, dv[, dh[, s, ds]])");
        return NULL;
    }
    if (get_typed(args, b, "FfffFffF", (int)nargs) < 0)
        return NULL;
    if (sru_shapes(&b[1], &b[2], &b[3], &b[4], nargs > 5 ? &b[5] : NULL, nargs > 6 ? &b[6] : NULL,
                   nargs > 7 ? &b[7] : NULL, d) < 0 || b[0].len != b[1].len) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "sru_back: dZ must have Z's shape");
        release(b, (int)nargs);
        return NULL;
    }
    struct sru_job *j = sru_job_new(1, d);
    if (!j) {
        release(b, (int)nargs);
        return NULL;
    }
    j->dZ = F(0), j->Z = F(1), j->C = F(2), j->v = F(3), j->dh = nargs > 5 ? F(5) : NULL;
    j->hs = nargs > 6 ? F(6) : NULL, j->ds = nargs > 7 ? F(7) : NULL;
    float *dv = F(4);
    int threads = sru_threads();
    Py_BEGIN_ALLOW_THREADS
    sru_run(j, dv, threads);
    Py_END_ALLOW_THREADS
    return done(b, nargs);
}

#define SRU_METHODS \
    METHOD(sru_step, "sru_step(Z, v, C[, H[, s]]): [sru]'s biases added to Z, its gates f, r in place and the cells C[1:] over all steps; h' for a linear g into H"), \
    METHOD(sru_back, "sru_back(dZ, Z, C, v, dv[, dh[, s, ds]]): back through sru_step, deltas in place in dZ; the gradients' sums dv accumulated"),

#endif
