// Context::set_ensemble through latentda.hpp (tests/ensemble_analysis.rs): k = 1 and a wrong length throw
// status::invalid_argument, k = 3 members are accepted and k = 0 removes them.
#include "latentda.hpp"

#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  auto ctx = latentda::Context::open(argv[1], "self_test = false");
  const std::size_t n = ctx.state_size();
  std::vector<double> m(3 * n);
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = 280.0 + static_cast<double>(i % 17) * 0.1 + static_cast<double>(i / n);
  int failures = 0;
  try {
    ctx.set_ensemble(1, latentda::Span<const double>(m.data(), n));
    failures++;
  } catch (const latentda::Error& e) {
    std::printf("k = 1: code %d, %s\n", e.code(), e.what());
    if (e.code() != latentda::status::invalid_argument) failures++;
  }
  try {
    ctx.set_ensemble(3, latentda::Span<const double>(m.data(), 3 * n - 1));
    failures++;
  } catch (const latentda::Error& e) {
    if (e.code() != latentda::status::invalid_argument) failures++;
  }
  ctx.set_ensemble(3, m);
  ctx.set_ensemble(0, latentda::Span<const double>());
  std::printf("%s\n", failures == 0 ? "ensemble bindings OK" : "FAILED");
  return failures;
}
