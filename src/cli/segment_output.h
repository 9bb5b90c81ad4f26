/* cli/segment_output.h: the output pipeline of a batch: each image's labels are published into a
 * shared-memory segment and a saver process (`gpuseg save --shm NAME -o OUT --unlink`) is
 * spawned for it, so that the caller segments image i+1 while image i is written; at most
 * max_in_flight savers run at once. Or, with shm_only, the segment is left for the caller and
 * its name (or JSON line) is printed. CLI side: the library never spawns processes. */
#ifndef GPUSEG_CLI_SEGMENT_OUTPUT_H
#define GPUSEG_CLI_SEGMENT_OUTPUT_H

#include <stdint.h>
#include "gpuseg/gpuseg.h"
#include "gpuseg/shm_cl.h"

/* Largest max_in_flight accepted. */
#define SEGMENT_OUTPUT_MAX_IN_FLIGHT 64u
/* Largest json_extra accepted, in bytes. */
#define SEGMENT_OUTPUT_MAX_EXTRA 65536u

typedef struct {
    /* Program spawned as the saver, with arguments "save --shm NAME -o OUT --unlink ...".
     * NULL: this program (/proc/self/exe, resolved once at create). */
    const char *gpuseg_exe;
    /* Savers running at once: submit blocks while this many run. 0: serial (submit waits for
     * its own saver before returning; for comparisons). Default (SEGMENT_OUTPUT_OPTS_INIT) 2. */
    unsigned max_in_flight;
    int shm_only;          /* leave each segment for the caller and print it; no saver */
    int json;              /* with shm_only: print a JSON line per image instead of the bare name */
    double save_timeout_s; /* the saver's --timeout (wait for ready); <= 0: 10 s */
    /* Segment names are name_prefix + 16 random hex digits; NULL: "/gpuseg-". Must be a valid
     * segment name prefix ("/gpuseg-" then [A-Za-z0-9._-]); tests use it to find their own. */
    const char *name_prefix;
    /* Test hook passed to publication (gpuseg_shm_publish_params.test_stall_ms): each segment
     * stays WRITING this many milliseconds. The commands take it from GPUSEG_SHM_TEST_STALL_MS. */
    uint32_t test_stall_ms;
    /* 1: the first SIGINT or SIGTERM does not end the process: it is recorded
     * (segment_output_signal) and cancels cancel_ctx's running call (gpuseg_ctx_cancel, when
     * not NULL), so that the caller stops at its next check and cleans up; a second signal
     * then ends the process as below. 0: every such signal ends it (after the clean-up). */
    int cancel_on_signal;
    gpuseg_ctx *cancel_ctx;
} segment_output_opts;

#define SEGMENT_OUTPUT_OPTS_INIT                                                                   \
    { NULL, 2u, 0, 0, 10.0, NULL, 0u, 0, NULL }

typedef struct segment_output segment_output;

/* Creates the pipeline and installs handlers for SIGINT, SIGTERM and SIGHUP (unless ignored):
 * on such a signal the handler removes the segments not yet handed to a saver, waits for the
 * running savers (they finish their file and remove their segment; a second signal aborts the
 * wait), removes any segment a saver left, and then dies of the signal with the default action.
 * Savers run in their own process group, so a terminal's Ctrl-C reaches only this process.
 * Only one pipeline may exist at a time in a process. The caller frees *out with
 * segment_output_free. Errors: GPUSEG_INVALID_ARGUMENT (bad options, a second pipeline),
 * GPUSEG_IO (/proc/self/exe not readable); the message (cli_set_error) goes out with cli_fail. */
gpuseg_status segment_output_create(const segment_output_opts *opts, segment_output **out);

/* Hands one image's labels to the pipeline. Labels come from the device buffer `labels` (ctx
 * required; read straight into the segment with gpuseg_shm_create_from_buffer) or, when labels
 * is NULL, from host_labels (one channel, U16/U32, H x W, one page or a Z stack of pages: shape [Z,
 * H, W]; ctx may be NULL). dtype and H, W describe the array; n_masks and diameter go into the
 * segment header. json_extra (NULL or a JSON object "{...}", at most 64 KiB) is added to the .bin
 * sidecar (through the saver's
 * --meta) and to the shm_only JSON line; image_path is used in messages and in that line.
 * Blocks first while max_in_flight savers run (reaping finished ones; each failure is printed as
 * it is found, see segment_output_finish). Returns non-OK only when the labels could not be
 * published or the saver not started (nothing is left behind then; the error, naming the image,
 * goes out with cli_fail and is not counted as a failed save). */
gpuseg_status segment_output_submit(segment_output *o, gpuseg_ctx *ctx, const char *image_path,
                                    const char *out_path, cl_mem labels,
                                    const gpuseg_image *host_labels, uint32_t H, uint32_t W,
                                    gpuseg_dtype dtype, uint64_t n_masks, double diameter,
                                    const char *json_extra);

/* The signal recorded in cancel_on_signal mode (SIGINT, SIGTERM), 0 when none came. */
int segment_output_signal(const segment_output *o);

/* Waits for every saver, removes any segment a failed saver left, and returns the number of
 * failed saves. Each failure is printed on stderr as it is found, as one line
 * "gpuseg: saving IMAGE to OUT failed: <the saver's message | killed by signal N (NAME)>". */
unsigned segment_output_finish(segment_output *o);

/* Waits for the savers still running (as finish does), restores the signal handlers and frees.
 * Accepts NULL. */
void segment_output_free(segment_output *o);

#endif
