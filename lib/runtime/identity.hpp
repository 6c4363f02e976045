// This process's answer to pf::this_replica() (include/procflow/replica.hpp): set by a replica
// when it starts (before its stage instances are built, so factories see it), by the supervisor
// for a sink or collect running in the caller's process, and updated as the replica moves from
// stage to stage. In thread mode a worker thread takes on the identity of the stage instance it
// runs (ThreadIdentityScope), with replica engines of that instance's own.
#pragma once

#include <procflow/pipeline.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

namespace procflow::metrics {
struct UserCounterTable;
}

namespace procflow::runtime {

struct Identity {
  const detail::pipeline_def* def = nullptr;  // null: not in a run
  std::size_t stage = 0;
  std::uint32_t index = 0;
  std::uint32_t replicas = 1;  // the count the group started with
  // A scalable group fed by a ring: its consumers' membership mask (the scheduler's current
  // count is the number of bits set within `lanes`); null otherwise.
  const std::atomic<std::uint64_t>* active = nullptr;
  std::uint64_t lanes = 0;
  std::uint64_t run_seed = 0;
  bool in_supervisor = false;
};

// The identity of this process. Setting it forgets the replica engines made so far (a forked
// replica must not continue its parent's streams).
const Identity& identity() noexcept;
void set_identity(const Identity& id) noexcept;
void clear_identity() noexcept;
// The stage running now (Replica::set_stage; cheap enough to call per batch).
void set_identity_stage(std::size_t stage) noexcept;

// Thread mode: one stage instance's identity and its replica engines (one per stage, made on
// first use), worn by whichever worker thread runs the instance now.
struct ThreadIdentity {
  Identity id;
  std::vector<std::unique_ptr<std::mt19937_64>> engines;
  metrics::UserCounterTable* counters = nullptr;  // pf::counter() in code of this instance
};

// The thread identity the calling thread wears now (null: it answers as the process).
ThreadIdentity* worn_thread_identity() noexcept;

// Makes the calling thread answer as `t` (identity(), this_replica(), replica_engine()) until
// destroyed; scopes nest.
class ThreadIdentityScope {
 public:
  explicit ThreadIdentityScope(ThreadIdentity& t) noexcept;
  ~ThreadIdentityScope();
  ThreadIdentityScope(const ThreadIdentityScope&) = delete;
  ThreadIdentityScope& operator=(const ThreadIdentityScope&) = delete;

 private:
  ThreadIdentity* saved_;
};

// The seed of replica `index` of stage `stage` in a run seeded with `run_seed`.
std::uint64_t replica_seed(std::uint64_t run_seed, std::size_t stage, std::uint32_t index) noexcept;

}  // namespace procflow::runtime
