/* adam_ema: one slot's whole update in one pass over its elements, on the step loops' team
 * (team_share): AdamW's shrink of the weights, Adam's step, and the EMA's move of the slot's shadow,
 * reading p, u, m, v (and s) once instead of in four passes (numpy's shrink, the adam op, the EMA's
 * three numpy passes). kernels.py's `adam_ema` is the numpy reference: the same float32 operations
 * in the same order, so the same bits (tests/test_update.py), on any number of threads (each
 * element's arithmetic is its own). Compiled without FMA contraction (NO_CONTRACT), which would
 * round differently.
 *
 *   p = p shrink                        (shrink == 1 skips it)
 *   g = u + decay p                     (decay == 0 skips it)
 *   m = B1 m + (1-B1) g,  v = B2 v + (1-B2) g²
 *   p = p + lr (m / c1) / (sqrt(v / c2) + eps),  u = 0
 *   s = D s + (1-D) p                   (no s: skipped)
 */

NO_CONTRACT static inline __attribute__((always_inline)) void
adam_ema_run(float *restrict p, float *restrict u, float *restrict m, float *restrict v, float *restrict s,
                    Py_ssize_t count, const float *k)
{
    const float shrink = k[0], decay = k[1], B1 = k[2], one_B1 = k[3], B2 = k[4], one_B2 = k[5],
                c1 = k[6], c2 = k[7], lr = k[8], eps = k[9], D = k[10], rest = k[11];
    for (Py_ssize_t e = 0; e < count; e++) {
        float w = p[e];
        if (shrink != 1.0f)
            w = w * shrink;
        float g = u[e];
        if (decay != 0.0f) {
            float a = w * decay;
            g = g + a;
        }
        float mm = m[e] * B1;
        float a = g * one_B1;
        mm = mm + a;
        float vv = v[e] * B2;
        a = g * g;
        a = a * one_B2;
        vv = vv + a;
        a = vv / c2;
        a = sqrtf(a);
        a = a + eps;
        float b = mm / c1;
        b = b * lr;
        b = b / a;
        w = w + b;
        p[e] = w;
        m[e] = mm;
        v[e] = vv;
        u[e] = 0.0f;
        if (s) {
            a = w * rest;
            b = s[e] * D;
            s[e] = b + a;
        }
    }
}

/* The loop compiled for the module's baseline, and for AVX-512 (16 lanes for its divisions and square
 * roots) where the CPU has it and the module runs its AVX-512 functions (avx512): the same bits. */
NO_CONTRACT static void adam_ema_plain(float *p, float *u, float *m, float *v, float *s, Py_ssize_t count,
                                              const float *k)
{
    adam_ema_run(p, u, m, v, s, count, k);
}

#ifdef HAVE_AVX2
__attribute__((target("avx512f"))) NO_CONTRACT static void
adam_ema_wide(float *p, float *u, float *m, float *v, float *s, Py_ssize_t count, const float *k)
{
    adam_ema_run(p, u, m, v, s, count, k);
}
#define ADAM_EMA(...) (avx512 ? adam_ema_wide(__VA_ARGS__) : adam_ema_plain(__VA_ARGS__))
#else
#define ADAM_EMA adam_ema_plain
#endif

typedef struct {
    float *p, *u, *m, *v, *s;  /* s NULL: no average */
    const float *k;            /* the twelve scalars */
} adam_ema_job;

static void adam_ema_part(const void *job, Py_ssize_t e0, Py_ssize_t e1)
{
    const adam_ema_job *J = job;
    ADAM_EMA(J->p + e0, J->u + e0, J->m + e0, J->v + e0, J->s ? J->s + e0 : NULL, e1 - e0, J->k);
}

#define ADAM_EMA_USAGE "adam_ema(p, u, m, v, s or None, shrink, decay, B1, 1-B1, B2, 1-B2, c1, c2, lr, eps, D, 1-D)"

static PyObject *adam_ema(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 1, 1, 1};
    Py_buffer b[5];
    float k[12];
    if (nargs != 17) {
        PyErr_SetString(PyExc_TypeError, ADAM_EMA_USAGE);
        return NULL;
    }
    for (int i = 0; i < 12; i++) {
        double x = PyFloat_AsDouble(args[5 + i]);
        if (x == -1.0 && PyErr_Occurred())
            return NULL;
        k[i] = (float)x;
    }
    int arrays = args[4] == Py_None ? 4 : 5;
    Py_ssize_t count = get_buffers(args, b, sizes, arrays);
    if (count < 0)
        return NULL;
    adam_ema_job J = {F(0), F(1), F(2), F(3), arrays == 5 ? F(4) : NULL, k};
    PyObject *result = team_share(adam_ema_part, &J, count, UPDATE_SHARE, count);
    release(b, arrays);
    return result;
}

#define OPTIM_METHODS \
    {"adam_ema", (PyCFunction)(void (*)(void))adam_ema, METH_FASTCALL, \
     ADAM_EMA_USAGE ": AdamW's shrink, one Adam update and the EMA's move of s, in one pass"},
