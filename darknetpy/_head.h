/* The head's and the layers' elementwise passes that numpy would run on one thread beside the
 * two-thread GEMMs, on the step loops' team instead (team_share, _kernels.c). kernels.py holds the
 * numpy reference of each (tests/test_head.py holds these to it, bit for bit: each element is the
 * same float32 operation).
 *
 * add(out, x): out (..., n) += x, x shaped as out or as its last axis (n,) (a bias on every row).
 * Dense.normalize's bias (the [connected] head's z += b) and [sru]'s highway delta (dx += δs). */

typedef struct {
    float *out;
    const float *x;
    Py_ssize_t width;  /* the floats of a row of out */
    int bias;          /* x is one row, added to every row of out */
} add_job;

static void add_part(const void *job, Py_ssize_t r0, Py_ssize_t r1)
{
    const add_job *J = job;
    for (Py_ssize_t r = r0; r < r1; r++) {
        float *restrict o = J->out + r * J->width;
        const float *restrict x = J->bias ? J->x : J->x + r * J->width;
        for (Py_ssize_t j = 0; j < J->width; j++)
            o[j] += x[j];
    }
}

#define ADD_ROWS 16  /* rows per share of the team */

static PyObject *add(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[2];
    if (typed_args(args, nargs, b, "Ff", "add(out, x)") < 0)
        return NULL;
    Py_ssize_t m = b[0].len / 4, width = b[0].ndim ? b[0].shape[b[0].ndim - 1] : 1;
    int same = b[1].ndim == b[0].ndim, bias = b[1].ndim == 1 && b[1].shape[0] == width;
    for (int i = 0; same && i < b[0].ndim; i++)
        same = b[1].shape[i] == b[0].shape[i];
    if (width == 0 || !(same || bias)) {
        PyErr_SetString(PyExc_ValueError, "add: x must have out's shape, or be one row (n,) of out (..., n)");
        release(b, 2);
        return NULL;
    }
    add_job J = {b[0].buf, b[1].buf, width, !same};
    PyObject *result = team_share(add_part, &J, m / width, ADD_ROWS, m);
    release(b, 2);
    return result;
}

#define HEAD_METHODS \
    METHOD(add, "add(out, x): out += x, x shaped as out or one row of it (a bias), the rows shared among the step loops' team"),
