/* test_quant.c — the int8 block quantisation of diloco's outer step (kernels/quant.h) against
 * an independent reference: per block the scale is the largest magnitude / 127, each value
 * rounds to the nearest multiple of it (ties to even), and the pods' decoded vectors add in
 * pod order in float32, the same bits in every order of calls. */
#include "../kernels/quant.h"
#include "check.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The reference: value i of x after encoding and decoding. */
static float decoded(const float *x, size_t n, size_t i) {
    size_t lo = i / QUANT_BLOCK * QUANT_BLOCK, hi = lo + QUANT_BLOCK < n ? lo + QUANT_BLOCK : n;
    float mx = 0;
    for (size_t j = lo; j < hi; j++) mx = fabsf(x[j]) > mx ? fabsf(x[j]) : mx;
    float s = mx / 127;
    return s > 0 ? (float)nearbyint(x[i] / s) * s : 0;
}

static void fill(float *x, size_t n, unsigned seed) {
    srand(seed);
    for (size_t i = 0; i < n; i++) x[i] = ((float)rand() / RAND_MAX - 0.5f) * (1 + i % 7);
}

int main(void) {
    enum { N = 3 * QUANT_BLOCK + 17, P = 3 }; /* a last block that is not full */
    static float x[P][N], sum[N], again[N];
    static char wire[P][N + 4 * 4 + 64];
    EXPECT(quant_bytes(N) == 4 * sizeof(float) + N);
    for (int p = 0; p < P; p++) {
        fill(x[p], N, 7 + p);
        quant_encode(wire[p], x[p], N);
    }
    char *packed = malloc(quant_bytes(N) * P);
    for (int p = 0; p < P; p++) memcpy(packed + p * quant_bytes(N), wire[p], quant_bytes(N));
    quant_sum(sum, packed, P, N);
    int bad = 0, off = 0;
    for (size_t i = 0; i < N; i++) {
        float want = 0;
        for (int p = 0; p < P; p++) want += decoded(x[p], N, i);
        if (memcmp(&want, &sum[i], sizeof want) != 0) bad++;
        /* each value is within half a step of the block's scale */
        float d = decoded(x[0], N, i), mx = 0;
        for (size_t j = i / QUANT_BLOCK * QUANT_BLOCK; j < N && j / QUANT_BLOCK == i / QUANT_BLOCK; j++)
            mx = fabsf(x[0][j]) > mx ? fabsf(x[0][j]) : mx;
        if (fabsf(d - x[0][i]) > 0.5f * mx / 127 * 1.0001f) off++;
    }
    EXPECT_MSG(bad == 0, "%d of %d sums differ from the reference's bits", bad, N);
    EXPECT_MSG(off == 0, "%d values are further than half a step from their input", off);
    quant_sum(again, packed, P, N);
    EXPECT(memcmp(sum, again, sizeof sum) == 0);

    /* a block of zeros stays zero (scale 0, no division by it); ties go to even */
    float z[QUANT_BLOCK] = {0}, one[1];
    quant_encode(wire[0], z, QUANT_BLOCK);
    quant_sum(one, wire[0], 1, 1);
    EXPECT(one[0] == 0);
    float t[3] = {127, 0.5f, 1.5f}; /* scale 1: 0.5 -> 0, 1.5 -> 2 */
    float tq[3];
    quant_encode(wire[1], t, 3);
    quant_sum(tq, wire[1], 1, 3);
    EXPECT_MSG(tq[0] == 127 && tq[1] == 0 && tq[2] == 2, "got %g %g %g", tq[0], tq[1], tq[2]);
    free(packed);
    if (failures == 0) printf("test_quant: ok\n");
    return failures != 0;
}
