/* cli/labels_load.h: reading one 2-D label image for `gpuseg flows` and `gpuseg eval`: any format
 * gpuseg_image_read knows, plus the raw .bin + .json sidecar that `gpuseg segment` writes. */
#ifndef GPUSEG_CLI_LABELS_LOAD_H
#define GPUSEG_CLI_LABELS_LOAD_H

#include <stdbool.h>
#include <stdint.h>
#include "gpuseg/gpuseg.h"

/* Reads path as a label image: one page, one channel, integer samples (uint8, uint16, uint32, or
 * int32 without negative values). On success *labels is a malloc'd uint32[H*W] (free() it).
 * On failure it prints the one-line error ("gpuseg: <file>: <problem>") and returns the status. */
gpuseg_status cli_labels_load(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W);

/* Whether the raw label file path (.bin) is complete: its .json sidecar is there, is a JSON
 * object with a 2-D "shape" and a "dtype" of uint16 / uint32, and the file has the size they
 * give. Prints nothing (segment --skip-existing asks it of files that may well be absent). */
bool cli_labels_bin_complete(const char *path);

/* Whether path names a raw label file (.bin, any case). */
bool cli_labels_is_bin(const char *path);

/* The shape and dtype of a raw label file from its sidecar (checked as cli_labels_load does,
 * the file's size included), as an image header: format "bin", one channel, one page. On
 * failure prints the one-line error and returns the status. */
gpuseg_status cli_labels_bin_info(const char *path, gpuseg_image_info *info);

/* Reads path as labels for a consumer of images (`shm put`): a .bin + .json as a one-channel
 * U16 / U32 image (its sidecar's dtype), any other file with gpuseg_image_read_ex. On failure
 * prints the one-line error and returns the status. Free *out with gpuseg_image_free. */
gpuseg_status cli_labels_read_image(const char *path, gpuseg_image **out);

#endif
