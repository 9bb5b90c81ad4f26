/* cli/segment_resume.h: the resumable state of a blockwise run that streams its labels into a
 * tiled TIFF (`gpuseg segment --resume`, docs/segment.md "Large images", docs/blockwise.md
 * "Resuming"). The state is a hidden folder beside the labels, .NAME.gpuseg-resume/, holding a
 * journal and the part files of the streamed polygon outputs. The journal is a sequence of
 * records (magic, type, length, payload, CRC-32), appended and fsync'ed one at a time, so that a
 * process killed at any instant leaves a valid prefix: KEY (what decides the labels, as JSON),
 * then NORM (the percentiles), DIAM (the diameter used) and one BLOCK per finished block (its
 * labels deflated, the first pixels of its new masks, its counters, the part files' lengths). */
#ifndef GPUSEG_CLI_SEGMENT_RESUME_H
#define GPUSEG_CLI_SEGMENT_RESUME_H

#include <stdbool.h>
#include <stdint.h>

#include "gpuseg/gpuseg.h"

/* The streamed polygon outputs, in the order of seg_state's lengths. */
enum { SEG_PART_TXT, SEG_PART_ROIS, SEG_PART_GEOJSON, SEG_PARTS };

typedef struct seg_state seg_state;

/* The diameter a run settled on (DIAM), with what its summary line says about it. */
typedef struct seg_state_diam {
    double diameter, diameter_style;
    uint32_t sample_w, sample_h, estimated;
} seg_state_diam;

/* Opens the state of labels_path for the run whose key (compact JSON object text) is given.
 * resume: an existing state with the same key is continued; one with another key is refused
 * (GPUSEG_INVALID_ARGUMENT, message: what differs). Not resume: an existing state is removed
 * (*replaced = its finished blocks + 1, else 0) and a new one started. Errors through
 * cli_set_error. */
gpuseg_status seg_state_open(const char *labels_path, const char *key, bool resume, seg_state **out,
                             uint32_t *replaced);

/* What the state holds: finished blocks (0..n-1), the NORM record (NULL if none), the DIAM
 * record (NULL if none), the masks of the finished blocks (first pixels, label order), the
 * finished blocks' counters, each part file's length after the last finished block (0: none). */
uint32_t seg_state_blocks(const seg_state *s);
const float *seg_state_norm(const seg_state *s);
const seg_state_diam *seg_state_diameter(const seg_state *s);
const uint64_t *seg_state_masks(const seg_state *s, uint32_t *n);
void seg_state_counters(const seg_state *s, uint32_t *n_too_big, uint64_t *n_tiles_run);
uint64_t seg_state_part_length(const seg_state *s, int part);
/* The path of part file `part` in the state folder (static buffer per call site is not used:
 * written into buf). */
void seg_state_part_path(const seg_state *s, int part, char *buf, size_t len);
/* The state folder. */
const char *seg_state_dir(const seg_state *s);

/* Replays the labels of finished block k (core x0, y0, w, h): decompressed into labels
 * (w * h uint32, the caller's buffer). */
gpuseg_status seg_state_block_labels(seg_state *s, uint32_t k, uint32_t w, uint32_t h,
                                     uint32_t *labels);

/* Journal records (appended and fsync'ed). */
gpuseg_status seg_state_put_norm(seg_state *s, const float norm[8]);
gpuseg_status seg_state_put_diameter(seg_state *s, const seg_state_diam *d);
/* BLOCK k: its core labels deflated (seg_state_deflate), its new masks' first pixels, its
 * counters, the part files' lengths. */
gpuseg_status seg_state_put_block(seg_state *s, uint32_t k, const void *z, size_t zlen,
                                  const uint64_t *first_pixel, uint32_t n_new, uint32_t n_too_big,
                                  uint32_t n_tiles_run, const uint64_t lengths[SEG_PARTS]);
/* Deflates n uint32 labels into *z (grown as needed, *cap its size), *zlen bytes. */
gpuseg_status seg_state_deflate(const uint32_t *labels, size_t n, unsigned char **z, size_t *cap,
                                size_t *zlen);

/* The SHA-256 of a file's bytes as 64 hex digits (the model in the key). */
gpuseg_status seg_state_file_sha256(const char *path, char hex[65]);

/* Closes the state; remove: the folder and everything in it are deleted. Accepts NULL. */
void seg_state_close(seg_state *s, bool remove);

#endif
