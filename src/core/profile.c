/* core/profile.c: the per-kernel profile behind GPUSEG_PROFILE (bench/): OpenCL profiling
 * events of the kernels the library enqueues, summed per kernel name. Events wait in a small
 * pending list and are read when it fills or when the profile is read, so profiling does not
 * serialise the queue. The library only records; bench programs print. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#define PENDING_MAX 1024

struct gpuseg__profile {
    cl_event pending[PENDING_MAX];
    unsigned pending_slot[PENDING_MAX]; /* index into times */
    unsigned n_pending;
    gpuseg__kernel_time times[GPUSEG__MAX_KERNELS];
    unsigned n_times;
};

gpuseg__profile *gpuseg__profile_new(void) {
    const char *env = getenv("GPUSEG_PROFILE");
    if (!env || !*env || strcmp(env, "0") == 0)
        return NULL;
    return calloc(1, sizeof(gpuseg__profile));
}

/* Reads the pending events' times into the table (waiting for them) and releases them. */
static gpuseg_status drain(gpuseg_ctx *ctx, gpuseg__profile *p) {
    gpuseg_status st = GPUSEG_OK;
    cl_int err = p->n_pending ? clWaitForEvents(p->n_pending, p->pending) : CL_SUCCESS;
    if (err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "profile: clWaitForEvents");
    for (unsigned i = 0; i < p->n_pending; i++) {
        cl_ulong t0 = 0, t1 = 0;
        if (st == GPUSEG_OK &&
            clGetEventProfilingInfo(p->pending[i], CL_PROFILING_COMMAND_START, sizeof t0, &t0,
                                    NULL) == CL_SUCCESS &&
            clGetEventProfilingInfo(p->pending[i], CL_PROFILING_COMMAND_END, sizeof t1, &t1,
                                    NULL) == CL_SUCCESS &&
            t1 >= t0) {
            p->times[p->pending_slot[i]].seconds += (double)(t1 - t0) * 1e-9;
        }
        clReleaseEvent(p->pending[i]);
    }
    p->n_pending = 0;
    return st;
}

void gpuseg__profile_event(gpuseg_ctx *ctx, const char *name, cl_event ev) {
    gpuseg__profile *p = ctx ? ctx->prof : NULL;
    if (!p || !ev) {
        if (ev)
            clReleaseEvent(ev);
        return;
    }
    unsigned slot = 0;
    while (slot < p->n_times && strcmp(p->times[slot].name, name) != 0)
        slot++;
    if (slot == p->n_times) {
        if (p->n_times == GPUSEG__MAX_KERNELS) { /* table full: the last row takes the rest */
            slot = p->n_times - 1;
            snprintf(p->times[slot].name, sizeof p->times[slot].name, "(other kernels)");
        } else {
            snprintf(p->times[slot].name, sizeof p->times[slot].name, "%s", name);
            p->n_times++;
        }
    }
    p->times[slot].count++;
    if (p->n_pending == PENDING_MAX)
        (void)drain(ctx, p); /* a failure here shows up as missing time, not as a wrong result */
    p->pending[p->n_pending] = ev;
    p->pending_slot[p->n_pending++] = slot;
}

gpuseg_status gpuseg__profile_read(gpuseg_ctx *ctx, const gpuseg__kernel_time **times,
                                   unsigned *n) {
    *times = NULL;
    *n = 0;
    gpuseg__profile *p = ctx->prof;
    if (!p)
        return GPUSEG_OK;
    gpuseg_status st = drain(ctx, p);
    *times = p->times;
    *n = p->n_times;
    return st;
}

/* Waits for and releases the events not yet booked (their times are dropped). */
static void drop_pending(gpuseg__profile *p) {
    if (p->n_pending)
        clWaitForEvents(p->n_pending, p->pending);
    for (unsigned i = 0; i < p->n_pending; i++)
        clReleaseEvent(p->pending[i]);
    p->n_pending = 0;
}

void gpuseg__profile_reset(gpuseg_ctx *ctx) {
    gpuseg__profile *p = ctx->prof;
    if (!p)
        return;
    drop_pending(p);
    memset(p, 0, sizeof *p);
}

void gpuseg__profile_free(gpuseg__profile *p) {
    if (!p)
        return;
    drop_pending(p);
    free(p);
}
