// latentda MPI coupling for C++ hosts: an RAII class over the C shim include/latentda_mpi.h (library
// liblatentda_mpi, built with the host's own mpicc: scripts/install.sh --mpi; docs/mpi.md).
//
//   latentda::mpi::Context ctx(bundle_dir, MPI_COMM_WORLD);          // [collective] root 0; throws latentda::mpi::Error
//   ctx.bind_patch("u", u.data(), {nlev, ny + 2 * h, nx + 2 * h}, lon0, lat0, h);   // [local] each variable
//   ctx.set_obs(var, lat, lon, level, value, sigma);                  // [local] this rank's observations (may be empty)
//   ctx.analyse();                                                    // [collective] the analysis overwrites the patches
//   auto qc = ctx.obs_qc(); auto hx = ctx.obs_hx();                   // [local] this rank's observations, in its order
//   double j = ctx.report_number("solver.j_final");                   // [local] the same on every rank
//                                                                     // ~Context: [collective] lda_mpi_close
//
// Errors: a failed call throws latentda::mpi::Error (a std::runtime_error) with code() = the C status (LDA_ERR_*,
// LDA_MPI_ERR_MPI) and what() = lda_mpi_last_error. A collective call throws the same code and message on every rank,
// so every rank leaves the same way (the destructor, collective too, then runs on every rank). A local call (bind_patch,
// set_obs) that fails throws on its rank only: catch it and call lda_mpi analyse anyway (it then fails on every rank
// with that message), or make every rank take the same branch. Build: mpicxx -std=c++17 prog.cpp -Iinclude
// -llatentda_mpi -llatentda (pkg-config latentda-mpi, CMake latentda::mpi). Independent of latentda.hpp (no cxx runtime).

#ifndef LATENTDA_MPI_HPP
#define LATENTDA_MPI_HPP

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// The C API only: skip the MPI C++ bindings (deprecated since MPI 2.2; they warn under -Wall -Wextra).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include "latentda_mpi.h"

namespace latentda {
namespace mpi {

// A failure: code() is the C status, what() the message (the same on every rank for collective calls).
class Error : public std::runtime_error {
 public:
  Error(int32_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

// H(x_b) and H(x_a) of this rank's observations (NaN where the geometric checks rejected one).
struct ObsHx {
  std::vector<double> hxb;
  std::vector<double> hxa;
};

// One MPI coupling context over a communicator. Move-only; its destructor is collective (lda_mpi_close).
class Context {
 public:
  // [collective] Opens `bundle_dir` on rank `root` of `comm` (options: TOML text as for lda_open, "" for defaults).
  Context(const std::string& bundle_dir, MPI_Comm comm, const std::string& options = "", int root = LDA_MPI_DEFAULT_ROOT) {
    const int32_t st = lda_mpi_open(bundle_dir.c_str(), options.empty() ? nullptr : options.c_str(), comm, root, &ctx_);
    if (st != LDA_OK) throw Error(st, lda_mpi_last_error(nullptr));
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}
  Context& operator=(Context&& o) noexcept {
    if (this != &o) {
      lda_mpi_close(ctx_);
      ctx_ = std::exchange(o.ctx_, nullptr);
    }
    return *this;
  }
  ~Context() { lda_mpi_close(ctx_); }

  // [local] Layout queries.
  int rank() const { int32_t r = 0; lda_mpi_rank(ctx_, &r, nullptr, nullptr); return r; }
  int size() const { int32_t s = 0; lda_mpi_rank(ctx_, nullptr, &s, nullptr); return s; }
  int root() const { int32_t r = 0; lda_mpi_rank(ctx_, nullptr, nullptr, &r); return r; }
  std::size_t nlat() const { std::size_t n = 0; check(lda_mpi_grid_info(ctx_, nullptr, &n, nullptr, nullptr, nullptr)); return n; }
  std::size_t nlon() const { std::size_t n = 0; check(lda_mpi_grid_info(ctx_, nullptr, nullptr, &n, nullptr, nullptr)); return n; }
  std::vector<std::string> variables() const {
    int32_t n = 0;
    check(lda_mpi_var_count(ctx_, &n));
    std::vector<std::string> out;
    for (int32_t i = 0; i < n; ++i) {
      char buf[300];
      check(lda_mpi_var_name(ctx_, i, buf, sizeof buf, nullptr));
      out.emplace_back(buf);
    }
    return out;
  }
  int32_t nlev(int32_t var) const { int32_t n = 0; check(lda_mpi_var_nlev(ctx_, var, &n)); return n; }
  int32_t var_index(const std::string& name) const {
    int32_t i = -1;
    check(lda_mpi_var_index(ctx_, name.c_str(), &i));
    return i;
  }

  // [local] Binds this rank's patch in place: `shape` of the array with its halo ({nlev, ny + 2h, nx + 2h} or
  // {ny + 2h, nx + 2h} in C order), the global 0-based index of the first interior point, the halo width. The array
  // must outlive the binding.
  void bind_patch(const std::string& name, float* data, const std::vector<int64_t>& shape, int64_t lon_start,
                  int64_t lat_start, int32_t halo = 0, int32_t order = LDA_ORDER_C) {
    check(lda_mpi_bind_patch_f32(ctx_, name.c_str(), data, static_cast<int32_t>(shape.size()), shape.data(), order,
                                 lon_start, lat_start, halo));
  }
  void bind_patch(const std::string& name, double* data, const std::vector<int64_t>& shape, int64_t lon_start,
                  int64_t lat_start, int32_t halo = 0, int32_t order = LDA_ORDER_C) {
    check(lda_mpi_bind_patch_f64(ctx_, name.c_str(), data, static_cast<int32_t>(shape.size()), shape.data(), order,
                                 lon_start, lat_start, halo));
  }

  // [local] This rank's observations (copied; equal lengths, possibly 0).
  void set_obs(const std::vector<int32_t>& var, const std::vector<double>& lat, const std::vector<double>& lon,
               const std::vector<double>& level, const std::vector<double>& value, const std::vector<double>& sigma) {
    put_obs(lda_mpi_set_obs, "set_obs", var, lat, lon, level, value, sigma);
  }

  // [local] This rank's withheld observations (as set_obs; empty clears them): gathered by the next analyses, never
  // assimilated, compared with the background and the analysis in the report's "withheld" section. They stay until
  // set again.
  void set_withheld(const std::vector<int32_t>& var, const std::vector<double>& lat, const std::vector<double>& lon,
                    const std::vector<double>& level, const std::vector<double>& value,
                    const std::vector<double>& sigma) {
    put_obs(lda_mpi_set_withheld, "set_withheld", var, lat, lon, level, value, sigma);
  }

  // [local] Times (hours from the analysis time; method "l4dvar") of this rank's observations, in their order.
  void set_obs_times(const std::vector<double>& time_hours) {
    check(lda_mpi_set_obs_times(ctx_, time_hours.size(), time_hours.data()));
  }

  // [local] The time of this and later analyses (hours from any fixed epoch; every rank sets the same): the online
  // mix scores its candidates only at the analysis they are valid for. Throws on a non-finite time.
  void set_analysis_time(double hours) { check(lda_mpi_set_analysis_time(ctx_, hours)); }

  // [collective] The analysis; throws the same Error on every rank on failure (then no patch was written).
  void analyse(const std::string& method = "") { check(lda_mpi_analyse(ctx_, method.empty() ? nullptr : method.c_str())); }

  // [local] Results for this rank's observations, in its order.
  std::vector<int32_t> obs_qc() const {
    std::vector<int32_t> q(nobs());
    check(lda_mpi_obs_qc(ctx_, q.data(), q.size()));
    return q;
  }
  ObsHx obs_hx() const {
    const std::size_t n = nobs();
    ObsHx r{std::vector<double>(n), std::vector<double>(n)};
    check(lda_mpi_obs_hx(ctx_, r.hxb.data(), r.hxa.data(), n));
    return r;
  }
  // [local] This rank's observation count, and the count over all ranks in the last successful analysis.
  std::size_t nobs() const { std::size_t n = 0; check(lda_mpi_obs_count(ctx_, &n, nullptr)); return n; }
  std::size_t nobs_global() const { std::size_t n = 0; check(lda_mpi_obs_count(ctx_, nullptr, &n)); return n; }

  // [local] The report (identical on every rank).
  std::string report_json() const {
    std::size_t need = 0;
    const int32_t st = lda_mpi_report_json(ctx_, nullptr, 0, &need);
    if (st != LDA_ERR_BUFFER_TOO_SMALL) check(st);
    std::string s(need, '\0');
    check(lda_mpi_report_json(ctx_, &s[0], s.size(), nullptr));
    s.resize(need - 1);
    return s;
  }
  double report_number(const std::string& path) const {
    double v = 0;
    check(lda_mpi_report_number(ctx_, path.c_str(), &v));
    return v;
  }

  LdaMpiContext* get() const noexcept { return ctx_; }

 private:
  using ObsCall = int32_t (*)(LdaMpiContext*, std::size_t, const int32_t*, const double*, const double*,
                               const double*, const double*, const double*);

  // set_obs / set_withheld: the length check (remembered by the shim on failure), then the C call.
  void put_obs(ObsCall call, const char* what, const std::vector<int32_t>& var, const std::vector<double>& lat,
               const std::vector<double>& lon, const std::vector<double>& level, const std::vector<double>& value,
               const std::vector<double>& sigma) {
    const std::size_t n = var.size();
    if (lat.size() != n || lon.size() != n || level.size() != n || value.size() != n || sigma.size() != n) {
      const std::string m = std::string(what) + ": the arrays differ in length; all need var.size()";
      lda_mpi_set_error(ctx_, LDA_ERR_INVALID_ARGUMENT, m.c_str());  // the next analyse fails on every rank
      throw Error(LDA_ERR_INVALID_ARGUMENT, m);
    }
    check(call(ctx_, n, var.data(), lat.data(), lon.data(), level.data(), value.data(), sigma.data()));
  }

  void check(int32_t st) const {
    if (st != LDA_OK) throw Error(st, lda_mpi_last_error(ctx_));
  }
  LdaMpiContext* ctx_ = nullptr;
};

}  // namespace mpi
}  // namespace latentda

#endif  // LATENTDA_MPI_HPP
