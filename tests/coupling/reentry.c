/*
 * Re-entry, double close and quiet panics (issue 25, items 4 and 6), from C. Run by tests/coupling.rs under a
 * timeout, one mode per test: before the fix `reentry` hung (a call from a step-model callback locked the context's
 * mutex a second time), `close` aborted the process (free(): invalid pointer) and `panic` printed "thread ...
 * panicked at ..." to this program's stderr (the harness checks stderr).
 *
 * Usage: reentry BUNDLE MODE [CORRUPT_BUNDLE], BUNDLE a fixture bundle (u, t on 3 levels, ps; 8 x 16 grid):
 *   reentry  calls on the context from inside its own step-model callback are refused at once with
 *            LDA_ERR_NOT_READY (analyse, var_index, close), lda_last_error works there, and a call on the same
 *            context from another thread meanwhile waits for the running call and then succeeds;
 *   close    a second lda_close of a pointer is LDA_ERR_INVALID_ARGUMENT, not an abort, also after a new context
 *            was opened (which may reuse the memory); every other call on a closed pointer is refused too;
 *   panic    opening CORRUPT_BUNDLE (a graph that makes tract panic) is LDA_ERR_BUNDLE with the panic's message
 *            in lda_last_error(NULL), and nothing printed to stderr.
 * Prints "ok <case>" or "FAIL <case>: ..." per check; exits 0 only if every check passed ("PASSED").
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "latentda.h"
#include "tanh_fields.h"

#define N3 (NLEV * NLAT * NLON)
#define N2 (NLAT * NLON)

static double u[N3], t[N3], ps[N2];
static const int64_t SHAPE3[3] = {NLEV, NLAT, NLON};
static const int64_t SHAPE2[2] = {NLAT, NLON};
static int failures = 0;

static LdaContext *ctx = NULL;
static atomic_int in_callback, other_started, callback_left, other_status = -1, other_saw_callback_left = -1;
static int reentered = 0;
static LdaStatus st_analyse = -1, st_index = -1, st_close = -1, st_size = -1;
static char msg_analyse[1024], msg_close[1024];

/* Checks a status and its message (`msg`, read after the call: C leaves the order of argument evaluation open, so
 * callers use expect_at, which reads lda_last_error(ctx) inside, once `got` has been computed). */
static void expect(const char *name, LdaStatus got, LdaStatus want, const char *msg, const char *needle) {
    if (got != want) {
        printf("FAIL %s: status %d, expected %d (message: %s)\n", name, (int)got, (int)want, msg);
        failures++;
    } else if (needle != NULL && strstr(msg, needle) == NULL) {
        printf("FAIL %s: message '%s' does not contain '%s'\n", name, msg, needle);
        failures++;
    } else {
        printf("ok %s: %d %s\n", name, (int)got, msg);
    }
}

/* expect() with the message lda_last_error(ctx) gives after the call. */
static void expect_at(const char *name, LdaStatus got, LdaStatus want, const LdaContext *ctx, const char *needle) {
    expect(name, got, want, lda_last_error(ctx), needle);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void copy_msg(char *dst, const char *src) {
    strncpy(dst, src, 1023);
    dst[1023] = '\0';
}

/* Identity step model; the first call re-enters the context. */
static int32_t step(void *user, size_t n, const double *x, double *x_next) {
    int32_t id = -1;
    size_t ns = 0;
    int waited;
    (void)user;
    memcpy(x_next, x, n * sizeof *x);
    if (reentered) return 0;
    reentered = 1;
    st_analyse = lda_analyse(ctx, "l3dvar");
    copy_msg(msg_analyse, lda_last_error(ctx)); /* must not deadlock either */
    st_index = lda_var_index(ctx, "t", &id);
    st_close = lda_close(ctx);
    copy_msg(msg_close, lda_last_error(ctx));
    st_size = lda_state_size(ctx, &ns);
    /* Let another thread call on this context while this call runs: it must wait, not be refused. */
    atomic_store(&in_callback, 1);
    for (waited = 0; !atomic_load(&other_started) && waited < 5000; waited++) sleep_ms(1);
    sleep_ms(200);
    atomic_store(&callback_left, 1);
    return 0;
}

static int32_t step_tl(void *user, size_t n, const double *x, const double *dx, double *dx_next) {
    (void)user;
    (void)x;
    memcpy(dx_next, dx, n * sizeof *dx);
    return 0;
}

static int32_t step_ad(void *user, size_t n, const double *x, const double *dx_next, double *dx) {
    (void)user;
    (void)x;
    memcpy(dx, dx_next, n * sizeof *dx);
    return 0;
}

static void *other_thread(void *arg) {
    int32_t id = -1;
    (void)arg;
    while (!atomic_load(&in_callback)) sleep_ms(1);
    atomic_store(&other_started, 1);
    atomic_store(&other_status, (int)lda_var_index(ctx, "t", &id));
    atomic_store(&other_saw_callback_left, atomic_load(&callback_left));
    return NULL;
}

static LdaContext *open_ok(const char *bundle) {
    LdaContext *c = NULL;
    LdaStatus st = lda_open(bundle, NULL, &c);
    if (st != LDA_OK || c == NULL) {
        printf("FAIL open: %d %s\n", (int)st, lda_last_error(NULL));
        exit(1);
    }
    return c;
}

static void reentry(const char *bundle) {
    pthread_t th;
    double step_dot = -1.0, chained_dot = -1.0;
    int32_t id = -1;
    ctx = open_ok(bundle);
    fill_tanh_fields(u, t, ps);
    expect_at("bind u", lda_bind_field_f64(ctx, "u", u, 3, SHAPE3, LDA_ORDER_C), LDA_OK, ctx, NULL);
    expect_at("bind t", lda_bind_field_f64(ctx, "t", t, 3, SHAPE3, LDA_ORDER_C), LDA_OK, ctx, NULL);
    expect_at("bind ps", lda_bind_field_f64(ctx, "ps", ps, 2, SHAPE2, LDA_ORDER_C), LDA_OK, ctx, NULL);
    expect_at("set_step_model", lda_set_step_model(ctx, step, step_tl, step_ad, NULL, 6.0), LDA_OK, ctx, NULL);
    if (pthread_create(&th, NULL, other_thread, NULL) != 0) exit(2);
    expect_at("outer call (l4dvar_check) completes", lda_l4dvar_check(ctx, 2, 7, &step_dot, &chained_dot), LDA_OK,
              ctx, NULL);
    pthread_join(th, NULL);
    if (!reentered) {
        printf("FAIL the step callback never ran\n");
        failures++;
    }
    expect("analyse from inside a callback", st_analyse, LDA_ERR_NOT_READY, msg_analyse, "re-entrant call");
    expect("var_index from inside a callback", st_index, LDA_ERR_NOT_READY, msg_close, "re-entrant call");
    expect("close from inside a callback", st_close, LDA_ERR_NOT_READY, msg_close, "re-entrant call");
    expect("state_size from inside a callback", st_size, LDA_ERR_NOT_READY, msg_close, "re-entrant call");
    expect("another thread's call meanwhile waits and succeeds", (LdaStatus)atomic_load(&other_status), LDA_OK, "",
           NULL);
    if (atomic_load(&other_saw_callback_left) != 1) {
        printf("FAIL the other thread's call returned before the running call ended (it must wait)\n");
        failures++;
    } else {
        printf("ok the other thread's call returned after the running call ended\n");
    }
    expect_at("context usable after the refused close", lda_var_index(ctx, "ps", &id), LDA_OK, ctx, NULL);
    if (id != 2) {
        printf("FAIL var_index(ps) = %d, expected 2\n", (int)id);
        failures++;
    }
    expect_at("close", lda_close(ctx), LDA_OK, NULL, NULL);
}

static void double_close(const char *bundle) {
    LdaContext *a, *b;
    int32_t id = -1;
    size_t n = 0;
    a = open_ok(bundle);
    expect_at("first close", lda_close(a), LDA_OK, NULL, NULL);
    expect_at("second close", lda_close(a), LDA_ERR_INVALID_ARGUMENT, NULL, "not a live context");
    expect_at("last_error of the closed pointer", LDA_ERR_INVALID_ARGUMENT, LDA_ERR_INVALID_ARGUMENT, a,
              "not a live context");
    expect_at("var_index on the closed pointer", lda_var_index(a, "t", &id), LDA_ERR_INVALID_ARGUMENT, NULL,
              "not a live context");
    expect_at("state_size on the closed pointer", lda_state_size(a, &n), LDA_ERR_INVALID_ARGUMENT, NULL,
              "not a live context");
    if (id != -1 || n != 0) {
        printf("FAIL a call on the closed pointer wrote its output\n");
        failures++;
    }
    /* A new context may get the freed memory: the stale pointer must still not reach it. */
    b = open_ok(bundle);
    expect_at("close of the stale pointer after a new open", lda_close(a), LDA_ERR_INVALID_ARGUMENT, NULL,
              "not a live context");
    expect_at("the new context is still open", lda_var_index(b, "t", &id), LDA_OK, b, NULL);
    expect_at("close the new context", lda_close(b), LDA_OK, NULL, NULL);
    expect_at("close the new context again", lda_close(b), LDA_ERR_INVALID_ARGUMENT, NULL, "lda_close: context");
    expect_at("close NULL", lda_close(NULL), LDA_OK, NULL, NULL);
}

static void quiet_panic(const char *corrupt) {
    LdaContext *c = (LdaContext *)&failures; /* must be reset to NULL */
    expect_at("open a bundle whose graph makes tract panic", lda_open(corrupt, NULL, &c), LDA_ERR_BUNDLE, NULL,
              "internal panic");
    if (c != NULL) {
        printf("FAIL *out not reset to NULL\n");
        failures++;
    }
    fflush(stdout);
}

int main(int argc, char **argv) {
    alarm(120); /* a deadlock ends the program instead of the test run */
    if (argc < 3) {
        fprintf(stderr, "usage: %s BUNDLE reentry|close|panic [CORRUPT_BUNDLE]\n", argv[0]);
        return 2;
    }
    if (strcmp(argv[2], "reentry") == 0) {
        reentry(argv[1]);
    } else if (strcmp(argv[2], "close") == 0) {
        double_close(argv[1]);
    } else if (strcmp(argv[2], "panic") == 0 && argc == 4) {
        quiet_panic(argv[3]);
    } else {
        fprintf(stderr, "unknown mode '%s'\n", argv[2]);
        return 2;
    }
    printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
    return failures ? 1 : 0;
}
