// What a test asserts about errors: the message a call fails with, and whether text contains a
// part. Its own header because the communicator tests (tests/cpp/mpi) use it without the rest of
// test_util.h (whose paths need the build's DSV3_SHARED_DIR).
#pragma once
#include <string>

#include "core/check.h"

namespace dsv3::test {

// The message of the dsv3::Error f throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
inline bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace dsv3::test
