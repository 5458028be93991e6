/*
 * tree_sum.h — the one order in which moed adds gradients that came from different data
 * shards.
 *
 * Owns: tree_sum, the fixed pairwise tree over n leaves in which every cross-shard reduction
 * of the project adds (the single-process trainer emulating a mesh, the data plane's
 * reduce-scatter, the experts' per-source sums). The tree of [0, n) is the tree of [0, h)
 * plus the tree of [h, n), with h the largest power of two below n. Its property: when S is a
 * power of two, the tree over P*S leaves is the tree over P pods of the tree over each pod's S
 * leaves, so a pod can reduce inside itself first and the result is still the same bits
 * (docs/architecture.md, "Why a recovered run is bit-identical").
 * Never: depends on thread counts or timing: each element's additions happen in tree order.
 */
#ifndef MOE_TREE_SUM_H
#define MOE_TREE_SUM_H

#include <stddef.h>

/* Largest power of two strictly below n (n >= 2). */
static inline int tree_split(int n) {
    int h = 1;
    while (h * 2 < n) h *= 2;
    return h;
}

/* leaves[0][j] = the tree sum over i of leaves[i][j], for j < count. In place: the other
 * leaves are overwritten with partial sums. Each element sees the same additions in the same
 * order whatever count is, so a buffer can be reduced in chunks. */
#define TREE_SUM_DEFINE(name, type)                                                               \
    static inline void name(type *const *leaves, int n, size_t count) {                           \
        if (n <= 1) return;                                                                       \
        int h = tree_split(n);                                                                    \
        name(leaves, h, count);                                                                   \
        name(leaves + h, n - h, count);                                                           \
        type *a = leaves[0];                                                                      \
        const type *b = leaves[h];                                                                \
        for (size_t j = 0; j < count; j++) a[j] += b[j];                                          \
    }

TREE_SUM_DEFINE(tree_sum_f32, float)
TREE_SUM_DEFINE(tree_sum_f64, double)

#endif
