// latentda C++ error handling: what each misuse throws, and that a failed analysis leaves host arrays untouched.
//
// Build like driver.cpp (examples/cpp/README.md); run:  target/cpp-errors BUNDLE
// Prints one line per case, "case=<name> code=<code> what=<message>" for a thrown latentda::Error, plus
// "untouched=<0|1>" for failed analyses (1 = every bound array is bit-identical to its copy taken before the call),
// and ends with "all checks done". Exit status 0 when every case behaved as documented, 1 otherwise.

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "latentda.hpp"

namespace {

int failures = 0;

// Runs `f`, expecting a latentda::Error with code `want`; prints the case line.
template <class F>
void expect_error(const char* name, int32_t want, F&& f) {
  try {
    f();
    std::printf("case=%s code=none\n", name);
    ++failures;
  } catch (const latentda::Error& e) {
    std::printf("case=%s code=%d what=%s\n", name, e.code(), e.what());
    if (e.code() != want) ++failures;
  }
}

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s BUNDLE\n", argv[0]);
    return 2;
  }
  const std::string bundle = argv[1];
  try {
    // 1. A bundle directory that does not exist.
    expect_error("bad_bundle", latentda::status::bundle,
                 [] { latentda::Context::open("/nonexistent/latentda-bundle"); });
    // 2. Invalid options.
    expect_error("bad_options", latentda::status::invalid_argument,
                 [&] { latentda::Context::open(bundle, "outer_loops = \"many\""); });

    latentda::Context ctx = latentda::Context::open(bundle);
    const int64_t nlev = 3, nlat = 8, nlon = 16;  // the fixtures' grid
    std::vector<double> u(nlev * nlat * nlon), t(nlev * nlat * nlon);
    std::vector<float> ps(nlat * nlon);
    for (std::size_t i = 0; i < u.size(); ++i) {
      u[i] = 5.0 + std::sin(0.1 * i);
      t[i] = 250.0 + std::cos(0.07 * i);
    }
    for (std::size_t i = 0; i < ps.size(); ++i) ps[i] = 100000.0f + 50.0f * float(std::sin(0.3 * i));

    // 3. Wrong shape: lat and lon swapped (same number of values).
    expect_error("wrong_shape", latentda::status::invalid_argument,
                 [&] { ctx.bind_field("u", u, {nlev, nlon, nlat}); });
    // 4. Wrong rank for a surface field.
    expect_error("wrong_ndim", latentda::status::invalid_argument, [&] { ctx.bind_field("ps", ps, {1, nlat, nlon}); });
    // 5. Array shorter than its shape says.
    std::vector<double> short_u(100);
    expect_error("wrong_length", latentda::status::invalid_argument,
                 [&] { ctx.bind_field("u", short_u, {nlev, nlat, nlon}); });
    // 6. Unknown variable.
    expect_error("unknown_variable", latentda::status::invalid_argument, [&] { ctx.var_index("w"); });
    // 7. Null data.
    expect_error("null_data", latentda::status::null_pointer,
                 [&] { ctx.bind_field("t", static_cast<double*>(nullptr), {nlev, nlat, nlon}); });
    // 8. Observation arrays of different lengths.
    std::vector<int32_t> var = {ctx.var_index("u"), ctx.var_index("t"), ctx.var_index("ps")};
    std::vector<double> lat = {40.0, -20.0, 10.0}, lon = {30.0, 200.0, 100.0}, level = {0.5, 0.85, std::nan("")};
    std::vector<double> value = {7.0, 251.0, 100100.0}, sigma = {1.0, 0.5, 50.0}, two = {1.0, 2.0};
    expect_error("obs_length", latentda::status::invalid_argument,
                 [&] { ctx.set_obs(var, lat, lon, level, value, two); });
    ctx.set_obs(var, lat, lon, level, value, sigma);
    // 9. No analysis yet.
    expect_error("qc_before_analysis", latentda::status::not_ready, [&] { ctx.obs_qc(); });

    // 10. A field not bound: analyse fails and the bound arrays stay bit-identical.
    ctx.bind_field("u", u, {nlev, nlat, nlon});
    ctx.bind_field("t", t, {nlev, nlat, nlon});
    std::vector<double> u0 = u, t0 = t;
    std::vector<float> ps0 = ps;
    expect_error("field_not_bound", latentda::status::not_ready, [&] { ctx.analyse(); });
    bool untouched = same_bits(u, u0) && same_bits(t, t0) && same_bits(ps, ps0);
    std::printf("case=field_not_bound untouched=%d\n", untouched ? 1 : 0);
    if (!untouched) ++failures;

    // 11. NaN in a bound field (Fortran order for ps: shape {nlon, nlat}): analyse fails, arrays untouched.
    ctx.bind_field("ps", ps, {nlon, nlat}, latentda::Order::Fortran);
    u[5] = std::numeric_limits<double>::quiet_NaN();
    u0 = u;
    expect_error("nan_in_field", latentda::status::invalid_data, [&] { ctx.analyse(); });
    untouched = same_bits(u, u0) && same_bits(t, t0) && same_bits(ps, ps0);
    std::printf("case=nan_in_field untouched=%d\n", untouched ? 1 : 0);
    if (!untouched) ++failures;

    // 12. Unknown method: rejected before anything is touched.
    u[5] = 5.0;
    u0 = u;
    expect_error("bad_method", latentda::status::invalid_argument, [&] { ctx.analyse("4dvar"); });
    untouched = same_bits(u, u0) && same_bits(t, t0) && same_bits(ps, ps0);
    std::printf("case=bad_method untouched=%d\n", untouched ? 1 : 0);
    if (!untouched) ++failures;

    // 13. With everything valid the analysis succeeds and does change the arrays.
    ctx.analyse();
    bool changed = !same_bits(u, u0) && !same_bits(t, t0);
    std::printf("case=valid_analysis changed=%d qc=%zu\n", changed ? 1 : 0, ctx.obs_qc().size());
    if (!changed) ++failures;

    // 14. The hybrid method, and the B operator's variance and draws (wrong output length: invalid_argument).
    ctx.analyse("hybrid");
    std::printf("case=hybrid_analysis qc=%zu\n", ctx.obs_qc().size());
    std::vector<double> short_out(10);
    expect_error("bvariance_wrong_length", latentda::status::invalid_argument, [&] { ctx.bvariance(short_out); });
    std::vector<double> bvar = ctx.bvariance();
    bool positive = true;
    for (double x : bvar) positive = positive && x > 0.0;
    bool same_draw = ctx.brandomize(3) == ctx.brandomize(3) && ctx.brandomize(3) != ctx.brandomize(4);
    std::printf("case=bvariance positive=%d n=%zu same_draw=%d\n", positive ? 1 : 0, bvar.size(), same_draw ? 1 : 0);
    if (!positive || !same_draw) ++failures;

    // 15. A moved-from context throws instead of crashing.
    latentda::Context other = std::move(ctx);
    expect_error("moved_from", latentda::status::null_pointer, [&] { ctx.state_size(); });
    std::printf("case=moved_to state_size=%zu\n", other.state_size());
  } catch (const latentda::Error& e) {
    std::printf("unexpected latentda error %d: %s\n", e.code(), e.what());
    return 1;
  }
  std::printf("all checks done, %d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
