/* model/find.c: where model files are: a path as given, the caller's folders, then Cellpose
 * 3.1's model folder under the file names Cellpose stores its models as (models.model_path,
 * size_model_path, MODEL_DIR). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/internal.h"
#include "gpuseg/model.h"

static bool is_file(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

gpuseg_status gpuseg_model_cellpose_dir(char *buf, size_t len) {
    if (!buf || !len)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "Cellpose model folder: no buffer");
    const char *env = getenv("CELLPOSE_LOCAL_MODELS_PATH"), *home = getenv("HOME");
    int n;
    if (env && *env)
        n = snprintf(buf, len, "%s", env);
    else if (home && *home)
        n = snprintf(buf, len, "%s/.cellpose/models", home);
    else
        return gpuseg__fail(NULL, GPUSEG_NOT_FOUND,
                            "Cellpose model folder: neither CELLPOSE_LOCAL_MODELS_PATH nor HOME "
                            "is set");
    if (n < 0 || (size_t)n >= len)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "Cellpose model folder: the path is longer than %zu bytes", len);
    return GPUSEG_OK;
}

/* Cellpose 3.1's file name for a model name (models.model_path, model_index 0). */
static void cellpose_file_name(const char *name, char *out, size_t len) {
    if (!strcmp(name, "cyto") || !strcmp(name, "cyto2") || !strcmp(name, "nuclei"))
        snprintf(out, len, "%storch_0", name);
    else
        snprintf(out, len, "%s", name);
}

gpuseg_status gpuseg_model_find(const char *name, const char *const *dirs, size_t n_dirs,
                                char *path, size_t len) {
    gpuseg__clear_error(NULL);
    if (!name || !*name || !path || !len || (n_dirs && !dirs))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "model: no name given");
    if (strchr(name, '/') || is_file(name)) {
        if ((size_t)snprintf(path, len, "%s", name) >= len)
            return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: path too long", name);
        if (!is_file(name))
            return gpuseg__fail(NULL, GPUSEG_NOT_FOUND, "%s: no such model file", name);
        return GPUSEG_OK;
    }
    char tried[8192] = "", cand[4096], fname[1024], cpdir[4096];
    size_t tl = 0;
    const size_t nd = n_dirs + 1;
    bool have_cp = gpuseg_model_cellpose_dir(cpdir, sizeof cpdir) == GPUSEG_OK;
    gpuseg__clear_error(NULL);
    for (size_t i = 0; i < nd; i++) {
        const char *dir = i < n_dirs ? dirs[i] : have_cp ? cpdir : NULL;
        if (!dir || !*dir)
            continue;
        if (i < n_dirs)
            snprintf(fname, sizeof fname, "%s", name);
        else
            cellpose_file_name(name, fname, sizeof fname);
        int n = snprintf(cand, sizeof cand, "%s/%s", dir, fname);
        if (n < 0 || (size_t)n >= sizeof cand)
            continue;
        if (is_file(cand)) {
            if ((size_t)n >= len)
                return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: path too long", cand);
            memcpy(path, cand, (size_t)n + 1);
            return GPUSEG_OK;
        }
        int k = snprintf(tried + tl, sizeof tried - tl, "%s%s", tl ? ", " : "", cand);
        if (k > 0 && (size_t)k < sizeof tried - tl)
            tl += (size_t)k;
    }
    return gpuseg__fail(NULL, GPUSEG_NOT_FOUND,
                        "model '%s': not found (looked for %s%s); give a model file path, or let "
                        "Cellpose download its built-in models once (e.g. python -m cellpose "
                        "--pretrained_model %s --dir IMAGES), which keeps them in "
                        "~/.cellpose/models or $CELLPOSE_LOCAL_MODELS_PATH",
                        name, tl ? tried : "nowhere",
                        have_cp ? "" : "; no Cellpose folder: HOME is not set", name);
}

gpuseg_status gpuseg_size_model_find(const char *model_path, char *path, size_t len) {
    gpuseg__clear_error(NULL);
    if (!model_path || !*model_path || !path || !len)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "size model: no model path given");
    const char *slash = strrchr(model_path, '/');
    const char *base = slash ? slash + 1 : model_path;
    const int dl = slash ? (int)(slash - model_path + 1) : 0;
    int n;
    if (!strcmp(base, "cyto3") || !strcmp(base, "cytotorch_0") || !strcmp(base, "cyto2torch_0") ||
        !strcmp(base, "nucleitorch_0"))
        n = snprintf(path, len, "%.*ssize_%s.npy", dl, model_path, base);
    else
        n = snprintf(path, len, "%s_size.npy", model_path);
    if (n < 0 || (size_t)n >= len)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: path too long", model_path);
    if (!is_file(path))
        return gpuseg__fail(NULL, GPUSEG_NOT_FOUND, "%s: no size model (looked for %s)", model_path,
                            path);
    return GPUSEG_OK;
}
