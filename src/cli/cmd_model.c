/* cli/cmd_model.c: `gpuseg model info [--tensors] FILE` loads a Cellpose 3 (CPnet) model file
 * the way `segment` will and prints what it found as one JSON object: inferred nbase, nout,
 * style length, diameters, tensor and parameter counts, weight dtype, and with --tensors every
 * tensor's name, dtype and shape in file order. A file that cannot be used gets one error
 * line and exit code 1. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

/* The model's description (with every tensor when tensors) as JSON. */
static json_t *model_json(const char *path, const gpuseg_model *m, bool tensors) {
    gpuseg_model_info in;
    gpuseg_model_get_info(m, &in);
    json_t *o = json_pack(
        "{s:o,s:[iiiii],s:i,s:i,s:o,s:o,s:b,s:b,s:I,s:I,s:s}", "path", cli_json_str(path), "nbase",
        in.nbase[0], in.nbase[1], in.nbase[2], in.nbase[3], in.nbase[4], "nout", in.nout,
        "style_channels", in.style_channels, "diam_mean", cli_json_num(in.diam_mean), "diam_labels",
        cli_json_num(in.diam_labels), "has_diam_mean", in.has_diam_mean, "has_diam_labels",
        in.has_diam_labels, "n_tensors", (json_int_t)in.n_tensors, "parameters",
        (json_int_t)in.n_parameters, "weight_dtype", gpuseg_tensor_dtype_name(in.weight_dtype));
    if (!o || !tensors)
        return o;
    json_t *list = json_array();
    for (size_t i = 0; i < in.n_tensors; i++) {
        gpuseg_tensor_info t;
        if (gpuseg_model_tensor_at(m, i, &t) != GPUSEG_OK)
            break;
        json_t *shape = json_array();
        for (int k = 0; k < t.ndim; k++)
            json_array_append_new(shape, json_integer((json_int_t)t.shape[k]));
        json_array_append_new(list,
                              json_pack("{s:o,s:s,s:o}", "name", cli_json_str(t.name), "dtype",
                                        gpuseg_tensor_dtype_name(t.file_dtype), "shape", shape));
    }
    json_object_set_new(o, "tensors", list);
    return o;
}

#define USAGE "model info [--tensors] FILE"

static void help(void) {
    printf("usage: gpuseg %s\n"
           "Loads a Cellpose 3 (CPnet) model file (torch.save of the state dict) and "
           "prints {\"path\", \"nbase\", \"nout\", \"style_channels\", \"diam_mean\", "
           "\"diam_labels\", \"has_diam_labels\", \"n_tensors\", \"parameters\", "
           "\"weight_dtype\"} as JSON.\n"
           "  --tensors  also list every tensor (name, dtype, shape) in file "
           "order\n" CLI_LIMITS_HELP,
           USAGE);
}

int gpuseg_cmd_model(int argc, char **argv) {
    bool tensors = false;
    const cli_opt opts[] = {CLI_OPT_FLAG("tensors", 't', &tensors), CLI_OPT_END};
    int rc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS | CLI_PARSE_HELP, help, USAGE);
    if (rc >= 0)
        return rc;
    if (argc - optind != 2 || strcmp(argv[optind], "info") != 0)
        return cli_usage(USAGE);
    const char *path = argv[optind + 1];
    gpuseg_model *m = NULL;
    gpuseg_status st = gpuseg_model_load_ex(path, &cli_limits, &m);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    rc = cli_json_print(model_json(path, m, tensors), 0) == 0 ? CLI_OK : CLI_FAIL;
    gpuseg_model_free(m);
    return rc;
}
