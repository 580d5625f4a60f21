/* panel_matmul: out = x W + b for the few rows of a many-stream step (generation with --samples),
 * where the weights W stay the same from step to step. Included by _kernels.c on x86-64 GCC.
 *
 * Why: at a few rows OpenBLAS's sgemm spends much of each call packing W into its own panels
 * again. W is packed once instead (kernels.pack_panels), and the kernel below streams it
 * (benchmarks/README.md, "The panel kernel for many streams").
 *
 * Layout: Wp (P, K, 32) float32, P = ceil(N / 32), Wp[j, k, c] = W[k, 32 j + c], zeros past N.
 * x (M, K), b (N,), out (M, N); all C-contiguous.
 * Work: chunks of tiles claimed by `threads` threads, this one and threads - 1 workers that wait
 * for work spinning (yielding) for about a millisecond and then sleep. One call at a time. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <x86intrin.h>

#define PANEL 32       /* columns per panel: two 16-float vectors */
#define PANEL_ROWS 8   /* rows per tile: 8 x 2 accumulators of the 32 vector registers */
#define SPIN_TICKS 2000000ULL

typedef struct {
    const float *x, *w, *b;
    float *y;
    Py_ssize_t M, K, N, P;
    Py_ssize_t rs, ks;  /* x[r, k] is x[r * rs + k * ks]: rows (K, 1) or feature-major (1, M) */
} panel_job;

/* out rows [0, MR) of one tile, columns 32 j.. of panel w (K, 32): y[r, c] = b[c] + Σ_k x[r, k] w[k, c],
 * x[r, k] at x[r * rs + k * ks]. m0, m1 mask the columns past N in the last panel. MR is a
 * constant at each call site. */
__attribute__((target("avx512f"), always_inline)) static inline void
panel_tile(const float *x, Py_ssize_t rs, Py_ssize_t ks, const float *w, const float *b, float *y,
           Py_ssize_t K, Py_ssize_t N, __mmask16 m0, __mmask16 m1, const int MR)
{
    __m512 c[PANEL_ROWS][2];
    __m512 lo = _mm512_maskz_loadu_ps(m0, b), hi = _mm512_maskz_loadu_ps(m1, b + 16);
    for (int r = 0; r < MR; r++) {
        c[r][0] = lo;
        c[r][1] = hi;
    }
    for (Py_ssize_t k = 0; k < K; k++) {
        __m512 w0 = _mm512_loadu_ps(w + k * PANEL), w1 = _mm512_loadu_ps(w + k * PANEL + 16);
        for (int r = 0; r < MR; r++) {
            __m512 a = _mm512_set1_ps(x[r * rs + k * ks]);
            c[r][0] = _mm512_fmadd_ps(a, w0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(a, w1, c[r][1]);
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm512_mask_storeu_ps(y + r * N, m0, c[r][0]);
        _mm512_mask_storeu_ps(y + r * N + 16, m1, c[r][1]);
    }
}

/* Tile t of a job: rows 8 (t % blocks).. of panel t / blocks, tiles numbered panel by panel. */
__attribute__((target("avx512f"))) static void panel_do(const panel_job *job, Py_ssize_t t)
{
    Py_ssize_t K = job->K, N = job->N, M = job->M, blocks = (M + PANEL_ROWS - 1) / PANEL_ROWS;
    Py_ssize_t j = t / blocks, i = t % blocks * PANEL_ROWS, left = N - j * PANEL;
    __mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    __mmask16 m1 = left >= 32 ? 0xFFFF : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
    const float *w = job->w + j * K * PANEL, *b = job->b + j * PANEL, *x = job->x + i * job->rs;
    float *y = job->y + i * N + j * PANEL;
    switch (M - i < PANEL_ROWS ? M - i : PANEL_ROWS) {
    case 8: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 8); break;
    case 7: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 7); break;
    case 6: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 6); break;
    case 5: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 5); break;
    case 4: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 4); break;
    case 3: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 3); break;
    case 2: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 2); break;
    default: panel_tile(x, job->rs, job->ks, w, b, y, K, N, m0, m1, 1); break;
    }
}

/* The threads share a call by claiming chunks of tiles from one counter, not by fixed shares: on a
 * busy machine a worker that is not scheduled leaves its chunks to the caller instead of making it
 * wait a time slice. `ticket` is the call's number (high 32 bits) and its next free tile (low 32);
 * `limit` the call's number and its tile count. A worker claims only within the call it woke for,
 * and reads the job only after a claim: the caller cannot finish that call (and write the next
 * job) before the claimed chunk is done. */
static struct {
    pthread_mutex_t lock, call;  /* lock: the sleepers and the generation; call: one call at a time */
    pthread_cond_t wake;
    atomic_uint generation;      /* one more for each call */
    atomic_ullong ticket, limit;
    atomic_llong done;           /* tiles finished in this call */
    Py_ssize_t chunk;            /* tiles per claim */
    int threads, workers, sleeping;
    panel_job job;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 1, 1, 0, 0};

/* Claim and do chunks of call `call` until none is left. */
__attribute__((target("avx512f"))) static void panel_claim(unsigned call)
{
    for (;;) {
        unsigned long long t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
        unsigned long long lim = atomic_load_explicit(&pool.limit, memory_order_acquire);
        Py_ssize_t first = (Py_ssize_t)(t & 0xFFFFFFFFu), tiles = (Py_ssize_t)(lim & 0xFFFFFFFFu);
        if ((unsigned)(t >> 32) != call || (unsigned)(lim >> 32) != call || first >= tiles)
            return;
        Py_ssize_t chunk = pool.chunk;
        if (!atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t + (unsigned long long)chunk,
                                                   memory_order_acq_rel, memory_order_relaxed))
            continue;
        Py_ssize_t end = first + chunk < tiles ? first + chunk : tiles;
        for (Py_ssize_t i = first; i < end; i++)
            panel_do(&pool.job, i);
        atomic_fetch_add_explicit(&pool.done, end - first, memory_order_release);
    }
}

/* arg: the generation when the worker was made (a worker that starts late must not take the next
 * call for its first). Waits for a call spinning about a millisecond, yielding, then sleeps. */
static void *panel_worker(void *arg)
{
    unsigned seen = (unsigned)(uintptr_t)arg;
    for (;;) {
        unsigned long long until = __rdtsc() + SPIN_TICKS;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen && __rdtsc() < until)
            sched_yield();
        pthread_mutex_lock(&pool.lock);
        pool.sleeping++;
        while (atomic_load(&pool.generation) == seen)
            pthread_cond_wait(&pool.wake, &pool.lock);
        pool.sleeping--;
        seen = atomic_load(&pool.generation);  /* the newest call: an older one is over */
        pthread_mutex_unlock(&pool.lock);
        panel_claim(seen);
    }
    return NULL;
}

/* A forked child has none of its parent's workers: it starts its own when it needs them. */
static void panel_after_fork(void)
{
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&pool.call, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pool.workers = pool.sleeping = 0;
}

/* Start the workers once; with fewer than asked (a failed pthread_create), run on those. */
static void panel_start(void)
{
    static int registered;
    if (!registered)
        registered = pthread_atfork(NULL, NULL, panel_after_fork) == 0;
    while (pool.workers < pool.threads - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&t, &attr, panel_worker, (void *)(uintptr_t)atomic_load(&pool.generation));
        pthread_attr_destroy(&attr);
        if (failed)
            break;
        pool.workers++;
    }
    pool.threads = pool.workers + 1;
}

__attribute__((target("avx512f"))) static void panel_run(const panel_job *job)
{
    pthread_mutex_lock(&pool.call);
    panel_start();
    Py_ssize_t tiles = job->P * ((job->M + PANEL_ROWS - 1) / PANEL_ROWS);
    if (pool.threads == 1 || 2 * job->M * job->K * job->N < 1000000) {  /* under a megaflop: no wake-up */
        for (Py_ssize_t t = 0; t < tiles; t++)
            panel_do(job, t);
    } else {
        unsigned call = atomic_load(&pool.generation) + 1;
        pool.job = *job;
        pool.chunk = tiles / (4 * pool.threads) > 1 ? tiles / (4 * pool.threads) : 1;  /* ~4 claims per thread */
        atomic_store(&pool.done, 0);
        atomic_store_explicit(&pool.limit, ((unsigned long long)call << 32) | (unsigned long long)tiles, memory_order_release);
        atomic_store_explicit(&pool.ticket, (unsigned long long)call << 32, memory_order_release);
        pthread_mutex_lock(&pool.lock);
        atomic_store_explicit(&pool.generation, call, memory_order_release);
        if (pool.sleeping)
            pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
        panel_claim(call);
        for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < tiles; spins++)
            if (spins < 1000)
                _mm_pause();
            else
                sched_yield();  /* a worker was preempted inside its chunk: let it run */
    }
    pthread_mutex_unlock(&pool.call);
}
