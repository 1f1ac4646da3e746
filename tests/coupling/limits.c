/*
 * Observation counts too large for memory (run by tests/coupling.rs): under a 3 GiB address-space limit,
 * lda_set_obs with 2^25 observations, and with a lying count of 2^40, must return LDA_ERR_INVALID_ARGUMENT (not
 * abort on a failed allocation), and the context must keep working. Usage: limits BUNDLE.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "latentda.h"
#include "tanh_fields.h"


static double u[NLEV * NLAT * NLON], t[NLEV * NLAT * NLON], ps[NLAT * NLON];
static int failures = 0;

static void expect(const char *what, LdaStatus got, LdaStatus want, const LdaContext *ctx, const char *needle) {
    const char *m = lda_last_error(ctx);
    if (got != want || (want != LDA_OK && strstr(m, needle) == NULL)) {
        printf("FAIL %s: status %d (want %d): %s\n", what, (int)got, (int)want, m);
        failures++;
    } else {
        printf("ok %s: %s\n", what, want == LDA_OK ? "" : m);
    }
}

int main(int argc, char **argv) {
    const int64_t s3[3] = {NLEV, NLAT, NLON}, s2[2] = {NLAT, NLON};
    struct rlimit lim = {3UL << 30, 3UL << 30};
    size_t big = (size_t)1 << 25, i;
    int32_t *var;
    double *col, lat[3] = {30, -20, 10}, lon[3] = {100, 200, 50}, lev[3] = {0.5, 0.85, NAN};
    double val[3] = {7, 257, 100100}, sig[3] = {1, 0.5, 50};
    int32_t v3[3] = {0, 1, 2};
    LdaContext *ctx = NULL;
    if (argc != 2) return 2;
    if (setrlimit(RLIMIT_AS, &lim) != 0) {
        perror("setrlimit");
        return 2;
    }
    expect("open", lda_open(argv[1], NULL, &ctx), LDA_OK, NULL, "");
    if (ctx == NULL) return 1;
    for (i = 0; i < NLEV * NLAT * NLON; i++) u[i] = 5.0, t[i] = 250.0;
    for (i = 0; i < NLAT * NLON; i++) ps[i] = 100000.0;
    expect("bind u", lda_bind_field_f64(ctx, "u", u, 3, s3, LDA_ORDER_C), LDA_OK, ctx, "");
    expect("bind t", lda_bind_field_f64(ctx, "t", t, 3, s3, LDA_ORDER_C), LDA_OK, ctx, "");
    expect("bind ps", lda_bind_field_f64(ctx, "ps", ps, 2, s2, LDA_ORDER_C), LDA_OK, ctx, "");
    /* 2^25 real observations: the host's arrays fit (about 1.4 GiB, never touched), latentda's copy does not */
    var = calloc(big, sizeof *var);
    col = calloc(big, sizeof *col);
    if (var == NULL || col == NULL) {
        printf("FAIL cannot allocate the host arrays\n");
        return 1;
    }
    expect("set_obs 2^25 under 3 GiB", lda_set_obs(ctx, big, var, col, col, col, col, col), LDA_ERR_INVALID_ARGUMENT, ctx,
           "set_obs: cannot allocate");
    free(var);
    free(col);
    /* a lying count: nothing may be read before the allocation fails */
    expect("set_obs lying 2^40", lda_set_obs(ctx, (size_t)1 << 40, v3, lat, lon, lev, val, sig), LDA_ERR_INVALID_ARGUMENT,
           ctx, "set_obs: cannot allocate");
    /* the same for withheld observations, named as such */
    expect("set_withheld lying 2^40", lda_set_withheld(ctx, (size_t)1 << 40, v3, lat, lon, lev, val, sig),
           LDA_ERR_INVALID_ARGUMENT, ctx, "set_withheld: cannot allocate");
    expect("set_obs 3", lda_set_obs(ctx, 3, v3, lat, lon, lev, val, sig), LDA_OK, ctx, "");
    expect("analyse after the failures", lda_analyse(ctx, NULL), LDA_OK, ctx, "");
    expect("close", lda_close(ctx), LDA_OK, NULL, "");
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
