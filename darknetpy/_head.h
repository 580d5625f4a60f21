/* The head's and the layers' elementwise passes that numpy would run on one thread beside the
 * two-thread GEMMs, on the step loops' team instead (team_share, _kernels.c). kernels.py holds the
 * numpy reference of each (tests/test_head.py holds these to it, bit for bit: each element is the
 * same float32 operation).
 *
 * add(out, x): out (..., n) += x, x shaped as out or as its last axis (n,) (a bias on every row).
 * Dense.normalize's bias (the [connected] head's z += b) and [sru]'s highway delta (dx += δs).
 *
 * dropout(out, x, bits, threshold, scale): [dropout]'s masks applied, forward and back. */

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

/* softmax_xent(x, ids, delta, groups, t) -> Σ -ln p[r, ids[r]], delta = onehot(ids) - p for
 * p = softmax(x) (R, n) in `groups` slices at temperature t: the training [softmax] and its
 * cross-entropy in one read of the logits x (layers/softmax.py's `softmax_xent`, the numpy
 * reference: softmax, then xent). Each row's p is made in its delta row, then turned into the delta
 * there while in L1: the bits of the softmax and xent ops one after the other, the rows shared
 * among the team in xent's chunks, their costs added in order. */
typedef struct {
    const float *x;
    const int64_t *id;
    float *D;
    double *costs;  /* one per XENT_ROWS rows */
    Py_ssize_t R, n, groups;
    float t;
} softmax_xent_job;

static void softmax_xent_part(const void *job, Py_ssize_t c0, Py_ssize_t c1)
{
    const softmax_xent_job *J = job;
    Py_ssize_t n = J->n;
    for (Py_ssize_t c = c0; c < c1; c++) {
        double cost = 0.0;
        Py_ssize_t end = (c + 1) * XENT_ROWS < J->R ? (c + 1) * XENT_ROWS : J->R;
        for (Py_ssize_t r = c * XENT_ROWS; r < end; r++) {
            float *d = J->D + r * n;
            CALL(softmax, J->x + r * n, d, J->groups, n / J->groups, J->t);
            cost += xent_row(d, d, J->id[r], n);
        }
        J->costs[c] = cost;
    }
}

static PyObject *softmax_xent(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    Py_ssize_t groups = nargs == 5 ? PyLong_AsSsize_t(args[3]) : -1;
    double t = nargs == 5 ? PyFloat_AsDouble(args[4]) : -1.0;
    if (nargs != 5 || groups < 1 || t <= 0.0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "softmax_xent(x, ids, delta, groups > 0, temperature > 0)");
        return NULL;
    }
    if (typed_args(args, 3, b, "fqF", "softmax_xent(x, ids, delta, groups, temperature)") < 0)
        return NULL;
    PyObject *result = NULL;
    if (id_shapes(&b[1], &b[0], &b[2], 1, "softmax_xent: x (R, n), ids (R,), delta (R, n)") < 0)
        goto out;
    Py_ssize_t R = b[0].shape[0], n = b[0].shape[1], chunks = (R + XENT_ROWS - 1) / XENT_ROWS;
    if (n % groups) {
        PyErr_SetString(PyExc_ValueError, "softmax_xent: the rows' length must be a multiple of groups");
        goto out;
    }
    softmax_xent_job J = {b[0].buf, b[1].buf, b[2].buf, PyMem_Malloc((chunks ? chunks : 1) * sizeof(double)),
                       R, n, groups, (float)t};
    if (!J.costs) {
        PyErr_NoMemory();
        goto out;
    }
    result = summed_costs(softmax_xent_part, &J, J.costs, chunks, J.id, R, n, "softmax_xent");
    PyMem_Free(J.costs);
out:
    release(b, 3);
    return result;
}

/* dropout(out, x, bits, threshold, scale): out = x m, m = scale where bits >= threshold, else 0, for
 * x, out (T, S, n) float32 and the masks' random bits uint16, shaped as x or (1, S, n) (variational:
 * one mask over every step). [dropout]'s forward (x its input) and backward (x the output's delta),
 * one pass on the team; layers/dropout.py's `dropout` is the numpy reference (the same bits). */
typedef struct {
    float *out;
    const float *x;
    const uint16_t *bits;
    Py_ssize_t step;  /* the elements of one step, S n */
    int every;        /* one mask per step (bits shaped as x), else one for all */
    int threshold;    /* 0 to 65536 */
    float scale;
} dropout_job;

static void dropout_part(const void *job, Py_ssize_t e0, Py_ssize_t e1)
{
    const dropout_job *J = job;
    const int threshold = J->threshold;
    const float scale = J->scale;
    for (Py_ssize_t e = e0; e < e1;) {
        Py_ssize_t start = e - e % J->step, end = start + J->step < e1 ? start + J->step : e1;  /* e's step */
        const uint16_t *restrict b = J->bits + (J->every ? start : 0);
        const float *restrict x = J->x + start;
        float *restrict o = J->out + start;
        for (Py_ssize_t j = e - start; j < end - start; j++)
            o[j] = x[j] * (b[j] >= threshold ? scale : 0.0f);
        e = end;
    }
}

#define DROPOUT_USAGE "dropout(out, x, bits, threshold, scale): out, x (T, S, n) float32, bits uint16 shaped as x or (1, S, n)"

static PyObject *dropout(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    long threshold = nargs == 5 ? PyLong_AsLong(args[3]) : -1;
    double scale = nargs == 5 ? PyFloat_AsDouble(args[4]) : -1.0;
    if (nargs != 5 || PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, DROPOUT_USAGE);
        return NULL;
    }
    if (typed_args(args, 2, b, "Ff", DROPOUT_USAGE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[2], &b[2], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        release(b, 2);
        return NULL;
    }
    Py_ssize_t m = b[0].len / 4, T = b[0].ndim ? b[0].shape[0] : 1, count = b[2].len / 2;
    if (b[2].itemsize != 2 || strcmp(b[2].format, "H") != 0 || b[1].len != b[0].len || b[0].ndim != b[2].ndim ||
        T == 0 || (count != m && count * T != m)) {
        PyErr_SetString(PyExc_ValueError, DROPOUT_USAGE);
        goto out;
    }
    dropout_job J = {b[0].buf, b[1].buf, b[2].buf, m / T, count == m,
                            threshold < 0 ? 0 : threshold > 65536 ? 65536 : (int)threshold, (float)scale};
    result = team_share(dropout_part, &J, m, UPDATE_SHARE, m);
out:
    release(b, 3);
    return result;
}

#define HEAD_METHODS \
    {"dropout", (PyCFunction)(void (*)(void))dropout, METH_FASTCALL, \
     DROPOUT_USAGE ": out = x (bits >= threshold ? scale : 0), the [dropout] masks in one pass"}, \
    METHOD(add, "add(out, x): out += x, x shaped as out or one row of it (a bias), the rows shared among the step loops' team"), \
    METHOD(softmax_xent, "softmax_xent(x, ids, delta, groups, temperature) -> the cost sum of -ln p[r, ids[r]]; delta = onehot(ids) - p, p the softmax of x: softmax and xent in one pass"),
