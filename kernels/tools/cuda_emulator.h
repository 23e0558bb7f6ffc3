// Host emulation of the CUDA C that gpuconv's kernels use, so their logic runs in tests without a GPU
// (kernels/tools/cuda_emulator.py builds each module with g++ -include this header).
//
// Blocks run one after another; the threads of a block are real threads, so __syncthreads is a real
// barrier and shared memory (function statics: one block at a time) is really shared. A thread that
// leaves the kernel while others wait at __syncthreads (a divergent barrier, a hang or worse on a
// GPU) stops the launch with an error instead of deadlocking.
#pragma once
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 { unsigned x = 1, y = 1, z = 1; };

namespace gpuconv_emulator {

struct Divergence {};

class BlockBarrier {
  public:
    explicit BlockBarrier(int threads) : threads_(threads) {}

    void sync_threads()  // __syncthreads
    {
        std::unique_lock<std::mutex> lock(mutex_);
        if (finished_ > 0) diverge();
        if (diverged_) throw Divergence();
        const long generation = generation_;
        if (++arrived_ == threads_) return release();
        changed_.wait(lock, [&] { return generation_ != generation || diverged_; });
        if (diverged_) throw Divergence();
    }

    bool end_block()  // a thread finished this block; false once the launch has diverged
    {
        std::unique_lock<std::mutex> lock(mutex_);
        if (arrived_ > 0) diverge();
        if (diverged_) return false;
        const long generation = generation_;
        if (++finished_ == threads_) {
            finished_ = 0;
            release();
            return true;
        }
        changed_.wait(lock, [&] { return generation_ != generation || diverged_; });
        return !diverged_;
    }

    void abandon()  // the thread stops early (divergence seen elsewhere)
    {
        std::lock_guard<std::mutex> lock(mutex_);
        diverge();
    }

    bool diverged() const { return diverged_; }

  private:
    void release()
    {
        arrived_ = 0;
        ++generation_;
        changed_.notify_all();
    }
    void diverge()
    {
        diverged_ = true;
        changed_.notify_all();
    }

    std::mutex mutex_;
    std::condition_variable changed_;
    const int threads_;
    int arrived_ = 0, finished_ = 0;
    long generation_ = 0;
    bool diverged_ = false;
};

inline thread_local dim3 thread_index, block_index;
inline thread_local BlockBarrier* barrier = nullptr;
inline dim3 block_dim, grid_dim;
inline std::mutex one_launch_at_a_time;

// Run `kernel` over grid x block threads; 0 on success, 1 if a barrier diverged.
inline int launch(unsigned grid, unsigned block, const std::function<void()>& kernel)
{
    std::lock_guard<std::mutex> lock(one_launch_at_a_time);
    block_dim = dim3{block, 1, 1};
    grid_dim = dim3{grid, 1, 1};
    BlockBarrier shared_barrier(static_cast<int>(block));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t)
        threads.emplace_back([&, t] {
            thread_index = dim3{t, 1, 1};
            barrier = &shared_barrier;
            for (unsigned b = 0; b < grid; ++b) {
                block_index = dim3{b, 1, 1};
                try {
                    kernel();
                } catch (Divergence&) {
                    shared_barrier.abandon();
                    return;
                }
                if (!shared_barrier.end_block()) return;
            }
        });
    for (auto& thread : threads) thread.join();
    return shared_barrier.diverged() ? 1 : 0;
}

}  // namespace gpuconv_emulator

#define threadIdx (gpuconv_emulator::thread_index)
#define blockIdx (gpuconv_emulator::block_index)
#define blockDim (gpuconv_emulator::block_dim)
#define gridDim (gpuconv_emulator::grid_dim)
#define __syncthreads() (gpuconv_emulator::barrier->sync_threads())
using std::max;
using std::min;
