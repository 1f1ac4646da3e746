/*
 * latentda MPI coupling shim (C99), compiled with the host's own mpicc on top of liblatentda's C ABI.
 * Public interface, design and the reasons for a C shim: include/latentda_mpi.h; user guide: docs/mpi.md.
 *
 * Invariants that keep every rank in step:
 * - every collective entry point runs the same sequence of MPI calls on every rank; a rank that fails a step
 *   records the failure and still takes part in the next agreement (agree()), after which all ranks either go on
 *   or return the same status and message together;
 * - only the root calls liblatentda (lda_open, lda_bind_field_*, lda_set_obs, lda_obs_h, lda_analyse, ...);
 * - host patches are written only after the ranks agreed that the root's analysis succeeded.
 */
#define _POSIX_C_SOURCE 200112L /* nanosleep */
#include "latentda_mpi.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MSG_MAX 2048
#define NAME_MAX_LEN 256
#define OBS_COLS 7 /* var, lat, lon, level, value, sigma, time (hours) */
#define WH_COLS 6  /* withheld observations: var, lat, lon, level, value, sigma */

/* One rank's patch of one variable. */
typedef struct {
    int bound;
    int single;        /* 1: float, 0: double */
    void *data;
    int64_t lon_start, lon_count, lat_start, lat_count;
    int64_t halo;
} Patch;

/* Descriptor of a patch as gathered on the root. */
enum { D_BOUND, D_SINGLE, D_LON0, D_NLON, D_LAT0, D_NLAT, D_LEN };

struct LdaMpiContext {
    MPI_Comm comm;
    int rank, size, root;
    LdaContext *lda; /* root only */
    /* Bundle metadata (broadcast from the root at open). */
    int nvar;
    char (*names)[NAME_MAX_LEN + 1];
    int32_t *nlev; /* per variable, 0 = surface */
    int32_t grid_kind, vertical;
    int64_t nlat, nlon, nlev_grid;
    double *lat, *lon, *lev;
    /* This rank's patches and observations. */
    Patch *patch;
    size_t nobs;
    int32_t *ovar;
    double *olat, *olon, *olevel, *ovalue, *osigma;
    double *otime; /* hours from the analysis time (lda_mpi_set_obs_times); NULL = all 0 */
    size_t nwh;    /* this rank's withheld observations (lda_mpi_set_withheld): nwh rows of WH_COLS */
    double *wh;
    /* The analysis time (lda_mpi_set_analysis_time), kept until set again; has_time 0: never set. */
    int has_time;
    double time_hours;
    /* Results of the last successful analysis (this rank's observations) and the report (every rank). */
    int have_results;
    size_t nobs_global;
    int32_t *qc;
    double *hxb, *hxa;
    char *report;
    size_t report_len; /* including the NUL */
    /* Root only: global fields bound to its latentda context. */
    void **global;
    int *global_single;
    /* A local failure (bind, set_obs, set_obs_times, set_withheld, set_analysis_time, set_error) remembered for the
     * next lda_mpi_analyse. */
    int32_t deferred;
    char deferred_msg[MSG_MAX];
    char error[MSG_MAX];
};

static char open_error[MSG_MAX];

static const char *ws(const char *p);

/* ------------------------------------------------------------------------------------------------------------- */
/* Helpers                                                                                                        */
/* ------------------------------------------------------------------------------------------------------------- */

static int32_t set_err(char *buf, int32_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, MSG_MAX, fmt, ap);
    va_end(ap);
    return code;
}

/* An MPI status as a latentda status plus MPI's own message. */
static int32_t mpi_err(char *buf, int rc, const char *what) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "MPI error %d", rc);
    return set_err(buf, LDA_MPI_ERR_MPI, "%s failed: %s", what, s);
}

/*
 * Collective agreement: every rank passes its local status (0 = fine) and message; all ranks return the status of
 * the lowest failing rank, and `msg` then holds that rank's message prefixed with "rank R: " (unless `prefix` is 0
 * or the message names the rank already). Costs one MPI_Allreduce when nobody failed.
 */
static int32_t agree_how(MPI_Comm comm, int rank, int size, int32_t code, char *msg, int prefix, int polite) {
    int key = code != LDA_OK ? rank : size, lowest = size, rc;
    struct {
        int32_t code;
        char msg[MSG_MAX];
    } pkt;
    if (polite) {
        /* The ranks that wait for the root's analysis sleep instead of spinning in MPI's progress loop, so they do not
         * take CPU time from the root's model runs when ranks share cores. */
        MPI_Request req;
        int done = 0;
        struct timespec nap = {0, 200000}; /* 0.2 ms */
        rc = MPI_Iallreduce(&key, &lowest, 1, MPI_INT, MPI_MIN, comm, &req);
        while (rc == MPI_SUCCESS && (rc = MPI_Test(&req, &done, MPI_STATUS_IGNORE)) == MPI_SUCCESS && !done) nanosleep(&nap, NULL);
    } else {
        rc = MPI_Allreduce(&key, &lowest, 1, MPI_INT, MPI_MIN, comm);
    }
    if (rc != MPI_SUCCESS) return mpi_err(msg, rc, "MPI_Allreduce (agreeing on errors)");
    if (lowest == size) return LDA_OK;
    if (rank == lowest) {
        pkt.code = code;
        if (prefix)
            snprintf(pkt.msg, MSG_MAX, "rank %d: %s", rank, msg);
        else
            snprintf(pkt.msg, MSG_MAX, "%s", msg);
    }
    rc = MPI_Bcast(&pkt, (int)sizeof pkt, MPI_BYTE, lowest, comm);
    if (rc != MPI_SUCCESS) return mpi_err(msg, rc, "MPI_Bcast (error message)");
    memcpy(msg, pkt.msg, MSG_MAX);
    msg[MSG_MAX - 1] = '\0';
    return pkt.code;
}

static int32_t agree(MPI_Comm comm, int rank, int size, int32_t code, char *msg, int prefix) {
    return agree_how(comm, rank, size, code, msg, prefix, 0);
}

static size_t var_len(const LdaMpiContext *c, int v) {
    return (size_t)(c->nlev[v] > 0 ? c->nlev[v] : 1) * (size_t)c->nlat * (size_t)c->nlon;
}

static size_t patch_len(const LdaMpiContext *c, int v, const Patch *p) {
    return p->bound ? (size_t)(c->nlev[v] > 0 ? c->nlev[v] : 1) * (size_t)p->lat_count * (size_t)p->lon_count : 0;
}

static void free_results(LdaMpiContext *c) {
    free(c->qc);
    free(c->hxb);
    free(c->hxa);
    c->qc = NULL;
    c->hxb = c->hxa = NULL;
    c->have_results = 0;
}

static void free_obs(LdaMpiContext *c) {
    free(c->ovar);
    free(c->olat);
    free(c->olon);
    free(c->olevel);
    free(c->ovalue);
    free(c->osigma);
    free(c->otime);
    c->ovar = NULL;
    c->olat = c->olon = c->olevel = c->ovalue = c->osigma = c->otime = NULL;
    c->nobs = 0;
}

static void free_context(LdaMpiContext *c) {
    int v;
    if (!c) return;
    if (c->lda) lda_close(c->lda);
    if (c->global)
        for (v = 0; v < c->nvar; v++) free(c->global[v]);
    free(c->global);
    free(c->global_single);
    free(c->names);
    free(c->nlev);
    free(c->lat);
    free(c->lon);
    free(c->lev);
    free(c->patch);
    free_obs(c);
    free(c->wh);
    free_results(c);
    free(c->report);
    free(c);
}

/* Copies a patch's interior (any precision) to / from a packed double buffer (lon fastest, lat, lev). */
static void pack_patch(const LdaMpiContext *c, int v, const Patch *p, double *out) {
    int64_t nl = c->nlev[v] > 0 ? c->nlev[v] : 1, k, j, i;
    int64_t sx = p->lon_count + 2 * p->halo, sy = p->lat_count + 2 * p->halo;
    size_t n = 0;
    for (k = 0; k < nl; k++)
        for (j = 0; j < p->lat_count; j++) {
            size_t base = (size_t)((k * sy + j + p->halo) * sx + p->halo);
            if (p->single) {
                const float *d = (const float *)p->data + base;
                for (i = 0; i < p->lon_count; i++) out[n++] = (double)d[i];
            } else {
                memcpy(out + n, (const double *)p->data + base, (size_t)p->lon_count * sizeof(double));
                n += (size_t)p->lon_count;
            }
        }
}

static void unpack_patch(const LdaMpiContext *c, int v, Patch *p, const double *in) {
    int64_t nl = c->nlev[v] > 0 ? c->nlev[v] : 1, k, j, i;
    int64_t sx = p->lon_count + 2 * p->halo, sy = p->lat_count + 2 * p->halo;
    size_t n = 0;
    for (k = 0; k < nl; k++)
        for (j = 0; j < p->lat_count; j++) {
            size_t base = (size_t)((k * sy + j + p->halo) * sx + p->halo);
            if (p->single) {
                float *d = (float *)p->data + base;
                for (i = 0; i < p->lon_count; i++) d[i] = (float)in[n++];
            } else {
                memcpy((double *)p->data + base, in + n, (size_t)p->lon_count * sizeof(double));
                n += (size_t)p->lon_count;
            }
        }
}

/* Global field (root) <-> packed patch described by a descriptor row. */
static void global_to_packed(const LdaMpiContext *c, int v, const int64_t *d, double *out) {
    int64_t nl = c->nlev[v] > 0 ? c->nlev[v] : 1, k, j, i;
    size_t n = 0;
    for (k = 0; k < nl; k++)
        for (j = 0; j < d[D_NLAT]; j++) {
            size_t base = (size_t)((k * c->nlat + d[D_LAT0] + j) * c->nlon + d[D_LON0]);
            if (c->global_single[v]) {
                const float *g = (const float *)c->global[v] + base;
                for (i = 0; i < d[D_NLON]; i++) out[n++] = (double)g[i];
            } else {
                memcpy(out + n, (const double *)c->global[v] + base, (size_t)d[D_NLON] * sizeof(double));
                n += (size_t)d[D_NLON];
            }
        }
}

static void packed_to_global(LdaMpiContext *c, int v, const int64_t *d, const double *in) {
    int64_t nl = c->nlev[v] > 0 ? c->nlev[v] : 1, k, j, i;
    size_t n = 0;
    for (k = 0; k < nl; k++)
        for (j = 0; j < d[D_NLAT]; j++) {
            size_t base = (size_t)((k * c->nlat + d[D_LAT0] + j) * c->nlon + d[D_LON0]);
            if (c->global_single[v]) {
                float *g = (float *)c->global[v] + base;
                for (i = 0; i < d[D_NLON]; i++) g[i] = (float)in[n++];
            } else {
                memcpy((double *)c->global[v] + base, in + n, (size_t)d[D_NLON] * sizeof(double));
                n += (size_t)d[D_NLON];
            }
        }
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Open / close                                                                                                   */
/* ------------------------------------------------------------------------------------------------------------- */

/* Root: reads the bundle metadata from its latentda context into c (allocating the arrays). */
static int32_t read_metadata(LdaMpiContext *c, char *msg) {
    int32_t st, nv, v, kind = 0, vert = 0;
    size_t nlat = 0, nlon = 0, nlev = 0, off, len;
    if ((st = lda_grid_info(c->lda, &kind, &nlat, &nlon, &vert, &nlev)) != LDA_OK ||
        (st = lda_var_count(c->lda, &nv)) != LDA_OK)
        return set_err(msg, st, "%s", lda_last_error(c->lda));
    c->grid_kind = kind;
    c->vertical = vert;
    c->nlat = (int64_t)nlat;
    c->nlon = (int64_t)nlon;
    c->nlev_grid = (int64_t)nlev;
    c->nvar = nv;
    c->names = calloc((size_t)nv, sizeof *c->names);
    c->nlev = calloc((size_t)nv, sizeof *c->nlev);
    c->lat = calloc(nlat ? nlat : 1, sizeof(double));
    c->lon = calloc(nlon ? nlon : 1, sizeof(double));
    c->lev = calloc(nlev ? nlev : 1, sizeof(double));
    if (!c->names || !c->nlev || !c->lat || !c->lon || !c->lev) return set_err(msg, LDA_ERR_INTERNAL, "out of memory");
    if ((st = lda_grid_coords(c->lda, c->lat, nlat, c->lon, nlon, c->lev, nlev)) != LDA_OK)
        return set_err(msg, st, "%s", lda_last_error(c->lda));
    for (v = 0; v < nv; v++) {
        size_t need = 0;
        if ((st = lda_var_name(c->lda, v, c->names[v], NAME_MAX_LEN + 1, &need)) != LDA_OK ||
            (st = lda_var_layout(c->lda, v, &c->nlev[v], &off, &len)) != LDA_OK)
            return set_err(msg, st, "%s", lda_last_error(c->lda));
    }
    return LDA_OK;
}

/* Every rank: receives the metadata from the root (the root sends). Sizes first, then the arrays. */
static int32_t bcast_metadata(LdaMpiContext *c, char *msg) {
    int64_t hdr[6];
    int rc, v;
    int32_t st = LDA_OK;
    if (c->rank == c->root) {
        hdr[0] = c->nvar;
        hdr[1] = c->grid_kind;
        hdr[2] = c->vertical;
        hdr[3] = c->nlat;
        hdr[4] = c->nlon;
        hdr[5] = c->nlev_grid;
    }
    if ((rc = MPI_Bcast(hdr, 6, MPI_INT64_T, c->root, c->comm)) != MPI_SUCCESS)
        return mpi_err(msg, rc, "MPI_Bcast (bundle metadata)");
    if (c->rank != c->root) {
        c->nvar = (int)hdr[0];
        c->grid_kind = (int32_t)hdr[1];
        c->vertical = (int32_t)hdr[2];
        c->nlat = hdr[3];
        c->nlon = hdr[4];
        c->nlev_grid = hdr[5];
        c->names = calloc((size_t)c->nvar, sizeof *c->names);
        c->nlev = calloc((size_t)c->nvar, sizeof *c->nlev);
        c->lat = calloc((size_t)(c->nlat ? c->nlat : 1), sizeof(double));
        c->lon = calloc((size_t)(c->nlon ? c->nlon : 1), sizeof(double));
        c->lev = calloc((size_t)(c->nlev_grid ? c->nlev_grid : 1), sizeof(double));
        if (!c->names || !c->nlev || !c->lat || !c->lon || !c->lev)
            st = set_err(msg, LDA_ERR_INTERNAL, "out of memory (bundle metadata)");
    }
    if ((st = agree(c->comm, c->rank, c->size, st, msg, 1)) != LDA_OK) return st;
    if ((rc = MPI_Bcast(c->names, c->nvar * (NAME_MAX_LEN + 1), MPI_CHAR, c->root, c->comm)) != MPI_SUCCESS ||
        (rc = MPI_Bcast(c->nlev, c->nvar, MPI_INT32_T, c->root, c->comm)) != MPI_SUCCESS ||
        (rc = MPI_Bcast(c->lat, (int)c->nlat, MPI_DOUBLE, c->root, c->comm)) != MPI_SUCCESS ||
        (rc = MPI_Bcast(c->lon, (int)c->nlon, MPI_DOUBLE, c->root, c->comm)) != MPI_SUCCESS ||
        (rc = MPI_Bcast(c->lev, (int)c->nlev_grid, MPI_DOUBLE, c->root, c->comm)) != MPI_SUCCESS)
        return mpi_err(msg, rc, "MPI_Bcast (bundle metadata)");
    c->patch = calloc((size_t)(c->nvar ? c->nvar : 1), sizeof *c->patch);
    if (c->rank == c->root) {
        c->global = calloc((size_t)(c->nvar ? c->nvar : 1), sizeof *c->global);
        c->global_single = calloc((size_t)(c->nvar ? c->nvar : 1), sizeof *c->global_single);
        if (c->global && c->global_single)
            for (v = 0; v < c->nvar; v++) {
                c->global[v] = malloc(var_len(c, v) * sizeof(double));
                if (!c->global[v]) break;
            }
        if (!c->global || !c->global_single || (c->nvar > 0 && !c->global[c->nvar - 1]))
            st = set_err(msg, LDA_ERR_INTERNAL, "out of memory (global fields on the analysing rank)");
    }
    if (!c->patch) st = set_err(msg, LDA_ERR_INTERNAL, "out of memory");
    return agree(c->comm, c->rank, c->size, st, msg, 1);
}

int32_t lda_mpi_open(const char *bundle_dir, const char *options, MPI_Comm comm, int32_t root, LdaMpiContext **out) {
    int init = 0, fin = 0, rc, size = 0, rank = 0;
    int roots[2];
    int32_t st = LDA_OK;
    LdaMpiContext *c;
    char msg[MSG_MAX];
    open_error[0] = '\0';
    msg[0] = '\0';
    if (out) *out = NULL;
    /* Checks that need no communication: the same on every rank when the host passes the same arguments. */
    if (MPI_Initialized(&init) != MPI_SUCCESS || !init || MPI_Finalized(&fin) != MPI_SUCCESS || fin)
        return set_err(open_error, LDA_ERR_NOT_READY, "lda_mpi_open: MPI is not initialised (or already finalised)");
    if (comm == MPI_COMM_NULL)
        return set_err(open_error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_open: the communicator is MPI_COMM_NULL");
    c = calloc(1, sizeof *c);
    if (!c) return set_err(open_error, LDA_ERR_INTERNAL, "lda_mpi_open: out of memory");
    /* A private duplicate whose errors are returned, not fatal. */
    if ((rc = MPI_Comm_dup(comm, &c->comm)) != MPI_SUCCESS) {
        free(c);
        return mpi_err(open_error, rc, "lda_mpi_open: MPI_Comm_dup");
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &rank);
    MPI_Comm_size(c->comm, &size);
    c->rank = rank;
    c->size = size;
    c->root = root;
    /* Every rank must name the same root. */
    roots[0] = root;
    roots[1] = -root;
    if ((rc = MPI_Allreduce(MPI_IN_PLACE, roots, 2, MPI_INT, MPI_MIN, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "MPI_Allreduce (root)");
    } else if (roots[0] != -roots[1]) {
        st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "the ranks name different analysing ranks (root from %d to %d)",
                     roots[0], -roots[1]);
    } else if (root < 0 || root >= size) {
        st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "root %d is not a rank of the communicator (size %d)", (int)root,
                     size);
    }
    if (st == LDA_OK) {
        /* The root opens the bundle; the others wait for its verdict. */
        if (rank == root) {
            if (!bundle_dir)
                st = set_err(msg, LDA_ERR_NULL_POINTER, "bundle_dir is NULL on the analysing rank");
            else if ((st = lda_open(bundle_dir, options, &c->lda)) != LDA_OK)
                set_err(msg, st, "%s", lda_last_error(NULL));
            else
                st = read_metadata(c, msg);
        }
        if (!out && st == LDA_OK) st = set_err(msg, LDA_ERR_NULL_POINTER, "out is NULL");
        st = agree(c->comm, rank, size, st, msg, 1);
        if (st == LDA_OK) st = bcast_metadata(c, msg);
    }
    if (st != LDA_OK) {
        set_err(open_error, st, "lda_mpi_open: %s", msg);
        MPI_Comm_free(&c->comm);
        free_context(c);
        return st;
    }
    *out = c;
    return LDA_OK;
}

int32_t lda_mpi_open_f(const char *bundle_dir, const char *options, MPI_Fint comm, int32_t root, LdaMpiContext **out) {
    return lda_mpi_open(bundle_dir, options, MPI_Comm_f2c(comm), root, out);
}

int32_t lda_mpi_close(LdaMpiContext *ctx) {
    int rc;
    if (!ctx) return LDA_OK;
    rc = MPI_Comm_free(&ctx->comm);
    free_context(ctx);
    return rc == MPI_SUCCESS ? LDA_OK : mpi_err(open_error, rc, "lda_mpi_close: MPI_Comm_free");
}

const char *lda_mpi_last_error(const LdaMpiContext *ctx) {
    return ctx ? ctx->error : open_error;
}

int32_t lda_mpi_rank(const LdaMpiContext *ctx, int32_t *rank_out, int32_t *size_out, int32_t *root_out) {
    if (!ctx) return set_err(open_error, LDA_ERR_NULL_POINTER, "lda_mpi_rank: ctx is NULL");
    if (rank_out) *rank_out = ctx->rank;
    if (size_out) *size_out = ctx->size;
    if (root_out) *root_out = ctx->root;
    return LDA_OK;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Layout queries (local, from the broadcast metadata)                                                            */
/* ------------------------------------------------------------------------------------------------------------- */

#define NEED_CTX(fn)                                                                              \
    do {                                                                                          \
        if (!ctx) return set_err(open_error, LDA_ERR_NULL_POINTER, fn ": ctx is NULL");           \
        ctx->error[0] = '\0';                                                                     \
    } while (0)

int32_t lda_mpi_grid_info(LdaMpiContext *ctx, int32_t *kind_out, size_t *nlat_out, size_t *nlon_out,
                          int32_t *vertical_out, size_t *nlev_out) {
    NEED_CTX("lda_mpi_grid_info");
    if (kind_out) *kind_out = ctx->grid_kind;
    if (nlat_out) *nlat_out = (size_t)ctx->nlat;
    if (nlon_out) *nlon_out = (size_t)ctx->nlon;
    if (vertical_out) *vertical_out = ctx->vertical;
    if (nlev_out) *nlev_out = (size_t)ctx->nlev_grid;
    return LDA_OK;
}

int32_t lda_mpi_grid_coords(LdaMpiContext *ctx, double *lat_out, size_t nlat, double *lon_out, size_t nlon,
                            double *lev_out, size_t nlev) {
    NEED_CTX("lda_mpi_grid_coords");
    if ((lat_out && nlat != (size_t)ctx->nlat) || (lon_out && nlon != (size_t)ctx->nlon) ||
        (lev_out && nlev != (size_t)ctx->nlev_grid))
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT,
                       "lda_mpi_grid_coords: lengths (%zu, %zu, %zu) differ from the grid's (%lld, %lld, %lld)", nlat,
                       nlon, nlev, (long long)ctx->nlat, (long long)ctx->nlon, (long long)ctx->nlev_grid);
    if (lat_out) memcpy(lat_out, ctx->lat, nlat * sizeof(double));
    if (lon_out) memcpy(lon_out, ctx->lon, nlon * sizeof(double));
    if (lev_out) memcpy(lev_out, ctx->lev, nlev * sizeof(double));
    return LDA_OK;
}

int32_t lda_mpi_var_count(LdaMpiContext *ctx, int32_t *n_out) {
    NEED_CTX("lda_mpi_var_count");
    if (!n_out) return set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_var_count: n_out is NULL");
    *n_out = ctx->nvar;
    return LDA_OK;
}

int32_t lda_mpi_var_name(LdaMpiContext *ctx, int32_t index, char *buf, size_t len, size_t *needed) {
    size_t n;
    NEED_CTX("lda_mpi_var_name");
    if (index < 0 || index >= ctx->nvar)
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_var_name: variable identifier %d out of range"
                       " 0..%d", (int)index, ctx->nvar - 1);
    n = strlen(ctx->names[index]) + 1;
    if (needed) *needed = n;
    if (!buf || len < n)
        return set_err(ctx->error, LDA_ERR_BUFFER_TOO_SMALL, "lda_mpi_var_name: the name needs %zu bytes", n);
    memcpy(buf, ctx->names[index], n);
    return LDA_OK;
}

static int find_var(const LdaMpiContext *c, const char *name) {
    int v;
    for (v = 0; v < c->nvar; v++)
        if (!strcmp(c->names[v], name)) return v;
    return -1;
}

static void var_list(const LdaMpiContext *c, char *buf, size_t len) {
    int v;
    size_t at = 0;
    buf[0] = '\0';
    for (v = 0; v < c->nvar && at + 1 < len; v++) {
        int k = snprintf(buf + at, len - at, "%s%s", v ? ", " : "", c->names[v]);
        if (k < 0) break;
        at += (size_t)k;
    }
}

int32_t lda_mpi_var_index(LdaMpiContext *ctx, const char *name, int32_t *index_out) {
    int v;
    char list[512];
    NEED_CTX("lda_mpi_var_index");
    if (!name || !index_out)
        return set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_var_index: %s is NULL", name ? "index_out" : "name");
    v = find_var(ctx, name);
    if (v < 0) {
        var_list(ctx, list, sizeof list);
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_var_index: unknown variable '%s' (bundle variables:"
                       " %s)", name, list);
    }
    *index_out = v;
    return LDA_OK;
}

int32_t lda_mpi_var_nlev(LdaMpiContext *ctx, int32_t index, int32_t *nlev_out) {
    NEED_CTX("lda_mpi_var_nlev");
    if (!nlev_out) return set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_var_nlev: nlev_out is NULL");
    if (index < 0 || index >= ctx->nvar)
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_var_nlev: variable identifier %d out of range"
                       " 0..%d", (int)index, ctx->nvar - 1);
    *nlev_out = ctx->nlev[index];
    return LDA_OK;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Binding and observations (local)                                                                               */
/* ------------------------------------------------------------------------------------------------------------- */

/* Remembers a local failure for the next lda_mpi_analyse (the first one wins) and returns it. */
/* The first NULL one of the six observation arrays of lda_mpi_set_obs / lda_mpi_set_withheld, or NULL if none is. */
static const char *null_obs_array(const int32_t *var, const double *lat, const double *lon, const double *level,
                                  const double *value, const double *sigma) {
    return !var ? "var" : !lat ? "lat" : !lon ? "lon" : !level ? "level" : !value ? "value" : !sigma ? "sigma" : NULL;
}

/* Rows of `width` doubles (the variable identifier, then width - 1 values) into `var` and width - 1 columns of n
 * values each (`cols`, column-major: what lda_set_obs and lda_set_withheld take). */
static void rows_to_columns(const double *rows, int width, size_t n, int32_t *var, double *cols) {
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        var[i] = (int32_t)rows[(size_t)width * i];
        for (k = 1; k < width; k++) cols[(size_t)(k - 1) * n + i] = rows[(size_t)width * i + (size_t)k];
    }
}

static int32_t defer(LdaMpiContext *c, int32_t st) {
    if (st != LDA_OK && c->deferred == LDA_OK) {
        c->deferred = st;
        memcpy(c->deferred_msg, c->error, MSG_MAX);
    }
    return st;
}

static int32_t bind_patch(LdaMpiContext *ctx, const char *fn, const char *name, void *data, int single, int32_t ndim,
                          const int64_t *shape, int32_t order, int64_t lon_start, int64_t lat_start, int32_t halo) {
    int v, want_ndim;
    int64_t sx, sy, sl, nlon, nlat;
    char list[512];
    Patch *p;
    if (!name) return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "%s: name is NULL", fn));
    v = find_var(ctx, name);
    if (v < 0) {
        var_list(ctx, list, sizeof list);
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: unknown variable '%s' (bundle variables: %s)",
                                  fn, name, list));
    }
    p = &ctx->patch[v];
    memset(p, 0, sizeof *p); /* a failed bind leaves the rank without a patch of this variable */
    if (!shape) return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "%s: variable '%s': shape is NULL", fn, name));
    want_ndim = ctx->nlev[v] > 0 ? 3 : 2;
    if (ndim != want_ndim)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: variable '%s' is %s: ndim must be %d, got %d",
                                  fn, name, want_ndim == 3 ? "upper-air" : "a surface field", want_ndim, (int)ndim));
    if (order != LDA_ORDER_C && order != LDA_ORDER_FORTRAN)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: variable '%s': order must be 0 (C) or 1"
                                  " (Fortran), got %d", fn, name, (int)order));
    if (order == LDA_ORDER_C) {
        sl = ndim == 3 ? shape[0] : 1;
        sy = shape[ndim - 2];
        sx = shape[ndim - 1];
    } else {
        sx = shape[0];
        sy = shape[1];
        sl = ndim == 3 ? shape[2] : 1;
    }
    if (halo < 0)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: variable '%s': halo %d < 0", fn, name,
                                  (int)halo));
    if (ndim == 3 && sl != ctx->nlev[v])
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: variable '%s' has %d levels, the patch has %lld",
                                  fn, name, (int)ctx->nlev[v], (long long)sl));
    nlon = sx - 2 * (int64_t)halo;
    nlat = sy - 2 * (int64_t)halo;
    if (nlon < 1 || nlat < 1)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: variable '%s': shape (lon %lld, lat %lld) with"
                                  " halo %d leaves no interior", fn, name, (long long)sx, (long long)sy, (int)halo));
    if (lon_start < 0 || lat_start < 0 || lon_start + nlon > ctx->nlon || lat_start + nlat > ctx->nlat)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT,
                                  "%s: variable '%s': patch lon %lld..%lld, lat %lld..%lld (0-based, halo excluded) is not"
                                  " inside the %lld x %lld (lon x lat) grid", fn, name, (long long)lon_start,
                                  (long long)(lon_start + nlon - 1), (long long)lat_start,
                                  (long long)(lat_start + nlat - 1), (long long)ctx->nlon, (long long)ctx->nlat));
    if (!data) return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "%s: variable '%s': data is NULL", fn, name));
    p->bound = 1;
    p->single = single;
    p->data = data;
    p->lon_start = lon_start;
    p->lon_count = nlon;
    p->lat_start = lat_start;
    p->lat_count = nlat;
    p->halo = halo;
    return LDA_OK;
}

int32_t lda_mpi_bind_patch_f32(LdaMpiContext *ctx, const char *name, float *data, int32_t ndim, const int64_t *shape,
                               int32_t order, int64_t lon_start, int64_t lat_start, int32_t halo) {
    NEED_CTX("lda_mpi_bind_patch_f32");
    return bind_patch(ctx, "lda_mpi_bind_patch_f32", name, data, 1, ndim, shape, order, lon_start, lat_start, halo);
}

int32_t lda_mpi_bind_patch_f64(LdaMpiContext *ctx, const char *name, double *data, int32_t ndim, const int64_t *shape,
                               int32_t order, int64_t lon_start, int64_t lat_start, int32_t halo) {
    NEED_CTX("lda_mpi_bind_patch_f64");
    return bind_patch(ctx, "lda_mpi_bind_patch_f64", name, data, 0, ndim, shape, order, lon_start, lat_start, halo);
}

int32_t lda_mpi_set_obs(LdaMpiContext *ctx, size_t n, const int32_t *var, const double *lat, const double *lon,
                        const double *level, const double *value, const double *sigma) {
    const char *missing;
    NEED_CTX("lda_mpi_set_obs");
    free_obs(ctx);
    free_results(ctx);
    if (n == 0) return LDA_OK;
    if ((missing = null_obs_array(var, lat, lon, level, value, sigma)))
        return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_set_obs: %s is NULL (n = %zu)", missing, n));
    if (n > (size_t)INT32_MAX / 8)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_obs: n = %zu is too large", n));
    ctx->ovar = malloc(n * sizeof(int32_t));
    ctx->olat = malloc(n * sizeof(double));
    ctx->olon = malloc(n * sizeof(double));
    ctx->olevel = malloc(n * sizeof(double));
    ctx->ovalue = malloc(n * sizeof(double));
    ctx->osigma = malloc(n * sizeof(double));
    if (!ctx->ovar || !ctx->olat || !ctx->olon || !ctx->olevel || !ctx->ovalue || !ctx->osigma) {
        free_obs(ctx);
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_obs: no memory for %zu observations", n));
    }
    memcpy(ctx->ovar, var, n * sizeof(int32_t));
    memcpy(ctx->olat, lat, n * sizeof(double));
    memcpy(ctx->olon, lon, n * sizeof(double));
    memcpy(ctx->olevel, level, n * sizeof(double));
    memcpy(ctx->ovalue, value, n * sizeof(double));
    memcpy(ctx->osigma, sigma, n * sizeof(double));
    ctx->nobs = n;
    return LDA_OK;
}

int32_t lda_mpi_set_withheld(LdaMpiContext *ctx, size_t n, const int32_t *var, const double *lat, const double *lon,
                             const double *level, const double *value, const double *sigma) {
    size_t k;
    const double *cols[WH_COLS - 1];
    const char *missing;
    NEED_CTX("lda_mpi_set_withheld");
    free(ctx->wh);
    ctx->wh = NULL;
    ctx->nwh = 0;
    if (n == 0) return LDA_OK; /* cleared */
    if ((missing = null_obs_array(var, lat, lon, level, value, sigma)))
        return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_set_withheld: %s is NULL (n = %zu)",
                                  missing, n));
    if (n > (size_t)INT32_MAX / WH_COLS)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_withheld: n = %zu is too large", n));
    if (!(ctx->wh = malloc(n * WH_COLS * sizeof(double))))
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT,
                                  "lda_mpi_set_withheld: no memory for %zu observations", n));
    cols[0] = lat, cols[1] = lon, cols[2] = level, cols[3] = value, cols[4] = sigma;
    for (k = 0; k < n; k++) {
        int j;
        ctx->wh[WH_COLS * k] = (double)var[k];
        for (j = 1; j < WH_COLS; j++) ctx->wh[WH_COLS * k + j] = cols[j - 1][k];
    }
    ctx->nwh = n;
    return LDA_OK;
}

int32_t lda_mpi_set_obs_times(LdaMpiContext *ctx, size_t n, const double *time_hours) {
    NEED_CTX("lda_mpi_set_obs_times");
    if (n != ctx->nobs)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_obs_times: n = %zu, but this rank set"
                                  " %zu observations", n, ctx->nobs));
    if (n == 0) return LDA_OK;
    if (!time_hours)
        return defer(ctx, set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_set_obs_times: time_hours is NULL"));
    free(ctx->otime);
    ctx->otime = malloc(n * sizeof(double));
    if (!ctx->otime)
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_obs_times: no memory for %zu times", n));
    memcpy(ctx->otime, time_hours, n * sizeof(double));
    free_results(ctx);
    return LDA_OK;
}

int32_t lda_mpi_set_analysis_time(LdaMpiContext *ctx, double hours) {
    NEED_CTX("lda_mpi_set_analysis_time");
    if (!isfinite(hours))
        return defer(ctx, set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_analysis_time: hours = %g is not"
                                  " finite (the time in force is kept)", hours));
    ctx->has_time = 1;
    ctx->time_hours = hours;
    return LDA_OK;
}

/* An analysis time as words for a message: "12 h", or "none set". */
static void time_words(char *buf, size_t len, int has, double t) {
    if (has)
        snprintf(buf, len, "%.17g h", t);
    else
        snprintf(buf, len, "none set");
}

int32_t lda_mpi_set_error(LdaMpiContext *ctx, int32_t code, const char *message) {
    NEED_CTX("lda_mpi_set_error");
    if (code <= 0)
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_set_error: code %d is not a failure (> 0)", (int)code);
    return defer(ctx, set_err(ctx->error, code, "%s", message ? message : "host error (lda_mpi_set_error)"));
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Analysis                                                                                                       */
/* ------------------------------------------------------------------------------------------------------------- */

/* Root: checks that the gathered descriptors tile every variable exactly. desc: size x nvar x D_LEN. */
static int32_t check_tiling(LdaMpiContext *c, const int64_t *desc, char *msg) {
    int v, r, r2;
    size_t ncell = (size_t)c->nlat * (size_t)c->nlon, k;
    unsigned char *cover = malloc(ncell ? ncell : 1);
    if (!cover) return set_err(msg, LDA_ERR_INTERNAL, "out of memory (tiling check)");
    for (v = 0; v < c->nvar; v++) {
        size_t gaps = 0, first_gap = 0;
        memset(cover, 0, ncell);
        for (r = 0; r < c->size; r++) {
            const int64_t *d = desc + ((size_t)r * (size_t)c->nvar + (size_t)v) * D_LEN;
            int64_t i, j;
            if (!d[D_BOUND]) continue;
            for (j = d[D_LAT0]; j < d[D_LAT0] + d[D_NLAT]; j++)
                for (i = d[D_LON0]; i < d[D_LON0] + d[D_NLON]; i++) {
                    size_t cell = (size_t)j * (size_t)c->nlon + (size_t)i;
                    if (cover[cell]) {
                        /* Find the earlier rank that owns this point. */
                        for (r2 = 0; r2 < r; r2++) {
                            const int64_t *e = desc + ((size_t)r2 * (size_t)c->nvar + (size_t)v) * D_LEN;
                            if (e[D_BOUND] && i >= e[D_LON0] && i < e[D_LON0] + e[D_NLON] && j >= e[D_LAT0] &&
                                j < e[D_LAT0] + e[D_NLAT])
                                break;
                        }
                        free(cover);
                        return set_err(msg, LDA_ERR_INVALID_ARGUMENT,
                                       "variable '%s': the patches of ranks %d (lon %lld..%lld, lat %lld..%lld) and %d (lon"
                                       " %lld..%lld, lat %lld..%lld) overlap, first at lon %lld, lat %lld (0-based global"
                                       " indices); every grid point must belong to exactly one rank",
                                       c->names[v], r2, (long long)desc[((size_t)r2 * c->nvar + v) * D_LEN + D_LON0],
                                       (long long)(desc[((size_t)r2 * c->nvar + v) * D_LEN + D_LON0] +
                                                   desc[((size_t)r2 * c->nvar + v) * D_LEN + D_NLON] - 1),
                                       (long long)desc[((size_t)r2 * c->nvar + v) * D_LEN + D_LAT0],
                                       (long long)(desc[((size_t)r2 * c->nvar + v) * D_LEN + D_LAT0] +
                                                   desc[((size_t)r2 * c->nvar + v) * D_LEN + D_NLAT] - 1),
                                       r, (long long)d[D_LON0], (long long)(d[D_LON0] + d[D_NLON] - 1),
                                       (long long)d[D_LAT0], (long long)(d[D_LAT0] + d[D_NLAT] - 1), (long long)i,
                                       (long long)j);
                    }
                    cover[cell] = 1;
                }
        }
        for (k = 0; k < ncell; k++)
            if (!cover[k] && gaps++ == 0) first_gap = k;
        if (gaps) {
            char unbound[256];
            size_t at = 0;
            unbound[0] = '\0';
            for (r = 0; r < c->size && at + 16 < sizeof unbound; r++)
                if (!desc[((size_t)r * c->nvar + v) * D_LEN + D_BOUND])
                    at += (size_t)snprintf(unbound + at, sizeof unbound - at, "%s%d", at ? ", " : "", r);
            free(cover);
            return set_err(msg, LDA_ERR_INVALID_ARGUMENT,
                           "variable '%s': %zu of %zu grid columns belong to no rank's patch, first at lon %zu, lat %zu"
                           " (0-based global indices)%s%s%s; every grid point must belong to exactly one rank",
                           c->names[v], gaps, ncell, first_gap % (size_t)c->nlon, first_gap / (size_t)c->nlon,
                           at ? " (ranks without a patch of it: " : "", unbound, at ? ")" : "");
        }
    }
    free(cover);
    return LDA_OK;
}

/* Inserts ,"mpi":{...} before the report's closing brace (root). */
static char *splice_report(const char *json, const LdaMpiContext *c, const double *t) {
    size_t n = strlen(json), end = n;
    char extra[512];
    char *out;
    while (end > 0 && json[end - 1] != '}') end--;
    if (end == 0) end = n + 1; /* not an object: append nothing */
    snprintf(extra, sizeof extra,
             ",\"mpi\":{\"ranks\":%d,\"root\":%d,\"check_s\":%.9g,\"gather_s\":%.9g,\"analyse_s\":%.9g,"
             "\"scatter_s\":%.9g,\"total_s\":%.9g}",
             c->size, c->root, t[0], t[1], t[2], t[3], t[4]);
    out = malloc(n + strlen(extra) + 1);
    if (!out) return NULL;
    if (end > n) {
        memcpy(out, json, n + 1);
        return out;
    }
    memcpy(out, json, end - 1);
    strcpy(out + end - 1, extra);
    strcat(out, json + end - 1);
    return out;
}

/* Root: the analysis on the gathered global fields and observations. obs: ntot x OBS_COLS doubles (var, lat, lon,
 * level, value, sigma, time). res: ntot x 3 doubles (qc, hxb, hxa) on success. */
/* Root: a message of latentda about a non-finite background value names global indices: add the rank that owns the
 * point (desc: the gathered patch descriptors), and say "background" for the state that H(x_b) reads. */
static void name_owner(const LdaMpiContext *c, const int64_t *desc, char *msg) {
    char var[NAME_MAX_LEN + 1], tail[MSG_MAX];
    long long j = -1, i = -1;
    const char *at = strstr(msg, "non-finite value");
    const char *vp = at ? strstr(at, "variable '") : NULL;
    const char *ip = vp ? strstr(vp, "(lat index ") : NULL;
    int v, r;
    if (!vp || !ip || sscanf(vp, "variable '%256[^']'", var) != 1 || sscanf(ip, "(lat index %lld, lon index %lld)", &j, &i) != 2)
        return;
    v = find_var(c, var);
    if (v < 0) return;
    for (r = 0; r < c->size; r++) {
        const int64_t *d = desc + ((size_t)r * (size_t)c->nvar + (size_t)v) * D_LEN;
        if (d[D_BOUND] && i >= d[D_LON0] && i < d[D_LON0] + d[D_NLON] && j >= d[D_LAT0] && j < d[D_LAT0] + d[D_NLAT]) {
            snprintf(tail, sizeof tail, "background: %s (global indices; the point belongs to rank %d's patch, at its"
                     " interior lat %lld, lon %lld)", at, r, j - d[D_LAT0], i - d[D_LON0]);
            memcpy(msg, tail, MSG_MAX);
            return;
        }
    }
}

/* Root: hands the gathered withheld rows (n x WH_COLS) to its context; n = 0 clears the set of an earlier cycle. */
static int32_t set_withheld_rows(LdaMpiContext *c, size_t n, const double *rows, char *msg) {
    int32_t *var = NULL, st;
    double *cols = NULL;
    if (n > 0) {
        var = malloc(n * sizeof *var);
        cols = malloc((WH_COLS - 1) * n * sizeof *cols);
        if (!var || !cols) {
            free(var);
            free(cols);
            return set_err(msg, LDA_ERR_INTERNAL, "out of memory (%zu withheld observations)", n);
        }
        rows_to_columns(rows, WH_COLS, n, var, cols);
    }
    st = n ? lda_set_withheld(c->lda, n, var, cols, cols + n, cols + 2 * n, cols + 3 * n, cols + 4 * n)
           : lda_set_withheld(c->lda, 0, NULL, NULL, NULL, NULL, NULL, NULL);
    if (st != LDA_OK) set_err(msg, st, "%s", lda_last_error(c->lda));
    free(var);
    free(cols);
    return st;
}

static int32_t root_analyse(LdaMpiContext *c, const char *method, size_t ntot, const double *obs, size_t nwh,
                            const double *wh, double *res, const int64_t *desc, char *msg) {
    int32_t st;
    int v;
    size_t i;
    int32_t *var = NULL, *qc = NULL;
    double *cols = NULL, *hxb = NULL, *hxa = NULL;
    char out_mode[32] = "";
    for (v = 0; v < c->nvar; v++) {
        int64_t shape[3];
        int nd = c->nlev[v] > 0 ? 3 : 2;
        if (nd == 3) {
            shape[0] = c->nlev[v];
            shape[1] = c->nlat;
            shape[2] = c->nlon;
        } else {
            shape[0] = c->nlat;
            shape[1] = c->nlon;
        }
        st = c->global_single[v] ? lda_bind_field_f32(c->lda, c->names[v], (float *)c->global[v], nd, shape, LDA_ORDER_C)
                                 : lda_bind_field_f64(c->lda, c->names[v], (double *)c->global[v], nd, shape, LDA_ORDER_C);
        if (st != LDA_OK) return set_err(msg, st, "%s", lda_last_error(c->lda));
    }
    if (ntot == 0)
        return set_err(msg, LDA_ERR_NOT_READY, "no observations: lda_mpi_set_obs gave none on any rank");
    var = malloc(ntot * sizeof *var);
    qc = malloc(ntot * sizeof *qc);
    cols = malloc((OBS_COLS - 1) * ntot * sizeof *cols);
    hxb = malloc(ntot * sizeof *hxb);
    hxa = malloc(ntot * sizeof *hxa);
    if (!var || !qc || !cols || !hxb || !hxa) {
        st = set_err(msg, LDA_ERR_INTERNAL, "out of memory (%zu observations)", ntot);
        goto done;
    }
    rows_to_columns(obs, OBS_COLS, ntot, var, cols);
    if ((st = set_withheld_rows(c, nwh, wh, msg)) != LDA_OK) goto done;
    if (c->has_time && (st = lda_set_analysis_time(c->lda, c->time_hours)) != LDA_OK) {
        set_err(msg, st, "%s", lda_last_error(c->lda));
        goto done;
    }
    if ((st = lda_set_obs(c->lda, ntot, var, cols, cols + ntot, cols + 2 * ntot, cols + 3 * ntot, cols + 4 * ntot)) !=
            LDA_OK ||
        (st = lda_set_obs_times(c->lda, ntot, cols + 5 * ntot)) != LDA_OK ||
        (st = lda_obs_h(c->lda, NULL, 0, hxb, NULL, ntot)) != LDA_OK ||
        (st = lda_analyse(c->lda, method)) != LDA_OK || (st = lda_obs_qc(c->lda, qc, ntot)) != LDA_OK ||
        (st = lda_obs_h(c->lda, NULL, 0, hxa, NULL, ntot)) != LDA_OK) {
        set_err(msg, st, "%s", lda_last_error(c->lda));
        if (st == LDA_ERR_INVALID_DATA) name_owner(c, desc, msg);
        goto done;
    }
    /* With output = "increment" the bound arrays hold x_a - x_b: H(x_a) = H(x_b) + H(increment) (H is linear). */
    {
        size_t need = 0;
        char *json = NULL;
        if (lda_report_json(c->lda, NULL, 0, &need) == LDA_ERR_BUFFER_TOO_SMALL && (json = malloc(need)) &&
            lda_report_json(c->lda, json, need, NULL) == LDA_OK) {
            const char *o = strstr(json, "\"output\"");
            if (o) {
                o = ws(o + 8);
                if (*o == ':') o = ws(o + 1);
                if (*o == '"') sscanf(o + 1, "%31[^\"]", out_mode);
            }
        }
        free(json);
    }
    for (i = 0; i < ntot; i++) {
        res[3 * i] = (double)qc[i];
        res[3 * i + 1] = hxb[i];
        res[3 * i + 2] = strcmp(out_mode, "increment") == 0 ? hxb[i] + hxa[i] : hxa[i];
    }
done:
    free(var);
    free(qc);
    free(cols);
    free(hxb);
    free(hxa);
    return st;
}

/*
 * Collective: every rank's withheld observations to the root (*rows_out: *n_out rows of WH_COLS on the root, NULL
 * where none). One MPI_Allreduce when no rank holds any. Returns the status agreed by every rank.
 */
static int32_t gather_withheld(LdaMpiContext *c, size_t *n_out, double **rows_out, char *msg) {
    int64_t me = (int64_t)c->nwh, total = 0, *all = NULL;
    int *counts = NULL, *displs = NULL, rc, r;
    size_t n = 0;
    double *rows = NULL, dummy = 0.0;
    int32_t st = LDA_OK;
    *n_out = 0;
    *rows_out = NULL;
    if ((rc = MPI_Allreduce(&me, &total, 1, MPI_INT64_T, MPI_SUM, c->comm)) != MPI_SUCCESS)
        return mpi_err(msg, rc, "lda_mpi_analyse: MPI_Allreduce (withheld count)"); /* the same call fails everywhere */
    if (total == 0) return LDA_OK;
    if (c->rank == c->root) {
        all = calloc((size_t)c->size, sizeof *all);
        counts = calloc((size_t)c->size, sizeof *counts);
        displs = calloc((size_t)c->size, sizeof *displs);
        if (!all || !counts || !displs) st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory (withheld)");
    }
    st = agree(c->comm, c->rank, c->size, st, msg, 1);
    if (st != LDA_OK) goto done;
    if ((rc = MPI_Gather(&me, 1, MPI_INT64_T, all, 1, MPI_INT64_T, c->root, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Gather (withheld counts)");
    } else if (c->rank == c->root) {
        for (r = 0; r < c->size && st == LDA_OK; r++) {
            if (n + (size_t)all[r] > (size_t)INT32_MAX / WH_COLS) {
                st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_analyse: the withheld observation count exceeds"
                             " MPI's int counts");
                break;
            }
            counts[r] = (int)(WH_COLS * all[r]);
            displs[r] = (int)(WH_COLS * n);
            n += (size_t)all[r];
        }
        if (st == LDA_OK && !(rows = malloc(n * WH_COLS * sizeof *rows)))
            st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory (%zu withheld observations)", n);
    }
    st = agree(c->comm, c->rank, c->size, st, msg, 1);
    if (st != LDA_OK) goto done;
    if ((rc = MPI_Gatherv(c->wh ? c->wh : &dummy, (int)(WH_COLS * c->nwh), MPI_DOUBLE, rows ? rows : &dummy, counts,
                          displs, MPI_DOUBLE, c->root, c->comm)) != MPI_SUCCESS)
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Gatherv (withheld)");
    st = agree(c->comm, c->rank, c->size, st, msg, 1);
done:
    free(all);
    free(counts);
    free(displs);
    if (st != LDA_OK) {
        free(rows);
        return st;
    }
    *n_out = n;
    *rows_out = rows;
    return LDA_OK;
}

int32_t lda_mpi_analyse(LdaMpiContext *ctx, const char *method) {
    LdaMpiContext *c = ctx;
    int rc, r, v;
    int32_t st = LDA_OK;
    char msg[MSG_MAX];
    struct {
        char method[256];
        int32_t has_time;
        double time_hours;
    } head;
    int64_t *mydesc = NULL, *desc = NULL, nobs_me = 0, nobs_total = 0, *nobs_all = NULL;
    int *counts = NULL, *displs = NULL, *ocounts = NULL, *odispls = NULL, *rcounts = NULL, *rdispls = NULL;
    double *sendbuf = NULL, *recvbuf = NULL, *gbuf = NULL, *obuf = NULL, *gobs = NULL, *gres = NULL, *myres = NULL;
    double *gwh = NULL;
    size_t mylen = 0, total = 0, ntot = 0, nwh = 0, k;
    double t[6] = {0, 0, 0, 0, 0, 0}, t0, t1;
    char *report = NULL;
    int64_t report_len = 0;

    NEED_CTX("lda_mpi_analyse");
    msg[0] = '\0';
    t0 = MPI_Wtime();
    free_results(c);
    free(c->report);
    c->report = NULL;
    c->report_len = 0;

    /* 1a. Local faults: a remembered local failure; a method or an analysis time different from the root's. */
    /* The root's method and analysis time, in one broadcast. */
    memset(&head, 0, sizeof head);
    if (c->rank == c->root) {
        if (method) snprintf(head.method, sizeof head.method, "%s", method);
        head.has_time = c->has_time;
        head.time_hours = c->time_hours;
    }
    rc = MPI_Bcast(&head, (int)sizeof head, MPI_BYTE, c->root, c->comm);
    if (rc != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "MPI_Bcast (method and analysis time)");
    } else if (c->deferred != LDA_OK) {
        st = set_err(msg, c->deferred, "%s", c->deferred_msg);
    } else if (strcmp(method ? method : "", head.method) != 0) {
        st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_analyse: method '%s' differs from the analysing rank's '%s';"
                     " every rank must pass the same method", method ? method : "(default)",
                     head.method[0] ? head.method : "(default)");
    } else if (head.has_time != c->has_time || (c->has_time && head.time_hours != c->time_hours)) {
        char mine[48], theirs[48];
        time_words(mine, sizeof mine, c->has_time, c->time_hours);
        time_words(theirs, sizeof theirs, head.has_time, head.time_hours);
        st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_analyse: analysis time %s differs from the analysing rank's"
                     " %s; every rank must set the same time (lda_mpi_set_analysis_time)", mine, theirs);
    }
    c->deferred = LDA_OK; /* reported now (to every rank) */
    /* Buffers of this rank's part: descriptors, packed patches, observations and their results. */
    mydesc = calloc((size_t)c->nvar * D_LEN + 1, sizeof *mydesc);
    if (c->rank == c->root) {
        desc = calloc((size_t)c->size * (size_t)c->nvar * D_LEN + 1, sizeof *desc);
        nobs_all = calloc((size_t)c->size, sizeof *nobs_all);
        counts = calloc((size_t)c->size, sizeof *counts);
        displs = calloc((size_t)c->size, sizeof *displs);
        ocounts = calloc((size_t)c->size, sizeof *ocounts);
        odispls = calloc((size_t)c->size, sizeof *odispls);
        rcounts = calloc((size_t)c->size, sizeof *rcounts);
        rdispls = calloc((size_t)c->size, sizeof *rdispls);
        if (st == LDA_OK && (!desc || !nobs_all || !counts || !displs || !ocounts || !odispls || !rcounts || !rdispls))
            st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory");
    }
    for (v = 0; v < c->nvar; v++) mylen += patch_len(c, v, &c->patch[v]);
    if (mylen > (size_t)INT32_MAX && st == LDA_OK)
        st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_analyse: this rank's patches hold %zu values, more than MPI's"
                     " int count allows", mylen);
    sendbuf = malloc((mylen ? mylen : 1) * sizeof(double));
    obuf = malloc((c->nobs ? OBS_COLS * c->nobs : 1) * sizeof(double));
    myres = malloc((c->nobs ? 3 * c->nobs : 1) * sizeof(double));
    if (st == LDA_OK && (!mydesc || !sendbuf || !obuf || !myres))
        st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory");
    st = agree(c->comm, c->rank, c->size, st, msg, 1);
    if (st != LDA_OK) goto done;

    /* 1b. Descriptors to the root; it checks the tiling. */
    for (v = 0; v < c->nvar; v++) {
        const Patch *p = &c->patch[v];
        int64_t *d = mydesc + (size_t)v * D_LEN;
        d[D_BOUND] = p->bound;
        d[D_SINGLE] = p->single;
        d[D_LON0] = p->lon_start;
        d[D_NLON] = p->lon_count;
        d[D_LAT0] = p->lat_start;
        d[D_NLAT] = p->lat_count;
    }
    nobs_me = (int64_t)c->nobs;
    if ((rc = MPI_Allreduce(&nobs_me, &nobs_total, 1, MPI_INT64_T, MPI_SUM, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Allreduce (observation count)");
        goto done; /* every rank sees this failure of the same call */
    }
    if ((rc = MPI_Gather(mydesc, c->nvar * D_LEN, MPI_INT64_T, desc, c->nvar * D_LEN, MPI_INT64_T, c->root, c->comm)) !=
            MPI_SUCCESS ||
        (rc = MPI_Gather(&nobs_me, 1, MPI_INT64_T, nobs_all, 1, MPI_INT64_T, c->root, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Gather (patch descriptors)");
    } else if (c->rank == c->root) {
        char tmsg[MSG_MAX];
        st = check_tiling(c, desc, tmsg);
        if (st != LDA_OK) set_err(msg, st, "lda_mpi_analyse: %s", tmsg);
        for (r = 0; r < c->size && st == LDA_OK; r++) {
            size_t len = 0;
            for (v = 0; v < c->nvar; v++) {
                const int64_t *d = desc + ((size_t)r * c->nvar + v) * D_LEN;
                if (d[D_BOUND]) len += (size_t)(c->nlev[v] > 0 ? c->nlev[v] : 1) * (size_t)d[D_NLAT] * (size_t)d[D_NLON];
            }
            if (total + len > (size_t)INT32_MAX || ntot + (size_t)nobs_all[r] > (size_t)INT32_MAX / OBS_COLS) {
                st = set_err(msg, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_analyse: the global state or observation count"
                             " exceeds MPI's int counts");
                break;
            }
            counts[r] = (int)len;
            displs[r] = (int)total;
            ocounts[r] = (int)(OBS_COLS * nobs_all[r]);
            odispls[r] = (int)(OBS_COLS * ntot);
            rcounts[r] = (int)(3 * nobs_all[r]);
            rdispls[r] = (int)(3 * ntot);
            total += len;
            ntot += (size_t)nobs_all[r];
        }
        if (st == LDA_OK) {
            gbuf = malloc((total ? total : 1) * sizeof(double));
            gobs = malloc((ntot ? OBS_COLS * ntot : 1) * sizeof(double));
            gres = malloc((ntot ? 3 * ntot : 1) * sizeof(double));
            if (!gbuf || !gobs || !gres) st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory (gather)");
        }
    }
    st = agree(c->comm, c->rank, c->size, st, msg, 0);
    if (st != LDA_OK) goto done;
    /* 1c. The withheld observations to the root (they persist on each rank until set again). */
    st = gather_withheld(c, &nwh, &gwh, msg);
    if (st != LDA_OK) goto done;
    t1 = MPI_Wtime();
    t[0] = t1 - t0;

    /* 2. Gather the patches' interiors and the observations. */
    {
        size_t at = 0;
        for (v = 0; v < c->nvar; v++)
            if (c->patch[v].bound) {
                pack_patch(c, v, &c->patch[v], sendbuf + at);
                at += patch_len(c, v, &c->patch[v]);
            }
        for (k = 0; k < c->nobs; k++) {
            double *o = obuf + OBS_COLS * k;
            o[0] = (double)c->ovar[k];
            o[1] = c->olat[k];
            o[2] = c->olon[k];
            o[3] = c->olevel[k];
            o[4] = c->ovalue[k];
            o[5] = c->osigma[k];
            o[6] = c->otime ? c->otime[k] : 0.0;
        }
    }
    if ((rc = MPI_Gatherv(sendbuf, (int)mylen, MPI_DOUBLE, gbuf, counts, displs, MPI_DOUBLE, c->root, c->comm)) !=
            MPI_SUCCESS ||
        (rc = MPI_Gatherv(obuf, (int)(OBS_COLS * c->nobs), MPI_DOUBLE, gobs, ocounts, odispls, MPI_DOUBLE, c->root, c->comm)) !=
            MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Gatherv");
    } else if (c->rank == c->root) {
        /* Unpack into the global fields; a variable is float on the root only if every rank bound it as float. */
        for (v = 0; v < c->nvar; v++) {
            int single = 1;
            for (r = 0; r < c->size; r++) {
                const int64_t *d = desc + ((size_t)r * c->nvar + v) * D_LEN;
                if (d[D_BOUND] && !d[D_SINGLE]) single = 0;
            }
            c->global_single[v] = single;
        }
        for (r = 0; r < c->size; r++) {
            size_t at = (size_t)displs[r];
            for (v = 0; v < c->nvar; v++) {
                const int64_t *d = desc + ((size_t)r * c->nvar + v) * D_LEN;
                if (!d[D_BOUND]) continue;
                packed_to_global(c, v, d, gbuf + at);
                at += (size_t)(c->nlev[v] > 0 ? c->nlev[v] : 1) * (size_t)d[D_NLAT] * (size_t)d[D_NLON];
            }
        }
    }
    t[1] = MPI_Wtime() - t1;
    t1 = MPI_Wtime();

    /* 3. The analysis, on the root only. */
    if (st == LDA_OK && c->rank == c->root) {
        char amsg[MSG_MAX];
        st = root_analyse(c, head.method[0] ? head.method : NULL, ntot, gobs, nwh, gwh, gres, desc, amsg);
        if (st != LDA_OK) set_err(msg, st, "lda_mpi_analyse (analysis on rank %d): %s", c->root, amsg);
    }
    t[2] = MPI_Wtime() - t1;
    /* 4. Everyone learns the outcome; nothing is written unless it succeeded. */
    st = agree_how(c->comm, c->rank, c->size, st, msg, 0, 1);
    if (st != LDA_OK) goto done;
    t1 = MPI_Wtime();
    if (c->rank == c->root) {
        for (r = 0; r < c->size; r++) {
            size_t at = (size_t)displs[r];
            for (v = 0; v < c->nvar; v++) {
                const int64_t *d = desc + ((size_t)r * c->nvar + v) * D_LEN;
                if (!d[D_BOUND]) continue;
                global_to_packed(c, v, d, gbuf + at);
                at += (size_t)(c->nlev[v] > 0 ? c->nlev[v] : 1) * (size_t)d[D_NLAT] * (size_t)d[D_NLON];
            }
        }
    }
    recvbuf = sendbuf; /* the same sizes: reuse */
    if ((rc = MPI_Scatterv(gbuf, counts, displs, MPI_DOUBLE, recvbuf, (int)mylen, MPI_DOUBLE, c->root, c->comm)) !=
            MPI_SUCCESS ||
        (rc = MPI_Scatterv(gres, rcounts, rdispls, MPI_DOUBLE, myres, (int)(3 * c->nobs), MPI_DOUBLE, c->root,
                           c->comm)) != MPI_SUCCESS) {
        /* Cannot be agreed on reliably (the transfer itself failed); reported as an MPI error on this rank. */
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Scatterv");
        goto done;
    }
    {
        size_t at = 0;
        for (v = 0; v < c->nvar; v++)
            if (c->patch[v].bound) {
                unpack_patch(c, v, &c->patch[v], recvbuf + at);
                at += patch_len(c, v, &c->patch[v]);
            }
    }
    t[3] = MPI_Wtime() - t1;
    t[4] = MPI_Wtime() - t0;
    /* 5. Observation results on this rank; the report to every rank. */
    if (c->nobs) {
        c->qc = malloc(c->nobs * sizeof *c->qc);
        c->hxb = malloc(c->nobs * sizeof *c->hxb);
        c->hxa = malloc(c->nobs * sizeof *c->hxa);
    }
    if (c->nobs && (!c->qc || !c->hxb || !c->hxa)) {
        st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory (observation results)");
    } else {
        for (k = 0; k < c->nobs; k++) {
            c->qc[k] = (int32_t)myres[3 * k];
            c->hxb[k] = myres[3 * k + 1];
            c->hxa[k] = myres[3 * k + 2];
        }
    }
    if (c->rank == c->root) {
        size_t need = 0;
        char *json = NULL;
        if (lda_report_json(c->lda, NULL, 0, &need) == LDA_ERR_BUFFER_TOO_SMALL && (json = malloc(need)) &&
            lda_report_json(c->lda, json, need, NULL) == LDA_OK)
            report = splice_report(json, c, t);
        free(json);
        report_len = report ? (int64_t)strlen(report) + 1 : 0;
    }
    if ((rc = MPI_Bcast(&report_len, 1, MPI_INT64_T, c->root, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Bcast (report)");
        goto done;
    }
    if (st == LDA_OK && (report_len <= 0 || report_len > INT32_MAX))
        st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: the analysing rank could not read its report");
    if (st == LDA_OK && c->rank != c->root && !(report = malloc((size_t)report_len)))
        st = set_err(msg, LDA_ERR_INTERNAL, "lda_mpi_analyse: out of memory (report)");
    /* The patches are written already: a failure from here on is reported, but the analysis stands. */
    st = agree(c->comm, c->rank, c->size, st, msg, 1);
    if (st != LDA_OK) goto done;
    if ((rc = MPI_Bcast(report, (int)report_len, MPI_CHAR, c->root, c->comm)) != MPI_SUCCESS) {
        st = mpi_err(msg, rc, "lda_mpi_analyse: MPI_Bcast (report)");
        goto done;
    }
    c->report = report;
    c->report_len = (size_t)report_len;
    c->nobs_global = (size_t)nobs_total;
    report = NULL;
    c->have_results = 1;

done:
    if (st != LDA_OK) {
        free_results(c);
        memcpy(c->error, msg, MSG_MAX);
    }
    free(report);
    free(mydesc);
    free(desc);
    free(nobs_all);
    free(counts);
    free(displs);
    free(ocounts);
    free(odispls);
    free(rcounts);
    free(rdispls);
    free(sendbuf);
    free(gbuf);
    free(obuf);
    free(gobs);
    free(gwh);
    free(gres);
    free(myres);
    return st;
}

/* ------------------------------------------------------------------------------------------------------------- */
/* Results (local)                                                                                                */
/* ------------------------------------------------------------------------------------------------------------- */

static int32_t results_ready(LdaMpiContext *ctx, const char *fn, size_t n) {
    if (!ctx->have_results)
        return set_err(ctx->error, LDA_ERR_NOT_READY, "%s: no successful lda_mpi_analyse since the last lda_mpi_set_obs", fn);
    if (n != ctx->nobs)
        return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "%s: n = %zu, but this rank set %zu observations", fn, n,
                       ctx->nobs);
    return LDA_OK;
}

int32_t lda_mpi_obs_qc(LdaMpiContext *ctx, int32_t *flags_out, size_t n) {
    int32_t st;
    NEED_CTX("lda_mpi_obs_qc");
    if ((st = results_ready(ctx, "lda_mpi_obs_qc", n)) != LDA_OK) return st;
    if (n && !flags_out) return set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_obs_qc: flags_out is NULL");
    if (n) memcpy(flags_out, ctx->qc, n * sizeof(int32_t));
    return LDA_OK;
}

int32_t lda_mpi_obs_count(LdaMpiContext *ctx, size_t *local_out, size_t *global_out) {
    NEED_CTX("lda_mpi_obs_count");
    if (local_out) *local_out = ctx->nobs;
    if (global_out) *global_out = ctx->have_results ? ctx->nobs_global : 0;
    return LDA_OK;
}

int32_t lda_mpi_obs_hx(LdaMpiContext *ctx, double *hxb_out, double *hxa_out, size_t n) {
    int32_t st;
    NEED_CTX("lda_mpi_obs_hx");
    if ((st = results_ready(ctx, "lda_mpi_obs_hx", n)) != LDA_OK) return st;
    if (n && hxb_out) memcpy(hxb_out, ctx->hxb, n * sizeof(double));
    if (n && hxa_out) memcpy(hxa_out, ctx->hxa, n * sizeof(double));
    return LDA_OK;
}

int32_t lda_mpi_report_json(LdaMpiContext *ctx, char *buf, size_t len, size_t *needed) {
    NEED_CTX("lda_mpi_report_json");
    if (!ctx->report)
        return set_err(ctx->error, LDA_ERR_NOT_READY, "lda_mpi_report_json: no successful lda_mpi_analyse yet");
    if (needed) *needed = ctx->report_len;
    if (!buf || len < ctx->report_len)
        return set_err(ctx->error, LDA_ERR_BUFFER_TOO_SMALL, "report needs %zu bytes, buffer has %zu", ctx->report_len, len);
    memcpy(buf, ctx->report, ctx->report_len);
    return LDA_OK;
}

/* A minimal JSON walker for lda_mpi_report_number (the report is latentda's own, well-formed JSON). */
static const char *ws(const char *p) {
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return p;
}

/* Skips one JSON string starting at '"'; returns the character after it. */
static const char *skip_string(const char *p) {
    p++;
    while (*p && *p != '"') p += (*p == '\\' && p[1]) ? 2 : 1;
    return *p ? p + 1 : p;
}

static const char *skip_value(const char *p) {
    int depth = 0;
    p = ws(p);
    for (;;) {
        char ch = *p;
        if (ch == '\0') return p;
        if (ch == '"') {
            p = skip_string(p);
            if (depth == 0) return p;
            continue;
        }
        if (ch == '{' || ch == '[') {
            depth++;
        } else if (ch == '}' || ch == ']') {
            if (depth == 0) return p;
            if (--depth == 0) return p + 1;
        } else if (depth == 0 && ch == ',') {
            return p;
        }
        p++;
    }
}

/* Does the string at p (at '"') equal key[0..klen)? */
static int string_is(const char *p, const char *key, size_t klen) {
    return p[0] == '"' && strncmp(p + 1, key, klen) == 0 && p[1 + klen] == '"';
}

/* Finds member `key` (length klen) of the object at p ('{'); returns its value or NULL. */
static const char *member(const char *p, const char *key, size_t klen) {
    p = ws(p + 1);
    while (*p == '"') {
        int hit = string_is(p, key, klen);
        p = ws(skip_string(p));
        if (*p != ':') return NULL;
        p = ws(p + 1);
        if (hit) return p;
        p = ws(skip_value(p));
        if (*p == ',') p = ws(p + 1);
    }
    return NULL;
}

/* Element `key` of the array at p ('['): by 0-based index, or the object whose "name" is key. */
static const char *element(const char *p, const char *key, size_t klen) {
    char *end;
    long idx = strtol(key, &end, 10);
    int by_index = end == key + klen && klen > 0;
    long i = 0;
    p = ws(p + 1);
    while (*p && *p != ']') {
        if (by_index && i == idx) return p;
        if (!by_index && *p == '{') {
            const char *nm = member(p, "name", 4);
            if (nm && string_is(nm, key, klen)) return p;
        }
        p = ws(skip_value(p));
        if (*p == ',') p = ws(p + 1);
        i++;
    }
    return NULL;
}

int32_t lda_mpi_report_number(LdaMpiContext *ctx, const char *path, double *value_out) {
    const char *p, *key, *dot;
    NEED_CTX("lda_mpi_report_number");
    if (!path || !value_out)
        return set_err(ctx->error, LDA_ERR_NULL_POINTER, "lda_mpi_report_number: %s is NULL", path ? "value_out" : "path");
    if (!ctx->report)
        return set_err(ctx->error, LDA_ERR_NOT_READY, "lda_mpi_report_number: no successful lda_mpi_analyse yet");
    p = ws(ctx->report);
    for (key = path;; key = dot + 1) {
        size_t klen;
        dot = strchr(key, '.');
        klen = dot ? (size_t)(dot - key) : strlen(key);
        p = *p == '{' ? member(p, key, klen) : *p == '[' ? element(p, key, klen) : NULL;
        if (!p)
            return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_report_number: report has no entry '%.*s' in"
                           " path '%s'", (int)klen, key, path);
        p = ws(p);
        if (!dot) break;
    }
    if (!strncmp(p, "true", 4) || !strncmp(p, "false", 5)) {
        *value_out = *p == 't' ? 1.0 : 0.0;
        return LDA_OK;
    }
    if (*p == '-' || (*p >= '0' && *p <= '9')) {
        *value_out = strtod(p, NULL);
        return LDA_OK;
    }
    return set_err(ctx->error, LDA_ERR_INVALID_ARGUMENT, "lda_mpi_report_number: '%s' is not a number", path);
}
