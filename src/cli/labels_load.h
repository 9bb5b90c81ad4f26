/* cli/labels_load.h: reading one 2-D label image for `gpuseg flows` and `gpuseg eval`: any format
 * gpuseg_image_read knows, plus the raw .bin + .json sidecar that `gpuseg segment` writes. */
#ifndef GPUSEG_CLI_LABELS_LOAD_H
#define GPUSEG_CLI_LABELS_LOAD_H

#include <stdint.h>
#include "gpuseg/gpuseg.h"

/* Reads path as a label image: one page, one channel, integer samples (uint8, uint16, uint32, or
 * int32 without negative values). On success *labels is a malloc'd uint32[H*W] (free() it).
 * On failure it prints the one-line error ("gpuseg: <file>: <problem>") and returns the status. */
gpuseg_status cli_labels_load(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W);

#endif
