#include "mpi/export_queue.hpp"

#include "mpi/import_inbox.hpp"

#include <procflow/error.hpp>

#include <fmt/format.h>

#include <array>
#include <bit>
#include <chrono>
#include <cstdint>

namespace procflow::mpi_detail {

void ExportQueue::push(const detail::batch_view& batch) {
  const std::size_t n = batch_header_bytes + batch.bytes.size();
  if (n > max_message_bytes_)
    throw procflow::error(fmt::format("procflow::mpi: a batch of {} bytes ({} items) is larger than a receiving slot across ranks ({} bytes)",
                                      batch.bytes.size(), batch.items, max_message_bytes_ - batch_header_bytes));
  // The header (the item count and the batch's place in this queue's order), then the encoded
  // items. Appended rather than memcpy'd into a sized vector: GCC cannot see that data() of a
  // non-empty vector is not null (-Wnull-dereference). Called by one thread (the collector), in
  // the order of rank 0's results (source order under pf::ordered).
  static_assert(batch_header_bytes == 2 * sizeof(std::uint64_t));
  const auto items = std::bit_cast<std::array<std::byte, 8>>(std::uint64_t{batch.items});
  const auto place = std::bit_cast<std::array<std::byte, 8>>(pushed_);
  std::vector<std::byte> message;
  message.reserve(n);
  message.insert(message.end(), items.begin(), items.end());
  message.insert(message.end(), place.begin(), place.end());
  message.insert(message.end(), batch.bytes.begin(), batch.bytes.end());
  std::unique_lock lock(mutex_);
  room_.wait(lock, [&] { return stopped_ || queue_.size() < capacity_; });
  if (stopped_) throw procflow::error("procflow::mpi: the job was stopped while rank 0 was sending the source's items");
  queue_.push_back(std::move(message));
  ++pushed_;
}

void ExportQueue::finish() {
  const std::lock_guard lock(mutex_);
  finished_ = true;
}

void ExportQueue::stop() {
  {
    const std::lock_guard lock(mutex_);
    stopped_ = true;
  }
  room_.notify_all();
}

std::optional<std::vector<std::byte>> ExportQueue::try_pop() {
  std::unique_lock lock(mutex_);
  if (queue_.empty()) return std::nullopt;
  std::vector<std::byte> m = std::move(queue_.front());
  queue_.pop_front();
  lock.unlock();
  room_.notify_one();
  return m;
}

bool ExportQueue::finished_and_empty() {
  const std::lock_guard lock(mutex_);
  return finished_ && queue_.empty();
}

namespace {

class ExportCollector final : public detail::result_collector {
 public:
  explicit ExportCollector(ExportQueue& queue) : queue_(&queue) {}
  void consume(const detail::batch_view& batch) override { queue_->push(batch); }
  void finish() override { queue_->finish(); }

 private:
  ExportQueue* queue_;
};

}  // namespace

std::unique_ptr<detail::result_collector> ExportSink::make_collector(bool) const { return std::make_unique<ExportCollector>(*queue_); }

}  // namespace procflow::mpi_detail
