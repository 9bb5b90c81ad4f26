/* model/size.c: the style -> diameter regression of Cellpose 3.1's SizeModel
 * (SizeModel._size_estimation and the 0/NaN fallback of SizeModel.eval). */
#include <math.h>

#include "core/internal.h"
#include "gpuseg/model.h"

gpuseg_status gpuseg_size_model_style_diameter(const gpuseg_size_model *sm, const float *style,
                                               uint32_t n, double *diameter) {
    gpuseg__clear_error(NULL);
    if (!sm || !style || !diameter || !sm->A || !sm->smean)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "size model: NULL argument");
    if (n != sm->n)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "size model: a style of %u values for a size model of %u", n, sm->n);
    if (!(sm->diam_mean > 0.0))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "size model: diam_mean %g",
                            sm->diam_mean);
    double dot = 0.0;
    /* numpy: style (float32) - smean is float32 when smean is, else float64; A is float64 */
    for (uint32_t i = 0; i < n; i++)
        dot += sm->A[i] * (sm->smean_f32 ? (double)(style[i] - (float)sm->smean[i])
                                         : (double)style[i] - sm->smean[i]);
    double d = exp(dot + log(sm->diam_mean) + sm->ymean);
    d = d > 5.0 ? d : isnan(d) ? d : 5.0; /* np.maximum(5, x) keeps NaN */
    *diameter = (d == 0.0 || isnan(d)) ? sm->diam_mean : d;
    return GPUSEG_OK;
}
