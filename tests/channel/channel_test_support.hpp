// Helpers shared by the channel tests: self-checking items (each says who sent it and which one it
// is, and its bytes are a function of that, so a consumer can verify an item without knowing what
// was sent), sending through an output_port, and waiting on a group of forked children.
#pragma once

#include "channel/inbox.hpp"
#include "channel/outbox.hpp"
#include "support/child_process.hpp"

#include <procflow/codec.hpp>

#include <sys/wait.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace procflow::test {

// Items are std::string values: 8 bytes of index, 4 of producer, then filler derived from both.
inline constexpr std::size_t item_header_bytes = 12;

inline std::uint8_t filler(std::uint32_t producer, std::uint64_t index, std::size_t k) noexcept {
  return static_cast<std::uint8_t>(index * 131 + producer * 71 + k * 7 + (k >> 8));
}

inline std::string make_item(std::uint32_t producer, std::uint64_t index, std::size_t length) {
  if (length < item_header_bytes) length = item_header_bytes;
  std::string s(length, '\0');
  std::memcpy(s.data(), &index, 8);
  std::memcpy(s.data() + 8, &producer, 4);
  for (std::size_t k = item_header_bytes; k < length; ++k) s[k] = static_cast<char>(filler(producer, index, k));
  return s;
}

struct item_id {
  std::uint32_t producer;
  std::uint64_t index;
  std::size_t length;
};

// Checks an item's filler against its header; throws std::runtime_error naming the damage.
inline item_id check_item(const std::string& s) {
  if (s.size() < item_header_bytes)
    throw std::runtime_error("item of " + std::to_string(s.size()) + " bytes is too short");
  item_id id{};
  std::memcpy(&id.index, s.data(), 8);
  std::memcpy(&id.producer, s.data() + 8, 4);
  id.length = s.size();
  for (std::size_t k = item_header_bytes; k < s.size(); ++k)
    if (static_cast<std::uint8_t>(s[k]) != filler(id.producer, id.index, k))
      throw std::runtime_error("item " + std::to_string(id.producer) + "/" + std::to_string(id.index) +
                               " corrupt at byte " + std::to_string(k));
  return id;
}

// Sends one encoded item: in place when it fits a slot, split over slots otherwise.
inline void send_item(channel::Outbox& out, std::size_t lane, const std::string& item) {
  const std::size_t n = codec<std::string>::encoded_size(item);
  if (n <= out.max_item_bytes()) {
    if (lane == detail::output_port::any_lane) {
      codec<std::string>::encode(item, out.reserve(n));
      out.commit(n);
    } else {
      codec<std::string>::encode(item, out.reserve_lane(lane, n));
      out.commit_lane(lane, n);
    }
  } else {
    const auto bytes = encode_to_bytes(item);
    out.write_large(lane, bytes);
  }
}

// Decodes the items of a batch; throws if the batch is not exactly `items` encoded strings.
inline std::vector<std::string> decode_batch(const detail::batch_view& b) {
  decoder in(b.bytes);
  std::vector<std::string> items;
  items.reserve(b.items);
  for (std::uint32_t i = 0; i < b.items; ++i) items.push_back(codec<std::string>::decode(in));
  if (!in.empty()) throw std::runtime_error("batch has " + std::to_string(in.remaining()) + " bytes after its items");
  return items;
}

// Waits for every child, at most until `timeout` from now. As soon as one fails (or time runs out)
// the others are killed, so one broken peer cannot turn into a long hang. Returns a description of
// every failure; empty when all exited with status 0.
inline std::vector<std::string> wait_all(std::vector<std::unique_ptr<ChildProcess>>& children,
                                         std::chrono::milliseconds timeout) {
  using namespace std::chrono;
  const auto deadline = steady_clock::now() + timeout;
  std::vector<std::string> failures;
  std::vector<bool> done(children.size(), false);
  std::size_t remaining = children.size();
  bool abort = false;
  while (remaining > 0) {
    for (std::size_t i = 0; i < children.size(); ++i) {
      if (done[i]) continue;
      siginfo_t info{};
      // WNOWAIT: look without reaping; ChildProcess::wait_for reaps (and records CPU time).
      const bool exited =
          ::waitid(P_PID, static_cast<id_t>(children[i]->pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == children[i]->pid();
      if (!exited && !abort) continue;
      const auto status = children[i]->wait_for(exited ? milliseconds(5000) : milliseconds(0));
      done[i] = true;
      --remaining;
      if (!status) {
        failures.push_back("child " + std::to_string(i) +
                           (abort ? " killed after another failed or timed out" : " hung"));
      } else if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
        failures.push_back("child " + std::to_string(i) +
                           (WIFSIGNALED(*status) ? " died by signal " + std::to_string(WTERMSIG(*status))
                                                 : " exited with " + std::to_string(WEXITSTATUS(*status))));
        abort = true;
      }
    }
    if (remaining > 0 && !abort) {
      if (steady_clock::now() >= deadline) {
        failures.push_back("timed out after " + std::to_string(timeout.count()) + " ms");
        abort = true;
      } else {
        std::this_thread::sleep_for(milliseconds(1));
      }
    }
  }
  return failures;
}

}  // namespace procflow::test
