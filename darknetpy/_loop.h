/* A recurrent layer's whole training step loop, forward and back, in one call: lstm_loop and
 * lstm_loop_back (layers/lstm.py holds their numpy references). Included by _kernels.c after
 * _panel.h, on x86-64 GCC; its methods join the module only when the CPU has AVX-512.
 *
 * Why: a step's recurrent product (32 streams: (4n x n) by (n x 32)) is too small for OpenBLAS to
 * run at its peak, and a Python round trip around every step adds to it. Here each of the `threads`
 * threads owns a fixed slice of the hidden units for the whole loop: it packs its slice of the
 * weights once (4 n^2 / threads floats: 512 KB at n = 256 on two threads, resident in its L2),
 * computes its units' rows of every step's product with _panel.h's register tile, and runs the
 * step's elementwise maths (_steps.h's lstm_row / lstm_back_body, the same code as lstm_step and
 * lstm_back) on them while they are in cache. One barrier per step: the next product reads every
 * unit of the state this step made.
 *
 * The threads: this one and threads - 1 workers (a team apart from the panel kernel's pool), which
 * sleep on a condition variable between calls and spin only briefly at the barriers inside one:
 * outside a loop the cores are OpenBLAS's (the GEMMs around the loops). One call at a time.
 *
 * The products' operands in panels (kernels.pack_panels' layout): the state of a step as
 * ceil(S / 32) panels (n, 32) (zeros past S), the weights of 8 output rows as (K, 8), so that a tile
 * of 8 rows by 32 streams reads one contiguous line of each per k.
 *
 * With `[net] precision=bf16` the GRU and LSTM loops take bf16=1: their products on AMX tiles instead,
 * bf16 operands and float32 sums (the loop_amx_ helpers below), the rest of the loop the same. */

#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LOOP_ROWS 8                 /* output rows of a tile: 8 x 2 accumulators */
#define LOOP_MAX_THREADS 64

/* y[r][c] (+)= Σ_k a[k, r] x[k, c] for r < 8, c < 32: a (K, 8), x (K, 32) one panel; `add`: onto
 * what y holds. Rows whose y[r] is NULL are not stored, columns past the masks m0, m1 neither. Each
 * element sums k in order, the same bits whichever thread computes it. */
__attribute__((target("avx512f"), always_inline)) static inline void
loop_tile(const float *a, const float *x, Py_ssize_t K, float *const *y, __mmask16 m0, __mmask16 m1, const int add)
{
    __m512 c[LOOP_ROWS][2];
    for (int r = 0; r < LOOP_ROWS; r++) {
        c[r][0] = add && y[r] ? _mm512_maskz_loadu_ps(m0, y[r]) : _mm512_setzero_ps();
        c[r][1] = add && y[r] ? _mm512_maskz_loadu_ps(m1, y[r] + 16) : _mm512_setzero_ps();
    }
    for (Py_ssize_t k = 0; k < K; k++) {
        __m512 x0 = _mm512_loadu_ps(x + k * PANEL), x1 = _mm512_loadu_ps(x + k * PANEL + 16);
        for (int r = 0; r < LOOP_ROWS; r++) {
            __m512 w = _mm512_set1_ps(a[k * LOOP_ROWS + r]);
            c[r][0] = _mm512_fmadd_ps(w, x0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(w, x1, c[r][1]);
        }
    }
    for (int r = 0; r < LOOP_ROWS; r++)
        if (y[r]) {
            _mm512_mask_storeu_ps(y[r], m0, c[r][0]);
            _mm512_mask_storeu_ps(y[r] + 16, m1, c[r][1]);
        }
}

/* loop_tile for 16 streams or fewer, two tiles' rows at once: y[r][c] (+)= Σ_k a[k, r] x[k, c] for
 * r < 16, c < 16, rows 0-7 from a0, 8-15 from a1 (each (K, 8)). 16 accumulators of one vector each
 * keep the FMA units busy where the 32-column tile would compute half its columns for nothing. The
 * same sums in the same order as loop_tile. */
__attribute__((target("avx512f"), always_inline)) static inline void
loop_tile16(const float *a0, const float *a1, const float *x, Py_ssize_t K, float *const *y, __mmask16 m0,
            const int add)
{
    __m512 c[2 * LOOP_ROWS];
    for (int r = 0; r < 2 * LOOP_ROWS; r++)
        c[r] = add && y[r] ? _mm512_maskz_loadu_ps(m0, y[r]) : _mm512_setzero_ps();
    for (Py_ssize_t k = 0; k < K; k++) {
        __m512 x0 = _mm512_loadu_ps(x + k * PANEL);
        for (int r = 0; r < LOOP_ROWS; r++) {
            c[r] = _mm512_fmadd_ps(_mm512_set1_ps(a0[k * LOOP_ROWS + r]), x0, c[r]);
            c[LOOP_ROWS + r] = _mm512_fmadd_ps(_mm512_set1_ps(a1[k * LOOP_ROWS + r]), x0, c[LOOP_ROWS + r]);
        }
    }
    for (int r = 0; r < 2 * LOOP_ROWS; r++)
        if (y[r])
            _mm512_mask_storeu_ps(y[r], m0, c[r]);
}

/* Two tiles of panel x: rows y[0..8) from a0, y[8..16) from a1 (a1 NULL: none), by loop_tile16 when
 * the streams fit its 16 columns (narrow), else by loop_tile each. */
__attribute__((target("avx512f"))) static inline void
loop_tiles(const float *a0, const float *a1, const float *x, Py_ssize_t K, float *const *y, __mmask16 m0,
           __mmask16 m1, int add, int narrow)
{
    if (narrow) {
        float *both[2 * LOOP_ROWS];
        for (int r = 0; r < 2 * LOOP_ROWS; r++)
            both[r] = a1 || r < LOOP_ROWS ? y[r] : NULL;
        if (add)
            loop_tile16(a0, a1 ? a1 : a0, x, K, both, m0, 1);
        else
            loop_tile16(a0, a1 ? a1 : a0, x, K, both, m0, 0);
        return;
    }
    for (int half = 0; half < 2; half++) {
        const float *a = half ? a1 : a0;
        if (!a)
            break;
        if (add)
            loop_tile(a, x, K, y + half * LOOP_ROWS, m0, m1, 1);
        else
            loop_tile(a, x, K, y + half * LOOP_ROWS, m0, m1, 0);
    }
}

/* The column masks of panel p of S streams. */
static inline void loop_masks(Py_ssize_t S, Py_ssize_t p, __mmask16 *m0, __mmask16 *m1)
{
    Py_ssize_t left = S - p * PANEL;
    *m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    *m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
}

/* Rows [j0, j1) of a feature-major x (rows, S) into the panels xp (P, rows, 32). */
static void loop_to_panels(const float *x, float *xp, Py_ssize_t rows, Py_ssize_t S, Py_ssize_t j0, Py_ssize_t j1)
{
    Py_ssize_t P = (S + PANEL - 1) / PANEL;
    for (Py_ssize_t p = 0; p < P; p++) {
        Py_ssize_t w = S - p * PANEL < PANEL ? S - p * PANEL : PANEL;
        for (Py_ssize_t j = j0; j < j1; j++)
            memcpy(xp + (p * rows + j) * PANEL, x + j * S + p * PANEL, (size_t)w * sizeof(float));
    }
}

/* Rows [8e, 8e + 8) of the product y (rows, S) (+)= A x for the eights e in [e0, e1) of the rows:
 * A packed by loop_pack, x in panels (P, K, 32). K in chunks of LOOP_KC, each chunk of a panel
 * (32 KB) read by every eight while it is in L1 (a whole panel of K = 1024 is 128 KB, and the
 * tiles would stream it from L2); each element still sums k in order. */
#define LOOP_KC 256
__attribute__((target("avx512f"))) static void
loop_rows(const float *A, const float *xp, Py_ssize_t K, float *y, Py_ssize_t rows, Py_ssize_t S,
          Py_ssize_t e0, Py_ssize_t e1, const int add)
{
    Py_ssize_t P = (S + PANEL - 1) / PANEL;
    for (Py_ssize_t p = 0; p < P; p++)
        for (Py_ssize_t k0 = 0; k0 < K; k0 += LOOP_KC) {
            Py_ssize_t kn = K - k0 < LOOP_KC ? K - k0 : LOOP_KC;
            for (Py_ssize_t e = e0; e < e1; e += 2) {  /* two eights a time */
                float *out[2 * LOOP_ROWS];
                __mmask16 m0, m1;
                for (int r = 0; r < 2 * LOOP_ROWS; r++)
                    out[r] = 8 * e + r < rows && e + r / 8 < e1 ? y + (8 * e + r) * S + p * PANEL : NULL;
                loop_masks(S, p, &m0, &m1);
                const float *a = A + (e * K + k0) * LOOP_ROWS, *x = xp + (p * K + k0) * PANEL;
                loop_tiles(a, e + 1 < e1 ? a + K * LOOP_ROWS : NULL, x, kn, out, m0, m1, add || k0, S <= 16);
            }
        }
}

/* A[e, k, r] = M[row(8e + r), k] for the eights e in [e0, e1) of rows, M (·, K): the weights of
 * 8 output rows side by side; row(i) = i, or with `blocks` > 1 the rows of `blocks` gates of the
 * same unit together: eight i = 8/blocks units' gates, row = gate * rows / blocks + unit. Zeros
 * past the rows. */
static void loop_pack(float *A, const float *M, Py_ssize_t K, Py_ssize_t rows, int blocks, Py_ssize_t e0, Py_ssize_t e1)
{
    Py_ssize_t units = rows / blocks, per = LOOP_ROWS / blocks;
    for (Py_ssize_t e = e0; e < e1; e++)
        for (int r = 0; r < LOOP_ROWS; r++) {
            Py_ssize_t unit = e * per + r % per, row = r / per * units + unit;
            for (Py_ssize_t k = 0; k < K; k++)
                A[(e * K + k) * LOOP_ROWS + r] = unit < units ? M[row * K + k] : 0.0f;
        }
}

/* Rows [j0, j1) of x (rows, S) as the rows of dst (S, width) at column offset col: dst[s, col + j],
 * whole 8 x 8 blocks through registers (_kernels.c's block8), the edges one by one. The blocks go
 * down x's rows (reading x in order), except when dst's rows are a multiple of 4 KB apart ([lstm]
 * 256's gate deltas, (S, 1024)): then the S rows written down a column share one L1 set, and each
 * line, half written, is evicted before its other half comes; eight rows at a time along dst's rows
 * instead (measured: benchmarks/README.md, issue 28 third session; other widths, e.g. [gru]'s (S, 3n),
 * keep x's order). */
__attribute__((target("avx2"))) static void loop_to_rows(const float *x, float *dst, Py_ssize_t S, Py_ssize_t width,
                                                         Py_ssize_t col, Py_ssize_t j0, Py_ssize_t j1)
{
    Py_ssize_t J8 = j0 + (j1 - j0) / 8 * 8, S8 = S / 8 * 8;
    int along = width % 1024 == 0;
    for (Py_ssize_t a = 0; a < (along ? S8 : J8 - j0); a += 8)
        for (Py_ssize_t b = 0; b < (along ? J8 - j0 : S8); b += 8) {
            Py_ssize_t j = j0 + (along ? b : a), s = along ? a : b;
            const float *rows[8];
            for (int q = 0; q < 8; q++)
                rows[q] = x + (j + q) * S;
            block8(rows, s, dst + s * width + col + j, width);
        }
    for (Py_ssize_t s = 0; s < S; s++)
        for (Py_ssize_t j = s < S8 ? J8 : j0; j < j1; j++)
            dst[s * width + col + j] = x[j * S + s];
}

/* Columns [j0, j1) of the rows src (S, width) from column offset col, as rows [j0, j1) of the
 * feature-major dst (rows, S): dst[j, s] = src[s, col + j], loop_to_rows' way back (a layer's
 * output deltas, rows as the layer above leaves them, read by the thread that owns the units). */
__attribute__((target("avx2"))) static void loop_from_rows(const float *src, float *dst, Py_ssize_t S, Py_ssize_t width,
                                                            Py_ssize_t col, Py_ssize_t j0, Py_ssize_t j1)
{
    Py_ssize_t J8 = j0 + (j1 - j0) / 8 * 8, S8 = S / 8 * 8;
    for (Py_ssize_t s = 0; s < S8; s += 8) {
        const float *rows[8];
        for (int q = 0; q < 8; q++)
            rows[q] = src + (s + q) * width + col;
        for (Py_ssize_t j = j0; j < J8; j += 8)
            block8(rows, j, dst + j * S + s, S);
    }
    for (Py_ssize_t j = j0; j < j1; j++)
        for (Py_ssize_t s = j < J8 ? S8 : 0; s < S; s++)
            dst[j * S + s] = src[s * width + col + j];
}

/* db[j] += Σ_s d[j, s] for the rows [j0, j1) of d (rows, S): a bias gradient, one step's share,
 * summed while the thread has the deltas in cache. Each row in one order (16 lanes, then across
 * them), whichever thread owns it. */
__attribute__((target("avx512f"))) static void loop_row_sums(const float *d, float *db, Py_ssize_t S, Py_ssize_t j0,
                                                              Py_ssize_t j1)
{
    for (Py_ssize_t j = j0; j < j1; j++) {
        __m512 acc = _mm512_setzero_ps();
        for (Py_ssize_t s = 0; s < S; s += 16) {
            __mmask16 m = S - s >= 16 ? 0xFFFF : (__mmask16)((1u << (S - s)) - 1);
            acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, d + j * S + s));
        }
        db[j] += _mm512_reduce_add_ps(acc);
    }
}

/* ---- the team ------------------------------------------------------------------------------- */
typedef void (*loop_body)(void *job, int id, int threads, unsigned *phase);  /* phase: barriers passed */

static struct {
    pthread_mutex_t lock, call;    /* lock: the sleepers and the generation; call: one loop (and its work arrays) at a time */
    pthread_cond_t wake;
    unsigned generation;           /* one more for each call */
    atomic_uint phase;             /* barriers passed (a futex word) */
    atomic_int arrived, waiting;   /* at the barrier; asleep in it */
    loop_body body;
    void *job;
    unsigned start;                /* the phase when the call began */
    int threads, workers, wanted;  /* wanted: loop_threads' count */
} team = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, NULL, NULL, 0, 1, 0, 1};

#define BARRIER_SPIN_TICKS 100000ULL  /* about 40 µs of spinning before sleeping in the kernel */

/* Whether the barriers have reached `next`, or gone beyond it (modulo 2^32): the caller may pass a
 * closing barrier and run the next call, of one thread, before a preempted worker sees it open. */
static inline int loop_reached(unsigned phase, unsigned next)
{
    return (int)(phase - next) >= 0;
}

/* Wait until every thread of the call has arrived. *phase is this thread's count of barriers. A
 * thread that arrives early spins briefly (the others are at most a few µs behind on an idle
 * machine), then sleeps on the futex: on a busy machine a preempted partner would otherwise cost
 * a spinning thread its time slice. */
static void loop_barrier(unsigned *phase)
{
    unsigned next = ++*phase;
    if (atomic_fetch_add(&team.arrived, 1) == team.threads - 1) {
        atomic_store(&team.arrived, 0);
        atomic_store(&team.phase, next);
        if (atomic_load(&team.waiting))
            syscall(SYS_futex, &team.phase, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        return;
    }
    unsigned long long until = __rdtsc() + BARRIER_SPIN_TICKS;
    while (!loop_reached(atomic_load_explicit(&team.phase, memory_order_acquire), next) && __rdtsc() < until)
        _mm_pause();
    if (loop_reached(atomic_load(&team.phase), next))
        return;
    atomic_fetch_add(&team.waiting, 1);
    for (unsigned now; !loop_reached(now = atomic_load(&team.phase), next);)
        syscall(SYS_futex, &team.phase, FUTEX_WAIT_PRIVATE, now, NULL, NULL, 0);
    atomic_fetch_sub(&team.waiting, 1);
}

/* arg: the worker's id (1..) in the high 32 bits, the generation when it was made in the low ones (a
 * worker that starts late must not wait for the call after the one it was made for). Sleeps until a
 * call, runs its share and the closing barrier, sleeps again: it never spins outside a call. */
static void *loop_worker(void *arg)
{
    int id = (int)((uintptr_t)arg >> 32);
    unsigned seen = (unsigned)((uintptr_t)arg & 0xFFFFFFFFu);
    pthread_mutex_lock(&team.lock);
    for (;;) {
        while (team.generation == seen)
            pthread_cond_wait(&team.wake, &team.lock);
        seen = team.generation;
        int threads = team.threads;
        unsigned phase = team.start;
        pthread_mutex_unlock(&team.lock);
        if (id < threads) {
            team.body(team.job, id, threads, &phase);
            loop_barrier(&phase);
        }
        pthread_mutex_lock(&team.lock);
    }
    return NULL;
}

static void loop_after_fork(void)
{
    pthread_mutex_init(&team.lock, NULL);
    pthread_mutex_init(&team.call, NULL);
    pthread_cond_init(&team.wake, NULL);
    team.workers = 0;
}

/* The call's work arrays, carved from one buffer kept from call to call (fresh memory would cost a
 * page fault per 4 KB on every call): parts[i] gets sizes[i] floats, 64-byte aligned. Panels with
 * columns past the streams (S not a multiple of 32) must be zeroed by the caller. Returns 0, or -1
 * when out of memory. With team.call held. */
static int loop_work(float **parts, const size_t *sizes, int count)
{
    static float *buffer;
    static size_t floats;
    size_t total = 0;
    for (int i = 0; i < count; i++)
        total += (sizes[i] + 15) / 16 * 16;
    if (total > floats) {
        free(buffer);
        buffer = aligned_alloc(64, total * sizeof(float));
        floats = buffer ? total : 0;
        if (!buffer)
            return -1;
    }
    for (size_t i = 0, at = 0; i < (size_t)count; at += (sizes[i] + 15) / 16 * 16, i++)
        parts[i] = buffer + at;
    return 0;
}

/* loop_work, then the first `panels` parts (the panels) zeroed when S is not a multiple of 32: their
 * columns past the streams are read (and their products not stored), so they must hold numbers. */
static int loop_begin(float **const *parts, const size_t *sizes, int count, Py_ssize_t S, int panels)
{
    float *got[8];
    if (loop_work(got, sizes, count) < 0)
        return -1;
    for (int i = 0; i < count; i++) {
        *parts[i] = got[i];
        if (i < panels && S % PANEL)
            memset(got[i], 0, sizes[i] * sizeof(float));
    }
    return 0;
}

/* Run body(job, id, threads, &phase) on min(wanted, most) threads, this one as id 0; `most` at most
 * the items a body shares out, so that every thread has some (each passes every barrier). With
 * team.call held: one loop at a time. */
static void loop_run(loop_body body, void *job, int most)
{
    static int registered;
    if (!registered)
        registered = pthread_atfork(NULL, NULL, loop_after_fork) == 0;
    int threads = team.wanted < most ? team.wanted : most;
    while (team.workers < threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, loop_worker,
                                    (void *)((uintptr_t)(team.workers + 1) << 32 | team.generation));
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        team.workers++;
    }
    threads = threads < team.workers + 1 ? threads : team.workers + 1;
    pthread_mutex_lock(&team.lock);
    team.body = body;
    team.job = job;
    team.threads = threads;
    team.start = atomic_load(&team.phase);
    atomic_store(&team.arrived, 0);
    unsigned phase = team.start;
    if (threads > 1) {
        team.generation++;
        pthread_cond_broadcast(&team.wake);
    }
    pthread_mutex_unlock(&team.lock);
    body(job, 0, threads, &phase);
    loop_barrier(&phase);  /* the call ends when every thread's share has */
}

/* The share [first, last) of `count` items of thread id of `threads`. */
static inline void loop_share(Py_ssize_t count, int id, int threads, Py_ssize_t *first, Py_ssize_t *last)
{
    *first = count * id / threads;
    *last = count * (id + 1) / threads;
}

/* ---- bfloat16 products on AMX (amxl) ------------------------------------------------------ */
/* With `[net] precision=bf16` the loops' per-step products take bf16 operands (rounded to nearest
 * even, kernels.bf16) and sum in float32 (kernels.matmul_bf16): AMX's TDPBF16PS, C (16 x 16 float32)
 * += A (16 rows x 32 k bf16) B (16 k pairs x 16 streams x 2 bf16). Each thread packs its output rows'
 * weights once per call as A tiles, (tiles, Kp / 32, 16, 32); a step's state goes to B tiles, one
 * (Kp / 2, 16, 2) array per 16 streams, VNNI pairs (k even, k odd) side by side. K is `blocks` blocks
 * of n rows (a product of [dz dr] has two), each padded with zeros to nb = n rounded up to 32, so that
 * no k chunk straddles two blocks and a thread writes only its own units' pairs. Each element sums
 * its chunks in k order on one thread: the same bits whichever thread, and however many. */
#ifdef AMX_BUILT
/* This thread's tiles: 0 and 1 C (16 x 16 float32), 2 A, 3 and 4 B (16 rows of 64 bytes each). */
AMX_TARGET static void loop_amx_tiles_on(void)
{
    static const amx_config cfg = {.palette = 1, .colsb = {64, 64, 64, 64, 64}, .rows = {16, 16, 16, 16, 16}};
    _tile_loadconfig(&cfg);  /* static: GCC drops stores to a local that only the asm reads */
}

AMX_TARGET static void loop_amx_tiles_off(void)
{
    _tile_release();
}

#define LOOP_AMX_NB(n) (((n) + 31) / 32 * 32)

/* The output rows of a thread's product: its `units` from j0 in each of `gates` blocks of n rows
 * (gru_loop's z and r: 2; [lstm]'s i f o g: 4); row i of the list gate-major, or -1 past its end. */
typedef struct { Py_ssize_t j0, units, gates, n; } loop_amx_rows_of;

static inline Py_ssize_t loop_amx_row(const loop_amx_rows_of *R, Py_ssize_t i)
{
    return i < R->gates * R->units ? i / R->units * R->n + R->j0 + i % R->units : -1;
}

/* A[tile, c, r, kk] = bf16(M[row(16 tile + r), k]) (nearest even, kernels.bf16) for k' = 32 c + kk in
 * block k' / nb at k' % nb (zero past n and past the rows); M (rows, blocks n). */
AMX_TARGET static void loop_amx_pack(uint16_t *A, const float *M, Py_ssize_t n, int blocks, const loop_amx_rows_of *R)
{
    Py_ssize_t nb = LOOP_AMX_NB(n), KC = blocks * nb / 32, tiles = (R->gates * R->units + 15) / 16;
    for (Py_ssize_t tile = 0; tile < tiles; tile++)
        for (int r = 0; r < 16; r++) {
            Py_ssize_t row = loop_amx_row(R, 16 * tile + r);
            const float *m = M + (row < 0 ? 0 : row) * blocks * n;
            for (Py_ssize_t k = 0; k < blocks * nb; k += 16) {
                Py_ssize_t j = k % nb;
                __mmask16 mask = row < 0 || j >= n ? 0 : n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
                __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, m + k / nb * n + j));
                _mm256_storeu_si256((__m256i *)(A + ((tile * KC + k / 32) * 16 + r) * 32 + k % 32), (__m256i)v);
            }
        }
}

/* Rows [j0, j1) of x (n, S) as block `block` of the B arrays xb (ceil(S / 16), Kp / 2, 32): rows j, j + 1
 * rounded to bf16 side by side, xb[p, (block nb + j) / 2, 2 s + j % 2]. j0 even; the pair of an odd
 * n's last row has a zero. Streams past S are zeros. */
AMX_TARGET static void loop_amx_to_pairs(const float *x, uint16_t *xb, Py_ssize_t n, Py_ssize_t S, Py_ssize_t Kp,
                                      int block, Py_ssize_t j0, Py_ssize_t j1)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    Py_ssize_t k0 = block * LOOP_AMX_NB(n);
    for (Py_ssize_t p = 0; p * 16 < S; p++) {
        __mmask16 m = S - 16 * p >= 16 ? 0xFFFF : (__mmask16)((1u << (S - 16 * p)) - 1);
        for (Py_ssize_t j = j0; j < j1; j += 2) {
            __m512 a = _mm512_maskz_loadu_ps(m, x + j * S + 16 * p);
            __m512 b = j + 1 < j1 ? _mm512_maskz_loadu_ps(m, x + (j + 1) * S + 16 * p) : _mm512_setzero_ps();
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_permutex2var_ps(a, hi, b), _mm512_permutex2var_ps(a, lo, b));
            _mm512_storeu_si512(xb + (p * Kp + k0 + j) * 16, (__m512i)v);
        }
    }
}

/* Zeros in the pad rows [n, nb) of each block of the B arrays: the thread with the last units, once
 * per call (the arrays are reused from call to call). */
static void loop_amx_zero_pads(uint16_t *xb, Py_ssize_t n, int blocks, Py_ssize_t S)
{
    Py_ssize_t nb = LOOP_AMX_NB(n), Kp = blocks * nb, from = (n + 1) / 2 * 2;
    for (Py_ssize_t p = 0; p * 16 < S; p++)
        for (int block = 0; block < blocks; block++)
            memset(xb + (p * Kp + block * nb + from) * 16, 0, (size_t)(nb - from) * 16 * sizeof(uint16_t));
}

/* y[row(i), s] (+)= Σ_k A[i, k] x[k, s] for the rows R of y (·, S), A packed by loop_amx_pack, x in B arrays
 * (loop_amx_to_pairs) of Kp rows. Each C tile starts at zero; `add`: y += it (as y += A x). */
AMX_TARGET static void loop_amx_product(const uint16_t *A, const uint16_t *xb, Py_ssize_t Kp, float *y, Py_ssize_t S,
                                     const loop_amx_rows_of *R, int add)
{
    float out[2][256] __attribute__((aligned(64)));
    Py_ssize_t KC = Kp / 32, tiles = (R->gates * R->units + 15) / 16, SB = (S + 15) / 16;
    for (Py_ssize_t tile = 0; tile < tiles; tile++)
        for (Py_ssize_t p = 0; p < SB; p += 2) {  /* two blocks of 16 streams a time */
            int two = p + 1 < SB;
            const uint16_t *a = A + tile * KC * 512, *b = xb + p * Kp * 16;
            _tile_zero(0);
            _tile_zero(1);
            for (Py_ssize_t c = 0; c < KC; c++) {
                _tile_loadd(2, a + c * 512, 64);
                _tile_loadd(3, b + c * 512, 64);
                _tile_dpbf16ps(0, 2, 3);
                if (two) {
                    _tile_loadd(4, b + Kp * 16 + c * 512, 64);
                    _tile_dpbf16ps(1, 2, 4);
                }
            }
            _tile_stored(0, out[0], 64);
            _tile_stored(1, out[1], 64);
            for (int r = 0; r < 16; r++) {
                Py_ssize_t row = loop_amx_row(R, 16 * tile + r);
                if (row < 0)
                    break;
                for (int h = 0; h <= two; h++) {
                    Py_ssize_t s = 16 * (p + h);
                    __mmask16 m = S - s >= 16 ? 0xFFFF : (__mmask16)((1u << (S - s)) - 1);
                    __m512 v = _mm512_load_ps(out[h] + 16 * r);
                    if (add)
                        v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + row * S + s), v);
                    _mm512_mask_storeu_ps(y + row * S + s, m, v);
                }
            }
        }
}
#else  /* a compiler without AMX: amx_on stays 0, and these are never called */
typedef struct { Py_ssize_t j0, units, gates, n; } loop_amx_rows_of;
#define LOOP_AMX_NB(n) (((n) + 31) / 32 * 32)
static void loop_amx_tiles_on(void) {}
static void loop_amx_tiles_off(void) {}
static void loop_amx_pack(uint16_t *A, const float *M, Py_ssize_t n, int blocks, const loop_amx_rows_of *R) {}
static void loop_amx_to_pairs(const float *x, uint16_t *xb, Py_ssize_t n, Py_ssize_t S, Py_ssize_t Kp, int block,
                          Py_ssize_t j0, Py_ssize_t j1) {}
static void loop_amx_zero_pads(uint16_t *xb, Py_ssize_t n, int blocks, Py_ssize_t S) {}
static void loop_amx_product(const uint16_t *A, const uint16_t *xb, Py_ssize_t Kp, float *y, Py_ssize_t S,
                         const loop_amx_rows_of *R, int add) {}
#endif

/* ---- LSTM ---------------------------------------------------------------------------------- */
/* Forward: for t < T, G[t] = WT H[t] (the recurrent part of the pre-activations, WT (4n, n) with the
 * i f o rows halved), then lstm_step(G[t], XU[t], C[t], C[t+1], TC[t], H[t+1][, P]) and Y[t] = H[t+1]ᵀ.
 * G, XU (T, 4n, S), C, H (T+1, n, S), TC (T, n, S), P (3n, S): feature-major as layers/lstm.py's
 * loop; Y (T, S, n) the outputs as rows. Work: units in pairs, a pair's 8 gate rows (i f o g of
 * each) one tile, its step right after.
 * Back: for t from T-1 down, lstm_back(dh, dc, DY[t]ᵀ, G[t], C[t], TC[t], d[, P, dP]), dG[t] = dᵀ
 * (rows (S, 4n)), db += d's sums over the streams, and for t > 0 dh = W d, W (n, 4n); DY (T, S, n)
 * the output deltas as rows. Work: units in eights, the tile's 8 rows.
 * With bf16 (amx_on) the products are AMX's (the bf16 tiles above): A the thread's A tiles, xp two
 * steps' B arrays (forward of H, back of d's four blocks), d the step's deltas at any S. */
typedef struct {
    const float *W, *XU, *DY, *P;
    float *G, *C, *TC, *H, *dG, *dh, *dc, *dP;
    float *A;      /* the packed weights: forward (pairs, n, 8), back (eights, 4n, 8) */
    float *xp;     /* two steps' panels: forward H (2, P, n, 32), back d (2, P, 4n, 32) */
    float *d;      /* back: a step's gate deltas (4n, S) */
    Py_ssize_t T, S, n;
    float *Y, *db; /* forward's outputs as rows; back's bias gradient (4n) */
    float *DH;     /* back: a step's output deltas, feature-major (n, S) */
    int bf16;      /* the products on AMX, bf16 operands */
} lstm_job;

__attribute__((target("avx512f,avx2,fma"))) static void lstm_forward_body(void *arg, int id, int threads, unsigned *phase)
{
    lstm_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, P = (S + PANEL - 1) / PANEL, pairs = (n + 1) / 2, q0, q1;
    Py_ssize_t B = n * S;  /* a gate block of a step */
    loop_share(pairs, id, threads, &q0, &q1);
    Py_ssize_t j0 = 2 * q0, j1 = 2 * q1 < n ? 2 * q1 : n, nb = LOOP_AMX_NB(n), half = (S + 15) / 16 * nb * 16;
    loop_amx_rows_of R = {j0, j1 - j0, 4, n};
    uint16_t *A = (uint16_t *)J->A + q0 * (nb / 32) * 512, *xb = (uint16_t *)J->xp;  /* xb: two halves */
    if (J->bf16) {
        loop_amx_pack(A, J->W, n, 1, &R);
        loop_amx_tiles_on();
        if (j1 == n) {
            loop_amx_zero_pads(xb, n, 1, S);
            loop_amx_zero_pads(xb + half, n, 1, S);
        }
        loop_amx_to_pairs(J->H, xb, n, S, nb, 0, j0, j1);
        loop_barrier(phase);
    }
    for (Py_ssize_t q = q0; q < q1 && !J->bf16; q++)  /* A[q, k, 2 gate + e] = WT[gate n + 2q + e, k] */
        for (Py_ssize_t k = 0; k < n; k++)
            for (int r = 0; r < LOOP_ROWS; r++) {
                Py_ssize_t j = 2 * q + r % 2;
                J->A[(q * n + k) * LOOP_ROWS + r] = j < n ? J->W[(r / 2 * n + j) * n + k] : 0.0f;
            }
    for (Py_ssize_t t = 0; t < T; t++) {
        const float *hp = J->xp + (t % 2) * P * n * PANEL;
        float *g = J->G + t * 4 * B, *h1 = J->H + (t + 1) * B;
        if (J->bf16)
            loop_amx_product(A, xb + t % 2 * half, nb, g, S, &R, 0);
        for (Py_ssize_t q = q0; q < q1; q += 2) {  /* two pairs a time, then their steps */
            for (Py_ssize_t p = 0; p < P && !J->bf16; p++) {
                float *y[2 * LOOP_ROWS];
                __mmask16 m0, m1;
                for (int r = 0; r < 2 * LOOP_ROWS; r++) {  /* row r: gate r % 8 / 2 of unit 2q + r / 8 * 2 + r % 2 */
                    Py_ssize_t j = 2 * q + r / 8 * 2 + r % 2;
                    y[r] = j < n && q + r / 8 < q1 ? g + (r % 8 / 2 * n + j) * S + p * PANEL : NULL;
                }
                loop_masks(S, p, &m0, &m1);
                loop_tiles(J->A + q * n * LOOP_ROWS, q + 1 < q1 ? J->A + (q + 1) * n * LOOP_ROWS : NULL,
                           hp + p * n * PANEL, n, y, m0, m1, 0, S <= 16);
            }
            Py_ssize_t j = 2 * q, u = (q + 2 <= q1 ? 4 : 2) < n - j ? (q + 2 <= q1 ? 4 : 2) : n - j, o = j * S;
            if (J->P)
                lstm_row_avx2(g + o, J->XU + t * 4 * B + o, J->C + t * B + o, J->C + (t + 1) * B + o,
                              J->TC + t * B + o, h1 + o, J->P + o, u * S, B, 1);
            else
                lstm_row_avx2(g + o, J->XU + t * 4 * B + o, J->C + t * B + o, J->C + (t + 1) * B + o,
                              J->TC + t * B + o, h1 + o, NULL, u * S, B, 0);
        }
        loop_to_rows(h1, J->Y + t * S * n, S, n, 0, 2 * q0, 2 * q1 < n ? 2 * q1 : n);
        if (t + 1 < T) {
            if (J->bf16)
                loop_amx_to_pairs(h1, xb + (t + 1) % 2 * half, n, S, nb, 0, j0, j1);
            else
                loop_to_panels(h1, J->xp + ((t + 1) % 2) * P * n * PANEL, n, S, 2 * q0, 2 * q1 < n ? 2 * q1 : n);
            loop_barrier(phase);
        }
    }
    if (J->bf16)
        loop_amx_tiles_off();
}

__attribute__((target("avx512f,avx2,fma"))) static void lstm_back_loop_body(void *arg, int id, int threads, unsigned *phase)
{
    lstm_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, P = (S + PANEL - 1) / PANEL, eights = (n + 7) / 8, e0, e1;
    Py_ssize_t B = n * S, K = 4 * n;
    loop_share(eights, id, threads, &e0, &e1);
    Py_ssize_t j0 = 8 * e0, j1 = 8 * e1 < n ? 8 * e1 : n, nb = LOOP_AMX_NB(n), half = (S + 15) / 16 * 4 * nb * 16;
    loop_amx_rows_of R = {j0, j1 - j0, 1, n};
    uint16_t *A = (uint16_t *)J->A + e0 * (4 * nb / 32) * 512, *xb = (uint16_t *)J->xp;  /* xb: two halves */
    if (J->bf16) {
        loop_amx_pack(A, J->W, n, 4, &R);
        loop_amx_tiles_on();
        if (j1 == n) {
            loop_amx_zero_pads(xb, n, 4, S);
            loop_amx_zero_pads(xb + half, n, 4, S);
        }
    } else
        loop_pack(J->A, J->W, K, n, 1, e0, e1);
    for (Py_ssize_t t = T - 1; t >= 0; t--) {
        /* at 32 streams a panel is the deltas' own layout: the step writes them in place */
        float *dp = J->xp + (t % 2) * P * K * PANEL, *d = S == PANEL && !J->bf16 ? dp : J->d, *dGt = J->dG + t * S * K;
        Py_ssize_t o = j0 * S, m = (j1 - j0) * S;
        loop_from_rows(J->DY + t * S * n, J->DH, S, n, 0, j0, j1);
        if (J->P)
            lstm_back_body_avx2(J->dh + o, J->dc + o, J->DH + o, J->G + t * 4 * B + o, J->C + t * B + o,
                                J->TC + t * B + o, d + o, J->P + o, J->dP + o, m, B, 1);
        else
            lstm_back_body_avx2(J->dh + o, J->dc + o, J->DH + o, J->G + t * 4 * B + o, J->C + t * B + o,
                                J->TC + t * B + o, d + o, NULL, NULL, m, B, 0);
        for (int gate = 0; gate < 4; gate++) {  /* dG[t][s, gate n + j] = d[gate n + j, s] */
            loop_row_sums(d + gate * B, J->db + gate * n, S, j0, j1);
            loop_to_rows(d + gate * B, dGt, S, K, gate * n, j0, j1);
        }
        if (t == 0)
            break;
        for (int gate = 0; gate < 4 && d != dp; gate++)
            if (J->bf16)
                loop_amx_to_pairs(d + gate * B, xb + t % 2 * half, n, S, 4 * nb, gate, j0, j1);
            else
                loop_to_panels(d + gate * B, dp + gate * n * PANEL, K, S, j0, j1);
        loop_barrier(phase);
        if (J->bf16)
            loop_amx_product(A, xb + t % 2 * half, 4 * nb, J->dh, S, &R, 0);
        else
            loop_rows(J->A, dp, K, J->dh, n, S, e0, e1, 0);
    }
    if (J->bf16)
        loop_amx_tiles_off();
}

/* ---- GRU ----------------------------------------------------------------------------------- */
/* Forward: for t < T, ZR[t] = WzrT H[t], gru_zr(ZR[t], XU[t], H[t], RH[t]), HC[t] = WhT RH[t],
 * gru_step(tanh, HC[t], XU[t], ZR[t], H[t], H[t+1][, P[t]]), Y[t] = H[t+1]ᵀ, and in training
 * RHrows[t] = RH[t]ᵀ. WzrT (2n, n), WhT (n, n); XU, P (T, 3n, S), ZR (T, 2n, S), HC, RH (T, n, S),
 * H (T+1, n, S), Y, RHrows (T, S, n). Two barriers a step: wh reads every unit of r h, the next
 * step every unit of h'.
 * Back: for t from T-1 down, dh += DY[t]ᵀ; dc = P[t][c] dh (d's third block); drh = Wh dc;
 * gru_back(dh, drh, ZR[t], P[t], d); dP[t] = dᵀ (rows (S, 3n)); db += d's sums over the streams;
 * for t > 0, dh += Wzr [dz dr]. Wzr (n, 2n), Wh (n, n), DY (T, S, n). Two barriers a step (each
 * product reads every unit's deltas).
 * Each thread owns eights of units: its rows of every product, their step maths. With bf16 (amx_on)
 * the products are AMX's, the operands in the bf16 tiles above: Azr Ah its A tiles, xa xb its B arrays
 * (xb [dz dr]'s two blocks). */
typedef struct {
    const float *Wzr, *Wh, *XU, *DY;
    float *ZR, *HC, *RH, *H, *P, *RHrows, *dP, *dh;
    float *Azr, *Ah;   /* packed: forward wzr's z r rows of 4 units (n/4, n, 8), wh (n/8, n, 8);
                          back Wzr (n/8, 2n, 8), Wh (n/8, n, 8) */
    float *xa, *xb;    /* panels: forward h and r h (P, n, 32); back dc (P, n, 32) and [dz dr] (P, 2n, 32) */
    float *d, *drh;    /* back: a step's deltas (3n, S), r h's (n, S) */
    Py_ssize_t T, S, n;
    int tanh_act;
    float *Y, *db;     /* forward's outputs as rows; back's bias gradient (3n) */
    float *DH;         /* back: a step's output deltas, feature-major (n, S) */
    int bf16;          /* the products on AMX, bf16 operands */
} gru_job;

__attribute__((target("avx512f,avx2,fma"))) static void gru_forward_body(void *arg, int id, int threads, unsigned *phase)
{
    gru_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, B = n * S, eights = (n + 7) / 8, e0, e1;
    loop_share(eights, id, threads, &e0, &e1);
    Py_ssize_t j0 = 8 * e0, j1 = 8 * e1 < n ? 8 * e1 : n, o = j0 * S, m = (j1 - j0) * S;
    Py_ssize_t nb = LOOP_AMX_NB(n), KC = nb / 32;
    loop_amx_rows_of Rzr = {j0, j1 - j0, 2, n}, Rh = {j0, j1 - j0, 1, n};
    uint16_t *Azr = (uint16_t *)J->Azr + e0 * KC * 512, *Ah = (uint16_t *)J->Ah + e0 * KC * 512;
    uint16_t *xa = (uint16_t *)J->xa, *xb = (uint16_t *)J->xb;
    if (J->bf16) {
        loop_amx_pack(Azr, J->Wzr, n, 1, &Rzr);
        loop_amx_pack(Ah, J->Wh, n, 1, &Rh);
        loop_amx_tiles_on();
        if (j1 == n) {
            loop_amx_zero_pads(xa, n, 1, S);
            loop_amx_zero_pads(xb, n, 1, S);
        }
        loop_amx_to_pairs(J->H, xa, n, S, nb, 0, j0, j1);
        loop_barrier(phase);
    } else {
        loop_pack(J->Azr, J->Wzr, n, 2 * n, 2, 2 * e0, 2 * e1 < (n + 3) / 4 ? 2 * e1 : (n + 3) / 4);
        loop_pack(J->Ah, J->Wh, n, n, 1, e0, e1);
    }
    for (Py_ssize_t t = 0; t < T; t++) {
        float *zr = J->ZR + t * 2 * B, *c = J->HC + t * B, *rh = J->RH + t * B, *h = J->H + t * B;
        const float *xu = J->XU + t * 3 * B;
        Py_ssize_t P = (S + PANEL - 1) / PANEL;
        if (J->bf16)
            loop_amx_product(Azr, xa, nb, zr, S, &Rzr, 0);
        for (Py_ssize_t q = 2 * e0; q < 2 * e1 && 4 * q < n && !J->bf16; q += 2)  /* z r rows of units 4q.. 4q + 8 */
            for (Py_ssize_t p = 0; p < P; p++) {
                float *y[2 * LOOP_ROWS];
                __mmask16 m0, m1;
                for (int r = 0; r < 2 * LOOP_ROWS; r++) {  /* row r: gate r % 8 / 4 of unit 4q + r / 8 * 4 + r % 4 */
                    Py_ssize_t j = 4 * q + r / 8 * 4 + r % 4;
                    y[r] = j < n ? zr + (r % 8 / 4 * n + j) * S + p * PANEL : NULL;
                }
                loop_masks(S, p, &m0, &m1);
                loop_tiles(J->Azr + q * n * LOOP_ROWS, 4 * (q + 1) < n ? J->Azr + (q + 1) * n * LOOP_ROWS : NULL,
                           J->xa + p * n * PANEL, n, y, m0, m1, 0, S <= 16);
            }
        gru_zr_row_avx2(zr + o, xu + o, h + o, rh + o, m, B);
        if (J->bf16)
            loop_amx_to_pairs(rh, xb, n, S, nb, 0, j0, j1);
        else
            loop_to_panels(rh, J->xb, n, S, j0, j1);
        if (J->RHrows)
            loop_to_rows(rh, J->RHrows + t * S * n, S, n, 0, j0, j1);
        loop_barrier(phase);
        if (J->bf16)
            loop_amx_product(Ah, xb, nb, c, S, &Rh, 0);
        else
            loop_rows(J->Ah, J->xb, n, c, n, S, e0, e1, 0);
        float *h1 = J->H + (t + 1) * B, *Pt = J->P ? J->P + t * 3 * B + o : NULL;
        if (J->P && J->tanh_act)
            gru_body_avx2(c + o, xu + o, zr + o, h + o, h1 + o, Pt, m, B, 1, 1);
        else if (J->P)
            gru_body_avx2(c + o, xu + o, zr + o, h + o, h1 + o, Pt, m, B, 0, 1);
        else if (J->tanh_act)
            gru_body_avx2(c + o, xu + o, zr + o, h + o, h1 + o, NULL, m, B, 1, 0);
        else
            gru_body_avx2(c + o, xu + o, zr + o, h + o, h1 + o, NULL, m, B, 0, 0);
        loop_to_rows(h1, J->Y + t * S * n, S, n, 0, j0, j1);
        if (t + 1 < T) {
            if (J->bf16)
                loop_amx_to_pairs(h1, xa, n, S, nb, 0, j0, j1);
            else
                loop_to_panels(h1, J->xa, n, S, j0, j1);
            loop_barrier(phase);
        }
    }
    if (J->bf16)
        loop_amx_tiles_off();
}

__attribute__((target("avx512f,avx2,fma"))) static void gru_back_loop_body(void *arg, int id, int threads, unsigned *phase)
{
    gru_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, B = n * S, eights = (n + 7) / 8, e0, e1;
    loop_share(eights, id, threads, &e0, &e1);
    Py_ssize_t j0 = 8 * e0, j1 = 8 * e1 < n ? 8 * e1 : n, o = j0 * S, m = (j1 - j0) * S;
    Py_ssize_t nb = LOOP_AMX_NB(n);
    loop_amx_rows_of R = {j0, j1 - j0, 1, n};
    uint16_t *Azr = (uint16_t *)J->Azr + e0 * (2 * nb / 32) * 512, *Ah = (uint16_t *)J->Ah + e0 * (nb / 32) * 512;
    uint16_t *xa = (uint16_t *)J->xa, *xb = (uint16_t *)J->xb;
    if (J->bf16) {
        loop_amx_pack(Azr, J->Wzr, n, 2, &R);
        loop_amx_pack(Ah, J->Wh, n, 1, &R);
        loop_amx_tiles_on();
        if (j1 == n) {
            loop_amx_zero_pads(xa, n, 1, S);
            loop_amx_zero_pads(xb, n, 2, S);
        }
    } else {
        loop_pack(J->Azr, J->Wzr, 2 * n, n, 1, e0, e1);
        loop_pack(J->Ah, J->Wh, n, n, 1, e0, e1);
    }
    float *dh = J->dh, *d = J->d;
    for (Py_ssize_t t = T - 1; t >= 0; t--) {
        const float *Pt = J->P + t * 3 * B, *DH = J->DH;
        loop_from_rows(J->DY + t * S * n, J->DH, S, n, 0, j0, j1);
        for (Py_ssize_t e = o; e < o + m; e++) {
            dh[e] += DH[e];
            d[2 * B + e] = Pt[2 * B + e] * dh[e];
        }
        if (J->bf16)
            loop_amx_to_pairs(d + 2 * B, xa, n, S, nb, 0, j0, j1);
        else
            loop_to_panels(d + 2 * B, J->xa, n, S, j0, j1);
        loop_barrier(phase);
        if (J->bf16)
            loop_amx_product(Ah, xa, nb, J->drh, S, &R, 0);
        else
            loop_rows(J->Ah, J->xa, n, J->drh, n, S, e0, e1, 0);
        gru_back_body_avx2(dh + o, J->drh + o, J->ZR + t * 2 * B + o, Pt + o, d + o, m, B);
        for (int gate = 0; gate < 3; gate++) {
            loop_row_sums(d + gate * B, J->db + gate * n, S, j0, j1);
            loop_to_rows(d + gate * B, J->dP + t * S * 3 * n, S, 3 * n, gate * n, j0, j1);
        }
        if (t == 0)
            break;
        for (int gate = 0; gate < 2; gate++)
            if (J->bf16)
                loop_amx_to_pairs(d + gate * B, xb, n, S, 2 * nb, gate, j0, j1);
            else
                loop_to_panels(d + gate * B, J->xb + gate * n * PANEL, 2 * n, S, j0, j1);
        loop_barrier(phase);
        if (J->bf16)
            loop_amx_product(Azr, xb, 2 * nb, dh, S, &R, 1);
        else
            loop_rows(J->Azr, J->xb, 2 * n, dh, n, S, e0, e1, 1);
    }
    if (J->bf16)
        loop_amx_tiles_off();
}

/* ---- RNN ----------------------------------------------------------------------------------- */
/* Forward: for t < T, B[t] = WT Sf[t], then rnn_step(a, B[t], bias, Ar[t]ᵀ, Sf[t+1][, Sf[t]]) (a
 * slope activation of slope a) and St[t] = Sf[t+1]ᵀ. WT (n, n); bias, (n, S); B (T, n, S); Sf
 * (T+1, n, S); Ar, St (T, S, n): the input sub-layer's outputs and the states, as rows.
 * Back, from dS (T, S, n), the states' deltas as rows: dSf = dSᵀ, dBf[T-1] = dSf[T-1] f'(B[T-1]),
 * then for t from T-1 down to 1, rnn_back(a, dSf[t-1], W dBf[t], B[t-1], dBf[t-1][, dSf[t]]); dS
 * becomes dSfᵀ, dB (T, S, n) dBfᵀ and db Σ dBf over steps and streams. W (n, n); dSf, dBf two
 * steps' (2, n, S) here. One barrier a step; threads own eights of units. */
typedef struct {
    const float *W, *bias, *Ar;
    float *B, *Sf, *dSf, *dBf;
    float *A, *xp, *w;  /* packed W (n/8, n, 8); two steps' panels (2, P, n, 32); back: W dBf[t] (n, S) */
    Py_ssize_t T, S, n;
    float a;
    int shortcut;
    float *Af, *St;     /* forward: a step's Ar[t]ᵀ (n, S); the states as rows */
    float *dS, *dB, *db;
} rnn_job;

__attribute__((target("avx512f,avx2,fma"))) static void rnn_forward_body(void *arg, int id, int threads, unsigned *phase)
{
    rnn_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, N = n * S, P = (S + PANEL - 1) / PANEL, e0, e1;
    loop_share((n + 7) / 8, id, threads, &e0, &e1);
    Py_ssize_t j0 = 8 * e0, j1 = 8 * e1 < n ? 8 * e1 : n, o = j0 * S, m = (j1 - j0) * S;
    loop_pack(J->A, J->W, n, n, 1, e0, e1);
    for (Py_ssize_t t = 0; t < T; t++) {
        float *b = J->B + t * N, *s1 = J->Sf + (t + 1) * N;
        loop_rows(J->A, J->xp + (t % 2) * P * n * PANEL, n, b, n, S, e0, e1, 0);
        loop_from_rows(J->Ar + t * N, J->Af, S, n, 0, j0, j1);
        rnn_step_avx2(b + o, J->bias + o, J->Af + o, s1 + o, J->shortcut ? J->Sf + t * N + o : NULL, m, J->a);
        loop_to_rows(s1, J->St + t * N, S, n, 0, j0, j1);
        if (t + 1 < T) {
            loop_to_panels(s1, J->xp + ((t + 1) % 2) * P * n * PANEL, n, S, j0, j1);
            loop_barrier(phase);
        }
    }
}

__attribute__((target("avx512f,avx2,fma"))) static void rnn_back_loop_body(void *arg, int id, int threads, unsigned *phase)
{
    rnn_job *J = arg;
    Py_ssize_t T = J->T, S = J->S, n = J->n, N = n * S, P = (S + PANEL - 1) / PANEL, e0, e1;
    loop_share((n + 7) / 8, id, threads, &e0, &e1);
    Py_ssize_t j0 = 8 * e0, j1 = 8 * e1 < n ? 8 * e1 : n, o = j0 * S, m = (j1 - j0) * S;
    loop_pack(J->A, J->W, n, n, 1, e0, e1);
    float *ds = J->dSf + (T - 1) % 2 * N, *d = J->dBf + (T - 1) % 2 * N;
    loop_from_rows(J->dS + (T - 1) * N, ds, S, n, 0, j0, j1);
    slope_grad_avx2(J->B + (T - 1) * N + o, ds + o, d + o, m, J->a);
    loop_to_rows(d, J->dB + (T - 1) * N, S, n, 0, j0, j1);
    loop_row_sums(d, J->db, S, j0, j1);
    for (Py_ssize_t t = T - 1; t >= 1; t--) {
        float *xp = J->xp + (t % 2) * P * n * PANEL;
        loop_to_panels(J->dBf + t % 2 * N, xp, n, S, j0, j1);
        loop_barrier(phase);
        loop_rows(J->A, xp, n, J->w, n, S, e0, e1, 0);
        ds = J->dSf + (t - 1) % 2 * N, d = J->dBf + (t - 1) % 2 * N;
        loop_from_rows(J->dS + (t - 1) * N, ds, S, n, 0, j0, j1);
        rnn_back_avx2(ds + o, J->w + o, J->B + (t - 1) * N + o, d + o, J->shortcut ? J->dSf + t % 2 * N + o : NULL, m, J->a);
        loop_to_rows(ds, J->dS + (t - 1) * N, S, n, 0, j0, j1);
        loop_to_rows(d, J->dB + (t - 1) * N, S, n, 0, j0, j1);
        loop_row_sums(d, J->db, S, j0, j1);
    }
}
