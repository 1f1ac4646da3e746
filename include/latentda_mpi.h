/*
 * latentda MPI coupling: latent data assimilation for domain-decomposed (MPI-parallel) forecast models.
 *
 * Each rank of the host's communicator binds only its own patch of every field (global index ranges, halos
 * described and ignored); observations may be given on any rank. lda_mpi_analyse gathers the patches and the
 * observations onto one analysing rank (the "root", rank 0 unless chosen otherwise), which runs the ordinary
 * single-process C ABI (include/latentda.h: lda_bind_field_*, lda_set_obs, lda_analyse, lda_obs_qc, lda_obs_h) on the
 * global fields, and scatters the analysis back into every rank's patch, in place. QC flags, H(x_b) and H(x_a) go
 * back to the rank that gave each observation, in its order; the JSON report is broadcast to every rank.
 *
 * Call order (the same on every rank; the calls marked [collective] must be made by every rank of the
 * communicator, in the same order):
 *   lda_mpi_open / lda_mpi_open_f              [collective] once
 *   lda_mpi_bind_patch_f32 / _f64              [local] every bundle variable this rank owns a part of
 *   lda_mpi_set_obs                            [local] this rank's observations (0 allowed), each cycle
 *   lda_mpi_set_obs_times                      [local] optional: their times (method "l4dvar")
 *   lda_mpi_set_withheld                       [local] optional: observations to verify against, not assimilate
 *   lda_mpi_set_analysis_time                  [local] optional: the time of this cycle (the online mix)
 *   lda_mpi_set_error                          [local] optional: a host failure every rank should learn of
 *   lda_mpi_analyse                            [collective] each cycle: the analysis overwrites every patch
 *   lda_mpi_obs_qc / lda_mpi_obs_hx            [local] this rank's observations, in its order
 *   lda_mpi_report_json / lda_mpi_report_number  [local] the same report on every rank
 *   lda_mpi_close                              [collective] once
 * The layout queries (lda_mpi_grid_info, lda_mpi_grid_coords, lda_mpi_var_count, lda_mpi_var_name,
 * lda_mpi_var_index, lda_mpi_var_nlev, lda_mpi_rank) and lda_mpi_last_error are local and work on every rank.
 *
 * Errors never hang and never abort. Every status is an int32_t: LDA_OK (0), one of the LDA_ERR_* codes of
 * latentda.h, or LDA_MPI_ERR_MPI (an MPI call failed). A collective call returns the SAME status and the SAME
 * message (lda_mpi_last_error) on every rank: before each step that could diverge, the ranks agree on an error
 * (MPI_Allreduce of the lowest failing rank) and that rank's message is broadcast, prefixed with its rank. No rank
 * leaves a collective sequence that the others continue. A failure of a local call (bind, set_obs) is returned at
 * once on that rank AND remembered: the next lda_mpi_analyse then fails on every rank with that status and message,
 * so a host may check statuses only after lda_mpi_analyse (a host that branches on a local status alone must make
 * every rank take the same branch). A failed lda_mpi_analyse writes no host array on any rank (nothing is
 * scattered) and discards the previous QC flags, H(x) values and report. The communicator is duplicated at open
 * (MPI_Comm_dup, with MPI_ERRORS_RETURN on the duplicate, so MPI errors are returned, not fatal) and freed at close;
 * the host's communicator and its error handler are not changed. Only the root calls into liblatentda's analysis:
 * only the root opens the bundle (the other ranks get the grid and variable list from it).
 *
 * Patches: a patch is the part of one variable's field that a rank owns: global longitude indices lon_start ..
 * lon_start + lon_count - 1, latitude indices lat_start .. lat_start + lat_count - 1 (0-based, latitudes north to
 * south as in the bundle), all levels. The array holds the patch with `halo` extra points on each horizontal side
 * (0 for none): memory is longitude fastest, then latitude, then level, as for lda_bind_field_*; `shape` lists its
 * extents, (nlev, lat_count + 2 halo, lon_count + 2 halo) in C order or (lon_count + 2 halo, lat_count + 2 halo, nlev)
 * in Fortran order (surface variables drop nlev). Halo points are never read or written. Each variable must be
 * tiled exactly by the ranks' patches (every grid column owned by exactly one rank; a rank may own no part of a
 * variable: it then does not bind it); different variables may be decomposed differently, and ranks may mix
 * float and double. A decomposition that leaves a gap or an overlap is refused by lda_mpi_analyse on every rank
 * (LDA_ERR_INVALID_ARGUMENT, naming the variable, the first grid point at fault and the ranks involved).
 *
 * Why a C shim and not Rust's `mpi` crate: MPI_Comm is not ABI-stable across MPI implementations (an int in MPICH,
 * a pointer in Open MPI), so a library compiled against one MPI cannot take another's communicator. This shim is
 * compiled by the host's own mpicc (scripts/install.sh --mpi), so it uses exactly the host's MPI; liblatentda itself
 * stays MPI-free (the default build and hosts without MPI need no MPI at all). Fortran hosts pass the communicator
 * as an MPI_Fint and lda_mpi_open_f converts it with MPI_Comm_f2c, the pattern of TorchFort (`_F` entries) and
 * XIOS/YAXT.
 *
 * Threads: call from one thread per context (the thread that makes the host's MPI calls). Build and link:
 *   mpicc -std=c99 -Iinclude -c src/coupling/mpi/latentda_mpi.c       (or pkg-config latentda-mpi / CMake latentda::mpi)
 *   mpicc prog.c -Iinclude -llatentda_mpi -llatentda
 * See docs/mpi.md.
 */

#ifndef LATENTDA_MPI_H
#define LATENTDA_MPI_H

#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "latentda.h"

/* Status of a failed MPI call inside the shim (MPI's own message follows in lda_mpi_last_error). Outside the
 * LdaStatus range of latentda.h on purpose. */
#define LDA_MPI_ERR_MPI 100

/* Default analysing rank. */
#define LDA_MPI_DEFAULT_ROOT 0

/* Opaque MPI coupling context (one per communicator and bundle). */
typedef struct LdaMpiContext LdaMpiContext;

#ifdef __cplusplus
extern "C" {
#endif

/**
 * [collective] Opens `bundle_dir` on rank `root` of `comm` (lda_open with `options`, see latentda.h) and creates a
 * context on every rank. `root` (same value on every rank, 0 <= root < size) is the analysing rank: choose the
 * rank that owns a GPU when `options` asks for one. `bundle_dir` and `options` are read on the root only (other
 * ranks may pass NULL). `out` (not NULL) receives the context, or NULL on failure; then every rank returns the same
 * status and lda_mpi_last_error(NULL) gives the same message on every rank. MPI must be initialised.
 */
int32_t lda_mpi_open(const char *bundle_dir, const char *options, MPI_Comm comm, int32_t root, LdaMpiContext **out);

/** [collective] lda_mpi_open for a Fortran communicator handle (MPI_Fint, converted with MPI_Comm_f2c). */
int32_t lda_mpi_open_f(const char *bundle_dir, const char *options, MPI_Fint comm, int32_t root, LdaMpiContext **out);

/**
 * [collective] Releases the context on every rank (the root closes its latentda context; the duplicated
 * communicator is freed). NULL is accepted on every rank (LDA_OK). Host arrays are not touched.
 */
int32_t lda_mpi_close(LdaMpiContext *ctx);

/**
 * [local] Message of the last failed call on `ctx` ("" if none); with NULL, of the last failed lda_mpi_open on this
 * process. Never NULL; owned by the shim, valid until the next call on the context.
 */
const char *lda_mpi_last_error(const LdaMpiContext *ctx);

/** [local] This process's rank in the context's communicator, the communicator size and the analysing rank. Any
 * output may be NULL. */
int32_t lda_mpi_rank(const LdaMpiContext *ctx, int32_t *rank_out, int32_t *size_out, int32_t *root_out);

/** [local] The bundle's grid, as lda_grid_info (any output may be NULL). Works on every rank. */
int32_t lda_mpi_grid_info(LdaMpiContext *ctx, int32_t *kind_out, size_t *nlat_out, size_t *nlon_out,
                          int32_t *vertical_out, size_t *nlev_out);

/** [local] The grid coordinates, as lda_grid_coords (each output may be NULL; lengths must match). */
int32_t lda_mpi_grid_coords(LdaMpiContext *ctx, double *lat_out, size_t nlat, double *lon_out, size_t nlon,
                            double *lev_out, size_t nlev);

/** [local] Number of bundle variables (identifiers 0 .. n-1, bundle order). */
int32_t lda_mpi_var_count(LdaMpiContext *ctx, int32_t *n_out);

/** [local] Name of variable `index`, as lda_var_name (`needed` may be NULL; LDA_ERR_BUFFER_TOO_SMALL if short). */
int32_t lda_mpi_var_name(LdaMpiContext *ctx, int32_t index, char *buf, size_t len, size_t *needed);

/** [local] Identifier of variable `name` for lda_mpi_set_obs, as lda_var_index. */
int32_t lda_mpi_var_index(LdaMpiContext *ctx, const char *name, int32_t *index_out);

/** [local] Number of levels of variable `index` (0 for a surface variable). */
int32_t lda_mpi_var_nlev(LdaMpiContext *ctx, int32_t index, int32_t *nlev_out);

/**
 * [local] Binds this rank's patch of variable `name`, in place (see "Patches" above).
 *
 * - `data`: the patch array with its halo; not copied (kept until bound again or lda_mpi_close). Only its interior
 *   is read (by lda_mpi_analyse, as background) and written (with the analysis, only when the analysis succeeded
 *   on the root).
 * - `ndim`, `shape`, `order`: as lda_bind_field_*, describing the array with its halo (`order` LDA_ORDER_C or
 *   LDA_ORDER_FORTRAN; both mean the same memory).
 * - `lon_start`, `lat_start`: global 0-based index of the first interior point.
 * - `halo`: halo width (>= 0) on each of the four horizontal sides.
 *
 * Checked now: the name, ndim and level count against the bundle, the interior inside the grid. A failure is
 * returned here and remembered for the next lda_mpi_analyse (which then fails on every rank); the previous
 * binding of the variable is dropped (a rank whose bind failed owns no part of it). Tiling is checked by
 * lda_mpi_analyse.
 */
int32_t lda_mpi_bind_patch_f32(LdaMpiContext *ctx, const char *name, float *data, int32_t ndim, const int64_t *shape,
                               int32_t order, int64_t lon_start, int64_t lat_start, int32_t halo);

/** [local] lda_mpi_bind_patch_f32 for a double array. */
int32_t lda_mpi_bind_patch_f64(LdaMpiContext *ctx, const char *name, double *data, int32_t ndim, const int64_t *shape,
                               int32_t order, int64_t lon_start, int64_t lat_start, int32_t halo);

/**
 * [local] Sets this rank's observations for the next analyses (copied), replacing its previous set; the same fields
 * as lda_set_obs (var from lda_mpi_var_index). `n` = 0 is allowed (a rank without observations; the pointers may
 * then be NULL); the analysis needs at least one observation on some rank. Invalid observations are QC-flagged, not
 * errors. Discards this rank's results of the previous analysis (QC flags, H(x)).
 */
int32_t lda_mpi_set_obs(LdaMpiContext *ctx, size_t n, const int32_t *var, const double *lat, const double *lon,
                        const double *level, const double *value, const double *sigma);

/**
 * [local] Sets the observation times (hours from the analysis time; method "l4dvar", as lda_set_obs_times) of this
 * rank's observations of the last lda_mpi_set_obs, in its order; `n` must equal their count. lda_mpi_set_obs resets
 * them to 0. A failure is remembered for the next lda_mpi_analyse, as for a bind.
 */
int32_t lda_mpi_set_obs_times(LdaMpiContext *ctx, size_t n, const double *time_hours);

/**
 * [local] Sets the time of this and later analyses, in hours from any fixed epoch, kept until set again: the analysing
 * rank passes it to lda_set_analysis_time before each lda_analyse (include/latentda.h: the hybrid's online mix,
 * option `mix_candidates`, then scores its candidates only at the analysis they are valid for, and notes a skipped
 * or stale cycle in the report's `mix.notes`). Every rank must set the same time, bit for bit (compute it once and
 * broadcast it, or from the same integers on every rank): lda_mpi_analyse compares each rank's with the analysing
 * rank's and fails on every rank, naming both, if they differ (set on some ranks and not on others included). A non-finite `hours` is LDA_ERR_INVALID_ARGUMENT, keeps the time in force, and is remembered
 * for the next lda_mpi_analyse, as a failed bind is.
 */
int32_t lda_mpi_set_analysis_time(LdaMpiContext *ctx, double hours);

/**
 * [local] Sets this rank's withheld observations for the next analyses (copied; arrays as for lda_mpi_set_obs),
 * replacing its previous set; `n` = 0 clears them (the pointers may then be NULL). lda_mpi_analyse gathers every
 * rank's on the analysing rank, which hands them to lda_set_withheld: they never enter the analysis, and the report
 * (lda_mpi_report_json, section "withheld", the same on every rank) compares them with the background and the
 * analysis, a check without truth (docs/b-operator.md, "Checking an analysis against withheld observations").
 * Unlike lda_mpi_set_obs, the set stays until set again. A failure is remembered for the next lda_mpi_analyse.
 */
int32_t lda_mpi_set_withheld(LdaMpiContext *ctx, size_t n, const int32_t *var, const double *lat, const double *lon,
                             const double *level, const double *value, const double *sigma);

/**
 * [local] Records a failure of the host's own on this rank (e.g. its observation file could not be read): returned
 * at once as `code`, and the next lda_mpi_analyse fails on every rank with `code` and `message`, as for a failed
 * bind. `code` must be > 0 (else LDA_ERR_INVALID_ARGUMENT); `message` may be NULL.
 */
int32_t lda_mpi_set_error(LdaMpiContext *ctx, int32_t code, const char *message);

/**
 * [collective] Runs one analysis over the whole communicator.
 *
 * 1. Agreement on local faults (a failed bind, set_obs or set_analysis_time, a `method` or an analysis time
 *    different from the root's: the times must be the same double on every rank), then the root checks that every
 *    variable is tiled exactly by the patches (no gap, no overlap).
 * 2. The patches' interiors and the observations (with their rank and index) are gathered on the root (MPI_Gatherv).
 * 3. The root binds the global fields, sets the observations (and their times) and the analysis time (when set),
 *    computes H(x_b), runs lda_analyse(`method`), reads the
 *    QC flags and H(x_a) (H of the analysis, also when option `output` is "increment").
 * 4. The root's status and message are broadcast. On failure nothing is scattered (every host array is
 *    untouched) and every rank returns that status. On success the result (per option `output`) is scattered into
 *    every patch (MPI_Scatterv), the QC flags and H(x) go back to their ranks, and the report is broadcast.
 *
 * `method`: as lda_analyse (NULL for the option's default); every rank must pass the same (checked). The report gains
 * an object "mpi" with ranks, root, and the root's timings check_s, gather_s, analyse_s, scatter_s, total_s.
 */
int32_t lda_mpi_analyse(LdaMpiContext *ctx, const char *method);

/** [local] QC flags (LdaQcFlag) of this rank's observations of the last successful analysis, in its lda_mpi_set_obs
 * order; `n` must equal its observation count (0 allowed). LDA_ERR_NOT_READY before a successful analysis. */
int32_t lda_mpi_obs_qc(LdaMpiContext *ctx, int32_t *flags_out, size_t n);

/**
 * [local] H(x_b) and H(x_a) of this rank's observations of the last successful analysis, in its order (NaN where the
 * geometric QC rejected one): latentda's observation operator on the gathered background and on the analysis.
 * Either output may be NULL; `n` as lda_mpi_obs_qc.
 */
int32_t lda_mpi_obs_hx(LdaMpiContext *ctx, double *hxb_out, double *hxa_out, size_t n);

/** [local] This rank's observation count (`local_out`, from its last lda_mpi_set_obs) and the count over all ranks
 * in the last successful analysis (`global_out`, 0 before one). Either output may be NULL. */
int32_t lda_mpi_obs_count(LdaMpiContext *ctx, size_t *local_out, size_t *global_out);

/** [local] The JSON report of the last successful analysis (identical on every rank), as lda_report_json. */
int32_t lda_mpi_report_json(LdaMpiContext *ctx, char *buf, size_t len, size_t *needed);

/** [local] One number of the report by dot path, as lda_report_number (e.g. "solver.j_final",
 * "variables.t.oma_rms", "mpi.gather_s"); the same value on every rank. */
int32_t lda_mpi_report_number(LdaMpiContext *ctx, const char *path, double *value_out);

#ifdef __cplusplus
}
#endif

#endif /* LATENTDA_MPI_H */
