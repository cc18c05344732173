/* Fused CPU epilogue of the attention-statistics engine (see fused_cpu.py for the driver and the formulas).
 *
 * One call reduces one logits tile S = scale * q k^T of shape [batch*head][T][W] (rows = query positions
 * q0..q0+T-1 at absolute positions a0.., columns = keys j0..j0+W-1), produced by torch.matmul, in a single
 * sweep per row while the row is in cache: masking (causal, window, key padding), softcap, max/argmax,
 * A = exp(s - lse), and every requested row and column reduction.  Rows are split over OpenMP threads; column
 * sums go to per-thread scratch and are reduced at the end, so no two threads write the same address.
 *
 * Compiled on first use by fused_cpu.py with `cc -O3 -march=native -ffast-math -fopenmp` (fast math only at the
 * compile step, so crtfastmath is not linked and the process's denormal mode is left alone).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define NEGV (-1.0e30f)
#define F_ENT 1
#define F_COL 2
#define F_CENT 4
#define F_MAX 8
#define F_FIRST 16
#define F_KEYSET 32
#define F_RECENT 64
#define F_SELF 128
#define F_PREV 256
#define F_DIST 512
#define F_DUP 1024
#define F_IND 2048
#define F_LSE_INLINE 4096 /* the tile holds every allowed key of its rows: compute lse here */
#define F_LSE_PASS 8192   /* only merge the tile into the running (m, l) of the online lse */
#define F_WRITE_P 16384   /* leave A in S (0 outside the allowed keys) for the caller's A @ V */

typedef struct {
    int64_t BH, H, T, W, Q, N, q0, a0, j0;
    int64_t window, sink_k, recent_w, dist_cap; /* window <= 0: none; dist_cap < 0: none */
    int64_t flags, nthreads;
    double softcap; /* <= 0: none */
    float *S;       /* [BH][T][W], overwritten */
    float *lse;     /* [BH][Q]: read, or written with F_LSE_INLINE; running max m with F_LSE_PASS */
    float *rl;      /* [BH][Q]: running sum l with F_LSE_PASS */
    const uint8_t *kpm, *keyset; /* [B][N] or NULL */
    const int64_t *tok;          /* [B][N] or NULL */
    float *mx;
    int64_t *amax;
    float *ent, *first, *kset, *recent, *self_, *prev, *dist, *dup, *ind; /* [BH][Q] */
    float *col, *calog;  /* [BH][N] */
    float *colbuf;       /* [nthreads][2][BH][W] scratch */
    float *pbuf;         /* [nthreads][W] scratch */
} Args;

static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

static float sum_range(const float *p, int64_t n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; j++) s += p[j];
    return s;
}

static void do_row(const Args *a, int64_t r, int tid) {
    const int64_t W = a->W, N = a->N, flags = a->flags;
    const int64_t bh = r / a->T, t = r % a->T, b = bh / a->H;
    const int64_t i = a->q0 + t, ai = a->a0 + t, ri = bh * a->Q + i;
    const int64_t lo = a->window > 0 ? imax(0, ai - a->window + 1) : 0;
    int64_t jlo = imax(lo, a->j0), jhi = imin(ai + 1, a->j0 + W);
    if (a->kpm && !a->kpm[b * N + ai]) jhi = jlo; /* padding row: contributes nothing */
    float *row = a->S + r * W;
    if ((flags & F_WRITE_P) && !(flags & F_LSE_PASS)) { /* keys outside [jlo, jhi) get A = 0 */
        const int64_t c0 = imin(W, imax(0, jlo - a->j0)), c1 = imax(c0, imin(W, jhi - a->j0));
        memset(row, 0, sizeof(float) * (size_t)c0);
        memset(row + c1, 0, sizeof(float) * (size_t)(W - c1));
    }
    if (jlo >= jhi) return;
    const int64_t n = jhi - jlo;
    float *x = row + (jlo - a->j0);
    if (a->softcap > 0) {
        const float c = (float)a->softcap;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) x[j] = c * tanhf(x[j]);
    }
    if (a->kpm) {
        const uint8_t *m = a->kpm + b * N + jlo;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) x[j] = m[j] ? x[j] : NEGV;
    }
    float m = NEGV;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; j++) m = fmaxf(m, x[j]);
    const int has_key = m > -1.0e29f;
    if (flags & F_LSE_PASS) {
        if (!has_key) return;
        float l = 0.f;
#pragma omp simd reduction(+ : l)
        for (int64_t j = 0; j < n; j++) l += expf(x[j] - m);
        const float rm = a->lse[ri];
        if (m > rm) {
            a->rl[ri] = a->rl[ri] * expf(rm - m) + l;
            a->lse[ri] = m;
        } else {
            a->rl[ri] += l * expf(m - rm);
        }
        return;
    }
    if ((flags & F_MAX) && has_key && m > a->mx[ri]) { /* strict: the earliest index wins ties */
        int64_t j = 0;
        while (x[j] != m) j++;
        a->mx[ri] = m;
        a->amax[ri] = jlo + j;
    }
    float *e = a->pbuf + (int64_t)tid * W;  /* exp(s - m) scratch (inline lse) */
    float *p = (flags & F_WRITE_P) ? x : e; /* where A goes; the sweep reads x[j] before writing p[j] */
    float L, scale = 1.f, shift;
    if (flags & F_LSE_INLINE) { /* p = exp(s - m) / l with l = sum_j exp(s - m): one exp per logit */
        float l = 0.f;
#pragma omp simd reduction(+ : l)
        for (int64_t j = 0; j < n; j++) {
            e[j] = expf(x[j] - m);
            l += e[j];
        }
        scale = 1.f / l;
        L = m + logf(l);
        a->lse[ri] = L;
        shift = m; /* p[j] holds exp(s - m) */
    } else {
        L = a->lse[ri];
        shift = L;
    }
    /* one sweep: A = (exp(s - shift)) * scale, entropy sum_j A (lse - s), column sums */
    const int ent = (flags & F_ENT) != 0, colf = (flags & (F_COL | F_CENT)) != 0, cent = (flags & F_CENT) != 0;
    const int inl = (flags & F_LSE_INLINE) != 0;
    float *cb = a->colbuf + ((int64_t)tid * 2 * a->BH + bh) * W + (jlo - a->j0);
    float *cl = cb + a->BH * W;
    float es = 0.f;
/* the body once per (inline?, statistics) combination so every loop vectorises without branches */
#define SWEEP(PJ, BODY)                                                \
    _Pragma("omp simd reduction(+ : es)")                              \
    for (int64_t j = 0; j < n; j++) {                                  \
        const float xj = x[j];                                         \
        const float pj = (PJ);                                         \
        BODY                                                           \
        p[j] = pj;                                                     \
    }
#define SWEEPS(PJ)                                                                              \
    if (cent) { SWEEP(PJ, es += pj * (L - xj); cb[j] += pj; cl[j] += pj * (xj - L);) }          \
    else if (colf && ent) { SWEEP(PJ, es += pj * (L - xj); cb[j] += pj;) }                      \
    else if (colf) { SWEEP(PJ, cb[j] += pj;) }                                                  \
    else if (ent) { SWEEP(PJ, es += pj * (L - xj);) }                                           \
    else { SWEEP(PJ, ;) }
    if (inl) {
        SWEEPS(e[j] * scale)
    } else {
        SWEEPS(expf(xj - shift))
    }
#undef SWEEPS
#undef SWEEP
    if (ent) a->ent[ri] += es;
    if (flags & F_FIRST) {
        const int64_t e = imin(jhi, a->sink_k);
        if (e > jlo) a->first[ri] += sum_range(p, e - jlo);
    }
    if (flags & F_KEYSET) {
        const uint8_t *ks = a->keyset + b * N + jlo;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < n; j++) s += ks[j] ? p[j] : 0.f;
        a->kset[ri] += s;
    }
    if (flags & F_RECENT) {
        const int64_t s0 = imax(jlo, ai - a->recent_w + 1);
        if (jhi > s0) a->recent[ri] += sum_range(p + (s0 - jlo), jhi - s0);
    }
    if ((flags & F_SELF) && ai >= jlo && ai < jhi) a->self_[ri] += p[ai - jlo];
    if ((flags & F_PREV) && ai - 1 >= jlo && ai - 1 < jhi) a->prev[ri] += p[ai - 1 - jlo];
    if (flags & F_DIST) { /* sum_j A * min(abs_i - j, cap) */
        const int64_t cap = a->dist_cap;
        const int64_t e = cap >= 0 ? imin(jhi, imax(jlo, ai - cap + 1)) : jlo; /* keys [jlo, e) weigh cap */
        float s1 = e > jlo ? sum_range(p, e - jlo) : 0.f, s2 = 0.f;
        const float *pe = p + (e - jlo);
        const int64_t ne = jhi - e, d0 = ai - e;
#pragma omp simd reduction(+ : s2)
        for (int64_t j = 0; j < ne; j++) s2 += pe[j] * (float)(d0 - j);
        a->dist[ri] += (cap >= 0 ? (float)cap * s1 : 0.f) + s2;
    }
    if (flags & (F_DUP | F_IND)) {
        const int64_t *tk = a->tok + b * N;
        const int64_t ti = tk[ai];
        if (flags & F_DUP) { /* keys j < abs_i with the query's token */
            const int64_t e = imin(jhi, ai);
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int64_t j = jlo; j < e; j++) s += tk[j] == ti ? p[j - jlo] : 0.f;
            a->dup[ri] += s;
        }
        if (flags & F_IND) { /* keys j >= 1 whose previous token is the query's token */
            const int64_t s0 = imax(jlo, 1);
            float s = 0.f;
#pragma omp simd reduction(+ : s)
            for (int64_t j = s0; j < jhi; j++) s += tk[j - 1] == ti ? p[j - jlo] : 0.f;
            a->ind[ri] += s;
        }
    }
}

int interp_tile_stats(const Args *a) {
    const int64_t R = a->BH * a->T, W = a->W, BH = a->BH;
    const int nt = (int)a->nthreads;
    const int need_col = (a->flags & (F_COL | F_CENT)) && !(a->flags & F_LSE_PASS);
    if (need_col) { /* per-thread column scratch: slot 0 = sum A, slot 1 = sum A log A (only if asked) */
        const int nslot = (a->flags & F_CENT) ? 2 : 1;
        for (int th = 0; th < nt; th++)
            memset(a->colbuf + (int64_t)th * 2 * BH * W, 0, sizeof(float) * (size_t)(nslot * BH * W));
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < R; r++) do_row(a, r, omp_get_thread_num());
    if (need_col) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < BH * W; c++) {
            const int64_t bh = c / W, j = c % W;
            if (a->j0 + j >= a->N) continue;
            float s = 0.f, sl = 0.f;
            for (int th = 0; th < nt; th++) {
                s += a->colbuf[((int64_t)th * 2 * BH) * W + c];
                if (a->flags & F_CENT) sl += a->colbuf[((int64_t)th * 2 * BH + BH) * W + c];
            }
            a->col[bh * a->N + a->j0 + j] += s;
            if (a->flags & F_CENT) a->calog[bh * a->N + a->j0 + j] += sl;
        }
    }
    return 0;
}

int interp_abi_version(void) { return 1; }
