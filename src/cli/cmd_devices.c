/* cli/cmd_devices.c: `gpuseg devices [--device SPEC] [--json] [--build]`: every OpenCL platform
 * and device, with the one gpuseg would use marked; --build also compiles every program on it. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static const char *type_name(gpuseg_device_type t) {
    switch (t) {
    case GPUSEG_DEVICE_GPU:
        return "GPU";
    case GPUSEG_DEVICE_CPU:
        return "CPU";
    case GPUSEG_DEVICE_ACCELERATOR:
        return "accelerator";
    default:
        return "other";
    }
}

/* One device as JSON. */
static json_t *device_json(const gpuseg_device_info *d, bool chosen) {
    return json_pack(
        "{s:i,s:i,s:i,s:s,s:o,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:b}", "index", d->index,
        "platform", d->platform_index, "device", d->device_index, "type", type_name(d->type),
        "platform_name", cli_json_str(d->platform_name), "name", cli_json_str(d->name),
        "driver_version", cli_json_str(d->driver_version), "global_mem_bytes",
        (json_int_t)d->global_mem_bytes, "max_alloc_bytes", (json_int_t)d->max_alloc_bytes,
        "local_mem_bytes", (json_int_t)d->local_mem_bytes, "max_work_group_size",
        (json_int_t)d->max_work_group_size, "compute_units", (json_int_t)d->compute_units, "fp16",
        d->fp16, "fp64", d->fp64, "chosen", chosen);
}

#define USAGE "devices [--device SPEC] [--json] [--build]"

static void help(void) {
    printf("usage: gpuseg " USAGE "\n"
           "  --device SPEC  auto|gpu|cpu|N|P:D|name substring (default: $GPUSEG_DEVICE "
           "or auto)\n"
           "  --json         machine-readable output\n"
           "  --build        also build every OpenCL program on the chosen device\n");
}

int gpuseg_cmd_devices(int argc, char **argv) {
    const char *device = NULL;
    bool json = false, build = false;
    const cli_opt opts[] = {CLI_OPT_STR("device", 'd', &device), CLI_OPT_FLAG("json", 'j', &json),
                            CLI_OPT_FLAG("build", 'b', &build), CLI_OPT_END};
    int rc = cli_parse_options(argc, argv, opts, CLI_PARSE_HELP, help, USAGE);
    if (rc >= 0)
        return rc;
    if (optind < argc)
        return cli_usage(USAGE);
    gpuseg_device_info *list = NULL;
    size_t n = 0, chosen = 0;
    gpuseg_status st = gpuseg_device_list(&list, &n);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    gpuseg_status cst = gpuseg_device_choose(list, n, device, &chosen);
    if (json) {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, device_json(&list[i], cst == GPUSEG_OK && chosen == i));
        if (cli_json_print(json_pack("{s:o}", "devices", arr), 0) != 0) {
            gpuseg_free(list);
            return CLI_FAIL;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            const gpuseg_device_info *d = &list[i];
            printf("%s %zu  [%d:%d] %s / %s (%s)\n", cst == GPUSEG_OK && chosen == i ? "*" : " ", i,
                   d->platform_index, d->device_index, d->platform_name, d->name,
                   type_name(d->type));
            printf("        driver %s, %s, %u compute units, %.1f GiB memory (%.1f GiB per "
                   "buffer), %llu KiB local, work-group %zu, fp16 %s, fp64 %s\n",
                   d->driver_version, d->device_version, d->compute_units,
                   (double)d->global_mem_bytes / (1 << 30), (double)d->max_alloc_bytes / (1 << 30),
                   (unsigned long long)d->local_mem_bytes / 1024, d->max_work_group_size,
                   d->fp16 ? "yes" : "no", d->fp64 ? "yes" : "no");
        }
        if (n == 0)
            printf("(no OpenCL devices on any platform)\n");
    }
    gpuseg_free(list);
    if (cst != GPUSEG_OK)
        return cli_fail(cst);
    if (build) {
        gpuseg_ctx *ctx = NULL;
        st = cli_ctx_create(device, &ctx);
        if (st != GPUSEG_OK)
            return cli_fail(st);
        unsigned built = 0;
        st = gpuseg_ctx_build_all(ctx, &built);
        gpuseg_program_stats ps;
        gpuseg_ctx_program_stats(ctx, &ps);
        if (st == GPUSEG_OK && !json)
            printf("built %u programs in %.3f s (%u compiled, %u from the program cache)\n", built,
                   ps.build_seconds, ps.compiled, ps.cache_hits);
        gpuseg_ctx_free(ctx);
        if (st != GPUSEG_OK)
            return cli_fail(st);
    }
    return CLI_OK;
}
