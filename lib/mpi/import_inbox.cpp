#include "mpi/import_inbox.hpp"

#include <procflow/error.hpp>

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <new>
#include <string>

namespace procflow::mpi_detail {

ImportInbox::ImportInbox(std::uint32_t slots, std::size_t slot_bytes) {
  const std::size_t header = 128 * ((sizeof(ImportInboxShared) + 127) / 128);
  const std::size_t slot_headers = sizeof(ImportSlotShared) * slots;
  bytes_ = header + slot_headers + std::size_t{slots} * slot_bytes;
  void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    throw procflow::system_error(errno, "procflow::mpi: cannot map the import inbox (" + std::to_string(bytes_) + " bytes)");
  auto* base = static_cast<std::byte*>(p);
  shared_ = ::new (base) ImportInboxShared;
  shared_->slots = slots;
  shared_->slot_bytes = slot_bytes;
  slots_ = reinterpret_cast<ImportSlotShared*>(base + header);
  for (std::uint32_t i = 0; i < slots; ++i) ::new (&slots_[i]) ImportSlotShared;
  data_ = base + header + slot_headers;
}

ImportInbox::~ImportInbox() {
  if (shared_) ::munmap(shared_, bytes_);
}

ImportInbox::Batch ImportInbox::wait_for(std::uint64_t b) const noexcept {
  const std::uint32_t slot = static_cast<std::uint32_t>(b % shared_->slots);
  ImportSlotShared& s = slot_shared(slot);
  long sleep_ns = 0;
  for (int spins = 0;; ++spins) {
    // SYNC POINT (acquire): pairs with publish()'s release store.
    if (s.filled.load(std::memory_order_acquire) == b + 1) {
      Batch out;
      const std::size_t n = static_cast<std::size_t>(s.message_bytes);
      if (n < batch_header_bytes || n > slot_bytes()) return {{}, 0, true};  // never trust shared memory
      const std::byte* data = slot_data(slot);
      std::uint64_t items = 0;
      std::memcpy(&items, data, sizeof items);
      out.items = static_cast<std::uint32_t>(items);
      out.bytes = {data + batch_header_bytes, n - batch_header_bytes};
      return out;
    }
    if (ended_before(b)) return {{}, 0, true};
    if (spins < 256) continue;
    sleep_ns = sleep_ns == 0 ? 20'000 : std::min<long>(sleep_ns * 2, 500'000);
    timespec ts{0, sleep_ns};
    ::nanosleep(&ts, nullptr);
  }
}

void ImportInbox::release(std::uint64_t b) const noexcept {
  // SYNC POINT (release): the replica is done reading the bytes; pairs with slot_free()'s acquire.
  slot_shared(static_cast<std::uint32_t>(b % shared_->slots)).filled.store(0, std::memory_order_release);
}

void ImportInbox::note_place(std::uint64_t batch, std::uint64_t place) {
  const std::lock_guard lock(places_mutex_);
  if (places_.size() <= batch) places_.resize(batch + 1, 0);
  places_[batch] = place;
}

std::uint64_t ImportInbox::place_of(std::uint64_t batch) const {
  const std::lock_guard lock(places_mutex_);
  return batch < places_.size() ? places_[batch] : batch;
}

void ImportInbox::publish(std::uint32_t slot, std::uint64_t batch, std::size_t message_bytes) const noexcept {
  ImportSlotShared& s = slot_shared(slot);
  s.message_bytes = message_bytes;
  // SYNC POINT (release): the received bytes and message_bytes before `filled`.
  s.filled.store(batch + 1, std::memory_order_release);
}

}  // namespace procflow::mpi_detail
