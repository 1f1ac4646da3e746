// latentda C++ driver: what a C++ data-assimilation system does with latentda each cycle.
//
// It holds the model fields in std::vector (read here from a CF NetCDF background, as a host model would have
// them in memory), binds them to the bundle's variables, sets point observations parsed from a CSV file, runs the
// analysis, prints O-B / O-A statistics and QC counts, and writes the analysed fields as text so a test can compare
// them with the CLI.
//
// Build (from the repository root, after `cargo build --release`; see examples/cpp/README.md):
//   g++ -std=c++17 -O2 -Iinclude examples/cpp/driver.cpp target/release/liblatentda.a $(nc-config --libs) -lhdf5 -lz -lpthread -ldl -lm -Wl,-z,noexecstack -o target/cpp-driver
//
// Against an installed latentda (scripts/install.sh): ../CMakeLists.txt (CMake) or ../Makefile (pkg-config).
//
// Run:
//   target/cpp-driver BUNDLE BACKGROUND.nc OBS.csv OUTPUT.txt [--method l3dvar|3dvar] [--float] [--options TOML]
//
// OUTPUT.txt has one line per bound field, "name count v0 v1 ..." (values in C order, %.17g), then a line
// "qc count f0 f1 ..." with the QC flag of every observation.

#include <netcdf.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "latentda.hpp"

namespace {

// One model field as the host keeps it: double (default) or float storage, shape in C order.
struct Field {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<double> f64;
  std::vector<float> f32;
};

void nc_check(int status, const std::string& what) {
  if (status != NC_NOERR) throw std::runtime_error(what + ": " + nc_strerror(status));
}

// Reads every (lev, lat, lon) or (lat, lon) variable of a CF state file that the bundle knows.
std::vector<Field> read_background(const std::string& path, const latentda::Context& ctx, bool as_float) {
  int nc = -1;
  nc_check(nc_open(path.c_str(), NC_NOWRITE, &nc), "cannot open '" + path + "'");
  int nvars = 0;
  nc_check(nc_inq_nvars(nc, &nvars), path);
  std::vector<Field> fields;
  for (int v = 0; v < nvars; ++v) {
    char name[NC_MAX_NAME + 1];
    int ndims = 0;
    int dimids[NC_MAX_VAR_DIMS];
    nc_check(nc_inq_var(nc, v, name, nullptr, &ndims, dimids, nullptr), path);
    if (ndims < 2 || ndims > 3) continue;  // coordinates
    try {
      ctx.var_index(name);
    } catch (const latentda::Error&) {
      continue;  // not a bundle variable
    }
    Field f;
    f.name = name;
    std::size_t n = 1;
    for (int d = 0; d < ndims; ++d) {
      std::size_t len = 0;
      nc_check(nc_inq_dimlen(nc, dimids[d], &len), path);
      f.shape.push_back(static_cast<int64_t>(len));
      n *= len;
    }
    f.f64.resize(n);
    nc_check(nc_get_var_double(nc, v, f.f64.data()), path + ": " + f.name);
    if (as_float) {
      f.f32.assign(f.f64.begin(), f.f64.end());
      f.f64.clear();
    }
    fields.push_back(std::move(f));
  }
  nc_close(nc);
  return fields;
}

struct Obs {
  std::vector<int32_t> var;
  std::vector<double> lat, lon, level, value, sigma;
};

double number(const std::string& s) {
  if (s.empty()) return std::numeric_limits<double>::quiet_NaN();
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  return (end && *end == '\0') ? v : std::numeric_limits<double>::quiet_NaN();
}

// Parses obs.csv (header var,lat,lon,level,value,sigma). Unknown variables get id -1 and malformed numbers NaN:
// latentda flags both at the analysis (qc::unknown_variable, qc::invalid) instead of failing.
Obs read_obs(const std::string& path, const latentda::Context& ctx) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open '" + path + "'");
  Obs o;
  std::string line;
  std::getline(in, line);
  if (line.rfind("var,lat,lon,level,value,sigma", 0) != 0)
    throw std::runtime_error(path + ": header must be var,lat,lon,level,value,sigma");
  std::map<std::string, int32_t> ids;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> c;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) c.push_back(cell);
    if (!line.empty() && line.back() == ',') c.push_back("");
    c.resize(6);
    auto it = ids.find(c[0]);
    if (it == ids.end()) {
      int32_t id = -1;
      try {
        id = ctx.var_index(c[0]);
      } catch (const latentda::Error&) {
      }
      it = ids.emplace(c[0], id).first;
    }
    o.var.push_back(it->second);
    o.lat.push_back(number(c[1]));
    o.lon.push_back(number(c[2]));
    o.level.push_back(number(c[3]));
    o.value.push_back(number(c[4]));
    o.sigma.push_back(number(c[5]));
  }
  return o;
}

// Value of the first `"key": <number>` after position `from` in the pretty-printed JSON report.
double json_number(const std::string& j, const std::string& key, std::size_t from) {
  std::size_t p = j.find("\"" + key + "\":", from);
  if (p == std::string::npos) return std::numeric_limits<double>::quiet_NaN();
  return std::strtod(j.c_str() + p + key.size() + 3, nullptr);
}

void print_summary(const std::string& report, const std::vector<int32_t>& qc) {
  std::printf("%-6s %6s %12s %12s %12s %12s\n", "var", "used", "O-B mean", "O-B rms", "O-A mean", "O-A rms");
  std::size_t p = report.find("\"variables\"");
  while (p != std::string::npos) {
    std::size_t q = report.find("\"name\": \"", p);
    if (q == std::string::npos) break;
    q += 9;
    std::string name = report.substr(q, report.find('"', q) - q);
    std::printf("%-6s %6.0f %12.4e %12.4e %12.4e %12.4e\n", name.c_str(), json_number(report, "n_used", q),
                json_number(report, "omb_mean", q), json_number(report, "omb_rms", q),
                json_number(report, "oma_mean", q), json_number(report, "oma_rms", q));
    p = report.find("\"increment_rms\"", q);
  }
  int counts[6] = {0, 0, 0, 0, 0, 0};
  for (int32_t f : qc)
    if (f >= 0 && f < 6) ++counts[f];
  std::printf("QC: used %d, invalid %d, outside_domain %d, outside_vertical %d, unknown_variable %d, "
              "background_check %d\n",
              counts[latentda::qc::used], counts[latentda::qc::invalid], counts[latentda::qc::outside_domain],
              counts[latentda::qc::outside_vertical], counts[latentda::qc::unknown_variable],
              counts[latentda::qc::background_check]);
}

void write_output(const std::string& path, const std::vector<Field>& fields, const std::vector<int32_t>& qc) {
  std::FILE* out = std::fopen(path.c_str(), "w");
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  for (const Field& f : fields) {
    std::size_t n = f.f64.empty() ? f.f32.size() : f.f64.size();
    std::fprintf(out, "%s %zu", f.name.c_str(), n);
    for (std::size_t i = 0; i < n; ++i) std::fprintf(out, " %.17g", f.f64.empty() ? double(f.f32[i]) : f.f64[i]);
    std::fprintf(out, "\n");
  }
  std::fprintf(out, "qc %zu", qc.size());
  for (int32_t q : qc) std::fprintf(out, " %d", q);
  std::fprintf(out, "\n");
  std::fclose(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: %s BUNDLE BACKGROUND.nc OBS.csv OUTPUT.txt [--method l3dvar|3dvar] [--float] "
                 "[--options TOML]\n",
                 argv[0]);
    return 2;
  }
  std::string method, options;
  bool as_float = false;
  for (int i = 5; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--method" && i + 1 < argc) method = argv[++i];
    else if (a == "--options" && i + 1 < argc) options = argv[++i];
    else if (a == "--float") as_float = true;
    else {
      std::fprintf(stderr, "unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  try {
    latentda::Context ctx = latentda::Context::open(argv[1], options);
    std::printf("latentda %s: bundle %s, control size %zu, state size %zu\n", latentda::version().c_str(), argv[1],
                ctx.control_size(), ctx.state_size());

    // The host's fields: bound in place (no copy), so they must live as long as the binding.
    std::vector<Field> fields = read_background(argv[2], ctx, as_float);
    for (Field& f : fields) {
      if (as_float) ctx.bind_field(f.name, f.f32, f.shape, latentda::Order::C);
      else ctx.bind_field(f.name, f.f64, f.shape, latentda::Order::C);
    }

    Obs o = read_obs(argv[3], ctx);
    ctx.set_obs(o.var, o.lat, o.lon, o.level, o.value, o.sigma);
    std::printf("%zu observations, %zu fields bound (%s)\n", o.var.size(), fields.size(), as_float ? "float" : "double");

    ctx.analyse(method);  // on success the analysis is now in `fields`

    std::vector<int32_t> qc = ctx.obs_qc();
    print_summary(ctx.report_json(), qc);
    write_output(argv[4], fields, qc);
    std::printf("analysis written to %s\n", argv[4]);
  } catch (const latentda::Error& e) {
    std::fprintf(stderr, "latentda error %d: %s\n", e.code(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
