/* Issue 26 from C: layout queries, H as a service and the noise floor of U, on the fixture bundle tests/fixtures/tanh.
 *
 *   obs_service BUNDLE BACKGROUND.bin
 *
 * BACKGROUND.bin is the background in state layout (float64). The program binds it variable by variable from the
 * layout the library reports, sets observations at awkward places (polar cap, longitude wrap, exact grid latitude
 * and level, and three that the geometric checks reject), and checks that lda_obs_h gives the analysis's own H x_b
 * bit for bit: with one used observation per variable, the report's O-B mean of that variable is value - H x_b
 * exactly. Then the adjoint identity of lda_obs_h_ad and the range of the noise floor. Prints PASS/FAIL lines and
 * PASSED at the end when all passed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentda.h"

static int failures = 0;

static void expect(int ok, const char *what) {
    printf("%s %s\n", ok ? "PASS" : "FAIL", what);
    if (!ok) failures++;
}

static void check(LdaContext *ctx, int32_t st, const char *what) {
    if (st != LDA_OK) {
        printf("FAIL %s: status %d: %s\n", what, st, lda_last_error(ctx));
        exit(1);
    }
}

#define NOBS 6

int main(int argc, char **argv) {
    LdaContext *ctx = NULL;
    int32_t kind = -1, vertical = -1, nvar = 0, i;
    size_t nlat = 0, nlon = 0, nlev = 0, nx = 0, needed = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: obs_service BUNDLE BACKGROUND.bin\n");
        return 2;
    }
    check(NULL, lda_open(argv[1], NULL, &ctx), "lda_open");
    check(ctx, lda_grid_info(ctx, &kind, &nlat, &nlon, &vertical, &nlev), "lda_grid_info");
    printf("grid kind %d, %zu x %zu, vertical %d, %zu levels\n", kind, nlat, nlon, vertical, nlev);
    expect(kind == LDA_GRID_GAUSSIAN && vertical == LDA_VERTICAL_SIGMA && nlat == 8 && nlon == 16 && nlev == 3,
           "grid info of the fixture");
    double *lat = malloc(nlat * sizeof *lat), *lon = malloc(nlon * sizeof *lon), *lev = malloc(nlev * sizeof *lev);
    check(ctx, lda_grid_coords(ctx, lat, nlat, lon, nlon, lev, nlev), "lda_grid_coords");
    expect(lat[0] > lat[nlat - 1] && lon[1] > lon[0] && lev[0] < lev[nlev - 1], "coordinates north to south, top to bottom");
    double sentinel = -7.0;
    expect(lda_grid_coords(ctx, &sentinel, 1, NULL, 0, NULL, 0) == LDA_ERR_INVALID_ARGUMENT && sentinel == -7.0,
           "wrong coordinate length refused, nothing written");
    check(ctx, lda_state_size(ctx, &nx), "lda_state_size");
    check(ctx, lda_var_count(ctx, &nvar), "lda_var_count");
    double *xb = malloc(nx * sizeof *xb);
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(xb, sizeof *xb, nx, f) != nx) {
        printf("FAIL cannot read %s\n", argv[2]);
        return 1;
    }
    fclose(f);
    size_t covered = 0;
    for (i = 0; i < nvar; i++) {
        char name[300];
        int32_t vlev = -1;
        size_t off = 0, len = 0;
        check(ctx, lda_var_name(ctx, i, name, sizeof name, &needed), "lda_var_name");
        check(ctx, lda_var_layout(ctx, i, &vlev, &off, &len), "lda_var_layout");
        printf("variable %d %s: %d levels, x[%zu .. %zu)\n", i, name, vlev, off, off + len);
        expect(off == covered && len == (size_t)(vlev > 0 ? vlev : 1) * nlat * nlon, "blocks follow each other");
        covered += len;
        int64_t shape[3] = {vlev, (int64_t)nlat, (int64_t)nlon};
        if (vlev > 0)
            check(ctx, lda_bind_field_f64(ctx, name, xb + off, 3, shape, LDA_ORDER_C), "bind");
        else
            check(ctx, lda_bind_field_f64(ctx, name, xb + off, 2, shape + 1, LDA_ORDER_C), "bind");
    }
    expect(covered == nx, "the variables' blocks fill the state");
    char small[1];
    expect(lda_var_name(ctx, 0, small, sizeof small, &needed) == LDA_ERR_BUFFER_TOO_SMALL && needed == 2,
           "lda_var_name: size query");
    expect(lda_var_layout(ctx, nvar, NULL, NULL, NULL) == LDA_ERR_INVALID_ARGUMENT, "identifier out of range refused");

    /* u: polar cap and longitude wrap; t: exact grid latitude, longitude and level; ps; then three rejected. */
    int32_t iu = -1, it = -1, ip = -1;
    check(ctx, lda_var_index(ctx, "u", &iu), "u");
    check(ctx, lda_var_index(ctx, "t", &it), "t");
    check(ctx, lda_var_index(ctx, "ps", &ip), "ps");
    int32_t var[NOBS] = {iu, it, ip, iu, -1, it};
    double olat[NOBS] = {-81.0, lat[2], 12.5, 10.0, 0.0, 5.0};
    double olon[NOBS] = {359.1, lon[5], 101.0, 10.0, 0.0, 5.0};
    double olev[NOBS] = {0.61, lev[1], NAN, 0.95, 0.5, 0.5};
    double value[NOBS] = {0, 0, 0, 0, 0, 0}, sigma[NOBS] = {1.0, 1.0, 50.0, 1.0, 1.0, 0.0};
    double hx[NOBS], hx2[NOBS];
    int32_t qc[NOBS], qc_an[NOBS];
    int32_t want[NOBS] = {LDA_QC_USED, LDA_QC_USED, LDA_QC_USED, LDA_QC_OUTSIDE_VERTICAL, LDA_QC_UNKNOWN_VARIABLE,
                          LDA_QC_INVALID};
    check(ctx, lda_set_obs(ctx, NOBS, var, olat, olon, olev, value, sigma), "lda_set_obs");
    check(ctx, lda_obs_h(ctx, NULL, 0, hx, qc, NOBS), "lda_obs_h");
    expect(memcmp(qc, want, sizeof want) == 0, "geometric QC flags");
    expect(isnan(hx[3]) && isnan(hx[4]) && isnan(hx[5]) && !isnan(hx[0]), "rejected observations get NaN");
    /* observed values near the background: H does not depend on them */
    for (i = 0; i < 3; i++) value[i] = hx[i] + 0.7 * sigma[i];
    check(ctx, lda_set_obs(ctx, NOBS, var, olat, olon, olev, value, sigma), "lda_set_obs (values)");
    check(ctx, lda_obs_h(ctx, xb, nx, hx2, NULL, NOBS), "lda_obs_h (x given)");
    expect(memcmp(hx, hx2, 3 * sizeof *hx) == 0, "same positions, same H x (bound fields or x given)");
    /* adjoint: <H x, y> = <x, H^T y>; values of rejected observations are ignored */
    double y[NOBS] = {0.3, -1.7, 2.2, NAN, NAN, NAN}, *hty = malloc(nx * sizeof *hty), lhs = 0, rhs = 0;
    check(ctx, lda_obs_h_ad(ctx, y, NOBS, hty, nx), "lda_obs_h_ad");
    for (i = 0; i < 3; i++) lhs += hx2[i] * y[i];
    for (size_t k = 0; k < nx; k++) rhs += xb[k] * hty[k];
    printf("<H x, y> = %.17g, <x, H^T y> = %.17g\n", lhs, rhs);
    expect(fabs(lhs - rhs) <= 1e-12 * fabs(lhs), "lda_obs_h_ad is the transpose of lda_obs_h");
    y[0] = NAN;
    hty[0] = -7.0;
    expect(lda_obs_h_ad(ctx, y, NOBS, hty, nx) == LDA_ERR_INVALID_DATA && hty[0] == -7.0,
           "NaN for a used observation refused, nothing written");
    expect(lda_obs_h(ctx, NULL, 0, hx, qc, NOBS - 1) == LDA_ERR_INVALID_ARGUMENT, "wrong observation count refused");

    /* the analysis overwrites the bound background (xb) */
    check(ctx, lda_analyse(ctx, "l3dvar"), "lda_analyse");
    check(ctx, lda_obs_qc(ctx, qc_an, NOBS), "lda_obs_qc");
    expect(memcmp(qc_an, want, sizeof want) == 0, "the analysis flags the same observations");
    const char *names[3] = {"u", "t", "ps"};
    for (i = 0; i < 3; i++) {
        char path[64];
        double omb = NAN;
        snprintf(path, sizeof path, "variables.%s.omb_mean", names[i]);
        check(ctx, lda_report_number(ctx, path, &omb), path);
        printf("%s: value - H x_b = %.17g, report O-B = %.17g\n", names[i], value[i] - hx2[i], omb);
        expect(omb == value[i] - hx2[i], "H x_b of the service equals the analysis's bit for bit");
    }

    double un = -1, utn = -1, adj = -1;
    check(ctx, lda_bsqrt_noise(ctx, 1, 3, &un, &utn, &adj), "lda_bsqrt_noise");
    printf("noise floor: U %.2e, U^T %.2e, adjoint %.2e\n", un, utn, adj);
    expect(un > 0 && un < 1e-4 && utn > 0 && utn < 1e-4 && adj < 1e-4, "float32 noise floor in range");

    free(lat);
    free(lon);
    free(lev);
    free(xb);
    free(hty);
    check(ctx, lda_close(ctx), "lda_close");
    printf(failures ? "FAILED\n" : "PASSED\n");
    return failures ? 1 : 0;
}
