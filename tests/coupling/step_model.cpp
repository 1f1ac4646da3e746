// Issue 23, item 6 from C++: the host's own step model (Context::set_step_model) from std::function lambdas and from
// the C ABI's callbacks, Context::l4dvar_check and Context::report_number, each against the C ABI on the same inputs
// (lda_set_step_model, lda_l4dvar_check, lda_analyse, lda_report_number), on the fixture bundle tests/fixtures/tanh.
//   step_model BUNDLE BACKGROUND.bin
// The model shifts every (level, latitude) row one longitude east: exact TL (itself) and AD (the shift back).
// Prints PASS/FAIL lines and PASSED at the end when all passed.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "latentda.hpp"

static int failures = 0;
static std::size_t nlon = 0;

static void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "PASS " : "FAIL ") << what << "\n";
  if (!ok) ++failures;
}

// y = shift(x) (each row of nlon values one place east, periodic), or its transpose.
static void shift(std::size_t n, const double* x, double* y, bool transpose) {
  for (std::size_t row = 0; row < n / nlon; ++row) {
    const double* a = x + row * nlon;
    double* b = y + row * nlon;
    for (std::size_t i = 0; i < nlon; ++i) {
      const std::size_t east = (i + 1) % nlon;
      if (transpose)
        b[i] = a[east];
      else
        b[east] = a[i];
    }
  }
}

// The same model as C callbacks; `user` counts the calls.
extern "C" int32_t c_step(void* user, size_t n, const double* x, double* x_next) {
  ++*static_cast<int*>(user);
  shift(n, x, x_next, false);
  return 0;
}
extern "C" int32_t c_tl(void* user, size_t n, const double*, const double* dx, double* dx_next) {
  ++*static_cast<int*>(user);
  shift(n, dx, dx_next, false);
  return 0;
}
extern "C" int32_t c_ad(void* user, size_t n, const double*, const double* dx_next, double* dx) {
  ++*static_cast<int*>(user);
  shift(n, dx_next, dx, true);
  return 0;
}

struct Inputs {
  std::vector<int32_t> var;
  std::vector<double> lat, lon, lev, value, sigma, time;
};

// Binds every variable of `ctx` to its block of `x` (C order).
static void bind_all(latentda::Context& ctx, std::vector<double>& x, int64_t nlat) {
  for (const latentda::Variable& v : ctx.variables()) {
    if (v.nlev > 0)
      ctx.bind_field(v.name, x.data() + v.offset, {v.nlev, nlat, static_cast<int64_t>(nlon)});
    else
      ctx.bind_field(v.name, x.data() + v.offset, {nlat, static_cast<int64_t>(nlon)});
  }
}

// The C ABI's l4dvar analysis with the C callbacks on its own copy of the background.
static bool c_abi_analysis(const char* bundle, latentda::Context& cpp, std::vector<double>& x, const Inputs& in,
                           double* step_dot, double* chained_dot, double* j_final) {
  LdaContext* c = nullptr;
  if (lda_open(bundle, nullptr, &c) != LDA_OK) return false;
  int calls = 0;
  bool ok = true;
  const int64_t nlat = static_cast<int64_t>(cpp.grid().lat.size());
  for (const latentda::Variable& v : cpp.variables()) {
    std::vector<int64_t> shape = {nlat, static_cast<int64_t>(nlon)};
    if (v.nlev > 0) shape.insert(shape.begin(), v.nlev);
    ok = ok && lda_bind_field_f64(c, v.name.c_str(), x.data() + v.offset, static_cast<int32_t>(shape.size()),
                                  shape.data(), LDA_ORDER_C) == LDA_OK;
  }
  const std::size_t n = in.var.size();
  ok = ok && lda_set_obs(c, n, in.var.data(), in.lat.data(), in.lon.data(), in.lev.data(), in.value.data(),
                         in.sigma.data()) == LDA_OK;
  ok = ok && lda_set_obs_times(c, n, in.time.data()) == LDA_OK;
  ok = ok && lda_set_step_model(c, c_step, c_tl, c_ad, &calls, 6.0) == LDA_OK;
  ok = ok && lda_l4dvar_check(c, 3, 7, step_dot, chained_dot) == LDA_OK;
  ok = ok && lda_analyse(c, "l4dvar") == LDA_OK;
  ok = ok && lda_report_number(c, "solver.j_final", j_final) == LDA_OK;
  if (!ok) std::cout << "C ABI: " << lda_last_error(c) << "\n";
  lda_close(c);
  return ok && calls > 0;
}

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  try {
    auto ctx = latentda::Context::open(argv[1]);
    const latentda::Grid g = ctx.grid();
    nlon = g.lon.size();
    const int64_t nlat = static_cast<int64_t>(g.lat.size());
    const std::size_t nx = ctx.state_size();
    std::vector<double> xb(nx);
    std::ifstream file(argv[2], std::ios::binary);
    file.read(reinterpret_cast<char*>(xb.data()), static_cast<std::streamsize>(nx * sizeof(double)));
    expect(static_cast<std::size_t>(file.gcount()) == nx * sizeof(double), "background read");
    std::vector<double> x = xb;
    bind_all(ctx, x, nlat);

    // Observations in three slots (0, 6, 12 h), 0.7 sigma from the background.
    Inputs in;
    const int32_t iu = ctx.var_index("u"), it = ctx.var_index("t"), ip = ctx.var_index("ps");
    for (int k = 0; k < 12; ++k) {
      const int32_t v = k % 3 == 0 ? iu : (k % 3 == 1 ? it : ip);
      in.var.push_back(v);
      in.lat.push_back(g.lat[1 + k % 6]);
      in.lon.push_back(g.lon[(3 * k) % nlon] + 4.0);
      in.lev.push_back(v == ip ? NAN : g.levels[k % 3]);
      in.sigma.push_back(v == ip ? 50.0 : 1.0);
      in.value.push_back(0.0);
      in.time.push_back(6.0 * (k % 3));
    }
    ctx.set_obs(in.var, in.lat, in.lon, in.lev, in.value, in.sigma);
    const latentda::ObsValues h = ctx.obs_h();
    for (std::size_t i = 0; i < in.var.size(); ++i) in.value[i] = h.hx[i] + 0.7 * in.sigma[i];
    ctx.set_obs(in.var, in.lat, in.lon, in.lev, in.value, in.sigma);
    ctx.set_obs_times(in.time);

    // The model as lambdas, with a call counter.
    int calls = 0;
    latentda::StepFn step = [&](latentda::Span<const double> a, latentda::Span<double> b) {
      ++calls;
      shift(a.size(), a.data(), b.data(), false);
    };
    latentda::StepTlFn tl = [&](latentda::Span<const double>, latentda::Span<const double> d, latentda::Span<double> o) {
      ++calls;
      shift(d.size(), d.data(), o.data(), false);
    };
    latentda::StepAdFn ad = [&](latentda::Span<const double>, latentda::Span<const double> d, latentda::Span<double> o) {
      ++calls;
      shift(d.size(), d.data(), o.data(), true);
    };

    // Errors: some functions empty, a bad time step.
    try {
      ctx.set_step_model(step, nullptr, ad, 6.0);
      expect(false, "an empty tl is refused");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::null_pointer && std::string(e.what()).find("'tl'") != std::string::npos,
             std::string("an empty tl is refused: ") + e.what());
    }
    try {
      ctx.set_step_model(step, tl, ad, 0.0);
      expect(false, "a zero time step is refused");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::invalid_argument, "a zero time step is refused");
    }
    // The nonlinear step alone (the online mix's forecasts): accepted; l4dvar_check then names the missing TL.
    ctx.set_step_model(step, nullptr, nullptr, 6.0);
    try {
      ctx.l4dvar_check(2, 7);
      expect(false, "l4dvar_check with a nonlinear-only model");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::invalid_argument &&
                 std::string(e.what()).find("'step' alone") != std::string::npos,
             std::string("l4dvar_check with a nonlinear-only model: ") + e.what());
    }
    ctx.clear_step_model();
    // Analysis times (the online mix's check of when its forecasts are valid): a finite one kept, NaN refused.
    ctx.set_analysis_time(6.0);
    try {
      ctx.set_analysis_time(std::nan(""));
      expect(false, "a NaN analysis time is refused");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::invalid_argument &&
                 std::string(e.what()).find("not finite") != std::string::npos,
             std::string("a NaN analysis time is refused: ") + e.what());
    }
    try {
      ctx.report_number("solver.j_final");
      expect(false, "report_number before an analysis");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::not_ready, "report_number before an analysis: status::not_ready");
    }

    // Lambdas: checks and analysis, against the C ABI with C callbacks.
    ctx.set_step_model(step, tl, ad, 6.0);
    const latentda::L4dvarCheck chk = ctx.l4dvar_check(3, 7);
    std::printf("l4dvar_check: step dot %.2e, chained dot %.2e\n", chk.step_dot, chk.chained_dot);
    expect(chk.step_dot < 1e-13 && chk.chained_dot < 1e-5, "the shift's adjoint passes");
    expect(calls > 0, "l4dvar_check ran the lambdas");
    calls = 0;
    ctx.analyse("l4dvar");
    expect(calls > 0, "analyse(\"l4dvar\") ran the lambdas");
    const double j = ctx.report_number("solver.j_final"), j0 = ctx.report_number("solver.j_initial");
    std::printf("J %.6e -> %.6e\n", j0, j);
    expect(j < j0, "the analysis fits the observations");
    expect(ctx.report_number("window.slots.2.n_total") == 4.0, "report_number: four observations in slot 2");
    try {
      ctx.report_number("solver.no_such_entry");
      expect(false, "an unknown report path is refused");
    } catch (const latentda::Error& e) {
      expect(e.code() == latentda::status::invalid_argument, "an unknown report path is refused");
    }
    std::vector<double> xc = xb;
    double c_step_dot = NAN, c_chained_dot = NAN, c_j = NAN;
    expect(c_abi_analysis(argv[1], ctx, xc, in, &c_step_dot, &c_chained_dot, &c_j), "the C ABI's l4dvar analysis");
    expect(c_step_dot == chk.step_dot && c_chained_dot == chk.chained_dot, "l4dvar_check equals lda_l4dvar_check");
    expect(c_j == j, "report_number equals lda_report_number");
    expect(std::memcmp(x.data(), xc.data(), nx * sizeof(double)) == 0, "C++ lambdas and C callbacks: same analysis");

    // The C ABI's callbacks through the C++ class give the same analysis.
    int c_calls = 0;
    std::vector<double> xr = xb;
    bind_all(ctx, xr, nlat);
    ctx.set_step_model(c_step, c_tl, c_ad, &c_calls, 6.0);
    ctx.analyse("l4dvar");
    expect(c_calls > 0 && std::memcmp(xr.data(), xc.data(), nx * sizeof(double)) == 0,
           "C callbacks through the C++ class: same analysis");

    // A throwing step function: its exception comes out of analyse, the bound arrays are untouched.
    std::vector<double> xt = xb;
    bind_all(ctx, xt, nlat);
    ctx.set_step_model([](latentda::Span<const double>, latentda::Span<double>) { throw std::runtime_error("model blew up"); },
                       tl, ad, 6.0);
    try {
      ctx.analyse("l4dvar");
      expect(false, "a throwing step function fails the analysis");
    } catch (const latentda::Error& e) {
      expect(false, std::string("the step function's own exception, not latentda::Error: ") + e.what());
    } catch (const std::runtime_error& e) {
      expect(std::string(e.what()) == "model blew up", std::string("the step function's exception is rethrown: ") + e.what());
    }
    expect(std::memcmp(xt.data(), xb.data(), nx * sizeof(double)) == 0, "bound arrays untouched after the throw");

    // A call on the Context from inside its own step model is refused; the analysis itself goes on.
    int32_t reentry = -1;
    std::string reentry_msg;
    ctx.set_step_model(
        [&](latentda::Span<const double> a, latentda::Span<double> b) {
          try {
            ctx.state_size();
          } catch (const latentda::Error& e) {
            reentry = e.code();
            reentry_msg = e.what();
          }
          shift(a.size(), a.data(), b.data(), false);
        },
        tl, ad, 6.0);
    ctx.analyse("l4dvar");
    expect(reentry == latentda::status::not_ready && reentry_msg.find("re-entrant call refused") != std::string::npos,
           "a call from inside the step model is refused: " + reentry_msg);
    expect(std::memcmp(xt.data(), xc.data(), nx * sizeof(double)) == 0, "and the analysis equals the C ABI's");

    // Removing the host model: the bundle's step model serves again, the lambdas no longer run.
    ctx.clear_step_model();
    calls = 0;
    ctx.analyse("l4dvar");
    expect(calls == 0, "clear_step_model: the bundle's step model runs");
    ctx.set_step_model(step, tl, ad, 6.0);
    ctx.set_step_model(nullptr, nullptr, nullptr, 0.0);
    ctx.analyse("l4dvar");
    expect(calls == 0, "all three empty removes the host model too");

    // Moving the Context keeps the step model.
    ctx.set_step_model(step, tl, ad, 6.0);
    latentda::Context moved = std::move(ctx);
    moved.analyse("l4dvar");
    expect(calls > 0, "a moved Context keeps its step model");
  } catch (const latentda::Error& e) {
    std::cout << "FAIL latentda error " << e.code() << ": " << e.what() << "\n";
    return 1;
  }
  std::cout << (failures ? "FAILED" : "PASSED") << "\n";
  return failures ? 1 : 0;
}
