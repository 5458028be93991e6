/*
 * bench_transfer_check — what the checksums of a state transfer cost (docs/recovery.md,
 * "Checked transfers"), next to the copy itself.
 *
 *   bench_transfer_check [MB]   (default 256)
 *
 * Over one buffer of MB megabytes (random bytes), the median of 5 timed runs after a warm-up:
 * memcpy of the buffer (a lower bound on any transfer of it: the data plane copies at least
 * once), CRC-32C of the whole buffer on one thread, and transfer_checksum's per-block
 * CRC-32C on one thread and over the OpenMP threads (what a restore's sender and receiver
 * run). Each as GB/s and as a fraction of the memcpy's time.
 */
#include "../../common/crc32c.h"
#include "../../worker/trainer/transfer_check.h"
#include "bench.h"

#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNS 5

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

enum { OP_MEMCPY, OP_CRC_ONE, OP_BLOCKS_ONE, OP_BLOCKS_ALL, N_OPS };
static const char *const names[N_OPS] = {"memcpy", "CRC-32C, one pass, 1 thread",
                                         "per-block CRC-32C, 1 thread",
                                         "per-block CRC-32C, all threads"};

static volatile uint32_t sink;

static double run(int op, unsigned char *src, unsigned char *dst, size_t n, uint32_t *sums) {
    double t0 = bench_now();
    switch (op) {
    case OP_MEMCPY: memcpy(dst, src, n); break;
    case OP_CRC_ONE: sink = moe_crc32c(0, src, n); break;
    case OP_BLOCKS_ONE: transfer_checksum(src, n, sums, 0); break;
    default: transfer_checksum(src, n, sums, 1); break;
    }
    return bench_now() - t0;
}

int main(int argc, char **argv) {
    size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 256;
    size_t n = mb << 20;
    unsigned char *src = malloc(n), *dst = malloc(n);
    uint32_t *sums = malloc(sizeof *sums * (transfer_blocks(n) + 1));
    if (!mb || !src || !dst || !sums) {
        fprintf(stderr, "bench_transfer_check: cannot allocate 2 x %zu MB\n", mb);
        return 1;
    }
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        src[i] = (unsigned char)x;
    }
    double med[N_OPS];
    for (int op = 0; op < N_OPS; op++) {
        double t[RUNS];
        run(op, src, dst, n, sums); /* warm-up: pages touched, threads started */
        for (int r = 0; r < RUNS; r++) t[r] = run(op, src, dst, n, sums);
        qsort(t, RUNS, sizeof t[0], cmp_double);
        med[op] = t[RUNS / 2];
    }
    printf("bench_transfer_check: %zu MB, blocks of %zu KiB, %d OpenMP threads\n", mb,
           TRANSFER_BLOCK_BYTES >> 10, omp_get_max_threads());
    for (int op = 0; op < N_OPS; op++)
        printf("  %-34s %8.2f ms %7.2f GB/s  %5.2fx memcpy's time\n", names[op], med[op] * 1e3,
               n / med[op] / 1e9, med[op] / med[OP_MEMCPY]);
    printf("bench_transfer_check: mb=%zu memcpy_gbs=%.2f crc_1t_gbs=%.2f blocks_1t_gbs=%.2f "
           "blocks_all_gbs=%.2f threads=%d\n", mb, n / med[0] / 1e9, n / med[1] / 1e9,
           n / med[2] / 1e9, n / med[3] / 1e9, omp_get_max_threads());
    free(src);
    free(dst);
    free(sums);
    return 0;
}
