/*
 * mix64.h — the counter-based hash behind every "pure function of (seed, ...)" in moed.
 *
 * Owns: the splitmix64 finaliser, a bijection on 64 bits with full avalanche. Initialisation
 * (kernels/model.c) and the data order (worker/trainer/data.c) both derive their randomness
 * from it, so no random state is carried between steps and any value can be recomputed from
 * its coordinates. docs/model.md specifies it.
 */
#ifndef MOE_MIX64_H
#define MOE_MIX64_H

#include <stdint.h>

static inline uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

#endif
