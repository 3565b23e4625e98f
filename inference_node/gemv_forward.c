/* cblas_sgemm for one row or one column, sent to cblas_sgemv.
 *
 * MLX's CPU backend calls cblas_sgemm for every matmul, decode's one-row products included.
 * OpenBLAS before 0.3.27 (Debian 12 ships 0.3.21) packs the whole weight matrix for such a
 * product: measured here, 5 GB/s where its sgemv streams the same matrix at 13 GB/s. Decode on
 * the CPU is that product, so SmolLM2 decoded at 8 tokens/s instead of 16. Preloaded ahead of
 * OpenBLAS (inference_node/blas.py), this library takes the M == 1 and N == 1 row-major calls
 * and hands everything else, unchanged, to the next cblas_sgemm: OpenBLAS's own forwarding,
 * GEMM_GEMV_FORWARD, does the same from 0.3.27 on.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <string.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int,
                         const float *, int, float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);

static sgemm_fn next_sgemm;
static sgemv_fn next_sgemv;

/* Calls sent to sgemv so far; tests read it to see the forwarding happen. */
unsigned long studio_gemv_forwarded;

__attribute__((constructor)) static void find_next(void) {
    next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    next_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
}

/* C = alpha * op(A) op(B) + beta * C, row-major; op(A) is m x k, op(B) is k x n. */
void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c,
                 int ldc) {
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
