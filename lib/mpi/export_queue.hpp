// ExportQueue: rank 0's side of a stage boundary between ranks. The generator's batches reach the
// rank's process through the results channel (as a sink running in the caller would); the
// ExportSink's collector pushes each, framed for the wire, into this queue, and the broker thread
// sends them to the ranks holding credits (see ImportInbox). push() blocks while the queue is
// full, which backs up the results ring and then the generator: back-pressure from the remote
// replicas reaches the source.
#pragma once

#include <procflow/detail/stage.hpp>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace procflow::mpi_detail {

class ExportQueue {
 public:
  ExportQueue(std::size_t capacity, std::size_t max_message_bytes) : capacity_(capacity), max_message_bytes_(max_message_bytes) {}

  // Main thread (the collector). Throws procflow::error when the run was stopped, or when a batch
  // is larger than a receiving slot.
  void push(const detail::batch_view& batch);
  void finish();
  // Any thread: wakes push() for good (the job is failing).
  void stop();

  // Broker thread.
  std::optional<std::vector<std::byte>> try_pop();
  bool finished_and_empty();

 private:
  std::mutex mutex_;
  std::condition_variable room_;
  std::deque<std::vector<std::byte>> queue_;
  std::size_t capacity_;
  std::size_t max_message_bytes_;
  bool finished_ = false;
  bool stopped_ = false;
  std::uint64_t pushed_ = 0;  // batches pushed: the next one's place (collector thread only)
};

// The terminal of rank 0's local pipeline: a sink that runs in the rank's process and hands every
// batch to the ExportQueue. Its item type is erased: it only ever sees encoded batches.
class ExportSink final : public detail::stage_base {
 public:
  ExportSink(std::string name, ExportQueue& queue) : detail::stage_base(std::move(name), detail::stage_kind::sink, {}), queue_(&queue) {}
  std::unique_ptr<detail::result_collector> make_collector(bool ordered) const override;

 private:
  ExportQueue* queue_;
};

}  // namespace procflow::mpi_detail
