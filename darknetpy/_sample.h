/* One stream's generation with no Python per character: a stepper's whole step as a program of
 * the ops its layers run (the same C step kernels, on the same arrays), the output softmax, and
 * Darknet's sampler, looped in C. Included by _kernels.c after _panel.h.
 *
 * softmax_rows (every build): the steppers' softmax, one temperature per row, each row by the
 * training softmax kernel (_steps.h). The loop's softmax is the same function, so a stream's
 * probabilities are the same bits from the loop, from a Python stepper alone or in a batch.
 *
 * The loop (x86-64 GCC, added to the module on AVX-512 CPUs, as the panel kernel): its products
 * are `sample_matvec`, y = b + x W for one row on W packed by kernels.pack_panels, each element
 * summed in the panel kernel's order (b, then one FMA per k in k order), so the same bits as a
 * stepper's `times`; only more columns at a time (one row leaves the panel kernel's two
 * accumulators waiting on their FMAs). */

/* softmax_rows(x, p, groups, t): p[r] = softmax of x[r] in `groups` slices at temperature t[r];
 * x, p (R, n), t (R,) float32. */
static PyObject *softmax_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    PyObject *arrays[3];
    Py_ssize_t groups = nargs == 4 ? PyLong_AsSsize_t(args[2]) : -1;
    if (nargs != 4 || groups < 1) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "softmax_rows(x, p, groups > 0, t)");
        return NULL;
    }
    arrays[0] = args[0], arrays[1] = args[1], arrays[2] = args[3];
    if (get_typed(arrays, b, "fFf", 3) < 0)
        return NULL;
    Py_ssize_t R = b[0].ndim == 2 ? b[0].shape[0] : -1, n = R >= 0 ? b[0].shape[1] : 0;
    if (R < 0 || b[1].len != b[0].len || b[2].ndim != 1 || b[2].shape[0] != R || n == 0 || n % groups) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "softmax_rows: x, p (R, n), n a multiple of groups, t (R,)");
        return NULL;
    }
    const float *t = b[2].buf;
    for (Py_ssize_t r = 0; r < R; r++)
        if (!(t[r] > 0.0f)) {
            release(b, 3);
            PyErr_SetString(PyExc_ValueError, "softmax_rows: every temperature must be > 0");
            return NULL;
        }
    for (Py_ssize_t r = 0; r < R; r++)
        CALL(softmax, F(0) + r * n, F(1) + r * n, groups, n / groups, t[r]);
    return done(b, 3);
}

#define SAMPLE_METHODS \
    METHOD(softmax_rows, "softmax_rows(x, p, groups, t): p = softmax of each row of x at its temperature t[r]"),

#ifdef HAVE_AVX2

/* out = b + x W, one row, panels j..P-1 of W: x (K,), W packed (P, K, 32) (kernels.pack_panels),
 * b and y (N,). Four panels at a time, eight chains of FMAs; the last panel's columns past N masked. */
__attribute__((target("avx512f"))) static void sample_matvec(const float *x, const float *Wp, const float *b,
                                                           float *y, Py_ssize_t K, Py_ssize_t N, Py_ssize_t j,
                                                           Py_ssize_t P)
{
    for (; j + 4 <= P && (j + 4) * PANEL <= N; j += 4) {
        const float *w = Wp + j * K * PANEL;
        __m512 c[8];
        for (int q = 0; q < 8; q++)
            c[q] = _mm512_loadu_ps(b + j * PANEL + 16 * q);
        for (Py_ssize_t k = 0; k < K; k++) {
            __m512 a = _mm512_set1_ps(x[k]);
            for (int q = 0; q < 8; q++)
                c[q] = _mm512_fmadd_ps(a, _mm512_loadu_ps(w + (q / 2) * K * PANEL + k * PANEL + 16 * (q % 2)), c[q]);
        }
        for (int q = 0; q < 8; q++)
            _mm512_storeu_ps(y + j * PANEL + 16 * q, c[q]);
    }
    for (; j < P; j++) {
        Py_ssize_t left = N - j * PANEL;
        __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
        __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
        const float *w = Wp + j * K * PANEL;
        __m512 c0 = _mm512_maskz_loadu_ps(m0, b + j * PANEL), c1 = _mm512_maskz_loadu_ps(m1, b + j * PANEL + 16);
        for (Py_ssize_t k = 0; k < K; k++) {
            __m512 a = _mm512_set1_ps(x[k]);
            c0 = _mm512_fmadd_ps(a, _mm512_loadu_ps(w + k * PANEL), c0);
            c1 = _mm512_fmadd_ps(a, _mm512_loadu_ps(w + k * PANEL + 16), c1);
        }
        _mm512_mask_storeu_ps(y + j * PANEL, m0, c0);
        _mm512_mask_storeu_ps(y + j * PANEL + 16, m1, c1);
    }
}

/* Darknet's sampler on one row p (V,) at the uniform u, exactly darknet_sampler.sample_rows: the
 * probabilities at or below float32(0.0001) cut, the rest summed in order, scaled by the float of
 * the double 1/sum, then r = u - p0 - p1 - ... (one rounding each) stops at the first r <= 0; the
 * last index if it never does or the sum is not a positive finite number. */
NO_CONTRACT static Py_ssize_t darknet_sample(const float *p, Py_ssize_t V, float u)
{
    const float cut = 0.0001f;
    float total = 0.0f;
    for (Py_ssize_t j = 0; j < V; j++)
        total = total + (p[j] <= cut ? 0.0f : p[j]);
    if (!(total > 0.0f && total < INFINITY))
        return V - 1;
    float scale = (float)(1.0 / (double)total), r = u;
    for (Py_ssize_t j = 0; j < V; j++) {
        float q = (p[j] <= cut ? 0.0f : p[j]) * scale;
        r = r - q;
        if (r <= 0.0f)
            return j;
    }
    return V - 1;
}

/* The first index of the largest p (sampling.greedy). */
static Py_ssize_t first_max(const float *p, Py_ssize_t V)
{
    Py_ssize_t best = 0;
    for (Py_ssize_t j = 1; j < V; j++)
        if (p[j] > p[best] || (p[j] != p[j] && p[best] == p[best]))  /* numpy's argmax: a NaN is the largest */
            best = j;
    return best;
}

/* The ops of a program, each what a stepper runs for one stream (each layer's `stepper`, its
 * loop ops), on the stepper's own arrays: */
enum {
    OP_GATHER,   /* out = table[id]: a one-hot input's row (the step's input id) */
    OP_MATVEC,   /* out = b + x W (sample_matvec) */
    OP_COPY,     /* dst = src */
    OP_LSTM,     /* lstm_step(g, xu, c, c1, tc, h1[, P]), one row */
    OP_GRU_ZR,   /* gru_zr(zr, xu, h, rh) */
    OP_GRU_STEP, /* gru_step(tanh, c, xu, zr, h, h1) */
    OP_RNN,      /* rnn_step(a, b, bias, x, s1[, s]) */
    OP_SLOPE,    /* slope_act(x, a) */
    OP_SOFTMAX,  /* (groups, t, x, p): p = softmax(x) in `groups` slices at the temperature t[0], read at each step */
    OP_KINDS
};

/* name, the arrays' kinds for get_typed ('f' read, 'F' written; the optional last one may be
 * missing), whether it takes a number first, whether its last array is optional. */
static const struct { const char *name, *kinds; int number, optional; } op_spec[OP_KINDS] = {
    {"gather", "fF", 0, 0}, {"matvec", "fffF", 0, 0}, {"copy", "fF", 0, 0},
    {"lstm", "FfFFFFf", 0, 1}, {"gru_zr", "FffF", 0, 0}, {"gru_step", "FffFF", 1, 0},
    {"rnn", "FffFf", 1, 1}, {"slope", "F", 1, 0}, {"softmax", "ffF", 1, 0},
};

typedef struct {
    int code, count;        /* count: the arrays held */
    double number;          /* gru_step's tanh, rnn's and slope's a, softmax's groups */
    Py_buffer b[7];
} sample_op;

typedef struct {
    Py_ssize_t ops, V;      /* V: the length of the step's result */
    float *p;               /* the step's result (the probabilities) */
    Py_buffer out;          /* ... held */
    sample_op op[];
} sample_program;

static void sample_release(sample_program *pr)
{
    for (Py_ssize_t i = 0; i < pr->ops; i++)
        release(pr->op[i].b, pr->op[i].count);
    if (pr->p)
        PyBuffer_Release(&pr->out);
    PyMem_Free(pr);
}

static void sample_free(PyObject *capsule)
{
    sample_release(PyCapsule_GetPointer(capsule, "darknetpy.sample"));
}

#define LEN(o, i) ((o)->b[i].len / 4)
#define A(o, i) ((float *)(o)->b[i].buf)

/* The sizes each op needs, so a wrong program raises instead of touching other memory. */
static int sample_check(const sample_op *o)
{
    switch (o->code) {
    case OP_GATHER:
        return o->b[0].ndim == 2 && o->b[0].shape[1] == LEN(o, 1);
    case OP_MATVEC:
        return o->b[1].ndim == 3 && o->b[1].shape[2] == PANEL && o->b[1].shape[1] == LEN(o, 0) &&
               o->b[1].shape[0] == (LEN(o, 3) + PANEL - 1) / PANEL && LEN(o, 2) == LEN(o, 3);
    case OP_COPY:
        return LEN(o, 0) == LEN(o, 1);
    case OP_LSTM:
        return LEN(o, 0) == 4 * LEN(o, 2) && LEN(o, 1) == 4 * LEN(o, 2) && LEN(o, 3) == LEN(o, 2) &&
               LEN(o, 4) == LEN(o, 2) && LEN(o, 5) == LEN(o, 2) && (o->count == 6 || LEN(o, 6) == 3 * LEN(o, 2));
    case OP_GRU_ZR:
        return LEN(o, 0) == 2 * LEN(o, 2) && LEN(o, 1) == 3 * LEN(o, 2) && LEN(o, 3) == LEN(o, 2);
    case OP_GRU_STEP:
        return LEN(o, 1) == 3 * LEN(o, 0) && LEN(o, 2) == 2 * LEN(o, 0) && LEN(o, 3) == LEN(o, 0) &&
               LEN(o, 4) == LEN(o, 0);
    case OP_RNN:
        return LEN(o, 1) == LEN(o, 0) && LEN(o, 2) == LEN(o, 0) && LEN(o, 3) == LEN(o, 0) &&
               (o->count == 4 || LEN(o, 4) == LEN(o, 0)) && o->number >= 0 && o->number < 1;
    case OP_SLOPE:
        return o->number >= 0 && o->number < 1;
    case OP_SOFTMAX:
        return LEN(o, 0) == 1 && LEN(o, 2) == LEN(o, 1) && o->number >= 1 && LEN(o, 1) > 0 &&
               LEN(o, 1) % (Py_ssize_t)o->number == 0;
    }
    return 0;
}

/* sample_program(ops, out) -> a program: ops a list of tuples (name, [number,] arrays...), run in
 * order for each step, which leaves its result (the probabilities) in the float32 array out. */
static PyObject *sample_new(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *ops = nargs == 2 ? args[0] : NULL;
    if (!ops || !PyList_Check(ops) || PyList_GET_SIZE(ops) == 0) {
        PyErr_SetString(PyExc_TypeError, "sample_program(ops, out): a non-empty list of op tuples, the result's array");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(ops);
    sample_program *pr = PyMem_Calloc(1, sizeof *pr + count * sizeof(sample_op));
    if (!pr)
        return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *t = PyList_GET_ITEM(ops, i);
        const char *name = PyTuple_Check(t) && PyTuple_GET_SIZE(t) > 0 ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(t, 0)) : NULL;
        int code = 0;
        while (name && code < OP_KINDS && strcmp(name, op_spec[code].name) != 0)
            code++;
        if (!name || code == OP_KINDS) {
            PyErr_Format(PyExc_ValueError, "sample_program: op %zd is not a known op tuple", i);
            goto fail;
        }
        sample_op *o = &pr->op[i];
        Py_ssize_t first = 1 + op_spec[code].number, arrays = PyTuple_GET_SIZE(t) - first;
        Py_ssize_t most = (Py_ssize_t)strlen(op_spec[code].kinds);
        if (arrays != most && !(op_spec[code].optional && arrays == most - 1)) {
            PyErr_Format(PyExc_TypeError, "sample_program: op %zd (%s) takes %zd arrays", i, name, most);
            goto fail;
        }
        o->code = code;
        if (op_spec[code].number) {
            o->number = PyFloat_AsDouble(PyTuple_GET_ITEM(t, 1));
            if (o->number == -1.0 && PyErr_Occurred())
                goto fail;
        }
        if (get_typed(&PyTuple_GET_ITEM(t, first), o->b, op_spec[code].kinds, (int)arrays) < 0)
            goto fail;
        o->count = (int)arrays;
        pr->ops = i + 1;
        if (!sample_check(o)) {
            PyErr_Format(PyExc_ValueError, "sample_program: op %zd (%s): the arrays' sizes do not fit", i, name);
            goto fail;
        }
    }
    if (get_typed(&args[1], &pr->out, "f", 1) < 0)
        goto fail;
    pr->p = pr->out.buf;
    pr->V = pr->out.len / 4;
    PyObject *capsule = PyCapsule_New(pr, "darknetpy.sample", sample_free);
    if (capsule)
        return capsule;
fail:
    sample_release(pr);
    return NULL;
}

/* The products of a loop run on two threads when there are two: this one and a helper. A product's
 * chunks (four panels each) are claimed one at a time, this thread from the first, the helper from
 * the last, until they meet: each thread then takes about the same chunks at every step and keeps
 * their weights in its own L2 cache (lstm2x256's 3.25 MB do not fit one core's 2 MB: at one thread
 * every step reads them from L3), and a helper the scheduler is not running leaves its chunks to
 * this one, which waits only for a chunk the helper holds. `work` is the product's number (high 32
 * bits), its next chunk from the front (16) and the end of the chunks left (16). While a loop runs
 * the helper waits for work spinning; between runs it spins yielding about a millisecond (the next
 * predict), then sleeps. One run at a time uses it (`call`); another runs alone. */
#define LOOP_SPIN_TICKS 2000000ULL
#define LOOP_CHUNK 4  /* panels per chunk */
static struct {
    pthread_mutex_t lock, call;
    pthread_cond_t wake;
    atomic_ullong work;
    atomic_uint done;       /* chunks the helper finished in this product */
    atomic_int running;
    const sample_op *job;
    unsigned seq;
    int threads, started, sleeping;
} helper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, NULL, 0, 2, 0, 0};

/* Chunk i of product o: panels 4 i .. 4 i + 3 (fewer at the end). */
__attribute__((target("avx512f"))) static void sample_chunk(const sample_op *o, Py_ssize_t i)
{
    Py_ssize_t N = LEN(o, 3), P = (N + PANEL - 1) / PANEL, end = (i + 1) * LOOP_CHUNK;
    sample_matvec(A(o, 0), A(o, 1), A(o, 2), A(o, 3), LEN(o, 0), N, i * LOOP_CHUNK, end < P ? end : P);
}

/* The helper's claim of the last chunk left, or -1 if none is. */
static Py_ssize_t sample_claim_back(unsigned long long w)
{
    while ((w >> 16 & 0xFFFF) < (w & 0xFFFF))
        if (atomic_compare_exchange_weak_explicit(&helper.work, &w, w - 1, memory_order_acq_rel, memory_order_acquire))
            return (Py_ssize_t)(w & 0xFFFF) - 1;
    return -1;
}

static void *sample_helper(void *arg)
{
    for (;;) {
        unsigned long long until = __rdtsc() + LOOP_SPIN_TICKS;
        for (;;) {
            unsigned long long w = atomic_load_explicit(&helper.work, memory_order_acquire);
            Py_ssize_t i = sample_claim_back(w);
            if (i >= 0) {
                sample_chunk(helper.job, i);
                atomic_fetch_add_explicit(&helper.done, 1, memory_order_release);
                until = __rdtsc() + LOOP_SPIN_TICKS;
            } else if (atomic_load_explicit(&helper.running, memory_order_relaxed)) {
                sched_yield();  /* not a busy pause: on a busy machine it may share this thread's core */
                until = __rdtsc() + LOOP_SPIN_TICKS;
            } else if (__rdtsc() < until) {
                sched_yield();
            } else {
                break;
            }
        }
        pthread_mutex_lock(&helper.lock);
        helper.sleeping = 1;
        while (!atomic_load(&helper.running))
            pthread_cond_wait(&helper.wake, &helper.lock);
        helper.sleeping = 0;
        pthread_mutex_unlock(&helper.lock);
    }
    return arg;
}

static void sample_after_fork(void)
{
    pthread_mutex_init(&helper.lock, NULL);
    pthread_mutex_init(&helper.call, NULL);
    pthread_cond_init(&helper.wake, NULL);
    helper.started = helper.sleeping = 0;
    atomic_store(&helper.running, 0);
}

/* Whether this run has the helper: started once, woken, and not in use by another run. */
static int sample_begin(void)
{
    static int registered;
    if (helper.threads < 2 || pthread_mutex_trylock(&helper.call) != 0)
        return 0;
    if (!helper.started) {
        pthread_t t;
        pthread_attr_t attr;
        if (!registered)
            registered = pthread_atfork(NULL, NULL, sample_after_fork) == 0;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        helper.started = pthread_create(&t, &attr, sample_helper, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (!helper.started) {
            pthread_mutex_unlock(&helper.call);
            return 0;
        }
    }
    pthread_mutex_lock(&helper.lock);
    atomic_store(&helper.running, 1);
    if (helper.sleeping)
        pthread_cond_signal(&helper.wake);
    pthread_mutex_unlock(&helper.lock);
    return 1;
}

static void sample_end(int shared)
{
    if (shared) {
        atomic_store(&helper.running, 0);
        pthread_mutex_unlock(&helper.call);
    }
}

/* One product of a run: all of it here, or its chunks shared with the helper. */
__attribute__((target("avx512f"))) static void sample_product(const sample_op *o, int shared)
{
    Py_ssize_t N = LEN(o, 3), P = (N + PANEL - 1) / PANEL, chunks = (P + LOOP_CHUNK - 1) / LOOP_CHUNK;
    if (!shared || chunks < 2 || chunks > 0xFFFF) {
        sample_matvec(A(o, 0), A(o, 1), A(o, 2), A(o, 3), LEN(o, 0), N, 0, P);
        return;
    }
    helper.job = o;
    atomic_store_explicit(&helper.done, 0, memory_order_relaxed);
    unsigned long long w = (unsigned long long)++helper.seq << 32 | (unsigned long long)chunks;
    atomic_store_explicit(&helper.work, w, memory_order_release);
    unsigned mine = 0;
    while ((w >> 16 & 0xFFFF) < (w & 0xFFFF)) {
        if (atomic_compare_exchange_weak_explicit(&helper.work, &w, w + (1ULL << 16), memory_order_acq_rel,
                                                  memory_order_acquire)) {
            sample_chunk(o, (Py_ssize_t)(w >> 16 & 0xFFFF));
            mine++;
            w += 1ULL << 16;
        }
    }
    for (int spins = 0; atomic_load_explicit(&helper.done, memory_order_acquire) != chunks - mine; spins++)
        if (spins < 1000)
            _mm_pause();
        else
            sched_yield();  /* the helper was preempted inside a chunk: let it run */
}

/* One step of the program for input `id` (checked by the caller against every gather's table),
 * its products shared with the helper or not. */
static void sample_step(const sample_program *pr, int64_t id, int shared)
{
    for (Py_ssize_t i = 0; i < pr->ops; i++) {
        const sample_op *o = &pr->op[i];
        switch (o->code) {
        case OP_GATHER:
            memcpy(A(o, 1), A(o, 0) + id * LEN(o, 1), LEN(o, 1) * sizeof(float));
            break;
        case OP_MATVEC:
            sample_product(o, shared);
            break;
        case OP_COPY:
            memcpy(A(o, 1), A(o, 0), LEN(o, 0) * sizeof(float));
            break;
        case OP_LSTM:
            CALL(lstm_step, A(o, 0), A(o, 1), A(o, 2), A(o, 3), A(o, 4), A(o, 5), o->count == 7 ? A(o, 6) : NULL,
                 LEN(o, 2), 1);
            break;
        case OP_GRU_ZR:
            CALL(gru_zr, A(o, 0), A(o, 1), A(o, 2), A(o, 3), LEN(o, 2), 1);
            break;
        case OP_GRU_STEP:
            CALL(gru_step, A(o, 0), A(o, 1), A(o, 2), A(o, 3), A(o, 4), NULL, LEN(o, 0), 1, o->number != 0);
            break;
        case OP_RNN:
            CALL(rnn_step, A(o, 0), A(o, 1), A(o, 2), A(o, 3), o->count == 5 ? A(o, 4) : NULL, LEN(o, 0),
                 (float)o->number);
            break;
        case OP_SLOPE:
            CALL(slope_act, A(o, 0), LEN(o, 0), (float)o->number);
            break;
        case OP_SOFTMAX:
            CALL(softmax, A(o, 1), A(o, 2), (Py_ssize_t)o->number, LEN(o, 1) / (Py_ssize_t)o->number, A(o, 0)[0]);
            break;
        }
    }
}

/* sample_run(program, feed, u, out, greedy): the steps of one stream. Each id of feed (F,) int64
 * is stepped in turn; then for each of the L = len(out) symbols to draw, out[j] = Darknet's
 * sampler on the probabilities at u[j] (u (L,) float32; or their first largest with greedy), and
 * every drawn symbol but the last is stepped in turn. F = 0 draws from the probabilities as they
 * are. The state stays in the program's arrays. */
static PyObject *sample_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer b[3];
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "sample_run(program, feed, u, out, greedy)");
        return NULL;
    }
    sample_program *pr = PyCapsule_GetPointer(args[0], "darknetpy.sample");
    int greedy = PyObject_IsTrue(args[4]);
    if (!pr || greedy < 0 || get_typed(args + 1, b, "qfQ", 3) < 0)
        return NULL;
    PyObject *result = NULL;
    const int64_t *feed = b[0].buf;
    const float *u = b[1].buf;
    int64_t *out = b[2].buf;
    Py_ssize_t F = b[0].len / 8, L = b[2].len / 8;
    if (b[1].len / 4 != L) {
        PyErr_SetString(PyExc_ValueError, "sample_run: u and out must have one entry per symbol drawn");
        goto out;
    }
    Py_ssize_t V = PY_SSIZE_T_MAX;  /* ids must index every gather's table and be a probability's index */
    for (Py_ssize_t i = 0; i < pr->ops; i++)
        if (pr->op[i].code == OP_GATHER && pr->op[i].b[0].shape[0] < V)
            V = pr->op[i].b[0].shape[0];
    if (check_ids(feed, F, V, "sample_run") < 0)
        goto out;
    if (L > 1 && pr->V > V) {
        PyErr_Format(PyExc_ValueError, "sample_run: %zd outputs fed back to %zd inputs", pr->V, V);
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    int shared = sample_begin();
    for (Py_ssize_t i = 0; i < F; i++)
        sample_step(pr, feed[i], shared);
    for (Py_ssize_t j = 0; j < L; j++) {
        out[j] = greedy ? first_max(pr->p, pr->V) : darknet_sample(pr->p, pr->V, u[j]);
        if (j + 1 < L)
            sample_step(pr, out[j], shared);
    }
    sample_end(shared);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
out:
    release(b, 3);
    return result;
}

static PyObject *sample_threads(PyObject *self, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&helper.call);
    if (n >= 1)
        helper.threads = n >= 2 ? 2 : 1;
    n = helper.threads;
    pthread_mutex_unlock(&helper.call);
    return PyLong_FromLong(n);
}

static PyMethodDef sample_methods[] = {
    {"sample_threads", sample_threads, METH_O, "sample_threads(n) -> the threads a loop's products run on (1 or 2)"},
    {"sample_program", (PyCFunction)(void (*)(void))sample_new, METH_FASTCALL,
     "sample_program(ops, out) -> a one-stream step as a program of ops, its result in out (_sample.h)"},
    METHOD(sample_run, "sample_run(program, feed, u, out, greedy): step the ids of feed, then draw len(out) symbols"),
    {NULL, NULL, 0, NULL},
};
#endif
