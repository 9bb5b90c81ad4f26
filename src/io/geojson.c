/* io/geojson.c: the mask outlines as a GeoJSON FeatureCollection that QuPath imports as
 * detections (File > Import objects, or drag and drop): one Feature per non-empty outline
 * polygon (io/polygons.c), a Polygon geometry with its ring closed, in QuPath's pixel space
 * (pixel (x, y) covers [x, x + 1) x [y, y + 1), so a border pixel's centre is x + 0.5, y + 0.5).
 * Each feature is built and printed by jansson, one feature per line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gpuseg/outlines.h"
#include "io/io_internal.h"

static json_t *feature(const gpuseg_polygons *p, uint32_t i, const char *classification) {
    char name[16];
    snprintf(name, sizeof name, "%u", p->label[i]);
    json_t *ring = json_array();
    json_t *f =
        json_pack("{s:s, s:{s:s, s:[o]}, s:{s:s, s:s, s:{s:I}}}", "type", "Feature", "geometry",
                  "type", "Polygon", "coordinates", ring, "properties", "objectType", "detection",
                  "name", name, "measurements", "label", (json_int_t)p->label[i]);
    if (!f)
        return NULL;
    const size_t s = p->start[i], e = p->start[i + 1];
    for (size_t k = s; k <= e; k++) {
        size_t v = k < e ? k : s; /* the ring closes on its first vertex */
        json_t *pt =
            json_pack("[f, f]", (double)p->xy[2 * v] + 0.5, (double)p->xy[2 * v + 1] + 0.5);
        if (!pt || json_array_append_new(ring, pt) != 0) {
            json_decref(f);
            return NULL;
        }
    }
    if (classification) {
        json_t *c = json_pack("{s:s}", "name", classification);
        if (!c || json_object_set_new(json_object_get(f, "properties"), "classification", c) != 0) {
            json_decref(f);
            return NULL;
        }
    }
    return f;
}

const char gpuseg__geojson_head[] = "{\"type\": \"FeatureCollection\", \"features\": [";
const char gpuseg__geojson_tail[] = "\n]}\n";

void gpuseg__geojson_features(const gpuseg_polygons *p, const char *classification, int *first,
                              gpuseg__membuf *m) {
    for (uint32_t i = 0; i < p->n && !m->failed; i++) {
        if (p->start[i + 1] == p->start[i])
            continue;
        json_t *f = feature(p, i, classification);
        char *text = f ? json_dumps(f, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(f);
        if (!text) {
            m->failed = true;
            break;
        }
        gpuseg__membuf_put(m, (void *)(*first ? "\n" : ",\n"), *first ? 1 : 2);
        gpuseg__membuf_put(m, text, (int)strlen(text));
        free(text);
        *first = 0;
    }
}

gpuseg_status gpuseg_polygons_write_geojson(const char *path, const gpuseg_polygons *p,
                                            const char *classification) {
    gpuseg__clear_error(NULL);
    gpuseg_status st = gpuseg__polygons_check(path, p);
    if (st != GPUSEG_OK)
        return st;
    if (classification) { /* jansson takes UTF-8 only */
        json_t *t = json_string(classification);
        if (!t)
            return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                                "%s: the classification is not valid UTF-8", path);
        json_decref(t);
    }
    gpuseg__membuf m = {0};
    gpuseg__membuf_put(&m, (void *)gpuseg__geojson_head, (int)strlen(gpuseg__geojson_head));
    int first = 1;
    gpuseg__geojson_features(p, classification, &first, &m);
    gpuseg__membuf_put(&m, (void *)gpuseg__geojson_tail, (int)strlen(gpuseg__geojson_tail));
    if (m.failed) {
        free(m.buf);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    st = gpuseg__write_file_atomic(NULL, path, m.buf, m.len);
    free(m.buf);
    return st;
}
