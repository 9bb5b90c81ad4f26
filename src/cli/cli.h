/* cli/cli.h: helpers shared by the subcommands: one-line error reporting, exit codes, and
 * parsing of numbers and device options. The CLI is the only part of gpuseg that prints for
 * users or exits. */
#ifndef GPUSEG_CLI_H
#define GPUSEG_CLI_H

#include <stdbool.h>
#include <stdint.h>
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
 * warnings logged to stderr and GPUSEG_LOG=debug|info raising the level. */
gpuseg_status cli_ctx_create(const char *device, gpuseg_ctx **out);

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

/* Common usage line printer: "usage: gpuseg <usage>". Returns CLI_USAGE. */
int cli_usage(const char *usage);

#endif
