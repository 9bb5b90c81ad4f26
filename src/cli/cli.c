/* cli/cli.c: shared helpers of the subcommands (errors, number parsing, context creation). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void cli_error(const char *fmt, ...) {
    char line[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "gpuseg: %s\n", line);
}

/* The CLI's own last message (cli_set_error), printed by the next cli_fail. */
static char cli_msg[2048];

gpuseg_status cli_set_error(gpuseg_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cli_msg, sizeof cli_msg, fmt, ap);
    va_end(ap);
    return st;
}

void cli_clear_error(void) {
    cli_msg[0] = 0;
}

const char *cli_last_error(void) {
    return cli_msg[0] ? cli_msg : gpuseg_last_error();
}

int cli_fail(gpuseg_status st) {
    const char *msg = cli_msg[0] ? cli_msg : gpuseg_last_error();
    cli_error("%s", msg && *msg ? msg : gpuseg_status_message(st));
    cli_msg[0] = 0;
    return CLI_FAIL;
}

/* What cli_getopt_long last refused ("" if nothing), for cli_usage's one line. */
static char cli_opt_error[256];

int cli_usage(const char *usage) {
    fprintf(stderr, "gpuseg: %susage: gpuseg %s\n", cli_opt_error, usage);
    return CLI_USAGE;
}

/* Cellpose spells its options with '_' (--flow_threshold), gpuseg with '-': before the first
 * option of a command is parsed, every "--long_option" of argv (up to "--", values of options
 * that take one excluded) is rewritten with '-', so each table entry accepts both spellings. */
static void hyphenate_long_options(int argc, char *const *argv, const struct option *longopts) {
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (strcmp(a, "--") == 0)
            return;
        if (a[0] != '-' || a[1] != '-')
            continue;
        size_t n = strcspn(a + 2, "=");
        for (size_t k = 0; k < n; k++)
            if (a[2 + k] == '_')
                a[2 + k] = '-';
        for (const struct option *o = longopts; o && o->name; o++)
            if (strlen(o->name) == n && strncmp(o->name, a + 2, n) == 0 && !a[2 + n] &&
                o->has_arg == required_argument)
                i++; /* its value is the next argument: left as it is */
    }
}

#undef getopt_long /* the real one, from here on */
int cli_getopt_long(int argc, char *const *argv, const char *shortopts,
                    const struct option *longopts, int *longind) {
    opterr = 0; /* getopt_long's own report would be a second line on stderr */
    if (optind <= 1)
        hyphenate_long_options(argc, argv, longopts);
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

/* Most options of one table (cli_parse_options). */
#define CLI_MAX_OPTS 32

static int cli_opt_set(const cli_opt *o, const char *arg) {
    char name[64];
    snprintf(name, sizeof name, "--%s", o->name);
    double d = 0;
    long l = 0;
    switch (o->kind) {
    case CLI_ARG_FLAG:
        *(bool *)o->dest = true;
        return CLI_OK;
    case CLI_ARG_STR:
        *(const char **)o->dest = arg;
        return CLI_OK;
    case CLI_ARG_CALL:
        return o->call(arg, o->dest);
    case CLI_ARG_DOUBLE:
    case CLI_ARG_FLOAT:
        if (!cli_parse_double(name, arg, o->lo, o->hi, &d))
            return CLI_USAGE;
        if (o->kind == CLI_ARG_DOUBLE)
            *(double *)o->dest = d;
        else
            *(float *)o->dest = (float)d;
        return CLI_OK;
    default:
        if (!cli_parse_int(name, arg, (long)o->lo, (long)o->hi, &l))
            return CLI_USAGE;
        if (o->kind == CLI_ARG_LONG)
            *(long *)o->dest = l;
        else if (o->kind == CLI_ARG_UINT)
            *(unsigned *)o->dest = (unsigned)l;
        else if (o->kind == CLI_ARG_U32)
            *(uint32_t *)o->dest = (uint32_t)l;
        else
            *(int32_t *)o->dest = (int32_t)l;
        return CLI_OK;
    }
}

/* The entry of opts that getopt_long's code c stands for (NULL: none). */
static const cli_opt *cli_opt_find(const cli_opt *opts, size_t n, int c) {
    if (c >= 256 && c < 256 + (int)n)
        return &opts[c - 256];
    for (size_t i = 0; i < n; i++)
        if (opts[i].letter && opts[i].letter == c)
            return &opts[i];
    return NULL;
}

int cli_parse_options(int argc, char **argv, const cli_opt *opts, unsigned what, void (*help)(void),
                      const char *usage) {
    static const struct option limit_opts[] = {CLI_LIMITS_LONG_OPTIONS};
    const size_t nlim = sizeof limit_opts / sizeof *limit_opts;
    struct option longopts[CLI_MAX_OPTS + sizeof limit_opts / sizeof *limit_opts + 2];
    char shortopts[2 * CLI_MAX_OPTS + 2];
    size_t n = 0, m = 0, ns = 0;
    for (; opts[n].name && n < CLI_MAX_OPTS; n++) {
        /* a long-only option's code is 256 + its index: no character, no limit option */
        const int has_arg = opts[n].kind == CLI_ARG_FLAG ? no_argument : required_argument;
        longopts[m++] = (struct option){opts[n].name, has_arg, NULL,
                                        opts[n].letter ? opts[n].letter : 256 + (int)n};
        if (opts[n].letter) {
            shortopts[ns++] = opts[n].letter;
            if (has_arg == required_argument)
                shortopts[ns++] = ':';
        }
    }
    for (size_t i = 0; (what & CLI_PARSE_LIMITS) && i < nlim; i++)
        longopts[m++] = limit_opts[i];
    if (what & CLI_PARSE_HELP) {
        longopts[m++] = (struct option){"help", no_argument, NULL, 'h'};
        shortopts[ns++] = 'h';
    }
    longopts[m] = (struct option){NULL, 0, NULL, 0};
    shortopts[ns] = '\0';
    optind = 1;
    int c;
    while ((c = cli_getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        if (c == 'h' && (what & CLI_PARSE_HELP)) {
            help();
            return CLI_OK;
        }
        const cli_opt *o = cli_opt_find(opts, n, c);
        int rc = o                           ? cli_opt_set(o, optarg)
                 : (what & CLI_PARSE_LIMITS) ? cli_other_option(0, c, optarg, usage)
                                             : cli_usage(usage);
        if (rc != CLI_OK)
            return rc;
    }
    return -1;
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
    p.limits = cli_limits;
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
    const cli_opt opts[] = {CLI_MASKS_OPTS(cellprob_threshold, flow_threshold, niter, min_size)};
    if (c < CLI_OPT_CELLPROB_THRESHOLD || c > CLI_OPT_MIN_SIZE)
        return 0;
    return cli_opt_set(&opts[c - CLI_OPT_CELLPROB_THRESHOLD], arg) == CLI_OK ? 1 : -1;
}

int cli_other_option(int r, int c, const char *arg, const char *usage) {
    if (r == 0)
        r = cli_limits_option(c, arg);
    if (r < 0)
        return CLI_USAGE;
    return r > 0 ? CLI_OK : cli_usage(usage);
}

gpuseg_limits cli_limits = {0, 0, 0};
unsigned cli_write_flags = 0;

/* The limit options: flag, field of cli_limits, absolute maximum. */
static const struct {
    int c;
    const char *opt;
    size_t off;
    uint64_t most;
} LIMIT_OPTS[3] = {
    {CLI_OPT_MAX_PIXELS, "--max-pixels", offsetof(gpuseg_limits, max_pixels),
     GPUSEG_LIMIT_MAX_PIXELS},
    {CLI_OPT_MAX_OBJECTS, "--max-objects", offsetof(gpuseg_limits, max_objects),
     GPUSEG_LIMIT_MAX_OBJECTS},
    {CLI_OPT_MAX_MODEL_BYTES, "--max-model-bytes", offsetof(gpuseg_limits, max_model_bytes),
     GPUSEG_LIMIT_MAX_MODEL_BYTES},
};

static uint64_t *limit_field(size_t i) {
    return (uint64_t *)(void *)((char *)&cli_limits + LIMIT_OPTS[i].off);
}

int cli_limits_option(int c, const char *arg) {
    if (c == CLI_OPT_ALLOW_SPECIAL_OUTPUT) {
        cli_write_flags |= GPUSEG_WRITE_ALLOW_SPECIAL;
        return 1;
    }
    for (size_t i = 0; i < 3; i++) {
        if (LIMIT_OPTS[i].c != c)
            continue;
        uint64_t v;
        if (gpuseg_limit_parse(arg, &v) != GPUSEG_OK) {
            cli_error("%s: %s", LIMIT_OPTS[i].opt, gpuseg_last_error());
            return -1;
        }
        if (v > LIMIT_OPTS[i].most) {
            cli_error("%s: %s is over the most gpuseg supports (%llu)", LIMIT_OPTS[i].opt, arg,
                      (unsigned long long)LIMIT_OPTS[i].most);
            return -1;
        }
        *limit_field(i) = v;
        return 1;
    }
    return 0;
}

void cli_limits_args(char **argv, int *n, char buf[3][24]) {
    for (size_t i = 0; i < 3; i++) {
        if (!*limit_field(i))
            continue;
        snprintf(buf[i], sizeof buf[i], "%llu", (unsigned long long)*limit_field(i));
        argv[(*n)++] = (char *)LIMIT_OPTS[i].opt;
        argv[(*n)++] = buf[i];
    }
    if (cli_write_flags & GPUSEG_WRITE_ALLOW_SPECIAL)
        argv[(*n)++] = (char *)"--allow-special-output";
}

uint32_t cli_test_stall_ms(void) {
    const char *v = getenv("GPUSEG_SHM_TEST_STALL_MS");
    char *end = NULL;
    long ms = v && *v ? strtol(v, &end, 10) : 0;
    return ms > 0 && ms <= 600000 && *end == '\0' ? (uint32_t)ms : 0;
}

/* ---- JSON ---- */

json_t *cli_json_num(double v) {
    if (!isfinite(v))
        return json_null();
    if (v == floor(v) && fabs(v) < 9007199254740992.0)
        return json_integer((json_int_t)v);
    return json_real(v);
}

json_t *cli_json_str(const char *s) {
    if (!s)
        return json_null();
    json_t *j = json_string(s);
    if (j)
        return j;
    char *copy = strdup(s); /* not UTF-8 */
    if (!copy)
        return NULL;
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static int most_digits(const json_t *v) {
    int most = 1;
    if (json_is_real(v))
        return gpuseg_shortest_digits(json_real_value(v));
    if (json_is_array(v))
        for (size_t i = 0; i < json_array_size(v); i++) {
            int d = most_digits(json_array_get(v, i));
            most = d > most ? d : most;
        }
    if (json_is_object(v)) {
        const char *k;
        json_t *m;
        json_object_foreach((json_t *)v, k, m) {
            int d = most_digits(m);
            most = d > most ? d : most;
        }
    }
    return most;
}

char *cli_json_dumps(const json_t *v, size_t flags) {
    if (!v)
        return NULL;
    if (!(flags & JSON_REAL_PRECISION(31)))
        flags |= JSON_REAL_PRECISION(most_digits(v));
    return json_dumps(v, flags | JSON_PRESERVE_ORDER);
}

int cli_json_print(json_t *v, size_t flags) {
    char *text = cli_json_dumps(v, flags);
    json_decref(v);
    if (!text) {
        cli_error("out of memory (JSON output)");
        return -1;
    }
    printf("%s\n", text);
    fflush(stdout);
    free(text);
    return 0;
}

json_t *cli_json_object(const char *what, const char *text) {
    json_error_t e;
    json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (!v) {
        cli_set_error(GPUSEG_INVALID_ARGUMENT, "%s: line %d, column %d: %s", what, e.line, e.column,
                      e.text);
        return NULL;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        cli_set_error(GPUSEG_INVALID_ARGUMENT, "%s: not a JSON object {...}", what);
        return NULL;
    }
    return v;
}
