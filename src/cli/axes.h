/* cli/axes.h: Cellpose's --z_axis / --channel_axis for `gpuseg segment`: an image read with its Z
 * axis and channel axis named by the user, whatever order the file stores them in. */
#ifndef GPUSEG_CLI_AXES_H
#define GPUSEG_CLI_AXES_H

#include <limits.h>
#include "gpuseg/gpuseg.h"

#define CLI_AXIS_NONE INT_MIN /* the axis was not given */

/* Reads path (any image format; a .npy as its raw array of 2 to 4 dimensions) and returns it as
 * gpuseg images are laid out (pages = Z, height, width, channels last). The file's array, as
 * Cellpose sees it: a .npy's own; any other file (pages, height, width, samples) without the
 * pages axis when there is one page and without the samples axis when there is one sample.
 * z_axis, channel_axis: indices into that array (negative: from the end, as numpy) or
 * CLI_AXIS_NONE. Without channel_axis, a 4-D array's channels are its last axis other than Z;
 * without z_axis, a 3-D array (after the channel axis) has Z first. The two axes left, in their
 * order, are Y and X. At most 4 channels. On failure prints one line naming the file and returns
 * the status. */
gpuseg_status cli_read_with_axes(const char *path, int z_axis, int channel_axis,
                                 gpuseg_image **out);

#endif
