// C++ smoke test of include/latentda_mpi.hpp (run by tests/mpi.rs under mpirun): a latitude-band decomposition with
// float patches, all observations on the last rank, one analysis, then a failing analysis that must throw the same
// latentda::mpi::Error on every rank and leave the patches untouched.
//   mpirun -n N mpi_cpp BUNDLE BACKGROUND.nc OBS.csv
// Prints "CPP rank=R nobs=N qc_used=U j_final=J err_code=C err_untouched=1 err_msg=..." per rank.
#include <netcdf.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "latentda_mpi.hpp"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  if (argc < 4) {
    std::fprintf(stderr, "usage: mpi_cpp BUNDLE BACKGROUND.nc OBS.csv\n");
    MPI_Finalize();
    return 2;
  }
  {
    latentda::mpi::Context ctx(argv[1], MPI_COMM_WORLD);
    const int rank = ctx.rank(), size = ctx.size();
    const std::size_t nlat = ctx.nlat(), nlon = ctx.nlon();
    const std::vector<std::string> names = ctx.variables();
    // Rank r owns latitudes [r * nlat / size, (r + 1) * nlat / size), all longitudes, no halo.
    const std::size_t lat0 = rank * nlat / size, lat1 = (rank + 1) * nlat / size;
    std::vector<std::vector<float>> fields(names.size());
    int nc = 0;
    if (nc_open(argv[2], NC_NOWRITE, &nc) != NC_NOERR) MPI_Abort(MPI_COMM_WORLD, 1);
    for (std::size_t v = 0; v < names.size(); ++v) {
      const int32_t nl = ctx.nlev(static_cast<int32_t>(v));
      const std::size_t levels = nl > 0 ? nl : 1;
      fields[v].resize(levels * (lat1 - lat0) * nlon);
      std::size_t start[3] = {0, lat0, 0}, count[3] = {levels, lat1 - lat0, nlon};
      int id = 0;
      if (nc_inq_varid(nc, names[v].c_str(), &id) != NC_NOERR ||
          nc_get_vara_float(nc, id, nl > 0 ? start : start + 1, nl > 0 ? count : count + 1, fields[v].data()) != NC_NOERR)
        MPI_Abort(MPI_COMM_WORLD, 1);
      std::vector<int64_t> shape;
      if (nl > 0) shape.push_back(nl);
      shape.push_back(static_cast<int64_t>(lat1 - lat0));
      shape.push_back(static_cast<int64_t>(nlon));
      ctx.bind_patch(names[v], fields[v].data(), shape, 0, static_cast<int64_t>(lat0));
    }
    nc_close(nc);
    std::vector<int32_t> var;
    std::vector<double> lat, lon, lev, val, sig;
    if (rank == size - 1) {
      std::ifstream in(argv[3]);
      std::string line;
      std::getline(in, line);
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        std::stringstream ss(line);
        std::string f[6];
        for (auto& x : f) std::getline(ss, x, ',');
        int32_t id = -1;
        try {
          id = ctx.var_index(f[0]);
        } catch (const latentda::mpi::Error&) {
        }
        var.push_back(id);
        lat.push_back(std::stod(f[1]));
        lon.push_back(std::stod(f[2]));
        lev.push_back(f[3].empty() ? NAN : std::stod(f[3]));
        val.push_back(std::stod(f[4]));
        sig.push_back(std::stod(f[5]));
      }
    }
    ctx.set_obs(var, lat, lon, lev, val, sig);
    ctx.set_withheld(var, lat, lon, lev, val, sig);  // the same rows, verified against (gathered like the obs)
    ctx.set_analysis_time(6.0);  // no mix in these options: accepted, and without effect on the analysis
    ctx.analyse();
    const std::vector<int32_t> qc = ctx.obs_qc();
    const latentda::mpi::ObsHx hx = ctx.obs_hx();
    std::size_t used = 0;
    for (int32_t q : qc) used += q == 0;
    const double j = ctx.report_number("solver.j_final");
    const std::size_t global = ctx.nobs_global();
    const double withheld = ctx.report_number("withheld.n_obs");
    if (hx.hxb.size() != qc.size() || ctx.report_json().find("\"mpi\"") == std::string::npos) rc = 1;
    // A failing collective call: the same exception on every rank, patches untouched.
    const std::vector<std::vector<float>> before = fields;
    int32_t code = 0;
    std::string msg;
    try {
      ctx.analyse("nosuch");
    } catch (const latentda::mpi::Error& e) {
      code = e.code();
      msg = e.what();
    }
    const int untouched = fields == before;
    // A non-finite analysis time: refused at once on the rank that sets it (a local call).
    int32_t time_code = 0;
    try {
      ctx.set_analysis_time(NAN);
    } catch (const latentda::mpi::Error& e) {
      time_code = e.code();
    }
    std::printf("CPP rank=%d nobs=%zu global=%zu withheld=%.0f qc_used=%zu j_final=%.17g err_code=%d err_untouched=%d "
                "time_err=%d err_msg=%s\n", rank, qc.size(), global, withheld, used, j, code, untouched, time_code,
                msg.c_str());
  }  // ~Context: lda_mpi_close on every rank
  MPI_Finalize();
  return rc;
}
