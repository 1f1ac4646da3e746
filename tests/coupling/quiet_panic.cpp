// Quiet panics through the C++ API (issue 25, item 6; built and run by tests/cpp.rs): opening a bundle whose graph
// makes tract panic throws latentda::Error with status::bundle and the panic's text, and prints nothing on stderr.
// Usage: quiet_panic CORRUPT_BUNDLE. Prints "code=<status> what=<message>"; exits 0 when the open threw.
#include <cstdio>

#include "latentda.hpp"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORRUPT_BUNDLE\n", argv[0]);
    return 2;
  }
  try {
    auto ctx = latentda::Context::open(argv[1]);
    std::printf("FAIL the corrupt bundle opened\n");
    return 1;
  } catch (const latentda::Error& e) {
    std::printf("code=%d what=%s\n", static_cast<int>(e.code()), e.what());
  }
  return 0;
}
