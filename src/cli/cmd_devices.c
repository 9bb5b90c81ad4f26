/* cli/cmd_devices.c: `gpuseg devices [--device SPEC] [--json] [--build]`: every OpenCL platform
 * and device, with the one gpuseg would use marked; --build also compiles every program on it. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"

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

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

int gpuseg_cmd_devices(int argc, char **argv) {
    static const struct option opts[] = {{"device", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {"build", no_argument, 0, 'b'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *device = NULL;
    int json = 0, build = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "d:jbh", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            device = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'b':
            build = 1;
            break;
        case 'h':
            printf("usage: gpuseg devices [--device SPEC] [--json] [--build]\n"
                   "  --device SPEC  auto|gpu|cpu|N|P:D|name substring (default: $GPUSEG_DEVICE "
                   "or auto)\n"
                   "  --json         machine-readable output\n"
                   "  --build        also build every OpenCL program on the chosen device\n");
            return CLI_OK;
        default:
            return cli_usage("devices [--device SPEC] [--json] [--build]");
        }
    }
    if (optind < argc)
        return cli_usage("devices [--device SPEC] [--json] [--build]");
    gpuseg_device_info *list = NULL;
    size_t n = 0, chosen = 0;
    gpuseg_status st = gpuseg_device_list(&list, &n);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    gpuseg_status cst = gpuseg_device_choose(list, n, device, &chosen);
    if (json) {
        printf("{\"devices\": [");
        for (size_t i = 0; i < n; i++) {
            const gpuseg_device_info *d = &list[i];
            printf("%s{\"index\": %d, \"platform\": %d, \"device\": %d, \"type\": \"%s\", ",
                   i ? ", " : "", d->index, d->platform_index, d->device_index, type_name(d->type));
            printf("\"platform_name\": ");
            json_str(d->platform_name);
            printf(", \"name\": ");
            json_str(d->name);
            printf(", \"driver_version\": ");
            json_str(d->driver_version);
            printf(", \"global_mem_bytes\": %llu, \"max_alloc_bytes\": %llu, "
                   "\"local_mem_bytes\": %llu, \"max_work_group_size\": %zu, "
                   "\"compute_units\": %u, \"fp16\": %s, \"fp64\": %s, \"chosen\": %s}",
                   (unsigned long long)d->global_mem_bytes, (unsigned long long)d->max_alloc_bytes,
                   (unsigned long long)d->local_mem_bytes, d->max_work_group_size, d->compute_units,
                   d->fp16 ? "true" : "false", d->fp64 ? "true" : "false",
                   cst == GPUSEG_OK && chosen == i ? "true" : "false");
        }
        printf("]}\n");
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
