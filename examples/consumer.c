/* examples/consumer.c: a program outside the library's tree that uses the installed libgpuseg:
 * it lists the OpenCL devices, opens a context on the chosen one, builds every kernel (through
 * the program cache) and, given an image path, prints what the file holds.
 * Build: see examples/CMakeLists.txt (find_package) or examples/build_against_install.sh. */
#include <stdio.h>

#include <gpuseg/gpuseg.h>

int main(int argc, char **argv) {
    printf("libgpuseg %s\n", gpuseg_version());
    gpuseg_device_info *devices = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg_device_list(&devices, &n);
    if (st != GPUSEG_OK) {
        fprintf(stderr, "consumer: %s\n", gpuseg_last_error());
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        printf("device %zu: %s / %s\n", i, devices[i].platform_name, devices[i].name);
    gpuseg_free(devices);

    gpuseg_ctx *ctx = NULL;
    st = gpuseg_ctx_create(NULL, &ctx);
    if (st != GPUSEG_OK) {
        fprintf(stderr, "consumer: %s: %s\n", gpuseg_status_name(st), gpuseg_last_error());
        return 1;
    }
    unsigned built = 0;
    st = gpuseg_ctx_build_all(ctx, &built);
    if (st != GPUSEG_OK) {
        fprintf(stderr, "consumer: %s\n", gpuseg_ctx_last_error(ctx));
        gpuseg_ctx_free(ctx);
        return 1;
    }
    printf("built %u programs on %s\n", built, gpuseg_ctx_device(ctx)->name);
    gpuseg_ctx_free(ctx);

    if (argc > 1) {
        gpuseg_image_info info;
        st = gpuseg_image_info_read(argv[1], &info);
        if (st != GPUSEG_OK) {
            fprintf(stderr, "consumer: %s\n", gpuseg_last_error());
            return 1;
        }
        printf("%s: %s %ux%u, %u channel(s), %s, %u page(s)\n", argv[1], info.format, info.width,
               info.height, info.channels, gpuseg_dtype_name(info.dtype), info.pages);
    }
    return 0;
}
