// Just enough of CUDA to compile kernels/damping_kernel.cu with g++ and run it on the CPU, so
// the kernel's own source is tested where there is no GPU.  A grid is run block after block;
// a block's threads are real std::threads (so __syncwarp is a real barrier and __shared__
// arrays, static here, are shared by them), one per CUDA thread.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct sepstream_dim3 {
    unsigned int x = 0, y = 0, z = 0;
};

inline thread_local sepstream_dim3 threadIdx;
inline thread_local sepstream_dim3 blockIdx;
inline std::barrier<>* sepstream_block_barrier = nullptr;

// Every thread of a block reaches each __syncwarp of the kernel the same number of times, so
// a block-wide barrier is a valid (stronger) stand-in for it.
inline void __syncwarp() { sepstream_block_barrier->arrive_and_wait(); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int atomicOr(int* p, int v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }

struct double2 {
    double x, y;
};
struct float4 {
    float x, y, z, w;
};

template <typename T>
inline T __ldg(const T* p) {
    return *p;
}

// Run `body` as `grid` blocks of `block` threads, one block at a time.
inline void sepstream_run_grid(long long grid, int block, const std::function<void()>& body) {
    std::barrier<> sync(block);
    sepstream_block_barrier = &sync;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (int t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx.x = static_cast<unsigned int>(t);
            for (long long b = 0; b < grid; ++b) {
                blockIdx.x = static_cast<unsigned int>(b);
                body();
                sync.arrive_and_wait();  // the next block reuses the shared arrays
            }
        });
    }
    for (auto& th : threads) th.join();
    sepstream_block_barrier = nullptr;
}
