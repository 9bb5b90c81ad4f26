/* core/digits.c: gpuseg_shortest_digits, the digits of the shortest form of a double that
 * reads back exactly (the library's gpuseg_shm_json and the command's JSON output). */
#include <stdio.h>
#include <stdlib.h>

#include "gpuseg/common.h"

int gpuseg_shortest_digits(double v) {
    char buf[40];
    for (int prec = 1; prec < 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return prec;
    }
    return 17;
}
