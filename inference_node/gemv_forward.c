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
 * its rows at a time against up to 4 rows of x, in registers, fetching W a kilobyte ahead,
 * split across as many threads as OpenBLAS runs: Qwen-Coder 0.5B's batched decode measured 1.7x
 * (2 streams) to 2.4x (4) the packing sgemm with 2 threads. The helper threads poll for the
 * next product for a while before they sleep, as OpenBLAS's own do: a decode step makes
 * hundreds of products tens of microseconds apart, and a wake-up through the kernel costs about
 * as much as one of them. Everything else goes, unchanged, to the next cblas_sgemm.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

#ifdef SMALL_ROWS
static int small_rows_ok; /* this CPU has AVX2 and FMA, and STUDIO_CODER_SMALL_ROWS is not 0 */
enum { SMALL_ROWS_MAX = 8 };
#endif

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
enum { AHEAD = 256 }; /* floats of each row of W fetched ahead of the product: 1 KiB */

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
        if ((q & 15) == 0) { /* one 64-byte line a row every other step */
            _mm_prefetch((const char *)(b + q + AHEAD), _MM_HINT_T0);
            if (nb > 1) _mm_prefetch((const char *)(b + ldb + q + AHEAD), _MM_HINT_T0);
            if (nb > 2) _mm_prefetch((const char *)(b + 2 * (size_t)ldb + q + AHEAD), _MM_HINT_T0);
        }
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

/* A big product is split by rows of B across as many threads as OpenBLAS uses
 * (OPENBLAS_NUM_THREADS): this one and helpers ("studio-rows"). Between products a helper
 * polls for the next one for up to POLL_NS, then sleeps on a condition variable; this thread
 * polls the same way for them to finish. */
enum { MAX_HELPERS = 15, MIN_SPLIT = 1 << 16 /* n * k, below which one thread does it */ };
enum { POLL_NS = 200000 };

static struct {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    unsigned long generation; /* atomic: bumped for each product shared */
    int pending;              /* atomic: helpers not done with it yet */
    int sleepers;             /* helpers waiting on `go`, under mu */
    int helpers, busy;
    int m, n, k, lda, ldb, ldc, parts;
    float alpha, beta;
    const float *a, *b;
    float *c;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .go = PTHREAD_COND_INITIALIZER,
            .done = PTHREAD_COND_INITIALIZER};

static void part(int p) { /* rows [j0, j1) of B, in whole tiles of 3 */
    if (p >= pool.parts) return;
    int per = ((pool.n + 2) / 3 + pool.parts - 1) / pool.parts * 3;
    int j0 = p * per, j1 = j0 + per < pool.n ? j0 + per : pool.n;
    if (j0 < j1)
        small_rows(pool.m, j1 - j0, pool.k, pool.alpha, pool.a, pool.lda,
                   pool.b + (size_t)j0 * pool.ldb, pool.ldb, pool.beta, pool.c + j0, pool.ldc);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Polls for up to POLL_NS until a product past `seen` is shared or, with `done`, until no
 * helper is pending; false when it gave up. It never yields its core: on a 2-core machine
 * kept busy by two other processes, sched_yield() handed each wait to them for a whole time
 * slice, and a pass over SmolLM2's products took 350-800 ms instead of 50-100. */
static int poll_pool(unsigned long seen, int done) {
    long long start = 0;
    for (int i = 1;; i++) {
        if (done ? __atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) == 0
                 : __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) != seen)
            return 1;
        if (i % 32 == 0) {
            long long t = now_ns();
            if (start == 0)
                start = t;
            else if (t - start > POLL_NS)
                return 0;
        }
        _mm_pause();
    }
}

/* The generation a helper was started at: the products before it are not its to share. (It
 * polls without the lock, so one started after a fork, or when OpenBLAS's threads grow, would
 * otherwise take the last product, long done, for a new one.) */
static unsigned long born_at[MAX_HELPERS + 1];

static void *helper(void *arg) {
    int me = (int)(size_t)arg;
    unsigned long seen = born_at[me];
    for (;;) {
        if (!poll_pool(seen, 0)) {
            pthread_mutex_lock(&pool.mu);
            pool.sleepers++;
            while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&pool.go, &pool.mu);
            pool.sleepers--;
            pthread_mutex_unlock(&pool.mu);
        }
        seen = __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE);
        part(me);
        if (__atomic_sub_fetch(&pool.pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool.mu); /* this thread may be asleep on `done` */
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.mu);
        }
    }
    return NULL;
}

static void after_fork_in_child(void) { /* the helpers did not come along */
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.go, NULL);
    pthread_cond_init(&pool.done, NULL);
    pool.helpers = 0;
    pool.busy = 0;
    pool.sleepers = 0;
}

static int threads(void) {
    typedef int (*count_fn)(void);
    static count_fn count;
    if (count == NULL) count = (count_fn)dlsym(RTLD_NEXT, "openblas_get_num_threads");
    int t = count ? count() : 1;
    return t < 1 ? 1 : t > MAX_HELPERS + 1 ? MAX_HELPERS + 1 : t;
}

/* small_rows() on this thread and the helpers; alone when the product is small, when another
 * thread holds the pool, or when no helper can be started. */
static void small_rows_split(int m, int n, int k, float alpha, const float *a, int lda,
                             const float *b, int ldb, float beta, float *c, int ldc) {
    int want = (long)n * k < MIN_SPLIT ? 1 : threads();
    pthread_mutex_lock(&pool.mu);
    if (want < 2 || pool.busy) {
        pthread_mutex_unlock(&pool.mu);
        small_rows(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    pool.busy = 1;
    static int forks_handled;
    if (!forks_handled) forks_handled = !pthread_atfork(NULL, NULL, after_fork_in_child);
    while (pool.helpers < want - 1) {
        pthread_t t;
        born_at[pool.helpers + 1] = pool.generation; /* before this product's */
        if (pthread_create(&t, NULL, helper, (void *)(size_t)(pool.helpers + 1)) != 0) break;
        pthread_setname_np(t, "studio-rows");
        pthread_detach(t);
        pool.helpers++;
    }
    pool.parts = want < pool.helpers + 1 ? want : pool.helpers + 1;
    pool.m = m, pool.n = n, pool.k = k, pool.lda = lda, pool.ldb = ldb, pool.ldc = ldc;
    pool.alpha = alpha, pool.beta = beta, pool.a = a, pool.b = b, pool.c = c;
    __atomic_store_n(&pool.pending, pool.helpers, __ATOMIC_RELAXED);
    __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE); /* after the product's fields */
    if (pool.sleepers) pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.mu);
    part(0);
    poll_pool(0, 1);
    pthread_mutex_lock(&pool.mu);
    while (__atomic_load_n(&pool.pending, __ATOMIC_ACQUIRE) > 0)
        pthread_cond_wait(&pool.done, &pool.mu);
    pool.busy = 0;
    pthread_mutex_unlock(&pool.mu);
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
        small_rows_split(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
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
