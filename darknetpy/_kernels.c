/* darknetpy._kernels: the fused elementwise step math of the LSTM and GRU training loops.
 *
 * Optional: pip builds it when a C compiler is there, and layers/__init__.py falls back to the
 * numpy code (the reference the tests hold this to) when it is not, or when DARKNETPY_KERNELS=0.
 * Every argument is a C-contiguous float32 array (numpy's buffer protocol checks contiguity; the
 * sizes and format are checked here), so a wrong call raises instead of touching other memory.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define K(name) name##_base
#include "_steps.h"
#undef K

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define K(name) name##_avx2
#include "_steps.h"
#undef K
#pragma GCC pop_options
#endif

static int use_avx2; /* set at import from what the CPU supports */
#ifdef HAVE_AVX2
#define CALL(name, ...) (use_avx2 ? name##_avx2(__VA_ARGS__) : name##_base(__VA_ARGS__))
#else
#define CALL(name, ...) name##_base(__VA_ARGS__)
#endif

#define MAX_ARGS 8

/* The float32 buffers of `count` arrays, each required to hold sizes[i] * m floats; m is taken
 * from the first array whose size is 1 (sizes[i] == 1). Returns m, or -1 with an exception set
 * (the buffers got so far are released). */
static Py_ssize_t get_buffers(PyObject *const *objs, Py_buffer *bufs, const int *sizes, int count)
{
    Py_ssize_t m = -1;
    for (int i = 0; i < count; i++) {
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE;
        if (PyObject_GetBuffer(objs[i], &bufs[i], flags) < 0)
            goto fail;
        if (bufs[i].itemsize != 4 || strcmp(bufs[i].format, "f") != 0) {
            PyErr_Format(PyExc_TypeError, "argument %d: a float32 array expected", i + 1);
            i++;
            goto fail;
        }
        if (m < 0 && sizes[i] == 1)
            m = bufs[i].len / 4;
        continue;
    fail:
        while (i-- > 0)
            PyBuffer_Release(&bufs[i]);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        if (bufs[i].len != (Py_ssize_t)sizes[i] * m * 4) {
            PyErr_Format(PyExc_ValueError, "argument %d: %zd floats, expected %zd",
                         i + 1, bufs[i].len / 4, (Py_ssize_t)sizes[i] * m);
            for (int j = 0; j < count; j++)
                PyBuffer_Release(&bufs[j]);
            return -1;
        }
    }
    return m;
}

static void release(Py_buffer *bufs, int count)
{
    for (int i = 0; i < count; i++)
        PyBuffer_Release(&bufs[i]);
}

#define F(i) ((float *)b[i].buf)

static PyObject *lstm_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {4, 4, 1, 1, 1, 1, 4, 1};
    Py_buffer b[MAX_ARGS];
    if (nargs != 6 && nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "lstm_step(g, xu, c, c1, tc, h1[, P, Pc])");
        return NULL;
    }
    Py_ssize_t m = get_buffers(args, b, sizes, (int)nargs);
    if (m < 0)
        return NULL;
    if (nargs == 8)
        CALL(lstm_step_train, F(0), F(1), F(2), F(3), F(4), F(5), F(6), F(7), m);
    else
        CALL(lstm_step, F(0), F(1), F(2), F(3), F(4), F(5), m);
    release(b, (int)nargs);
    Py_RETURN_NONE;
}

static PyObject *lstm_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 1, 4, 1, 1, 4};
    Py_buffer b[MAX_ARGS];
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "lstm_back(dh, dc, DH, P, Pc, f, d)");
        return NULL;
    }
    Py_ssize_t m = get_buffers(args, b, sizes, 7);
    if (m < 0)
        return NULL;
    CALL(lstm_back, F(0), F(1), F(2), F(3), F(4), F(5), F(6), m);
    release(b, 7);
    Py_RETURN_NONE;
}

static PyObject *gru_zr(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {2, 2, 1, 1};
    Py_buffer b[MAX_ARGS];
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "gru_zr(zr, xu, h, rh)");
        return NULL;
    }
    Py_ssize_t m = get_buffers(args, b, sizes, 4);
    if (m < 0)
        return NULL;
    CALL(gru_zr, F(0), F(1), F(2), F(3), m);
    release(b, 4);
    Py_RETURN_NONE;
}

static PyObject *gru_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 2, 1, 1, 3};
    Py_buffer b[MAX_ARGS];
    if (nargs != 6 && nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "gru_step(tanh, c, xu, zr, h, h1[, P])");
        return NULL;
    }
    int tanh_act = PyObject_IsTrue(args[0]);
    if (tanh_act < 0)
        return NULL;
    Py_ssize_t m = get_buffers(args + 1, b, sizes, (int)nargs - 1);
    if (m < 0)
        return NULL;
    CALL(gru_step, F(0), F(1), F(2), F(3), F(4), nargs == 7 ? F(5) : NULL, m, tanh_act);
    release(b, (int)nargs - 1);
    Py_RETURN_NONE;
}

static PyObject *gru_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const int sizes[] = {1, 1, 2, 3, 3};
    Py_buffer b[MAX_ARGS];
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "gru_back(dh, drh, zr, P, d)");
        return NULL;
    }
    Py_ssize_t m = get_buffers(args, b, sizes, 5);
    if (m < 0)
        return NULL;
    CALL(gru_back, F(0), F(1), F(2), F(3), F(4), m);
    release(b, 5);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"lstm_step", (PyCFunction)(void (*)(void))lstm_step, METH_FASTCALL,
     "lstm_step(g, xu, c, c1, tc, h1[, P, Pc]): one LSTM step's gates, cell and output in place"},
    {"lstm_back", (PyCFunction)(void (*)(void))lstm_back, METH_FASTCALL,
     "lstm_back(dh, dc, DH, P, Pc, f, d): one LSTM step's gate deltas d; dh, dc updated"},
    {"gru_zr", (PyCFunction)(void (*)(void))gru_zr, METH_FASTCALL,
     "gru_zr(zr, xu, h, rh): the z and r gates in place and r*h"},
    {"gru_step", (PyCFunction)(void (*)(void))gru_step, METH_FASTCALL,
     "gru_step(tanh, c, xu, zr, h, h1[, P]): the candidate in place and the new h"},
    {"gru_back", (PyCFunction)(void (*)(void))gru_back, METH_FASTCALL,
     "gru_back(dh, drh, zr, P, d): dz and dr into d; dh becomes dh*z + drh*r"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Fused elementwise step math of darknetpy's LSTM and GRU training loops (float32).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    PyObject *mod = PyModule_Create(&module);
#ifdef HAVE_AVX2
    __builtin_cpu_init();
    use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    if (mod && PyModule_AddStringConstant(mod, "isa", use_avx2 ? "avx2+fma" : "baseline") < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
