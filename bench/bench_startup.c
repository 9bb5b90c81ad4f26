/* bench/bench_startup.c: cold versus warm start of a gpuseg context: creating the context and
 * building every embedded OpenCL program, in fresh processes, with
 *   cold: gpuseg's program cache off and PoCL's own kernel cache off (POCL_KERNEL_CACHE=0), i.e.
 *         what a first run on a new machine pays;
 *   driver-cached: gpuseg's cache off, the driver's own cache on (PoCL keeps one; many GPU
 *         drivers do too);
 *   warm: gpuseg's program cache on and filled (the normal case after the first run).
 * Each mode: 1 warm-up run, then REPEATS runs; prints min/median/max in JSON.
 * Usage: bench_startup [REPEATS] (default 5). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Child: one start; prints seconds and the program stats. */
static int child(int use_cache) {
    double t0 = now();
    gpuseg_ctx_params p;
    gpuseg_ctx_params_default(&p);
    p.program_cache = use_cache;
    gpuseg_ctx *ctx = NULL;
    if (gpuseg_ctx_create(&p, &ctx) != GPUSEG_OK) {
        fprintf(stderr, "bench_startup: %s\n", gpuseg_last_error());
        return 1;
    }
    unsigned n = 0;
    if (gpuseg_ctx_build_all(ctx, &n) != GPUSEG_OK) {
        fprintf(stderr, "bench_startup: %s\n", gpuseg_ctx_last_error(ctx));
        return 1;
    }
    double t = now() - t0;
    gpuseg_program_stats ps;
    gpuseg_ctx_program_stats(ctx, &ps);
    printf("%.6f %u %u %u %s\n", t, n, ps.compiled, ps.cache_hits, gpuseg_ctx_device(ctx)->name);
    gpuseg_ctx_free(ctx);
    return 0;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    const char *name;
    int use_cache;
    const char *pocl_cache;
} mode;

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--child") == 0)
        return child(atoi(argv[2]));
    int repeats = argc > 1 ? atoi(argv[1]) : 5;
    if (repeats < 1 || repeats > 100)
        repeats = 5;
    char cache[] = "/tmp/gpuseg-bench-cache-XXXXXX";
    if (!mkdtemp(cache))
        return 1;
    setenv("GPUSEG_CACHE_DIR", cache, 1);
    const mode modes[] = {{"cold", 0, "0"}, {"driver_cached", 0, "1"}, {"warm", 1, "1"}};
    char device[256] = "";
    unsigned programs = 0;
    printf("{\"benchmark\": \"startup\", \"repeats\": %d, \"modes\": {", repeats);
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        double t[101];
        for (int r = -1; r < repeats; r++) { /* r == -1: warm-up (fills the caches) */
            char cmd[1024];
            snprintf(cmd, sizeof cmd, "POCL_KERNEL_CACHE=%s '%s' --child %d", modes[m].pocl_cache,
                     argv[0], modes[m].use_cache);
            FILE *f = popen(cmd, "r");
            double secs = -1;
            unsigned n = 0, compiled = 0, hits = 0;
            if (!f ||
                fscanf(f, "%lf %u %u %u %255[^\n]", &secs, &n, &compiled, &hits, device) != 5) {
                fprintf(stderr, "bench_startup: child run failed\n");
                return 1;
            }
            pclose(f);
            programs = n;
            if (r >= 0) {
                t[r] = secs;
                /* correctness of the measurement itself: warm really hit the cache */
                if (modes[m].use_cache && hits != n) {
                    fprintf(stderr, "bench_startup: warm run missed the cache (%u/%u)\n", hits, n);
                    return 1;
                }
            }
        }
        qsort(t, (size_t)repeats, sizeof t[0], cmp);
        printf("%s\"%s\": {\"min_s\": %.4f, \"median_s\": %.4f, \"max_s\": %.4f}", m ? ", " : "",
               modes[m].name, t[0], t[repeats / 2], t[repeats - 1]);
    }
    printf("}, \"programs\": %u, \"device\": \"%s\"}\n", programs, device);
    char rm[256];
    snprintf(rm, sizeof rm, "rm -rf '%s'", cache);
    return system(rm) == 0 ? 0 : 1;
}
