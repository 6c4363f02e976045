// Membership: which consumer replicas of a Channel receive new batches, changed while the
// pipeline runs (the scheduler starts and retires replicas), and which producers have seen it.
//
//   supervisor:  active = new mask (relaxed); epoch += 1 (release)               -- publish
//   producer p:  e = epoch (acquire); mask = active; publish any slot still open on a lane that
//                left; ack[p] = e (release)                                       -- once per slot picked
//   retiring q:  for every p: ack[p] >= E (acquire) or ring(p,q) closed; then ring(p,q) empty
//                => nothing can arrive any more: q may exit.
//
// A producer slot not started yet holds ack = never_started: it will read the newest mask before
// its first slot, so it can never write to a lane that left before it started. The supervisor
// stores 0 (nothing acknowledged yet) into a slot's ack just before it forks that producer.
#pragma once

#include "shm/segment.hpp"

#include <atomic>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace procflow::channel {

inline constexpr std::uint32_t max_masked_lanes = 64;  // lanes beyond this are always active

struct alignas(shm::cache_line) MembershipShared {
  // Bumped by the supervisor after it stored `active`. SYNC POINT (release) pairs with the
  // producers' acquire load in Outbox::refresh_membership(), which then reads `active`.
  std::atomic<std::uint64_t> epoch;
  // Bit q: consumer q gets new batches. Relaxed: published by the epoch store that follows it.
  std::atomic<std::uint64_t> active;
};
static_assert(std::is_standard_layout_v<MembershipShared> && std::atomic<std::uint64_t>::is_always_lock_free);

struct alignas(shm::cache_line) MembershipAck {
  static constexpr std::uint64_t never_started = std::numeric_limits<std::uint64_t>::max();
  // The membership epoch producer p applied last. SYNC POINT (release, by the producer) after it
  // published every slot it will ever send to a lane that left; pairs with the acquire load in
  // Inbox::try_retire().
  std::atomic<std::uint64_t> epoch;
};
static_assert(std::is_standard_layout_v<MembershipAck> && sizeof(MembershipAck) == shm::cache_line);

// Supervisor side: sets the active lanes and returns the new epoch.
inline std::uint64_t publish_membership(MembershipShared& m, std::uint64_t active) noexcept {
  m.active.store(active, std::memory_order_relaxed);  // published by the release below
  return m.epoch.fetch_add(1, std::memory_order_release) + 1;
}

inline std::uint64_t lane_mask(std::uint32_t lanes) noexcept {
  return lanes >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << lanes) - 1;
}

}  // namespace procflow::channel
