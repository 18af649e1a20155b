/* ThriftGate's own onnxruntime ops (custom op domain "thriftgate"), for the local model's int4-exact variant.
 *
 * Matrix products with the weights in the GGUF's own blocks and float32 activations:
 *   Q4_1MatMul / Q8_0MatMul        Y[..., N] = X[..., K] @ W^T
 *   Q4_1MatMulSwiGLU / Q8_0...     Y[..., N] = silu(X @ W[:N]^T) * (X @ W[N:]^T)  (W holds gate, then up rows)
 * W [N, K] is one uint8 input [N, row bytes] (local_engine.kernels.pack_q4_1 / pack_q8_0), as many bytes
 * as the GGUF holds, blocks of 32 along K:
 *   Q4_1: w = d * q + m, q in 0..15. A row is its blocks' codes (16 bytes each: byte j holds element j in
 *         its low nibble and element j + 16 in its high nibble, as ggml packs them), then the blocks'
 *         float16 d, then their float16 m: 20 bytes per 32 weights.
 *   Q8_0: w = d * q, q int8. A row is its blocks' codes (32 bytes each), then their float16 d: 34 bytes.
 * Every weight is exactly the float32 value the reference graph holds (d * q is exact in float32 and
 * d * q + m is rounded once, as the reference's (q - 8) * d + (m + 8 * d) is), so the results differ from a
 * float32 MatMul only by the order of the sums. That is the point: onnxruntime's fast 4- and 8-bit kernels
 * quantize the activations to int8 (accuracy level 4), which is what made the quantized variants answer
 * worse than float32, and its float-activation paths are slow.
 * Up to 31 rows of X (decoding, batches, speculative verification) go through register tiles straight from
 * the blocks (4 rows of W by up to 4 rows of X, 2 by 5 to 8), each block dequantized once per tile (Q4_1
 * with AVX-512: a 16-entry table d * j + m per block, looked up by nibble), in an order of sums that gives
 * one row of X bit for bit what it gives among several; 32 rows and more (prefill) through a GEMM on VW
 * rows of W dequantized once.
 *
 * Q8_0Gather: rows of a Q8_0 table by index (the tied embedding: the lookup and the head share one table).
 * KVAttention: rotary embedding, the in-place float16 KV cache write and causal attention, in place of
 * onnxruntime's GroupQueryAttention (see its section below).
 *
 * Plain C with GCC vector extensions and a few intrinsics, compiled on the machine that runs it (-O3
 * -march=native; local_engine.kernels): 16-wide vectors where AVX-512 is there, 8-wide with AVX2, portable
 * (slow) code otherwise. Work is split into tasks run on onnxruntime's intra-op thread pool
 * (KernelContext_ParallelFor). The onnxruntime C API is declared in ort_abi.h (our own minimal declarations
 * of the few entries used, by their position in the OrtApi table).
 */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include "ort_abi.h"

#define TG_EXPORT __attribute__((visibility("default")))

#if defined(__AVX512F__)
#define VW 16
#elif defined(__AVX__)
#define VW 8
#else
#define VW 4
#endif
#define QK 32         /* weights per block */
#define NV (QK / VW)  /* vectors per block */
#define Q4_CODES 16 /* bytes of codes per block */
#define Q8_CODES 32
#define K_MAX 16384 /* longest row: per-row scale buffers live on the stack (K_MAX / 32 floats each) */

typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int32_t vi __attribute__((vector_size(VW * 4), aligned(4)));

static inline vf load(const float* p) { return *(const vf*)p; }

/* The sum of a vector's lanes, in a fixed tree order (the same on every path). */
static inline float hsum(vf v) {
#if VW == 16
    return _mm512_reduce_add_ps((__m512)v);
#else
    float t[VW];
    memcpy(t, &v, sizeof t);
    for (int w = VW / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) t[i] += t[i + w];
    return t[0];
#endif
}


#if defined(__F16C__)
static inline vf load_half(const uint16_t* p) {
#if VW == 16
    return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#else
    return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#endif
}
static inline float half1(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t to_half(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float half1(uint16_t h) {
    _Float16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}
static inline uint16_t to_half(float f) {
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
static inline vf load_half(const uint16_t* p) {
    vf v;
    for (int i = 0; i < VW; i++) v[i] = half1(p[i]);
    return v;
}
#endif

/* n float16 values to float32 */
static inline void halves(const uint8_t* p, float* out, size_t n) {
    size_t i = 0;
    for (; i + VW <= n; i += VW) {
        uint16_t h[VW];
        memcpy(h, p + 2 * i, sizeof h);
        const vf v = load_half(h);
        memcpy(out + i, &v, sizeof v);
    }
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        out[i] = half1(h);
    }
}

/* A block's codes as NV float vectors (Q4_1: the low nibbles, elements 0..15, then the high ones). */
#if defined(__AVX512F__)
static inline void codes4(const uint8_t* blk, vf c[NV]) {
    /* a permute reads only the low 4 bits of each index: the low nibble needs no mask */
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)blk));
    c[0] = (vf)_mm512_permutexvar_ps(q, table);
    c[1] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
}
static inline void codes8(const uint8_t* blk, vf c[NV]) {
    c[0] = (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)blk)));
    c[1] = (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(blk + 16))));
}
#elif defined(__AVX2__)
static inline void codes4(const uint8_t* blk, vf c[NV]) {
    const __m256i mask = _mm256_set1_epi32(15);
    for (int h = 0; h < 2; h++) {
        const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 8 * h)));
        c[h] = (vf)_mm256_cvtepi32_ps(_mm256_and_si256(q, mask));
        c[h + 2] = (vf)_mm256_cvtepi32_ps(_mm256_srli_epi32(q, 4));
    }
}
static inline void codes8(const uint8_t* blk, vf c[NV]) {
    for (int v = 0; v < NV; v++)
        c[v] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(blk + 8 * v))));
}
#else /* portable (slow) */
static inline void codes4(const uint8_t* blk, vf c[NV]) {
    for (int i = 0; i < 16; i++) {
        c[i / VW][i % VW] = (float)(blk[i] & 15);
        c[(i + 16) / VW][(i + 16) % VW] = (float)(blk[i] >> 4);
    }
}
static inline void codes8(const uint8_t* blk, vf c[NV]) {
    for (int i = 0; i < 32; i++) c[i / VW][i % VW] = (float)(int8_t)blk[i];
}
#endif

/* Arithmetic, the same for every tile shape so that one row of X gives bit for bit what it gives among
 * several (speculative decoding verifies k tokens in one call and must agree with one-token steps): each
 * block's weights are dequantized exactly (w = d * c + m: one rounding, which the float32 reference's
 * (c - 8) * d + (m + 8 * d) also makes), then multiplied into one accumulator per (row of W, row of X),
 * vector by vector in block order; the result is the accumulator's lanes summed in a fixed tree. */
static inline void dequant(int bits, const uint8_t* codes, float d, float m, vf w[NV]) {
#if VW == 16
    if (bits == 4) { /* the block's 16 values d * j + m, then looked up by nibble (a permute reads 4 bits) */
        const __m512 table = _mm512_fmadd_ps(
            _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_ps(d), _mm512_set1_ps(m));
        const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)codes));
        w[0] = (vf)_mm512_permutexvar_ps(q, table);
        w[1] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
        return;
    }
#endif
    if (bits == 4) {
        codes4(codes, w);
        for (int v = 0; v < NV; v++) w[v] = w[v] * d + m;
    } else {
        codes8(codes, w);
        for (int v = 0; v < NV; v++) w[v] = w[v] * d;
    }
}

typedef struct {
    int bits;
    const float* x;   /* [M, K] */
    const uint8_t* w; /* [N, K / 32 * block bytes] ([2N, ...] with swiglu) */
    float* y;         /* [M, N] */
    size_t m, n, k, rows_per_task;
    int swiglu; /* y = silu(x W[:N]^T) * (x W[N:]^T) */
} Job;
#define SWIGLU_ROWS 256 /* a task's output rows are at most half of it */

/* A row: its blocks' codes, then their float16 d (then, Q4_1, their float16 m). */
static inline size_t row_bytes(int bits, size_t k) { return k / QK * (bits == 4 ? Q4_CODES + 4 : Q8_CODES + 2); }

/* A row's nb scales d, and for Q4_1 its mins m, widened to float32 (m is left alone for Q8_0). */
static inline void row_scales(int bits, const uint8_t* row, size_t nb, float* d, float* m) {
    const size_t cb = bits == 4 ? Q4_CODES : Q8_CODES;
    halves(row + nb * cb, d, nb);
    if (bits == 4) halves(row + nb * (cb + 2), m, nb);
}

/* R rows of W (from their first block) against MR rows of X (row stride k), into y (row stride n): each
 * block of the R rows is dequantized once for the MR rows of X. */
#define TILE(NAME, BITS, R, MR)                                                                           \
    static void NAME(const uint8_t* w, size_t stride, size_t nb, const float* x, size_t k, float* y,      \
                     size_t n) {                                                                          \
        const size_t cb = BITS == 4 ? Q4_CODES : Q8_CODES;                                                \
        float dd[R][K_MAX / QK], mn[R][BITS == 4 ? K_MAX / QK : 1];                                       \
        vf acc[R][MR];                                                                                    \
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) {                                             \
            row_scales(BITS, w + i * stride, nb, dd[i], mn[i]);                                           \
            _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++) acc[i][m] = (vf){0};                     \
        }                                                                                                 \
        for (size_t b = 0; b < nb; b++) {                                                                 \
            _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) {                                         \
                vf wv[NV];                                                                                \
                dequant(BITS, w + i * stride + b * cb, dd[i][b], BITS == 4 ? mn[i][b] : 0.0f, wv);        \
                _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++)                                      \
                    _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                                  \
                        acc[i][m] += wv[v] * load(x + m * k + b * QK + v * VW);                           \
            }                                                                                             \
        }                                                                                                 \
        _Pragma("GCC unroll 4") for (int i = 0; i < R; i++) _Pragma("GCC unroll 8") for (int m = 0; m < MR; m++) \
            y[m * n + i] = hsum(acc[i][m]);                                                               \
    }
#if VW == 16
#define MR_MAX 8 /* rows of X per tile: up to 4 with 4 rows of W, 5 to 8 with 2 */
#else
#define MR_MAX 2
#endif
#define TILES(BITS)                                                                                        \
    TILE(t##BITS##_4_1, BITS, 4, 1)                                                                        \
    TILE(t##BITS##_4_2, BITS, 4, 2)                                                                        \
    TILE(t##BITS##_4_3, BITS, 4, 3)                                                                        \
    TILE(t##BITS##_4_4, BITS, 4, 4)                                                                        \
    TILE(t##BITS##_2_5, BITS, 2, 5)                                                                        \
    TILE(t##BITS##_2_6, BITS, 2, 6)                                                                        \
    TILE(t##BITS##_2_7, BITS, 2, 7)                                                                        \
    TILE(t##BITS##_2_8, BITS, 2, 8)                                                                        \
    TILE(t##BITS##_1_1, BITS, 1, 1)                                                                        \
    TILE(t##BITS##_1_2, BITS, 1, 2)                                                                        \
    TILE(t##BITS##_1_3, BITS, 1, 3)                                                                        \
    TILE(t##BITS##_1_4, BITS, 1, 4)                                                                        \
    TILE(t##BITS##_1_5, BITS, 1, 5)                                                                        \
    TILE(t##BITS##_1_6, BITS, 1, 6)                                                                        \
    TILE(t##BITS##_1_7, BITS, 1, 7)                                                                        \
    TILE(t##BITS##_1_8, BITS, 1, 8)
TILES(4)
TILES(8)
typedef void (*TileFn)(const uint8_t*, size_t, size_t, const float*, size_t, float*, size_t);
/* [bits == 8][MR - 1]: the wide tile (4 rows of W up to 4 rows of X, else 2) and the one-row tail */
static const TileFn wide[2][8] = {
    {t4_4_1, t4_4_2, t4_4_3, t4_4_4, t4_2_5, t4_2_6, t4_2_7, t4_2_8},
    {t8_4_1, t8_4_2, t8_4_3, t8_4_4, t8_2_5, t8_2_6, t8_2_7, t8_2_8},
};
static const TileFn narrow[2][8] = {
    {t4_1_1, t4_1_2, t4_1_3, t4_1_4, t4_1_5, t4_1_6, t4_1_7, t4_1_8},
    {t8_1_1, t8_1_2, t8_1_3, t8_1_4, t8_1_5, t8_1_6, t8_1_7, t8_1_8},
};

/* exp(x): 2^n * p(r), |r| <= ln2 / 2, Taylor to r^7 (relative error about 1e-8 before float32 rounding);
 * x is clamped to [-87, 88] (below, about 1.6e-38; above, about 1.65e38). */
static inline vf vexp(vf x) {
    const vf lo = (vf){0} - 87.0f, hi = (vf){0} + 88.0f;
    const vi below = x < lo, above = x > hi;
    x = (vf)(((vi)x & ~below) | ((vi)lo & below));
    x = (vf)(((vi)x & ~above) | ((vi)hi & above));
    const vf magic = (vf){0} + 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    const vf nm = x * 1.44269504f + magic;
    const vf n = nm - magic;
    const vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
    vf p = (vf){0} + (1.0f / 5040.0f);
    p = p * r + (1.0f / 720.0f);
    p = p * r + (1.0f / 120.0f);
    p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vi e = ((vi)nm - (vi)magic + 127) << 23; /* 2^n */
    return p * (vf)e;
}

static inline float vexp1(float x) { return vexp((vf){0} + x)[0]; }

/* s[i] = exp(s[i] - shift) for i < n (s padded to a multiple of VW) */
static inline void vexp_shift(float* s, size_t n, float shift) {
    for (size_t i = 0; i < n; i += VW) {
        const vf e = vexp(load(s + i) - shift);
        memcpy(s + i, &e, sizeof e);
    }
}

/* Rows [r0, r1) of W times every row of X, into y (row stride ystep). */
static void matmul_rows(const Job* j, size_t r0, size_t r1, float* y, size_t ystep);

/* Many rows of X (prefill): VW rows of W dequantized once into a K x VW buffer (transposed), then swept by
 * MG rows of X at a time, each accumulating VW outputs in one vector (a plain float32 GEMM on the exact
 * weights; its sums run in another order than the tiles', which serve few rows: decoding, batches and
 * speculative verification, where one row must give what it gives among several). */
#define GEMM_MIN_M 32
#if VW == 16
#define MG 8
#else
#define MG 4
#endif
static void gemm_rows(const Job* j, size_t r0, size_t r1, float* y, size_t ystep) {
    const size_t k = j->k, nb = k / QK, stride = row_bytes(j->bits, k), cb = j->bits == 4 ? Q4_CODES : Q8_CODES;
    float* buf = aligned_alloc(64, k * VW * sizeof(float));
    if (buf == NULL) { /* out of memory: the tiles need no buffer */
        Job small = *j;
        for (size_t m = 0; m < j->m; m += MR_MAX) {
            small.m = j->m - m < MR_MAX ? j->m - m : MR_MAX;
            small.x = j->x + m * k;
            matmul_rows(&small, r0, r1, y + m * ystep, ystep);
        }
        return;
    }
    for (size_t r = r0; r < r1; r += VW) {
        const size_t nr = r1 - r < VW ? r1 - r : VW;
        for (size_t i = 0; i < VW; i++) {
            if (i >= nr) {
                for (size_t kk = 0; kk < k; kk++) buf[kk * VW + i] = 0.0f;
                continue;
            }
            const uint8_t* row = j->w + (r + i) * stride;
            float d[K_MAX / QK], mn[K_MAX / QK];
            row_scales(j->bits, row, nb, d, mn);
            for (size_t b = 0; b < nb; b++) {
                vf w[NV];
                dequant(j->bits, row + b * cb, d[b], j->bits == 4 ? mn[b] : 0.0f, w);
                for (int v = 0; v < NV; v++)
                    for (int e = 0; e < VW; e++) buf[(b * QK + v * VW + e) * VW + i] = w[v][e];
            }
        }
        float* yr = y + (r - r0);
        size_t m = 0;
        for (; m + MG <= j->m; m += MG) {
            vf acc[MG];
            for (int mm = 0; mm < MG; mm++) acc[mm] = (vf){0};
            const float* x = j->x + m * k;
            for (size_t kk = 0; kk < k; kk++) {
                const vf wv = load(buf + kk * VW);
                _Pragma("GCC unroll 8") for (int mm = 0; mm < MG; mm++) acc[mm] += wv * x[mm * k + kk];
            }
            for (int mm = 0; mm < MG; mm++) memcpy(yr + (m + mm) * ystep, &acc[mm], nr * sizeof(float));
        }
        for (; m < j->m; m++) {
            vf acc = (vf){0};
            const float* x = j->x + m * k;
            for (size_t kk = 0; kk < k; kk++) acc += load(buf + kk * VW) * x[kk];
            memcpy(yr + m * ystep, &acc, nr * sizeof(float));
        }
    }
    free(buf);
}

static void matmul_rows(const Job* j, size_t r0, size_t r1, float* y, size_t ystep) {
    if (j->m >= GEMM_MIN_M) {
        gemm_rows(j, r0, r1, y, ystep);
        return;
    }
    const size_t k = j->k, nb = k / QK, stride = row_bytes(j->bits, k);
    const int b8 = j->bits == 8;
    for (size_t m = 0; m < j->m; m += MR_MAX) {
        const size_t mr = j->m - m < MR_MAX ? j->m - m : MR_MAX, rw = mr <= 4 ? 4 : 2;
        const float* x = j->x + m * k;
        float* ym = y + m * ystep;
        size_t r = r0;
        for (; r + rw <= r1; r += rw) wide[b8][mr - 1](j->w + r * stride, stride, nb, x, k, ym + r - r0, ystep);
        for (; r < r1; r++) narrow[b8][mr - 1](j->w + r * stride, stride, nb, x, k, ym + r - r0, ystep);
    }
}

/* silu(g) * u = g * u / (1 + exp(-g)), VW at a time (n a multiple of VW) */
static void swiglu(const float* g, const float* u, float* out, size_t n) {
    for (size_t i = 0; i < n; i += VW) {
        const vf gv = load(g + i);
        const vf o = gv * load(u + i) / (vexp(-gv) + 1.0f);
        memcpy(out + i, &o, sizeof o);
    }
}

static void run_task(void* data, size_t task) {
    const Job* j = (const Job*)data;
    const size_t r0 = task * j->rows_per_task;
    const size_t r1 = r0 + j->rows_per_task < j->n ? r0 + j->rows_per_task : j->n;
    if (!j->swiglu) {
        matmul_rows(j, r0, r1, j->y + r0, j->n);
        return;
    }
    /* gate rows r0..r1 and up rows n + r0 .. n + r1 (W holds [gate; up]), then silu(gate) * up: a few
     * rows of X at a time in stack buffers, or (prefill) all of them at once in heap buffers, so that the
     * GEMM dequantizes each tile of W once */
    const size_t rows = r1 - r0, width = (rows + VW - 1) / VW * VW;
    float small_gate[MR_MAX * SWIGLU_ROWS / 2] __attribute__((aligned(64)));
    float small_up[MR_MAX * SWIGLU_ROWS / 2] __attribute__((aligned(64)));
    size_t chunk = MR_MAX;
    float *gate = small_gate, *up = small_up, *heap = NULL;
    const size_t heap_bytes = (2 * j->m * width * sizeof(float) + 63) & ~(size_t)63; /* a multiple of 64 */
    if (j->m >= GEMM_MIN_M && (heap = aligned_alloc(64, heap_bytes)) != NULL) {
        chunk = j->m;
        gate = heap;
        up = heap + j->m * width;
    }
    Job one = *j;
    for (size_t m = 0; m < j->m; m += chunk) {
        one.m = j->m - m < chunk ? j->m - m : chunk;
        one.x = j->x + m * j->k;
        matmul_rows(&one, r0, r1, gate, width);
        matmul_rows(&one, j->n + r0, j->n + r1, up, width);
        for (size_t i = 0; i < one.m; i++) {
            float act[SWIGLU_ROWS] __attribute__((aligned(64)));
            swiglu(gate + i * width, up + i * width, act, width);
            memcpy(j->y + (m + i) * j->n + r0, act, rows * sizeof(float));
        }
    }
    free(heap);
}

static size_t tasks_for(Job* j) {
    /* about 64k weights per task (fewer tasks for tiny layers), rows a multiple of 4 */
    size_t rows = (65536 / (j->k ? j->k : 1) + 3) & ~(size_t)3;
    if (rows < 4) rows = 4;
    if (j->swiglu && rows > SWIGLU_ROWS / 2) rows = SWIGLU_ROWS / 2; /* two weights' rows per output row */
    j->rows_per_task = rows;
    return (j->n + rows - 1) / rows;
}

/* ---- attention over a float16 KV cache ------------------------------------------------------------------
 *
 * KVAttention replaces onnxruntime's GroupQueryAttention in the kernel variant (same inputs, same in-place
 * cache): qkv float32 [B, S, (H + 2 KVH) * D], past_key / past_value float16 [B, KVH, L, D], seqlens_k int32
 * [B] (each row's total length after this step, minus one), total_sequence_length int32, cos / sin float16
 * [max_position, D / 2]. Token s of row b sits at position seqlens_k[b] - S + 1 + s: its key and value get
 * rotary embedding (rotate-half) and are stored there in float16, and its query (rotated) attends to
 * positions 0 .. its own with scale 1 / sqrt(D). Outputs attn float32 [B, S, H * D] and present_key /
 * present_value: when they are bound to the past's memory (the runner does) the cache is written in place,
 * otherwise the past is copied first. Scores, softmax and the weighted sum are float32 (onnxruntime's op
 * computes them in float16 precision on this path); the keys and values are read straight from float16.
 */

typedef struct {
    const float* qkv;
    const uint16_t *cos, *sin;
    uint16_t *key, *value; /* present (the past when shared) */
    const int32_t* seqlens;
    float* out;
    size_t b, s, h, kvh, d, l, max_pos;
    float scale;
} Attn;

static void rope(const float* x, float* out, const uint16_t* cos, const uint16_t* sin, size_t d) {
    const size_t half = d / 2;
    for (size_t i = 0; i < half; i++) {
        const float c = half1(cos[i]), sn = half1(sin[i]);
        out[i] = x[i] * c - x[i + half] * sn;
        out[i + half] = x[i + half] * c + x[i] * sn;
    }
}

/* task = (row, head, token): one query against its row's keys 0 .. position */
static void attend(void* data, size_t task) {
    const Attn* a = (const Attn*)data;
    const size_t s = task % a->s, h = (task / a->s) % a->h, b = task / (a->s * a->h);
    const size_t group = a->h / a->kvh, kh = h / group, d = a->d;
    const size_t pos = (size_t)a->seqlens[b] + 1 - a->s + s;
    const size_t width = (a->h + 2 * a->kvh) * d;
    float q[512] __attribute__((aligned(64)));
    rope(a->qkv + (b * a->s + s) * width + h * d, q, a->cos + pos * (d / 2), a->sin + pos * (d / 2), d);
    for (size_t i = 0; i < d; i++) q[i] *= a->scale;
    const uint16_t* keys = a->key + ((b * a->kvh + kh) * a->l) * d;
    const uint16_t* values = a->value + ((b * a->kvh + kh) * a->l) * d;
    float* out = a->out + (b * a->s + s) * a->h * d + h * d;
    /* scores in chunks, with a running maximum and sum (one pass over the keys and values) */
    enum { CH = 256 };
    float sc[CH] __attribute__((aligned(64)));
    vf acc[512 / VW];
    for (size_t i = 0; i < d / VW; i++) acc[i] = (vf){0};
    float run_max = -3.0e38f, run_sum = 0.0f;
    for (size_t t0 = 0; t0 <= pos; t0 += CH) {
        const size_t t1 = pos + 1 - t0 < CH ? pos + 1 : t0 + CH;
        float cmax = -3.0e38f;
        for (size_t t = t0; t < t1; t++) {
            const uint16_t* k = keys + t * d;
            vf dot = (vf){0};
            for (size_t i = 0; i < d; i += VW) dot += load(q + i) * load_half(k + i);
            sc[t - t0] = hsum(dot);
            if (sc[t - t0] > cmax) cmax = sc[t - t0];
        }
        if (cmax > run_max) { /* rescale what was accumulated */
            const float f = vexp1(run_max - cmax);
            for (size_t i = 0; i < d / VW; i++) acc[i] *= f;
            run_sum *= f;
            run_max = cmax;
        }
        vexp_shift(sc, t1 - t0, run_max);
        for (size_t t = t0; t < t1; t++) {
            const float p = sc[t - t0];
            run_sum += p;
            const uint16_t* v = values + t * d;
            for (size_t i = 0; i < d / VW; i++) acc[i] += load_half(v + i * VW) * p;
        }
    }
    const float inv = 1.0f / run_sum;
    for (size_t i = 0; i < d / VW; i++) {
        const vf o = acc[i] * inv;
        memcpy(out + i * VW, &o, sizeof o);
    }
}

/* Plain entry points (no onnxruntime), single-threaded: tests compare them with numpy. */
TG_EXPORT int tg_qmatmul(int bits, const float* x, const uint8_t* w, float* y, size_t m, size_t n, size_t k,
                         int swiglu) {
    if ((bits != 4 && bits != 8) || k % QK || k == 0 || k > K_MAX) return 1;
    Job j = {bits, x, w, y, m, n, k, 0, swiglu != 0};
    size_t tasks = tasks_for(&j);
    for (size_t t = 0; t < tasks; t++) run_task(&j, t);
    return 0;
}

TG_EXPORT int tg_vector_width(void) { return VW; }

/* ---- onnxruntime custom ops ---------------------------------------------------------------------------- */

static const OrtApi* api;

typedef enum { Q4_1_MATMUL, Q8_0_MATMUL, Q8_0_GATHER, KV_ATTENTION, Q4_1_SWIGLU, Q8_0_SWIGLU, KIND_COUNT } Kind;

typedef struct {
    OrtCustomOp op;
    Kind kind;
    int bits;
} QOp;

static OrtStatus* fail(const char* message) { return ORT_CALL(CreateStatus)(ORT_INVALID_ARGUMENT, message); }

#define TRY(expr)                          \
    do {                                   \
        OrtStatus* status_ = (expr);       \
        if (status_ != NULL) return status_; \
    } while (0)

static OrtStatus* shape_of(const OrtValue* value, int64_t* dims, size_t* rank) {
    OrtTensorTypeAndShapeInfo* info;
    TRY(ORT_CALL(GetTensorTypeAndShape)(value, &info));
    OrtStatus* status = ORT_CALL(GetDimensionsCount)(info, rank);
    if (status == NULL) status = *rank > 8 ? fail("thriftgate QMatMul: input of rank > 8") : NULL;
    if (status == NULL) status = ORT_CALL(GetDimensions)(info, dims, *rank);
    ORT_CALL(ReleaseTensorTypeAndShapeInfo)(info);
    return status;
}

/* The first n inputs of a kernel call with their shapes (rank at most 8). */
static OrtStatus* read_inputs(OrtKernelContext* ctx, size_t n, const OrtValue** values, int64_t (*dims)[8],
                              size_t* ranks) {
    for (size_t i = 0; i < n; i++) {
        TRY(ORT_CALL(KernelContext_GetInput)(ctx, i, &values[i]));
        TRY(shape_of(values[i], dims[i], &ranks[i]));
    }
    return NULL;
}

/* Q8_0Gather: rows of a Q8_0 table (the tied embedding) by index, dequantized: ids int64 [...] -> [..., K]. */
static OrtStatus* gather(OrtKernelContext* ctx) {
    const OrtValue* in[2];
    int64_t dims[2][8];
    size_t rank[2];
    TRY(read_inputs(ctx, 2, in, dims, rank));
    const OrtValue *ids_value = in[0], *w_value = in[1];
    const int64_t *idims = dims[0], *wdims = dims[1];
    const size_t irank = rank[0], wrank = rank[1];
    if (wrank != 2 || wdims[1] % (Q8_CODES + 2) || wdims[1] / (Q8_CODES + 2) * QK > K_MAX || irank > 7)
        return fail("thriftgate Q8_0Gather: the table must be [rows, blocks * 34] and the ids of rank <= 7");
    const size_t nb = (size_t)wdims[1] / (Q8_CODES + 2), k = nb * QK, rows = (size_t)wdims[0];
    size_t count = 1;
    for (size_t i = 0; i < irank; i++) count *= (size_t)idims[i];
    int64_t ydims[8];
    memcpy(ydims, idims, sizeof(int64_t) * irank);
    ydims[irank] = (int64_t)k;
    OrtValue* y_value;
    const int64_t* ids;
    const uint8_t* w;
    float* y;
    TRY(ORT_CALL(KernelContext_GetOutput)(ctx, 0, ydims, irank + 1, &y_value));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)ids_value, (void**)&ids));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)w_value, (void**)&w));
    TRY(ORT_CALL(GetTensorMutableData)(y_value, (void**)&y));
    for (size_t t = 0; t < count; t++) {
        if (ids[t] < 0 || (uint64_t)ids[t] >= rows) return fail("thriftgate Q8_0Gather: index out of range");
        const uint8_t* row = w + (size_t)ids[t] * nb * (Q8_CODES + 2);
        float d[K_MAX / QK];
        halves(row + nb * Q8_CODES, d, nb);
        for (size_t i = 0; i < k; i++) y[t * k + i] = (float)(int8_t)row[i] * d[i / QK];
    }
    return NULL;
}

static OrtStatus* attention(OrtKernelContext* ctx) {
    const OrtValue* in[7];
    int64_t dims[7][8];
    size_t rank[7];
    TRY(read_inputs(ctx, 7, in, dims, rank));
    if (rank[0] != 3 || rank[1] != 4 || rank[2] != 4 || rank[3] != 1 || rank[5] != 2 || rank[6] != 2)
        return fail("thriftgate KVAttention: qkv [B, S, W], past [B, KVH, L, D], seqlens_k [B], cos / sin [P, D/2]");
    Attn a;
    a.b = (size_t)dims[0][0], a.s = (size_t)dims[0][1], a.kvh = (size_t)dims[1][1], a.l = (size_t)dims[1][2];
    a.d = (size_t)dims[1][3], a.max_pos = (size_t)dims[5][0];
    for (int i = 0; i < 4; i++)
        if (dims[2][i] != dims[1][i]) return fail("thriftgate KVAttention: past_key and past_value differ in shape");
    if (a.d == 0 || a.d % VW || a.d > 512 || a.kvh == 0 || (size_t)dims[0][2] % a.d || (size_t)dims[3][0] != a.b ||
        (size_t)dims[5][1] * 2 != a.d || dims[6][0] != dims[5][0] || dims[6][1] != dims[5][1])
        return fail("thriftgate KVAttention: shapes do not fit (head size a multiple of the vector width, <= 512)");
    const size_t heads = (size_t)dims[0][2] / a.d;
    if (heads <= 2 * a.kvh || (heads - 2 * a.kvh) % a.kvh)
        return fail("thriftgate KVAttention: qkv's width is not (H + 2 KVH) * D with H a multiple of KVH");
    a.h = heads - 2 * a.kvh;
    a.scale = 1.0f / sqrtf((float)a.d);
    const uint16_t *past_k, *past_v;
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[0], (void**)&a.qkv));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[1], (void**)&past_k));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[2], (void**)&past_v));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[3], (void**)&a.seqlens));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[5], (void**)&a.cos));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)in[6], (void**)&a.sin));
    for (size_t b = 0; b < a.b; b++)
        if (a.seqlens[b] + 1 < (int64_t)a.s || (size_t)a.seqlens[b] >= a.l || (size_t)a.seqlens[b] >= a.max_pos)
            return fail("thriftgate KVAttention: a row's length is outside the cache or the rotary table");
    int64_t odims[3] = {(int64_t)a.b, (int64_t)a.s, (int64_t)(a.h * a.d)};
    OrtValue *out_v, *key_v, *value_v;
    TRY(ORT_CALL(KernelContext_GetOutput)(ctx, 0, odims, 3, &out_v));
    TRY(ORT_CALL(KernelContext_GetOutput)(ctx, 1, dims[1], 4, &key_v));
    TRY(ORT_CALL(KernelContext_GetOutput)(ctx, 2, dims[2], 4, &value_v));
    TRY(ORT_CALL(GetTensorMutableData)(out_v, (void**)&a.out));
    TRY(ORT_CALL(GetTensorMutableData)(key_v, (void**)&a.key));
    TRY(ORT_CALL(GetTensorMutableData)(value_v, (void**)&a.value));
    const size_t cache = a.b * a.kvh * a.l * a.d * sizeof(uint16_t);
    if (a.key != past_k) memcpy(a.key, past_k, cache);
    if (a.value != past_v) memcpy(a.value, past_v, cache);
    /* the new tokens' keys (rotated) and values, into the cache */
    const size_t width = (a.h + 2 * a.kvh) * a.d;
    float tmp[512];
    for (size_t b = 0; b < a.b; b++)
        for (size_t s = 0; s < a.s; s++) {
            const size_t pos = (size_t)a.seqlens[b] + 1 - a.s + s;
            const float* row = a.qkv + (b * a.s + s) * width;
            for (size_t kh = 0; kh < a.kvh; kh++) {
                const size_t at = ((b * a.kvh + kh) * a.l + pos) * a.d;
                rope(row + (a.h + kh) * a.d, tmp, a.cos + pos * (a.d / 2), a.sin + pos * (a.d / 2), a.d);
                for (size_t i = 0; i < a.d; i++) {
                    a.key[at + i] = to_half(tmp[i]);
                    a.value[at + i] = to_half(row[(a.h + a.kvh + kh) * a.d + i]);
                }
            }
        }
    const size_t tasks = a.b * a.h * a.s;
    if (tasks == 0) return NULL;
    return ORT_CALL(KernelContext_ParallelFor)(ctx, attend, tasks, 0, &a);
}

static OrtStatus* compute(const QOp* op, OrtKernelContext* ctx) {
    if (op->kind == Q8_0_GATHER) return gather(ctx);
    if (op->kind == KV_ATTENTION) return attention(ctx);
    const OrtValue* in[2];
    int64_t dims[2][8];
    size_t rank[2];
    TRY(read_inputs(ctx, 2, in, dims, rank));
    const OrtValue *x_value = in[0], *w_value = in[1];
    const int64_t *xdims = dims[0], *wdims = dims[1];
    const size_t xrank = rank[0], wrank = rank[1];
    if (xrank < 1 || wrank != 2) return fail("thriftgate QMatMul: X must have rank >= 1 and the weight rank 2");
    const int fused = op->kind == Q4_1_SWIGLU || op->kind == Q8_0_SWIGLU;
    const size_t k = (size_t)xdims[xrank - 1], n = (size_t)wdims[0] / (fused ? 2 : 1);
    if (k % QK || k == 0 || k > K_MAX || (size_t)wdims[1] != row_bytes(op->bits, k))
        return fail("thriftgate QMatMul: the weight's blocks do not match X's last dimension");
    if (fused && (size_t)wdims[0] % 2)
        return fail("thriftgate QMatMulSwiGLU: the weight must hold as many gate rows as up rows");
    size_t m = 1;
    for (size_t i = 0; i + 1 < xrank; i++) m *= (size_t)xdims[i];
    int64_t ydims[8];
    memcpy(ydims, xdims, sizeof(int64_t) * xrank);
    ydims[xrank - 1] = (int64_t)n;
    OrtValue* y_value;
    TRY(ORT_CALL(KernelContext_GetOutput)(ctx, 0, ydims, xrank, &y_value));
    Job j = {op->bits, NULL, NULL, NULL, m, n, k, 0, fused};
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)x_value, (void**)&j.x));
    TRY(ORT_CALL(GetTensorMutableData)((OrtValue*)w_value, (void**)&j.w));
    TRY(ORT_CALL(GetTensorMutableData)(y_value, (void**)&j.y));
    if (m == 0 || n == 0) return NULL;
    const size_t tasks = tasks_for(&j);
    if (tasks == 1) {
        run_task(&j, 0);
        return NULL;
    }
    return ORT_CALL(KernelContext_ParallelFor)(ctx, run_task, tasks, 0, &j);
}

static void* ORT_API_CALL create_kernel(const OrtCustomOp* op, const OrtApi* a, const OrtKernelInfo* info) {
    (void)a;
    (void)info;
    return (void*)op; /* stateless: the kernel is the op */
}
static OrtStatus* ORT_API_CALL create_kernel_v2(const OrtCustomOp* op, const OrtApi* a, const OrtKernelInfo* info,
                                                void** kernel) {
    *kernel = create_kernel(op, a, info);
    return NULL;
}
static OrtStatus* ORT_API_CALL compute_v2(void* kernel, OrtKernelContext* ctx) {
    return compute((const QOp*)kernel, ctx);
}
static void ORT_API_CALL compute_v1(void* kernel, OrtKernelContext* ctx) {
    OrtStatus* status = compute((const QOp*)kernel, ctx);
    if (status != NULL) ORT_CALL(ReleaseStatus)(status);
}
static void ORT_API_CALL destroy_kernel(void* kernel) { (void)kernel; }
static const char* ORT_API_CALL op_name(const OrtCustomOp* op) {
    static const char* const names[KIND_COUNT] = {"Q4_1MatMul",  "Q8_0MatMul",       "Q8_0Gather",
                                                  "KVAttention", "Q4_1MatMulSwiGLU", "Q8_0MatMulSwiGLU"};
    return names[((const QOp*)op)->kind];
}
static const char* ORT_API_CALL provider(const OrtCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp* op, size_t i) {
    switch (((const QOp*)op)->kind) {
    case KV_ATTENTION: {
        static const ONNXTensorElementDataType types[7] = {
            ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,   ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
            ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
            ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,   ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
            ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16};
        return types[i];
    }
    case Q8_0_GATHER:
        return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    default:
        return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    }
}
static size_t ORT_API_CALL input_count(const OrtCustomOp* op) { return ((const QOp*)op)->kind == KV_ATTENTION ? 7 : 2; }
static ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp* op, size_t i) {
    return ((const QOp*)op)->kind == KV_ATTENTION && i > 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                          : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}
static size_t ORT_API_CALL output_count(const OrtCustomOp* op) { return ((const QOp*)op)->kind == KV_ATTENTION ? 3 : 1; }
static OrtCustomOpInputOutputCharacteristic ORT_API_CALL required(const OrtCustomOp* op, size_t i) {
    (void)op;
    (void)i;
    return INPUT_OUTPUT_REQUIRED;
}
static OrtMemType ORT_API_CALL cpu_memory(const OrtCustomOp* op, size_t i) {
    (void)op;
    (void)i;
    return OrtMemTypeDefault;
}

static QOp ops[KIND_COUNT];


static void fill(QOp* q, Kind kind) {
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->bits = kind == Q4_1_MATMUL || kind == Q4_1_SWIGLU ? 4 : 8;
    OrtCustomOp* op = &q->op;
    op->version = TG_CUSTOM_OP_VERSION;
    op->CreateKernel = create_kernel;
    op->GetName = op_name;
    op->GetExecutionProviderType = provider;
    op->GetInputType = input_type;
    op->GetInputTypeCount = input_count;
    op->GetOutputType = output_type;
    op->GetOutputTypeCount = output_count;
    op->KernelCompute = compute_v1;
    op->KernelDestroy = destroy_kernel;
    op->GetInputCharacteristic = required;
    op->GetOutputCharacteristic = required;
    op->GetInputMemoryType = cpu_memory;
    op->CreateKernelV2 = create_kernel_v2;
    op->KernelComputeV2 = compute_v2;
}

__attribute__((constructor)) static void init_ops(void) {
    for (int kind = 0; kind < KIND_COUNT; kind++) fill(&ops[kind], (Kind)kind);
}

/* Called by SessionOptions.register_custom_ops_library for each session. onnxruntime keeps the domain and
 * the op descriptions (static here) for the sessions' lifetime; one small domain object per registration is
 * never freed (onnxruntime offers no point at which it is unused). */
TG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
    api = base->GetApi(TG_ORT_API_VERSION);
    if (api == NULL) { /* onnxruntime older than 1.17: say so through the oldest API, whose entry 0 is CreateStatus */
        const OrtApi* oldest = base->GetApi(1);
        return ((TG_FN_CreateStatus)oldest->entries[TG_IDX_CreateStatus])(
            ORT_FAIL, "thriftgate kernels need onnxruntime 1.17 or later (C API version 17)");
    }
    OrtCustomOpDomain* domain;
    TRY(ORT_CALL(CreateCustomOpDomain)("thriftgate", &domain));
    for (int kind = 0; kind < KIND_COUNT; kind++) TRY(ORT_CALL(CustomOpDomain_Add)(domain, &ops[kind].op));
    return ORT_CALL(AddCustomOpDomain)(options, domain);
}
