/*
 * The staircase discrete Gaussian's candidate pass, compiled.
 *
 * This is the arithmetic of veil.privacy._staircase._staircase_candidates (numpy), fused into
 * four short loops per block of candidates, followed by the later rounds of the residual
 * exp(-delta) (_staircase._residual_exp) for the few candidates that reach them. It reads only the
 * words it is given (never a random source), and it gives up wherever the numpy code would settle
 * an entry with exact Python integers or read more random bits: a 32-bit draw of V equal to a
 * threshold, a first-factor draw equal to its threshold, or a residual draw within the float
 * margin. In the candidate pass that gives up on the whole batch (-1); in the later rounds, or
 * when their words run out, it gives up on those rounds only (*later_used = -1). The caller then
 * runs the numpy code on the same words, so that both paths return the same values from the same
 * words (tests/privacy/test_samplers.py).
 *
 * Every float operation that shapes a decision is the one numpy does, in the same order and in
 * double precision: the build passes -ffp-contract=off (no fused multiply-adds) and no fast-math
 * flag, and the constants are the caller's doubles. (It passes -fno-trapping-math, which lets the
 * compiler vectorise the selects of the gamma loop; it changes no value, only whether a
 * floating-point exception may be raised by a lane whose result is discarded.) V needs no
 * logarithm: a table indexed by the draw's leading zeros and the next 8 bits gives the smallest
 * V of that bucket of draws, and exact comparisons with the thresholds walk up from there.
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
int veil_staircase_abi(void) { return 3; }

/* The bucket of a 32-bit draw: 256 * (leading zeros) + the 8 bits after the leading one. */
static inline uint32_t bucket(uint32_t w) {
    const uint32_t zeros = w ? (uint32_t)__builtin_clz(w) : 31u;
    return (zeros << 8) | (((w << zeros) >> 23) & 0xFFu);
}

/*
 * The later rounds of exp(-delta), CKS Algorithm 1 from K = 2, for the n candidates pending after
 * the pass, exactly as _staircase._residual_exp draws them from the words after the batch's: in
 * round K the still-active candidates, in order, each take the next 32-bit half of `later` (two
 * to a word, the low half first; a round of n candidates takes (n + 1) / 2 words) and go on when
 * w - delta * (2**32 / K) < 0. A candidate is kept when its K ends odd.
 *
 * later, later_words: the words available.  delta (n): the candidates' delta.
 * active (n): scratch.  dropped (n): set to 1 for the candidates rejected, 0 for those kept.
 * Returns the number of words used, or -1 (nothing decided) when a draw falls within the float
 * margin or the words run out.
 */
static int64_t later_rounds(const uint32_t *later, int64_t later_words, const double *delta,
                            int64_t n, int64_t *active, int64_t *dropped) {
    int64_t used = 0;
    for (int64_t p = 0; p < n; p++) {
        active[p] = p;
        dropped[p] = 1; /* K = 2 is even: rejected unless it goes on */
    }
    for (int64_t round = 2; n > 0; round++) {
        const int64_t words = (n + 1) / 2;
        if (words > later_words - used || round > (1 << 20)) {
            return -1;
        }
        const uint32_t *w = later + 2 * used;
        const double scale = TWO_32 / (double)round;
        const int64_t kept_if_stops = (round + 1) & 1; /* K is round + 1 when it goes on */
        int64_t going_on = 0;
        for (int64_t a = 0; a < n; a++) {
            const int64_t p = active[a];
            const double d = (double)w[a] - delta[p] * scale;
            if (fabs(d) <= FLOAT_MARGIN) {
                return -1;
            }
            if (d < 0.0) {
                active[going_on++] = p;
                dropped[p] = !kept_if_stops;
            }
        }
        used += words;
        n = going_on;
    }
    return used;
}

/*
 * draws:     4m uint32: V's draws, then R-and-sign, then the first factor's, then the residual's.
 * k, reject_below, tau, half_inverse_variance, inverse_t: the plan (_StaircasePlan); the caller
 *            checks that (v_cap + 1) k < 2**31, so magnitudes, R and j fit in int32.
 * j_scale, j_offset: 64 (1 - slack) and 64 slack, as numpy computes them.
 * table, j_max: T[0 .. j_max] as uint32.  v_thresholds, v_cap: T[::4] and the cap on V.
 * v_start:   8192 entries, per bucket of draws the smallest V of the bucket.
 * later, later_words: the words that follow the batch's draws, for the later rounds of exp(-delta)
 *            (later_rounds); later_words = 0 leaves those rounds to the caller.
 * values (m): the signed values of the candidates kept, in order; with *later_used = -1, also
 *            those pending.
 * pending_index, pending_delta, pending_r, pending_j (m each): for the kept candidates that
 *            passed the first round of the residual exp(-delta) and go on to the later rounds:
 *            their position in values, delta, R and j. n_pending: how many.
 * scratch (2m): working space.
 * later_used: the words of `later` the later rounds used, or -1 when they are left to the caller
 *            (values then holds the pending candidates, to be settled by the caller).
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
                            const uint32_t *later, int64_t later_words, int64_t *values,
                            int64_t *pending_index, double *pending_delta, int64_t *pending_r,
                            int64_t *pending_j, int64_t *n_pending, int64_t *scratch,
                            int64_t *later_used) {
    const uint32_t *v_bits = draws;
    const uint32_t *r_bits = draws + m;
    const uint32_t *first_bits = draws + 2 * m;
    const uint32_t *residual_bits = draws + 3 * m;
    const int32_t k32 = (int32_t)k;
    const uint32_t reject32 = (uint32_t)reject_below;
    const double j_cap = (double)j_max;
    const int32_t j_max32 = (int32_t)j_max;
    int32_t v_block[BLOCK], r_block[BLOCK], j_block[BLOCK], unsigned_block[BLOCK];
    int32_t signed_block[BLOCK];
    uint32_t valid[BLOCK];
    double delta_block[BLOCK], gap_block[BLOCK];
    int64_t count = 0;
    int64_t pending = 0;
    uint32_t exceptional = 0;

    *later_used = -1;
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

        /* R by multiply-and-shift, the sign and the candidate's magnitude, branch-free. */
        for (int i = 0; i < n; i++) {
            const uint32_t rb = r_bits[start + i];
            const uint64_t product = (uint64_t)(rb & 0x7FFFFFFFu) * (uint64_t)k32;
            const int32_t r = (int32_t)(product >> 31);
            const int32_t magnitude = v_block[i] * k32 + r;
            const int32_t negative = (int32_t)(rb >> 31);
            valid[i] = ((uint32_t)(product & 0x7FFFFFFFu) >= reject32) &
                       !((magnitude == 0) & negative);
            signed_block[i] = (magnitude ^ -negative) + negative; /* -magnitude if negative */
            unsigned_block[i] = magnitude;
            r_block[i] = r;
        }

        /* gamma, j, delta and the residual draw's gap, exactly as the numpy passes compute them
         * (vectorised). numpy floors, clamps to [0, j_max] and converts; here the clamp from
         * above comes first, then truncation and the clamp from below, which gives the same j:
         * they differ only below 0, where both give j = 0 and leave delta = gamma. delta is
         * then 0 at j = j_max (times 0.0: delta is finite), and the 32-bit draw is converted to
         * double through int32 (exact either way). */
        for (int i = 0; i < n; i++) {
            double gamma = (double)unsigned_block[i];
            gamma -= tau;
            gamma = gamma * gamma;
            gamma *= half_inverse_variance;
            gamma += (double)r_block[i] * inverse_t;
            double scaled = gamma * j_scale;
            scaled -= j_offset;
            scaled = scaled < j_cap ? scaled : j_cap;
            int32_t j = (int32_t)scaled;
            j = j < 0 ? 0 : j;
            double delta = gamma - (double)j * (1.0 / 64.0);
            delta *= (double)(j != j_max32);
            j_block[i] = j;
            delta_block[i] = delta;
            const double w =
                (double)(int32_t)(residual_bits[start + i] ^ 0x80000000u) + 2147483648.0;
            gap_block[i] = w - delta * TWO_32;
        }

        /* The first factor exp(-j/64) against T[j] and the first round of exp(-delta); ties and
         * the float margin are left to numpy. Kept values are written in order. */
        for (int i = 0; i < n; i++) {
            const uint32_t threshold = table[j_block[i]];
            const uint32_t f = first_bits[start + i];
            const double gap = gap_block[i];
            exceptional |= (f == threshold) | (fabs(gap) <= FLOAT_MARGIN);
            const uint32_t keep = valid[i] & (f < threshold);
            values[count] = signed_block[i];
            if (gap < 0.0 && keep) { /* rare: gap < 0 has probability delta < 1/64 */
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
    if (exceptional) {
        return -1;
    }
    if (pending == 0) {
        *later_used = 0;
        return count;
    }
    int64_t *dropped = scratch + m;
    const int64_t used = later_rounds(later, later_words, pending_delta, pending, scratch, dropped);
    if (used < 0) {
        return count;
    }
    /* Remove the rejected candidates from values, keeping the order. */
    int64_t write = 0;
    int64_t read = 0;
    for (int64_t p = 0; p < pending; p++) {
        if (dropped[p]) {
            const int64_t at = pending_index[p];
            for (; read < at; read++) {
                values[write++] = values[read];
            }
            read = at + 1;
        }
    }
    for (; read < count; read++) {
        values[write++] = values[read];
    }
    *later_used = used;
    return write;
}
