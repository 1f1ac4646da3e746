/*
 * latentda MPI example: a domain-decomposed C model that lets latentda analyse its fields in place.
 *
 * Every rank owns one block of a px x py (longitude x latitude) decomposition of every bundle variable, stored C-order
 * (lev, lat, lon) with a halo of --halo points (filled with NaN: latentda never reads or writes it). Each rank reads its
 * own block of the background from a CF NetCDF file, binds it (lda_mpi_bind_patch_*), takes its share of the
 * observations of a CSV file (var,lat,lon,level,value,sigma[,time]; row i goes to rank i mod size), runs the collective
 * analysis, and writes
 *   OUT.bin      the analysed fields as raw float64 in state layout (variables in bundle order, each (lev, lat, lon)),
 *                each rank writing its own block (MPI-IO);
 *   OUT.bin.obs  per observation row: qc, H(x_b), H(x_a) as float64 (written by the rank that gave it).
 * It prints one line per rank: RESULT rank=R status=S untouched=U halo_ok=H msg=... (U: 1 if the rank's arrays are
 * bit-identical to the background, H: 1 if the halo is still NaN).
 *
 * Build (after scripts/mpi_check.sh or scripts/install.sh --mpi built liblatentda_mpi):
 *   mpicc -std=c99 -O2 -Iinclude examples/mpi/driver.c -o target/mpi/driver_c -Ltarget/mpi -llatentda_mpi \
 *         -Ltarget/release -llatentda -lnetcdf -lm -Wl,-rpath,$PWD/target/mpi:$PWD/target/release
 * Run:
 *   mpirun -n 4 target/mpi/driver_c models/speedy-t31 models/speedy-t31/sample/background.nc \
 *          models/speedy-t31/sample/obs.csv an.bin --grid 2x2 --uneven
 * Options: --grid PXxPY (default: as square as the rank count allows)  --uneven (unequal blocks)  --halo H (default 1)
 *          --precision f32|f64  --root R  --method M  --options TOML  --quiet
 *          --withheld FILE (observations to verify against, as OBS.csv; never assimilated)  --report FILE (JSON)
 *          --analysis-time HOURS (lda_mpi_set_analysis_time on every rank: the online mix's cycle time)
 *          --fault KIND --fault-rank R: size | overlap | gap | unbound | nan | badobs | noobs | method | badmethod
 *                                       | time | nantime | notime (with --analysis-time: R sets 1 h more, NaN, none)
 *          (for the error-path tests: what one rank, or every rank, does wrong); skip (a host bug: rank R never calls
 *          lda_mpi_analyse, so the others hang: the tests' time limit must catch it)
 */
#include <math.h>
#include <mpi.h>
#include <netcdf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentda_mpi.h"

typedef struct {
    char name[257];
    int nlev;                 /* 0: surface */
    int64_t lon0, nlon, lat0, nlat;
    size_t len;               /* with halo */
    void *data;               /* float* or double*, (lev, lat + 2h, lon + 2h) */
    void *copy;               /* the background, to check that a failed analysis left it untouched */
} Field;

/* This rank's share of the rows of an observation CSV (var,lat,lon,level,value,sigma[,time]; row i to rank
 * i mod size). */
typedef struct {
    size_t n, cap;        /* rows kept here; capacity */
    int have_times;       /* a 7th column "time" (hours), passed on with lda_mpi_set_obs_times */
    int32_t *var;
    size_t *row;          /* row index in the file (0-based, header excluded) */
    double *lat, *lon, *lev, *val, *sig, *tim;
} Obs;

static void read_obs(const char *path, LdaMpiContext *ctx, int rank, int size, Obs *o) {
    char line[1024];
    size_t lines = 0;
    FILE *fp = fopen(path, "r");
    if (!fp) MPI_Abort(MPI_COMM_WORLD, 1);
    while (fgets(line, sizeof line, fp)) {
        char *fld[7], *p = line;
        int nf = 0;
        line[strcspn(line, "\r\n")] = '\0';
        if (lines++ == 0) {
            o->have_times = strstr(line, ",time") != NULL;
            continue;
        }
        if (!line[0]) continue;
        if ((lines - 2) % (size_t)size != (size_t)rank) continue;
        fld[nf++] = p;
        for (; *p && nf < 7; p++)
            if (*p == ',') {
                *p = '\0';
                fld[nf++] = p + 1;
            }
        if (nf < 6) continue;
        if (o->n == o->cap) {
            o->cap = o->cap ? 2 * o->cap : 256;
            o->var = realloc(o->var, o->cap * sizeof *o->var);
            o->row = realloc(o->row, o->cap * sizeof *o->row);
            o->lat = realloc(o->lat, o->cap * sizeof(double));
            o->lon = realloc(o->lon, o->cap * sizeof(double));
            o->lev = realloc(o->lev, o->cap * sizeof(double));
            o->val = realloc(o->val, o->cap * sizeof(double));
            o->sig = realloc(o->sig, o->cap * sizeof(double));
            o->tim = realloc(o->tim, o->cap * sizeof(double));
            if (!o->var || !o->row || !o->lat || !o->lon || !o->lev || !o->val || !o->sig || !o->tim)
                MPI_Abort(MPI_COMM_WORLD, 1);
        }
        if (lda_mpi_var_index(ctx, fld[0], &o->var[o->n]) != LDA_OK) o->var[o->n] = -1;
        o->row[o->n] = lines - 2;
        o->lat[o->n] = strtod(fld[1], NULL);
        o->lon[o->n] = strtod(fld[2], NULL);
        o->lev[o->n] = fld[3][0] ? strtod(fld[3], NULL) : NAN;
        o->val[o->n] = strtod(fld[4], NULL);
        o->sig[o->n] = strtod(fld[5], NULL);
        o->tim[o->n] = nf > 6 ? strtod(fld[6], NULL) : 0.0;
        o->n++;
    }
    fclose(fp);
}

static void free_obs(Obs *o) {
    free(o->var);
    free(o->row);
    free(o->lat);
    free(o->lon);
    free(o->lev);
    free(o->val);
    free(o->sig);
    free(o->tim);
}

/* Block `i` of `p` blocks of `n` points: the remainder goes to the first blocks; --uneven moves a third of block 0
 * into the last block. */
static void block(int64_t n, int p, int i, int uneven, int64_t *start, int64_t *count) {
    int64_t base = n / p, rem = n % p, k, s = 0, c = 0;
    int64_t shift = (uneven && p > 1) ? base / 3 : 0;
    for (k = 0; k <= i; k++) {
        s += c;
        c = base + (k < rem ? 1 : 0);
        if (k == 0) c -= shift;
        if (k == p - 1) c += shift;
    }
    *start = s;
    *count = c;
}

int main(int argc, char **argv) {
    int rank, size, px = 0, py = 0, uneven = 0, halo = 1, single = 0, quiet = 0, root = 0, a, v, rc = 1;
    int fault_rank = 0;
    const char *method = NULL, *options = NULL, *fault = "", *withheld = NULL, *report = NULL;
    const char *analysis_time = NULL;
    LdaMpiContext *ctx = NULL;
    int32_t st, nvar = 0;
    size_t nlat = 0, nlon = 0, nobs = 0, k;
    Field *f = NULL;
    Obs obs = {0}, wh = {0};
    int32_t *qc = NULL;
    double *hxb = NULL, *hxa = NULL;
    int untouched = 1, halo_ok = 1;
    char msg[2048];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 5) {
        if (rank == 0) fprintf(stderr, "usage: %s BUNDLE BACKGROUND.nc OBS.csv OUT.bin [options]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    for (a = 5; a < argc; a++) {
        if (!strcmp(argv[a], "--grid") && a + 1 < argc) {
            if (sscanf(argv[++a], "%dx%d", &px, &py) != 2) px = py = 0;
        } else if (!strcmp(argv[a], "--uneven")) {
            uneven = 1;
        } else if (!strcmp(argv[a], "--halo") && a + 1 < argc) {
            halo = atoi(argv[++a]);
        } else if (!strcmp(argv[a], "--precision") && a + 1 < argc) {
            single = !strcmp(argv[++a], "f32");
        } else if (!strcmp(argv[a], "--root") && a + 1 < argc) {
            root = atoi(argv[++a]);
        } else if (!strcmp(argv[a], "--method") && a + 1 < argc) {
            method = argv[++a];
        } else if (!strcmp(argv[a], "--options") && a + 1 < argc) {
            options = argv[++a];
        } else if (!strcmp(argv[a], "--fault") && a + 1 < argc) {
            fault = argv[++a];
        } else if (!strcmp(argv[a], "--fault-rank") && a + 1 < argc) {
            fault_rank = atoi(argv[++a]);
        } else if (!strcmp(argv[a], "--withheld") && a + 1 < argc) {
            withheld = argv[++a];
        } else if (!strcmp(argv[a], "--analysis-time") && a + 1 < argc) {
            analysis_time = argv[++a];
        } else if (!strcmp(argv[a], "--report") && a + 1 < argc) {
            report = argv[++a];
        } else if (!strcmp(argv[a], "--quiet")) {
            quiet = 1;
        } else {
            if (rank == 0) fprintf(stderr, "unknown argument %s\n", argv[a]);
            MPI_Finalize();
            return 2;
        }
    }
    if (px * py != size) { /* as square as possible, more blocks in longitude */
        for (py = 1, a = 1; a * a <= size; a++)
            if (size % a == 0) py = a;
        px = size / py;
    }

    /* 1. Open (collective): the root opens the bundle, every rank learns the grid and the variables. */
    st = lda_mpi_open(argv[1], options, MPI_COMM_WORLD, root, &ctx);
    if (st != LDA_OK) {
        printf("RESULT rank=%d status=%d untouched=1 halo_ok=1 msg=%s\n", rank, (int)st, lda_mpi_last_error(NULL));
        MPI_Finalize();
        return 1;
    }
    lda_mpi_grid_info(ctx, NULL, &nlat, &nlon, NULL, NULL);
    lda_mpi_var_count(ctx, &nvar);
    f = calloc((size_t)nvar, sizeof *f);

    /* 2. This rank's block of every variable, read from the background file, then bound in place. */
    {
        int ix = rank % px, iy = rank / px, nc, id, e;
        if ((e = nc_open(argv[2], NC_NOWRITE, &nc)) != NC_NOERR) {
            fprintf(stderr, "rank %d: %s: %s\n", rank, argv[2], nc_strerror(e));
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        for (v = 0; v < nvar; v++) {
            Field *x = &f[v];
            int32_t nl = 0;
            int64_t sx, sy, l, j, i, shape[3];
            size_t start[3], count[3], nin, n = 0;
            double *tmp;
            lda_mpi_var_name(ctx, v, x->name, sizeof x->name, NULL);
            lda_mpi_var_nlev(ctx, v, &nl);
            x->nlev = nl;
            block((int64_t)nlon, px, ix, uneven, &x->lon0, &x->nlon);
            block((int64_t)nlat, py, iy, uneven, &x->lat0, &x->nlat);
            sx = x->nlon + 2 * halo;
            sy = x->nlat + 2 * halo;
            x->len = (size_t)(nl > 0 ? nl : 1) * (size_t)sy * (size_t)sx;
            x->data = malloc(x->len * (single ? sizeof(float) : sizeof(double)));
            x->copy = malloc(x->len * (single ? sizeof(float) : sizeof(double)));
            nin = (size_t)(nl > 0 ? nl : 1) * (size_t)x->nlat * (size_t)x->nlon;
            tmp = malloc(nin * sizeof(double));
            if (!x->data || !x->copy || !tmp) MPI_Abort(MPI_COMM_WORLD, 1);
            start[0] = 0;
            count[0] = (size_t)nl;
            start[nl > 0 ? 1 : 0] = (size_t)x->lat0;
            count[nl > 0 ? 1 : 0] = (size_t)x->nlat;
            start[nl > 0 ? 2 : 1] = (size_t)x->lon0;
            count[nl > 0 ? 2 : 1] = (size_t)x->nlon;
            if ((e = nc_inq_varid(nc, x->name, &id)) != NC_NOERR ||
                (e = nc_get_vara_double(nc, id, start, count, tmp)) != NC_NOERR) {
                fprintf(stderr, "rank %d: variable %s: %s\n", rank, x->name, nc_strerror(e));
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            for (l = 0; l < (nl > 0 ? nl : 1); l++)
                for (j = 0; j < sy; j++)
                    for (i = 0; i < sx; i++) {
                        size_t at = (size_t)((l * sy + j) * sx + i);
                        int inner = j >= halo && j < sy - halo && i >= halo && i < sx - halo;
                        double val = inner ? tmp[n++] : NAN;
                        if (single)
                            ((float *)x->data)[at] = (float)val;
                        else
                            ((double *)x->data)[at] = val;
                    }
            free(tmp);
            /* Faults for the error-path tests. */
            if (rank == fault_rank && !strcmp(fault, "nan") && v == nvar - 1) {
                size_t at = (size_t)(halo * sx + halo);
                if (single)
                    ((float *)x->data)[at] = NAN;
                else
                    ((double *)x->data)[at] = NAN;
            }
            memcpy(x->copy, x->data, x->len * (single ? sizeof(float) : sizeof(double)));
            if (nl > 0) {
                shape[0] = nl;
                shape[1] = sy;
                shape[2] = sx;
            } else {
                shape[0] = sy;
                shape[1] = sx;
            }
            {
                int64_t lon0 = x->lon0, lat0 = x->lat0;
                if (rank == fault_rank && v == 0) {
                    if (!strcmp(fault, "size") && nl > 0) shape[0] = nl + 1;           /* wrong level count */
                    if (!strcmp(fault, "gap")) shape[nl > 0 ? 2 : 1] = sx - 1;         /* one longitude short */
                    if (!strcmp(fault, "overlap")) lon0 = lon0 > 0 ? lon0 - 1 : lon0 + 1; /* shifted by one */
                }
                if (rank == fault_rank && v == 0 && !strcmp(fault, "unbound")) continue;
                st = single ? lda_mpi_bind_patch_f32(ctx, x->name, (float *)x->data, nl > 0 ? 3 : 2, shape, LDA_ORDER_C,
                                                     lon0, lat0, halo)
                            : lda_mpi_bind_patch_f64(ctx, x->name, (double *)x->data, nl > 0 ? 3 : 2, shape, LDA_ORDER_C,
                                                     lon0, lat0, halo);
                /* A local failure is remembered: lda_mpi_analyse reports it on every rank, so go on. */
                if (st != LDA_OK && !quiet) fprintf(stderr, "rank %d: bind %s: %s\n", rank, x->name, lda_mpi_last_error(ctx));
            }
        }
        nc_close(nc);
    }

    /* 3. Observations: row i of the file goes to rank i mod size (any rank may hold any observation); withheld ones
     * (--withheld) likewise, verified by the report and never assimilated. */
    if (strcmp(fault, "noobs") != 0) {
        read_obs(argv[3], ctx, rank, size, &obs);
        nobs = obs.n;
        if (rank == fault_rank && !strcmp(fault, "badobs") && nobs > 0)
            st = lda_mpi_set_obs(ctx, nobs, obs.var, obs.lat, NULL, obs.lev, obs.val, obs.sig); /* lon missing */
        else
            st = lda_mpi_set_obs(ctx, nobs, obs.var, obs.lat, obs.lon, obs.lev, obs.val, obs.sig);
        if (obs.have_times) st = lda_mpi_set_obs_times(ctx, nobs, obs.tim);
    }
    if (withheld) {
        read_obs(withheld, ctx, rank, size, &wh);
        st = lda_mpi_set_withheld(ctx, wh.n, wh.var, wh.lat, wh.lon, wh.lev, wh.val, wh.sig);
    }

    /* The cycle's time (--analysis-time), the same on every rank unless a fault says otherwise: "time" gives the
     * fault rank one hour more, "nantime" a NaN (refused, and reported again by the analysis on every rank), "notime"
     * none at all. */
    if (analysis_time) {
        double h = atof(analysis_time);
        if (rank == fault_rank && !strcmp(fault, "time")) h += 1.0;
        if (rank == fault_rank && !strcmp(fault, "nantime")) h = NAN;
        if (!(rank == fault_rank && !strcmp(fault, "notime"))) {
            st = lda_mpi_set_analysis_time(ctx, h);
            if (st != LDA_OK && !quiet) fprintf(stderr, "rank %d: set_analysis_time: %s\n", rank, lda_mpi_last_error(ctx));
        }
    }

    /* 4. The analysis (collective): on success every rank's blocks hold the analysis. */
    if (!strcmp(fault, "badmethod")) method = "nosuch";
    if (!strcmp(fault, "method") && rank == fault_rank) method = "3dvar";
    if (!strcmp(fault, "skip") && rank == fault_rank) {
        /* A host bug, not a latentda fault: this rank never makes the collective call, so the others wait forever
         * (tests/mpi.rs checks that its time limit catches such a hang). */
        printf("rank %d skips lda_mpi_analyse\n", rank);
        fflush(stdout);
        MPI_Finalize();
        return 3;
    }
    st = lda_mpi_analyse(ctx, method);
    snprintf(msg, sizeof msg, "%s", st == LDA_OK ? "" : lda_mpi_last_error(ctx));
    for (v = 0; v < nvar; v++) {
        Field *x = &f[v];
        size_t es = single ? sizeof(float) : sizeof(double), i;
        int64_t sx = x->nlon + 2 * halo, sy = x->nlat + 2 * halo;
        if (st != LDA_OK && memcmp(x->data, x->copy, x->len * es) != 0) untouched = 0;
        for (i = 0; i < x->len; i++) {
            int64_t ii = (int64_t)(i % (size_t)sx), jj = (int64_t)((i / (size_t)sx) % (size_t)sy);
            int inner = jj >= halo && jj < sy - halo && ii >= halo && ii < sx - halo;
            double val = single ? (double)((float *)x->data)[i] : ((double *)x->data)[i];
            if (!inner && !isnan(val)) halo_ok = 0;
        }
    }
    printf("RESULT rank=%d status=%d untouched=%d halo_ok=%d msg=%s\n", rank, (int)st, untouched, halo_ok, msg);
    fflush(stdout);
    if (st != LDA_OK) goto finish;

    /* 5. Diagnostics on every rank: the same report everywhere; this rank's own QC flags and H(x). */
    qc = malloc((nobs ? nobs : 1) * sizeof *qc);
    hxb = malloc((nobs ? nobs : 1) * sizeof *hxb);
    hxa = malloc((nobs ? nobs : 1) * sizeof *hxa);
    if ((st = lda_mpi_obs_qc(ctx, qc, nobs)) != LDA_OK || (st = lda_mpi_obs_hx(ctx, hxb, hxa, nobs)) != LDA_OK) {
        fprintf(stderr, "rank %d: %s\n", rank, lda_mpi_last_error(ctx));
        goto finish;
    }
    if (!quiet) {
        double j0 = 0, j1 = 0, tg = 0, ts = 0, ta = 0, tt = 0;
        size_t used = 0;
        for (k = 0; k < nobs; k++) used += qc[k] == LDA_QC_USED;
        lda_mpi_report_number(ctx, "solver.j_initial", &j0);
        lda_mpi_report_number(ctx, "solver.j_final", &j1);
        lda_mpi_report_number(ctx, "mpi.gather_s", &tg);
        lda_mpi_report_number(ctx, "mpi.scatter_s", &ts);
        lda_mpi_report_number(ctx, "mpi.analyse_s", &ta);
        lda_mpi_report_number(ctx, "mpi.total_s", &tt);
        printf("rank %d: %zu observations (%zu used), J %.6g -> %.6g; gather %.4f s, analysis %.4f s, scatter %.4f s,"
               " total %.4f s\n", rank, nobs, used, j0, j1, tg, ta, ts, tt);
    }

    /* 6. Output: each rank writes its own blocks and observation results (MPI-IO, explicit offsets). */
    {
        MPI_File fh;
        MPI_Offset base = 0;
        char path[4096];
        double *row = malloc((size_t)nlon * sizeof(double));
        snprintf(path, sizeof path, "%s.obs", argv[4]);
        if (rank == 0) {
            MPI_File_delete(argv[4], MPI_INFO_NULL); /* no stale tail from an earlier, larger file */
            MPI_File_delete(path, MPI_INFO_NULL);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        MPI_File_open(MPI_COMM_WORLD, argv[4], MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh);
        for (v = 0; v < nvar; v++) {
            Field *x = &f[v];
            int64_t sx = x->nlon + 2 * halo, sy = x->nlat + 2 * halo, l, j, i;
            for (l = 0; l < (x->nlev > 0 ? x->nlev : 1); l++)
                for (j = 0; j < x->nlat; j++) {
                    size_t at = (size_t)((l * sy + j + halo) * sx + halo);
                    MPI_Offset off = base + (MPI_Offset)(((l * (int64_t)nlat + x->lat0 + j) * (int64_t)nlon + x->lon0) * 8);
                    for (i = 0; i < x->nlon; i++)
                        row[i] = single ? (double)((float *)x->data)[at + (size_t)i] : ((double *)x->data)[at + (size_t)i];
                    MPI_File_write_at(fh, off, row, (int)x->nlon, MPI_DOUBLE, MPI_STATUS_IGNORE);
                }
            base += (MPI_Offset)((x->nlev > 0 ? x->nlev : 1) * (int64_t)nlat * (int64_t)nlon * 8);
        }
        MPI_File_close(&fh);
        free(row);
        MPI_File_open(MPI_COMM_WORLD, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, MPI_INFO_NULL, &fh);
        for (k = 0; k < nobs; k++) {
            double r3[3];
            r3[0] = (double)qc[k];
            r3[1] = hxb[k];
            r3[2] = hxa[k];
            MPI_File_write_at(fh, (MPI_Offset)(obs.row[k] * 24), r3, 3, MPI_DOUBLE, MPI_STATUS_IGNORE);
        }
        MPI_File_close(&fh);
    }
    /* 7. --report FILE: the report (the same on every rank) as the last rank has it. */
    if (report && rank == size - 1) {
        size_t need = 0;
        char *json = NULL;
        FILE *fp;
        if (lda_mpi_report_json(ctx, NULL, 0, &need) == LDA_ERR_BUFFER_TOO_SMALL && (json = malloc(need)) &&
            lda_mpi_report_json(ctx, json, need, NULL) == LDA_OK && (fp = fopen(report, "w"))) {
            fputs(json, fp);
            fclose(fp);
        } else {
            fprintf(stderr, "rank %d: cannot write the report to %s\n", rank, report);
        }
        free(json);
    }
    rc = 0;

finish:
    lda_mpi_close(ctx); /* collective */
    for (v = 0; v < nvar; v++) {
        free(f[v].data);
        free(f[v].copy);
    }
    free(f);
    free_obs(&obs);
    free_obs(&wh);
    free(qc);
    free(hxb);
    free(hxa);
    MPI_Finalize();
    return rc;
}
