/* ops/conv_choice.c: the convolution choice table on disk, beside the program cache, so that
 * AUTO measures each layer shape once per device instead of once per process.
 * File <cache_dir>/<key>.convchoice, key = SHA-256 over the format version, the device identity
 * (platform, vendor, device, versions, driver), the direct kernel's blocking, the GEMM's tuned
 * parameter sets and the embedded sources of the convolution kernels (new kernels, a new driver
 * or a new tuning measure again). Text layout:
 * a line "gpuseg-conv-choice 3 N", then N lines "batch cin cout height width ksize impl
 * us_clblast us_direct us_winograd us_gemm" (0: not measured; formats 1 and 2, before Winograd
 * and the GEMM, had fewer fields and are refused as malformed). Every field is range-checked; a
 * file that fails any check is ignored (the shapes are measured again). Writes go through a
 * temporary file and a rename. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels_embedded.h"
#include "ops/ops_internal.h"

#define CHOICE_FORMAT  3
#define CHOICE_MAGIC   "gpuseg-conv-choice"
#define CHOICE_MAX_LEN (GPUSEG__OPS_CHOICES * 128 + 64)

static bool choice_path(const gpuseg__ops *ops, char *path, size_t len) {
    const gpuseg_ctx *ctx = ops->ctx;
    if (!ctx->use_cache || !ctx->cache_dir[0])
        return false;
    gpuseg__sha256 s;
    gpuseg__sha256_init(&s);
    char buf[96];
    snprintf(buf, sizeof buf, "%s %d tile %u %u %u layout %u 1x1 %u %u", CHOICE_MAGIC,
             CHOICE_FORMAT, ops->tile.rows, ops->tile.couts, ops->tile.xvecs, ops->tile.layout,
             ops->tile.couts1, ops->tile.xvecs1);
    gpuseg__sha256_str(&s, buf);
    gpuseg__sha256_device(&s, ctx);
    /* the GEMM's tuned sets (the choice was measured with them: tuning again measures again) */
    for (unsigned i = 0; i < ops->n_tuned; i++) {
        const gpuseg__gemm_tuned *t = &ops->tuned[i];
        snprintf(buf, sizeof buf, "tuned %u %u %u %u %u %u: %u %u %u %u %u %u %u", t->batch, t->cin,
                 t->cout, t->height, t->width, t->ksize, t->p.tm, t->p.th, t->p.tw, t->p.tk,
                 t->p.wm, t->p.wn, t->p.pad);
        gpuseg__sha256_str(&s, buf);
    }
    for (const gpuseg__kernel_source *k = gpuseg__kernel_sources; k->name; k++)
        if (strcmp(k->name, "conv") == 0 || strcmp(k->name, "conv_direct") == 0 ||
            strcmp(k->name, "conv_winograd") == 0 || strcmp(k->name, "conv_gemm") == 0)
            gpuseg__sha256_str(&s, k->sha256);
    unsigned char d[32];
    char hex[65];
    gpuseg__sha256_final(&s, d);
    gpuseg__sha256_hex(d, hex);
    return snprintf(path, len, "%s/%s.convchoice", ctx->cache_dir, hex) < (int)len;
}

/* Parses the file into entries (at most max); returns the count, or -1 if anything is off. */
static int parse(const char *text, gpuseg__conv_choice_entry *e, unsigned max) {
    int fmt = 0, n = -1, used = 0;
    if (sscanf(text, CHOICE_MAGIC " %d %d%n", &fmt, &n, &used) != 2 || fmt != CHOICE_FORMAT ||
        n < 0 || (unsigned)n > max)
        return -1;
    const char *p = text + used;
    for (int i = 0; i < n; i++) {
        unsigned v[6];
        int impl;
        double uc, ud, uw, ug;
        if (sscanf(p, " %u %u %u %u %u %u %d %lf %lf %lf %lf%n", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &impl, &uc, &ud, &uw, &ug, &used) != 11)
            return -1;
        p += used;
        if (!v[0] || !v[1] || !v[2] || !v[3] || !v[4] || (v[5] != 1 && v[5] != 3) ||
            (impl != GPUSEG__CONV_CLBLAST && impl != GPUSEG__CONV_DIRECT &&
             impl != GPUSEG__CONV_GEMM && (impl != GPUSEG__CONV_WINOGRAD || v[5] != 3)) ||
            !(uc >= 0) || !(ud >= 0) || !(uw >= 0) || !(ug >= 0))
            return -1;
        e[i] = (gpuseg__conv_choice_entry){v[0], v[1],      v[2],      v[3],      v[4],     v[5],
                                           impl, uc * 1e-6, ud * 1e-6, uw * 1e-6, ug * 1e-6};
    }
    return n;
}

static int read_entries(gpuseg__ops *ops, const char *path, gpuseg__conv_choice_entry *e) {
    void *data = NULL;
    size_t n = 0;
    if (gpuseg__read_file(NULL, path, CHOICE_MAX_LEN, &data, &n) != GPUSEG_OK) {
        gpuseg__clear_error(NULL); /* missing or unreadable: measure */
        return 0;
    }
    char *text = realloc(data, n + 1);
    if (!text) {
        free(data);
        return 0;
    }
    text[n] = '\0';
    int count = parse(text, e, GPUSEG__OPS_CHOICES);
    free(text);
    if (count < 0) {
        gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG, "%s: malformed; measuring again", path);
        return 0;
    }
    return count;
}

void gpuseg__conv_choice_load(gpuseg__ops *ops) {
    char path[1200];
    if (!choice_path(ops, path, sizeof path))
        return;
    int n = read_entries(ops, path, ops->choices);
    ops->n_choices = n > 0 ? (unsigned)n : 0;
}

static bool same_shape(const gpuseg__conv_choice_entry *a, const gpuseg__conv_choice_entry *b) {
    return a->batch == b->batch && a->cin == b->cin && a->cout == b->cout &&
           a->height == b->height && a->width == b->width && a->ksize == b->ksize;
}

void gpuseg__conv_choice_store(gpuseg__ops *ops) {
    char path[1200];
    if (!choice_path(ops, path, sizeof path))
        return;
    /* Merge with what other processes stored meanwhile; ours win for the same shape. */
    gpuseg__conv_choice_entry all[GPUSEG__OPS_CHOICES];
    int n = read_entries(ops, path, all);
    for (unsigned i = 0; i < ops->n_choices; i++) {
        int j = 0;
        while (j < n && !same_shape(&all[j], &ops->choices[i]))
            j++;
        if (j == n && n == GPUSEG__OPS_CHOICES)
            break;
        all[j] = ops->choices[i];
        if (j == n)
            n++;
    }
    char *text = malloc(CHOICE_MAX_LEN);
    if (!text)
        return;
    size_t len =
        (size_t)snprintf(text, CHOICE_MAX_LEN, "%s %d %d\n", CHOICE_MAGIC, CHOICE_FORMAT, n);
    for (int i = 0; i < n && len < CHOICE_MAX_LEN; i++)
        len += (size_t)snprintf(
            text + len, CHOICE_MAX_LEN - len, "%u %u %u %u %u %u %d %.1f %.1f %.1f %.1f\n",
            all[i].batch, all[i].cin, all[i].cout, all[i].height, all[i].width, all[i].ksize,
            all[i].impl, all[i].seconds_clblast * 1e6, all[i].seconds_direct * 1e6,
            all[i].seconds_winograd * 1e6, all[i].seconds_gemm * 1e6);
    /* The folder exists once a program was cached; if it does not (or is read-only), the choice
     * is simply measured again next time. */
    if (len < CHOICE_MAX_LEN && gpuseg__write_file_atomic(NULL, path, text, len) != GPUSEG_OK) {
        gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG, "conv choice: %s", gpuseg_last_error());
        gpuseg__clear_error(NULL);
    }
    free(text);
}
