/* gpuseg/gpuseg.h: the whole public C API of libgpuseg (include this one header).
 * OpenCL interoperability (device buffers) is in gpuseg/gpuseg_cl.h. */
#ifndef GPUSEG_H
#define GPUSEG_H

#include "gpuseg/common.h"
#include "gpuseg/limits.h"
#include "gpuseg/context.h"
#include "gpuseg/image.h"
#include "gpuseg/region.h"
#include "gpuseg/model.h"
#include "gpuseg/shm.h"
#include "gpuseg/flows.h"
#include "gpuseg/metrics.h"
#include "gpuseg/segment.h"
#include "gpuseg/blocks.h"
#include "gpuseg/outlines.h"
#include "gpuseg/volume.h"

#endif
