// latentda C++ API: latent data assimilation for forecast models.
//
// Hand-written public header over the cxx bridge (src/coupling/cxx_bridge.rs). Include this file only; it pulls in the
// generated bridge header include/latentda/bridge.h and include/latentda/rust/cxx.h (both copied there by
// `cargo build --release`; do not edit them). Requires C++17. Build a program with one command (examples/cpp/README.md):
//
//   g++ -std=c++17 -O2 -Iinclude prog.cpp target/release/liblatentda.a $(nc-config --libs) -lhdf5 -lz -lpthread -ldl -lm -Wl,-z,noexecstack -o prog
//
// Against an installed latentda (scripts/install.sh), whose shared library exports the C++ glue as well:
//   g++ -std=c++17 -O2 prog.cpp $(pkg-config --cflags --libs latentda) -o prog     (CMake: latentda::cxx)
//
// Call order, as in the C ABI (include/latentda.h):
//   auto ctx = latentda::Context::open(bundle_dir);        // throws latentda::Error
//   ctx.bind_field("u", u, {nlev, nlat, nlon});              // every bundle variable, float or double
//   ctx.set_obs(var, lat, lon, level, value, sigma);
//   ctx.analyse();                                           // writes the analysis into the bound arrays
//   ctx.obs_qc(); ctx.report_json();
//
// Errors: every failure throws latentda::Error (a std::runtime_error) whose code() is the C ABI status
// (latentda::status::*, equal to LDA_ERR_*) and whose what() is the message lda_last_error would return.
// Bound host arrays are written only when an analysis succeeded: after any exception they are bit-identical.
// A Context may be used from one thread at a time; different contexts may be used from different threads.
// A panic inside latentda (e.g. the tract engine on a corrupt graph) becomes an Error and prints nothing on
// stderr; the program's own panics and other libraries' are reported as before (docs/coupling.md, Threading).
// Ownership is RAII (one owner, closed once on destruction), so the C ABI's double-close check has no C++
// counterpart. The one callback, the step model of set_step_model, may not call its own Context: such a call throws
// status::not_ready (the C ABI's re-entry refusal); other Contexts may be used there.

#ifndef LATENTDA_HPP
#define LATENTDA_HPP

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// The C ABI's header: LATENTDA_VERSION_* macros (compile-time version; latentda::version() is the library's).
#include "latentda.h"

// cxx runtime first (rust::Error, rust::Box, ...), then the generated bridge declarations.
#include "latentda/rust/cxx.h"
#include "latentda/bridge.h"

namespace latentda {

// Status codes carried by latentda::Error::code(); identical to LDA_ERR_* in latentda.h.
namespace status {
constexpr int32_t ok = 0;
constexpr int32_t null_pointer = 1;      // a required pointer was null
constexpr int32_t invalid_argument = 2;  // unknown name, wrong shape or length, bad option
constexpr int32_t bundle = 3;            // bundle missing, malformed or failing validation
constexpr int32_t backend = 4;           // execution backend or device unusable
constexpr int32_t io = 5;                // file input/output failed
constexpr int32_t invalid_data = 6;      // NaN/Inf in a bound field or control vector (observations: QC flags)
constexpr int32_t not_ready = 7;         // field not bound, no observations, no analysis yet, no baseline for 3dvar/hybrid
constexpr int32_t solver = 8;            // the minimisation failed
constexpr int32_t internal = 9;          // a caught panic; the context fails every later call: destroy it
constexpr int32_t buffer_too_small = 10;
}  // namespace status

// Per-observation QC flags returned by Context::obs_qc(); identical to LDA_QC_* in latentda.h.
namespace qc {
constexpr int32_t used = 0;
constexpr int32_t invalid = 1;
constexpr int32_t outside_domain = 2;
constexpr int32_t outside_vertical = 3;
constexpr int32_t unknown_variable = 4;
constexpr int32_t background_check = 5;
constexpr int32_t outside_window = 6;    // method l4dvar: observation time outside the window
}  // namespace qc

// Memory order of a bound host array.
enum class Order : int32_t {
  C = 0,        // row-major, shape {nlev, nlat, nlon} or {nlat, nlon}
  Fortran = 1,  // column-major, shape {nlon, nlat, nlev} or {nlon, nlat} in Fortran terms
};

// Horizontal grid kind (LdaGridKind in latentda.h).
enum class GridKind : int32_t {
  Regular = 0,   // equally spaced latitudes
  Gaussian = 1,  // Gaussian latitudes
};

// Vertical coordinate (LdaVertical in latentda.h): the unit of the levels and of set_obs's `level`.
enum class Vertical : int32_t {
  Sigma = 0,     // sigma = p / ps
  Pressure = 1,  // pressure, Pa
};

// The bundle's grid (Context::grid()). Fields are {nlev, nlat, nlon} in C order ({nlat, nlon} for surface fields).
struct Grid {
  GridKind kind = GridKind::Regular;
  Vertical vertical = Vertical::Sigma;
  std::vector<double> lat;     // degrees north, north to south
  std::vector<double> lon;     // degrees east, increasing
  std::vector<double> levels;  // model levels, top to bottom
};

// One bundle variable and its block of the state vector (Context::variables()): elements offset .. offset+length-1
// of x in bsqrt/bsqrt_ad/obs_h/obs_h_ad, a C array [max(nlev,1)][nlat][nlon] (Fortran: (nlon, nlat, nlev)).
struct Variable {
  std::string name;
  std::string units;
  int32_t nlev = 0;  // 0 for a surface variable
  std::size_t offset = 0;
  std::size_t length = 0;
};

// H x for every observation set, in set_obs order (Context::obs_h()).
struct ObsValues {
  std::vector<double> hx;   // H_i x; NaN where the geometric checks reject the observation
  std::vector<int32_t> qc;  // geometric QC flag (latentda::qc::used, invalid, outside_domain, ...)
};

// The measured float32 noise floor of U and U^T (Context::bsqrt_noise()), relative values.
struct NoiseFloor {
  double u_nonlinearity = 0;    // |U(a v1 + b v2) - a U v1 - b U v2| / (|a||U v1| + |b||U v2|)
  double ut_nonlinearity = 0;   // the same for U^T
  double adjoint_mismatch = 0;  // |<U v, y> - <v, U^T y>| / max(|<U v, y>|, |<v, U^T y>|)
};

// The adjoint tests of latent 4D-Var's step model (Context::l4dvar_check): relative dot-product errors
// |<M' dx, u> - <dx, M'^T u>| / max of one step, and of the chained transform w -> [dx_0, ..., dx_K].
struct L4dvarCheck {
  double step_dot = 0;
  double chained_dot = 0;
};

// A latentda failure: code() is the C ABI status, what() the message.
class Error : public std::runtime_error {
 public:
  Error(int32_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

// A non-owning view of contiguous memory (std::span-like, for C++17). Constructible from (pointer, size), from any
// contiguous container with data()/size() (std::vector, std::array, std::span, ...) and from a C array.
template <class T>
class Span {
 public:
  using element_type = T;
  constexpr Span() noexcept = default;
  constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
  template <class C,
            class = std::enable_if_t<!std::is_same<std::decay_t<C>, Span>::value &&
                                     std::is_convertible<decltype(std::declval<C&>().data()), T*>::value>>
  constexpr Span(C& c) noexcept : data_(c.data()), size_(static_cast<std::size_t>(c.size())) {}
  template <std::size_t N>
  constexpr Span(T (&a)[N]) noexcept : data_(a), size_(N) {}
  template <class U, class = std::enable_if_t<std::is_convertible<U (*)[], T (*)[]>::value>>
  constexpr Span(const Span<U>& o) noexcept : data_(o.data()), size_(o.size()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }
  constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// A host's own forecast model for method "l4dvar" (Context::set_step_model), on states of n = state_size() values in
// physical units and state layout (Variable::offset): one time step x_next = M(x), its tangent-linear
// dx_next = M'(x) dx and its adjoint dx = M'(x)^T dx_next (the exact transpose of the TL; written, not accumulated).
// Each writes all n values of its output span; the spans belong to latentda and are valid for the call only. To
// fail, throw: the call that ran the model (analyse, l4dvar_check) fails, the bound arrays stay untouched, and that
// call rethrows the exception once latentda has returned.
using StepFn = std::function<void(Span<const double> x, Span<double> x_next)>;
using StepTlFn = std::function<void(Span<const double> x, Span<const double> dx, Span<double> dx_next)>;
using StepAdFn = std::function<void(Span<const double> x, Span<const double> dx_next, Span<double> dx)>;

namespace detail {

// The step model a Context installed: std::functions, or the C ABI's raw callbacks with their user pointer. The
// trampolines below are what latentda calls; `depth` > 0 while one runs (the owning Context then refuses calls).
struct StepFns {
  StepFn step;
  StepTlFn tl;
  StepAdFn ad;
  LdaStepFn raw_step = nullptr;
  LdaStepTlFn raw_tl = nullptr;
  LdaStepAdFn raw_ad = nullptr;
  void* raw_user = nullptr;
  int depth = 0;
  std::exception_ptr error;  // the first exception a std::function threw during the current call
};

template <class F>
int32_t run_step_callback(void* user, F&& body) noexcept {
  StepFns& f = *static_cast<StepFns*>(user);
  ++f.depth;
  int32_t status = 0;
  try {
    status = body(f);
  } catch (...) {
    if (!f.error) f.error = std::current_exception();
    status = -1;
  }
  --f.depth;
  return status;
}

inline int32_t step_trampoline(void* user, std::size_t n, const double* x, double* x_next) {
  return run_step_callback(user, [&](StepFns& f) -> int32_t {
    if (f.raw_step) return f.raw_step(f.raw_user, n, x, x_next);
    f.step(Span<const double>(x, n), Span<double>(x_next, n));
    return 0;
  });
}

inline int32_t step_tl_trampoline(void* user, std::size_t n, const double* x, const double* dx, double* dx_next) {
  return run_step_callback(user, [&](StepFns& f) -> int32_t {
    if (f.raw_tl) return f.raw_tl(f.raw_user, n, x, dx, dx_next);
    f.tl(Span<const double>(x, n), Span<const double>(dx, n), Span<double>(dx_next, n));
    return 0;
  });
}

inline int32_t step_ad_trampoline(void* user, std::size_t n, const double* x, const double* dx_next, double* dx) {
  return run_step_callback(user, [&](StepFns& f) -> int32_t {
    if (f.raw_ad) return f.raw_ad(f.raw_user, n, x, dx_next, dx);
    f.ad(Span<const double>(x, n), Span<const double>(dx_next, n), Span<double>(dx, n));
    return 0;
  });
}

// A C callback's address as the bridge's integer (cxx passes no C function pointers from C++ to Rust); 0 for none.
template <class Fn>
std::size_t address(Fn f) {
  return f ? reinterpret_cast<std::size_t>(f) : 0;
}

// Turns the bridge's rust::Error ("[latentda <code>] <message>") into latentda::Error.
[[noreturn]] inline void rethrow(const rust::Error& e) {
  const std::string w = e.what();
  const std::string prefix = "[latentda ";
  if (w.compare(0, prefix.size(), prefix) == 0) {
    const std::size_t close = w.find("] ", prefix.size());
    if (close != std::string::npos) {
      const int32_t code = static_cast<int32_t>(std::strtol(w.c_str() + prefix.size(), nullptr, 10));
      throw ::latentda::Error(code, w.substr(close + 2));
    }
  }
  throw ::latentda::Error(status::internal, w);
}

template <class F>
auto call(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const rust::Error& e) {
    rethrow(e);
  }
}

template <class T>
rust::Slice<const T> in(Span<const T> s) {
  return rust::Slice<const T>(s.data(), s.size());
}

inline rust::Str str(const std::string& s) { return rust::Str(s.data(), s.size()); }

}  // namespace detail

// The latentda version string.
inline std::string version() { return std::string(detail::version()); }

// An opened bundle with its ONNX sessions, bound host arrays and observations. Move-only; closes on destruction.
// A moved-from Context may only be destroyed or assigned to (other calls throw status::null_pointer).
class Context {
 public:
  // Opens and validates a bundle directory. `options`: TOML text (docs/coupling.md: backend, ort_library, device,
  // threads, cuda_tf32, method, output, solver, gradient_reduction, max_pairs, outer_loops, max_inner,
  // preconditioner, adam_steps, adam_lr, bg_check, bg_check_samples, bg_check_sigma_b, hybrid_alpha, hybrid_beta, hybrid_variables,
  // hybrid_alpha_tropics, hybrid_beta_tropics, hybrid_alpha_sh, hybrid_beta_sh, hybrid_band_lat, hybrid_variable_weights, baseline_variance_factor, baseline_length_scale_factor, latent_variance_factor, latent_increment, b_operator, window_hours, slot_hours,
  // error_growth_per_hour, verbosity, self_test, ensemble_gamma, ensemble_localisation_km,
  // ensemble_localisation_model_km, ensemble_space, adaptive_state, adaptive_window, adaptive_bounds, adaptive_rule,
  // adaptive_per_variable, mix_candidates, mix_state, mix_window, mix_every, mix_hemispheres, mix_score, mix_lead_hours), empty for defaults.
  // Throws status::bundle for a missing or invalid bundle, status::invalid_argument for bad options.
  static Context open(const std::string& bundle_dir, const std::string& options = "") {
    return detail::call([&] { return Context(detail::open(detail::str(bundle_dir), detail::str(options))); });
  }

  Context(Context&& o) noexcept : step_(std::move(o.step_)), inner_(std::move(o.inner_)) { o.inner_.reset(); }
  Context& operator=(Context&& o) noexcept {
    if (this != &o) {
      inner_ = std::move(o.inner_);  // the old Rust context (which calls step_) goes before its step model
      o.inner_.reset();
      step_ = std::move(o.step_);
    }
    return *this;
  }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() = default;

  // 0-based identifier of a bundle variable, for set_obs (status::invalid_argument for an unknown name).
  int32_t var_index(const std::string& name) const {
    return detail::call([&] { return get().var_index(detail::str(name)); });
  }

  // Binds a host array to bundle variable `name`. `shape`: {nlev, nlat, nlon} (upper air) or {nlat, nlon}
  // (surface) for Order::C, reversed for Order::Fortran; data.size() must equal the product of the shape.
  // The array is NOT copied: it must outlive the binding (until it is bound again or the Context is destroyed)
  // and must not be resized (a std::vector reallocating invalidates it). It is read by analyse() and written only
  // when an analysis succeeds. Throws status::invalid_argument (unknown name, wrong shape or length, bad order)
  // or status::null_pointer (null data).
  void bind_field(const std::string& name, Span<float> data, const std::vector<int64_t>& shape, Order order = Order::C) {
    check_data(name, data.data());
    detail::call([&] {
      get().bind_field_f32(detail::str(name), rust::Slice<float>(data.data(), data.size()), shape_slice(shape),
                           static_cast<int32_t>(order));
    });
  }
  void bind_field(const std::string& name, Span<double> data, const std::vector<int64_t>& shape, Order order = Order::C) {
    check_data(name, data.data());
    detail::call([&] {
      get().bind_field_f64(detail::str(name), rust::Slice<double>(data.data(), data.size()), shape_slice(shape),
                           static_cast<int32_t>(order));
    });
  }
  // Raw-pointer forms: the array must hold product(shape) values.
  void bind_field(const std::string& name, float* data, const std::vector<int64_t>& shape, Order order = Order::C) {
    bind_field(name, Span<float>(data, product(shape)), shape, order);
  }
  void bind_field(const std::string& name, double* data, const std::vector<int64_t>& shape, Order order = Order::C) {
    bind_field(name, Span<double>(data, product(shape)), shape, order);
  }

  // Sets the observations for the next analysis (copied). All spans have the same length. `var`: identifiers from
  // var_index (unknown ids are flagged qc::unknown_variable, not rejected here); `level` in the bundle's vertical
  // coordinate, ignored for surface variables (e.g. NaN); `sigma`: observation error standard deviation.
  void set_obs(Span<const int32_t> var, Span<const double> lat, Span<const double> lon, Span<const double> level,
               Span<const double> value, Span<const double> sigma) {
    detail::call([&] {
      get().set_obs(detail::in(var), detail::in(lat), detail::in(lon), detail::in(level), detail::in(value),
                    detail::in(sigma));
    });
  }

  // Sets the withheld observations of the next analyses (copied; spans as for set_obs; empty spans clear them). They
  // never enter an analysis: each report compares them with the background and the analysis (section "withheld":
  // mean((O-A)^2 - (O-B)^2) / sigma_o^2 per variable and latitude band, negative where the analysis came closer to
  // them), a check of the analysis without truth.
  void set_withheld(Span<const int32_t> var, Span<const double> lat, Span<const double> lon,
                    Span<const double> level, Span<const double> value, Span<const double> sigma) {
    detail::call([&] {
      get().set_withheld(detail::in(var), detail::in(lat), detail::in(lon), detail::in(level), detail::in(value),
                         detail::in(sigma));
    });
  }

  // Sets the time of this and later analyses, in hours from any fixed epoch the host chooses (lda_set_analysis_time):
  // the hybrid's online mix (option mix_candidates) scores its last candidate forecasts only at the time they are
  // valid (that analysis' time plus mix_lead_hours); after a skipped cycle they are noted and left unscored. A
  // non-finite time throws (LDA_ERR_INVALID_ARGUMENT).
  void set_analysis_time(double hours) {
    detail::call([&] { get().set_analysis_time(hours); });
  }

  // Sets the times (hours from the analysis time, the start of the 4D-Var window) of the observations set last, one
  // per observation in their order; set_obs resets them to 0. Only method "l4dvar" uses them, with the step model:
  // the host's (set_step_model), else the bundle's.
  void set_obs_times(Span<const double> time_hours) {
    detail::call([&] { get().set_obs_times(detail::in(time_hours)); });
  }

  // Sets the ensemble members of the B in force (lda_set_ensemble), copied: k states valid at the analysis time,
  // member after member, each in the state layout (state_size() values), physical units; members.size() must be
  // k * state_size(). k >= 2 (k = 1 throws status::invalid_argument); k = 0 removes them. Method "hybrid" then adds
  // the latent ensemble B and method "3dvar" becomes hybrid 3DEnVar (options ensemble_gamma,
  // ensemble_localisation_km, ensemble_localisation_model_km). On any exception the members set before are kept.
  void set_ensemble(std::size_t k, Span<const double> members) {
    detail::call([&] { get().set_ensemble(k, detail::in(members)); });
  }

  // Installs the host's own forecast model as the step model of method "l4dvar" (lda_set_step_model): step, its
  // tangent-linear tl and its adjoint ad (see StepFn), each advancing one time step of time_step_hours hours. It
  // replaces the bundle's [forecast] model and a model set before; the functions are copied and kept until replaced
  // or the Context is destroyed. They run inside analyse("l4dvar") and l4dvar_check, and step alone (tl and ad
  // empty: a nonlinear-only model) forecasts the online mix's candidates (option mix_score = "model") inside
  // analyse("hybrid"). All three empty removes the host model (as clear_step_model); another combination with an empty
  // one throws status::null_pointer; time_step_hours <= 0 or not finite
  // throws status::invalid_argument (the model in force is kept on any exception). An output value left non-finite
  // fails the call with status::backend.
  void set_step_model(StepFn step, StepTlFn tl, StepAdFn ad, double time_step_hours) {
    auto f = std::make_unique<detail::StepFns>();
    f->step = std::move(step);
    f->tl = std::move(tl);
    f->ad = std::move(ad);
    const bool has_step = static_cast<bool>(f->step), has_tl = static_cast<bool>(f->tl);
    const bool has_ad = static_cast<bool>(f->ad);
    install(std::move(f), has_step, has_tl, has_ad, time_step_hours);
  }
  // The same with the C ABI's callbacks (latentda.h: LdaStepFn, LdaStepTlFn, LdaStepAdFn; `user` is passed back to
  // each, may be null): each returns 0, or another status to fail the call with status::backend.
  void set_step_model(LdaStepFn step, LdaStepTlFn tl, LdaStepAdFn ad, void* user, double time_step_hours) {
    auto f = std::make_unique<detail::StepFns>();
    f->raw_step = step;
    f->raw_tl = tl;
    f->raw_ad = ad;
    f->raw_user = user;
    install(std::move(f), step != nullptr, tl != nullptr, ad != nullptr, time_step_hours);
  }
  // Removes the host's step model: method "l4dvar" uses the bundle's again (status::not_ready if it has none).
  void clear_step_model() {
    detail::call([&] { get().set_step_model(0, 0, 0, 0, 0.0); });
    step_.reset();
  }

  // Adjoint tests of latent 4D-Var's step model at the bound background (lda_l4dvar_check): the host's
  // (set_step_model), else the bundle's, over nslots (1..1000) slots one step apart, random directions from seed.
  // latentda's float32 graphs reach about 1e-7; above 1e-5 the adjoint does not match its TL. Every field must be
  // bound; without any step model: status::not_ready.
  L4dvarCheck l4dvar_check(int32_t nslots = 2, uint64_t seed = 1) {
    return with_step_model([&] {
      const detail::L4dvarCheck c = get().l4dvar_check(nslots, seed);
      return L4dvarCheck{c.step_dot, c.chained_dot};
    });
  }

  // Runs an analysis on the bound background ("l3dvar", "3dvar", "hybrid", "l4dvar", or empty for the options'
  // default). On success the bound arrays receive the result; on any exception they are untouched.
  void analyse(const std::string& method = "") {
    with_step_model([&] { get().analyse(detail::str(method)); });
  }

  // QC flag (latentda::qc::*) of every observation of the last successful analysis.
  std::vector<int32_t> obs_qc() const {
    return detail::call([&] {
      rust::Vec<int32_t> v = get().obs_qc();
      return std::vector<int32_t>(v.begin(), v.end());
    });
  }

  // JSON report of the last successful analysis (statistics per variable: omb_rms, oma_rms, ...; QC counts).
  std::string report_json() const {
    return detail::call([&] { return std::string(get().report_json()); });
  }

  // One number of that report (lda_report_number), for hosts without a JSON parser: `path` is a dot-separated key
  // path, an array element selected by 0-based index or, for per-variable entries, by name. Examples: "n_used",
  // "qc_counts.background_check", "solver.j_final", "variables.t.omb_rms", "timings.total_s". A missing or
  // non-numeric entry throws status::invalid_argument; before any successful analysis status::not_ready.
  double report_number(const std::string& path) const {
    return detail::call([&] { return get().report_number(detail::str(path)); });
  }

  // B operator: the latent B by default; the hybrid or static B with option b_operator = "hybrid" | "static" at open
  // (docs/b-operator.md). Control-vector size n (length of v in bsqrt/bsqrt_ad).
  std::size_t control_size() const {
    return detail::call([&] { return get().control_size(); });
  }
  // Full state length (channels x nlat x nlon), the length of x in bsqrt/bsqrt_ad.
  std::size_t state_size() const {
    return detail::call([&] { return get().state_size(); });
  }

  // (Re)linearises the B operator (option b_operator) at the background now in the bound arrays. Done implicitly
  // only by the first bsqrt/bsqrt_ad/bvariance/brandomize after a bind: call it again whenever the background in
  // the bound arrays changed (a new forecast, or the analysis that analyse() or bsqrt_to_fields() wrote there).
  void b_linearise() {
    detail::call([&] { get().b_linearise(); });
  }
  // x = U v: model-space increment (physical units, state layout: variables in bundle order, levels top to bottom,
  // lat north to south, lon fastest) of control vector v. v and x_out may overlap each other or bound arrays
  // (inputs are copied, x_out is written last); x_out.size() must be state_size(), checked before any model runs.
  void bsqrt(Span<const double> v, Span<double> x_out) {
    check_len("bsqrt: x_out", x_out.size(), state_size());
    copy_out(bsqrt(v), x_out);
  }
  std::vector<double> bsqrt(Span<const double> v) {
    const std::vector<double> vc(v.begin(), v.end());
    return detail::call([&] { return to_vector(get().bsqrt(detail::in(Span<const double>(vc)))); });
  }
  // x = U v written into the bound arrays (their background is replaced; the linearisation point is kept).
  void bsqrt_to_fields(Span<const double> v) {
    const std::vector<double> vc(v.begin(), v.end());
    detail::call([&] { get().bsqrt_to_fields(detail::in(Span<const double>(vc))); });
  }
  // v = U^T x, the exact adjoint of bsqrt (x and v_out may overlap; v_out.size() must be control_size()).
  void bsqrt_ad(Span<const double> x, Span<double> v_out) {
    check_len("bsqrt_ad: v_out", v_out.size(), control_size());
    copy_out(bsqrt_ad(x), v_out);
  }
  std::vector<double> bsqrt_ad(Span<const double> x) {
    const std::vector<double> xc(x.begin(), x.end());
    return detail::call([&] { return to_vector(get().bsqrt_ad(detail::in(Span<const double>(xc)))); });
  }
  // v = U^T x with x read from the bound arrays.
  void bsqrt_ad_from_fields(Span<double> v_out) {
    check_len("bsqrt_ad_from_fields: v_out", v_out.size(), control_size());
    copy_out(detail::call([&] { return to_vector(get().bsqrt_ad_from_fields()); }), v_out);
  }
  // diag(U U^T): background-error variance per state element (exact, or randomised for a large latent space:
  // option bg_check_samples); computed once per linearisation. var_out may overlap bound arrays (written last);
  // var_out.size() must be state_size(), checked before any model runs.
  void bvariance(Span<double> var_out) {
    check_len("bvariance: var_out", var_out.size(), state_size());
    copy_out(bvariance(), var_out);
  }
  std::vector<double> bvariance() {
    return detail::call([&] { return to_vector(get().bvariance()); });
  }
  // A background-error draw U xi, xi ~ N(0, I) from `seed` (deterministic per seed). x_out may overlap bound
  // arrays (written last); x_out.size() must be state_size(), checked before any model runs.
  void brandomize(uint64_t seed, Span<double> x_out) {
    check_len("brandomize: x_out", x_out.size(), state_size());
    copy_out(brandomize(seed), x_out);
  }
  std::vector<double> brandomize(uint64_t seed) {
    return detail::call([&] { return to_vector(get().brandomize(seed)); });
  }
  // The measured float32 noise floor of U and U^T at the linearisation point, worst over `trials` (1..100) random
  // trials: a host solver cannot reduce its gradient below about this relative level (docs/b-operator.md).
  NoiseFloor bsqrt_noise(uint64_t seed = 1, int32_t trials = 3) {
    return detail::call([&] {
      const detail::NoiseFloor n = get().bsqrt_noise(seed, trials);
      return NoiseFloor{n.u_nonlinearity, n.ut_nonlinearity, n.adjoint_mismatch};
    });
  }

  // Layout queries. The grid: kind, vertical coordinate, latitudes, longitudes, levels.
  Grid grid() const {
    return detail::call([&] {
      const detail::GridInfo g = get().grid_info();
      Grid out;
      out.kind = static_cast<GridKind>(g.kind);
      out.vertical = static_cast<Vertical>(g.vertical);
      out.lat = to_vector(get().grid_coords(0));
      out.lon = to_vector(get().grid_coords(1));
      out.levels = to_vector(get().grid_coords(2));
      return out;
    });
  }
  // The bundle variables in state order; element i has the identifier i (var_index, set_obs).
  std::vector<Variable> variables() const {
    return detail::call([&] {
      std::vector<Variable> out;
      const int32_t n = get().var_count();
      for (int32_t i = 0; i < n; ++i) {
        const detail::VarInfo v = get().var_info(i);
        out.push_back(Variable{std::string(v.name), std::string(v.units), v.nlev, v.offset, v.length});
      }
      return out;
    });
  }

  // H as a service: latentda's own observation operator on the observations set by set_obs, the one an analysis
  // uses (on the same background, hx equals the analysis's H x_b bit for bit). From a state vector x (state_size()
  // values, state layout), or, without x, from the bound arrays.
  ObsValues obs_h(Span<const double> x) {
    const std::vector<double> xc(x.begin(), x.end());
    return detail::call([&] { return to_obs(get().obs_h(detail::in(Span<const double>(xc)))); });
  }
  ObsValues obs_h() {
    return detail::call([&] { return to_obs(get().obs_h_fields()); });
  }
  // x = H^T y (state layout), the exact adjoint of obs_h; y has one value per observation (rejected ones ignored).
  std::vector<double> obs_h_ad(Span<const double> y) {
    const std::vector<double> yc(y.begin(), y.end());
    return detail::call([&] { return to_vector(get().obs_h_ad(detail::in(Span<const double>(yc)))); });
  }

 private:
  explicit Context(rust::Box<detail::Context>&& b) : inner_(std::move(b)) {}

  detail::Context& get() {
    check_usable();
    return **inner_;
  }
  const detail::Context& get() const {
    check_usable();
    return **inner_;
  }
  void check_usable() const {
    if (!inner_) throw Error(status::null_pointer, "context is NULL (moved from)");
    if (step_ && step_->depth > 0)
      throw Error(status::not_ready,
                  "re-entrant call refused: this thread is inside a call on this context already (a call made from "
                  "one of the context's own callbacks, such as the step model of set_step_model); return from the "
                  "callback first");
  }
  // Hands the trampolines to latentda for the callbacks present; keeps `f` alive (the old model's functions are
  // released only after latentda dropped them).
  void install(std::unique_ptr<detail::StepFns> f, bool step, bool tl, bool ad, double time_step_hours) {
    void* user = f.get();
    detail::call([&] {
      get().set_step_model(step ? detail::address<LdaStepFn>(&detail::step_trampoline) : 0,
                           tl ? detail::address<LdaStepTlFn>(&detail::step_tl_trampoline) : 0,
                           ad ? detail::address<LdaStepAdFn>(&detail::step_ad_trampoline) : 0,
                           reinterpret_cast<std::size_t>(user), time_step_hours);
    });
    if (step || tl || ad)
      step_ = std::move(f);
    else
      step_.reset();
  }
  // Runs f, a call that may run the step model; a C++ exception a step function threw is rethrown after it.
  template <class F>
  auto with_step_model(F&& f) -> decltype(f()) {
    if (step_) step_->error = nullptr;
    try {
      return detail::call(f);
    } catch (const Error&) {
      if (step_ && step_->error) {
        std::exception_ptr e = step_->error;
        step_->error = nullptr;
        std::rethrow_exception(e);
      }
      throw;
    }
  }
  static void check_data(const std::string& name, const void* p) {
    if (p == nullptr) throw Error(status::null_pointer, "bind_field '" + name + "': data is NULL");
  }
  static void check_len(const char* what, std::size_t got, std::size_t want) {
    if (got != want)
      throw Error(status::invalid_argument,
                  std::string(what) + " has " + std::to_string(got) + " values, expected " + std::to_string(want));
  }
  static std::vector<double> to_vector(const rust::Vec<double>& v) { return std::vector<double>(v.begin(), v.end()); }
  static ObsValues to_obs(const detail::ObsValues& o) {
    return ObsValues{std::vector<double>(o.hx.begin(), o.hx.end()), std::vector<int32_t>(o.qc.begin(), o.qc.end())};
  }
  static void copy_out(const std::vector<double>& from, Span<double> to) {
    for (std::size_t i = 0; i < from.size(); ++i) to[i] = from[i];
  }
  static rust::Slice<const int64_t> shape_slice(const std::vector<int64_t>& s) {
    return rust::Slice<const int64_t>(s.data(), s.size());
  }
  static std::size_t product(const std::vector<int64_t>& s) {
    std::size_t n = s.empty() ? 0 : 1;
    for (int64_t d : s) n *= d > 0 ? static_cast<std::size_t>(d) : 0;
    return n;
  }

  // Declared before inner_, so destroyed after it: the Rust context holds pointers into the step model.
  std::unique_ptr<detail::StepFns> step_;
  std::optional<rust::Box<detail::Context>> inner_;
};

}  // namespace latentda

#endif  // LATENTDA_HPP
