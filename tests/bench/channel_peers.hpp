// Peer IPC implementations for procflow's channel benchmark: what it costs to move a stream of
// 8-byte items from one process to another without procflow.
//
// Every transfer peer moves the uint64 values 0, 1, ..., items-1 from a fork()ed producer process
// to a fork()ed consumer process. The consumer checks that it received exactly that sequence (each
// value equal to its position, and exactly `items` of them); on any mismatch it prints why to
// stderr and the whole benchmark exits with status 1, so a broken transfer can never be reported
// as a throughput figure.
//
// Common rules:
//  * Shared memory is anonymous (mmap MAP_SHARED | MAP_ANONYMOUS before fork), so nothing is left
//    in /dev/shm. The one named object (the boost message_queue) is unlinked right after creation.
//  * Both children are reaped before a function returns. If one child fails, the other (which may
//    be waiting forever for its dead peer) is killed and reaped, then the process exits(1).
//    Children also get PR_SET_PDEATHSIG, so they die with the calling thread if it dies.
//  * Timing: the children set up (pin, allocate), check in, and wait for a common "go" that the
//    parent gives after reading the clock. The measured interval runs from that reading to the
//    moment the consumer has verified the last item, so fork, setup and teardown are excluded.
//  * CPU times are the whole-lifetime user+system times of each child (wait4 rusage); they include
//    the short wait for "go".
#pragma once

#include <cstddef>
#include <cstdint>

namespace bench::peers {

struct TransferResult {
  double items_per_s = 0;     // items / (go -> consumer has verified the last item)
  double producer_cpu_s = 0;  // user + system CPU of the producer process
  double consumer_cpu_s = 0;  // user + system CPU of the consumer process
};

// Reference: the minimal hand-written single-producer/single-consumer ring in shared memory.
// Both sides spin (pause instruction, then sched_yield after ~1000 spins); no syscalls on the data
// path. head and tail live on separate cache lines and each side caches the other's index.
// `ring_bytes` must be a power-of-two multiple of 8 (>= 16): the ring holds ring_bytes / 8 items.
// The producer writes `batch_items` items (clamped to [1, capacity]) per publication of tail;
// batch_items == 1 means "one item per push". The consumer drains everything published, then
// publishes head. If `pin`, the producer runs on CPU 0 and the consumer on CPU 1 (silently skipped
// if that is not possible). Throws std::invalid_argument for a bad ring_bytes.
TransferResult minimal_ring(uint64_t items, std::size_t ring_bytes, std::size_t batch_items, bool pin);

// boost::interprocess::message_queue, one 8-byte item per message, 1024 messages deep.
TransferResult message_queue(uint64_t items);

// pipe(2); the producer writes batch_items * 8 bytes per write() (512 items = 4 KiB = PIPE_BUF).
// The consumer reads with a 64 KiB buffer and handles reads that end mid-item.
TransferResult pipe_batched(uint64_t items, std::size_t batch_items);

// pipe(2) with one 8-byte write() per item. The consumer is the same as pipe_batched's (it drains
// whatever is in the pipe per read), so only the producer side is "per item".
TransferResult pipe_per_item(uint64_t items);

// Sleep/wake hand-off cost ("slow consumer" comparison): two processes alternately wake each
// other `round_trips` times; one round trip = A wakes B, then B wakes A. Returns round trips/s.
//  * semaphore_pingpong: two boost::interprocess::interprocess_semaphore (process-shared POSIX
//    semaphores on Linux) in anonymous shared memory.
//  * futex_pingpong: a raw Linux futex (FUTEX_WAIT / FUTEX_WAKE, shared, i.e. without
//    FUTEX_PRIVATE_FLAG) on one shared 32-bit word saying whose turn it is.
double semaphore_pingpong(uint64_t round_trips);
double futex_pingpong(uint64_t round_trips);

}  // namespace bench::peers

#include <functional>

namespace bench::peers {

// The same timing harness for any transport under test (procflow's channel uses it): forks
// `producer` and `consumer`, each receiving the hooks; both call go() once set up, and the
// consumer calls done() after verifying the last item. Returns items / (go -> done).
struct TransferHooks {
  std::function<void()> go;
  std::function<void()> done;
};
TransferResult timed_transfer(uint64_t items, const std::function<int(const TransferHooks&)>& producer,
                              const std::function<int(const TransferHooks&)>& consumer);

}  // namespace bench::peers
