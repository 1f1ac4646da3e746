/*
 * lda_last_error from another thread (run by tests/coupling.rs, natively and under valgrind): one thread makes
 * failing calls on a context (messages of changing length, so each failure reallocates the message) while another
 * reads lda_last_error(ctx) and checks every string it gets. Before the fix the reader read freed memory.
 * Usage: threads BUNDLE ROUNDS. Exits 0 when every string read was one of the expected messages.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentda.h"


static LdaContext *ctx;
static volatile int done = 0, started = 0;

static void *reader(void *arg) {
    long bad = 0, reads = 0;
    (void)arg;
    started = 1;
    while (!done) {
        const char *m = lda_last_error(ctx);
        size_t n = strlen(m);
        /* every failure below is an unknown variable: the message names it and lists the bundle's variables */
        if (n > 0 && (strstr(m, "is not in the bundle") == NULL || m[n - 1] != ')')) bad++;
        reads++;
    }
    printf("reader: %ld reads, %ld bad\n", reads, bad);
    return (void *)bad;
}

int main(int argc, char **argv) {
    pthread_t th;
    void *bad = NULL;
    int i, rounds, failures = 0;
    char name[300];
    if (argc != 3 || lda_open(argv[1], NULL, &ctx) != LDA_OK) {
        fprintf(stderr, "usage: %s BUNDLE ROUNDS (open failed: %s)\n", argv[0], lda_last_error(NULL));
        return 2;
    }
    rounds = atoi(argv[2]);
    if (pthread_create(&th, NULL, reader, NULL) != 0) return 2;
    while (!started) {
    }
    for (i = 0; i < rounds; i++) {
        int32_t id;
        int len = 1 + (i * 37) % 250;
        memcpy(name, "no_", 3);
        memset(name + 3, 'a' + i % 26, (size_t)len);
        name[len + 3] = '\0';
        if (lda_var_index(ctx, name, &id) != LDA_ERR_INVALID_ARGUMENT) failures++;
    }
    done = 1;
    pthread_join(th, &bad);
    lda_close(ctx);
    printf("%s: %d wrong statuses, %ld bad messages\n", failures || bad ? "FAILED" : "PASSED", failures, (long)bad);
    return failures || bad ? 1 : 0;
}
