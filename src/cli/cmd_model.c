/* cli/cmd_model.c: `gpuseg model info [--tensors] FILE` loads a Cellpose 3 (CPnet) model file
 * the way `segment` will and prints what it found as one JSON object: inferred nbase, nout,
 * style length, diameters, tensor and parameter counts, weight dtype, and with --tensors every
 * tensor's name, dtype and shape in file order. A file that cannot be used gets one error
 * line and exit code 1. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"

static void json_str(const char *s) {
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if (*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    putchar('"');
}

int gpuseg_cmd_model(int argc, char **argv) {
    const char *use = "model info [--tensors] FILE";
    static const struct option opts[] = {{"tensors", no_argument, NULL, 't'},
                                         CLI_LIMITS_LONG_OPTIONS,
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int tensors = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "th", opts, NULL)) != -1) {
        if (c == 't') {
            tensors = 1;
        } else if (c == 'h') {
            printf("usage: gpuseg %s\n"
                   "Loads a Cellpose 3 (CPnet) model file (torch.save of the state dict) and "
                   "prints {\"path\", \"nbase\", \"nout\", \"style_channels\", \"diam_mean\", "
                   "\"diam_labels\", \"has_diam_labels\", \"n_tensors\", \"parameters\", "
                   "\"weight_dtype\"} as JSON.\n"
                   "  --tensors  also list every tensor (name, dtype, shape) in file "
                   "order\n" CLI_LIMITS_HELP,
                   use);
            return CLI_OK;
        } else {
            const int rc = cli_other_option(0, c, optarg, use);
            if (rc != CLI_OK)
                return rc;
        }
    }
    if (argc - optind != 2 || strcmp(argv[optind], "info") != 0)
        return cli_usage(use);
    const char *path = argv[optind + 1];
    gpuseg_model *m = NULL;
    gpuseg_status st = gpuseg_model_load(path, &m);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    gpuseg_model_info in;
    gpuseg_model_get_info(m, &in);
    printf("{\"path\": ");
    json_str(path);
    printf(", \"nbase\": [%d, %d, %d, %d, %d], \"nout\": %d, \"style_channels\": %d, "
           "\"diam_mean\": %.9g, \"diam_labels\": %.9g, \"has_diam_mean\": %s, "
           "\"has_diam_labels\": %s, \"n_tensors\": %zu, \"parameters\": %zu, "
           "\"weight_dtype\": \"%s\"",
           in.nbase[0], in.nbase[1], in.nbase[2], in.nbase[3], in.nbase[4], in.nout,
           in.style_channels, in.diam_mean, in.diam_labels, in.has_diam_mean ? "true" : "false",
           in.has_diam_labels ? "true" : "false", in.n_tensors, in.n_parameters,
           gpuseg_tensor_dtype_name(in.weight_dtype));
    if (tensors) {
        printf(", \"tensors\": [");
        for (size_t i = 0; i < in.n_tensors; i++) {
            gpuseg_tensor_info t;
            if (gpuseg_model_tensor_at(m, i, &t) != GPUSEG_OK)
                break;
            printf("%s{\"name\": ", i ? ", " : "");
            json_str(t.name);
            printf(", \"dtype\": \"%s\", \"shape\": [", gpuseg_tensor_dtype_name(t.file_dtype));
            for (int k = 0; k < t.ndim; k++)
                printf("%s%lld", k ? ", " : "", (long long)t.shape[k]);
            printf("]}");
        }
        printf("]");
    }
    printf("}\n");
    gpuseg_model_free(m);
    return CLI_OK;
}
