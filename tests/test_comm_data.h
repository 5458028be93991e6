/*
 * test_comm_data.h — the data the comm tests move and the results they expect, computed
 * independently of worker/comm (tree_sum of kernels/tree_sum.h over known leaves), so that
 * tcp, shared memory and MPI runs are all held against the same numbers.
 */
#ifndef MOE_TEST_COMM_DATA_H
#define MOE_TEST_COMM_DATA_H

#include "../kernels/mix64.h"
#include "../kernels/tree_sum.h"
#include "../worker/comm/comm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>


/* Values with many significant bits of varying magnitude: the order of additions shows. */
static inline float td_f32(int rank, size_t i, int salt) {
    uint64_t h = mix64(((uint64_t)salt << 48) ^ ((uint64_t)rank << 40) ^ i);
    return (float)((double)(h % 2000001) - 1e6) / (float)(1 + (h >> 60)) * 1e-3f;
}
static inline double td_f64(int rank, size_t i, int salt) {
    uint64_t h = mix64(((uint64_t)salt << 48) ^ ((uint64_t)rank << 40) ^ i ^ 0x55);
    return ((double)(h % 20000000001ull) - 1e10) / (double)(1 + (h >> 58)) * 1e-7;
}
static inline int64_t td_i64(int rank, size_t i, int salt) {
    uint64_t h = mix64(((uint64_t)salt << 48) ^ ((uint64_t)rank << 40) ^ i ^ 0xaa);
    return (int64_t)(h % 2000000000001ull) - 1000000000000ll;
}

/* Bytes member rank `from` sends to rank `to` in alltoallv test `salt`: uneven, some zero. */
static inline size_t td_a2a_bytes(int from, int to, int salt, size_t scale) {
    uint64_t h = mix64(((uint64_t)salt << 32) ^ ((uint64_t)from << 16) ^ (uint64_t)to);
    if (h % 4 == 0) return 0;
    return (size_t)(h % 1000) * scale + (size_t)(h % 7);
}
static inline uint8_t td_a2a_byte(int from, int to, size_t k) {
    return (uint8_t)(from * 31 + to * 17 + k * 7 + (k >> 11));
}

/* The expected f32 allreduce of `n` elements over group g (ranks in order), salt = data set. */
static inline float *td_expect_f32(const struct comm_group *g, size_t n, int salt) {
    float **leaves = malloc(sizeof *leaves * (size_t)g->n);
    for (int m = 0; m < g->n; m++) {
        leaves[m] = malloc(sizeof(float) * (n ? n : 1));
        for (size_t i = 0; i < n; i++) leaves[m][i] = td_f32(g->ranks[m], i, salt);
    }
    tree_sum_f32(leaves, g->n, n);
    float *out = leaves[0];
    for (int m = 1; m < g->n; m++) free(leaves[m]);
    free(leaves);
    return out;
}
static inline double *td_expect_f64(const struct comm_group *g, size_t n, int salt) {
    double **leaves = malloc(sizeof *leaves * (size_t)g->n);
    for (int m = 0; m < g->n; m++) {
        leaves[m] = malloc(sizeof(double) * (n ? n : 1));
        for (size_t i = 0; i < n; i++) leaves[m][i] = td_f64(g->ranks[m], i, salt);
    }
    tree_sum_f64(leaves, g->n, n);
    double *out = leaves[0];
    for (int m = 1; m < g->n; m++) free(leaves[m]);
    free(leaves);
    return out;
}

/* Runs one alltoallv of test `salt` over g and counts wrong bytes (0 = all right); -1 when
 * the call failed. */
static inline long td_check_alltoallv(struct comm *c, int channel, const struct comm_group *g,
                                      int salt, size_t scale) {
    size_t sb[COMM_MAX_RANKS], rb[COMM_MAX_RANKS], st = 0, rt = 0;
    int me = g->ranks[g->me];
    for (int j = 0; j < g->n; j++) {
        sb[j] = td_a2a_bytes(me, g->ranks[j], salt, scale);
        rb[j] = td_a2a_bytes(g->ranks[j], me, salt, scale);
        st += sb[j], rt += rb[j];
    }
    uint8_t *s = malloc(st + 1), *r = malloc(rt + 1);
    for (int j = 0, o = 0; j < g->n; o += (int)sb[j], j++)
        for (size_t k = 0; k < sb[j]; k++) s[(size_t)o + k] = td_a2a_byte(me, g->ranks[j], k);
    memset(r, 0xee, rt + 1);
    long wrong = 0;
    if (comm_alltoallv(c, channel, g, s, sb, r, rb) != MOE_OK) {
        wrong = -1;
    } else {
        size_t o = 0;
        for (int j = 0; j < g->n; o += rb[j], j++)
            for (size_t k = 0; k < rb[j]; k++)
                wrong += r[o + k] != td_a2a_byte(g->ranks[j], me, k);
        wrong += r[rt] != 0xee; // nothing written past the end
    }
    free(s);
    free(r);
    return wrong;
}

/* Allreduce of test data set `salt` over g: elements that differ from the tree sum in any
 * bit; -1 when the call failed. */
static inline long td_check_allreduce(struct comm *c, int channel, const struct comm_group *g,
                                      size_t n, int salt) {
    int me = g->ranks[g->me];
    float *buf = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) buf[i] = td_f32(me, i, salt);
    long wrong = 0;
    if (comm_allreduce(c, channel, g, buf, n) != MOE_OK) {
        wrong = -1;
    } else {
        float *want = td_expect_f32(g, n, salt);
        for (size_t i = 0; i < n; i++) wrong += memcmp(&buf[i], &want[i], sizeof(float)) != 0;
        free(want);
    }
    free(buf);
    return wrong;
}

#endif
