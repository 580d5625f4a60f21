/* darknetpy._kernels: what numpy does in many passes over memory during training, in one: the
 * elementwise step math of the LSTM, GRU and RNN loops (_steps.h), the one-hot input projection and
 * weight gradient, the layout changes around the step loops (transpose), batchnorm in training,
 * the leaky/relie activations and their gradients, the training softmax and its cross-entropy, the
 * Adam and SGD updates, and the products of a many-stream generation step (_panel.h).
 *
 * Optional: pip builds it when a C compiler is there, and layers/__init__.py falls back to the
 * numpy code (the reference the tests hold this to) when it is not, or when DARKNETPY_KERNELS=0.
 * Every array argument is C-contiguous float32 (int64 for class ids): numpy's buffer protocol
 * checks contiguity, the sizes, formats and ids are checked here, so a wrong call raises instead
 * of touching other memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define K(name) name##_base
#include "_steps.h"
#include "_kinds.h"
#undef K

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define K(name) name##_avx2
#include "_steps.h"
#include "_kinds.h"
#undef K
#pragma GCC pop_options
#endif

static int use_avx2; /* set at import from what the CPU supports */
static int avx512;  /* the AVX-512 functions (panel kernel, step and sample loops) are in the module */
#ifdef HAVE_AVX2
#define CALL(name, ...) (use_avx2 ? name##_avx2(__VA_ARGS__) : name##_base(__VA_ARGS__))
#else
#define CALL(name, ...) name##_base(__VA_ARGS__)
#endif

#define MAX_ARGS 9

static void release(Py_buffer *bufs, int count)
{
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&bufs[i]);
}

/* The buffers of `count` arrays, kinds[i] saying what each must be: 'f' float32 (read), 'F'
 * float32 (written), 'q' int64 class ids (read), 'Q' int64 (written), 'd' float64 (read); all
 * C-contiguous. Returns 0, or -1 with an exception set and nothing held. */
static int get_typed(PyObject *const *objs, Py_buffer *bufs, const char *kinds, int count)
{
    for (int i = 0; i < count; i++) {
        char kind = kinds[i];
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (kind == 'F' || kind == 'Q' ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(objs[i], &bufs[i], flags) < 0) {
            release(bufs, i);
            return -1;
        }
        const char *f = bufs[i].format;
        int ok = kind == 'q' || kind == 'Q' ? bufs[i].itemsize == 8 && (strcmp(f, "q") == 0 || strcmp(f, "l") == 0)
                 : kind == 'd'             ? bufs[i].itemsize == 8 && strcmp(f, "d") == 0
                                           : bufs[i].itemsize == 4 && strcmp(f, "f") == 0;
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "argument %d: %s array expected", i + 1,
                         kind == 'q' || kind == 'Q' ? "an int64" : kind == 'd' ? "a float64" : "a float32");
            release(bufs, i + 1);
            return -1;
        }
    }
    return 0;
}

/* get_typed for a call that takes exactly strlen(kinds) arrays, else TypeError with `usage`. */
static int typed_args(PyObject *const *args, Py_ssize_t nargs, Py_buffer *bufs, const char *kinds,
                      const char *usage)
{
    if (nargs != (Py_ssize_t)strlen(kinds)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return get_typed(args, bufs, kinds, (int)nargs);
}

/* 0 if every one of `count` class ids is in [0, V), else -1 with a ValueError naming `who`. */
static int check_ids(const int64_t *id, Py_ssize_t count, Py_ssize_t V, const char *who)
{
    for (Py_ssize_t e = 0; e < count; e++)
        if (id[e] < 0 || id[e] >= V) {
            PyErr_Format(PyExc_ValueError, "%s: id %lld out of range [0, %zd)", who, (long long)id[e], V);
            return -1;
        }
    return 0;
}

/* The shapes of a call with class ids: ids (R,) naming the rows of `rows` (R, k), and `other` 2-D
 * with k columns (and R rows too when same_rows). 0, or -1 with a ValueError saying `usage`. */
static int id_shapes(const Py_buffer *ids, const Py_buffer *rows, const Py_buffer *other, int same_rows,
                     const char *usage)
{
    if (ids->ndim != 1 || rows->ndim != 2 || other->ndim != 2 || rows->shape[0] != ids->shape[0] ||
        other->shape[1] != rows->shape[1] || (same_rows && other->shape[0] != rows->shape[0])) {
        PyErr_SetString(PyExc_ValueError, usage);
        return -1;
    }
    return 0;
}

/* The float32 buffers of `count` arrays (all written to), each required to hold sizes[i] * m
 * floats; m is taken from the first array whose size is 1 (sizes[i] == 1). Returns m, or -1 with
 * an exception set and nothing held. */
static Py_ssize_t get_buffers(PyObject *const *objs, Py_buffer *bufs, const int *sizes, int count)
{
    Py_ssize_t m = -1;
    if (get_typed(objs, bufs, "FFFFFFFFF", count) < 0)
        return -1;
    for (int i = 0; i < count && m < 0; i++)
        if (sizes[i] == 1)
            m = bufs[i].len / 4;
    for (int i = 0; i < count; i++) {
        if (bufs[i].len != (Py_ssize_t)sizes[i] * m * 4) {
            PyErr_Format(PyExc_ValueError, "argument %d: %zd floats, expected %zd",
                         i + 1, bufs[i].len / 4, (Py_ssize_t)sizes[i] * m);
            release(bufs, count);
            return -1;
        }
    }
    return m;
}

/* The start of every call: nargs must be `fewest` or `most` (else TypeError with `usage`), then
 * the buffers as get_buffers takes them. Returns m, or -1 with an exception set. */
static Py_ssize_t start(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t fewest, Py_ssize_t most,
                        const char *usage, Py_buffer *bufs, const int *sizes)
{
    if (nargs != fewest && nargs != most) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    return get_buffers(args, bufs, sizes, (int)nargs);
}

/* The rows R of a step kernel's layout (_steps.h): the streams when every one of the `count`
 * arrays is 2-D with the same first axis (rows (streams, blocks * n)), else 1 (feature-major
 * (blocks * n, streams), or any flat arrays). */
static Py_ssize_t layout_rows(const Py_buffer *bufs, int count)
{
    for (int i = 0; i < count; i++)
        if (bufs[i].ndim != 2 || bufs[i].shape[0] != bufs[0].shape[0])
            return 1;
    return bufs[0].shape[0];
}

static PyObject *done(Py_buffer *bufs, Py_ssize_t count)
{
    release(bufs, (int)count);
    Py_RETURN_NONE;
}

#define F(i) ((float *)b[i].buf)

/* lstm_step(g, xu, c, c1, tc, h1[, P]) in either layout (layout_rows). */
static PyObject *lstm_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {4, 4, 1, 1, 1, 1, 3};
    Py_buffer b[MAX_ARGS];
    Py_ssize_t m = start(args, nargs, 6, 7, "lstm_step(g, xu, c, c1, tc, h1[, P])", b, sizes);
    if (m < 0)
        return NULL;
    CALL(lstm_step, F(0), F(1), F(2), F(3), F(4), F(5), nargs == 7 ? F(6) : NULL, m, layout_rows(b, (int)nargs));
    return done(b, nargs);
}

/* lstm_back(dh, dc, DH, g, c, tc, d[, P, dP]), feature-major. */
static PyObject *lstm_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 1, 4, 1, 1, 4, 3, 3};
    Py_buffer b[MAX_ARGS];
    if (nargs == 8) {
        PyErr_SetString(PyExc_TypeError, "lstm_back(dh, dc, DH, g, c, tc, d[, P, dP])");
        return NULL;
    }
    Py_ssize_t m = start(args, nargs, 7, 9, "lstm_back(dh, dc, DH, g, c, tc, d[, P, dP])", b, sizes);
    if (m < 0)
        return NULL;
    CALL(lstm_back, F(0), F(1), F(2), F(3), F(4), F(5), F(6), nargs == 9 ? F(7) : NULL, nargs == 9 ? F(8) : NULL, m);
    return done(b, nargs);
}

static PyObject *gru_zr(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {2, 3, 1, 1};
    Py_buffer b[MAX_ARGS];
    Py_ssize_t m = start(args, nargs, 4, 4, "gru_zr(zr, xu, h, rh)", b, sizes);
    if (m < 0)
        return NULL;
    CALL(gru_zr, F(0), F(1), F(2), F(3), m, layout_rows(b, 4));
    return done(b, nargs);
}

/* gru_step(tanh, ...): the flag first, then the arrays. */
static PyObject *gru_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 3, 2, 1, 1, 3};
    Py_buffer b[MAX_ARGS];
    int tanh_act = nargs > 0 ? PyObject_IsTrue(args[0]) : 0;
    if (tanh_act < 0)
        return NULL;
    Py_ssize_t m = start(args + 1, nargs - 1, 5, 6, "gru_step(tanh, c, xu, zr, h, h1[, P])", b, sizes);
    if (m < 0)
        return NULL;
    CALL(gru_step, F(0), F(1), F(2), F(3), F(4), nargs == 7 ? F(5) : NULL, m, layout_rows(b, (int)nargs - 1),
         tanh_act);
    return done(b, nargs - 1);
}

static PyObject *gru_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 2, 3, 3};
    Py_buffer b[MAX_ARGS];
    Py_ssize_t m = start(args, nargs, 5, 5, "gru_back(dh, drh, zr, P, d)", b, sizes);
    if (m < 0)
        return NULL;
    CALL(gru_back, F(0), F(1), F(2), F(3), F(4), m);
    return done(b, nargs);
}

/* The slope of the activations below zero: a Python number, 0 <= a < 1. */
static int slope_arg(PyObject *obj, float *a)
{
    double x = PyFloat_AsDouble(obj);
    if (x == -1.0 && PyErr_Occurred())
        return -1;
    if (!(x >= 0.0 && x < 1.0)) {
        PyErr_SetString(PyExc_ValueError, "the slope must be in [0, 1)");
        return -1;
    }
    *a = (float)x;
    return 0;
}

static PyObject *slope_act(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1};
    Py_buffer b[1];
    float a;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "slope_act(x, a)");
        return NULL;
    }
    if (slope_arg(args[1], &a) < 0)
        return NULL;
    Py_ssize_t m = get_buffers(args, b, sizes, 1);
    if (m < 0)
        return NULL;
    CALL(slope_act, F(0), m, a);
    return done(b, 1);
}

/* slope_grad(y, out, a[, delta]) */
static PyObject *slope_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 1};
    PyObject *arrays[3];
    Py_buffer b[3];
    float a;
    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "slope_grad(y, out, a[, delta])");
        return NULL;
    }
    if (slope_arg(args[2], &a) < 0)
        return NULL;
    arrays[0] = args[0];
    arrays[1] = args[1];
    if (nargs == 4)
        arrays[2] = args[3];
    Py_ssize_t count = nargs - 1, m = get_buffers(arrays, b, sizes, (int)count);
    if (m < 0)
        return NULL;
    CALL(slope_grad, F(0), nargs == 4 ? F(2) : NULL, F(1), m, a);
    return done(b, count);
}

/* rnn_step(a, b, bias, x, s1[, s]) and rnn_back(a, ds1, w, y, d[, ds]): the slope first, then
 * arrays of one size each. */
static PyObject *rnn_call(PyObject *const *args, Py_ssize_t nargs, int back)
{
    static const int sizes[] = {1, 1, 1, 1, 1};
    Py_buffer b[MAX_ARGS];
    float a = 0.0f;
    const char *usage = back ? "rnn_back(a, ds1, w, y, d[, ds])" : "rnn_step(a, b, bias, x, s1[, s])";
    if (nargs > 0 && slope_arg(args[0], &a) < 0)
        return NULL;
    Py_ssize_t m = start(args + 1, nargs - 1, 4, 5, usage, b, sizes);  /* checks the count too */
    if (m < 0)
        return NULL;
    if (back)
        CALL(rnn_back, F(0), F(1), F(2), F(3), nargs == 6 ? F(4) : NULL, m, a);
    else
        CALL(rnn_step, F(0), F(1), F(2), F(3), nargs == 6 ? F(4) : NULL, m, a);
    return done(b, nargs - 1);
}

static PyObject *rnn_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return rnn_call(args, nargs, 0);
}

static PyObject *rnn_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return rnn_call(args, nargs, 1);
}

/* The optimizer updates of one parameter array, float32 operation by operation as optim.py's
 * numpy reference does them (so the results are the same to the bit): one pass instead of ten.
 * Compiled once, without FMA contraction, which would round differently. */
#if defined(__GNUC__) && !defined(__clang__)
#define NO_CONTRACT __attribute__((optimize("fp-contract=off")))
#else
#define NO_CONTRACT /* clang contracts only within one expression: each line here has one operation */
#endif

NO_CONTRACT static void sgd_update(float *restrict p, float *restrict u, Py_ssize_t count,
                                   const float *k)
{
    const float decay = k[0], rate = k[1], momentum = k[2];
    for (Py_ssize_t e = 0; e < count; e++) {
        float g = u[e];
        if (decay != 0.0f) {
            float a = p[e] * decay;
            g = g + a;
        }
        float a = g * rate;
        p[e] = p[e] + a;
        u[e] = g * momentum;
    }
}

/* Batchnorm in training, per group of R rows of n features (layers/connected.py's Dense.normalize
 * and backward_norm): the same float32 operations in the same order as numpy's (sums over rows in
 * row order, no FMA contraction), so the same bits, in three passes over memory instead of about
 * ten and without numpy's temporaries. stats holds mean, var (n - 1 divisor), sigma, d = sigma +
 * eps, each (G, n). */
NO_CONTRACT static void batchnorm_forward(const float *restrict z, float *restrict xhat, float *restrict out,
                                   float *restrict stats, const float *restrict scales,
                                   const float *restrict bias, Py_ssize_t G, Py_ssize_t R, Py_ssize_t n,
                                   float eps)
{
    for (Py_ssize_t g = 0; g < G; g++) {
        float *mu = stats + g * n, *var = stats + (G + g) * n, *sigma = stats + (2 * G + g) * n,
              *d = stats + (3 * G + g) * n;
        const float *zg = z + g * R * n;
        for (Py_ssize_t j = 0; j < n; j++)
            mu[j] = var[j] = 0.0f;
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < n; j++)
                mu[j] = mu[j] + zg[r * n + j];
        for (Py_ssize_t j = 0; j < n; j++)
            mu[j] = mu[j] / (float)R;
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < n; j++) {
                float e = zg[r * n + j] - mu[j];
                e = e * e;
                var[j] = var[j] + e;
            }
        for (Py_ssize_t j = 0; j < n; j++) {
            var[j] = var[j] / (float)(R - 1);
            sigma[j] = sqrtf(var[j]);
            d[j] = sigma[j] + eps;
        }
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < n; j++) {
                Py_ssize_t e = (g * R + r) * n + j;
                float x = z[e] - mu[j];
                x = x / d[j];
                xhat[e] = x;
                x = x * scales[j];
                out[e] = x + bias[j];
            }
    }
}

/* dx = (g - mean(g)) / d - xhat Σ(g xhat) / (sigma (R - 1) + 1e-30), g = dz scales, per group; and
 * dscales += Σ over every row of dz xhat. sigma, d (G, n); sums: 3n floats of scratch. */
NO_CONTRACT static void batchnorm_backward(const float *restrict dz, const float *restrict xhat,
                                    const float *restrict sig, const float *restrict dev,
                                    const float *restrict scales,
                                    float *restrict dx, float *restrict dscales, float *restrict sums,
                                    Py_ssize_t G, Py_ssize_t R, Py_ssize_t n)
{
    float *ds = sums, *sg = sums + n, *sgx = sums + 2 * n;
    for (Py_ssize_t j = 0; j < n; j++)
        ds[j] = 0.0f;
    for (Py_ssize_t g = 0; g < G; g++) {
        const float *sigma = sig + g * n, *d = dev + g * n;
        for (Py_ssize_t j = 0; j < n; j++)
            sg[j] = sgx[j] = 0.0f;
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < n; j++) {
                Py_ssize_t e = (g * R + r) * n + j;
                float a = dz[e] * xhat[e], q = dz[e] * scales[j];
                ds[j] = ds[j] + a;
                sg[j] = sg[j] + q;
                q = q * xhat[e];
                sgx[j] = sgx[j] + q;
            }
        for (Py_ssize_t j = 0; j < n; j++) {
            float den = sigma[j] * (float)(R - 1);
            den = den + 1e-30f;
            sgx[j] = sgx[j] / den;
            sg[j] = sg[j] / (float)R;
        }
        for (Py_ssize_t r = 0; r < R; r++)
            for (Py_ssize_t j = 0; j < n; j++) {
                Py_ssize_t e = (g * R + r) * n + j;
                float q = dz[e] * scales[j];
                q = q - sg[j];
                q = q / d[j];
                float p = xhat[e] * sgx[j];
                dx[e] = q - p;
            }
    }
    for (Py_ssize_t j = 0; j < n; j++)
        dscales[j] = dscales[j] + ds[j];
}

/* The (G, R, n) shape of the first buffer, and the size of each other one checked against what
 * layout[i] says: 'z' G R n floats (as the first), 'g' G n, '4' 4 G n, 'n' n. */
static int bn_shapes(Py_buffer *b, const char *layout, Py_ssize_t *G, Py_ssize_t *R, Py_ssize_t *n)
{
    if (b[0].ndim != 3 || (*R = b[0].shape[1]) < 2) {
        PyErr_SetString(PyExc_ValueError, "batchnorm: z (groups, rows >= 2, n) expected");
        return -1;
    }
    *G = b[0].shape[0];
    *n = b[0].shape[2];
    for (int i = 1; layout[i]; i++) {
        char c = layout[i];
        Py_ssize_t want = (c == 'z' ? *G * *R : c == 'g' ? *G : c == '4' ? 4 * *G : 1) * *n;
        if (b[i].len != want * 4) {
            PyErr_Format(PyExc_ValueError, "batchnorm: argument %d: %zd floats, expected %zd", i + 1,
                         b[i].len / 4, want);
            return -1;
        }
    }
    return 0;
}

/* bn_forward(z, xhat, out, stats, scales, bias, eps) */
static PyObject *bn_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[6];
    Py_ssize_t G, R, n;
    double eps = nargs == 7 ? PyFloat_AsDouble(args[6]) : -1.0;
    if (eps < 0.0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "bn_forward(z, xhat, out, stats, scales, bias, eps >= 0)");
        return NULL;
    }
    if (typed_args(args, 6, b, "fFFFff", "") < 0)
        return NULL;
    if (bn_shapes(b, "zzz4nn", &G, &R, &n) < 0) {
        release(b, 6);
        return NULL;
    }
    batchnorm_forward(F(0), F(1), F(2), F(3), F(4), F(5), G, R, n, (float)eps);
    return done(b, 6);
}

/* bn_backward(dz, xhat, sigma, d, scales, dx, dscales) */
static PyObject *bn_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[7];
    Py_ssize_t G, R, n;
    if (typed_args(args, nargs, b, "ffffFFF", "bn_backward(dz, xhat, sigma, d, scales, dx, dscales)") < 0)
        return NULL;
    if (bn_shapes(b, "zzggnzn", &G, &R, &n) < 0) {
        release(b, 7);
        return NULL;
    }
    float *sums = PyMem_Malloc((3 * n + 1) * sizeof(float));
    if (!sums) {
        release(b, 7);
        return PyErr_NoMemory();
    }
    batchnorm_backward(F(0), F(1), F(2), F(3), F(4), F(5), F(6), sums, G, R, n);
    PyMem_Free(sums);
    return done(b, 7);
}

/* part(job, i0, i1) for the items [i0, i1) of [0, count), shared among the step loops' team in
 * shares of `share` items when `work` (elements) pays for waking it (team_share, below). */
typedef void (*team_part)(const void *job, Py_ssize_t i0, Py_ssize_t i1);
static PyObject *team_share(team_part part, const void *job, Py_ssize_t count, Py_ssize_t share, Py_ssize_t work);

/* The arguments of an update: `arrays` float32 arrays of one size, then `scalars` Python numbers
 * into k (float32 values pass through exactly). Returns the arrays' size, or -1 with an exception. */
static Py_ssize_t update_args(PyObject *const *args, Py_ssize_t nargs, int arrays, int scalars,
                              const char *usage, Py_buffer *bufs, float *k)
{
    static const int sizes[] = {1, 1, 1, 1};
    if (nargs != arrays + scalars) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (int i = 0; i < scalars; i++) {
        double x = PyFloat_AsDouble(args[arrays + i]);
        if (x == -1.0 && PyErr_Occurred())
            return -1;
        k[i] = (float)x;
    }
    return get_buffers(args, bufs, sizes, arrays);
}

/* An update's elements shared among the step loops' team: each element's arithmetic is its own,
 * so the bits are the same on any number of threads. */
#define UPDATE_SHARE 4096
typedef struct {
    float *a[4];      /* p, u (, m, v) */
    const float *k;   /* the scalars */
} update_job;

static void sgd_part(const void *job, Py_ssize_t e0, Py_ssize_t e1)
{
    const update_job *J = job;
    sgd_update(J->a[0] + e0, J->a[1] + e0, e1 - e0, J->k);
}

static PyObject *sgd(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[MAX_ARGS];
    float k[3];
    Py_ssize_t m = update_args(args, nargs, 2, 3, "sgd(p, u, decay, rate, momentum)", b, k);
    if (m < 0)
        return NULL;
    update_job J = {{F(0), F(1)}, k};
    PyObject *result = team_share(sgd_part, &J, m, UPDATE_SHARE, m);
    release(b, 2);
    return result;
}

#include "_optim.h"  /* adam_ema: AdamW's shrink, Adam and the EMA's move in one pass */

/* onehot_grad's columns [j0, j1): every row r in order, so each element of dW sums in row order
 * whichever thread owns its column. */
typedef struct {
    float *dW;
    const int64_t *id;
    const float *dz;
    Py_ssize_t k, R;
} grad_job;

static void grad_part(const void *job, Py_ssize_t j0, Py_ssize_t j1)
{
    const grad_job *J = job;
    for (Py_ssize_t r = 0; r < J->R; r++) {
        float *restrict row = J->dW + J->id[r] * J->k;
        const float *restrict src = J->dz + r * J->k;
        for (Py_ssize_t j = j0; j < j1; j++)
            row[j] += src[j];
    }
}

/* onehot_grad(dW, ids, dz): dW[ids[r]] += dz[r] for every row r, the weight gradient of a layer
 * whose input is one-hot (Dense.accumulate), in row order. dW (V, k) and dz (R, k) float32, ids (R,)
 * int64, each id checked against V. The columns shared among the step loops' team. */
static PyObject *onehot_grad(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (typed_args(args, nargs, b, "Fqf", "onehot_grad(dW, ids, dz)") < 0)
        return NULL;
    PyObject *result = NULL;
    if (id_shapes(&b[1], &b[2], &b[0], 0, "onehot_grad: dW (V, k), ids (R,), dz (R, k)") < 0)
        goto out;
    float *dW = b[0].buf;
    const int64_t *id = b[1].buf;
    const float *dz = b[2].buf;
    Py_ssize_t V = b[0].shape[0], k = b[0].shape[1], R = b[1].shape[0];
    if (check_ids(id, R, V, "onehot_grad") < 0)
        goto out;
    grad_job J = {dW, id, dz, k, R};
    result = team_share(grad_part, &J, k, 16, R * k);
out:
    release(b, 3);
    return result;
}

/* onehot_project(out, table, ids): out[t, j, s] = table[ids[t, s], j], the input projections of a
 * one-hot input gathered straight into the feature-major layout of the step loops
 * (Recurrent.project_steps; numpy's column gather from the transposed table is 2-5x slower here).
 * out (T, k, S) float32; table (V, L) float32 with L >= k, of which each row's first k are used;
 * ids (T, S) int64 in [0, V). A row stride of a multiple of 4 KB puts the S rows read together into
 * one cache set (3x slower), so the caller pads its table's rows. gather_base does columns
 * from..k of one step. */
static void gather_base(float *restrict out, const float *const *rows, Py_ssize_t from, Py_ssize_t k,
                        Py_ssize_t S)
{
    for (Py_ssize_t j0 = from; j0 < k; j0 += 8) {   /* 8 output rows at a time stay in L1 */
        Py_ssize_t w = k - j0 < 8 ? k - j0 : 8;
        for (Py_ssize_t s = 0; s < S; s++)
            for (Py_ssize_t jj = 0; jj < w; jj++)
                out[(j0 + jj) * S + s] = rows[s][j0 + jj];
    }
}

#ifdef HAVE_AVX2
#include <immintrin.h>
/* out[c * ldo + r] = rows[r][c] for an 8 x 8 block, through registers. */
__attribute__((target("avx2"))) static inline void block8(const float *const *rows, Py_ssize_t c0,
                                                          float *out, Py_ssize_t ldo)
{
    __m256 a0 = _mm256_loadu_ps(rows[0] + c0), a1 = _mm256_loadu_ps(rows[1] + c0),
           a2 = _mm256_loadu_ps(rows[2] + c0), a3 = _mm256_loadu_ps(rows[3] + c0),
           a4 = _mm256_loadu_ps(rows[4] + c0), a5 = _mm256_loadu_ps(rows[5] + c0),
           a6 = _mm256_loadu_ps(rows[6] + c0), a7 = _mm256_loadu_ps(rows[7] + c0);
    __m256 b0 = _mm256_unpacklo_ps(a0, a1), b1 = _mm256_unpackhi_ps(a0, a1),
           b2 = _mm256_unpacklo_ps(a2, a3), b3 = _mm256_unpackhi_ps(a2, a3),
           b4 = _mm256_unpacklo_ps(a4, a5), b5 = _mm256_unpackhi_ps(a4, a5),
           b6 = _mm256_unpacklo_ps(a6, a7), b7 = _mm256_unpackhi_ps(a6, a7);
    __m256 c0_ = _mm256_shuffle_ps(b0, b2, 0x44), c1 = _mm256_shuffle_ps(b0, b2, 0xEE),
           c2 = _mm256_shuffle_ps(b1, b3, 0x44), c3 = _mm256_shuffle_ps(b1, b3, 0xEE),
           c4 = _mm256_shuffle_ps(b4, b6, 0x44), c5 = _mm256_shuffle_ps(b4, b6, 0xEE),
           c6 = _mm256_shuffle_ps(b5, b7, 0x44), c7 = _mm256_shuffle_ps(b5, b7, 0xEE);
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(c0_, c4, 0x20));
    _mm256_storeu_ps(out + ldo, _mm256_permute2f128_ps(c1, c5, 0x20));
    _mm256_storeu_ps(out + 2 * ldo, _mm256_permute2f128_ps(c2, c6, 0x20));
    _mm256_storeu_ps(out + 3 * ldo, _mm256_permute2f128_ps(c3, c7, 0x20));
    _mm256_storeu_ps(out + 4 * ldo, _mm256_permute2f128_ps(c0_, c4, 0x31));
    _mm256_storeu_ps(out + 5 * ldo, _mm256_permute2f128_ps(c1, c5, 0x31));
    _mm256_storeu_ps(out + 6 * ldo, _mm256_permute2f128_ps(c2, c6, 0x31));
    _mm256_storeu_ps(out + 7 * ldo, _mm256_permute2f128_ps(c3, c7, 0x31));
}

/* The same, 8 x 8 blocks at a time through registers (S a multiple of 8), the rest as above. */
__attribute__((target("avx2"))) static void gather_avx2(float *restrict out, const float *const *rows,
                                                        Py_ssize_t k, Py_ssize_t S)
{
    Py_ssize_t body = k - k % 8;
    for (Py_ssize_t j0 = 0; j0 < body; j0 += 8)
        for (Py_ssize_t s0 = 0; s0 < S; s0 += 8)
            block8(rows + s0, j0, out + j0 * S + s0, S);
    gather_base(out, rows, body, k, S);
}
#endif

/* onehot_project's steps [t0, t1), rows[t S + s] the table's row of ids[t, s]: the steps shared
 * among the step loops' team. */
typedef struct {
    float *out;
    const float *const *rows;
    Py_ssize_t k, S;
} gather_job;

static void gather_part(const void *job, Py_ssize_t t0, Py_ssize_t t1)
{
    const gather_job *J = job;
    Py_ssize_t k = J->k, S = J->S;
    for (Py_ssize_t t = t0; t < t1; t++) {
        float *o = J->out + t * k * S;
#ifdef HAVE_AVX2
        if (use_avx2 && S % 8 == 0) {
            gather_avx2(o, J->rows + t * S, k, S);
            continue;
        }
#endif
        gather_base(o, J->rows + t * S, 0, k, S);
    }
}

static PyObject *onehot_project(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (typed_args(args, nargs, b, "Ffq", "onehot_project(out, table, ids)") < 0)
        return NULL;
    PyObject *result = NULL;
    const float **rows = NULL;
    if (b[0].ndim != 3 || b[1].ndim != 2 || b[2].ndim != 2 || b[2].shape[0] != b[0].shape[0] ||
        b[2].shape[1] != b[0].shape[2] || b[1].shape[1] < b[0].shape[1]) {
        PyErr_SetString(PyExc_ValueError, "onehot_project: out (T, k, S), table (V, L >= k), ids (T, S)");
        goto out;
    }
    Py_ssize_t T = b[0].shape[0], k = b[0].shape[1], S = b[0].shape[2];
    Py_ssize_t V = b[1].shape[0], L = b[1].shape[1];
    const float *table = b[1].buf;
    const int64_t *id = b[2].buf;
    if (check_ids(id, T * S, V, "onehot_project") < 0)
        goto out;
    rows = PyMem_Malloc((T * S > 0 ? T * S : 1) * sizeof *rows);
    if (!rows) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t r = 0; r < T * S; r++)
        rows[r] = table + id[r] * L;
    gather_job J = {b[0].buf, rows, k, S};
    result = team_share(gather_part, &J, T, 1, T * k * S);
out:
    PyMem_Free(rows);
    release(b, 3);
    return result;
}

/* transpose(out, x): out[b, c, r] = x[b, r, c], float32 (B, R, C) -> (B, C, R) (or 2-D), the
 * layout changes between a step loop's feature-major arrays and rows. numpy's strided copy runs
 * 3-4x slower here when a row is a multiple of 4 KB (the writes share cache sets). 8 x 8 blocks
 * (AVX2), columns outermost so that the blocks written next lie side by side. */
static void transpose_base(float *restrict out, const float *restrict x, Py_ssize_t R, Py_ssize_t C,
                           Py_ssize_t r0, Py_ssize_t c0)
{   /* the elements from row r0 or column c0 on: what whole 8 x 8 blocks left over */
    for (Py_ssize_t c = 0; c < C; c++)
        for (Py_ssize_t r = c < c0 ? r0 : 0; r < R; r++)
            out[c * R + r] = x[r * C + c];
}

static PyObject *transpose(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[2];
    if (typed_args(args, nargs, b, "Ff", "transpose(out, x)") < 0)
        return NULL;
    int d = b[1].ndim;
    if (d < 2 || d > 3 || b[0].ndim != d || (d == 3 && b[0].shape[0] != b[1].shape[0]) ||
        b[0].shape[d - 2] != b[1].shape[d - 1] || b[0].shape[d - 1] != b[1].shape[d - 2]) {
        release(b, 2);
        PyErr_SetString(PyExc_ValueError, "transpose: x (B, R, C) or (R, C), out (B, C, R) or (C, R)");
        return NULL;
    }
    Py_ssize_t B = d == 3 ? b[1].shape[0] : 1, R = b[1].shape[d - 2], C = b[1].shape[d - 1];
    Py_ssize_t R8 = 0, C8 = 0;
    for (Py_ssize_t i = 0; i < B; i++) {
        const float *x = (const float *)b[1].buf + i * R * C;
        float *o = (float *)b[0].buf + i * R * C;
#ifdef HAVE_AVX2
        if (use_avx2) {
            const float *rows[8];
            R8 = R - R % 8, C8 = C - C % 8;
            for (Py_ssize_t c0 = 0; c0 < C8; c0 += 8)
                for (Py_ssize_t r0 = 0; r0 < R8; r0 += 8) {
                    for (int q = 0; q < 8; q++)
                        rows[q] = x + (r0 + q) * C;
                    block8(rows, c0, o + c0 * R + r0, R);
                }
        }
#endif
        transpose_base(o, x, R, C, R8, C8);
    }
    return done(b, 2);
}

typedef struct {
    const float *x;
    float *p;
    Py_ssize_t width;
    float t;
} softmax_job;

static void softmax_part(const void *job, Py_ssize_t i0, Py_ssize_t i1)
{
    const softmax_job *J = job;
    CALL(softmax, J->x + i0 * J->width, J->p + i0 * J->width, i1 - i0, J->width, J->t);
}

/* softmax(x, p, groups, t): p = the softmax of x's rows, each in `groups` slices, at temperature t;
 * the slices shared among threads (each is its own: the same bits on any number). */
static PyObject *softmax(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1};
    Py_buffer b[MAX_ARGS];
    Py_ssize_t groups = nargs == 4 ? PyLong_AsSsize_t(args[2]) : -1;
    double t = nargs == 4 ? PyFloat_AsDouble(args[3]) : -1.0;
    if (nargs != 4 || groups < 1 || t <= 0.0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "softmax(x, p, groups > 0, temperature > 0)");
        return NULL;
    }
    Py_ssize_t m = get_buffers(args, b, sizes, 2);
    if (m < 0)
        return NULL;
    Py_ssize_t width = b[0].ndim ? b[0].shape[b[0].ndim - 1] : 0;
    if (width == 0 || width % groups) {
        PyErr_SetString(PyExc_ValueError, "softmax: the rows' length must be a multiple of groups");
        release(b, 2);
        return NULL;
    }
    softmax_job J = {F(0), F(1), width / groups, (float)t};
    PyObject *result = team_share(softmax_part, &J, m / (width / groups), 64, m);
    release(b, 2);
    return result;
}

#define XENT_ROWS 64  /* rows of a partial cost sum: the sums and their order are the same on any threads */
typedef struct {
    const float *P;
    const int64_t *id;
    float *D;
    double *costs;  /* one per XENT_ROWS rows */
    Py_ssize_t R, n;
} xent_job;

/* One row's delta d (n,) = onehot(id) - p and its cost -ln p[id]; d may be p itself. */
static double xent_row(const float *p, float *d, int64_t id, Py_ssize_t n)
{
    float picked = p[id];
    for (Py_ssize_t j = 0; j < n; j++)
        d[j] = -p[j];
    d[id] = 1.0f - picked;
    return -log((double)picked);
}

/* The rows of the chunks [c0, c1) of XENT_ROWS rows: their deltas and each chunk's cost. */
static void xent_part(const void *job, Py_ssize_t c0, Py_ssize_t c1)
{
    const xent_job *J = job;
    Py_ssize_t n = J->n;
    for (Py_ssize_t c = c0; c < c1; c++) {
        double cost = 0.0;
        Py_ssize_t end = (c + 1) * XENT_ROWS < J->R ? (c + 1) * XENT_ROWS : J->R;
        for (Py_ssize_t r = c * XENT_ROWS; r < end; r++)
            cost += xent_row(J->P + r * n, J->D + r * n, J->id[r], n);
        J->costs[c] = cost;
    }
}

/* part over the chunks of R rows of n classes on the team, after checking ids, then the chunks'
 * costs added in order: the cost sum as a Python float, or NULL with an exception. */
static PyObject *summed_costs(team_part part, const void *job, const double *costs, Py_ssize_t chunks,
                              const int64_t *id, Py_ssize_t R, Py_ssize_t n, const char *who)
{
    if (check_ids(id, R, n, who) < 0)
        return NULL;
    PyObject *none = team_share(part, job, chunks, 1, R * n);
    if (!none)
        return NULL;
    Py_DECREF(none);
    double cost = 0.0;
    for (Py_ssize_t c = 0; c < chunks; c++)
        cost += costs[c];
    return PyFloat_FromDouble(cost);
}

/* xent(p, ids, delta) -> Σ -ln p[r, ids[r]]; delta = -p except delta[r, ids[r]] = 1 - p[r, ids[r]]
 * (Softmax.loss with class ids). p and delta (R, n) float32, ids (R,) int64 in [0, n). The rows
 * shared among threads in chunks, whose costs are added in order. */
static PyObject *xent(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (typed_args(args, nargs, b, "fqF", "xent(p, ids, delta)") < 0)
        return NULL;
    PyObject *result = NULL;
    if (id_shapes(&b[1], &b[0], &b[2], 1, "xent: p (R, n), ids (R,), delta (R, n)") < 0)
        goto out;
    Py_ssize_t R = b[0].shape[0], n = b[0].shape[1], chunks = (R + XENT_ROWS - 1) / XENT_ROWS;
    xent_job J = {b[0].buf, b[1].buf, b[2].buf, PyMem_Malloc((chunks ? chunks : 1) * sizeof(double)), R, n};
    if (!J.costs) {
        PyErr_NoMemory();
        goto out;
    }
    result = summed_costs(xent_part, &J, J.costs, chunks, J.id, R, n, "xent");
    PyMem_Free(J.costs);
out:
    release(b, 3);
    return result;
}

#include "_head.h"  /* add: elementwise passes on the team */

/* to_steps(out, F, bias): out[t, j, s] = F[j, t S + s] + bias[j], float32: a recurrent layer's
 * input projection, one GEMM's (k, T S) result, laid out for the feature-major step loops
 * (T, k, S) with the bias added as it goes (Recurrent.project_steps). One pass over memory instead
 * of numpy's two (the bias, then the copy), on the step loops' team (rows j shared out). */
typedef struct {
    const float *F, *bias;
    float *out;
    Py_ssize_t T, k, S;
} steps_job;

static void steps_part(const void *job, Py_ssize_t j0, Py_ssize_t j1)
{
    const steps_job *J = job;
    Py_ssize_t T = J->T, k = J->k, S = J->S;
    for (Py_ssize_t j = j0; j < j1; j++) {
        const float *f = J->F + j * T * S;
        float b = J->bias[j];
        for (Py_ssize_t t = 0; t < T; t++) {
            float *o = J->out + (t * k + j) * S;
            for (Py_ssize_t s = 0; s < S; s++)
                o[s] = f[t * S + s] + b;
        }
    }
}

static PyObject *to_steps(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (typed_args(args, nargs, b, "Fff", "to_steps(out, F, bias)") < 0)
        return NULL;
    if (b[0].ndim != 3 || b[1].ndim != 2 || b[2].ndim != 1 || b[1].shape[0] != b[0].shape[1] ||
        b[1].shape[1] != b[0].shape[0] * b[0].shape[2] || b[2].shape[0] != b[0].shape[1]) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "to_steps: out (T, k, S), F (k, T*S), bias (k,)");
        return NULL;
    }
    steps_job J = {b[1].buf, b[2].buf, b[0].buf, b[0].shape[0], b[0].shape[1], b[0].shape[2]};
    PyObject *result = team_share(steps_part, &J, J.k, 8, J.T * J.k * J.S);
    release(b, 3);
    return result;
}

/* draw(p, u, out): out[r] = the number of j whose mass p[r, 0] + ... + p[r, j], summed in double in
 * order, is at most u[r] times the row's total (so the first j past it), but never past the row's
 * last symbol with mass (the rounding of u near 1). p (R, V) float32, u (R,) float64 in [0, 1),
 * out (R,) int64: one inverse-CDF draw per stream, exactly kernels.draw's (numpy's cumsum adds in
 * the same order). Eight rows go together: each row's sum is a chain of dependent adds, and eight
 * independent chains keep the adder busy (32 x 256: 4 us, one row at a time 16). */
#define DRAW_ROWS 8
static PyObject *draw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (typed_args(args, nargs, b, "fdQ", "draw(p, u, out)") < 0)
        return NULL;
    PyObject *result = NULL;
    if (b[0].ndim != 2 || b[1].ndim != 1 || b[2].ndim != 1 || b[1].shape[0] != b[0].shape[0] ||
        b[2].shape[0] != b[0].shape[0] || b[0].shape[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "draw: p (R, V), u (R,), out (R,)");
        goto out;
    }
    const float *P = b[0].buf;
    const double *U = b[1].buf;
    int64_t *o = b[2].buf;
    Py_ssize_t R = b[0].shape[0], V = b[0].shape[1];
    for (Py_ssize_t r0 = 0; r0 < R; r0 += DRAW_ROWS) {
        Py_ssize_t n = R - r0 < DRAW_ROWS ? R - r0 : DRAW_ROWS;
        const float *row = P + r0 * V;
        double total[DRAW_ROWS] = {0}, c[DRAW_ROWS] = {0}, target[DRAW_ROWS];
        Py_ssize_t last[DRAW_ROWS], count[DRAW_ROWS] = {0};
        for (Py_ssize_t k = 0; k < n; k++)
            last[k] = V - 1; /* a row without mass: its last symbol, as the reference */
        for (Py_ssize_t j = 0; j < V; j++)
            for (Py_ssize_t k = 0; k < n; k++)
                total[k] += (double)row[k * V + j];
        for (Py_ssize_t k = 0; k < n; k++)
            target[k] = U[r0 + k] * total[k];
        for (Py_ssize_t j = 0; j < V; j++)
            for (Py_ssize_t k = 0; k < n; k++) {
                c[k] += (double)row[k * V + j];
                count[k] += c[k] <= target[k];
            }
        for (Py_ssize_t k = 0; k < n; k++) {
            for (Py_ssize_t j = V - 1; j >= 0; j--)
                if (row[k * V + j] > 0.0f) {
                    last[k] = j;
                    break;
                }
            o[r0 + k] = count[k] < last[k] ? count[k] : last[k];
        }
    }
    result = Py_None;
    Py_INCREF(result);
out:
    release(b, 3);
    return result;
}

#define METHOD(name, doc) {#name, (PyCFunction)(void (*)(void))name, METH_FASTCALL, doc}

#ifdef HAVE_AVX2
#include "_panel.h"  /* its functions are added to the module only when the CPU has AVX-512 */

/* panel_matmul(out, x, Wp, b) with x (M, K) rows, or panel_matmul_t(out, xT, Wp, b) with x given
 * as its transpose xT (K, M) (a feature-major state): out (M, N) = x W + b. */
static PyObject *panel_call(PyObject *const *args, Py_ssize_t nargs, int transposed)
{
    Py_buffer b[4];
    if (typed_args(args, nargs, b, "Ffff", transposed ? "panel_matmul_t(out, xT, Wp, b)" : "panel_matmul(out, x, Wp, b)") < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t M = b[0].shape[0], N = b[0].shape[1];
    if (b[0].ndim != 2 || b[1].ndim != 2 || b[2].ndim != 3 || b[3].ndim != 1 ||
        b[1].shape[transposed] != M || b[2].shape[1] != b[1].shape[!transposed] || b[2].shape[2] != PANEL ||
        b[2].shape[0] != (N + PANEL - 1) / PANEL || b[3].shape[0] != N) {
        PyErr_SetString(PyExc_ValueError, "panel_matmul: out (M, N), x (M, K) (xT (K, M)), Wp (ceil(N/32), K, 32), b (N,)");
        goto out;
    }
    Py_ssize_t K = b[2].shape[1];
    panel_job job = {b[1].buf, b[2].buf, b[3].buf, b[0].buf, M, K, N, b[2].shape[0],
                     transposed ? 1 : K, transposed ? M : 1};
    Py_BEGIN_ALLOW_THREADS
    panel_run(&job);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
out:
    release(b, 4);
    return result;
}

static PyObject *panel_matmul(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return panel_call(args, nargs, 0);
}

static PyObject *panel_matmul_t(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return panel_call(args, nargs, 1);
}

static PyObject *panel_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&pool.call);
    if (pool.workers == 0 && n >= 1)  /* before the first call only: the workers then stay */
        pool.threads = n > 64 ? 64 : (int)n;
    n = pool.threads;
    pthread_mutex_unlock(&pool.call);
    return PyLong_FromLong(n);
}

#include "_amx.h"  /* matmul_bf16 (added to the module only where AMX runs) and the tiles the loops share */
#include "_loop.h"

#define LOOP_MAX_ARGS 12  /* the arrays of a loop call, at most */

/* The buffers of a loop call: `kinds` the arrays it always takes, `optional` the ones it may take
 * after them ('f' read, 'F' written, all float32). Returns the count, or -1 with an exception set. */
static int loop_args(PyObject *const *args, Py_ssize_t nargs, Py_buffer *b, const char *kinds, const char *optional,
                     const char *usage)
{
    Py_ssize_t fewest = (Py_ssize_t)strlen(kinds), most = fewest + (Py_ssize_t)strlen(optional);
    char all[LOOP_MAX_ARGS + 1];
    if (nargs != fewest && nargs != most) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    snprintf(all, sizeof all, "%s%s", kinds, optional);
    return get_typed(args, b, all, (int)nargs) < 0 ? -1 : (int)nargs;
}

/* Whether buffer b has the shape (d0, d1[, d2]) (d2 < 0: 2-D). */
static int shaped(const Py_buffer *b, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2)
{
    return b->ndim == (d2 < 0 ? 2 : 3) && b->shape[0] == d0 && b->shape[1] == d1 && (d2 < 0 || b->shape[2] == d2);
}

/* Run `body` on the team with `job`, over `shares` shares of the units, after loop_begin has
 * made the `count` scratch `parts` (sizes[i] floats; the first `panels` of them panels) and, when
 * x0 is given, packed the state x0 (n, S) into the panels *xp. None, or NULL with MemoryError set. */
static PyObject *loop_go(float **const *parts, const size_t *sizes, int count, Py_ssize_t S, int panels,
                         const float *x0, float **xp, Py_ssize_t n, loop_body body, void *job, Py_ssize_t shares)
{
    int failed;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&team.call);
    failed = loop_begin(parts, sizes, count, S, panels);
    if (!failed) {
        if (x0)
            loop_to_panels(x0, *xp, n, S, 0, n);
        loop_run(body, job, shares > LOOP_MAX_THREADS ? LOOP_MAX_THREADS : (int)shares);
    }
    pthread_mutex_unlock(&team.call);
    Py_END_ALLOW_THREADS
    if (failed)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* The bf16 flag of a loop call, a trailing int after its arrays (taken off *nargs): 0 without it, -1
 * with an exception set when it is true and the module has no AMX loops. */
static int loop_amx_flag(PyObject *const *args, Py_ssize_t *nargs, const char *name)
{
    int bf16 = *nargs > 1 && PyLong_Check(args[*nargs - 1]) ? PyObject_IsTrue(args[--*nargs]) : 0;
    if (bf16 > 0 && !amx_on) {
        PyErr_Format(PyExc_ValueError, "%s: bf16=1 needs AMX-BF16 (this CPU, kernel or compiler has none: _kernels.amx is False)", name);
        return -1;
    }
    return bf16;
}

/* lstm_loop(WT, XU, G, C, TC, H, Y[, P][, bf16]): the forward step loop (_loop.h). */
static PyObject *lstm_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[LOOP_MAX_ARGS];
    int bf16 = loop_amx_flag(args, &nargs, "lstm_loop");
    if (bf16 < 0)
        return NULL;
    int count = loop_args(args, nargs, b, "ffFFFFF", "f", "lstm_loop(WT, XU, G, C, TC, H, Y[, P])");
    if (count < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[0].shape[1], T = b[1].ndim == 3 ? b[1].shape[0] : 0, S = b[1].ndim == 3 ? b[1].shape[2] : 0;
    if (!shaped(&b[0], 4 * n, n, -1) || !shaped(&b[1], T, 4 * n, S) || !shaped(&b[2], T, 4 * n, S) ||
        !shaped(&b[3], T + 1, n, S) || !shaped(&b[4], T, n, S) || !shaped(&b[5], T + 1, n, S) ||
        !shaped(&b[6], T, S, n) || (count == 8 && !shaped(&b[7], 3 * n, S, -1)) || T < 1 || S < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "lstm_loop: WT (4n, n), XU and G (T, 4n, S), C and H (T+1, n, S), TC (T, n, S), "
                                          "Y (T, S, n), P (3n, S)");
        goto out;
    }
    Py_ssize_t P = (S + PANEL - 1) / PANEL, pairs = (n + 1) / 2;
    lstm_job J = {b[0].buf, b[1].buf, NULL, count == 8 ? b[7].buf : NULL, b[2].buf, b[3].buf, b[4].buf, b[5].buf,
                  NULL, NULL, NULL, NULL, NULL, NULL, NULL, T, S, n, b[6].buf, NULL, NULL, bf16};
    float **parts[] = {&J.xp, &J.A};
    size_t sizes[] = {(size_t)2 * P * n * PANEL, (size_t)pairs * n * LOOP_ROWS};
    size_t amx[] = {(size_t)2 * ((S + 15) / 16) * LOOP_AMX_NB(n) * 8, (size_t)pairs * LOOP_AMX_NB(n) * 8};  /* in floats */
    if (bf16)
        result = loop_go(parts, amx, 2, S, 0, NULL, NULL, n, lstm_forward_body, &J, pairs);
    else
        result = loop_go(parts, sizes, 2, S, 1, J.H, &J.xp, n, lstm_forward_body, &J, pairs);
out:
    release(b, count);
    return result;
}

/* lstm_loop_back(W, DY, G, C, TC, dG, db, dh, dc[, P, dP][, bf16]): the step loop's way back (_loop.h). */
static PyObject *lstm_loop_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[LOOP_MAX_ARGS];
    int bf16 = loop_amx_flag(args, &nargs, "lstm_loop_back");
    if (bf16 < 0)
        return NULL;
    int count = loop_args(args, nargs, b, "fffffFFFF", "fF", "lstm_loop_back(W, DY, G, C, TC, dG, db, dh, dc[, P, dP])");
    if (count < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[0].shape[0], T = b[1].ndim == 3 ? b[1].shape[0] : 0, S = b[1].ndim == 3 ? b[1].shape[1] : 0;
    if (!shaped(&b[0], n, 4 * n, -1) || !shaped(&b[1], T, S, n) || !shaped(&b[2], T, 4 * n, S) ||
        !shaped(&b[3], T + 1, n, S) || !shaped(&b[4], T, n, S) || !shaped(&b[5], T, S, 4 * n) ||
        b[6].ndim != 1 || b[6].shape[0] != 4 * n || !shaped(&b[7], n, S, -1) || !shaped(&b[8], n, S, -1) ||
        (count == 11 && (!shaped(&b[9], 3 * n, S, -1) || !shaped(&b[10], 3 * n, S, -1))) || T < 1 || S < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "lstm_loop_back: W (n, 4n), DY (T, S, n), G (T, 4n, S), C (T+1, n, S), TC (T, n, S), "
                                          "dG (T, S, 4n), db (4n,), dh and dc (n, S), P and dP (3n, S)");
        goto out;
    }
    Py_ssize_t P = (S + PANEL - 1) / PANEL, eights = (n + 7) / 8;
    lstm_job J = {b[0].buf, NULL, b[1].buf, count == 11 ? b[9].buf : NULL, b[2].buf, b[3].buf, b[4].buf, NULL,
                  b[5].buf, b[7].buf, b[8].buf, count == 11 ? b[10].buf : NULL, NULL, NULL, NULL, T, S, n,
                  NULL, b[6].buf, NULL, bf16};
    memset(J.db, 0, (size_t)4 * n * sizeof(float));
    float **parts[] = {&J.xp, &J.A, &J.d, &J.DH};
    size_t sizes[] = {(size_t)2 * P * 4 * n * PANEL, (size_t)eights * 4 * n * LOOP_ROWS, (size_t)4 * n * S, (size_t)n * S};
    size_t amx[] = {(size_t)2 * ((S + 15) / 16) * 4 * LOOP_AMX_NB(n) * 8, (size_t)eights * 4 * LOOP_AMX_NB(n) * 8,
                    sizes[2], sizes[3]};  /* in floats */
    result = loop_go(parts, bf16 ? amx : sizes, 4, S, bf16 ? 0 : 1, NULL, NULL, n, lstm_back_loop_body, &J, eights);
out:
    release(b, count);
    return result;
}

/* gru_loop(tanh, WzrT, WhT, XU, ZR, HC, RH, H, Y[, P, RHrows][, bf16]): the GRU's forward step loop (_loop.h). */
static PyObject *gru_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[LOOP_MAX_ARGS];
    int tanh_act = nargs > 0 ? PyObject_IsTrue(args[0]) : 0, bf16 = loop_amx_flag(args, &nargs, "gru_loop");
    if (tanh_act < 0 || bf16 < 0)
        return NULL;
    int count = loop_args(args + 1, nargs - 1, b, "fffFFFFF", "FF", "gru_loop(tanh, WzrT, WhT, XU, ZR, HC, RH, H, Y[, P, RHrows])");
    if (count < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[1].shape[0], T = b[2].ndim == 3 ? b[2].shape[0] : 0, S = b[2].ndim == 3 ? b[2].shape[2] : 0;
    if (!shaped(&b[0], 2 * n, n, -1) || !shaped(&b[1], n, n, -1) || !shaped(&b[2], T, 3 * n, S) ||
        !shaped(&b[3], T, 2 * n, S) || !shaped(&b[4], T, n, S) || !shaped(&b[5], T, n, S) || !shaped(&b[6], T + 1, n, S) ||
        !shaped(&b[7], T, S, n) || (count == 10 && (!shaped(&b[8], T, 3 * n, S) || !shaped(&b[9], T, S, n))) ||
        T < 1 || S < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "gru_loop: WzrT (2n, n), WhT (n, n), XU and P (T, 3n, S), ZR (T, 2n, S), HC and RH (T, n, S), "
                                          "H (T+1, n, S), Y and RHrows (T, S, n)");
        goto out;
    }
    Py_ssize_t P = (S + PANEL - 1) / PANEL, eights = (n + 7) / 8;
    gru_job J = {b[0].buf, b[1].buf, b[2].buf, NULL, b[3].buf, b[4].buf, b[5].buf, b[6].buf,
                 count == 10 ? b[8].buf : NULL, count == 10 ? b[9].buf : NULL, NULL, NULL,
                 NULL, NULL, NULL, NULL, NULL, NULL, T, S, n, tanh_act, b[7].buf, NULL, NULL, bf16};
    float **parts[] = {&J.xa, &J.xb, &J.Azr, &J.Ah};
    size_t sizes[] = {(size_t)P * n * PANEL, (size_t)P * n * PANEL, (size_t)2 * eights * n * LOOP_ROWS,
                      (size_t)eights * n * LOOP_ROWS};
    size_t pairs = (size_t)(S + 15) / 16 * LOOP_AMX_NB(n) * 8, tiles = (size_t)eights * LOOP_AMX_NB(n) * 8;  /* in floats */
    size_t amx[] = {pairs, pairs, tiles, tiles};
    if (bf16)
        result = loop_go(parts, amx, 4, S, 0, NULL, NULL, n, gru_forward_body, &J, eights);
    else
        result = loop_go(parts, sizes, 4, S, 2, J.H, &J.xa, n, gru_forward_body, &J, eights);
out:
    release(b, count);
    return result;
}

/* gru_loop_back(Wzr, Wh, DY, ZR, P, dP, db, dh[, bf16]): the GRU's step loop back (_loop.h). */
static PyObject *gru_loop_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[LOOP_MAX_ARGS];
    int bf16 = loop_amx_flag(args, &nargs, "gru_loop_back");
    if (bf16 < 0)
        return NULL;
    int count = loop_args(args, nargs, b, "fffffFFF", "", "gru_loop_back(Wzr, Wh, DY, ZR, P, dP, db, dh)");
    if (count < 0)
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = b[0].shape[0], T = b[2].ndim == 3 ? b[2].shape[0] : 0, S = b[2].ndim == 3 ? b[2].shape[1] : 0;
    if (!shaped(&b[0], n, 2 * n, -1) || !shaped(&b[1], n, n, -1) || !shaped(&b[2], T, S, n) || !shaped(&b[3], T, 2 * n, S) ||
        !shaped(&b[4], T, 3 * n, S) || !shaped(&b[5], T, S, 3 * n) || b[6].ndim != 1 || b[6].shape[0] != 3 * n ||
        !shaped(&b[7], n, S, -1) || T < 1 || S < 1 || n < 1) {
        PyErr_SetString(PyExc_ValueError, "gru_loop_back: Wzr (n, 2n), Wh (n, n), DY (T, S, n), ZR (T, 2n, S), P (T, 3n, S), "
                                          "dP (T, S, 3n), db (3n,), dh (n, S)");
        goto out;
    }
    Py_ssize_t P = (S + PANEL - 1) / PANEL, eights = (n + 7) / 8;
    gru_job J = {b[0].buf, b[1].buf, NULL, b[2].buf, b[3].buf, NULL, NULL, NULL, b[4].buf, NULL, b[5].buf, b[7].buf,
                 NULL, NULL, NULL, NULL, NULL, NULL, T, S, n, 0, NULL, b[6].buf, NULL, bf16};
    memset(J.db, 0, (size_t)3 * n * sizeof(float));
    float **parts[] = {&J.xa, &J.xb, &J.Azr, &J.Ah, &J.d, &J.drh, &J.DH};
    size_t sizes[] = {(size_t)P * n * PANEL, (size_t)P * 2 * n * PANEL, (size_t)eights * 2 * n * LOOP_ROWS,
                      (size_t)eights * n * LOOP_ROWS, (size_t)3 * n * S, (size_t)n * S, (size_t)n * S};
    size_t pairs = (size_t)(S + 15) / 16 * LOOP_AMX_NB(n) * 8, tiles = (size_t)eights * LOOP_AMX_NB(n) * 8;  /* in floats */
    size_t amx[] = {pairs, 2 * pairs, 2 * tiles, tiles, sizes[4], sizes[5], sizes[6]};
    result = loop_go(parts, bf16 ? amx : sizes, 7, S, bf16 ? 0 : 2, NULL, NULL, n, gru_back_loop_body, &J, eights);
out:
    release(b, count);
    return result;
}

/* rnn_loop(a, shortcut, WT, bias, A, B, Sf, St) and rnn_loop_back(a, shortcut, W, B, dS, dB, db): the
 * [rnn] step loop and its way back for a slope activation of slope a (_loop.h). */
static PyObject *rnn_loop_call(PyObject *const *args, Py_ssize_t nargs, int back)
{
    Py_buffer b[LOOP_MAX_ARGS];
    const char *usage = back ? "rnn_loop_back(a, shortcut, W, B, dS, dB, db)" : "rnn_loop(a, shortcut, WT, bias, A, B, Sf, St)";
    float a = 0.0f;
    if (nargs != (back ? 7 : 8)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    int shortcut = PyObject_IsTrue(args[1]);
    if (slope_arg(args[0], &a) < 0 || shortcut < 0)
        return NULL;
    int count = loop_args(args + 2, nargs - 2, b, back ? "ffFFF" : "fffFFF", "", usage);
    if (count < 0)
        return NULL;
    PyObject *result = NULL;
    const Py_buffer *Bb = &b[back ? 1 : 3];  /* B (T, n, S) */
    Py_ssize_t n = b[0].shape[0], T = Bb->ndim == 3 ? Bb->shape[0] : 0, S = Bb->ndim == 3 ? Bb->shape[2] : 0;
    int ok = shaped(&b[0], n, n, -1) && shaped(Bb, T, n, S) && T >= 1 && S >= 1 && n >= 1;
    if (back)
        ok = ok && shaped(&b[2], T, S, n) && shaped(&b[3], T, S, n) && b[4].ndim == 1 && b[4].shape[0] == n;
    else
        ok = ok && shaped(&b[1], n, S, -1) && shaped(&b[2], T, S, n) && shaped(&b[4], T + 1, n, S) && shaped(&b[5], T, S, n);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, back ? "rnn_loop_back: W (n, n), B (T, n, S), dS and dB (T, S, n), db (n,)"
                                               : "rnn_loop: WT (n, n), bias (n, S), A (T, S, n), B (T, n, S), Sf (T+1, n, S), St (T, S, n)");
        goto out;
    }
    Py_ssize_t P = (S + PANEL - 1) / PANEL, eights = (n + 7) / 8;
    rnn_job J = {b[0].buf, back ? NULL : b[1].buf, back ? NULL : b[2].buf, Bb->buf, back ? NULL : b[4].buf, NULL, NULL,
                 NULL, NULL, NULL, T, S, n, a, shortcut, NULL, back ? NULL : b[5].buf, back ? b[2].buf : NULL,
                 back ? b[3].buf : NULL, back ? b[4].buf : NULL};
    if (back)
        memset(J.db, 0, (size_t)n * sizeof(float));
    float **parts[] = {&J.xp, &J.A, &J.w, back ? &J.dSf : &J.Af, &J.dBf};
    size_t sizes[] = {(size_t)2 * P * n * PANEL, (size_t)eights * n * LOOP_ROWS, (size_t)n * S, (size_t)(back ? 2 : 1) * n * S,
                      (size_t)2 * n * S};
    result = loop_go(parts, sizes, back ? 5 : 4, S, 1, back ? NULL : J.Sf, &J.xp, n, back ? rnn_back_loop_body : rnn_forward_body, &J, eights);
out:
    release(b, count);
    return result;
}

static PyObject *rnn_loop(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return rnn_loop_call(args, nargs, 0);
}

static PyObject *rnn_loop_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return rnn_loop_call(args, nargs, 1);
}

/* loop_threads(n) -> the threads the step loops run on (n >= 1; a call of its own runs on fewer
 * when the layer has fewer units to share). */
static PyObject *loop_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&team.call);
    if (n >= 1)
        team.wanted = n > LOOP_MAX_THREADS ? LOOP_MAX_THREADS : (int)n;
    n = team.wanted;
    pthread_mutex_unlock(&team.call);
    return PyLong_FromLong(n);
}

static PyMethodDef panel_methods[] = {
    METHOD(panel_matmul, "panel_matmul(out, x, Wp, b): out = x W + b for W packed in 32-column panels Wp"),
    METHOD(panel_matmul_t, "panel_matmul_t(out, xT, Wp, b): panel_matmul of x given as its transpose xT"),
    {"panel_threads", panel_threads, METH_O, "panel_threads(n) -> the threads panel_matmul runs on (set before its first call)"},
    METHOD(lstm_loop, "lstm_loop(WT, XU, G, C, TC, H, Y[, P][, bf16]): the LSTM's forward step loop, products and steps, feature-major, Y the outputs as rows; bf16: its products on AMX (_kernels.amx)"),
    METHOD(lstm_loop_back, "lstm_loop_back(W, DY, G, C, TC, dG, db, dh, dc[, P, dP][, bf16]): the LSTM's step loop back from rows DY: gate deltas as rows dG, their sums db; bf16: its products on AMX (_kernels.amx)"),
    METHOD(gru_loop, "gru_loop(tanh, WzrT, WhT, XU, ZR, HC, RH, H, Y[, P, RHrows][, bf16]): the GRU's forward step loop, feature-major, Y the outputs as rows; bf16: its products on AMX (_kernels.amx)"),
    METHOD(gru_loop_back, "gru_loop_back(Wzr, Wh, DY, ZR, P, dP, db, dh[, bf16]): the GRU's step loop back from rows DY: deltas as rows dP, their sums db; bf16: its products on AMX (_kernels.amx)"),
    METHOD(rnn_loop, "rnn_loop(a, shortcut, WT, bias, A, B, Sf, St): the [rnn] step loop for a slope activation (leaky, relie), feature-major, A and St rows"),
    METHOD(rnn_loop_back, "rnn_loop_back(a, shortcut, W, B, dS, dB, db): its way back from the states' deltas as rows dS (completed in place), dB rows, db their sums"),
    {"loop_threads", loop_threads, METH_O, "loop_threads(n) -> the threads the step loops run on"},
    {NULL, NULL, 0, NULL},
};
#endif

#ifdef HAVE_AVX2
/* The call's items in one claim per thread, each a contiguous run of whole shares, which the threads
 * take in order from a counter: a thread that starts late, or loses its core on a busy machine,
 * may find its claim taken by another, which does it instead of waiting for it at the call's end.
 * One claim each, not more: [sru]'s kernels over 4 runs of 64 units ran 1.4-1.8x slower on one
 * thread than over the whole rows (each run is a pass over every row). */
typedef struct {
    team_part part;
    const void *job;
    Py_ssize_t count, share;
    atomic_long next;  /* the next claim to take */
} team_job;

static void team_body(void *job, int id, int threads, unsigned *phase)
{
    team_job *J = job;
    Py_ssize_t shares = (J->count + J->share - 1) / J->share;
    Py_ssize_t claims = threads < shares ? threads : shares;
    for (Py_ssize_t q; (q = atomic_fetch_add(&J->next, 1)) < claims;) {
        Py_ssize_t i0 = shares * q / claims * J->share, i1 = shares * (q + 1) / claims * J->share;
        J->part(J->job, i0, i1 < J->count ? i1 : J->count);
    }
}
#endif

#define TEAM_WORK 16384  /* elements from which a call runs on the team: below, waking it costs more */

/* part(job, ·) over [0, count) in shares of `share` items on the step loops' team (_loop.h,
 * loop_threads' count, with the GIL released) where it is built and `work` is large enough, else
 * on this thread. None, or NULL with MemoryError. */
static PyObject *team_share(team_part part, const void *job, Py_ssize_t count, Py_ssize_t share, Py_ssize_t work)
{
#ifdef HAVE_AVX2
    Py_ssize_t shares = (count + share - 1) / share;
    if (work >= TEAM_WORK && shares > 1) {
        team_job J = {part, job, count, share};
        atomic_init(&J.next, 0);
        return loop_go(NULL, NULL, 0, 0, 0, NULL, NULL, 0, team_body, &J, shares);
    }
#endif
    part(job, 0, count);
    Py_RETURN_NONE;
}

#include "_sample.h"  /* softmax_rows; its sample_* functions are added only when the CPU has AVX-512 */

#define KIND_WRAPPERS
#include "_kinds.h"

static PyMethodDef methods[] = {
    KIND_METHODS
    HEAD_METHODS
    OPTIM_METHODS
    METHOD(lstm_step, "lstm_step(g, xu, c, c1, tc, h1[, P]): one LSTM step's gates, cell and output in place (peepholes P = [pi pf po]/2)"),
    METHOD(lstm_back, "lstm_back(dh, dc, DH, g, c, tc, d[, P, dP]): one LSTM step's gate deltas d; dh, dc updated (peepholes P; dP += their deltas)"),
    METHOD(gru_zr, "gru_zr(zr, xu, h, rh): the z and r gates in place (xu: z r c) and r*h"),
    METHOD(gru_step, "gru_step(tanh, c, xu, zr, h, h1[, P]): the candidate in place (xu: z r c) and the new h"),
    METHOD(gru_back, "gru_back(dh, drh, zr, P, d): dz and dr into d; dh becomes dh*z + drh*r"),
    METHOD(draw, "draw(p, u, out): out[r] = an inverse-CDF draw from row r of p at u[r]"),
    METHOD(onehot_grad, "onehot_grad(dW, ids, dz): dW[ids[r]] += dz[r] for every row r"),
    METHOD(onehot_project, "onehot_project(out, table, ids): out[t, j, s] = table[ids[t, s], j]"),
    METHOD(to_steps, "to_steps(out, F, bias): out[t, j, s] = F[j, t*S + s] + bias[j], a projection laid out for the step loops"),
    METHOD(softmax, "softmax(x, p, groups, temperature): p = softmax of x's rows in groups, at the temperature"),
    METHOD(xent, "xent(p, ids, delta) -> the cost sum of -ln p[r, ids[r]]; delta = onehot(ids) - p"),
    METHOD(sgd, "sgd(p, u, decay, rate, momentum): one SGD update of p in place"),
    METHOD(transpose, "transpose(out, x): out[b, c, r] = x[b, r, c] (or 2-D)"),
    METHOD(bn_forward, "bn_forward(z, xhat, out, stats, scales, bias, eps): batchnorm in training; stats = mean, var, sigma, d"),
    METHOD(bn_backward, "bn_backward(dz, xhat, sigma, d, scales, dx, dscales): back through it; dscales accumulated"),
    METHOD(rnn_step, "rnn_step(a, b, bias, x, s1[, s]): b = f(b + bias), s1 = x + b (+ s); f leaky/relie of slope a"),
    METHOD(rnn_back, "rnn_back(a, ds1, w, y, d[, ds]): ds1 += w (+ ds), d = ds1 f'(y); f of slope a"),
    METHOD(slope_act, "slope_act(x, a): x = x > 0 ? x : a*x in place (leaky, relie)"),
    METHOD(slope_grad, "slope_grad(y, out, a[, delta]): out = (y > 0 ? 1 : a) [* delta]"),
    SAMPLE_METHODS
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "darknetpy's training kernels: LSTM/GRU step math, one-hot projection and gradient, transposes, batchnorm, leaky/relie, softmax and cross-entropy, Adam/SGD.",
    -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    PyObject *mod = PyModule_Create(&module);
#ifdef HAVE_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    /* DARKNETPY_KERNELS=avx2: the module a CPU without AVX-512 gets, for the tests of that path */
    const char *setting = getenv("DARKNETPY_KERNELS");
    avx512 = __builtin_cpu_supports("avx512f") && !(setting && strcmp(setting, "avx2") == 0);
    if (mod && avx512 && PyModule_AddFunctions(mod, panel_methods) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    if (mod && avx512 && PyModule_AddFunctions(mod, sample_methods) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
#endif
#ifdef AMX_BUILT
    amx_on = avx512 && amx_available();  /* not under DARKNETPY_KERNELS=avx2: no AVX-512, no AMX */
    if (mod && amx_on && PyModule_AddFunctions(mod, amx_methods) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
#endif
    if (mod && PyModule_AddObject(mod, "amx", PyBool_FromLong(amx_on)) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    if (mod && PyModule_AddStringConstant(mod, "isa", avx512 ? "avx512f" : use_avx2 ? "avx2+fma" : "baseline") < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
