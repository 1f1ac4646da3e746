/*
 * A long-running host in miniature (run by tests/coupling.rs under valgrind): N cycles of lda_open, bind, set_obs,
 * lda_analyse (L3DVar, then hybrid), QC and report, lda_bsqrt / lda_bsqrt_ad / lda_bvariance / lda_brandomize,
 * lda_close. Memory must not grow with N: valgrind must
 * report no leak of any kind and the same heap in use at exit for any N. Usage: cycles BUNDLE N (a fixture bundle:
 * u, t on 3 levels, ps; 8 x 16 grid). Exits 0 when every call succeeded.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "latentda.h"
#include "tanh_fields.h"

#define N3 (NLEV * NLAT * NLON)
#define N2 (NLAT * NLON)
#define NOBS 3

static double u[N3], t[N3], ps[N2];
static const int64_t SHAPE3[3] = {NLEV, NLAT, NLON};
static const int64_t SHAPE2[2] = {NLAT, NLON};

static int check(LdaStatus st, const LdaContext *ctx, const char *what, int cycle) {
    if (st != LDA_OK) {
        fprintf(stderr, "cycle %d: %s failed with status %d: %s\n", cycle, what, (int)st, lda_last_error(ctx));
        return 1;
    }
    return 0;
}

static void fill(void) { fill_tanh_fields(u, t, ps); }

static int cycle(const char *bundle, int c) {
    int32_t var[NOBS] = {0, 1, 2}, flags[NOBS];
    double lat[NOBS] = {30.0, -20.0, 10.0}, lon[NOBS] = {100.0, 200.0, 50.0};
    double lev[NOBS] = {0.5, 0.85, NAN}, val[NOBS] = {7.0, 257.0, 100100.0}, sig[NOBS] = {1.0, 0.5, 50.0};
    LdaContext *ctx = NULL;
    size_t nv = 0, nx = 0, needed = 0;
    double *v = NULL, *x = NULL, *w = NULL;
    char *report = NULL;
    int bad = 0;
    fill();
    if (check(lda_open(bundle, NULL, &ctx), NULL, "lda_open", c)) return 1;
    bad |= check(lda_bind_field_f64(ctx, "u", u, 3, SHAPE3, LDA_ORDER_C), ctx, "bind u", c);
    bad |= check(lda_bind_field_f64(ctx, "t", t, 3, SHAPE3, LDA_ORDER_C), ctx, "bind t", c);
    bad |= check(lda_bind_field_f64(ctx, "ps", ps, 2, SHAPE2, LDA_ORDER_C), ctx, "bind ps", c);
    bad |= check(lda_set_obs(ctx, NOBS, var, lat, lon, lev, val, sig), ctx, "lda_set_obs", c);
    bad |= check(lda_analyse(ctx, NULL), ctx, "lda_analyse", c);
    bad |= check(lda_analyse(ctx, "hybrid"), ctx, "lda_analyse hybrid", c);
    bad |= check(lda_obs_qc(ctx, flags, NOBS), ctx, "lda_obs_qc", c);
    if (lda_report_json(ctx, NULL, 0, &needed) != LDA_ERR_BUFFER_TOO_SMALL) bad = 1;
    report = malloc(needed);
    bad |= report == NULL || check(lda_report_json(ctx, report, needed, &needed), ctx, "lda_report_json", c);
    bad |= check(lda_control_size(ctx, &nv), ctx, "lda_control_size", c);
    bad |= check(lda_state_size(ctx, &nx), ctx, "lda_state_size", c);
    v = calloc(nv, sizeof *v);
    w = calloc(nv, sizeof *w);
    x = calloc(nx, sizeof *x);
    if (v == NULL || w == NULL || x == NULL) {
        bad = 1;
    } else {
        size_t i;
        for (i = 0; i < nv; i++) v[i] = sin(1.0 + (double)i);
        bad |= check(lda_b_linearise(ctx), ctx, "lda_b_linearise", c);
        bad |= check(lda_bsqrt(ctx, v, nv, x, nx), ctx, "lda_bsqrt", c);
        bad |= check(lda_bsqrt_ad(ctx, x, nx, w, nv), ctx, "lda_bsqrt_ad", c);
        bad |= check(lda_bsqrt(ctx, v, nv, NULL, 0), ctx, "lda_bsqrt into the bound arrays", c);
        bad |= check(lda_bvariance(ctx, x, nx), ctx, "lda_bvariance", c);
        bad |= check(lda_brandomize(ctx, (uint64_t)c, x, nx), ctx, "lda_brandomize", c);
    }
    free(v);
    free(w);
    free(x);
    free(report);
    bad |= check(lda_close(ctx), NULL, "lda_close", c);
    return bad;
}

int main(int argc, char **argv) {
    int n, c;
    if (argc != 3) {
        fprintf(stderr, "usage: %s BUNDLE N\n", argv[0]);
        return 2;
    }
    n = atoi(argv[2]);
    for (c = 0; c < n; c++)
        if (cycle(argv[1], c)) return 1;
    printf("%d cycles done\n", n);
    return 0;
}
