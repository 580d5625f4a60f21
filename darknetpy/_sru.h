/* [sru]'s recurrence (layers/sru.py), over all T steps in one call: the numpy references
 * sru_step and sru_back there are what these must equal (tests/test_sru.py), to float32 rounding.
 *
 * Included by _kinds.h three times: twice for the kernels, K()-named (baseline and AVX2+FMA, after
 * _steps.h, whose K(sigmoid2) they use), and once with KIND_WRAPPERS defined for the Python
 * functions and SRU_METHODS, their method-table entries.
 *
 * Layout: rows, as the layer's one matmul makes them. Z (T, S, k n), k = 3 or 4, the blocks
 * x~ | wf(x) | wr(x) [| ws(x)] of n each per step and stream; C (T+1, S, n) the cells, C[0] the one
 * before the datum; v (2n,) = vf | vr. Each (step, stream) is a loop over the n features that the
 * compiler vectorizes; the steps run in order, since c' needs c.
 */
#ifndef KIND_WRAPPERS

/* Forward: f = σ(wf(x) + vf c), r = σ(wr(x) + vr c) into the wf, wr blocks of Z; C[t+1] = c' =
 * f c + (1 - f) x~. */
static void K(sru_step)(float *restrict Z, const float *restrict v, float *restrict C,
                        Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k)
{
    const float *vf = v, *vr = v + n;
    for (Py_ssize_t t = 0; t < T; t++)
        for (Py_ssize_t s = 0; s < S; s++) {
            float *x = Z + (t * S + s) * k * n, *f = x + n, *r = x + 2 * n;
            const float *c = C + (t * S + s) * n;
            float *c1 = C + ((t + 1) * S + s) * n;
            EACH(j, n) {
                float fj = K(sigmoid2)(0.5f * (f[j] + vf[j] * c[j]));
                r[j] = K(sigmoid2)(0.5f * (r[j] + vr[j] * c[j]));
                c1[j] = fj * c[j] + (1.0f - fj) * x[j];
                f[j] = fj;
            }
        }
}

/* Backward, last step first. dZ: in, the x~ block holds δc' from h' and the wr block δr; out, the
 * deltas of x~, wf(x), wr(x). δc = δc' f + δwf vf + δwr vr is added to the step before's δc' (not
 * past the first step: truncated BPTT); dv (2n,) += Σ [δwf c, δwr c]. */
static void K(sru_back)(float *restrict dZ, const float *restrict Z, const float *restrict C,
                        const float *restrict v, float *restrict dv,
                        Py_ssize_t T, Py_ssize_t S, Py_ssize_t n, Py_ssize_t k)
{
    const float *vf = v, *vr = v + n;
    float *dvf = dv, *dvr = dv + n;
    for (Py_ssize_t t = T - 1; t >= 0; t--)
        for (Py_ssize_t s = 0; s < S; s++) {
            const float *x = Z + (t * S + s) * k * n, *f = x + n, *r = x + 2 * n;
            const float *c = C + (t * S + s) * n;
            float *dx = dZ + (t * S + s) * k * n, *df = dx + n, *dr = dx + 2 * n;
            float *before = t ? dZ + ((t - 1) * S + s) * k * n : NULL;
            EACH(j, n) {
                float dc1 = dx[j];
                float dfj = dc1 * (c[j] - x[j]) * f[j] * (1.0f - f[j]);
                float drj = dr[j] * r[j] * (1.0f - r[j]);
                dx[j] = dc1 * (1.0f - f[j]);
                df[j] = dfj;
                dr[j] = drj;
                dvf[j] += dfj * c[j];
                dvr[j] += drj * c[j];
                if (before)
                    before[j] += dc1 * f[j] + dfj * vf[j] + drj * vr[j];
            }
        }
}

#else

/* T, S, n, k of Z (T, S, k n), C (T+1, S, n), v (2n,) [and dv like v], or -1 with a ValueError. */
static int sru_shapes(const Py_buffer *Z, const Py_buffer *C, const Py_buffer *v, const Py_buffer *dv,
                      Py_ssize_t dims[4])
{
    Py_ssize_t n = C->ndim == 3 ? C->shape[2] : 0;
    Py_ssize_t k = n ? (Z->ndim == 3 ? Z->shape[2] : 0) / n : 0;
    if (Z->ndim != 3 || C->ndim != 3 || v->ndim != 1 || !n || (k != 3 && k != 4) || Z->shape[2] != k * n ||
        C->shape[0] != Z->shape[0] + 1 || C->shape[1] != Z->shape[1] || v->shape[0] != 2 * n ||
        (dv && (dv->ndim != 1 || dv->shape[0] != 2 * n))) {
        PyErr_SetString(PyExc_ValueError, "sru: Z (T, S, k n) with k 3 or 4, C (T+1, S, n), v and dv (2n,)");
        return -1;
    }
    dims[0] = Z->shape[0], dims[1] = Z->shape[1], dims[2] = n, dims[3] = k;
    return 0;
}

static PyObject *sru_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    if (typed_args(args, nargs, b, "FfF", "sru_step(Z, v, C)") < 0)
        return NULL;
    if (sru_shapes(&b[0], &b[2], &b[1], NULL, d) < 0) {
        release(b, 3);
        return NULL;
    }
    CALL(sru_step, F(0), F(1), F(2), d[0], d[1], d[2], d[3]);
    return done(b, nargs);
}

static PyObject *sru_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[MAX_ARGS];
    Py_ssize_t d[4];
    if (typed_args(args, nargs, b, "FfffF", "sru_back(dZ, Z, C, v, dv)") < 0)
        return NULL;
    if (sru_shapes(&b[1], &b[2], &b[3], &b[4], d) < 0 || b[0].len != b[1].len) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "sru_back: dZ must have Z's shape");
        release(b, 5);
        return NULL;
    }
    CALL(sru_back, F(0), F(1), F(2), F(3), F(4), d[0], d[1], d[2], d[3]);
    return done(b, nargs);
}

#define SRU_METHODS \
    METHOD(sru_step, "sru_step(Z, v, C): [sru]'s gates f, r in place in Z and the cells C[1:], over all steps"), \
    METHOD(sru_back, "sru_back(dZ, Z, C, v, dv): back through sru_step, deltas in place in dZ; dv accumulated"),

#endif
