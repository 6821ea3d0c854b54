/*
 * The staircase discrete Gaussian's candidate pass, compiled.
 *
 * This is the arithmetic of veil.privacy.samplers._staircase_candidates (numpy), fused into
 * three short loops per block of candidates. It reads only the batch's draws (never a random
 * source), and it gives up on the whole batch, returning -1, wherever the numpy code would settle
 * an entry with exact Python integers or read more random bits: a 32-bit draw of V equal to a
 * threshold, a first-factor draw equal to its threshold, or a residual draw within the float
 * margin. The caller then runs the numpy code on the same draws, so that both paths return the
 * same values from the same draws (tests/privacy/test_samplers.py).
 *
 * Every float operation that shapes a decision is the one numpy does, in the same order and in
 * double precision: the build passes -ffp-contract=off (no fused multiply-adds) and no fast-math
 * flag, and the constants are the caller's doubles. V needs no logarithm: a table indexed by the
 * draw's leading zeros and the next 8 bits gives the smallest V of that bucket of draws, and
 * exact comparisons with the thresholds walk up from there.
 *
 * Loaded with ctypes (veil.privacy._kernel); ctypes releases the GIL for the call.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

/* Double arithmetic must round each operation to double, as numpy does (not x87's extended
 * precision): otherwise do not build, and veil uses numpy. */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "the staircase pass needs FLT_EVAL_METHOD == 0"
#endif

/* Must match veil.privacy.samplers: the float margin, and 2**32 as a double. */
#define FLOAT_MARGIN 2.0
#define TWO_32 4294967296.0
/* Candidates per block: the block's working arrays stay in the first-level cache. */
#define BLOCK 256

/* The interface version the Python side checks (veil.privacy._kernel). */
int veil_staircase_abi(void) { return 2; }

/* The bucket of a 32-bit draw: 256 * (leading zeros) + the 8 bits after the leading one. */
static inline uint32_t bucket(uint32_t w) {
    const uint32_t zeros = w ? (uint32_t)__builtin_clz(w) : 31u;
    return (zeros << 8) | (((w << zeros) >> 23) & 0xFFu);
}

/*
 * draws:     4m uint32: V's draws, then R-and-sign, then the first factor's, then the residual's.
 * k, reject_below, tau, half_inverse_variance, inverse_t: the plan (_StaircasePlan); the caller
 *            checks that (v_cap + 1) k < 2**31, so magnitudes, R and j fit in int32.
 * j_scale, j_offset: 64 (1 - slack) and 64 slack, as numpy computes them.
 * table, j_max: T[0 .. j_max] as uint32.  v_thresholds, v_cap: T[::4] and the cap on V.
 * v_start:   8192 entries, per bucket of draws the smallest V of the bucket.
 * values (m): the signed values of the candidates that are kept or pending, in order.
 * pending_index, pending_delta, pending_r, pending_j (m each): for the kept candidates that
 *            passed the first round of the residual exp(-delta) and go on to the later rounds:
 *            their position in values, delta, R and j. n_pending: how many.
 *
 * Returns the number of values written, or -1 when the batch needs the exact path.
 */
/* Compiled twice on x86-64 with GCC: for x86-64-v3 (AVX2, BMI, LZCNT: a third faster here, the
 * leading-zero count mostly) and for any x86-64; the loader picks what the CPU runs. Fused
 * multiply-adds stay off either way (-ffp-contract=off). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
int64_t veil_staircase_pass(const uint32_t *draws, int64_t m, int64_t k, int64_t reject_below,
                            double tau, double half_inverse_variance, double inverse_t,
                            double j_scale, double j_offset, const uint32_t *table, int64_t j_max,
                            const uint32_t *v_thresholds, int64_t v_cap, const uint16_t *v_start,
                            int64_t *values, int64_t *pending_index, double *pending_delta,
                            int64_t *pending_r, int64_t *pending_j, int64_t *n_pending) {
    const uint32_t *v_bits = draws;
    const uint32_t *r_bits = draws + m;
    const uint32_t *first_bits = draws + 2 * m;
    const uint32_t *residual_bits = draws + 3 * m;
    const int32_t k32 = (int32_t)k;
    const uint32_t reject32 = (uint32_t)reject_below;
    const double j_cap = (double)j_max;
    int32_t v_block[BLOCK], r_block[BLOCK], j_block[BLOCK], magnitude[BLOCK];
    uint32_t valid[BLOCK];
    double delta_block[BLOCK], gap_block[BLOCK];
    int64_t count = 0;
    int64_t pending = 0;
    uint32_t exceptional = 0;

    for (int64_t start = 0; start < m; start += BLOCK) {
        const int n = (int)(m - start < BLOCK ? m - start : BLOCK);

        /* V: the number of v >= 1 with w < T[4v], walking up from the bucket's smallest V. */
        for (int i = 0; i < n; i++) {
            const uint32_t w = v_bits[start + i];
            int32_t v = v_start[bucket(w)];
            while (v < v_cap && w <= v_thresholds[v + 1]) {
                v++;
            }
            exceptional |= !(w < v_thresholds[v] && w > v_thresholds[v + 1]);
            v_block[i] = v;
        }

        /* R by multiply-and-shift, the candidate's magnitude, gamma, j, delta and the residual
         * draw's gap, exactly as the numpy passes compute them (branch-free: vectorised). floor()
         * and then clamping to [0, j_max] equals clamping and then truncating: they differ only
         * below 0, where both give j = 0 and leave delta = gamma. */
        for (int i = 0; i < n; i++) {
            const uint32_t rb = r_bits[start + i];
            const uint64_t product = (uint64_t)(rb & 0x7FFFFFFFu) * (uint64_t)k32;
            const int32_t r = (int32_t)(product >> 31);
            const int32_t mag = v_block[i] * k32 + r;
            const uint32_t negative = rb >> 31;
            valid[i] = ((uint32_t)(product & 0x7FFFFFFFu) >= reject32) & !(mag == 0 && negative);
            magnitude[i] = negative ? -mag : mag;
            double gamma = (double)mag;
            gamma -= tau;
            gamma = gamma * gamma;
            gamma *= half_inverse_variance;
            gamma += (double)r * inverse_t;
            double scaled = gamma * j_scale;
            scaled -= j_offset;
            scaled = scaled > j_cap ? j_cap : scaled;
            scaled = scaled < 0.0 ? 0.0 : scaled;
            const int32_t j = (int32_t)scaled;
            double delta = gamma - (double)j * (1.0 / 64.0);
            delta = j == j_max ? 0.0 : delta;
            r_block[i] = r;
            j_block[i] = j;
            delta_block[i] = delta;
            gap_block[i] = (double)residual_bits[start + i] - delta * TWO_32;
        }

        /* The first factor exp(-j/64) against T[j] and the first round of exp(-delta); ties and
         * the float margin are left to numpy. Kept values are written in order. */
        for (int i = 0; i < n; i++) {
            const uint32_t threshold = table[j_block[i]];
            const uint32_t f = first_bits[start + i];
            const double gap = gap_block[i];
            exceptional |= (f == threshold) | (fabs(gap) <= FLOAT_MARGIN);
            const uint32_t keep = valid[i] & (f < threshold);
            values[count] = magnitude[i];
            if (keep & (gap < 0.0)) {
                pending_index[pending] = count;
                pending_delta[pending] = delta_block[i];
                pending_r[pending] = r_block[i];
                pending_j[pending] = j_block[i];
                pending++;
            }
            count += keep;
        }
    }
    *n_pending = pending;
    return exceptional ? -1 : count;
}
