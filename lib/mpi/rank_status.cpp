#include "mpi/rank_status.hpp"

#include <procflow/codec.hpp>

#include <fmt/format.h>

#include <string>
#include <tuple>

namespace procflow::mpi_detail {

namespace {

using wire = std::tuple<std::uint8_t, std::int32_t, std::string, std::uint32_t, std::int32_t, std::uint8_t, bool, std::uint64_t,
                        std::string, std::string, std::int32_t, std::int32_t, bool, bool, std::uint64_t, std::uint64_t, std::string>;

}  // namespace

std::vector<std::byte> encode_status(const RankStatus& s) {
  const auto& d = s.failure;
  const wire w{static_cast<std::uint8_t>(s.kind), s.rank, d.stage, d.replica, d.pid, static_cast<std::uint8_t>(d.kind),
               d.has_item, d.item_seq, d.exception_type, d.message, d.signal_number, d.exit_code, d.in_supervisor,
               d.has_item_range, d.range_first, d.range_last, d.history};
  return encode_to_bytes(w);
}

RankStatus decode_status(const std::vector<std::byte>& bytes) {
  const auto w = decode_from_bytes<wire>(bytes);
  RankStatus s;
  if (std::get<0>(w) > static_cast<std::uint8_t>(RankStatus::state::lost)) throw codec_error("procflow::mpi: bad rank status");
  if (std::get<5>(w) > static_cast<std::uint8_t>(stage_error::cause::timeout)) throw codec_error("procflow::mpi: bad failure cause");
  s.kind = static_cast<RankStatus::state>(std::get<0>(w));
  s.rank = std::get<1>(w);
  auto& d = s.failure;
  d.stage = std::get<2>(w);
  d.replica = std::get<3>(w);
  d.pid = std::get<4>(w);
  d.kind = static_cast<stage_error::cause>(std::get<5>(w));
  d.has_item = std::get<6>(w);
  d.item_seq = std::get<7>(w);
  d.exception_type = std::get<8>(w);
  d.message = std::get<9>(w);
  d.signal_number = std::get<10>(w);
  d.exit_code = std::get<11>(w);
  d.in_supervisor = std::get<12>(w);
  d.has_item_range = std::get<13>(w);
  d.range_first = std::get<14>(w);
  d.range_last = std::get<15>(w);
  d.history = std::get<16>(w);
  return s;
}

stage_error make_rank_error(const RankStatus& s, int ranks) {
  stage_error::details d = s.failure;
  d.message = fmt::format("on MPI rank {} of {}{}{}", s.rank, ranks, d.message.empty() ? "" : ": ", d.message);
  return stage_error(std::move(d));
}

}  // namespace procflow::mpi_detail
