/* cli/cmd_shm.c: `gpuseg shm list | rm NAME... | clean | put LABELS | batch LABELS...`:
 * inspecting and removing shared-memory label segments; `put`, a producer for development and
 * tests that publishes a label image file as a segment and leaves it for a caller, printing the
 * same JSON line that `gpuseg segment --shm-only --json` prints; and `batch`, which pushes many
 * label files through the output pipeline of `segment` (cli/segment_output.h): converts them
 * with saver processes, or publishes them all with --shm-only. */
#define _DEFAULT_SOURCE /* realpath */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "labels_load.h"
#include "segment_output.h"

static const char *USE = "shm list [--prefix P] | rm NAME... | clean [--prefix P] | "
                         "put LABELS [--json] [--name NAME] [--n-masks N] [--diameter D] | "
                         "batch LABELS... (--save-dir DIR [--format bin|tif|png|npy] | --shm-only "
                         "[--json]) [--max-in-flight N] [--host | --device D] [--name-prefix P] "
                         "[--saver EXE] [--timeout SEC] [--busy-ms MS]";

static void help(void) {
    printf(
        "usage: gpuseg %s\n"
        "  list    segments in /dev/shm: name, size, state, producer pid and whether it runs,\n"
        "          shape, dtype, masks\n"
        "  rm      remove the named segments\n"
        "  clean   remove this user's segments whose producer is gone (also unconsumed ready\n"
        "          ones), and headerless ones older than 60 s\n"
        "  put     publish a label image file (uint8/16/32, one channel) as a new segment and\n"
        "          leave it; prints its name, or with --json one line\n"
        "          {\"shm\",\"shape\",\"dtype\",\"offset\",\"bytes\",\"n_masks\",\"diameter\"}.\n"
        "          --n-masks defaults to the number of distinct labels, --diameter to 0 "
        "(unknown);\n"
        "          without --name the segment is named $GPUSEG_SHM_PREFIX (default /gpuseg-)\n"
        "          + 16 random hex digits\n"
        "  batch   push label files through the output pipeline of `gpuseg segment`: each one is\n"
        "          uploaded to the device (unless --host; without a device the host copy is\n"
        "          used), published from there as a segment, and saved by a `gpuseg save`\n"
        "          process as DIR/STEM.FORMAT (default bin: .bin + .json sidecar), while the\n"
        "          next file is read; --max-in-flight N savers at once (default 2; 0 = wait for\n"
        "          each save). With --shm-only the segments are left and their names (--json:\n"
        "          JSON lines with \"image\") printed. Exit 1 naming each file that failed.\n"
        "          --name-prefix P names segments P + 16 hex digits (default $GPUSEG_SHM_PREFIX,\n"
        "          as for segment); --saver EXE runs EXE as\n"
        "          the saver; --timeout SEC is the saver's; --busy-ms MS is a BENCHMARK KNOB "
        "only:\n"
        "          it sleeps MS ms per file after the upload, standing in for segmentation\n"
        "  --prefix P  only segments whose name starts with P (default /gpuseg-)\n"
        "put and batch also take (docs/io.md):\n" CLI_LIMITS_HELP,
        USE);
}

static void human_bytes(uint64_t b, char *buf, size_t len) {
    if (b >= (1ull << 30))
        snprintf(buf, len, "%.1fG", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(buf, len, "%.1fM", (double)b / (double)(1ull << 20));
    else if (b >= (1ull << 10))
        snprintf(buf, len, "%.1fK", (double)b / 1024.0);
    else
        snprintf(buf, len, "%lluB", (unsigned long long)b);
}

/* Parses `--prefix P` (the only option of list and clean): -1 to go on, else the exit code. */
static int parse_prefix(int argc, char **argv, const char **prefix) {
    const cli_opt opts[] = {CLI_OPT_STR("prefix", 0, prefix), CLI_OPT_END};
    int rc = cli_parse_options(argc, argv, opts, 0, NULL, USE);
    return rc < 0 && optind != argc ? cli_usage(USE) : rc;
}

/* A refused --prefix is a bad option value: exit 2 like every other one (the library's one line
 * names the prefix and the rule); anything else is a failure (exit 1). */
static int bad_prefix_or_fail(gpuseg_status st) {
    if (st != GPUSEG_INVALID_ARGUMENT)
        return cli_fail(st);
    cli_error("--prefix: %s", gpuseg_last_error());
    return CLI_USAGE;
}

static int cmd_list(int argc, char **argv) {
    const char *prefix = NULL;
    int rc = parse_prefix(argc, argv, &prefix);
    if (rc >= 0)
        return rc;
    gpuseg_shm_entry *e = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg_shm_list(prefix, &e, &n);
    if (st != GPUSEG_OK)
        return bad_prefix_or_fail(st);
    printf("%-28s %8s %-8s %8s %-6s %-16s %-7s %s\n", "NAME", "SIZE", "STATE", "PID", "ALIVE",
           "SHAPE", "DTYPE", "MASKS");
    for (size_t i = 0; i < n; i++) {
        char size[32], shape[96] = "-", pid[24] = "-";
        human_bytes(e[i].segment_bytes, size, sizeof size);
        const char *state = "invalid", *dtype = "-";
        char masks[24] = "-";
        if (e[i].info.producer_pid > 0)
            snprintf(pid, sizeof pid, "%lld", (long long)e[i].info.producer_pid);
        if (e[i].header_valid) {
            const gpuseg_shm_info *in = &e[i].info;
            state = gpuseg_shm_state_name(in->state);
            dtype = gpuseg_dtype_name(in->dtype);
            size_t used = 0;
            for (uint32_t d = 0; d < in->ndim && used < sizeof shape; d++)
                used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%llu", d ? "x" : "",
                                         (unsigned long long)in->shape[d]);
            if (in->state == GPUSEG_SHM_READY)
                snprintf(masks, sizeof masks, "%llu", (unsigned long long)in->n_masks);
        } else if (e[i].uid != (uint32_t)geteuid()) {
            state = "foreign";
        }
        const char *alive = e[i].producer_alive > 0 ? "yes" : e[i].producer_alive == 0 ? "no" : "?";
        printf("%-28s %8s %-8s %8s %-6s %-16s %-7s %s\n", e[i].name, size, state, pid, alive, shape,
               dtype, masks);
    }
    gpuseg_free(e);
    return CLI_OK;
}

static int cmd_rm(int argc, char **argv) {
    if (argc < 2)
        return cli_usage(USE);
    int rc = CLI_OK;
    for (int i = 1; i < argc; i++) {
        gpuseg_status st = gpuseg_shm_unlink(argv[i]);
        if (st != GPUSEG_OK)
            rc = cli_fail(st);
    }
    return rc;
}

static int cmd_clean(int argc, char **argv) {
    const char *prefix = NULL;
    int rc = parse_prefix(argc, argv, &prefix);
    if (rc >= 0)
        return rc;
    size_t removed = 0;
    gpuseg_status st = gpuseg_shm_clean(prefix, &removed);
    if (st != GPUSEG_OK)
        return bad_prefix_or_fail(st);
    printf("removed %zu segment%s\n", removed, removed == 1 ? "" : "s");
    return CLI_OK;
}

/* Converts a label image read from a file to U16/U32 in place where needed. */
static gpuseg_status to_label_dtype(const char *path, gpuseg_image *img) {
    size_t n = (size_t)img->width * img->height * img->pages;
    if (img->channels != 1) {
        cli_error("%s: a label image has one channel, this one has %u", path, img->channels);
        return GPUSEG_INVALID_ARGUMENT;
    }
    if (img->dtype == GPUSEG_DTYPE_U16 || img->dtype == GPUSEG_DTYPE_U32)
        return GPUSEG_OK;
    if (img->dtype == GPUSEG_DTYPE_U8) {
        uint16_t *w = malloc(n * sizeof *w);
        if (!w) {
            cli_error("%s: out of memory", path);
            return GPUSEG_OUT_OF_MEMORY;
        }
        const uint8_t *s = img->data;
        for (size_t i = 0; i < n; i++)
            w[i] = s[i];
        free(img->data);
        img->data = w;
        img->dtype = GPUSEG_DTYPE_U16;
        return GPUSEG_OK;
    }
    if (img->dtype == GPUSEG_DTYPE_I32) {
        const int32_t *s = img->data;
        for (size_t i = 0; i < n; i++)
            if (s[i] < 0) {
                cli_error("%s: negative label %d at sample %zu", path, (int)s[i], i);
                return GPUSEG_FORMAT;
            }
        img->dtype = GPUSEG_DTYPE_U32; /* same bytes for non-negative values */
        return GPUSEG_OK;
    }
    cli_error("%s: labels must be integers (uint8, uint16, uint32, int32), not %s", path,
              gpuseg_dtype_name(img->dtype));
    return GPUSEG_UNSUPPORTED;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Number of distinct non-zero labels (what Cellpose calls the number of masks; equal to the
 * largest label when labels are numbered 1..N, but robust to gaps). */
static gpuseg_status count_labels(const char *path, const gpuseg_image *img, uint64_t *count) {
    size_t n = (size_t)img->width * img->height * img->pages;
    uint64_t c = 0;
    if (img->dtype == GPUSEG_DTYPE_U16) {
        static unsigned char seen[65536];
        memset(seen, 0, sizeof seen);
        const uint16_t *s = img->data;
        for (size_t i = 0; i < n; i++)
            seen[s[i]] = 1;
        for (size_t v = 1; v < 65536; v++)
            c += seen[v];
    } else {
        uint32_t *copy = malloc(n * sizeof *copy);
        if (!copy) {
            cli_error("%s: out of memory", path);
            return GPUSEG_OUT_OF_MEMORY;
        }
        memcpy(copy, img->data, n * sizeof *copy);
        qsort(copy, n, sizeof *copy, cmp_u32);
        for (size_t i = 0; i < n; i++)
            c += copy[i] != 0 && (i == 0 || copy[i] != copy[i - 1]);
        free(copy);
    }
    *count = c;
    return GPUSEG_OK;
}

static int cmd_put(int argc, char **argv) {
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"n-masks", required_argument, NULL, 'm'},
                                         {"diameter", required_argument, NULL, 'd'},
                                         CLI_LIMITS_LONG_OPTIONS,
                                         {NULL, 0, NULL, 0}};
    bool json = false;
    const char *name = NULL;
    long n_masks = -1;
    double diameter = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'j':
            json = true;
            break;
        case 'n':
            name = optarg;
            break;
        case 'm':
            if (!cli_parse_int("--n-masks", optarg, 0, 0x7FFFFFFFL, &n_masks))
                return CLI_USAGE;
            break;
        case 'd':
            if (!cli_parse_double("--diameter", optarg, 0, 1e6, &diameter))
                return CLI_USAGE;
            break;
        default: {
            const int rc = cli_other_option(0, c, optarg, USE);
            if (rc != CLI_OK)
                return rc;
            break;
        }
        }
    }
    if (optind != argc - 1)
        return cli_usage(USE);
    /* no --name: the segment prefix of `gpuseg segment` and `shm batch` */
    char gen[GPUSEG_SHM_NAME_MAX];
    const char *env = getenv("GPUSEG_SHM_PREFIX");
    if (!name && env && *env) {
        if (gpuseg_shm_random_name(env, gen) != GPUSEG_OK) {
            cli_error("GPUSEG_SHM_PREFIX=%s", gpuseg_last_error()); /* "='/x' is not ..." */
            return CLI_FAIL;
        }
        name = gen;
    }
    const char *path = argv[optind];
    gpuseg_image *img = NULL; /* .bin + .json too: the labels `gpuseg segment` writes */
    gpuseg_status st = cli_labels_read_image(path, &img);
    if (st != GPUSEG_OK)
        return CLI_FAIL; /* reported */
    if (to_label_dtype(path, img) != GPUSEG_OK) {
        gpuseg_image_free(img);
        return CLI_FAIL;
    }
    if (n_masks < 0) {
        uint64_t count = 0;
        if (count_labels(path, img, &count) != GPUSEG_OK) {
            gpuseg_image_free(img);
            return CLI_FAIL;
        }
        n_masks = (long)count;
    }
    gpuseg_shm *seg = NULL;
    const gpuseg_shm_publish_params pp = {cli_test_stall_ms()};
    st = gpuseg_shm_create_labels_ex(name, img, (uint64_t)n_masks, diameter, &pp, &seg);
    gpuseg_image_free(img);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    char line[1024];
    if (json) {
        st = gpuseg_shm_json(gpuseg_shm_get_info(seg), line, sizeof line);
        if (st != GPUSEG_OK) {
            gpuseg_shm_unlink(gpuseg_shm_get_info(seg)->name);
            gpuseg_shm_free(seg);
            return cli_fail(st);
        }
    } else {
        snprintf(line, sizeof line, "%s", gpuseg_shm_get_info(seg)->name);
    }
    gpuseg_shm_free(seg); /* the segment stays for the caller */
    printf("%s\n", line);
    fflush(stdout);
    return CLI_OK;
}

/* ---- batch ---- */

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* DIR/STEM.EXT for input path; refuses to overwrite the input itself. */
static bool batch_out_path(const char *dir, const char *in, const char *ext, char *out,
                           size_t len) {
    const char *base = strrchr(in, '/');
    base = base ? base + 1 : in;
    const char *dot = strrchr(base, '.');
    size_t stem = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    if ((size_t)snprintf(out, len, "%s/%.*s.%s", dir, (int)stem, base, ext) >= len) {
        cli_error("%s: output path too long", in);
        return false;
    }
    char a[PATH_MAX], b[PATH_MAX], d[PATH_MAX];
    if (realpath(in, a) && realpath(dir, d)) {
        snprintf(b, sizeof b, "%s/%.*s.%s", d, (int)stem, base, ext);
        if (strcmp(a, b) == 0) {
            cli_error("%s: the output would overwrite the input (choose another --save-dir "
                      "or --format)",
                      in);
            return false;
        }
    }
    return true;
}

/* Reads one label file, uploads it (when ctx) and submits it. Returns false (message printed)
 * when this file could not be handed over. */
static bool batch_one(segment_output *o, gpuseg_ctx *ctx, const char *path, const char *out,
                      long busy_ms) {
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read_ex(path, &cli_limits, &img);
    if (st != GPUSEG_OK) {
        cli_fail(st);
        return false;
    }
    bool ok = false;
    cl_mem buf = NULL;
    uint64_t count = 0;
    char *extra = NULL;
    if (img->pages != 1) {
        cli_error("%s: %u pages; batch takes one-page label images", path, img->pages);
        goto done;
    }
    if (to_label_dtype(path, img) != GPUSEG_OK || count_labels(path, img, &count) != GPUSEG_OK)
        goto done;
    json_t *meta = json_pack("{s:o}", "input", cli_json_str(path));
    extra = cli_json_dumps(meta, JSON_COMPACT);
    json_decref(meta);
    if (!extra) {
        cli_error("%s: out of memory", path);
        goto done;
    }
    if (ctx) {
        size_t bytes = (size_t)img->width * img->height * (img->dtype == GPUSEG_DTYPE_U16 ? 2 : 4);
        cl_int err;
        buf = clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                             bytes, img->data, &err);
        if (!buf) {
            cli_error("%s: cannot upload the labels: %s", path, gpuseg_cl_error_name(err));
            goto done;
        }
    }
    if (busy_ms > 0)
        sleep_ms(busy_ms); /* benchmark knob: stands in for the segmentation of this image */
    st = segment_output_submit(o, ctx, path, out, buf, buf ? NULL : img, img->height, img->width,
                               img->dtype, count, 0.0, out ? extra : NULL);
    if (st != GPUSEG_OK) {
        cli_fail(st);
        goto done;
    }
    ok = true;
done:
    if (buf)
        clReleaseMemObject(buf);
    gpuseg_image_free(img);
    free(extra);
    return ok;
}

/* --format F: 0, or CLI_USAGE (message printed). */
static int parse_format(const char *arg, void *dest) {
    if (strcmp(arg, "bin") && strcmp(arg, "tif") && strcmp(arg, "png") && strcmp(arg, "npy")) {
        cli_error("--format: '%s' is not bin, tif, png or npy", arg);
        return CLI_USAGE;
    }
    *(const char **)dest = arg;
    return CLI_OK;
}

static int cmd_batch(int argc, char **argv) {
    segment_output_opts so = SEGMENT_OUTPUT_OPTS_INIT;
    so.name_prefix = getenv("GPUSEG_SHM_PREFIX"); /* as `gpuseg segment`; --name-prefix wins */
    so.test_stall_ms = cli_test_stall_ms();
    const char *dir = NULL, *fmt = "bin", *device = NULL;
    bool host = false, shm_only = false, json = false;
    long busy_ms = 0;
    const cli_opt opts[] = {CLI_OPT_STR("save-dir", 0, &dir),
                            CLI_OPT_CALL("format", 0, parse_format, &fmt),
                            CLI_OPT_NUM("max-in-flight", CLI_ARG_UINT, &so.max_in_flight, 0,
                                        SEGMENT_OUTPUT_MAX_IN_FLIGHT),
                            CLI_OPT_FLAG("shm-only", 0, &shm_only),
                            CLI_OPT_FLAG("json", 0, &json),
                            CLI_OPT_FLAG("host", 0, &host),
                            CLI_OPT_STR("device", 0, &device),
                            CLI_OPT_STR("name-prefix", 0, &so.name_prefix),
                            CLI_OPT_STR("saver", 0, &so.gpuseg_exe),
                            CLI_OPT_NUM("timeout", CLI_ARG_DOUBLE, &so.save_timeout_s, 0, 86400),
                            CLI_OPT_NUM("busy-ms", CLI_ARG_LONG, &busy_ms, 0, 600000),
                            CLI_OPT_END};
    int rc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS, NULL, USE);
    if (rc >= 0)
        return rc;
    so.shm_only = shm_only;
    so.json = json;
    if (optind >= argc || (!dir && !so.shm_only) || (dir && so.shm_only) ||
        (so.json && !so.shm_only) || (host && device))
        return cli_usage(USE);
    gpuseg_ctx *ctx = NULL;
    if (!host) {
        gpuseg_status st = cli_ctx_create(device, &ctx);
        if (st != GPUSEG_OK) {
            if (device) /* asked for: a failure is an error; otherwise use the host copy */
                return cli_fail(st);
            ctx = NULL;
        }
    }
    segment_output *o = NULL;
    gpuseg_status st = segment_output_create(&so, &o);
    if (st != GPUSEG_OK) {
        gpuseg_ctx_free(ctx);
        return cli_fail(st);
    }
    unsigned failed = 0;
    for (int i = optind; i < argc; i++) {
        char out[PATH_MAX];
        if (!so.shm_only && !batch_out_path(dir, argv[i], fmt, out, sizeof out)) {
            failed++;
            continue;
        }
        if (!batch_one(o, ctx, argv[i], so.shm_only ? NULL : out, busy_ms))
            failed++;
    }
    failed += segment_output_finish(o);
    segment_output_free(o);
    gpuseg_ctx_free(ctx);
    return failed ? CLI_FAIL : CLI_OK;
}

int gpuseg_cmd_shm(int argc, char **argv) {
    if (argc < 2)
        return cli_usage(USE);
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        help();
        return CLI_OK;
    }
    if (strcmp(sub, "list") == 0)
        return cmd_list(argc - 1, argv + 1);
    if (strcmp(sub, "rm") == 0)
        return cmd_rm(argc - 1, argv + 1);
    if (strcmp(sub, "clean") == 0)
        return cmd_clean(argc - 1, argv + 1);
    if (strcmp(sub, "put") == 0)
        return cmd_put(argc - 1, argv + 1);
    if (strcmp(sub, "batch") == 0)
        return cmd_batch(argc - 1, argv + 1);
    cli_error("shm: unknown subcommand '%s' (list, rm, clean, put, batch)", sub);
    return CLI_USAGE;
}
