// Internal to src/dist: what both communicator implementations share, so they agree on the
// contract in comm.h: argument checks (made before any communication), the piece size of large
// operations, launcher detection, and the semantics of a Comm of one rank.
#pragma once
#include <string>
#include <vector>

#include "dist/comm.h"

namespace dsv3::dist::detail {

// Elements of dtype per piece of a large operation (1 GiB, or set_chunk_bytes_for_testing).
size_t chunk_elems(DType dtype);

// The world size the launcher announced in the environment: 0 when no launcher started this
// process, -1 when one did but did not say how many (PMIx without Open MPI's variables).
int launcher_world_size();

// Checks; each throws Error("dist::<op> on rank r of n: ...").
struct Where {
  const char* op;
  int rank, size;
};
[[noreturn]] void fail_at(const Where& w, const std::string& why);
void check_member(const void* impl, const char* op);  // a null Comm (split gave none) throws
void check_stream(const Where& w, const void* stream);
void check_buffer(const Where& w, const void* p, size_t count, const char* name);
void check_root(const Where& w, int root);
void check_peer_tag(const Where& w, int peer, int tag);
// The displacement of each piece (computed when packed), after checking there is one count per
// rank, and, when buf is null, that every count is zero.
std::vector<size_t> piece_offsets(const Where& w, const Pieces& p, const void* buf,
                                  const char* name);

// A Comm of one rank: the copies reduce_scatter, all_gather, all_to_all and all_to_allv make.
void copy_elems(void* dst, const void* src, size_t count, DType dtype);
void one_rank_all_to_allv(const Where& w, const void* send, const Pieces& sp, void* recv,
                          const Pieces& rp, DType dtype);
Comm one_rank_subset(const Where& w, const Comm& self, std::span<const int> ranks);

}  // namespace dsv3::dist::detail
