/* core/kernels_embedded.h: the table of OpenCL sources that CMake embeds from kernels/NAME.cl,
 * and the shared header kernels/common.h that core/programs.c prepends to each of them
 * (generated file gpuseg_kernels.c, see cmake/EmbedKernels.cmake). */
#ifndef GPUSEG_KERNELS_EMBEDDED_H
#define GPUSEG_KERNELS_EMBEDDED_H

typedef struct gpuseg__kernel_source {
    const char *name;   /* file name without .cl */
    const char *source; /* NUL-terminated source text */
    unsigned length;    /* bytes, without the terminating NUL */
    const char *sha256; /* hex digest of the file */
} gpuseg__kernel_source;

/* Terminated by an entry whose name is NULL. */
extern const gpuseg__kernel_source gpuseg__kernel_sources[];
extern const unsigned gpuseg__kernel_source_count;
/* kernels/common.h (name "common.h"); not a program. */
extern const gpuseg__kernel_source gpuseg__kernel_header;

#endif
