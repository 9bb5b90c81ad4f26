/* core/limits.c: the size limits (gpuseg/limits.h): defaults, parsing of "4G"-style counts,
 * resolution against the environment, and the pieces of the one-line messages that name a
 * limit and how to raise it. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

void gpuseg_limits_default(gpuseg_limits *l) {
    if (!l)
        return;
    l->max_pixels = GPUSEG_DEFAULT_MAX_PIXELS;
    l->max_objects = GPUSEG_DEFAULT_MAX_OBJECTS;
    l->max_model_bytes = GPUSEG_DEFAULT_MAX_MODEL_BYTES;
}

gpuseg_status gpuseg_limit_parse(const char *text, uint64_t *out) {
    if (!text || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_limit_parse: NULL argument");
    const char *p = text;
    uint64_t v = 0;
    bool digits = false, overflow = false;
    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            v = v * 10 + d;
        digits = true;
        p++;
    }
    unsigned shift = 0;
    switch (toupper((unsigned char)*p)) {
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 'T':
        shift = 40;
        break;
    default:
        break;
    }
    if (shift)
        p++;
    if (!digits || *p || v == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "'%.40s' is not a positive count (digits with an optional K, M, G or "
                            "T suffix)",
                            text);
    if (overflow || v > (UINT64_MAX >> shift))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "'%.40s' is too large", text);
    *out = v << shift;
    return GPUSEG_OK;
}

typedef struct {
    const char *member, *env, *flag;
    uint64_t def, max;
} limit_desc;

static const limit_desc DESC[3] = {
    {"max_pixels", "GPUSEG_MAX_PIXELS", "--max-pixels", GPUSEG_DEFAULT_MAX_PIXELS,
     GPUSEG_LIMIT_MAX_PIXELS},
    {"max_objects", "GPUSEG_MAX_OBJECTS", "--max-objects", GPUSEG_DEFAULT_MAX_OBJECTS,
     GPUSEG_LIMIT_MAX_OBJECTS},
    {"max_model_bytes", "GPUSEG_MAX_MODEL_BYTES", "--max-model-bytes",
     GPUSEG_DEFAULT_MAX_MODEL_BYTES, GPUSEG_LIMIT_MAX_MODEL_BYTES},
};

static gpuseg_status resolve_one(const limit_desc *d, uint64_t in, uint64_t *out) {
    uint64_t v = in;
    const char *from = d->member;
    if (v == 0) {
        const char *e = getenv(d->env);
        if (e && *e) {
            if (gpuseg_limit_parse(e, &v) != GPUSEG_OK)
                return gpuseg__wrap(NULL, GPUSEG_INVALID_ARGUMENT, "%s", d->env);
            from = d->env;
        }
    }
    if (v == 0)
        v = d->def;
    if (v > d->max)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: %llu is over the most gpuseg supports (%llu)", from,
                            (unsigned long long)v, (unsigned long long)d->max);
    *out = v;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_limits_resolve(const gpuseg_limits *in, gpuseg_limits *out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_limits_resolve: NULL out");
    gpuseg_limits zero = {0, 0, 0}, r;
    if (!in)
        in = &zero;
    gpuseg_status st;
    if ((st = resolve_one(&DESC[0], in->max_pixels, &r.max_pixels)) != GPUSEG_OK ||
        (st = resolve_one(&DESC[1], in->max_objects, &r.max_objects)) != GPUSEG_OK ||
        (st = resolve_one(&DESC[2], in->max_model_bytes, &r.max_model_bytes)) != GPUSEG_OK)
        return st;
    *out = r;
    return GPUSEG_OK;
}

const char *gpuseg__limit_hint(gpuseg__limit which, uint64_t limit, char *buf, size_t len) {
    const limit_desc *d = &DESC[which];
    if (limit >= d->max)
        snprintf(buf, len, "the most gpuseg supports");
    else
        snprintf(buf, len, "%s / %s", d->flag, d->env);
    return buf;
}

const char *gpuseg__fmt_count(uint64_t v, char *buf, size_t len) {
    /* Three significant digits with a decimal prefix, as people read sizes: 4.9 G, 1.07 G. */
    if (v >= 1000000000ull)
        snprintf(buf, len, "%.3g G", (double)v / 1e9);
    else if (v >= 1000000ull)
        snprintf(buf, len, "%.3g M", (double)v / 1e6);
    else if (v >= 10000ull)
        snprintf(buf, len, "%.3g k", (double)v / 1e3);
    else
        snprintf(buf, len, "%llu ", (unsigned long long)v);
    return buf;
}

unsigned gpuseg__write_flags(unsigned flags) {
    const char *e = getenv("GPUSEG_ALLOW_SPECIAL_OUTPUT");
    if (e && *e && strcmp(e, "0") != 0)
        flags |= GPUSEG_WRITE_ALLOW_SPECIAL;
    return flags;
}
