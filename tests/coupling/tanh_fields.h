/* Host fields for the fixture bundle tests/fixtures/tanh (u, t on 3 levels, ps; 8 x 16 grid), shared by the C
 * test programs: smooth, plausible values in C order (lev, lat, lon). */
#ifndef TANH_FIELDS_H
#define TANH_FIELDS_H

#include <math.h>

#define NLEV 3
#define NLAT 8
#define NLON 16

static inline void fill_tanh_fields(double *u, double *t, double *ps) {
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

#endif
