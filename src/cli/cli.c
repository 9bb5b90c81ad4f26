/* cli/cli.c: shared helpers of the subcommands (errors, number parsing, context creation). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

void cli_error(const char *fmt, ...) {
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "gpuseg: %s\n", line);
}

int cli_fail(gpuseg_status st) {
    const char *msg = gpuseg_last_error();
    cli_error("%s", msg && *msg ? msg : gpuseg_status_message(st));
    return CLI_FAIL;
}

int cli_usage(const char *usage) {
    fprintf(stderr, "usage: gpuseg %s\n", usage);
    return CLI_USAGE;
}

bool cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!s[0] || *end || errno || !isfinite(v) || v < lo || v > hi) {
        cli_error("%s: '%s' is not a number in [%g, %g]", opt, s, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_int(const char *opt, const char *s, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || errno || v < lo || v > hi) {
        cli_error("%s: '%s' is not an integer in [%ld, %ld]", opt, s, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

static void log_to_stderr(void *user, gpuseg_log_level level, const char *msg) {
    static const char *names[] = {"error", "warning", "info", "debug"};
    fprintf(stderr, "gpuseg: %s: %s\n", names[level], msg);
}

gpuseg_status cli_ctx_create(const char *device, gpuseg_ctx **out) {
    gpuseg_ctx_params p;
    gpuseg_ctx_params_default(&p);
    p.device = device;
    p.log = log_to_stderr;
    const char *lvl = getenv("GPUSEG_LOG");
    if (lvl && strcmp(lvl, "debug") == 0)
        p.log_level = GPUSEG_LOG_DEBUG;
    else if (lvl && strcmp(lvl, "info") == 0)
        p.log_level = GPUSEG_LOG_INFO;
    return gpuseg_ctx_create(&p, out);
}

int cli_masks_option(int c, const char *arg, float *cellprob_threshold, float *flow_threshold,
                     uint32_t *niter, int32_t *min_size) {
    double d;
    long l;
    switch (c) {
    case CLI_OPT_CELLPROB_THRESHOLD:
        if (!cli_parse_double("--cellprob-threshold", arg, -1e30, 1e30, &d))
            return -1;
        *cellprob_threshold = (float)d;
        return 1;
    case CLI_OPT_FLOW_THRESHOLD:
        if (!cli_parse_double("--flow-threshold", arg, -1e30, 1e30, &d))
            return -1;
        *flow_threshold = (float)d;
        return 1;
    case CLI_OPT_NITER:
        if (!cli_parse_int("--niter", arg, 0, 1000000, &l))
            return -1;
        *niter = (uint32_t)l;
        return 1;
    case CLI_OPT_MIN_SIZE:
        if (!cli_parse_int("--min-size", arg, -1, INT32_MAX, &l))
            return -1;
        *min_size = (int32_t)l;
        return 1;
    default:
        return 0;
    }
}
