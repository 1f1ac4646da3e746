/*
 * latentda example: a C model driver that keeps its fields in its own arrays and lets latentda analyse them in
 * place.
 *
 * The toy model's state is u (m/s) and t (K) on nlev levels and ps (Pa) at the surface, on the bundle's grid,
 * stored C-order (lev, lat, lon) with latitudes north to south (the layout of the fixture bundles under
 * tests/fixtures/). The driver reads its background from a CF NetCDF file, binds its arrays, reads point
 * observations from a CSV file (var,lat,lon,level,value,sigma), runs one analysis, prints the QC and O-B/O-A
 * summaries, and writes the analysed fields (now in its own arrays) as raw float64: u, t, ps one after the other,
 * each in C order (lev, lat, lon).
 *
 * Build from the repository root after `cargo build --release` (one line each):
 *   shared: mkdir -p target/c && gcc -std=c11 -O2 -Iinclude examples/c/driver.c -o target/c/lda_driver -Ltarget/release -llatentda -lnetcdf -lm -Wl,-rpath,$PWD/target/release
 *   static: mkdir -p target/c && gcc -std=c11 -O2 -Iinclude examples/c/driver.c -o target/c/lda_driver target/release/liblatentda.a $(nc-config --libs) -lhdf5 -lz -lstdc++ -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc -Wl,-z,noexecstack
 * Against an installed latentda (scripts/install.sh): ../CMakeLists.txt (CMake) or ../Makefile (pkg-config).
 * Run:
 *   target/c/lda_driver tests/fixtures/tanh tests/fixtures/tanh/sample/background.nc tests/fixtures/tanh/sample/obs.csv an.bin
 *   options: --precision f32|f64 (default f64)  --order c|fortran (default c)  --method l3dvar|3dvar
 *            --options 'TOML text'  --quiet
 */
#include <math.h>
#include <netcdf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentda.h"

#define NFIELD 3

/* The model: three fields, either double or float. */
typedef struct {
    const char *name[NFIELD];
    int ndim[NFIELD]; /* 3 upper air, 2 surface */
    size_t nlev, nlat, nlon;
    int single;             /* 1: float arrays, 0: double arrays */
    void *data[NFIELD];     /* double* or float*, C order (lev, lat, lon) */
} Model;

/* Observations as parallel arrays (what lda_set_obs copies). */
typedef struct {
    size_t n, cap;
    int32_t *var;
    double *lat, *lon, *level, *value, *sigma;
} Obs;

static size_t field_len(const Model *m, int f) {
    return (m->ndim[f] == 3 ? m->nlev : 1) * m->nlat * m->nlon;
}

/* Prints a failed latentda call with its status and message. */
static int lda_fail(const LdaContext *ctx, LdaStatus st, const char *what) {
    fprintf(stderr, "latentda error %d in %s: %s\n", (int)st, what, lda_last_error(ctx));
    return 1;
}

static int read_background(Model *m, const char *path) {
    int nc, id, f, st;
    size_t *dims[3];
    const char *dn[3] = {"lev", "lat", "lon"};
    dims[0] = &m->nlev;
    dims[1] = &m->nlat;
    dims[2] = &m->nlon;
    if ((st = nc_open(path, NC_NOWRITE, &nc)) != NC_NOERR) {
        fprintf(stderr, "cannot open %s: %s\n", path, nc_strerror(st));
        return 1;
    }
    for (f = 0; f < 3; f++) {
        if ((st = nc_inq_dimid(nc, dn[f], &id)) != NC_NOERR || (st = nc_inq_dimlen(nc, id, dims[f])) != NC_NOERR) {
            fprintf(stderr, "%s: dimension %s: %s\n", path, dn[f], nc_strerror(st));
            nc_close(nc);
            return 1;
        }
    }
    for (f = 0; f < NFIELD; f++) {
        size_t n = field_len(m, f);
        m->data[f] = malloc(n * (m->single ? sizeof(float) : sizeof(double)));
        if (!m->data[f]) {
            nc_close(nc);
            return 1;
        }
        st = nc_inq_varid(nc, m->name[f], &id);
        if (st == NC_NOERR)
            st = m->single ? nc_get_var_float(nc, id, m->data[f]) : nc_get_var_double(nc, id, m->data[f]);
        if (st != NC_NOERR) {
            fprintf(stderr, "%s: variable %s: %s\n", path, m->name[f], nc_strerror(st));
            nc_close(nc);
            return 1;
        }
    }
    nc_close(nc);
    return 0;
}

static int obs_push(Obs *o) {
    if (o->n == o->cap) {
        size_t c = o->cap ? 2 * o->cap : 64;
        void *p[6];
        p[0] = realloc(o->var, c * sizeof(int32_t));
        if (p[0]) o->var = p[0];
        p[1] = realloc(o->lat, c * sizeof(double));
        if (p[1]) o->lat = p[1];
        p[2] = realloc(o->lon, c * sizeof(double));
        if (p[2]) o->lon = p[2];
        p[3] = realloc(o->level, c * sizeof(double));
        if (p[3]) o->level = p[3];
        p[4] = realloc(o->value, c * sizeof(double));
        if (p[4]) o->value = p[4];
        p[5] = realloc(o->sigma, c * sizeof(double));
        if (p[5]) o->sigma = p[5];
        if (!p[0] || !p[1] || !p[2] || !p[3] || !p[4] || !p[5]) return 1;
        o->cap = c;
    }
    o->n++;
    return 0;
}

static void obs_free(Obs *o) {
    free(o->var);
    free(o->lat);
    free(o->lon);
    free(o->level);
    free(o->value);
    free(o->sigma);
}

/* Reads var,lat,lon,level,value,sigma rows; unknown variable names get id -1 (flagged by QC, as the CLI does). */
static int read_obs(LdaContext *ctx, Obs *o, const char *path) {
    char line[1024];
    int lineno = 0;
    FILE *fp = fopen(path, "r");
    if (!fp) {
        fprintf(stderr, "cannot open %s\n", path);
        return 1;
    }
    while (fgets(line, sizeof line, fp)) {
        char *fld[6];
        char *p = line, *end;
        int k = 0;
        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (lineno == 1 || line[0] == '\0') continue; /* header, blank */
        fld[k++] = p;
        while (*p && k < 6) {
            if (*p == ',') {
                *p = '\0';
                fld[k++] = p + 1;
            }
            p++;
        }
        if (k != 6) {
            fprintf(stderr, "%s:%d: expected 6 columns\n", path, lineno);
            fclose(fp);
            return 1;
        }
        if (obs_push(o)) {
            fclose(fp);
            return 1;
        }
        {
            size_t i = o->n - 1;
            int32_t id = -1;
            if (lda_var_index(ctx, fld[0], &id) != LDA_OK) id = -1;
            o->var[i] = id;
            o->lat[i] = strtod(fld[1], &end);
            o->lon[i] = strtod(fld[2], &end);
            o->level[i] = fld[3][0] ? strtod(fld[3], &end) : NAN;
            o->value[i] = strtod(fld[4], &end);
            o->sigma[i] = strtod(fld[5], &end);
        }
    }
    fclose(fp);
    return 0;
}

static int write_fields(const Model *m, const char *path) {
    int f;
    size_t i;
    FILE *fp = fopen(path, "wb");
    if (!fp) return 1;
    for (f = 0; f < NFIELD; f++) {
        size_t n = field_len(m, f);
        for (i = 0; i < n; i++) {
            double v = m->single ? (double)((float *)m->data[f])[i] : ((double *)m->data[f])[i];
            if (fwrite(&v, sizeof v, 1, fp) != 1) {
                fclose(fp);
                return 1;
            }
        }
    }
    return fclose(fp) != 0;
}

int main(int argc, char **argv) {
    Model m = {{"u", "t", "ps"}, {3, 3, 2}, 0, 0, 0, 0, {NULL, NULL, NULL}};
    Obs o = {0, 0, NULL, NULL, NULL, NULL, NULL, NULL};
    LdaContext *ctx = NULL;
    LdaStatus st;
    const char *method = NULL, *options = NULL;
    int order = LDA_ORDER_C, quiet = 0, rc = 1, f, a;
    int32_t *qc = NULL;
    const char *qc_names[6] = {"used", "invalid", "outside_domain", "outside_vertical", "unknown_variable",
                               "background_check"};

    if (argc < 5) {
        fprintf(stderr, "usage: %s BUNDLE BACKGROUND.nc OBS.csv OUT.bin [--precision f32|f64] [--order c|fortran]"
                        " [--method M] [--options TOML] [--quiet]\n", argv[0]);
        return 2;
    }
    for (a = 5; a < argc; a++) {
        if (!strcmp(argv[a], "--precision") && a + 1 < argc) {
            m.single = !strcmp(argv[++a], "f32");
        } else if (!strcmp(argv[a], "--order") && a + 1 < argc) {
            order = !strcmp(argv[++a], "fortran") ? LDA_ORDER_FORTRAN : LDA_ORDER_C;
        } else if (!strcmp(argv[a], "--method") && a + 1 < argc) {
            method = argv[++a];
        } else if (!strcmp(argv[a], "--options") && a + 1 < argc) {
            options = argv[++a];
        } else if (!strcmp(argv[a], "--quiet")) {
            quiet = 1;
        } else {
            fprintf(stderr, "unknown argument %s\n", argv[a]);
            return 2;
        }
    }

    /* 1. The model's own state. */
    if (read_background(&m, argv[2])) goto cleanup;

    /* 2. Open the bundle once per run. */
    if ((st = lda_open(argv[1], options, &ctx)) != LDA_OK) {
        lda_fail(NULL, st, "lda_open");
        goto cleanup;
    }

    /* 3. Bind every field in place (once; the arrays stay valid until lda_close). */
    for (f = 0; f < NFIELD; f++) {
        int64_t shape[3];
        int nd = m.ndim[f];
        if (nd == 3) {
            shape[0] = (int64_t)m.nlev;
            shape[1] = (int64_t)m.nlat;
            shape[2] = (int64_t)m.nlon;
        } else {
            shape[0] = (int64_t)m.nlat;
            shape[1] = (int64_t)m.nlon;
        }
        if (order == LDA_ORDER_FORTRAN) { /* same memory, shape written (lon, lat[, lev]) */
            int64_t t = shape[0];
            shape[0] = shape[nd - 1];
            shape[nd - 1] = t;
        }
        st = m.single ? lda_bind_field_f32(ctx, m.name[f], (float *)m.data[f], nd, shape, order)
                      : lda_bind_field_f64(ctx, m.name[f], (double *)m.data[f], nd, shape, order);
        if (st != LDA_OK) {
            lda_fail(ctx, st, "lda_bind_field");
            goto cleanup;
        }
    }

    /* 4. Observations of this cycle (copied by latentda). */
    if (read_obs(ctx, &o, argv[3])) goto cleanup;
    if ((st = lda_set_obs(ctx, o.n, o.var, o.lat, o.lon, o.level, o.value, o.sigma)) != LDA_OK) {
        lda_fail(ctx, st, "lda_set_obs");
        goto cleanup;
    }

    /* 5. Analyse: on success the model's arrays now hold the analysis. */
    if ((st = lda_analyse(ctx, method)) != LDA_OK) {
        lda_fail(ctx, st, "lda_analyse");
        goto cleanup;
    }

    /* 6. Diagnostics: QC flags and O-B / O-A per variable from the report. */
    qc = malloc(o.n * sizeof *qc);
    if (!qc) goto cleanup;
    if ((st = lda_obs_qc(ctx, qc, o.n)) != LDA_OK) {
        lda_fail(ctx, st, "lda_obs_qc");
        goto cleanup;
    }
    if (!quiet) {
        size_t count[6] = {0, 0, 0, 0, 0, 0}, i;
        double j0 = 0, j1 = 0;
        for (i = 0; i < o.n; i++)
            if (qc[i] >= 0 && qc[i] < 6) count[qc[i]]++;
        printf("observations: %zu\n", o.n);
        for (i = 0; i < 6; i++)
            if (count[i]) printf("  qc %-17s %zu\n", qc_names[i], count[i]);
        lda_report_number(ctx, "solver.j_initial", &j0);
        lda_report_number(ctx, "solver.j_final", &j1);
        printf("J: %.6g -> %.6g\n", j0, j1);
        printf("%-4s %6s %12s %12s %12s %12s\n", "var", "n_used", "O-B mean", "O-B rms", "O-A mean", "O-A rms");
        for (f = 0; f < NFIELD; f++) {
            const char *keys[5] = {"n_used", "omb_mean", "omb_rms", "oma_mean", "oma_rms"};
            double v[5] = {0, 0, 0, 0, 0};
            char path[64];
            int k;
            for (k = 0; k < 5; k++) {
                snprintf(path, sizeof path, "variables.%s.%s", m.name[f], keys[k]);
                if ((st = lda_report_number(ctx, path, &v[k])) != LDA_OK) {
                    lda_fail(ctx, st, "lda_report_number");
                    goto cleanup;
                }
            }
            printf("%-4s %6.0f %12.4e %12.4e %12.4e %12.4e\n", m.name[f], v[0], v[1], v[2], v[3], v[4]);
        }
    }

    /* 7. The model goes on with its (analysed) arrays; here: write them. */
    if (write_fields(&m, argv[4])) {
        fprintf(stderr, "cannot write %s\n", argv[4]);
        goto cleanup;
    }
    rc = 0;

cleanup:
    lda_close(ctx); /* releases everything latentda owns; NULL is fine */
    free(qc);
    obs_free(&o);
    for (f = 0; f < NFIELD; f++) free(m.data[f]);
    return rc;
}
