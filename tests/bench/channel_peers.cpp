// Peer IPC implementations for procflow's channel benchmark. See channel_peers.hpp for the
// contract shared by all peers (verification, timing, cleanup).
#include "channel_peers.hpp"

#include "bench_support.hpp"

#include <boost/interprocess/ipc/message_queue.hpp>
#include <boost/interprocess/permissions.hpp>
#include <boost/interprocess/sync/interprocess_semaphore.hpp>

#include <fmt/core.h>

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace bench::peers {
namespace {

namespace bip = boost::interprocess;

constexpr std::size_t kCacheLine = 64;
constexpr std::size_t kItemBytes = sizeof(uint64_t);

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// A failure inside a forked child: say why, then leave with _exit(1). std::exit would run the
// parent's atexit handlers and static destructors (e.g. a thread pool's, whose threads do not exist
// in the child). The parent sees the non-zero status, kills the sibling and exits(1) itself.
template <typename... Args>
[[noreturn]] void child_fail(fmt::format_string<Args...> format, Args&&... args) {
  fmt::print(stderr, "channel peer (pid {}): {}\n", ::getpid(),
             fmt::format(format, std::forward<Args>(args)...));
  std::fflush(nullptr);
  ::_exit(1);
}

// --- spinning --------------------------------------------------------------------------------

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spin politely: `pause` for the first ~1000 rounds, then sched_yield() every round, so that two
// spinners plus anything else on a loaded 2-core box still make progress. One Backoff per wait.
class Backoff {
 public:
  void pause() {
    if (spins_ < kSpinsBeforeYield) {
      ++spins_;
      cpu_relax();
    } else {
      ::sched_yield();
    }
  }

 private:
  static constexpr unsigned kSpinsBeforeYield = 1000;
  unsigned spins_ = 0;
};

// --- anonymous shared memory -----------------------------------------------------------------

// MAP_SHARED | MAP_ANONYMOUS memory: shared with children forked afterwards, never has a name.
class SharedMemory {
 public:
  explicit SharedMemory(std::size_t bytes) : bytes_(bytes) {
    addr_ = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (addr_ == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
  }
  ~SharedMemory() { ::munmap(addr_, bytes_); }
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;

  void* get() const { return addr_; }

 private:
  std::size_t bytes_;
  void* addr_;
};

// One T constructed in its own anonymous shared mapping (destroyed by the parent after the
// children are reaped).
template <typename T>
class Shared {
 public:
  Shared() : mem_(sizeof(T)), obj_(new (mem_.get()) T{}) {}
  ~Shared() { obj_->~T(); }
  Shared(const Shared&) = delete;
  Shared& operator=(const Shared&) = delete;

  T& operator*() const { return *obj_; }
  T* operator->() const { return obj_; }

 private:
  SharedMemory mem_;
  T* obj_;
};

// --- starting and reaping the two children ---------------------------------------------------

// Lets both children start together and carries the timestamps. Lives in shared memory.
struct StartLine {
  std::atomic<uint32_t> ready{0};  // children that are set up and waiting for go
  std::atomic<uint32_t> go{0};     // set once by the parent
  std::atomic<int64_t> t0_ns{0};   // the parent's steady_clock reading just before go
  std::atomic<int64_t> end_ns{0};  // the measuring child's reading once it is done
};
static_assert(std::atomic<uint32_t>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free,
              "cross-process atomics must be lock-free (address-free)");

// First thing in every child: die with the parent. PR_SET_PDEATHSIG covers the parent being killed
// later; the getppid() check covers it having died before prctl() ran.
void die_with_parent(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);
}

// Child side: check in, then wait for the parent's go.
void wait_for_go(StartLine& start) {
  start.ready.fetch_add(1, std::memory_order_release);  // pairs with the parent's acquire load
  Backoff backoff;
  while (start.go.load(std::memory_order_acquire) == 0) backoff.pause();  // pairs with go.store
}

// The measuring child (the consumer) marks the end of the measured interval.
void mark_end(StartLine& start) { start.end_ns.store(now_ns(), std::memory_order_release); }

struct Child {
  pid_t pid;
  const char* role;
};

double cpu_seconds(const rusage& ru) {
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Has `pid` terminated? (Does not reap it.)
bool has_exited(pid_t pid) {
  siginfo_t info{};
  return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
         info.si_pid == pid;
}

// Parent side: wait until both children have checked in, read the clock, say go.
void release_children(StartLine& start, const std::array<Child, 2>& kids) {
  unsigned rounds = 0;
  while (start.ready.load(std::memory_order_acquire) < kids.size()) {
    // A child that dies during setup never checks in; stop waiting and let reap() report it.
    if ((++rounds & 0xff) == 0 && (has_exited(kids[0].pid) || has_exited(kids[1].pid))) break;
    ::sched_yield();
  }
  start.t0_ns.store(now_ns(), std::memory_order_relaxed);  // published by the release below
  start.go.store(1, std::memory_order_release);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
  return fmt::format("status {:#x}", status);
}

// Reaps both children (whichever finishes first) and returns their CPU seconds. If one failed,
// the other may be blocked forever on its dead peer: kill it, reap it, report, exit(1).
// Uses pidfds to block until either child exits; falls back to polling every millisecond on
// kernels without pidfd_open (< 5.3).
std::array<double, 2> reap(const std::array<Child, 2>& kids) {
  std::array<int, 2> pidfd{};
  for (std::size_t i = 0; i < 2; ++i) pidfd[i] = static_cast<int>(::syscall(SYS_pidfd_open, kids[i].pid, 0));
  const bool use_poll = pidfd[0] >= 0 && pidfd[1] >= 0;

  std::array<bool, 2> done{};
  std::array<double, 2> cpu{};
  for (int remaining = 2; remaining > 0; --remaining) {
    std::size_t which = 2;  // index of a child known to have exited
    while (which == 2) {
      if (use_poll) {
        std::array<pollfd, 2> fds{};
        std::array<std::size_t, 2> index{};
        nfds_t n = 0;
        for (std::size_t i = 0; i < 2; ++i)
          if (!done[i]) {
            fds[n] = pollfd{pidfd[i], POLLIN, 0};
            index[n++] = i;
          }
        if (::poll(fds.data(), n, -1) < 0) {
          if (errno == EINTR) continue;
          fmt::print(stderr, "channel peer: poll on pidfds failed: {}\n", std::strerror(errno));
          std::exit(1);
        }
        for (nfds_t k = 0; k < n && which == 2; ++k)
          if (fds[k].revents != 0) which = index[k];
      } else {
        for (std::size_t i = 0; i < 2 && which == 2; ++i)
          if (!done[i] && has_exited(kids[i].pid)) which = i;
        if (which == 2) {
          const timespec ms{0, 1'000'000};
          ::nanosleep(&ms, nullptr);
        }
      }
    }

    int status = 0;
    rusage ru{};
    while (::wait4(kids[which].pid, &status, 0, &ru) < 0) {
      if (errno != EINTR) {
        fmt::print(stderr, "channel peer: wait4 failed: {}\n", std::strerror(errno));
        std::exit(1);
      }
    }
    done[which] = true;
    cpu[which] = cpu_seconds(ru);

    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      fmt::print(stderr, "channel peer: {} (pid {}) failed: {}\n", kids[which].role, kids[which].pid,
                 describe_status(status));
      const std::size_t other = 1 - which;
      if (!done[other]) {
        ::kill(kids[other].pid, SIGKILL);
        while (::waitpid(kids[other].pid, &status, 0) < 0 && errno == EINTR) {
        }
        fmt::print(stderr, "channel peer: killed the {} (pid {})\n", kids[other].role, kids[other].pid);
      }
      std::exit(1);
    }
  }
  for (int fd : pidfd)
    if (fd >= 0) ::close(fd);
  return cpu;
}

// Forks the producer, then the consumer (each body calls wait_for_go() once set up and returns its
// exit status; the consumer calls mark_end()), runs `parent_after_fork` (e.g. to close the parent's
// pipe ends), says go, reaps both, and turns the timestamps into a rate.
struct PairRun {
  double seconds;
  double producer_cpu_s;
  double consumer_cpu_s;
};

PairRun run_pair(StartLine& start, const std::function<int()>& producer, const std::function<int()>& consumer,
                 const std::function<void()>& parent_after_fork = {}) {
  const pid_t parent = ::getpid();
  const pid_t p = fork_child([&] {
    die_with_parent(parent);
    return producer();
  });
  const pid_t c = fork_child([&] {
    die_with_parent(parent);
    return consumer();
  });
  if (parent_after_fork) parent_after_fork();
  const std::array<Child, 2> kids{{{p, "producer"}, {c, "consumer"}}};
  release_children(start, kids);
  const auto cpu = reap(kids);
  const int64_t ns = start.end_ns.load(std::memory_order_acquire) - start.t0_ns.load(std::memory_order_relaxed);
  return {static_cast<double>(ns) / 1e9, cpu[0], cpu[1]};
}

TransferResult to_result(uint64_t items, const PairRun& run) {
  return {run.seconds > 0 ? static_cast<double>(items) / run.seconds : 0.0, run.producer_cpu_s, run.consumer_cpu_s};
}

// Pins the calling process to `cpu`; silently does nothing if that CPU is unavailable.
void pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)::sched_setaffinity(0, sizeof set, &set);  // fails with EINVAL on a 1-CPU box: ignore
}

// --- minimal SPSC ring ---------------------------------------------------------------------

// The ring's two indices, each on its own cache line: the producer's stores to tail do not
// invalidate the line holding head, which the producer reads, and vice versa. Indices count items
// since the start and never wrap (2^64 items is out of reach); slot = index & (capacity - 1).
struct RingIndices {
  alignas(kCacheLine) std::atomic<uint64_t> tail{0};  // items written; stored only by the producer
  alignas(kCacheLine) std::atomic<uint64_t> head{0};  // items consumed; stored only by the consumer
};
static_assert(sizeof(RingIndices) % kCacheLine == 0, "slots must start on a fresh cache line");

int ring_producer(RingIndices& ring, uint64_t* slots, uint64_t capacity, uint64_t batch, uint64_t items,
                  StartLine& start, bool pin) {
  if (pin) pin_to_cpu(0);
  wait_for_go(start);
  const uint64_t mask = capacity - 1;
  uint64_t tail = 0;        // our own index: only we write it, so a plain local copy is exact
  uint64_t head_cache = 0;  // last value of head we loaded: a lower bound on the real head
  while (tail < items) {
    const uint64_t n = std::min(batch, items - tail);
    // Wait for room for the whole batch. The cached head is stale-low, so if it already shows
    // room we skip touching the consumer's cache line altogether.
    if (tail + n - head_cache > capacity) {
      Backoff backoff;
      for (;;) {
        // ACQUIRE pairs with the consumer's RELEASE store of head: once we see head = h, the
        // consumer's reads of slots < h are complete, so overwriting them is safe.
        head_cache = ring.head.load(std::memory_order_acquire);
        if (tail + n - head_cache <= capacity) break;
        backoff.pause();
      }
    }
    for (uint64_t i = 0; i < n; ++i) slots[(tail + i) & mask] = tail + i;  // plain stores
    tail += n;
    // RELEASE: the slot stores above become visible to a consumer that ACQUIRE-loads this tail.
    ring.tail.store(tail, std::memory_order_release);
  }
  return 0;
}

int ring_consumer(RingIndices& ring, const uint64_t* slots, uint64_t capacity, uint64_t items, StartLine& start,
                  bool pin) {
  if (pin) pin_to_cpu(1);
  wait_for_go(start);
  const uint64_t mask = capacity - 1;
  uint64_t head = 0;        // our own index
  uint64_t tail_cache = 0;  // last value of tail we loaded: a lower bound on the real tail
  uint64_t mismatch = 0;    // OR of (value ^ expected) over all items: 0 iff every item was right
  while (head < items) {
    if (head == tail_cache) {  // drained what we knew about: look at the producer's index again
      Backoff backoff;
      // ACQUIRE pairs with the producer's RELEASE store of tail: slots < tail_cache are written.
      while ((tail_cache = ring.tail.load(std::memory_order_acquire)) == head) backoff.pause();
    }
    for (uint64_t i = head; i < tail_cache; ++i) mismatch |= slots[i & mask] ^ i;  // plain loads
    head = tail_cache;
    // RELEASE: our slot reads above are done before the producer (ACQUIRE-loading head) reuses them.
    ring.head.store(head, std::memory_order_release);
  }
  mark_end(start);
  if (mismatch != 0) child_fail("minimal_ring: received a wrong value (mismatch bits {:#x})", mismatch);
  if (head != items) child_fail("minimal_ring: received {} items, expected {}", head, items);
  return 0;
}

// --- pipes -----------------------------------------------------------------------------------

// Owns one file descriptor.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

void write_all(int fd, const void* data, std::size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (bytes > 0) {
    const ssize_t n = ::write(fd, p, bytes);
    if (n < 0) {
      if (errno == EINTR) continue;
      child_fail("pipe write failed: {}", std::strerror(errno));
    }
    p += n;
    bytes -= static_cast<std::size_t>(n);
  }
}

int pipe_producer(int fd, uint64_t items, std::size_t batch, StartLine& start) {
  std::vector<uint64_t> buf(batch);
  wait_for_go(start);
  for (uint64_t next = 0; next < items;) {
    const auto n = static_cast<std::size_t>(std::min<uint64_t>(batch, items - next));
    for (std::size_t k = 0; k < n; ++k) buf[k] = next++;
    write_all(fd, buf.data(), n * kItemBytes);  // one write(2) per batch (one per item if batch 1)
  }
  return 0;
}

int pipe_consumer(int fd, uint64_t items, StartLine& start) {
  constexpr std::size_t kBufBytes = 64 * 1024;
  std::vector<unsigned char> buf(kBufBytes);
  wait_for_go(start);
  std::size_t have = 0;  // bytes at the front of buf not yet consumed: at most a partial item
  uint64_t next = 0;     // count of items received = the value we expect next
  uint64_t mismatch = 0;
  while (next < items) {
    const ssize_t n = ::read(fd, buf.data() + have, kBufBytes - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      child_fail("pipe read failed: {}", std::strerror(errno));
    }
    if (n == 0) child_fail("pipe: end of file after {} of {} items", next, items);
    have += static_cast<std::size_t>(n);
    const std::size_t whole = have / kItemBytes;
    for (std::size_t k = 0; k < whole; ++k) {
      uint64_t v;
      std::memcpy(&v, buf.data() + k * kItemBytes, kItemBytes);
      mismatch |= v ^ next++;
    }
    // A read may end in the middle of an item: keep those bytes for the next round.
    const std::size_t rest = have - whole * kItemBytes;
    std::memmove(buf.data(), buf.data() + whole * kItemBytes, rest);
    have = rest;
  }
  mark_end(start);
  if (mismatch != 0) child_fail("pipe: received a wrong value (mismatch bits {:#x})", mismatch);
  if (next != items) child_fail("pipe: received {} items, expected {}", next, items);
  // Nothing may follow the last item: once the producer exits (closing the last write end) this
  // read sees end of file. (Outside the measured interval.)
  ssize_t extra = 0;
  while ((extra = ::read(fd, buf.data(), kBufBytes)) < 0 && errno == EINTR) {
  }
  if (have != 0 || extra != 0) child_fail("pipe: data after the last item");
  return 0;
}

TransferResult pipe_transfer(uint64_t items, std::size_t batch_items) {
  const std::size_t batch = std::max<std::size_t>(batch_items, 1);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
  Fd read_end(fds[0]);
  Fd write_end(fds[1]);
  Shared<StartLine> start;
  const auto run = run_pair(
      *start,
      [&] {
        read_end.reset();  // no read end left here: if the consumer dies, our write fails (SIGPIPE/EPIPE)
        return pipe_producer(write_end.get(), items, batch, *start);
      },
      [&] {
        write_end.reset();  // otherwise the consumer would hold a write end and never see EOF
        return pipe_consumer(read_end.get(), items, *start);
      },
      [&] {
        // The parent must not keep either end: the consumer's EOF check needs every write end
        // closed, and a dead consumer should give the producer EPIPE rather than a full pipe.
        read_end.reset();
        write_end.reset();
      });
  return to_result(items, run);
}

// --- futex helpers -----------------------------------------------------------------------------

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t), "futex word must be a plain 32-bit int");

// Shared (not FUTEX_PRIVATE_FLAG) futex ops: the word is in MAP_SHARED memory used by two processes.
long futex(std::atomic<uint32_t>& word, int op, uint32_t val) {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), op, val, nullptr, nullptr, 0);
}

// Sleeps until word == want. FUTEX_WAIT only sleeps if the word still holds `seen`, so a hand-off
// between our load and the syscall is not lost (the call returns EAGAIN and we look again).
void futex_wait_until(std::atomic<uint32_t>& word, uint32_t want) {
  uint32_t seen;
  // ACQUIRE pairs with the RELEASE store in futex_hand_over on the other side.
  while ((seen = word.load(std::memory_order_acquire)) != want) futex(word, FUTEX_WAIT, seen);
}

// Sets word = value and wakes the other side (always: this minimal version keeps no waiter count,
// so every hand-off costs one FUTEX_WAKE syscall even if nobody sleeps).
void futex_hand_over(std::atomic<uint32_t>& word, uint32_t value) {
  word.store(value, std::memory_order_release);
  futex(word, FUTEX_WAKE, 1);
}

}  // namespace

// ===========================================================================================

TransferResult minimal_ring(uint64_t items, std::size_t ring_bytes, std::size_t batch_items, bool pin) {
  const std::size_t capacity = ring_bytes / kItemBytes;
  if (ring_bytes % kItemBytes != 0 || capacity < 2 || !std::has_single_bit(capacity))
    throw std::invalid_argument(fmt::format("minimal_ring: ring_bytes {} is not a power-of-two multiple of 8 (>= 16)",
                                            ring_bytes));
  const uint64_t batch = std::clamp<uint64_t>(batch_items, 1, capacity);

  // One mapping: the indices (two cache lines) followed by the slots.
  SharedMemory mem(sizeof(RingIndices) + ring_bytes);
  auto* ring = new (mem.get()) RingIndices{};
  auto* slots = reinterpret_cast<uint64_t*>(static_cast<unsigned char*>(mem.get()) + sizeof(RingIndices));
  Shared<StartLine> start;

  const auto run = run_pair(
      *start, [&] { return ring_producer(*ring, slots, capacity, batch, items, *start, pin); },
      [&] { return ring_consumer(*ring, slots, capacity, items, *start, pin); });
  // Nothing may follow the last item: with the producer gone, its final tail must be `items`.
  if (const uint64_t tail = ring->tail.load(std::memory_order_acquire); tail != items) {
    fmt::print(stderr, "channel peer: minimal_ring: producer published {} items, expected {}\n", tail, items);
    std::exit(1);
  }
  ring->~RingIndices();
  return to_result(items, run);
}

TransferResult message_queue(uint64_t items) {
  constexpr std::size_t kDepth = 1024;
  // A boost message_queue needs a name. Make it unguessable, create it exclusively and private to
  // us, and unlink the name at once: the queue lives in a MAP_SHARED mapping of a POSIX shm object,
  // and fork()ed children inherit that mapping (and this very message_queue object), so nobody
  // ever opens it by name. Unlinked, nothing can be left in /dev/shm whatever happens later; the
  // memory goes away when the last of the three processes unmaps it.
  std::random_device rd;
  const uint64_t salt = (uint64_t{rd()} << 32) ^ uint64_t{rd()};
  const std::string name = fmt::format("procflow-bench-mq-{}-{:016x}", ::getpid(), salt);
  bip::message_queue mq(bip::create_only, name.c_str(), kDepth, sizeof(uint64_t), bip::permissions(0600));
  if (!bip::message_queue::remove(name.c_str()))
    fmt::print(stderr, "channel peer: warning: could not remove message queue {}\n", name);

  Shared<StartLine> start;
  const auto run = run_pair(
      *start,
      [&] {
        wait_for_go(*start);
        for (uint64_t v = 0; v < items; ++v) mq.send(&v, sizeof v, 0);
        return 0;
      },
      [&] {
        wait_for_go(*start);
        uint64_t mismatch = 0;
        for (uint64_t expected = 0; expected < items; ++expected) {
          uint64_t v = 0;
          bip::message_queue::size_type got = 0;
          unsigned priority = 0;
          mq.receive(&v, sizeof v, got, priority);
          if (got != sizeof v) child_fail("message_queue: message {} has {} bytes, expected 8", expected, got);
          mismatch |= v ^ expected;
        }
        mark_end(*start);
        if (mismatch != 0) child_fail("message_queue: received a wrong value (mismatch bits {:#x})", mismatch);
        return 0;
      });
  // Nothing may follow the last item. Checked here, once the producer has certainly exited (the
  // parent still maps the queue), because the consumer cannot know whether more is on the way.
  if (const auto left = mq.get_num_msg(); left != 0) {
    fmt::print(stderr, "channel peer: message_queue: {} messages after the last item\n", left);
    std::exit(1);
  }
  return to_result(items, run);
}

TransferResult pipe_batched(uint64_t items, std::size_t batch_items) { return pipe_transfer(items, batch_items); }

TransferResult pipe_per_item(uint64_t items) { return pipe_transfer(items, 1); }

double semaphore_pingpong(uint64_t round_trips) {
  // Process-shared POSIX semaphores (boost uses sem_init(pshared = 1) on Linux).
  struct Semaphores {
    bip::interprocess_semaphore ping{0};  // posted by A ("your turn, B")
    bip::interprocess_semaphore pong{0};  // posted by B ("your turn, A")
  };
  Shared<Semaphores> sems;
  Shared<StartLine> start;
  const auto run = run_pair(
      *start,
      [&] {  // A: starts each round trip and measures
        wait_for_go(*start);
        for (uint64_t i = 0; i < round_trips; ++i) {
          sems->ping.post();
          sems->pong.wait();
        }
        mark_end(*start);
        return 0;
      },
      [&] {  // B: answers
        wait_for_go(*start);
        for (uint64_t i = 0; i < round_trips; ++i) {
          sems->ping.wait();
          sems->pong.post();
        }
        return 0;
      });
  return run.seconds > 0 ? static_cast<double>(round_trips) / run.seconds : 0.0;
}

double futex_pingpong(uint64_t round_trips) {
  // One shared word says whose turn it is: 0 = A's, 1 = B's. Each side sleeps in FUTEX_WAIT until
  // it is its turn, then flips the word and wakes the other.
  struct Turn {
    std::atomic<uint32_t> word{0};
  };
  Shared<Turn> turn;
  Shared<StartLine> start;
  const auto run = run_pair(
      *start,
      [&] {  // A: starts each round trip and measures
        wait_for_go(*start);
        for (uint64_t i = 0; i < round_trips; ++i) {
          futex_hand_over(turn->word, 1);
          futex_wait_until(turn->word, 0);
        }
        mark_end(*start);
        return 0;
      },
      [&] {  // B: answers
        wait_for_go(*start);
        for (uint64_t i = 0; i < round_trips; ++i) {
          futex_wait_until(turn->word, 1);
          futex_hand_over(turn->word, 0);
        }
        return 0;
      });
  return run.seconds > 0 ? static_cast<double>(round_trips) / run.seconds : 0.0;
}

}  // namespace bench::peers

namespace bench::peers {

TransferResult timed_transfer(uint64_t items, const std::function<int(const TransferHooks&)>& producer,
                              const std::function<int(const TransferHooks&)>& consumer) {
  Shared<StartLine> start;
  StartLine& line = *start;
  const TransferHooks hooks{[&line] { wait_for_go(line); }, [&line] { mark_end(line); }};
  return to_result(items, run_pair(line, [&] { return producer(hooks); }, [&] { return consumer(hooks); }));
}

}  // namespace bench::peers
