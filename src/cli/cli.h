/* cli/cli.h: helpers shared by the subcommands: one-line error reporting, exit codes, and
 * parsing of numbers and device options. The CLI is the only part of gpuseg that prints for
 * users or exits. */
#ifndef GPUSEG_CLI_H
#define GPUSEG_CLI_H

#include <getopt.h> /* before the getopt_long macro below */
#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>

#include "gpuseg/gpuseg.h"

/* Exit codes: 0 success, 1 failure of the job, 2 bad command line. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Prints "gpuseg: <message>" as one line on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "gpuseg: <gpuseg_last_error() or the status message>" and returns CLI_FAIL. */
int cli_fail(gpuseg_status st);

/* Parses a whole string as a number; false (with a message naming opt) if it is not one or is
 * outside [lo, hi]. */
bool cli_parse_double(const char *opt, const char *s, double lo, double hi, double *out);
bool cli_parse_int(const char *opt, const char *s, long lo, long hi, long *out);

/* Creates a context for the --device option (NULL = GPUSEG_DEVICE or automatic choice), with
 * warnings logged to stderr and GPUSEG_LOG=debug|info raising the level. With cli_notices set
 * (a command that shows a progress line on a terminal), the level is info: the device used and,
 * on a first run, why it takes longer (the programs are compiled). */
gpuseg_status cli_ctx_create(const char *device, gpuseg_ctx **out);
extern bool cli_notices;

/* The flows -> masks options that `masks` and `segment` share: option codes, the getopt_long
 * entries (put CLI_MASKS_LONG_OPTIONS in the option array) and their parsing. */
enum { CLI_OPT_CELLPROB_THRESHOLD = 1000, CLI_OPT_FLOW_THRESHOLD, CLI_OPT_NITER, CLI_OPT_MIN_SIZE };
#define CLI_MASKS_LONG_OPTIONS                                                                     \
    {"cellprob-threshold", required_argument, NULL, CLI_OPT_CELLPROB_THRESHOLD},                   \
        {"flow-threshold", required_argument, NULL, CLI_OPT_FLOW_THRESHOLD},                       \
        {"niter", required_argument, NULL, CLI_OPT_NITER}, {                                       \
        "min-size", required_argument, NULL, CLI_OPT_MIN_SIZE                                      \
    }

/* Parses option c (one of CLI_OPT_*) with argument arg into the matching field. Returns 1 when
 * handled, 0 when c is not one of these options, -1 on a bad value (message printed). */
int cli_masks_option(int c, const char *arg, float *cellprob_threshold, float *flow_threshold,
                     uint32_t *niter, int32_t *min_size);

/* Prints the one-line usage error "gpuseg: [<cmd>: option '--x' is unknown; ]usage: gpuseg
 * <usage>" (the part in brackets when getopt_long refused an option). Returns CLI_USAGE. */
int cli_usage(const char *usage);

/* Every subcommand parses its options with getopt_long, which this header routes through
 * cli_getopt_long: the same parse, but a refused option is kept for cli_usage's one line instead
 * of being printed by getopt on a line of its own. */
int cli_getopt_long(int argc, char *const *argv, const char *shortopts,
                    const struct option *longopts, int *longind);
#define getopt_long cli_getopt_long

/* The limit and output-safety options that every command reading images, labels or models or
 * writing files accepts: --max-pixels N, --max-objects N, --max-model-bytes N (N: a count with
 * an optional K/M/G/T suffix, powers of 1024) and --allow-special-output. They fill cli_limits
 * and cli_write_flags, which the commands pass to the library calls (gpuseg_ctx_params.limits,
 * gpuseg_image_read_ex, the writers' _ex flags) and to the saver processes `segment` spawns
 * (cli_limits_args); the environment variables of docs/io.md stay the library's defaults for
 * what is not given here. */
enum {
    CLI_OPT_MAX_PIXELS = 1100,
    CLI_OPT_MAX_OBJECTS,
    CLI_OPT_MAX_MODEL_BYTES,
    CLI_OPT_ALLOW_SPECIAL_OUTPUT
};
#define CLI_LIMITS_LONG_OPTIONS                                                                    \
    {"max-pixels", required_argument, NULL, CLI_OPT_MAX_PIXELS},                                   \
        {"max-objects", required_argument, NULL, CLI_OPT_MAX_OBJECTS},                             \
        {"max-model-bytes", required_argument, NULL, CLI_OPT_MAX_MODEL_BYTES}, {                   \
        "allow-special-output", no_argument, NULL, CLI_OPT_ALLOW_SPECIAL_OUTPUT                    \
    }
/* Help text lines for the options above. */
#define CLI_LIMITS_HELP                                                                            \
    "  --max-pixels N          refuse images of more pixels per page (default 1G = 2^30)\n"        \
    "  --max-objects N         refuse more objects after seeding (default 16M = 2^24)\n"           \
    "  --max-model-bytes N     refuse larger model files (default 256M)\n"                         \
    "  --allow-special-output  write through symlinks and to FIFOs or devices\n"

/* The values of those options (members 0 / flags 0 when not given). */
extern gpuseg_limits cli_limits;
extern unsigned cli_write_flags;

/* Handles option c (one of the CLI_OPT_ above). Returns 1 when handled, 0 when c is not one of
 * these options, -1 on a bad value (message printed). */
int cli_limits_option(int c, const char *arg);

/* Appends the options above that were given, as arguments for another gpuseg process, to
 * argv[*n...] (at most CLI_LIMITS_MAX_ARGS entries), formatting numbers into buf. */
#define CLI_LIMITS_MAX_ARGS 7
void cli_limits_args(char **argv, int *n, char buf[3][24]);

/* The default branch of a command's option loop: r is what the command's own option helpers
 * returned for c (0: not theirs; pass 0 when there are none). A limits option is applied and
 * CLI_OK returned, so the loop goes on; otherwise the command ends with CLI_USAGE: a bad value
 * (already reported) or an option the command does not take (the usage line is printed). */
int cli_other_option(int r, int c, const char *arg, const char *usage);

/* ---- option tables ---- */

/* What an option of a table does with its value. */
typedef enum cli_opt_kind {
    CLI_ARG_FLAG,   /* no value: *(bool *)dest = true */
    CLI_ARG_STR,    /* *(const char **)dest = the value */
    CLI_ARG_DOUBLE, /* a number in [lo, hi] into *(double *)dest */
    CLI_ARG_FLOAT,  /* ... into *(float *)dest */
    CLI_ARG_LONG,   /* an integer in [lo, hi] into *(long *)dest */
    CLI_ARG_UINT,   /* ... into *(unsigned *)dest */
    CLI_ARG_U32,    /* ... into *(uint32_t *)dest */
    CLI_ARG_I32,    /* ... into *(int32_t *)dest */
    CLI_ARG_CALL    /* call(value, dest): 0, or the exit code (message printed) */
} cli_opt_kind;

/* One option of a command: --name (and -letter when letter is not 0). A table ends with an
 * entry whose name is NULL. */
typedef struct cli_opt {
    const char *name;
    char letter;
    cli_opt_kind kind;
    void *dest;
    double lo, hi;
    int (*call)(const char *arg, void *dest);
} cli_opt;

/* Table entries: a flag, a string, a number of kind CLI_ARG_DOUBLE...CLI_ARG_I32 in [lo, hi],
 * an option parsed by fn(value, dest), and the end of the table. */
#define CLI_OPT_FLAG(name, letter, dest)                                                           \
    { name, letter, CLI_ARG_FLAG, dest, 0, 0, NULL }
#define CLI_OPT_STR(name, letter, dest)                                                            \
    { name, letter, CLI_ARG_STR, dest, 0, 0, NULL }
#define CLI_OPT_NUM(name, kind, dest, lo, hi)                                                      \
    { name, 0, kind, dest, lo, hi, NULL }
#define CLI_OPT_CALL(name, letter, fn, dest)                                                       \
    { name, letter, CLI_ARG_CALL, dest, 0, 0, fn }
#define CLI_OPT_END                                                                                \
    { NULL, 0, CLI_ARG_FLAG, NULL, 0, 0, NULL }

/* The table entries of the flows -> masks options (CLI_MASKS_LONG_OPTIONS) into the given
 * fields; cli_masks_option parses them with the same entries. */
#define CLI_MASKS_OPTS(cellprob_threshold, flow_threshold, niter, min_size)                        \
    CLI_OPT_NUM("cellprob-threshold", CLI_ARG_FLOAT, cellprob_threshold, -1e30, 1e30),             \
        CLI_OPT_NUM("flow-threshold", CLI_ARG_FLOAT, flow_threshold, -1e30, 1e30),                 \
        CLI_OPT_NUM("niter", CLI_ARG_U32, niter, 0, 1000000),                                      \
        CLI_OPT_NUM("min-size", CLI_ARG_I32, min_size, -1, INT32_MAX)

/* What a command's option parse takes besides its table: CLI_PARSE_LIMITS, the limit options
 * (CLI_LIMITS_LONG_OPTIONS); CLI_PARSE_HELP, -h/--help, which calls help and ends the command
 * with CLI_OK. */
enum { CLI_PARSE_LIMITS = 1, CLI_PARSE_HELP = 2 };

/* Parses the options of argv[1...] by the table opts with getopt_long (so every long option is
 * also accepted with '_' for '-', and a refused option gives cli_usage's one line). Returns -1
 * when the command goes on (its operands start at optind), else its exit code: CLI_OK after
 * the help, CLI_USAGE after a bad value (reported) or an option it does not take (the usage
 * line printed). */
int cli_parse_options(int argc, char **argv, const cli_opt *opts, unsigned what, void (*help)(void),
                      const char *usage);

/* Records a one-line message of the CLI's own (what the library's gpuseg_last_error() is for
 * library calls) for the next cli_fail, and returns st. */
gpuseg_status cli_set_error(gpuseg_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Forgets a message recorded with cli_set_error. */
void cli_clear_error(void);
/* The message cli_fail would print: cli_set_error's when one is recorded, else the library's. */
const char *cli_last_error(void);

/* The test hook GPUSEG_SHM_TEST_STALL_MS=N (0 when unset or not a count of at most 600000): the
 * commands that publish segments pass it to the library (gpuseg_shm_publish_params), so that
 * tests can catch a producer in state WRITING. */
uint32_t cli_test_stall_ms(void);

/* ---- JSON (jansson; docs/architecture.md "JSON") ---- */

/* A number as JSON: an integer when v is integral and exact in a double (|v| < 2^53), null
 * when v is NaN or infinite (JSON has neither), else a real. */
json_t *cli_json_num(double v);
/* A string as JSON; a string that is not UTF-8 (a file name in another encoding) has its
 * non-ASCII bytes replaced by '?'. NULL gives null. */
json_t *cli_json_str(const char *s);
/* The text of v (not consumed; NULL on failure) with the members in insertion order and reals
 * in the shortest form that reads back to the same double for every real of v (unless flags
 * holds a JSON_REAL_PRECISION). The caller frees it. */
char *cli_json_dumps(const json_t *v, size_t flags);
/* Prints v and a newline on stdout, flushes, and releases v (a reference is consumed, NULL
 * accepted: out of memory). 0, or -1 with the error printed. */
int cli_json_print(json_t *v, size_t flags);
/* Parses text as one JSON object (duplicate keys refused). NULL, with the error recorded by
 * cli_set_error as "<what>: line L, column C: <problem>" or "<what>: not a JSON object", when
 * it is not one. */
json_t *cli_json_object(const char *what, const char *text);

#endif
