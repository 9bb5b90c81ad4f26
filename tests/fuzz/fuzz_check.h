/* tests/fuzz/fuzz_check.h: the invariants every target checks after a parser returns, beyond
 * "no memory error": a failure leaves a one-line message that names the file; a success leaves
 * no stale message. A broken invariant aborts, which libFuzzer reports as a crash and the
 * replay test as a failed test. */
#ifndef GPUSEG_FUZZ_CHECK_H
#define GPUSEG_FUZZ_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/common.h"

static inline void fuzz_check_status(gpuseg_status st, const char *name) {
    const char *msg = gpuseg_last_error();
    if (st == GPUSEG_OK)
        return;
    if (!msg || !msg[0] || strchr(msg, '\n') || (name && !strstr(msg, name))) {
        fprintf(stderr,
                "fuzz: %s with a message that is empty, multi-line or lacks \"%s\": \"%s\"\n",
                gpuseg_status_name(st), name ? name : "", msg ? msg : "(null)");
        abort();
    }
}

#endif
