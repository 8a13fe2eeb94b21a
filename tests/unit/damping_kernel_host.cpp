// Host build of kernels/damping_kernel.cu for tests/unit/test_damping_kernel_host.py: the
// kernel source is included unchanged behind cuda_host_shim.h, and one C entry point runs
// the instantiation the caller asks for over an emulated grid.
#include "cuda_host_shim.h"

#include SEPSTREAM_KERNEL_SOURCE

namespace {

template <typename X, typename F, int NT>
void launch(const void* closes, long long n, int w, const void* lib, int lpad, void* out,
            long long ld, int* iters, unsigned char* conv, unsigned char* coll, int* bad) {
    const long long grid = (n + SEPSTREAM_BLOCK - 1) / SEPSTREAM_BLOCK;
    sepstream_run_grid(grid, SEPSTREAM_BLOCK, [&] {
        sepstream::damp_windows<X, F, NT>(static_cast<const X*>(closes), n, w,
                                          static_cast<const F*>(lib), lpad, static_cast<F*>(out),
                                          ld, iters, conv, coll, bad);
    });
}

template <typename X, typename F>
int dispatch(int nt, const void* closes, long long n, int w, const void* lib, int lpad, void* out,
             long long ld, int* iters, unsigned char* conv, unsigned char* coll, int* bad) {
    switch (nt) {
        case 1: launch<X, F, 1>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 2: launch<X, F, 2>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 3: launch<X, F, 3>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 4: launch<X, F, 4>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 5: launch<X, F, 5>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 6: launch<X, F, 6>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 7: launch<X, F, 7>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        case 8: launch<X, F, 8>(closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad); break;
        default: return -1;
    }
    return 0;
}

}  // namespace

// x64/f64: 1 for double, 0 for float.  Returns 0, or -1 for an unsupported word count.
extern "C" int sepstream_damp_host(int x64, int f64, int nt, const void* closes, long long n,
                                   int w, const void* lib, int lpad, void* out, long long ld,
                                   int* iters, unsigned char* conv, unsigned char* coll,
                                   int* bad) {
    if (x64 && f64)
        return dispatch<double, double>(nt, closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad);
    if (x64)
        return dispatch<double, float>(nt, closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad);
    if (f64)
        return dispatch<float, double>(nt, closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad);
    return dispatch<float, float>(nt, closes, n, w, lib, lpad, out, ld, iters, conv, coll, bad);
}
