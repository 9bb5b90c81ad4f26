/* core/kernel_defs.h: the host constants that kernels also use, defined once. core/programs.c
 * passes each to every program as a build option (-DNAME=value), so they are part of every
 * program's cache key; a kernel that needs one checks that it is defined (#error otherwise). */
#ifndef GPUSEG_KERNEL_DEFS_H
#define GPUSEG_KERNEL_DEFS_H

#include "gpuseg/image.h"

/* Work-group size of the per-mask kernels (kernels/masks_fill.cl, src/flow/masks.c). */
#define GPUSEG__MASKS_WG 64
/* Pixels per work-item of l2f_local (kernels/labels_to_flows.cl, src/flow/labels_to_flows.c). */
#define GPUSEG__L2F_SLOTS 16
/* Per-channel state of the percentile normalisation (kernels/prep.cl, src/prep/normalize.c): the
 * 4 remaining ranks from word ST_RANK. */
#define GPUSEG__PREP_ST_RANK 7

/* X(kernel name, host value) for every constant above, and the gpuseg_dtype codes that
 * kernels/prep.cl reads from raw images. */
#define GPUSEG__KERNEL_DEFS(X)                                                                     \
    X("MASKS_WG", GPUSEG__MASKS_WG)                                                                \
    X("L2F_SLOTS", GPUSEG__L2F_SLOTS)                                                              \
    X("ST_RANK", GPUSEG__PREP_ST_RANK)                                                             \
    X("DT_U8", GPUSEG_DTYPE_U8)                                                                    \
    X("DT_U16", GPUSEG_DTYPE_U16)                                                                  \
    X("DT_U32", GPUSEG_DTYPE_U32)                                                                  \
    X("DT_I32", GPUSEG_DTYPE_I32)                                                                  \
    X("DT_F32", GPUSEG_DTYPE_F32)

#endif
