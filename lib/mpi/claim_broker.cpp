#include "mpi/claim_broker.hpp"

#include "runtime/cancel_state.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <array>
#include <cstring>
#include <ctime>
#include <deque>

namespace procflow::mpi_detail {

namespace {

enum tag : int { claim = 1, grant = 2, status = 3, outcome = 4, data = 5, credit = 6, end = 7, alive = 8 };

using Clock = std::chrono::steady_clock;

struct MpiFailure {
  std::string what;
};

}  // namespace

ClaimBroker::ClaimBroker(MPI_Comm comm, ChunkTable* table, std::uint64_t total_chunks, std::uint32_t claim_chunks,
                         std::function<void()> stop_local, const detail::cancel_state* user_cancel,
                         std::chrono::milliseconds silence_limit)
    : comm_(comm), table_(table), total_chunks_(total_chunks), claim_chunks_(std::max<std::uint32_t>(claim_chunks, 1)),
      stop_local_(std::move(stop_local)), user_cancel_(user_cancel),
      silence_limit_(std::max(silence_limit, std::chrono::milliseconds(1))),
      heartbeat_(std::min<Clock::duration>(silence_limit_ / 4, std::chrono::seconds(1))) {
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
  lost_.assign(static_cast<std::size_t>(size_), false);
}

ClaimBroker::~ClaimBroker() {
  if (thread_.joinable()) thread_.join();  // join() was not reached (an exception): local_finished was
}

void ClaimBroker::start() {
  thread_ = std::thread([this] {
    try {
      if (rank_ == 0) {
        run_root();
      } else {
        run_member();
      }
    } catch (const MpiFailure& f) {
      mpi_failure_ = f.what;
      stop_local_();  // nothing more can be claimed or reported: end the local run too
    }
  });
}

void ClaimBroker::local_finished(RankStatus status) {
  {
    const std::lock_guard lock(mutex_);
    local_status_ = std::move(status);
  }
  // SYNC POINT (release): local_status_ is set before the broker sees the flag (acquire below).
  local_done_.store(true, std::memory_order_release);
}

RankStatus ClaimBroker::join() {
  thread_.join();
  if (!mpi_failure_.empty()) throw procflow::error("procflow::mpi: " + mpi_failure_);
  return outcome_;
}

void ClaimBroker::check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw MpiFailure{fmt::format("rank {}: {} failed: {}", rank_, what, std::string(text, static_cast<std::size_t>(std::max(length, 0))))};
}

// Idle polling: spin a few rounds, then sleep 20 us growing to 200 us, so that a rank's claims are
// answered within a fraction of a millisecond without the broker taking a core from the replicas.
void ClaimBroker::pause(int& idle_rounds) {
  ++idle_rounds;
  if (idle_rounds < 16) return;
  const long ns = std::min<long>(20'000L * (idle_rounds / 16), 200'000L);
  timespec ts{0, ns};
  ::nanosleep(&ts, nullptr);
}

void ClaimBroker::send(int to, int message_tag, std::vector<std::byte> bytes) {
  PendingSend s{MPI_REQUEST_NULL, std::make_unique<std::vector<std::byte>>(std::move(bytes)), to};
  check(MPI_Isend(s.bytes->data(), static_cast<int>(s.bytes->size()), MPI_BYTE, to, message_tag, comm_, &s.request), "MPI_Isend");
  ++traffic_.messages;
  traffic_.bytes += s.bytes->size();
  sends_.push_back(std::move(s));
}

// True when every send has completed, but those to a lost rank (never awaited: it may not read).
bool ClaimBroker::poll_sends() {
  bool done_all = true;
  for (auto it = sends_.begin(); it != sends_.end();) {
    int done = 0;
    check(MPI_Test(&it->request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done && !lost_[static_cast<std::size_t>(it->to)]) done_all = false;
    it = done ? sends_.erase(it) : it + 1;
  }
  return done_all;
}

// Leaving with sends to a lost rank outstanding: their requests are freed and their buffers kept
// (MPI may still read them until the job ends, which a lost rank's job does soon: see "Silence").
void ClaimBroker::abandon_sends() {
  for (PendingSend& s : sends_) {
    MPI_Request_free(&s.request);
    (void)s.bytes.release();  // deliberately leaked: still MPI's to read
  }
  sends_.clear();
}

RankStatus ClaimBroker::lost_status(int rank, const char* side) const {
  RankStatus s;
  s.kind = RankStatus::state::lost;
  s.rank = rank;
  s.failure.kind = stage_error::cause::lost;
  s.failure.in_supervisor = true;
  s.failure.replica = stage_error::no_replica;
  s.failure.message = fmt::format(
      "{} nothing from it for {:.1f} s (the silence limit): the rank is stopped, hung or cut off. The MPI job cannot go on; "
      "procflow::mpi::environment aborts it (MPI_Abort) instead of finalizing",
      side, std::chrono::duration<double>(silence_limit_).count());
  return s;
}

namespace {

std::vector<std::byte> u64_pair(std::uint64_t a, std::uint64_t b) {
  std::vector<std::byte> out(16);
  std::memcpy(out.data(), &a, 8);
  std::memcpy(out.data() + 8, &b, 8);
  return out;
}

}  // namespace

// Rank 0 keeps its own table ahead of its replicas straight from the counter.
void ClaimBroker::grant_locally() {
  if (!table_ || exhausted_) return;
  const std::uint64_t granted = table_->granted();
  if (granted >= table_->capacity() || granted >= table_->wanted() + 2 * claim_chunks_) return;
  const std::uint64_t count = std::min<std::uint64_t>(claim_chunks_, total_chunks_ - next_chunk_);
  if (count == 0) {
    table_->close();
    exhausted_ = true;
    return;
  }
  table_->append(next_chunk_, count);
  next_chunk_ += count;
}

void ClaimBroker::run_root() {
  std::vector<std::optional<RankStatus>> statuses(static_cast<std::size_t>(size_));
  // One credit per receive a rank has posted (it announces each one by CREDIT after posting it):
  // none before, so a batch never reaches a rank before its receive (see the invariant above).
  std::vector<std::uint64_t> credits(static_cast<std::size_t>(size_), 0);
  std::vector<std::uint64_t> batches_sent(static_cast<std::size_t>(size_), 0);
  bool end_sent = false;
  int reported = 0;
  bool outcome_sent = false;
  bool local_recorded = false;
  int idle = 0;
  const Clock::time_point started = Clock::now();
  std::vector<Clock::time_point> heard(static_cast<std::size_t>(size_), started);
  Clock::time_point alive_sent = started;
  const auto on_status = [&](int from, RankStatus s) {
    if (statuses[static_cast<std::size_t>(from)]) return;
    statuses[static_cast<std::size_t>(from)] = std::move(s);
    ++reported;
    const RankStatus& got = *statuses[static_cast<std::size_t>(from)];
    const bool failure = got.kind == RankStatus::state::failed || got.kind == RankStatus::state::lost;
    if (failure && (!outcome_sent || (got.kind == RankStatus::state::lost && outcome_.kind != RankStatus::state::lost))) {
      // A lost rank overrides an earlier failure's outcome: every rank must learn that the job
      // cannot go on. A rank already told of the failure reads this second OUTCOME while it waits
      // for rank 0's GRANT or END, and leaves without them (rank 0 leaves at once, below).
      outcome_ = got;
      for (int r = 1; r < size_; ++r) send(r, outcome, encode_status(outcome_));
      outcome_sent = true;
      if (!local_done_.load(std::memory_order_acquire)) stop_local_();
    }
  };
  // Heartbeats to the ranks not yet told the outcome; a rank silent for the limit before its
  // STATUS is lost.
  const auto watch = [&] {
    const Clock::time_point now = Clock::now();
    if (!outcome_sent && now - alive_sent >= heartbeat_) {
      for (int r = 1; r < size_; ++r)
        if (!lost_[static_cast<std::size_t>(r)]) send(r, alive, {});
      alive_sent = now;
    }
    for (int r = 1; r < size_; ++r) {
      const auto i = static_cast<std::size_t>(r);
      if (statuses[i] || now - heard[i] < silence_limit_) continue;
      lost_[i] = true;
      credits[i] = 0;
      on_status(r, lost_status(r, "rank 0 heard"));
    }
  };
  for (;;) {
    bool busy = false;
    if (user_cancel_ && user_cancel_->requested.load(std::memory_order_relaxed) != 0) stop_local_();
    const std::uint64_t before = table_ ? table_->granted() : 0;
    grant_locally();
    if (table_ && table_->granted() != before) busy = true;
    if (!local_recorded && local_done_.load(std::memory_order_acquire)) {
      RankStatus mine;
      {
        const std::lock_guard lock(mutex_);
        mine = *local_status_;
      }
      mine.rank = 0;
      local_recorded = true;
      on_status(0, std::move(mine));
      busy = true;
    }
    // The stage boundary: each queued batch to the rank holding most credits.
    const bool failing = outcome_sent && outcome_.kind == RankStatus::state::failed;
    if (exports_ && !failing) {
      for (;;) {
        int best = 0;
        for (int r = 1; r < size_; ++r)
          if (credits[static_cast<std::size_t>(r)] > credits[static_cast<std::size_t>(best)]) best = r;
        if (best == 0) break;  // no credit anywhere
        auto message = exports_->try_pop();
        if (!message) break;
        --credits[static_cast<std::size_t>(best)];
        ++batches_sent[static_cast<std::size_t>(best)];
        ++traffic_.data_messages;
        traffic_.data_bytes += message->size();
        send(best, data, std::move(*message));
        busy = true;
      }
    }
    // END (how many batches went to the rank) once no more will: the stream ended, or the job is
    // failing. Sent in both cases: a rank leaves only when every batch sent to it has arrived.
    if (exports_ && !end_sent && (failing || exports_->finished_and_empty())) {
      for (int r = 1; r < size_; ++r) send(r, end, u64_pair(batches_sent[static_cast<std::size_t>(r)], 0));
      end_sent = true;
      busy = true;
    }
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe");
    if (flag) {
      busy = true;
      int count = 0;
      check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
      std::vector<std::byte> bytes(static_cast<std::size_t>(std::max(count, 0)));
      check(MPI_Recv(bytes.data(), count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
      heard[static_cast<std::size_t>(st.MPI_SOURCE)] = Clock::now();
      if (lost_[static_cast<std::size_t>(st.MPI_SOURCE)]) {
        // Too late: the job already ended for this rank. Read and dropped.
      } else if (st.MPI_TAG == alive) {
      } else if (st.MPI_TAG == claim && bytes.size() == 8) {
        std::uint64_t wanted = 0;
        std::memcpy(&wanted, bytes.data(), 8);
        const std::uint64_t count_granted = std::min<std::uint64_t>(std::max<std::uint64_t>(wanted, 1), total_chunks_ - next_chunk_);
        send(st.MPI_SOURCE, grant, u64_pair(next_chunk_, count_granted));
        next_chunk_ += count_granted;
      } else if (st.MPI_TAG == credit && bytes.size() == 8) {
        std::uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        credits[static_cast<std::size_t>(st.MPI_SOURCE)] += n;
      } else if (st.MPI_TAG == status) {
        RankStatus s;
        try {
          s = decode_status(bytes);
        } catch (const std::exception& e) {
          s.kind = RankStatus::state::failed;
          s.failure.message = fmt::format("its status message could not be decoded ({})", e.what());
        }
        s.rank = st.MPI_SOURCE;
        on_status(st.MPI_SOURCE, std::move(s));
      } else {
        throw MpiFailure{fmt::format("rank 0: unexpected message (tag {}, {} bytes) from rank {}", st.MPI_TAG, count, st.MPI_SOURCE)};
      }
    }
    watch();
    if (outcome_sent && outcome_.kind == RankStatus::state::lost) {
      // The job cannot go on: the other ranks leave on this OUTCOME without their STATUS, and
      // nothing still on its way here will be read. The OUTCOME goes out first (sends progress
      // only inside MPI calls), for at most a heartbeat in case another rank is silent too.
      const Clock::time_point until = Clock::now() + heartbeat_;
      while (!poll_sends() && Clock::now() < until) pause(idle);
      abandon_sends();
      return;
    }
    if (reported == size_ && !outcome_sent) {
      outcome_ = RankStatus{};  // every rank succeeded (a failure would have been sent already)
      for (int r = 1; r < size_; ++r) send(r, outcome, encode_status(outcome_));
      outcome_sent = true;
    }
    const bool sends_done = poll_sends();
    // Every rank's STATUS is its last message, so with all of them in, nothing else from any rank
    // is still on its way here.
    if (reported == size_ && outcome_sent && sends_done && (!exports_ || end_sent)) return;
    if (busy) {
      idle = 0;
    } else {
      pause(idle);
    }
  }
}

void ClaimBroker::run_member() {
  struct PostedReceive {
    MPI_Request request;
    std::uint64_t batch;
    std::uint32_t slot;
  };
  std::deque<PostedReceive> posted;  // in batch order
  std::uint64_t next_post = 0;        // the batch the next posted receive is for
  std::uint64_t received = 0;
  std::uint64_t credit_pending = 0;
  std::optional<std::uint64_t> total;  // batches in all (END)
  bool total_published = false;
  bool claim_outstanding = false;
  std::chrono::steady_clock::time_point claim_sent;
  bool status_sent = false;
  bool outcome_received = false;
  int idle = 0;
  Clock::time_point heard = Clock::now();  // from rank 0
  Clock::time_point alive_sent = heard;
  // Rank 0 lost: leave now, the receives cancelled (their buffers go with this run) and the
  // sends abandoned.
  const auto leave_lost = [&] {
    for (PostedReceive& p : posted) {
      MPI_Cancel(&p.request);
      MPI_Wait(&p.request, MPI_STATUS_IGNORE);
    }
    abandon_sends();
  };
  for (;;) {
    bool busy = false;
    if (user_cancel_ && user_cancel_->requested.load(std::memory_order_relaxed) != 0) stop_local_();
    const Clock::time_point now = Clock::now();
    if (!outcome_received && now - heard >= silence_limit_) {
      outcome_ = lost_status(0, "this rank heard");
      if (!local_done_.load(std::memory_order_acquire)) stop_local_();
      leave_lost();
      return;
    }
    // Also after a failure's OUTCOME, while this rank's run stops: until STATUS (nothing after it).
    if (!status_sent && now - alive_sent >= heartbeat_) {
      send(0, alive, {});
      alive_sent = now;
    }
    // No CLAIM after STATUS (STATUS is this rank's last message: rank 0 leaves once it has every
    // rank's, and a CLAIM it never reads would leave this rank waiting for its GRANT).
    if (table_ && !exhausted_ && !claim_outstanding && !outcome_received && !status_sent) {
      const std::uint64_t granted = table_->granted();
      if (granted < table_->capacity() && granted < table_->wanted() + 2 * claim_chunks_) {
        std::vector<std::byte> bytes(8);
        const std::uint64_t k = claim_chunks_;
        std::memcpy(bytes.data(), &k, 8);
        send(0, claim, std::move(bytes));
        claim_outstanding = true;
        claim_sent = std::chrono::steady_clock::now();
        ++traffic_.claims;
        busy = true;
      }
    }
    if (!status_sent && local_done_.load(std::memory_order_acquire)) {
      RankStatus mine;
      {
        const std::lock_guard lock(mutex_);
        mine = *local_status_;
      }
      mine.rank = rank_;
      send(0, status, encode_status(mine));
      status_sent = true;
      busy = true;
    }
    int flag = 0;
    MPI_Status st;
    check(MPI_Iprobe(0, MPI_ANY_TAG, comm_, &flag, &st), "MPI_Iprobe");
    if (flag) {
      busy = true;
      int count = 0;
      check(MPI_Get_count(&st, MPI_BYTE, &count), "MPI_Get_count");
      std::vector<std::byte> bytes(static_cast<std::size_t>(std::max(count, 0)));
      check(MPI_Recv(bytes.data(), count, MPI_BYTE, 0, st.MPI_TAG, comm_, MPI_STATUS_IGNORE), "MPI_Recv");
      heard = Clock::now();
      if (st.MPI_TAG == alive) {
      } else if (st.MPI_TAG == grant && bytes.size() == 16) {
        std::uint64_t first = 0;
        std::uint64_t n = 0;
        std::memcpy(&first, bytes.data(), 8);
        std::memcpy(&n, bytes.data() + 8, 8);
        claim_outstanding = false;
        traffic_.claim_wait_ns += static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - claim_sent).count());
        if (n == 0) {
          table_->close();
          exhausted_ = true;
        } else {
          table_->append(first, n);
        }
      } else if (st.MPI_TAG == end && bytes.size() == 16) {
        std::uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        total = n;
      } else if (st.MPI_TAG == outcome) {
        try {
          outcome_ = decode_status(bytes);
        } catch (const std::exception& e) {
          throw MpiFailure{fmt::format("rank {}: the job's outcome could not be decoded ({})", rank_, e.what())};
        }
        outcome_received = true;
        if (outcome_.kind == RankStatus::state::lost) {
          // Another rank is lost: rank 0 will not wait for our messages, so neither do we.
          if (!local_done_.load(std::memory_order_acquire)) stop_local_();
          leave_lost();
          return;
        }
        if (outcome_.kind == RankStatus::state::failed && !local_done_.load(std::memory_order_acquire)) stop_local_();
      } else {
        throw MpiFailure{fmt::format("rank {}: unexpected message (tag {}, {} bytes) from rank 0", rank_, st.MPI_TAG, count)};
      }
    }
    if (imports_ && !total_published) {
      const std::uint32_t k = imports_->slots();
      // Post a receive into every free slot, in batch order, and only then grant rank 0 a credit
      // for it. Not after STATUS (this rank's last message): no new credit, so rank 0 sends only
      // into receives already posted, which stay posted until their batch arrives.
      while (!status_sent && posted.size() < k && !(total && next_post >= *total)) {
        const auto slot = static_cast<std::uint32_t>(next_post % k);
        if (!imports_->slot_free(slot)) break;
        PostedReceive p{MPI_REQUEST_NULL, next_post, slot};
        check(MPI_Irecv(imports_->slot_data(slot), static_cast<int>(imports_->slot_bytes()), MPI_BYTE, 0, data, comm_, &p.request),
              "MPI_Irecv");
        posted.push_back(p);
        ++credit_pending;
        ++next_post;
        busy = true;
      }
      for (auto it = posted.begin(); it != posted.end();) {
        int done = 0;
        MPI_Status rs;
        check(MPI_Test(&it->request, &done, &rs), "MPI_Test");
        if (!done) break;  // receives complete in the order they match
        int count = 0;
        check(MPI_Get_count(&rs, MPI_BYTE, &count), "MPI_Get_count");
        if (static_cast<std::size_t>(count) >= batch_header_bytes) {  // else wait_for() refuses it
          std::uint64_t place = 0;
          std::memcpy(&place, imports_->slot_data(it->slot) + sizeof(std::uint64_t), sizeof place);
          imports_->note_place(it->batch, place);
        }
        imports_->publish(it->slot, it->batch, static_cast<std::size_t>(count));
        ++received;
        it = posted.erase(it);
        busy = true;
      }
      if (credit_pending > 0 && !status_sent) {
        std::vector<std::byte> bytes(8);
        std::memcpy(bytes.data(), &credit_pending, 8);
        send(0, credit, std::move(bytes));
        credit_pending = 0;
      }
      if (total && received == *total) {
        imports_->set_total(*total);
        total_published = true;
      }
    }
    const bool sends_done = poll_sends();
    // Every batch rank 0 sent here has arrived (END says how many, also when the job fails).
    const bool imported = !imports_ || total_published;
    if (outcome_received && status_sent && !claim_outstanding && sends_done && imported) {
      for (PostedReceive& p : posted) {  // receives past END's count: no batch will match them
        MPI_Cancel(&p.request);
        MPI_Wait(&p.request, MPI_STATUS_IGNORE);
      }
      return;
    }
    if (busy) {
      idle = 0;
    } else {
      pause(idle);
    }
  }
}

}  // namespace procflow::mpi_detail
