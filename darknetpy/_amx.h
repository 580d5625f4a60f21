/* matmul_bf16 on AMX: out (M, N) = beta·out + bf16(A) @ bf16(B), the float32 sums in the tiles
 * (kernels.matmul_bf16 is the numpy reference; [net] precision=bf16 sends its large products here).
 * Included by _kernels.c; the op joins the module only where it runs (amx_available).
 *
 * Why: AMX's TDPBF16PS does a 16 x 16 x 32 product per instruction, several times the float32
 * GFLOP/s of OpenBLAS on the same core (benchmarks/README.md, "bfloat16 products on AMX").
 *
 * Layout: A (M, K) is a (M, K), or aᵀ for a (K, M) when ta; B (K, N) is b, or bᵀ for b (N, K) when
 * tb; all float32, C-contiguous. Both are rounded to bfloat16 (nearest, ties to even:
 * vcvtne2ps2bf16, which also reads float32 subnormals as zero) as they are packed into 1 KB tiles
 * of 16 rows x 64 bytes, zeros past every edge:
 *   Ap (Mt, Kb, 16, 16) pairs: Ap[i, kb, r, p] = (A[16i + r, 32kb + 2p], A[16i + r, 32kb + 2p + 1])
 *   Bp (Nt, Kb, 16, 16) pairs: Bp[j, kb, p, c] = (B[32kb + 2p, 16j + c], B[32kb + 2p + 1, 16j + c])
 * (B's "VNNI" layout), Kb = ceil(K / 32), Mt and Nt the 16-row and 16-column tiles rounded up to
 * even. A block of 32 x 32 outputs is 2 x 2 C tiles (tmm0-3) fed by 2 A tiles (tmm4-5) and 2 B
 * tiles (tmm6-7); the blocks are shared over the step loops' team (team_share), each summed by
 * one thread in kb order, so the bits do not depend on the thread count. */
static int amx_on;  /* AMX runs here: matmul_bf16 is in the module and the step loops take bf16=1 (_kernels.amx) */

/* GCC 11 and clang 12 brought the AMX intrinsics; an older compiler builds the module without this op
 * or the loops' AMX path (_loop.h). */
#if defined(HAVE_AVX2) && defined(__linux__) && (defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11)
#define AMX_BUILT 1
#include <cpuid.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw")))
#define AMX_TILE 256  /* uint32 (bf16 pairs) per tile: 16 rows x 16 */
/* The blocks go row strip by row strip (each thread reading all of Bp for each strip, from L2
 * while Bp's tiles fit in about 3/4 of its 2 MB here), or column strip by column strip (Ap read
 * again for each) when Bp is larger than that and than Ap. Row strips write out row by row: they
 * measured faster even where Ap was the smaller. */
#define AMX_L2_TILES 1536

typedef struct {
    float *out;
    const float *a, *b;
    uint32_t *Ap, *Bp;
    Py_ssize_t M, N, K, Kb, Mt, Nt;
    int ta, tb, beta, rows_outer;  /* rows_outer: blocks numbered row strip by row strip (AMX_L2_TILES) */
} amx_job;

/* The palette-1 tile configuration: every tile 16 rows of 64 bytes. */
typedef struct __attribute__((packed, aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* 32 floats from s, the lanes outside m0 (first 16) and m1 (next 16) zero, as 32 bf16. */
AMX_TARGET static inline __m512i amx_round(const float *s, __mmask16 m0, __mmask16 m1)
{
    __m512 lo = _mm512_maskz_loadu_ps(m0, s), hi = _mm512_maskz_loadu_ps(m1, s + 16);
    return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  /* lo in the low 16 bf16 */
}

/* The lanes of [c0, c0 + 16) before C: a mask (0 when c0 >= C). */
static inline __mmask16 amx_mask(Py_ssize_t c0, Py_ssize_t C)
{
    Py_ssize_t left = C - c0;
    return left >= 16 ? 0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
}

/* Rows [r0, r0 + 16) of src (R, C), each along its whole length, as the row i of tiles t, t + 1, ..
 * (one per 32 columns): tile kb row i = src[r0 + i, 32kb ..] as bf16, zeros past row R or column C.
 * A's tiles from a (M, K), or Bᵀ's from b (N, K). */
AMX_TARGET static void amx_rows(uint32_t *t, const float *src, Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t R,
                                  Py_ssize_t C)
{
    for (Py_ssize_t i = 0; i < 16; i++)
        for (Py_ssize_t c0 = 0, kb = 0; c0 < C; c0 += 32, kb++)
            _mm512_storeu_si512(t + kb * AMX_TILE + 16 * i,
                                r0 + i < R ? amx_round(src + (r0 + i) * ld + c0, amx_mask(c0, C), amx_mask(c0 + 16, C))
                                           : _mm512_setzero_si512());
}

/* Rows [r0, r0 + 32) of src (R, C), pair by pair along their whole length, as tiles t, t + stride,
 * .. (one per 16 columns): tile j row p = the pairs (src[r0 + 2p, 16j + c], src[r0 + 2p + 1, 16j + c]),
 * c < 16, as bf16, zeros past row R or column C (tiles to `tiles`): the VNNI layout of B's tiles
 * from b (K, N), or of Aᵀ's from a (K, M). */
AMX_TARGET static void amx_pairs(uint32_t *t, Py_ssize_t stride, Py_ssize_t tiles, const float *src, Py_ssize_t ld,
                                   Py_ssize_t r0, Py_ssize_t R, Py_ssize_t C)
{
    static const uint16_t order[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    const __m512i zip = _mm512_loadu_si512(order);
    for (Py_ssize_t p = 0; p < 16; p++) {
        Py_ssize_t r = r0 + 2 * p;
        /* rows r and r + 1 side by side (masked off past R), then interleaved */
        const float *s = src + (r < R ? r : 0) * ld, *s1 = src + (r + 1 < R ? r + 1 : 0) * ld;
        for (Py_ssize_t j = 0; j < tiles; j++) {
            __mmask16 m = amx_mask(16 * j, C);
            __m512 lo = _mm512_maskz_loadu_ps(r < R ? m : 0, s + 16 * j),
                   hi = _mm512_maskz_loadu_ps(r + 1 < R ? m : 0, s1 + 16 * j);
            _mm512_storeu_si512(t + j * stride + 16 * p, _mm512_permutexvar_epi16(zip, (__m512i)_mm512_cvtne2ps_pbh(hi, lo)));
        }
    }
}

/* Each of `count` tiles (16 x 16 pairs, `stride` apart) transposed in place: A's tiles made from
 * pairs, or B's from rows. */
static void amx_transpose(uint32_t *t, Py_ssize_t stride, Py_ssize_t count)
{
    for (Py_ssize_t n = 0; n < count; n++, t += stride)
        for (int i = 0; i < 16; i++)
            for (int j = i + 1; j < 16; j++) {
                uint32_t x = t[16 * i + j];
                t[16 * i + j] = t[16 * j + i];
                t[16 * j + i] = x;
            }
}

/* Pack one operand, x (Ap or Bp, `tiles` 16-row or 16-column tiles by Kb) from src, in the source's
 * own order, a strip of whole rows at a time: by 16 rows when K runs along src's rows (rows), by
 * 32 when it runs down (pairs); the tiles transposed where the source's layout is the other's. */
AMX_TARGET static void amx_pack(const amx_job *J, uint32_t *x, Py_ssize_t tiles, const float *src, int along,
                                  int vnni, Py_ssize_t i0, Py_ssize_t i1)
{
    Py_ssize_t Kb = J->Kb, MN = x == J->Ap ? J->M : J->N;
    for (Py_ssize_t i = i0; i < i1; i++) {
        uint32_t *t = along ? x + i * Kb * AMX_TILE : x + i * AMX_TILE;  /* tile (i, 0), or (0, kb = i) */
        if (along)
            amx_rows(t, src, J->K, 16 * i, MN, J->K);
        else
            amx_pairs(t, Kb * AMX_TILE, tiles, src, MN, 32 * i, J->K, MN);
        if (along == vnni)
            amx_transpose(t, along ? AMX_TILE : Kb * AMX_TILE, along ? Kb : tiles);
    }
}

/* The strips [i0, i1) of A: 16-row strips of a (M, K), or 32-row strips of a (K, M) when ta. */
AMX_TARGET static void amx_pack_a(const void *job, Py_ssize_t i0, Py_ssize_t i1)
{
    const amx_job *J = job;
    amx_pack(J, J->Ap, J->Mt, J->a, !J->ta, 0, i0, i1);
}

/* The strips [i0, i1) of B: 32-row strips of b (K, N), or 16-row strips of b (N, K) when tb. */
AMX_TARGET static void amx_pack_b(const void *job, Py_ssize_t i0, Py_ssize_t i1)
{
    const amx_job *J = job;
    amx_pack(J, J->Bp, J->Nt, J->b, J->tb, 1, i0, i1);
}

/* out's part of the 2 x 2 C tiles c (each 16 x 16) of the block at row m0, column n0:
 * out = c, or out + c when beta. */
AMX_TARGET static void amx_write(const amx_job *J, const float *c, Py_ssize_t m0, Py_ssize_t n0)
{
    for (int q = 0; q < 4; q++) {
        Py_ssize_t m1 = m0 + 16 * (q >> 1), n1 = n0 + 16 * (q & 1);
        __mmask16 m = amx_mask(n1, J->N);
        for (Py_ssize_t r = 0; r < 16 && m1 + r < J->M && m; r++) {
            float *o = J->out + (m1 + r) * J->N + n1;
            __m512 v = _mm512_load_ps(c + q * AMX_TILE + 16 * r);
            if (J->beta)
                v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), v);
            _mm512_mask_storeu_ps(o, m, v);
        }
    }
}

/* The 32 x 32 output blocks [i0, i1): C = Σ_kb A tiles x B tiles, in kb order. */
AMX_TARGET static void amx_product_part(const void *job, Py_ssize_t i0, Py_ssize_t i1)
{
    const amx_job *J = job;
    amx_config config = {.palette = 1};
    float c[4 * AMX_TILE] __attribute__((aligned(64)));
    for (int t = 0; t < 8; t++) {
        config.rows[t] = 16;
        config.colsb[t] = 64;
    }
    _tile_loadconfig(&config);
    Py_ssize_t Mb = J->Mt / 2, Nb = J->Nt / 2, Kb = J->Kb, strip = Kb * AMX_TILE;
    for (Py_ssize_t i = i0; i < i1; i++) {
        Py_ssize_t ib = J->rows_outer ? i / Nb : i % Mb, jb = J->rows_outer ? i % Nb : i / Mb;
        const uint32_t *A = J->Ap + 2 * ib * strip, *B = J->Bp + 2 * jb * strip;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (Py_ssize_t kb = 0; kb < Kb; kb++) {
            _tile_loadd(4, A + kb * AMX_TILE, 64);
            _tile_loadd(5, A + strip + kb * AMX_TILE, 64);
            _tile_loadd(6, B + kb * AMX_TILE, 64);
            _tile_loadd(7, B + strip + kb * AMX_TILE, 64);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        if (!J->beta && 32 * ib + 32 <= J->M && 32 * jb + 32 <= J->N) {  /* straight into out */
            float *o = J->out + 32 * ib * J->N + 32 * jb;
            _tile_stored(0, o, J->N * 4);
            _tile_stored(1, o + 16, J->N * 4);
            _tile_stored(2, o + 16 * J->N, J->N * 4);
            _tile_stored(3, o + 16 * J->N + 16, J->N * 4);
            continue;
        }
        _tile_stored(0, c, 64);
        _tile_stored(1, c + AMX_TILE, 64);
        _tile_stored(2, c + 2 * AMX_TILE, 64);
        _tile_stored(3, c + 3 * AMX_TILE, 64);
        amx_write(J, c, 32 * ib, 32 * jb);
    }
    _tile_release();
}

/* The packed tiles of the last call, kept for the next (under the GIL: a call takes them, so two
 * threads' calls never share them): fresh pages would cost a page fault per 4 KB each call. */
static uint32_t *amx_spare;
static size_t amx_spare_tiles;

/* Whether the memory of two buffers overlaps. */
static int amx_overlap(const Py_buffer *x, const Py_buffer *y)
{
    const char *a = x->buf, *b = y->buf;
    return a < b + y->len && b < a + x->len;
}

/* matmul_bf16(out, a, b, ta, tb, beta): see the top of this file. */
static PyObject *matmul_bf16(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    static const char usage[] = "matmul_bf16(out, a, b, ta, tb, beta)";
    Py_buffer b[3];
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    int ta = PyObject_IsTrue(args[3]), tb = PyObject_IsTrue(args[4]);
    double beta = PyFloat_AsDouble(args[5]);
    if (ta < 0 || tb < 0 || (beta == -1.0 && PyErr_Occurred()))
        return NULL;
    if (beta != 0.0 && beta != 1.0) {
        PyErr_SetString(PyExc_ValueError, "matmul_bf16: beta must be 0 or 1");
        return NULL;
    }
    if (typed_args(args, 3, b, "Fff", usage) < 0)
        return NULL;
    PyObject *result = NULL;
    if (b[0].ndim != 2 || b[1].ndim != 2 || b[2].ndim != 2) {
        PyErr_SetString(PyExc_ValueError, "matmul_bf16: out, a and b must be 2-D");
        goto out;
    }
    Py_ssize_t M = b[0].shape[0], N = b[0].shape[1], K = b[1].shape[ta ? 0 : 1];
    if (b[1].shape[ta ? 1 : 0] != M || b[2].shape[tb ? 1 : 0] != K || b[2].shape[tb ? 0 : 1] != N) {
        PyErr_Format(PyExc_ValueError, "matmul_bf16: out (M, N), a (%s), b (%s); got out (%zd, %zd), a (%zd, %zd), "
                     "b (%zd, %zd)", ta ? "K, M" : "M, K", tb ? "N, K" : "K, N", M, N, b[1].shape[0],
                     b[1].shape[1], b[2].shape[0], b[2].shape[1]);
        goto out;
    }
    if (amx_overlap(&b[0], &b[1]) || amx_overlap(&b[0], &b[2])) {
        PyErr_SetString(PyExc_ValueError, "matmul_bf16: out shares memory with a or b");
        goto out;
    }
    Py_ssize_t Kb = (K + 31) / 32, Mt = (M + 31) / 32 * 2, Nt = (N + 31) / 32 * 2;
    size_t tiles = (size_t)(Mt + Nt) * Kb;
    uint32_t *packed = amx_spare;
    size_t size = amx_spare_tiles;
    if (packed && size >= tiles)
        amx_spare = NULL;
    else if ((size = tiles), !(packed = aligned_alloc(64, (tiles > 0 ? tiles : 1) * AMX_TILE * sizeof(uint32_t)))) {
        PyErr_NoMemory();
        goto out;
    }
    amx_job J = {b[0].buf, b[1].buf, b[2].buf, packed, packed + (size_t)Mt * Kb * AMX_TILE, M, N, K, Kb, Mt, Nt,
                  ta, tb, beta != 0.0, Nt * Kb <= AMX_L2_TILES || Mt >= Nt};
    result = team_share(amx_pack_a, &J, ta ? Kb : Mt, 1, M * K);
    if (result) {
        Py_DECREF(result);
        result = team_share(amx_pack_b, &J, tb ? Nt : Kb, 1, N * K);
    }
    if (result) {
        Py_DECREF(result);
        result = team_share(amx_product_part, &J, Mt / 2 * (Nt / 2), 1, M * N * Kb);
    }
    if (!amx_spare || amx_spare_tiles < size) {  /* keep the larger (another thread's call may have left one) */
        free(amx_spare);
        amx_spare = packed;
        amx_spare_tiles = size;
    } else
        free(packed);
out:
    release(b, 3);
    return result;
}

static PyMethodDef amx_methods[] = {
    METHOD(matmul_bf16, "matmul_bf16(out, a, b, ta, tb, beta): out = beta*out + bf16(a or a.T) @ bf16(b or b.T), float32 sums (AMX)"),
    {NULL, NULL, 0, NULL},
};

/* The CPU has AMX-TILE, AMX-BF16 and AVX512-BF16 (cpuid leaf 7), and Linux grants this process
 * the tile data state (XFEATURE_XTILEDATA = 18), which it asks for once. */
static int amx_available(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24)))
        return 0;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5)))
        return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18) == 0;
}
#endif
