// Errors in a distributed command (P7: "every rank's failure reaches the console", once).
// agree() runs a step that every rank can do alone (parse and check settings, open a checkpoint),
// then compares outcomes with one all-gather: if any rank failed, every rank throws, rank 0 with
// the message (one line when all ranks failed alike, else one per rank), the others a QuietError
// the CLI does not print. Errors after that are each rank's own and carry its number.
#pragma once
#include <functional>

#include "core/check.h"
#include "dist/comm.h"

namespace dsv3::dist {

struct QuietError : Error {
  using Error::Error;
};

void agree(const Comm& comm, const std::function<void()>& step);

}  // namespace dsv3::dist
