// Issue 26 from C++: layout queries (Context::grid, Context::variables), H as a service (obs_h, obs_h_ad) and the
// noise floor of U (bsqrt_noise) on the fixture bundle tests/fixtures/tanh; the C++ twin of obs_service.c.
//   obs_service BUNDLE BACKGROUND.bin [REPORT.json]
// Prints PASS/FAIL lines and PASSED at the end when all passed.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "latentda.hpp"

static int failures = 0;

static void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  try {
    auto ctx = latentda::Context::open(argv[1]);
    const latentda::Grid g = ctx.grid();
    expect(g.kind == latentda::GridKind::Gaussian && g.vertical == latentda::Vertical::Sigma && g.lat.size() == 8 &&
               g.lon.size() == 16 && g.levels.size() == 3 && g.lat.front() > g.lat.back(),
           "grid of the fixture");
    const std::size_t nx = ctx.state_size();
    std::vector<double> xb(nx);
    std::ifstream in(argv[2], std::ios::binary);
    in.read(reinterpret_cast<char*>(xb.data()), static_cast<std::streamsize>(nx * sizeof(double)));
    expect(static_cast<std::size_t>(in.gcount()) == nx * sizeof(double), "background read");
    std::size_t covered = 0;
    const int64_t nlat = static_cast<int64_t>(g.lat.size()), nlon = static_cast<int64_t>(g.lon.size());
    for (const latentda::Variable& v : ctx.variables()) {
      std::cout << "variable " << v.name << " [" << v.units << "]: " << v.nlev << " levels, x[" << v.offset << " .. "
                << v.offset + v.length << ")\n";
      expect(v.offset == covered, "blocks follow each other");
      covered += v.length;
      if (v.nlev > 0)
        ctx.bind_field(v.name, xb.data() + v.offset, {v.nlev, nlat, nlon});
      else
        ctx.bind_field(v.name, xb.data() + v.offset, {nlat, nlon});
    }
    expect(covered == nx, "the variables' blocks fill the state");

    const int32_t iu = ctx.var_index("u"), it = ctx.var_index("t"), ip = ctx.var_index("ps");
    std::vector<int32_t> var = {iu, it, ip, iu, -1, it};
    std::vector<double> lat = {-81.0, g.lat[2], 12.5, 10.0, 0.0, 5.0};
    std::vector<double> lon = {359.1, g.lon[5], 101.0, 10.0, 0.0, 5.0};
    std::vector<double> lev = {0.61, g.levels[1], NAN, 0.95, 0.5, 0.5};
    std::vector<double> value(6, 0.0), sigma = {1.0, 1.0, 50.0, 1.0, 1.0, 0.0};
    const std::vector<int32_t> want = {latentda::qc::used, latentda::qc::used, latentda::qc::used,
                                       latentda::qc::outside_vertical, latentda::qc::unknown_variable,
                                       latentda::qc::invalid};
    ctx.set_obs(var, lat, lon, lev, value, sigma);
    const latentda::ObsValues h = ctx.obs_h();
    expect(h.qc == want, "geometric QC flags");
    expect(std::isnan(h.hx[3]) && std::isnan(h.hx[4]) && std::isnan(h.hx[5]), "rejected observations get NaN");
    for (int i = 0; i < 3; ++i) value[i] = h.hx[i] + 0.7 * sigma[i];
    ctx.set_obs(var, lat, lon, lev, value, sigma);
    const latentda::ObsValues h2 = ctx.obs_h(xb);
    expect(h2.hx[0] == h.hx[0] && h2.hx[1] == h.hx[1] && h2.hx[2] == h.hx[2], "same positions, same H x");
    const std::vector<double> y = {0.3, -1.7, 2.2, NAN, NAN, NAN};
    const std::vector<double> hty = ctx.obs_h_ad(y);
    double lhs = 0, rhs = 0;
    for (int i = 0; i < 3; ++i) lhs += h2.hx[i] * y[i];
    for (std::size_t k = 0; k < nx; ++k) rhs += xb[k] * hty[k];
    expect(std::fabs(lhs - rhs) <= 1e-12 * std::fabs(lhs), "obs_h_ad is the transpose of obs_h");
    try {
      const std::vector<double> short_state(nx - 1, 0.0);
      ctx.obs_h(short_state);
      expect(false, "a short state is refused");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::invalid_argument, "a short state is refused");
    }
    const latentda::NoiseFloor nf = ctx.bsqrt_noise();
    std::printf("noise floor: U %.2e, U^T %.2e, adjoint %.2e\n", nf.u_nonlinearity, nf.ut_nonlinearity,
                nf.adjoint_mismatch);
    expect(nf.u_nonlinearity > 0 && nf.u_nonlinearity < 1e-4 && nf.ut_nonlinearity < 1e-4 && nf.adjoint_mismatch < 1e-4,
           "float32 noise floor in range");
    ctx.analyse("l3dvar");  // overwrites xb with the analysis
    expect(ctx.obs_qc() == want, "the analysis flags the same observations");
    const std::string report = ctx.report_json();
    std::printf("O-B (service): %.17g %.17g %.17g\n", value[0] - h2.hx[0], value[1] - h2.hx[1], value[2] - h2.hx[2]);
    if (argc > 3) std::ofstream(argv[3]) << report;  // the report, for the test to compare O-B bit for bit
  } catch (const latentda::Error& e) {
    std::cout << "FAIL latentda error " << e.code() << ": " << e.what() << "\n";
    return 1;
  }
  std::cout << (failures ? "FAILED" : "PASSED") << "\n";
  return failures ? 1 : 0;
}
