/* cli/cmd_eval.c: `gpuseg eval GT PRED`: Cellpose's average precision (AP = TP/(TP+FP+FN)) at IoU
 * thresholds 0.5, 0.75, 0.9 of predicted label images against ground truth, for two files or two
 * folders whose files are paired by stem (docs/metrics.md), per image and pooled. */
#include <ctype.h>
#include <dirent.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "cli.h"
#include "commands.h"
#include "labels_load.h"

#define USAGE "eval GT PRED [--thresholds T1,T2,...] [--json]"
#define MAX_T 16

/* Suffixes that name a label file of an image: Cellpose's training ground truth (_masks), its
 * outputs (_cp_masks) and gpuseg's (_segmentation). Longest first where one ends another. */
static const char *const k_suffixes[] = {"_segmentation", "_cp_masks", "_masks"};
static const char *const k_exts[] = {".png", ".tif", ".tiff", ".npy", ".bin"};

typedef struct entry {
    char *key;  /* stem without a label suffix */
    char *path; /* full path */
    int suffixed;
} entry;

typedef struct list {
    entry *e;
    size_t n, cap;
} list;

static void list_free(list *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->e[i].key);
        free(l->e[i].path);
    }
    free(l->e);
}

static int has_label_ext(const char *name, size_t *stem_len) {
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof k_exts / sizeof *k_exts; i++) {
        size_t m = strlen(k_exts[i]);
        if (n > m && strcasecmp(name + n - m, k_exts[i]) == 0) {
            *stem_len = n - m;
            return 1;
        }
    }
    return 0;
}

static int cmp_entry(const void *a, const void *b) {
    const entry *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    if (c)
        return c;
    return strcmp(x->path, y->path);
}

/* Lists the label files of a folder (by extension), sorted by key. */
static int list_dir(const char *dir, list *l) {
    DIR *d = opendir(dir);
    if (!d) {
        cli_error("%s: cannot open folder", dir);
        return -1;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t stem;
        if (de->d_name[0] == '.' || !has_label_ext(de->d_name, &stem))
            continue;
        size_t plen = strlen(dir) + strlen(de->d_name) + 2;
        char *path = malloc(plen);
        char *key = malloc(stem + 1);
        if (l->n == l->cap) {
            size_t cap = l->cap ? 2 * l->cap : 64;
            entry *ne = realloc(l->e, cap * sizeof *ne);
            if (ne) {
                l->e = ne;
                l->cap = cap;
            }
        }
        if (!path || !key || l->n == l->cap) {
            free(path);
            free(key);
            closedir(d);
            cli_error("%s: out of memory", dir);
            return -1;
        }
        snprintf(path, plen, "%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(path);
            free(key);
            continue;
        }
        memcpy(key, de->d_name, stem);
        key[stem] = 0;
        int suffixed = 0;
        for (size_t i = 0; i < sizeof k_suffixes / sizeof *k_suffixes; i++) {
            size_t m = strlen(k_suffixes[i]);
            if (stem > m && strcmp(key + stem - m, k_suffixes[i]) == 0) {
                key[stem - m] = 0;
                suffixed = 1;
                break;
            }
        }
        l->e[l->n].key = key;
        l->e[l->n].path = path;
        l->e[l->n].suffixed = suffixed;
        l->n++;
    }
    closedir(d);
    qsort(l->e, l->n, sizeof *l->e, cmp_entry);
    return 0;
}

/* The one label file of `key` in a sorted list: a suffixed file wins over a bare stem (which is
 * then most likely the image itself); two suffixed files are ambiguous. NULL if none. */
static const entry *pick(const list *l, const char *key, const char *dir, int *ambiguous) {
    const entry *bare = NULL, *suf = NULL;
    *ambiguous = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->e[i].key, key) != 0)
            continue;
        const entry **slot = l->e[i].suffixed ? &suf : &bare;
        if (*slot) {
            cli_error("%s: two label files for '%s': %s and %s", dir, key, (*slot)->path,
                      l->e[i].path);
            *ambiguous = 1;
            return NULL;
        }
        *slot = &l->e[i];
    }
    return suf ? suf : bare;
}

/* n values of an array of thresholds' results as a JSON array: reals (NaN: null) from d, or
 * counts from u. */
static json_t *json_list(const double *d, const uint64_t *u, size_t n) {
    json_t *a = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(a, d ? cli_json_num(d[k]) : json_integer((json_int_t)u[k]));
    return a;
}

/* The IoU thresholds of --thresholds. */
typedef struct thresholds {
    double t[MAX_T];
    size_t n;
} thresholds;

/* --thresholds T1,T2,...: 0, or CLI_USAGE (message printed). */
static int parse_thresholds(const char *s, void *dest) {
    double *t = ((thresholds *)dest)->t;
    size_t *n = &((thresholds *)dest)->n;
    *n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == MAX_T) {
            cli_error("--thresholds: at most %d values", MAX_T);
            return CLI_USAGE;
        }
        if (!cli_parse_double("--thresholds", tok, 0.5, 1.0, &t[*n]))
            return CLI_USAGE;
        (*n)++;
    }
    if (*n == 0) {
        cli_error("--thresholds: no value in '%s'", s);
        return CLI_USAGE;
    }
    return 0;
}

typedef struct totals {
    uint64_t tp[MAX_T], fp[MAX_T], fn[MAX_T];
    double ap_sum[MAX_T];
    size_t ap_n[MAX_T];
    size_t images;
    json_t *json; /* with --json: the array of per-image objects; NULL otherwise */
} totals;

/* Scores one pair; prints its line (text) or JSON object. 0 on success. */
static int eval_pair(const char *name, const char *gt, const char *pr, const double *t, size_t nt,
                     int json, totals *tot) {
    uint32_t *a = NULL, *b = NULL, ha, wa, hb, wb;
    int rc = -1;
    if (cli_labels_load(gt, &a, &ha, &wa) != GPUSEG_OK ||
        cli_labels_load(pr, &b, &hb, &wb) != GPUSEG_OK)
        goto done;
    if (ha != hb || wa != wb) {
        cli_error("%s: %u x %u labels, but the truth %s is %u x %u", pr, hb, wb, gt, ha, wa);
        goto done;
    }
    gpuseg_ap_result r[MAX_T];
    gpuseg_status st = gpuseg_metrics_ap(a, b, ha, wa, t, nt, r);
    if (st != GPUSEG_OK) {
        cli_error("%s: %s", pr, gpuseg_last_error());
        goto done;
    }
    if (json) {
        double ap[MAX_T];
        uint64_t tp[MAX_T], fp[MAX_T], fn[MAX_T];
        for (size_t k = 0; k < nt; k++) {
            ap[k] = r[k].ap;
            tp[k] = r[k].tp;
            fp[k] = r[k].fp;
            fn[k] = r[k].fn;
        }
        json_array_append_new(tot->json,
                              json_pack("{s:o,s:o,s:o,s:i,s:i,s:o,s:o,s:o,s:o}", "name",
                                        cli_json_str(name), "truth", cli_json_str(gt), "pred",
                                        cli_json_str(pr), "n_true", (int)r[0].n_true, "n_pred",
                                        (int)r[0].n_pred, "ap", json_list(ap, NULL, nt), "tp",
                                        json_list(NULL, tp, nt), "fp", json_list(NULL, fp, nt),
                                        "fn", json_list(NULL, fn, nt)));
    } else {
        printf("%s: n_true %u, n_pred %u", name, r[0].n_true, r[0].n_pred);
        for (size_t k = 0; k < nt; k++)
            printf(" | AP@%g %.4f (TP %u FP %u FN %u)", t[k], r[k].ap, r[k].tp, r[k].fp, r[k].fn);
        printf("\n");
    }
    for (size_t k = 0; k < nt; k++) {
        tot->tp[k] += r[k].tp;
        tot->fp[k] += r[k].fp;
        tot->fn[k] += r[k].fn;
        if (!isnan(r[k].ap)) {
            tot->ap_sum[k] += r[k].ap;
            tot->ap_n[k]++;
        }
    }
    tot->images++;
    rc = 0;
done:
    free(a);
    free(b);
    return rc;
}

static double pooled_ap(const totals *tot, size_t k) {
    uint64_t den = tot->tp[k] + tot->fp[k] + tot->fn[k];
    return den ? (double)tot->tp[k] / (double)den : NAN;
}

static void print_totals(totals *tot, const double *t, size_t nt, int json) {
    if (json) {
        double pooled[MAX_T], mean[MAX_T];
        for (size_t k = 0; k < nt; k++) {
            pooled[k] = pooled_ap(tot, k);
            mean[k] = tot->ap_n[k] ? tot->ap_sum[k] / (double)tot->ap_n[k] : NAN;
        }
        json_t *images = tot->json;
        tot->json = NULL;
        cli_json_print(
            json_pack("{s:o,s:o,s:{s:o,s:o,s:o,s:o},s:o}", "thresholds", json_list(t, NULL, nt),
                      "images", images, "pooled", "ap", json_list(pooled, NULL, nt), "tp",
                      json_list(NULL, tot->tp, nt), "fp", json_list(NULL, tot->fp, nt), "fn",
                      json_list(NULL, tot->fn, nt), "mean_ap", json_list(mean, NULL, nt)),
            JSON_REAL_PRECISION(6)); /* 6 significant digits, as always */
        return;
    }
    printf("pooled over %zu image%s:", tot->images, tot->images == 1 ? "" : "s");
    for (size_t k = 0; k < nt; k++)
        printf("%s AP@%g %.4f (TP %llu FP %llu FN %llu)", k ? " |" : "", t[k], pooled_ap(tot, k),
               (unsigned long long)tot->tp[k], (unsigned long long)tot->fp[k],
               (unsigned long long)tot->fn[k]);
    printf("\nmean per-image AP:");
    for (size_t k = 0; k < nt; k++)
        printf("%s AP@%g %.4f", k ? " |" : "", t[k],
               tot->ap_n[k] ? tot->ap_sum[k] / (double)tot->ap_n[k] : NAN);
    printf("\n");
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void help(void) {
    printf("usage: gpuseg " USAGE "\n"
           "Average precision AP = TP / (TP + FP + FN) at IoU thresholds (Cellpose\n"
           "metrics.average_precision; objects counted as the largest label).\n"
           "GT and PRED: two label files, or two folders. In folders, files (.png .tif\n"
           ".tiff .npy .bin) are paired by stem, after removing a trailing _segmentation,\n"
           "_cp_masks or _masks; where a folder has both X.ext and X_<suffix>.ext, the\n"
           "suffixed file is the labels. Every truth file needs its prediction.\n"
           "  --thresholds T,...  IoU thresholds in [0.5, 1] (default 0.5,0.75,0.9)\n"
           "  --json              machine-readable output\n" CLI_LIMITS_HELP);
}

int gpuseg_cmd_eval(int argc, char **argv) {
    thresholds th = {{0.5, 0.75, 0.9}, 3};
    bool json = false;
    const cli_opt opts[] = {CLI_OPT_CALL("thresholds", 't', parse_thresholds, &th),
                            CLI_OPT_FLAG("json", 'j', &json), CLI_OPT_END};
    int prc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS | CLI_PARSE_HELP, help, USAGE);
    if (prc >= 0)
        return prc;
    const double *t = th.t;
    const size_t nt = th.n;
    if (optind + 2 != argc)
        return cli_usage(USAGE);
    const char *gt = argv[optind], *pr = argv[optind + 1];
    struct stat sg, sp;
    if (stat(gt, &sg) != 0) {
        cli_error("%s: no such file or folder", gt);
        return CLI_FAIL;
    }
    if (stat(pr, &sp) != 0) {
        cli_error("%s: no such file or folder", pr);
        return CLI_FAIL;
    }
    if (S_ISDIR(sg.st_mode) != S_ISDIR(sp.st_mode)) {
        cli_error("%s, %s: give two files or two folders", gt, pr);
        return CLI_USAGE;
    }
    totals tot;
    memset(&tot, 0, sizeof tot);
    if (json && !(tot.json = json_array())) {
        cli_error("out of memory");
        return CLI_FAIL;
    }
    int rc = CLI_OK;
    if (!S_ISDIR(sg.st_mode)) {
        if (eval_pair(base_name(pr), gt, pr, t, nt, json, &tot) != 0)
            rc = CLI_FAIL;
    } else {
        list lg = {0}, lp = {0};
        if (list_dir(gt, &lg) != 0 || list_dir(pr, &lp) != 0) {
            rc = CLI_FAIL;
        } else {
            for (size_t i = 0; i < lg.n && rc == CLI_OK; i++) {
                if (i > 0 && strcmp(lg.e[i].key, lg.e[i - 1].key) == 0)
                    continue;
                int amb;
                const entry *g = pick(&lg, lg.e[i].key, gt, &amb);
                if (amb) {
                    rc = CLI_FAIL;
                    break;
                }
                const entry *p = pick(&lp, lg.e[i].key, pr, &amb);
                if (amb) {
                    rc = CLI_FAIL;
                    break;
                }
                if (!p) {
                    cli_error("%s: no prediction for '%s' (%s)", pr, g->key, g->path);
                    rc = CLI_FAIL;
                    break;
                }
                if (eval_pair(g->key, g->path, p->path, t, nt, json, &tot) != 0)
                    rc = CLI_FAIL;
            }
            if (rc == CLI_OK && tot.images == 0) {
                cli_error("%s: no label files (.png .tif .tiff .npy .bin)", gt);
                rc = CLI_FAIL;
            }
        }
        list_free(&lg);
        list_free(&lp);
    }
    if (rc == CLI_OK)
        print_totals(&tot, t, nt, json);
    json_decref(tot.json); /* NULL after print_totals */
    fflush(stdout);
    return rc;
}
