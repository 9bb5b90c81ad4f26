/* model/size_internal.h: the size-model reader on bytes in memory (tests and fuzzing). */
#ifndef GPUSEG_MODEL_SIZE_INTERNAL_H
#define GPUSEG_MODEL_SIZE_INTERNAL_H

#include <stddef.h>

#include "gpuseg/model.h"

/* gpuseg_size_model_load on buf[0..n), the bytes of the file path (named in messages); does not
 * clear the error state. */
gpuseg_status gpuseg__size_model_load_mem(const unsigned char *buf, size_t n, const char *path,
                                          gpuseg_size_model **out);

#endif
