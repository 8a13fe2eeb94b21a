// Fused bitspace damping: one thread per window, the whole of kernels/damping.py's math in
// one pass over the closes (bits, transition counts, the relaxed fixed-point λ loop, the
// weighted ratios, the trajectory, and the cosine against the library).
//
// The definitions (bits, the convergence rule, iteration counts, the outputs) are the ones in
// kernels/damping.py's module docstring; the NumPy float64 path there is the reference this
// kernel is tested against, both on a GPU (CuPy/NVRTC) and, without a GPU, compiled for the
// host with a small shim header that emulates a thread block
// (tests/unit/test_damping_kernel_host.py).  So this file uses only what both compilers
// accept: no headers, no shuffles or votes; only __syncwarp, static __shared__ arrays,
// __popc, __ldg, atomicOr and double2/float4.
//
// Template parameters: X the closes' type on the device (float or double), F the arithmetic
// and output type (float or double), NT the number of 32-bit words holding the W-1 bits
// (NT = ceil((W-1)/32), 1..8, so W <= 257).
//
// Layout: closes (n, w) row-major; lib is the unit library transposed and padded to
// (w-1, lpad) with lpad a multiple of SEPSTREAM_LB (padding columns are zero: they add
// similarity 0, which the final clip to [0, 1] makes harmless); out is (6, ld) in F holding
// entropy, coherence, stability, lam, value, confidence; iters/conv/coll are per row.

#define SEPSTREAM_BLOCK 128
#define SEPSTREAM_TILE 32
#define SEPSTREAM_LB 16
#define SEPSTREAM_MAX_ITER 32
// Tuning knobs (compile-time defines; the bench compares them on the device):
// SEPSTREAM_MIN_BLOCKS caps registers through __launch_bounds__; SEPSTREAM_HORNER picks the
// weighted sums: 1 = 16-entry tables of 4-position patterns (one load and one FMA per 4
// positions and type), 0 = one FMA per position and type with the 0/1 term selected.
#ifndef SEPSTREAM_MIN_BLOCKS
#define SEPSTREAM_MIN_BLOCKS 2
#endif
#ifndef SEPSTREAM_HORNER
#define SEPSTREAM_HORNER 1
#endif
// SEPSTREAM_GROUP (1, 2 or 4): lanes that share their windows in the library phase.
#ifndef SEPSTREAM_GROUP
#define SEPSTREAM_GROUP 2
#endif

namespace sepstream {

__device__ __forceinline__ double fexp(double x) { return exp(x); }
__device__ __forceinline__ float fexp(float x) { return expf(x); }
__device__ __forceinline__ double flog2(double x) { return log2(x); }
__device__ __forceinline__ float flog2(float x) { return log2f(x); }
__device__ __forceinline__ double fsqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float fsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double ftiny(double) { return 2.2250738585072014e-308; }
__device__ __forceinline__ float ftiny(float) { return 1.17549435e-38f; }

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }

template <typename F>
__device__ __forceinline__ F clip(F x, F lo, F hi) {
    x = x < lo ? lo : x;
    return x > hi ? hi : x;
}

// p·log2 p with 0·log2 0 = 0, as _xlog2x: the log of max(p, tiny).
template <typename F>
__device__ __forceinline__ F xlog2x(F p) {
    const F tiny = ftiny(p);
    return p * flog2(p > tiny ? p : tiny);
}

// H = -Σ p·log2 p / log2 3, clamped to [0.05, 1] (times 1/log2 3: within an ulp of the
// reference's division, and a division less per iteration).
template <typename F>
__device__ __forceinline__ F entropy(F p0, F pf, F pr) {
    const F h = -(xlog2x(p0) + xlog2x(pf) + xlog2x(pr)) * (F)0.63092975357145743710;
    return clip(h, (F)0.05, (F)1.0);
}

// λ = clamp(k1·H + k2·(1 − C), 0.01, 1) with C = 1 − H, written as the reference writes it.
template <typename F>
__device__ __forceinline__ F decay(F h) {
    const F coherence = (F)1.0 - h;
    return clip((F)0.30 * h + (F)0.20 * ((F)1.0 - coherence), (F)0.01, (F)1.0);
}

// Shift an NT-word bit string towards higher positions by s bits, 1 <= s <= 32.
template <int NT>
__device__ __forceinline__ void shift_up(unsigned int (&m)[NT], int s) {
    if (s >= 32) {
#pragma unroll
        for (int k = NT - 1; k > 0; --k) m[k] = m[k - 1];
        m[0] = 0u;
        s -= 32;
    }
    if (s > 0) {
#pragma unroll
        for (int k = NT - 1; k > 0; --k) m[k] = (m[k] << s) | (m[k - 1] >> (32 - s));
        m[0] <<= s;
    }
}

// S_k = Σ_j [type_j = k]·r^(T-1-j) by Horner's rule over the 32·NT positions.  The masks
// hold transition j at position j + (32·NT − T), so the leading positions are zero and leave
// the accumulators at 0; each type is summed on its own (never as a difference).
template <typename F, int NT>
__device__ __forceinline__ void weighted_sums(const unsigned int (&m0)[NT],
                                              const unsigned int (&mf)[NT],
                                              const unsigned int (&mr)[NT], F r, F& s0, F& sf,
                                              F& sr) {
    F a0 = (F)0, af = (F)0, ar = (F)0;
#pragma unroll
    for (int k = 0; k < NT; ++k) {
        const unsigned int u0 = m0[k], uf = mf[k], ur = mr[k];
#pragma unroll
        for (int b = 0; b < 32; ++b) {
            const unsigned int bit = 1u << b;
            a0 = a0 * r + ((u0 & bit) ? (F)1 : (F)0);
            af = af * r + ((uf & bit) ? (F)1 : (F)0);
            ar = ar * r + ((ur & bit) ? (F)1 : (F)0);
        }
    }
    s0 = a0;
    sf = af;
    sr = ar;
}

// The same sums four positions at a time: q[c] = Σ_{bit i of c} r^(3-i) for the 16 patterns,
// in this lane's slots of shared memory (q[c] at qtab[32·c]: one bank per lane), then
// Horner's rule in r^4 over the nibbles of the masks.
template <typename F, int NT>
__device__ __forceinline__ void weighted_sums_nibbles(const unsigned int (&m0)[NT],
                                                      const unsigned int (&mf)[NT],
                                                      const unsigned int (&mr)[NT], F r,
                                                      F* qtab, F& s0, F& sf, F& sr) {
    const F r2 = r * r, r3 = r2 * r, r4 = r2 * r2;
    F q[16];
    q[0] = (F)0;
    q[1] = r3;
    q[2] = r2;
    q[3] = r2 + r3;
    q[4] = r;
    q[5] = r + r3;
    q[6] = r + r2;
    q[7] = r + q[3];
#pragma unroll
    for (int c = 8; c < 16; ++c) q[c] = (F)1 + q[c - 8];
#pragma unroll
    for (int c = 0; c < 16; ++c) qtab[32 * c] = q[c];
    // One Horner chain per word and type (3·NT independent chains of 8 steps, for latency),
    // then the words joined by Horner's rule in r^32.
    F a0[NT], af[NT], ar[NT];
#pragma unroll
    for (int k = 0; k < NT; ++k) {
        a0[k] = (F)0;
        af[k] = (F)0;
        ar[k] = (F)0;
#pragma unroll
        for (int g = 0; g < 8; ++g) {
            a0[k] = a0[k] * r4 + qtab[32 * ((m0[k] >> (4 * g)) & 15u)];
            af[k] = af[k] * r4 + qtab[32 * ((mf[k] >> (4 * g)) & 15u)];
            ar[k] = ar[k] * r4 + qtab[32 * ((mr[k] >> (4 * g)) & 15u)];
        }
    }
    const F r8 = r4 * r4, r16 = r8 * r8, r32 = r16 * r16;
    s0 = a0[0];
    sf = af[0];
    sr = ar[0];
#pragma unroll
    for (int k = 1; k < NT; ++k) {
        s0 = s0 * r32 + a0[k];
        sf = sf * r32 + af[k];
        sr = sr * r32 + ar[k];
    }
}

// The SEPSTREAM_LB library values of group position j in one row of a superblock of
// G·SEPSTREAM_LB columns, with 16-byte loads: vector i of position j sits at (i·G + j), so at
// each load the G positions of a warp touch G neighbouring 16-byte pieces.
template <int G>
__device__ __forceinline__ void load_lib(const double* p, int j, double (&v)[SEPSTREAM_LB]) {
    const double2* q = reinterpret_cast<const double2*>(p) + j;
#pragma unroll
    for (int i = 0; i < SEPSTREAM_LB / 2; ++i) {
        const double2 x = __ldg(q + i * G);
        v[2 * i] = x.x;
        v[2 * i + 1] = x.y;
    }
}

template <int G>
__device__ __forceinline__ void load_lib(const float* p, int j, float (&v)[SEPSTREAM_LB]) {
    const float4* q = reinterpret_cast<const float4*>(p) + j;
#pragma unroll
    for (int i = 0; i < SEPSTREAM_LB / 4; ++i) {
        const float4 x = __ldg(q + i * G);
        v[4 * i] = x.x;
        v[4 * i + 1] = x.y;
        v[4 * i + 2] = x.z;
        v[4 * i + 3] = x.w;
    }
}

template <typename X, typename F, int NT>
__global__ void __launch_bounds__(SEPSTREAM_BLOCK, SEPSTREAM_MIN_BLOCKS)
    damp_windows(const X* __restrict__ closes, long long n, int w, const F* __restrict__ lib,
                 int lpad, F* __restrict__ out, long long ld, int* __restrict__ iters,
                 unsigned char* __restrict__ conv_out, unsigned char* __restrict__ coll_out,
                 int* __restrict__ bad) {
    // Each warp owns 32 consecutive rows (the ones its lanes compute) and brings them in one
    // tile of 32 bits at a time: 33 independent loads per lane (lane c of row r for r = 0..31,
    // coalesced along the row, plus column 32 of row `lane`) are in flight before the first
    // store, then the tile is transposed through shared memory (stride 33: no bank conflicts)
    // and each lane compares its own row.  Only the warp synchronises.
    __shared__ __align__(16) X tile[SEPSTREAM_BLOCK * (SEPSTREAM_TILE + 1)];
    const int tid = (int)threadIdx.x;
    const int warp = tid >> 5, lane = tid & 31;
    const long long wrow0 = (long long)blockIdx.x * SEPSTREAM_BLOCK + warp * 32;
    const long long left = n - wrow0;
    const int rows = left <= 0 ? 0 : (left < 32 ? (int)left : 32);  // rows this warp owns
    const bool active = lane < rows;
    const int t = w - 2;  // transitions
    X* wtile = tile + warp * 32 * (SEPSTREAM_TILE + 1);

    unsigned int bits[NT];  // bit i = close[i+1] > close[i], i = 0..T
    bool finite = true;
#pragma unroll
    for (int k = 0; k < NT; ++k) {
        const int c0 = k * SEPSTREAM_TILE;
        const int ncol = imin(SEPSTREAM_TILE + 1, w - c0);  // >= 2 because c0 < w - 1
        X v[32];
        const X* base = closes + wrow0 * (long long)w + c0;
#pragma unroll
        for (int r = 0; r < 32; ++r)
            v[r] = (r < rows && lane < ncol) ? base[(long long)r * w + lane] : (X)0;
        const X last = (active && ncol > SEPSTREAM_TILE)
                           ? base[(long long)lane * w + SEPSTREAM_TILE]
                           : (X)0;
#pragma unroll
        for (int r = 0; r < 32; ++r) wtile[r * (SEPSTREAM_TILE + 1) + lane] = v[r];
        wtile[lane * (SEPSTREAM_TILE + 1) + SEPSTREAM_TILE] = last;
        __syncwarp();
        unsigned int m = 0u;
        if (active) {
            const X* x = wtile + lane * (SEPSTREAM_TILE + 1);
            X prev = x[0];
            finite = finite && (prev - prev == (X)0);  // false for NaN and ±inf
#pragma unroll
            for (int c = 1; c <= SEPSTREAM_TILE; ++c) {
                if (c < ncol) {
                    const X cur = x[c];
                    finite = finite && (cur - cur == (X)0);
                    m |= (cur > prev ? 1u : 0u) << (c - 1);
                    prev = cur;
                }
            }
        }
        bits[k] = m;
        __syncwarp();  // the next tile overwrites this one
    }
    // Lanes past the last row stay (their bits are zero) until the end: the library phase
    // below exchanges data through shared memory and every lane must reach its __syncwarp.
    if (!finite) atomicOr(bad, 1);

    // Transition j joins bits j and j+1: 00 NULL, 01/10 FLIP, 11 RUPTURE.
    unsigned int m0[NT], mf[NT], mr[NT];
    int n0 = 0, nr = 0;
#pragma unroll
    for (int k = 0; k < NT; ++k) {
        const unsigned int nxt = (bits[k] >> 1) | (k + 1 < NT ? (bits[k + 1] << 31) : 0u);
        const int room = t - 32 * k;  // transitions that start in this word
        const unsigned int valid =
            room >= 32 ? 0xffffffffu : (room <= 0 ? 0u : ((1u << room) - 1u));
        m0[k] = ~bits[k] & ~nxt & valid;
        mr[k] = bits[k] & nxt & valid;
        mf[k] = (bits[k] ^ nxt) & valid;
        n0 += __popc(m0[k]);
        nr += __popc(mr[k]);
    }
    const int pad = 32 * NT - t;  // 1..32: align the last transition with the last position
    shift_up<NT>(m0, pad);
    shift_up<NT>(mf, pad);
    shift_up<NT>(mr, pad);

    // λ0 from the unweighted ratios, then the relaxed loop; the pass after the last update
    // gives the ratios at the final λ (so every output is a function of that λ alone).
    const F tf = (F)t, n0f = (F)n0, nrf = (F)nr;
    F lam = decay(entropy(n0f / tf, (tf - n0f - nrf) / tf, nrf / tf));
    int it = 0;
    bool conv = false;
    F p0, pf, pr;
    // After the bits, the warp's tile holds this lane's pattern tables (32·16 floats fit in
    // 32·33 closes; the last __syncwarp above ordered the tile's reads before these writes).
    F* qtab = reinterpret_cast<F*>(wtile) + lane;
    (void)qtab;
    for (;;) {
        F s0, sf, sr;
#if SEPSTREAM_HORNER
        weighted_sums_nibbles<F, NT>(m0, mf, mr, fexp(-lam), qtab, s0, sf, sr);
#else
        weighted_sums<F, NT>(m0, mf, mr, fexp(-lam), s0, sf, sr);
#endif
        const F z = s0 + sf + sr;
        const F iz = (F)1 / z;
        p0 = s0 * iz;
        pf = sf * iz;
        pr = sr * iz;
        if (conv || it == SEPSTREAM_MAX_ITER) break;
        const F relaxed = (lam + decay(entropy(p0, pf, pr))) * (F)0.5;
        const F delta = relaxed - lam;
        ++it;
        conv = (delta < (F)0 ? -delta : delta) < (F)1e-6;
        lam = relaxed;
    }
    const F h = entropy(p0, pf, pr);

    // Trajectory P = [b_0, A_1..A_T], A_k = A_{k-1} + (b_k − b_0)·e^(−λk), with the powers by
    // repeated multiplication re-anchored every 16 steps (as the reference does, here with
    // e^(−16λ)^i), and the cosine numerators Σ_k P_k·lib[k][l].  Library rows go
    // SEPSTREAM_LB per pass; each pass recomputes the path (cheaper than keeping T+1 values).
    // SEPSTREAM_GROUP lanes share their windows: lane j of a group computes the numerators of
    // all G windows of the group for its own share of the library rows, so each library
    // value it loads serves G windows (the loads, not the arithmetic, bound this phase), and
    // the group's lanes then combine their partial maxima.
    constexpr int G = SEPSTREAM_GROUP;
    const int j = lane & (G - 1), g0 = lane - j;
    unsigned int* ex_bits = reinterpret_cast<unsigned int*>(wtile);  // [NT][32]
    F* ex_r = reinterpret_cast<F*>(ex_bits + 32 * NT);                // [2][32]: r, r^16
    F* ex_best = ex_r + 64;                                           // [32][G]
    __syncwarp();  // every lane is done with its pattern tables
#pragma unroll
    for (int k = 0; k < NT; ++k) ex_bits[32 * k + lane] = bits[k];
    ex_r[lane] = fexp(-lam);
    ex_r[32 + lane] = fexp(lam * (F)-16);
    __syncwarp();
    unsigned int gbits[G][NT];
    F gr[G], gr16[G], gp0[G], gsgn[G], sq[G], acc[G], best[G];
    unsigned int gb0[G];
#pragma unroll
    for (int q = 0; q < G; ++q) {
#pragma unroll
        for (int k = 0; k < NT; ++k) gbits[q][k] = ex_bits[32 * k + g0 + q];
        gr[q] = ex_r[g0 + q];
        gr16[q] = ex_r[32 + g0 + q];
        gb0[q] = gbits[q][0] & 1u;
        gp0[q] = gb0[q] ? (F)1 : (F)0;
        gsgn[q] = gb0[q] ? (F)-1 : (F)1;  // b_k − b_0 when b_k differs from b_0
        best[q] = (F)0;
        sq[q] = (F)0;
        acc[q] = (F)0;
    }
    for (int s0 = 0; s0 < lpad; s0 += G * SEPSTREAM_LB) {
        // This lane's rows of the superblock, interleaved in memory with the other group
        // positions' rows (see library_table) so one load instruction touches one line.
        const F* lrow = lib + s0;
        F libv[SEPSTREAM_LB], dot[G][SEPSTREAM_LB], pw[G], anc[G];
        load_lib<G>(lrow, j, libv);
#pragma unroll
        for (int q = 0; q < G; ++q) {
            acc[q] = (F)0;
            pw[q] = (F)1;
            anc[q] = (F)1;
            sq[q] = gp0[q] * gp0[q];
#pragma unroll
            for (int l = 0; l < SEPSTREAM_LB; ++l) dot[q][l] = gp0[q] * libv[l];
        }
#pragma unroll
        for (int kw = 0; kw < NT; ++kw) {
#pragma unroll
            for (int b = 0; b < 32; ++b) {
                const int k = 32 * kw + b;
                // Bits of all words but the last exist (T >= 32·(NT−1)): no test there.
                if (k >= 1 && (kw < NT - 1 || k <= t)) {
                    load_lib<G>(lrow + (long long)k * lpad, j, libv);
#pragma unroll
                    for (int q = 0; q < G; ++q) {
                        if (k % 16 == 0) {
                            anc[q] = anc[q] * gr16[q];
                            pw[q] = anc[q];
                        } else {
                            pw[q] = pw[q] * gr[q];
                        }
                        const F d = (((gbits[q][kw] >> b) & 1u) != gb0[q]) ? gsgn[q] : (F)0;
                        acc[q] = acc[q] + pw[q] * d;  // pw·d is exact: the reference's sum
                        sq[q] = sq[q] + acc[q] * acc[q];
#pragma unroll
                        for (int l = 0; l < SEPSTREAM_LB; ++l)
                            dot[q][l] = dot[q][l] + acc[q] * libv[l];
                    }
                }
            }
        }
#pragma unroll
        for (int q = 0; q < G; ++q) {
#pragma unroll
            for (int l = 0; l < SEPSTREAM_LB; ++l) best[q] = dot[q][l] > best[q] ? dot[q][l] : best[q];
        }
    }
    // The group's partial maxima for this lane's window (position j of the group).
#pragma unroll
    for (int q = 0; q < G; ++q) ex_best[(g0 + q) * G + j] = best[q];
    __syncwarp();
    F top = (F)0;
#pragma unroll
    for (int q = 0; q < G; ++q) top = ex_best[lane * G + q] > top ? ex_best[lane * G + q] : top;
    F norm2 = sq[0], value = acc[0];
#pragma unroll
    for (int q = 1; q < G; ++q) {
        norm2 = q == j ? sq[q] : norm2;
        value = q == j ? acc[q] : value;
    }
    // max_l(dot_l)·inv == max_l(dot_l·inv) because rounding is monotone and inv >= 0.
    const F norm = fsqrt(norm2);
    const F inv = norm > (F)0 ? (F)1 / (norm > ftiny(norm) ? norm : ftiny(norm)) : (F)0;
    const F confidence = clip(top * inv, (F)0, (F)1);
    if (!active) return;

    const long long i = wrow0 + lane;
    out[i] = h;
    out[ld + i] = (F)1.0 - h;
    out[2 * ld + i] = (F)1.0 - pr;
    out[3 * ld + i] = lam;
    out[4 * ld + i] = value;
    out[5 * ld + i] = confidence;
    iters[i] = it;
    conv_out[i] = conv ? 1 : 0;
    coll_out[i] = pr >= (F)0.30 ? 1 : 0;
}

}  // namespace sepstream
