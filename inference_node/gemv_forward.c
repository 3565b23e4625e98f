/* cblas_sgemm for one row or one column, sent to cblas_sgemv; for 2 to 8 rows, a kernel of ours.
 *
 * MLX's CPU backend calls cblas_sgemm for every matmul, decode's one-row products included.
 * OpenBLAS before 0.3.27 (Debian 12 ships 0.3.21) packs the whole weight matrix for such a
 * product: measured here, 5 GB/s where its sgemv streams the same matrix at 13 GB/s. Decode on
 * the CPU is that product, so SmolLM2 decoded at 8 tokens/s instead of 16. Preloaded ahead of
 * OpenBLAS (inference_node/blas.py), this library sends the M == 1 and N == 1 row-major calls
 * to sgemv: OpenBLAS's own forwarding, GEMM_GEMV_FORWARD, does the same from 0.3.27 on.
 *
 * A batch of 2 to 8 streams decodes with the same product for 2 to 8 rows, x W^T, and OpenBLAS
 * packs W for those too. On x86-64 with AVX2 and FMA, small_rows() streams W once instead, 3 of
 * its rows at a time against up to 4 rows of x, in registers: on Qwen-Coder 0.5B's shapes,
 * measured 2 to 3x OpenBLAS's sgemm for 2 to 4 rows and 1.2 to 1.6x for 8. Everything else
 * goes, unchanged, to the next cblas_sgemm.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SMALL_ROWS 1
#endif

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);

static sgemm_fn next_sgemm;
static sgemv_fn next_sgemv;

/* Calls sent to sgemv, and to small_rows, so far; tests read them to see the forwarding. */
unsigned long studio_gemv_forwarded;
unsigned long studio_small_rows;

static int small_rows_ok; /* this CPU has AVX2 and FMA, and STUDIO_CODER_SMALL_ROWS is not 0 */
enum { SMALL_ROWS_MAX = 8 };

__attribute__((constructor)) static void find_next(void) {
    next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    next_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
#ifdef SMALL_ROWS
    __builtin_cpu_init();
    const char *off = getenv("STUDIO_CODER_SMALL_ROWS");
    small_rows_ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    !(off != NULL && strcmp(off, "0") == 0);
#endif
}

#ifdef SMALL_ROWS
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* sums[i][j] = row i of a . row j of b, for mb <= 4 rows of a and nb <= 3 of b: 12
 * accumulators, 3 rows of b and one of a fill the 16 registers. Inlined with constant mb and
 * nb, the accumulators stay in registers. */
AVX2 __attribute__((always_inline)) static inline void tile(int mb, int nb, int k,
                                                            const float *a, int lda,
                                                            const float *b, int ldb,
                                                            float sums[4][3]) {
    __m256 acc[4][3];
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++) acc[i][j] = _mm256_setzero_ps();
    int q = 0;
    for (; q + 8 <= k; q += 8) {
        __m256 w0 = _mm256_loadu_ps(b + q);
        __m256 w1 = nb > 1 ? _mm256_loadu_ps(b + ldb + q) : w0;
        __m256 w2 = nb > 2 ? _mm256_loadu_ps(b + 2 * (size_t)ldb + q) : w0;
#pragma GCC unroll 4
        for (int i = 0; i < mb; i++) {
            __m256 x = _mm256_loadu_ps(a + (size_t)i * lda + q);
            acc[i][0] = _mm256_fmadd_ps(x, w0, acc[i][0]);
            if (nb > 1) acc[i][1] = _mm256_fmadd_ps(x, w1, acc[i][1]);
            if (nb > 2) acc[i][2] = _mm256_fmadd_ps(x, w2, acc[i][2]);
        }
    }
    for (int i = 0; i < mb; i++)
        for (int j = 0; j < nb; j++) {
            float s = hsum(acc[i][j]);
            for (int r = q; r < k; r++) s += a[(size_t)i * lda + r] * b[(size_t)j * ldb + r];
            sums[i][j] = s;
        }
}

#define TILE(MB, NB)                                                                      \
    case MB * 4 + NB:                                                                     \
        tile(MB, NB, k, a + (size_t)i * lda, lda, b + (size_t)j * ldb, ldb, sums);        \
        break;

/* C (m x n) = alpha * A B^T + beta * C; A is m x k, B is n x k, all row-major. */
AVX2 static void small_rows(int m, int n, int k, float alpha, const float *a, int lda,
                            const float *b, int ldb, float beta, float *c, int ldc) {
    float sums[4][3];
    for (int j = 0; j < n; j += 3) {
        int nb = n - j < 3 ? n - j : 3;
        for (int i = 0; i < m; i += 4) {
            int mb = m - i < 4 ? m - i : 4;
            switch (mb * 4 + nb) {
                TILE(1, 1) TILE(1, 2) TILE(1, 3) TILE(2, 1) TILE(2, 2) TILE(2, 3)
                TILE(3, 1) TILE(3, 2) TILE(3, 3) TILE(4, 1) TILE(4, 2) TILE(4, 3)
            }
            for (int ii = 0; ii < mb; ii++)
                for (int jj = 0; jj < nb; jj++) {
                    float *o = c + (size_t)(i + ii) * ldc + j + jj;
                    *o = alpha * sums[ii][jj] + (beta == 0.0f ? 0.0f : beta * *o);
                }
        }
    }
}
#endif

/* C = alpha * op(A) op(B) + beta * C, row-major; op(A) is m x k, op(B) is k x n. */
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
#ifdef SMALL_ROWS
    /* x W^T for a batch's rows: what a batch decodes with (MLX's Linear is x @ W.T) */
    if (small_rows_ok && order == ROW_MAJOR && trans_a == NO_TRANS && trans_b == TRANS &&
        m >= 2 && m <= SMALL_ROWS_MAX && n >= 2 && k >= 1) {
        __atomic_fetch_add(&studio_small_rows, 1, __ATOMIC_RELAXED);
        small_rows(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#endif
    if (order != ROW_MAJOR || next_sgemv == NULL || k <= 0 || (m != 1 && n != 1)) {
        next_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    __atomic_fetch_add(&studio_gemv_forwarded, 1, __ATOMIC_RELAXED);
    if (m == 1) {
        /* c (1 x n) = op(B)^T x, where x is op(A)'s one row */
        if (beta == 0.0f) /* C may hold anything, NaN included: BLAS never reads it then */
            memset(c, 0, (size_t)n * sizeof(float));
        int incx = trans_a == NO_TRANS ? 1 : lda;
        if (trans_b == NO_TRANS) /* B is k x n */
            next_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, incx, beta, c, 1);
        else /* B is n x k */
            next_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, incx, beta, c, 1);
    } else {
        /* c (m x 1, stride ldc) = op(A) x, where x is op(B)'s one column */
        if (beta == 0.0f)
            for (int i = 0; i < m; i++) c[(size_t)i * ldc] = 0.0f;
        int incx = trans_b == NO_TRANS ? ldb : 1;
        if (trans_a == NO_TRANS) /* A is m x k */
            next_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, incx, beta, c, ldc);
        else /* A is k x m */
            next_sgemv(ROW_MAJOR, TRANS, k, m, alpha, a, lda, b, incx, beta, c, ldc);
    }
}
