/* gpuseg/model.h: Cellpose 3 (CPnet) model files, read directly: the ZIP archive torch.save
 * writes, its pickled state dict, and the raw tensor storages. Loading validates every tensor
 * name, shape and dtype against the CPnet topology with channel widths (nbase) inferred from the
 * file, and converts all weights to float32. Host memory only; no device is involved. */
#ifndef GPUSEG_MODEL_H
#define GPUSEG_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpuseg/common.h"
#include "gpuseg/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest model file accepted (bytes), the absolute maximum. A full-size CPnet is ~26 MB; the
 * cap only stops absurd files from being read into memory. The max_model_bytes limit
 * (gpuseg/limits.h, GPUSEG_MAX_MODEL_BYTES; default 256 MiB) applies below it. */
#define GPUSEG_MODEL_MAX_FILE_BYTES ((size_t)1 << 30)
/* Most dimensions a stored tensor may have. */
#define GPUSEG_TENSOR_MAX_DIMS 8

/* Element type of a tensor as stored in the file (PyTorch storage types). */
typedef enum gpuseg_tensor_dtype {
    GPUSEG_TENSOR_F32 = 0, /* torch.FloatStorage */
    GPUSEG_TENSOR_F64,     /* torch.DoubleStorage */
    GPUSEG_TENSOR_F16,     /* torch.HalfStorage */
    GPUSEG_TENSOR_BF16,    /* torch.BFloat16Storage */
    GPUSEG_TENSOR_I64,     /* torch.LongStorage (num_batches_tracked) */
    GPUSEG_TENSOR_I32,     /* torch.IntStorage */
    GPUSEG_TENSOR_I16,     /* torch.ShortStorage */
    GPUSEG_TENSOR_I8,      /* torch.CharStorage */
    GPUSEG_TENSOR_U8,      /* torch.ByteStorage */
    GPUSEG_TENSOR_BOOL     /* torch.BoolStorage */
} gpuseg_tensor_dtype;

/* "float32", "int64", ...; "unknown" outside the enum. */
GPUSEG_API const char *gpuseg_tensor_dtype_name(gpuseg_tensor_dtype t);

/* One tensor of a loaded model. Pointers stay valid until gpuseg_model_free. */
typedef struct gpuseg_tensor_info {
    const char *name;               /* state-dict key, e.g. "output.2.weight" */
    gpuseg_tensor_dtype file_dtype; /* as stored; data is float32 whatever this is */
    int ndim;                       /* 0 for scalars such as num_batches_tracked */
    int64_t shape[GPUSEG_TENSOR_MAX_DIMS];
    size_t numel;
    /* Contiguous row-major float32 values (PyTorch's layout, e.g. OIHW for conv weights),
     * 64-byte aligned. NULL for integer/bool tensors (num_batches_tracked), which inference
     * does not use. */
    const float *data;
} gpuseg_tensor_info;

/* Summary of a loaded CPnet. */
typedef struct gpuseg_model_info {
    int nbase[5];       /* [nchan, c1, c2, c3, c4]; built-in models: [2, 32, 64, 128, 256] */
    int nout;           /* output channels: 3 (dY, dX, cellprob) for segmentation */
    int style_channels; /* length of the style vector (= nbase[4]) */
    float diam_mean;    /* diameter the model was trained at (30 for cyto3, 17 for nuclei);
                         * 30 (Cellpose's default) when the file lacks it */
    bool has_diam_mean;
    float diam_labels; /* mean training diameter; = diam_mean when the file lacks it */
    bool has_diam_labels;
    size_t n_tensors;    /* state-dict entries in the file */
    size_t n_parameters; /* learnable elements (weights and biases; no BN running stats,
                          * num_batches_tracked, diam_mean or diam_labels) */
    gpuseg_tensor_dtype weight_dtype; /* dtype of output.2.weight in the file */
} gpuseg_model_info;

typedef struct gpuseg_model gpuseg_model;

/* Loads a Cellpose 3 (CPnet) model file written by torch.save (CPnet.save_model, the built-in
 * cyto3/nuclei/... files, user-trained models). The library allocates *out; free it with
 * gpuseg_model_free. The file is read whole (at most the max_model_bytes limit) and released
 * before returning; the model keeps only names and float32 values.
 * Errors (message names the file): GPUSEG_NOT_FOUND / GPUSEG_IO (cannot read),
 * GPUSEG_TOO_LARGE, GPUSEG_UNSUPPORTED (legacy pre-1.6 PyTorch format, Cellpose 4 (SAM)
 * model, compressed ZIP entries, pickle content outside what state dicts contain),
 * GPUSEG_FORMAT (truncated or foreign file, missing tensor, wrong shape or dtype, ...),
 * GPUSEG_CHECKSUM (a ZIP entry fails its CRC-32). */
GPUSEG_API gpuseg_status gpuseg_model_load(const char *path, gpuseg_model **out);

/* gpuseg_model_load with explicit limits (NULL or 0 members: environment, else defaults; only
 * max_model_bytes is used). A file over it is refused from its size, before it is read
 * (GPUSEG_TOO_LARGE, message naming the file, both sizes and how to raise the limit). */
GPUSEG_API gpuseg_status gpuseg_model_load_ex(const char *path, const gpuseg_limits *limits,
                                              gpuseg_model **out);

/* Releases a model; accepts NULL. */
GPUSEG_API void gpuseg_model_free(gpuseg_model *m);

/* Fills *info (owned by the caller); m must be a loaded model. */
GPUSEG_API void gpuseg_model_get_info(const gpuseg_model *m, gpuseg_model_info *info);

/* The tensor named name: GPUSEG_OK and *out filled, or GPUSEG_NOT_FOUND (message names it).
 * Pointers in *out belong to the model. */
GPUSEG_API gpuseg_status gpuseg_model_tensor(const gpuseg_model *m, const char *name,
                                             gpuseg_tensor_info *out);

/* The i-th tensor in file order (i < info.n_tensors); GPUSEG_INVALID_ARGUMENT otherwise. */
GPUSEG_API gpuseg_status gpuseg_model_tensor_at(const gpuseg_model *m, size_t i,
                                                gpuseg_tensor_info *out);

/* The path the model was loaded from (owned by the model). */
GPUSEG_API const char *gpuseg_model_path(const gpuseg_model *m);

/* ---- finding model files (docs/model.md, "Finding models") ---- */

/* The folder where Cellpose 3.1 keeps its models: $CELLPOSE_LOCAL_MODELS_PATH when set and
 * not empty, else $HOME/.cellpose/models (Cellpose's MODEL_DIR), written into buf (len bytes).
 * GPUSEG_NOT_FOUND when neither variable is set; GPUSEG_INVALID_ARGUMENT when buf is too
 * small. The folder need not exist. */
GPUSEG_API gpuseg_status gpuseg_model_cellpose_dir(char *buf, size_t len);

/* Finds the model file a user means by name, writing its path into path (len bytes):
 *   - a name holding '/' or naming an existing file is a path: used when it exists;
 *   - otherwise it is looked up in each of dirs[0..n_dirs) (e.g. the folder of bundled
 *     models), then in Cellpose's folder (gpuseg_model_cellpose_dir) under the file name
 *     Cellpose 3.1 stores it as: "cyto", "cyto2" and "nuclei" as NAMEtorch_0 (nucleitorch_0,
 *     ...), every other name (cyto3, tissuenet_cp3, a model trained and added by a user, or
 *     a file name such as nucleitorch_0) as NAME itself.
 * Only regular files (or links to them) are found; what they hold is gpuseg_model_load's to
 * judge. GPUSEG_NOT_FOUND with one line naming the model and every path tried, and saying how
 * Cellpose fetches its built-in models; GPUSEG_INVALID_ARGUMENT for an empty name or a path
 * longer than len. */
GPUSEG_API gpuseg_status gpuseg_model_find(const char *name, const char *const *dirs, size_t n_dirs,
                                           char *path, size_t len);

/* The size model Cellpose keeps for the model file model_path (Cellpose's size_model_path):
 * beside it, size_cyto3.npy for cyto3, size_NAMEtorch_0.npy for cytotorch_0 / cyto2torch_0 /
 * nucleitorch_0, and MODEL_size.npy for any other model file. GPUSEG_NOT_FOUND (naming the
 * path tried) when there is none. */
GPUSEG_API gpuseg_status gpuseg_size_model_find(const char *model_path, char *path, size_t len);

/* ---- Cellpose's size model (docs/model.md, "Size model") ---- */

/* The linear regression of Cellpose 3.1's SizeModel (the dict in size_<model>.npy: 'A',
 * 'smean', 'ymean', 'diam_mean'). Arrays belong to the caller. */
typedef struct gpuseg_size_model {
    uint32_t n;          /* style length (256 for the built-in models) */
    const double *A;     /* regression weights [n] */
    const double *smean; /* mean training style [n] */
    double ymean;        /* mean log-size offset of the training set */
    double diam_mean;    /* the size model's diam_mean (replaces the network's, as in Cellpose) */
    /* 1 when smean is float32 in the file (what train_size writes): numpy then subtracts it
     * from the float32 style in float32, and so does gpuseg_size_model_style_diameter; 0:
     * in double. */
    int smean_f32;
} gpuseg_size_model;

/* Reads Cellpose's size model file (size_cyto3.npy, MODEL_size.npy, ...: what np.save writes
 * for SizeModel's dict {'A', 'smean', 'diam_mean', 'ymean'}, an object .npy whose payload is a
 * pickle). The pickle is read by a restricted, non-executing reader that resolves only numpy's
 * _reconstruct, ndarray, dtype and scalar; A and smean may be float32 or float64 vectors of the
 * same length, diam_mean and ymean Python or numpy numbers. The library allocates *out (arrays
 * included); free it with gpuseg_size_model_free. Errors name the file, in one line:
 * GPUSEG_NOT_FOUND / GPUSEG_IO (cannot read), GPUSEG_TOO_LARGE (over 16 MiB), GPUSEG_FORMAT
 * (not a .npy, a numeric .npy, truncated or corrupt pickle, a key missing, lengths differing,
 * values not finite, diam_mean <= 0), GPUSEG_UNSUPPORTED (a pickle global or opcode outside
 * what numpy writes for such a dict: message names it). */
GPUSEG_API gpuseg_status gpuseg_size_model_load(const char *path, gpuseg_size_model **out);

/* Releases a size model from gpuseg_size_model_load (not one the caller filled in); accepts
 * NULL. */
GPUSEG_API void gpuseg_size_model_free(gpuseg_size_model *sm);

/* Step 1 of SizeModel.eval, the diameter from a style vector (gpuseg_segment_result.style of
 * the pass Cellpose runs for it: CellposeModel.eval with diameter None, i.e. at rescale
 * diam_mean / diam_labels of the network, which is gpuseg_segment at diameter 0):
 *   d = max(5, exp(A . (style - smean) + log(diam_mean) + ymean)),
 * in double precision (numpy's float64) but for style - smean, float32 when smean_f32 is set; d =
 * diam_mean when the result is 0 or NaN, as Cellpose does. Step 2 (segment at rescale diam_mean /
 * d, then utils.diameters of the masks, diam_mean when there are none) and the final segmentation
 * at that diameter are what gpuseg_segment does with gpuseg_segment_params.size_model
 * (gpuseg/segment.h). GPUSEG_INVALID_ARGUMENT for NULL arrays, n != sm->n, or diam_mean <= 0. */
GPUSEG_API gpuseg_status gpuseg_size_model_style_diameter(const gpuseg_size_model *sm,
                                                          const float *style, uint32_t n,
                                                          double *diameter);

#ifdef __cplusplus
}
#endif
#endif
