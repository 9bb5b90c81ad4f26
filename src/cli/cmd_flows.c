/* cli/cmd_flows.c: `gpuseg flows LABELS -o FLOWS.npy`: the ideal flows of a label image (Cellpose
 * masks_to_flows, computed on the device) written in the network's scale, so that
 * `gpuseg masks FLOWS.npy` turns them back into masks (docs/flows.md). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "labels_load.h"

#define USAGE "flows LABELS -o FLOWS.npy [--unit] [--device SPEC] [--json]"

/* The network's flows are about 5 times the unit vectors (Cellpose divides by 5 before
 * following them), and a cell-probability logit of +-5 is far from the default threshold 0. */
#define FLOW_SCALE     5.0f
#define CELLPROB_LOGIT 5.0f

static void help(void) {
    printf("usage: gpuseg " USAGE "\n"
           "Ideal flows of a label image (Cellpose masks_to_flows, CPU path), computed on\n"
           "the OpenCL device. LABELS: PNG/TIFF/.npy/... or a .bin with its .json sidecar;\n"
           "one channel, integer labels, 0 = background.\n"
           "  -o, --output FLOWS.npy  float32 [3,H,W]: 5*dY, 5*dX, cellprob (+5 inside\n"
           "                          masks, -5 outside): the input of `gpuseg masks`\n"
           "  --unit                  write float32 [2,H,W] unit flows dY, dX instead\n"
           "                          (exactly what Cellpose masks_to_flows returns)\n"
           "  --device SPEC           OpenCL device (see `gpuseg devices`)\n"
           "  --json                  print a JSON summary instead of a line of "
           "text\n" CLI_LIMITS_HELP);
}

int gpuseg_cmd_flows(int argc, char **argv) {
    const char *out = NULL, *device = NULL;
    bool unit = false, json = false;
    const cli_opt opts[] = {CLI_OPT_STR("output", 'o', &out), CLI_OPT_FLAG("unit", 'u', &unit),
                            CLI_OPT_STR("device", 'd', &device), CLI_OPT_FLAG("json", 'j', &json),
                            CLI_OPT_END};
    int prc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS | CLI_PARSE_HELP, help, USAGE);
    if (prc >= 0)
        return prc;
    if (optind + 1 != argc || !out)
        return cli_usage(USAGE);
    const char *in = argv[optind];
    uint32_t *labels = NULL, H = 0, W = 0;
    float *flows = NULL;
    gpuseg_ctx *ctx = NULL;
    int rc = CLI_FAIL;
    if (cli_labels_load(in, &labels, &H, &W) != GPUSEG_OK)
        goto done;
    const size_t npix = (size_t)H * W;
    flows = malloc(3 * npix * sizeof *flows);
    if (!flows) {
        cli_error("%s: out of memory for %u x %u flows", in, H, W);
        goto done;
    }
    gpuseg_status st = cli_ctx_create(device, &ctx);
    if (st != GPUSEG_OK) {
        rc = cli_fail(st);
        goto done;
    }
    if ((st = gpuseg_labels_to_flows(ctx, labels, H, W, flows)) != GPUSEG_OK) {
        cli_error("%s: %s", in, gpuseg_last_error());
        goto done;
    }
    uint64_t shape[3] = {unit ? 2 : 3, H, W};
    if (!unit)
        for (size_t i = 0; i < npix; i++) {
            flows[i] *= FLOW_SCALE;
            flows[npix + i] *= FLOW_SCALE;
            flows[2 * npix + i] = labels[i] ? CELLPROB_LOGIT : -CELLPROB_LOGIT;
        }
    if ((st = gpuseg_npy_write_ex(out, GPUSEG_DTYPE_F32, 3, shape, flows, cli_write_flags)) !=
        GPUSEG_OK) {
        rc = cli_fail(st);
        goto done;
    }
    double diam = 0;
    if ((st = gpuseg_labels_diameter(labels, H, W, &diam)) != GPUSEG_OK) {
        rc = cli_fail(st);
        goto done;
    }
    size_t fg = 0;
    for (size_t i = 0; i < npix; i++)
        fg += labels[i] != 0;
    if (json)
        printf("{\"labels\": \"%s\", \"output\": \"%s\", \"height\": %u, \"width\": %u, "
               "\"mask_pixels\": %zu, \"diameter\": %.6f, \"layout\": \"%s\"}\n",
               in, out, H, W, fg, diam, unit ? "dY,dX (unit)" : "5*dY,5*dX,cellprob");
    else
        printf("%s -> %s: %u x %u, %zu mask pixels, diameter %.2f px\n", in, out, H, W, fg, diam);
    rc = CLI_OK;
done:
    gpuseg_ctx_free(ctx);
    free(labels);
    free(flows);
    return rc;
}
