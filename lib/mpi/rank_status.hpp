// RankStatus: how one rank's local run ended, as it travels between ranks (encoded with
// procflow's codec), and the job's outcome rank 0 decides from them.
#pragma once

#include <procflow/error.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace procflow::mpi_detail {

struct RankStatus {
  // lost: a rank sent nothing for the silence limit (stopped, hung, cut off); a failure after
  // which the MPI job cannot run collectives any more (see ClaimBroker, "Silence").
  enum class state : std::uint8_t { ok, failed, cancelled, lost };
  state kind = state::ok;
  int rank = 0;                  // the rank whose local run failed (failed, lost)
  stage_error::details failure;  // failed, lost
};

std::vector<std::byte> encode_status(const RankStatus& s);
// Throws codec_error on malformed bytes.
RankStatus decode_status(const std::vector<std::byte>& bytes);

// The stage_error every rank throws for a failure on rank `s.rank` of `ranks`: the original
// details, the message prefixed with where it happened.
stage_error make_rank_error(const RankStatus& s, int ranks);

}  // namespace procflow::mpi_detail
