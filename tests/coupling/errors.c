/*
 * Error paths of the latentda C ABI, exercised from C (run by tests/coupling.rs).
 *
 * Every failing call must return its documented status, leave a message containing the expected text, and leave
 * the host arrays bit-identical. Usage: errors BUNDLE (a fixture bundle: u, t on 3 levels, ps; 8 x 16 grid).
 * Prints "ok <case>" or "FAIL <case>: ..." per check; exits 0 only if every check passed.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentda.h"

#define NLEV 3
#define NLAT 8
#define NLON 16
#define N3 (NLEV * NLAT * NLON)
#define N2 (NLAT * NLON)
#define NOBS 3

static double u[N3], t[N3], ps[N2];
static double u0[N3], t0[N3], ps0[N2];
static int failures = 0;

static const int64_t SHAPE3[3] = {NLEV, NLAT, NLON};
static const int64_t SHAPE2[2] = {NLAT, NLON};

static int32_t ovar[NOBS] = {0, 1, 2};
static double olat[NOBS] = {30.0, -20.0, 10.0};
static double olon[NOBS] = {100.0, 200.0, 50.0};
static double olev[NOBS] = {0.5, 0.85, NAN};
static double oval[NOBS] = {7.0, 257.0, 100100.0};
static double osig[NOBS] = {1.0, 0.5, 50.0};

/* Checks status and message of the last call. */
static void expect(const char *name, LdaStatus got, LdaStatus want, const LdaContext *ctx, const char *needle) {
    const char *msg = lda_last_error(ctx);
    if (got != want) {
        printf("FAIL %s: status %d, expected %d (message: %s)\n", name, (int)got, (int)want, msg ? msg : "(null)");
        failures++;
    } else if (want != LDA_OK && (msg == NULL || strstr(msg, needle) == NULL)) {
        printf("FAIL %s: message '%s' does not contain '%s'\n", name, msg ? msg : "(null)", needle);
        failures++;
    } else {
        printf("ok %s: %d %s\n", name, (int)got, want != LDA_OK ? msg : "");
    }
}

static void snapshot(void) {
    memcpy(u0, u, sizeof u);
    memcpy(t0, t, sizeof t);
    memcpy(ps0, ps, sizeof ps);
}

/* Host arrays bit-identical to the snapshot (memcmp also compares NaN bit patterns). */
static void expect_unchanged(const char *name) {
    if (memcmp(u, u0, sizeof u) || memcmp(t, t0, sizeof t) || memcmp(ps, ps0, sizeof ps)) {
        printf("FAIL %s: host arrays changed by a failing call\n", name);
        failures++;
    } else {
        printf("ok %s: host arrays bit-identical\n", name);
    }
}

static void fill(void) {
    int k, j, i;
    for (k = 0; k < NLEV; k++)
        for (j = 0; j < NLAT; j++)
            for (i = 0; i < NLON; i++) {
                u[(k * NLAT + j) * NLON + i] = 5.0 + 3.0 * sin(0.4 * i) * cos(0.3 * j) - k;
                t[(k * NLAT + j) * NLON + i] = 245.0 + 5.0 * k + 2.0 * cos(0.4 * i + 0.2 * j);
            }
    for (j = 0; j < NLAT; j++)
        for (i = 0; i < NLON; i++) ps[j * NLON + i] = 100000.0 + 300.0 * sin(0.4 * i - 0.5 * j);
}

static LdaContext *open_ok(const char *bundle) {
    LdaContext *ctx = NULL;
    LdaStatus st = lda_open(bundle, NULL, &ctx);
    if (st != LDA_OK || ctx == NULL) {
        printf("FAIL open: %d %s\n", (int)st, lda_last_error(NULL));
        exit(1);
    }
    return ctx;
}

int main(int argc, char **argv) {
    const char *bundle;
    LdaContext *ctx = NULL, *other = NULL;
    int32_t flags[NOBS] = {-7, -7, -7}, idx = -7;
    double value = -1.0;
    size_t needed = 0, n = 0;
    char small[8];
    int64_t bad3[3] = {NLEV, NLAT, NLON + 1};
    int64_t shape_f[3] = {NLON, NLAT, NLEV};

    if (argc != 2) {
        fprintf(stderr, "usage: %s BUNDLE\n", argv[0]);
        return 2;
    }
    bundle = argv[1];
    fill();
    snapshot();

    /* --- bad bundle path, bad options, NULL arguments of lda_open */
    other = (LdaContext *)&idx; /* must be reset to NULL on failure */
    expect("open bad bundle path", lda_open("/nonexistent/latentda-bundle", NULL, &other), LDA_ERR_BUNDLE, NULL,
           "does not exist");
    if (other != NULL) {
        printf("FAIL open bad bundle path: *out not set to NULL\n");
        failures++;
    }
    expect("open bad options", lda_open(bundle, "threads = 0", &other), LDA_ERR_INVALID_ARGUMENT, NULL, "threads");
    expect("open unknown option", lda_open(bundle, "colour = 1", &other), LDA_ERR_INVALID_ARGUMENT, NULL, "colour");
    expect("open NULL bundle_dir", lda_open(NULL, NULL, &other), LDA_ERR_NULL_POINTER, NULL, "bundle_dir");
    expect("open NULL out", lda_open(bundle, NULL, NULL), LDA_ERR_NULL_POINTER, NULL, "out");

    /* --- NULL context */
    expect("analyse NULL ctx", lda_analyse(NULL, NULL), LDA_ERR_NULL_POINTER, NULL, "context is NULL");
    expect("bind NULL ctx", lda_bind_field_f64(NULL, "u", u, 3, SHAPE3, LDA_ORDER_C), LDA_ERR_NULL_POINTER, NULL,
           "context is NULL");
    expect("close NULL ctx", lda_close(NULL), LDA_OK, NULL, "");
    if (lda_last_error(NULL) == NULL) {
        printf("FAIL last_error(NULL) returned NULL\n");
        failures++;
    }

    ctx = open_ok(bundle);
    if (strlen(lda_last_error(ctx)) != 0) {
        printf("FAIL fresh context has a message: %s\n", lda_last_error(ctx));
        failures++;
    }

    /* --- NULL pointer arguments */
    expect("bind NULL name", lda_bind_field_f64(ctx, NULL, u, 3, SHAPE3, LDA_ORDER_C), LDA_ERR_NULL_POINTER, ctx,
           "'name'");
    expect("bind NULL data", lda_bind_field_f64(ctx, "u", NULL, 3, SHAPE3, LDA_ORDER_C), LDA_ERR_NULL_POINTER, ctx,
           "data is NULL");
    expect("bind f32 NULL data", lda_bind_field_f32(ctx, "ps", NULL, 2, SHAPE2, LDA_ORDER_C), LDA_ERR_NULL_POINTER,
           ctx, "data is NULL");
    expect("bind NULL shape", lda_bind_field_f64(ctx, "u", u, 3, NULL, LDA_ORDER_C), LDA_ERR_NULL_POINTER, ctx,
           "'shape'");
    expect("var_index NULL out", lda_var_index(ctx, "t", NULL), LDA_ERR_NULL_POINTER, ctx, "'index_out'");
    expect("var_index NULL name", lda_var_index(ctx, NULL, &idx), LDA_ERR_NULL_POINTER, ctx, "'name'");
    expect("set_obs NULL lat", lda_set_obs(ctx, NOBS, ovar, NULL, olon, olev, oval, osig), LDA_ERR_NULL_POINTER,
           ctx, "'lat'");
    expect("set_obs NULL var", lda_set_obs(ctx, NOBS, NULL, olat, olon, olev, oval, osig), LDA_ERR_NULL_POINTER,
           ctx, "'var'");
    expect("set_obs NULL sigma", lda_set_obs(ctx, NOBS, ovar, olat, olon, olev, oval, NULL), LDA_ERR_NULL_POINTER,
           ctx, "'sigma'");
    expect("obs_qc NULL flags", lda_obs_qc(ctx, NULL, NOBS), LDA_ERR_NULL_POINTER, ctx, "'flags_out'");
    expect("report_number NULL path", lda_report_number(ctx, NULL, &value), LDA_ERR_NULL_POINTER, ctx, "'path'");
    expect("control_size NULL out", lda_control_size(ctx, NULL), LDA_ERR_NULL_POINTER, ctx, "'n_out'");
    expect("bsqrt NULL v", lda_bsqrt(ctx, NULL, 4, NULL, 0), LDA_ERR_NULL_POINTER, ctx, "'v'");
    expect("bsqrt_ad NULL v_out", lda_bsqrt_ad(ctx, NULL, 0, NULL, 4), LDA_ERR_NULL_POINTER, ctx, "'v_out'");
    expect_unchanged("after NULL pointer calls");

    /* --- wrong shape / ndim / order / name at bind */
    expect("bind wrong shape", lda_bind_field_f64(ctx, "u", u, 3, bad3, LDA_ORDER_C), LDA_ERR_INVALID_ARGUMENT, ctx,
           "does not match the bundle grid");
    expect("bind C shape as Fortran", lda_bind_field_f64(ctx, "u", u, 3, SHAPE3, LDA_ORDER_FORTRAN),
           LDA_ERR_INVALID_ARGUMENT, ctx, "does not match the bundle grid");
    expect("bind wrong ndim", lda_bind_field_f64(ctx, "u", u, 2, SHAPE2, LDA_ORDER_C), LDA_ERR_INVALID_ARGUMENT, ctx,
           "needs ndim = 3");
    expect("bind ndim 4", lda_bind_field_f64(ctx, "u", u, 4, SHAPE3, LDA_ORDER_C), LDA_ERR_INVALID_ARGUMENT, ctx,
           "ndim = 4");
    expect("bind bad order", lda_bind_field_f64(ctx, "u", u, 3, SHAPE3, 7), LDA_ERR_INVALID_ARGUMENT, ctx,
           "order = 7");
    expect("bind unknown variable", lda_bind_field_f64(ctx, "w", u, 3, SHAPE3, LDA_ORDER_C),
           LDA_ERR_INVALID_ARGUMENT, ctx, "'w' is not in the bundle");
    expect("var_index unknown", lda_var_index(ctx, "w", &idx), LDA_ERR_INVALID_ARGUMENT, ctx,
           "variables: u, t, ps");
    expect_unchanged("after bind errors");

    /* --- not ready: obs_qc/report before analysis, analyse without observations, with a field not bound */
    expect("obs_qc before analysis", lda_obs_qc(ctx, flags, NOBS), LDA_ERR_NOT_READY, ctx, "no analysis");
    expect("report before analysis", lda_report_json(ctx, NULL, 0, &needed), LDA_ERR_NOT_READY, ctx, "no analysis");
    expect("bind u", lda_bind_field_f64(ctx, "u", u, 3, SHAPE3, LDA_ORDER_C), LDA_OK, ctx, "");
    expect("bind t (Fortran order)", lda_bind_field_f64(ctx, "t", t, 3, shape_f, LDA_ORDER_FORTRAN), LDA_OK, ctx, "");
    expect("analyse without observations", lda_analyse(ctx, NULL), LDA_ERR_NOT_READY, ctx, "no observations");
    expect("set_obs n = 0", lda_set_obs(ctx, 0, ovar, olat, olon, olev, oval, osig), LDA_ERR_INVALID_ARGUMENT, ctx,
           "n = 0");
    expect("set_obs n = 0, NULL arrays", lda_set_obs(ctx, 0, NULL, NULL, NULL, NULL, NULL, NULL),
           LDA_ERR_INVALID_ARGUMENT, ctx, "n = 0");
    expect("analyse after zero-length set_obs", lda_analyse(ctx, NULL), LDA_ERR_NOT_READY, ctx, "no observations");
    expect("set_obs", lda_set_obs(ctx, NOBS, ovar, olat, olon, olev, oval, osig), LDA_OK, ctx, "");
    expect("analyse with ps not bound", lda_analyse(ctx, NULL), LDA_ERR_NOT_READY, ctx, "field 'ps' is not bound");
    expect("b_linearise with ps not bound", lda_b_linearise(ctx), LDA_ERR_NOT_READY, ctx, "'ps' is not bound");
    expect_unchanged("after not-ready errors");

    /* --- NaN in a bound field */
    expect("bind ps", lda_bind_field_f64(ctx, "ps", ps, 2, SHAPE2, LDA_ORDER_C), LDA_OK, ctx, "");
    t[NLAT * NLON + 5] = NAN; /* level 1, lat 0, lon 5 */
    snapshot();
    expect("analyse NaN in t", lda_analyse(ctx, NULL), LDA_ERR_INVALID_DATA, ctx,
           "non-finite value NaN in variable 't' at (lev index 1, lat index 0, lon index 5)");
    expect_unchanged("after NaN in a field");
    t[NLAT * NLON + 5] = 250.0;
    ps[7] = INFINITY;
    snapshot();
    expect("analyse Inf in ps", lda_analyse(ctx, NULL), LDA_ERR_INVALID_DATA, ctx, "variable 'ps'");
    expect_unchanged("after Inf in a field");
    ps[7] = 100000.0;

    /* --- bad method */
    snapshot();
    expect("analyse unknown method", lda_analyse(ctx, "4dvar"), LDA_ERR_INVALID_ARGUMENT, ctx, "method '4dvar'");
    expect_unchanged("after unknown method");

    /* --- success, then errors on the results */
    snapshot();
    expect("analyse", lda_analyse(ctx, NULL), LDA_OK, ctx, "");
    if (memcmp(u, u0, sizeof u) == 0 || memcmp(t, t0, sizeof t) == 0 || memcmp(ps, ps0, sizeof ps) == 0) {
        printf("FAIL analyse: a bound array was not updated\n");
        failures++;
    } else {
        printf("ok analyse: bound arrays updated in place\n");
    }
    expect("obs_qc wrong n", lda_obs_qc(ctx, flags, NOBS - 1), LDA_ERR_INVALID_ARGUMENT, ctx, "n = 2");
    if (flags[0] != -7) {
        printf("FAIL obs_qc wrong n wrote flags\n");
        failures++;
    }
    expect("obs_qc", lda_obs_qc(ctx, flags, NOBS), LDA_OK, ctx, "");
    if (flags[0] != LDA_QC_USED || flags[1] != LDA_QC_USED || flags[2] != LDA_QC_USED) {
        printf("FAIL obs_qc flags %d %d %d\n", flags[0], flags[1], flags[2]);
        failures++;
    }
    expect("report size query", lda_report_json(ctx, NULL, 0, &needed), LDA_ERR_BUFFER_TOO_SMALL, ctx, "report needs");
    expect("report small buffer", lda_report_json(ctx, small, sizeof small, &n), LDA_ERR_BUFFER_TOO_SMALL, ctx,
           "buffer has 8");
    if (needed < 100 || n != needed) {
        printf("FAIL report needed = %zu / %zu\n", needed, n);
        failures++;
    }
    expect("report_number missing", lda_report_number(ctx, "variables.zz.omb_rms", &value), LDA_ERR_INVALID_ARGUMENT,
           ctx, "no entry 'zz'");
    expect("report_number not a number", lda_report_number(ctx, "method", &value), LDA_ERR_INVALID_ARGUMENT, ctx,
           "not a number");
    expect("report_number", lda_report_number(ctx, "n_used", &value), LDA_OK, ctx, "");
    if (value != 3.0) {
        printf("FAIL report_number n_used = %g\n", value);
        failures++;
    }

    /* --- a failing analysis after a successful one still leaves the (analysed) arrays alone */
    u[0] = NAN;
    snapshot();
    expect("analyse NaN after success", lda_analyse(ctx, NULL), LDA_ERR_INVALID_DATA, ctx, "variable 'u'");
    expect_unchanged("after NaN following a success");
    expect("obs_qc after failed analysis", lda_obs_qc(ctx, flags, NOBS), LDA_ERR_NOT_READY, ctx, "no analysis");

    /* --- B operator length checks */
    expect("control_size", lda_control_size(ctx, &n), LDA_OK, ctx, "");
    {
        double v[1] = {0.0}, x[1] = {0.0};
        u[0] = 5.0;
        expect("bsqrt wrong nv", lda_bsqrt(ctx, v, 1, x, 1), LDA_ERR_INVALID_ARGUMENT, ctx, "control vector v");
    }

    expect("close", lda_close(ctx), LDA_OK, NULL, "");

    /* --- the hybrid B operator and analysis: sizes, variance, draws, method "hybrid" */
    expect("variance NULL ctx", lda_bvariance(NULL, NULL, 0), LDA_ERR_NULL_POINTER, NULL, "context is NULL");
    {
        static double var[2 * N3 + N2], x1[2 * N3 + N2], x2[2 * N3 + N2];
        const size_t nx = 2 * N3 + N2;
        size_t nc = 0;
        LdaContext *h = NULL;
        fill();
        expect("open hybrid", lda_open(bundle, "b_operator = \"hybrid\"\nhybrid_variables = [\"t\", \"ps\"]", &h),
               LDA_OK, NULL, "");
        expect("hybrid bind u", lda_bind_field_f64(h, "u", u, 3, SHAPE3, LDA_ORDER_C), LDA_OK, h, "");
        expect("hybrid bind t", lda_bind_field_f64(h, "t", t, 3, SHAPE3, LDA_ORDER_C), LDA_OK, h, "");
        expect("hybrid bind ps", lda_bind_field_f64(h, "ps", ps, 2, SHAPE2, LDA_ORDER_C), LDA_OK, h, "");
        expect("hybrid control_size", lda_control_size(h, &nc), LDA_OK, h, "");
        if (nc != 32 + N3 + N2) { /* latent 32 + static control of t (3 levels) and ps */
            printf("FAIL hybrid control size %zu, expected %d\n", nc, 32 + N3 + N2);
            failures++;
        }
        snapshot();
        expect("variance wrong nx", lda_bvariance(h, var, nx - 1), LDA_ERR_INVALID_ARGUMENT, h, "output has");
        expect_unchanged("variance wrong nx");
        expect("variance", lda_bvariance(h, var, nx), LDA_OK, h, "");
        expect("randomize", lda_brandomize(h, 7, x1, nx), LDA_OK, h, "");
        expect("randomize again", lda_brandomize(h, 7, x2, nx), LDA_OK, h, "");
        if (memcmp(x1, x2, sizeof x1) != 0) {
            printf("FAIL randomize: the same seed gave different draws\n");
            failures++;
        }
        for (size_t i = 0; i < nx; i++) {
            if (!(var[i] > 0.0)) { /* the latent part reaches every variable */
                printf("FAIL variance[%zu] = %g\n", i, var[i]);
                failures++;
                break;
            }
        }
        expect("hybrid set_obs", lda_set_obs(h, NOBS, ovar, olat, olon, olev, oval, osig), LDA_OK, h, "");
        expect("analyse hybrid", lda_analyse(h, "hybrid"), LDA_OK, h, "");
        expect("report method", lda_report_number(h, "jb_parts.static", &value), LDA_OK, h, "");
        expect("close hybrid", lda_close(h), LDA_OK, NULL, "");
    }
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
