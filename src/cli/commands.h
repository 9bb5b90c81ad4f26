/* cli/commands.h: the table of `gpuseg` subcommands. Each X(name, summary) entry is implemented
 * by `int gpuseg_cmd_<name>(int argc, char **argv)` in src/cli/cmd_<name>.c, where argv[0] is
 * the subcommand's name; it returns the process exit code. */
#ifndef GPUSEG_CLI_COMMANDS_H
#define GPUSEG_CLI_COMMANDS_H

#define GPUSEG_COMMANDS(X)                                                                         \
    X(devices, "list OpenCL platforms and devices, marking the one gpuseg would use")              \
    X(cache, "show or clear the compiled-program cache (gpuseg cache dir|clear)")                  \
    X(flows, "ideal flows of a label image (Cellpose masks_to_flows) as FLOWS.npy")                \
    X(eval, "average precision (AP@0.5/0.75/0.9, TP/FP/FN) of label files or folders")             \
    X(info, "print size, channels, dtype and pages of image files as JSON lines")                  \
    X(masks, "flows (float32 [3,H,W] .npy: dY, dX, cellprob) -> label image, as Cellpose")         \
    X(save, "save the labels of a shared-memory segment to a file (the saver process)")            \
    X(shm, "list, publish, remove or clean shared-memory label segments")                          \
    X(segment, "segment images with a Cellpose 3 model (flows, masks) as CellposeModel.eval")      \
    X(model, "describe a Cellpose 3 (CPnet) model file as JSON (gpuseg model info FILE)")

#define GPUSEG_DECLARE_CMD_(name, summary) int gpuseg_cmd_##name(int argc, char **argv);
GPUSEG_COMMANDS(GPUSEG_DECLARE_CMD_)
#undef GPUSEG_DECLARE_CMD_

#endif
