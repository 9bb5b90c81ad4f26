/* core/abi.c: the sizes of the public structures, by name, for bindings that declare them
 * without a compiler (Python's ctypes): a binding checks its copies against these when it loads
 * the library, so a structure that grew in a newer library is an error, not memory written past
 * the binding's copy. */
#include <string.h>

#include "gpuseg/gpuseg.h"

#define ABI_ENTRY(T)                                                                               \
    { #T, sizeof(T) }

static const struct {
    const char *name;
    size_t size;
} g_sizes[] = {
    ABI_ENTRY(gpuseg_limits),          ABI_ENTRY(gpuseg_ctx_params),
    ABI_ENTRY(gpuseg_device_info),     ABI_ENTRY(gpuseg_progress),
    ABI_ENTRY(gpuseg_image),           ABI_ENTRY(gpuseg_model_info),
    ABI_ENTRY(gpuseg_segment_params),  ABI_ENTRY(gpuseg_segment_result),
    ABI_ENTRY(gpuseg_masks_params),    ABI_ENTRY(gpuseg_ap_result),
    ABI_ENTRY(gpuseg_blocks_params),   ABI_ENTRY(gpuseg_blocks_result),
    ABI_ENTRY(gpuseg_block_source),    ABI_ENTRY(gpuseg_blocks_plan),
    ABI_ENTRY(gpuseg_block_result),    ABI_ENTRY(gpuseg_blocks_event),
    ABI_ENTRY(gpuseg_shm_info),        ABI_ENTRY(gpuseg_shm_publish_params),
    ABI_ENTRY(gpuseg_image_info),      ABI_ENTRY(gpuseg_image_region_info),
    ABI_ENTRY(gpuseg_outlines_params), ABI_ENTRY(gpuseg_polygons),
};

size_t gpuseg_struct_size(const char *name) {
    if (!name)
        return 0;
    for (size_t i = 0; i < sizeof g_sizes / sizeof *g_sizes; i++)
        if (strcmp(g_sizes[i].name, name) == 0)
            return g_sizes[i].size;
    return 0;
}
