// Flusher: a thread beside a producer that publishes its partly filled slots once they are older
// than the latency bound, so a slow stream flows even while the producer's user code sleeps
// (a generator waiting on a socket never returns to publish anything itself).
//
// The port's write cursor belongs to the producer thread. The flusher touches the Outbox only
// while the producer is inside user code, claimed through the port's flush_gate (see port.hpp
// and the handshake in flusher.cpp). It ticks every bound/2. When the producer published a slot
// since the last tick (full rate), it does nothing more. Otherwise it claims the port and
// publishes the open slots if they already held items at the previous tick (or a slot was
// published just before it, whose successor may be as old): an item waits at most about one
// bound, and a stream that fills its slots within a tick never pays more than the wake-up.
#pragma once

#include "channel/outbox.hpp"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

namespace procflow::channel {

class Flusher {
 public:
  // Starts the thread. Call from the producer thread, before it writes through `outbox`.
  Flusher(Outbox& outbox, std::chrono::nanoseconds bound);
  // Stops and joins the thread (the Outbox outlives it).
  ~Flusher();
  Flusher(const Flusher&) = delete;
  Flusher& operator=(const Flusher&) = delete;

  // Slots the flusher published (process-local; read after the destructor or for reports).
  std::uint64_t flushes() const noexcept { return flushes_.load(std::memory_order_relaxed); }

 private:
  void run();
  void tick();

  Outbox& outbox_;
  std::chrono::nanoseconds period_;
  std::mutex mutex_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // guarded by mutex_
  // Flusher-thread state: what the last claimed tick saw.
  std::uint64_t last_published_ = 0;
  bool last_pending_ = false;
  // Relaxed: a statistic, read by tests after join.
  std::atomic<std::uint64_t> flushes_{0};
  std::thread thread_;
};

// Registers this process for membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED); false if the kernel
// refuses (the gate then uses full fences on both sides).
bool register_asymmetric_barrier() noexcept;

}  // namespace procflow::channel
