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
struct AgreedError : Error {  // what rank 0 throws: the message every rank agreed on
  using Error::Error;
};

void agree(const Comm& comm, const std::function<void()>& step);

// Ends a command on an error that agree() raised on every rank: call it inside the catch block
// (it rethrows). Rank 0 prints the message ("dsv3 COMMAND: error: ..."), then every rank meets
// at a barrier and finalizes, and all rethrow as QuietError. Printing before the barrier matters:
// the first rank to exit non-zero makes mpirun kill the others, and rank 0 used to lose that
// race now and then with its message still unwritten. Any other exception only finalizes.
[[noreturn]] void end_agreed_error(const char* command);

}  // namespace dsv3::dist
