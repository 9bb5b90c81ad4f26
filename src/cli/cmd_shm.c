/* cli/cmd_shm.c: `gpuseg shm list | rm NAME... | clean | put LABELS`: inspecting and removing
 * shared-memory label segments, and `put`, a producer for development and tests that publishes
 * a label image file as a segment and leaves it for a caller, printing the same JSON line that
 * `gpuseg segment --shm-only --json` prints. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"

static const char *USE = "shm list [--prefix P] | rm NAME... | clean [--prefix P] | "
                         "put LABELS [--json] [--name NAME] [--n-masks N] [--diameter D]";

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
        "          --n-masks defaults to the number of distinct labels, --diameter to 0 (unknown)\n"
        "  --prefix P  only segments whose name starts with P (default /gpuseg-)\n",
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

/* Parses `--prefix P` (the only option of list and clean). */
static bool parse_prefix(int argc, char **argv, const char **prefix) {
    static const struct option opts[] = {{"prefix", required_argument, NULL, 'p'},
                                         {NULL, 0, NULL, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c != 'p')
            return false;
        *prefix = optarg;
    }
    return optind == argc;
}

static int cmd_list(int argc, char **argv) {
    const char *prefix = NULL;
    if (!parse_prefix(argc, argv, &prefix))
        return cli_usage(USE);
    gpuseg_shm_entry *e = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg_shm_list(prefix, &e, &n);
    if (st != GPUSEG_OK)
        return cli_fail(st);
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
    if (!parse_prefix(argc, argv, &prefix))
        return cli_usage(USE);
    size_t removed = 0;
    gpuseg_status st = gpuseg_shm_clean(prefix, &removed);
    if (st != GPUSEG_OK)
        return cli_fail(st);
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
        default:
            return cli_usage(USE);
        }
    }
    if (optind != argc - 1)
        return cli_usage(USE);
    const char *path = argv[optind];
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read(path, &img);
    if (st != GPUSEG_OK)
        return cli_fail(st);
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
    st = gpuseg_shm_create_labels(name, img, (uint64_t)n_masks, diameter, &seg);
    gpuseg_image_free(img);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    char line[1024];
    if (json) {
        st = gpuseg_shm_json(gpuseg_shm_get_info(seg), line, sizeof line);
        if (st != GPUSEG_OK) {
            gpuseg_shm_unlink(gpuseg_shm_get_info(seg)->name);
            gpuseg_shm_close(seg);
            return cli_fail(st);
        }
    } else {
        snprintf(line, sizeof line, "%s", gpuseg_shm_get_info(seg)->name);
    }
    gpuseg_shm_close(seg); /* the segment stays for the caller */
    printf("%s\n", line);
    fflush(stdout);
    return CLI_OK;
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
    cli_error("shm: unknown subcommand '%s' (list, rm, clean, put)", sub);
    return CLI_USAGE;
}
