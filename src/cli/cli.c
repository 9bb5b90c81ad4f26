/* cli/cli.c: shared helpers of the subcommands (errors, number parsing, context creation). */
#include <errno.h>
#include <getopt.h>
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

/* What cli_getopt_long last refused ("" if nothing), for cli_usage's one line. */
static char cli_opt_error[256];

int cli_usage(const char *usage) {
    fprintf(stderr, "gpuseg: %susage: gpuseg %s\n", cli_opt_error, usage);
    return CLI_USAGE;
}

#undef getopt_long /* the real one, from here on */
int cli_getopt_long(int argc, char *const *argv, const char *shortopts,
                    const struct option *longopts, int *longind) {
    opterr = 0; /* getopt_long's own report would be a second line on stderr */
    int c = getopt_long(argc, argv, shortopts, longopts, longind);
    if (c != '?' && c != ':')
        return c;
    /* optind has moved past the refused argument (glibc), and optopt is the option's
     * character, the long option's val, or 0 for an unknown long option. */
    const char *cmd = argv[0], *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "?";
    if (arg[0] == '-' && arg[1] == '-') {
        size_t n = strcspn(arg + 2, "=");
        const struct option *o = longopts;
        while (optopt && o && o->name && !(o->val == optopt && strncmp(o->name, arg + 2, n) == 0))
            o++;
        bool known = optopt && o && o->name;
        snprintf(cli_opt_error, sizeof cli_opt_error, "%s: option '%.*s' %s; ", cmd, (int)(n + 2),
                 arg,
                 !known                      ? "is unknown"
                 : o->has_arg == no_argument ? "takes no value"
                                             : "needs a value");
    } else if (optopt > ' ' && optopt < 127) {
        snprintf(cli_opt_error, sizeof cli_opt_error, "%s: option '-%c' %s; ", cmd, optopt,
                 strchr(shortopts, optopt) ? "needs a value" : "is unknown");
    } else {
        snprintf(cli_opt_error, sizeof cli_opt_error, "%s: bad option '%.100s'; ", cmd, arg);
    }
    return c;
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

bool cli_notices = false;

static void log_to_stderr(void *user, gpuseg_log_level level, const char *msg) {
    static const char *names[] = {"error", "warning", "info", "debug"};
    /* on a terminal with a progress line, start from a clean line */
    fprintf(stderr, "%sgpuseg: %s: %s\n", cli_notices ? "\r\033[K" : "", names[level], msg);
}

gpuseg_status cli_ctx_create(const char *device, gpuseg_ctx **out) {
    gpuseg_ctx_params p;
    gpuseg_ctx_params_default(&p);
    p.device = device;
    p.log = log_to_stderr;
    const char *lvl = getenv("GPUSEG_LOG");
    if (lvl && strcmp(lvl, "debug") == 0)
        p.log_level = GPUSEG_LOG_DEBUG;
    else if ((lvl && strcmp(lvl, "info") == 0) || (!lvl && cli_notices))
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

int cli_other_option(int r, int c, const char *arg, const char *usage) {
    if (r == 0)
        r = cli_limits_option(c, arg);
    if (r < 0)
        return CLI_USAGE;
    return r > 0 ? CLI_OK : cli_usage(usage);
}

int cli_limits_option(int c, const char *arg) {
    const char *opt, *env;
    uint64_t most;
    switch (c) {
    case CLI_OPT_MAX_PIXELS:
        opt = "--max-pixels";
        env = "GPUSEG_MAX_PIXELS";
        most = GPUSEG_LIMIT_MAX_PIXELS;
        break;
    case CLI_OPT_MAX_OBJECTS:
        opt = "--max-objects";
        env = "GPUSEG_MAX_OBJECTS";
        most = GPUSEG_LIMIT_MAX_OBJECTS;
        break;
    case CLI_OPT_MAX_MODEL_BYTES:
        opt = "--max-model-bytes";
        env = "GPUSEG_MAX_MODEL_BYTES";
        most = GPUSEG_LIMIT_MAX_MODEL_BYTES;
        break;
    case CLI_OPT_ALLOW_SPECIAL_OUTPUT:
        setenv("GPUSEG_ALLOW_SPECIAL_OUTPUT", "1", 1);
        return 1;
    default:
        return 0;
    }
    uint64_t v;
    if (gpuseg_limit_parse(arg, &v) != GPUSEG_OK) {
        cli_error("%s: %s", opt, gpuseg_last_error());
        return -1;
    }
    if (v > most) {
        cli_error("%s: %s is over the most gpuseg supports (%llu)", opt, arg,
                  (unsigned long long)most);
        return -1;
    }
    /* The environment carries the value to every library call of this process and to the
     * saver processes it spawns; one parser (gpuseg_limit_parse) reads both. */
    char buf[32];
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    setenv(env, buf, 1);
    return 1;
}

bool cli_json_members(const char *s, const char **b, size_t *n) {
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
        s++;
    size_t len = strlen(s);
    while (len && strchr(" \t\n\r", s[len - 1]))
        len--;
    if (len < 2 || len > 65536 || s[0] != '{' || s[len - 1] != '}')
        return false;
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if ((c == '}' || c == ']') && (--depth < 0 || (depth == 0 && i != len - 1))) {
            return false;
        }
    }
    if (in_str || depth != 0)
        return false;
    const char *p = s + 1, *e = s + len - 1;
    while (p < e && strchr(" \t\n\r", *p))
        p++;
    while (e > p && strchr(" \t\n\r", e[-1]))
        e--;
    *b = p;
    *n = (size_t)(e - p);
    return true;
}
