#include "channel/flusher.hpp"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace procflow::channel {

namespace {

long membarrier(int cmd) noexcept { return ::syscall(__NR_membarrier, cmd, 0u, 0); }

// The flusher's half of the handshake's store-load barrier: a full fence on every CPU running
// a thread of this process (the producer's included), or a plain full fence when the producer
// fences too.
void heavy_barrier(bool asymmetric) noexcept {
  if (asymmetric && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return;
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace

bool register_asymmetric_barrier() noexcept {
  const long supported = membarrier(MEMBARRIER_CMD_QUERY);
  if (supported < 0 || !(supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) return false;
  return membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
}

Flusher::Flusher(Outbox& outbox, std::chrono::nanoseconds bound)
    : outbox_(outbox), period_(std::max<std::chrono::nanoseconds>(bound / 2, std::chrono::microseconds(50))) {
  // Written before the thread starts (thread creation orders it) and before the producer's next
  // leave_user(), which runs on this same thread.
  outbox_.gate().asymmetric = register_asymmetric_barrier();
  thread_ = std::thread([this] { run(); });
}

Flusher::~Flusher() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  stop_cv_.notify_one();
  thread_.join();
}

void Flusher::run() {
  std::unique_lock lock(mutex_);
  while (!stop_) {
    if (stop_cv_.wait_for(lock, period_, [this] { return stop_; })) break;
    lock.unlock();
    tick();
    lock.lock();
  }
}

// The handshake (store buffering with one heavy side):
//   producer leaving user code:  in_user = 0;  barrier (light);  r1 = flusher_owns
//   flusher claiming:            flusher_owns = 1;  barrier (heavy);  r2 = in_user
// The barriers forbid r1 == 0 && r2 == 1 (both reading the older value): either the producer
// sees our claim and waits in leave_user() until we release it, or we see it left user code and
// keep our hands off. A producer that enters user code again while we hold the claim only
// stores in_user = 1 (its release makes its cursor writes visible to our acquire load).
void Flusher::tick() {
  detail::flush_gate& gate = outbox_.gate();
  // Relaxed: a progress hint (see flush_gate::published).
  const std::uint64_t published = gate.published.load(std::memory_order_relaxed);
  if (published != last_published_) {
    // The producer publishes by itself. What it has open now may date from just after its
    // last publish: if it is still there at the next tick, it is old enough to go.
    last_published_ = published;
    last_pending_ = true;
    return;
  }
  // Relaxed: only a hint, to skip the barrier while the producer is in our own code.
  if (gate.in_user.load(std::memory_order_relaxed) == 0) return;
  gate.flusher_owns.store(1, std::memory_order_relaxed);
  heavy_barrier(gate.asymmetric);
  // SYNC POINT (acquire): pairs with enter_user()'s release store.
  if (gate.in_user.load(std::memory_order_acquire) == 1) {
    // The Outbox is ours until we release the gate.
    const bool pending = outbox_.has_pending();
    if (pending && last_pending_) {
      outbox_.flush();
      flushes_.fetch_add(1, std::memory_order_relaxed);
      last_published_ = outbox_.stats().slots;  // our own publishing is no sign of progress
      last_pending_ = false;
    } else {
      last_pending_ = pending;
    }
  }
  // SYNC POINT (release): what we published is visible to the producer's acquire in leave_user().
  gate.flusher_owns.store(0, std::memory_order_release);
}

}  // namespace procflow::channel
