/* quant.c — int8 block quantisation (see quant.h). */
#include "quant.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

static size_t blocks(size_t n) { return (n + QUANT_BLOCK - 1) / QUANT_BLOCK; }

size_t quant_bytes(size_t n) { return blocks(n) * sizeof(real) + n; }

void quant_encode(void *out, const real *x, size_t n) {
    real *scale = out; // (blocks) then int8 q (n)
    int8_t *q = (int8_t *)((char *)out + blocks(n) * sizeof(real));
    for (size_t b = 0; b < blocks(n); b++) {
        size_t lo = b * QUANT_BLOCK, hi = lo + QUANT_BLOCK < n ? lo + QUANT_BLOCK : n;
        real mx = 0;
        for (size_t i = lo; i < hi; i++)
            if (fabs(x[i]) > mx) mx = (real)fabs(x[i]);
        real s = mx / 127;
        memcpy(&scale[b], &s, sizeof s);
        for (size_t i = lo; i < hi; i++) {
            long v = s > 0 ? lrint(x[i] / s) : 0; /* the default rounding: ties to even */
            q[i] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
        }
    }
}

void quant_sum(real *sum, const void *in, int count, size_t n) {
    size_t each = quant_bytes(n), nb = blocks(n);
    memset(sum, 0, sizeof(real) * n);
    for (int k = 0; k < count; k++) {
        const char *v = (const char *)in + (size_t)k * each;
        const int8_t *q = (const int8_t *)(v + nb * sizeof(real));
        for (size_t b = 0; b < nb; b++) {
            real s;
            memcpy(&s, v + b * sizeof(real), sizeof s);
            size_t lo = b * QUANT_BLOCK, hi = lo + QUANT_BLOCK < n ? lo + QUANT_BLOCK : n;
            for (size_t i = lo; i < hi; i++) sum[i] += (real)q[i] * s;
        }
    }
}
