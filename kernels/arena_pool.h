/*
 * arena_pool.h — state arenas mapped and faulted in ahead of need: what a spare worker holds
 * for the slot it may be asked to play (worker/daemon/spare.c), so that a recovery's state
 * transfer writes into memory that is already there instead of taking a page fault (and the
 * kernel's zeroing) per huge page as it arrives.
 *
 * Owns: the process's pool of prepared arenas (any thread; one mutex), each an anonymous
 * mapping on transparent huge pages, populated and never written, so still all zeros.
 * Never: decides which arenas to prepare or when to let them go (the worker does), or hands
 * out an arena of another size: model_arena_alloc takes one of exactly the bytes it needs.
 */
#ifndef MOE_ARENA_POOL_H
#define MOE_ARENA_POOL_H

#include <stddef.h>

#define ARENA_POOL_MAX 8
/* model_arena_alloc maps arenas from this size up (smaller ones are calloc'd): a smaller
 * prepared arena would never be taken. */
#define ARENA_MAPPED_MIN ((size_t)4 << 20)

/* Maps and faults in arenas of `bytes` until the pool holds `count` of that size (at most
 * ARENA_POOL_MAX in all), one at a time (each joins the pool as soon as it is ready). Slow
 * (memory speed): call it off the loop. Returns how many the pool holds of that size. */
int arena_pool_prepare(size_t bytes, int count);
/* An arena of exactly `bytes` taken out of the pool (its owner frees it with munmap), or
 * NULL when none is prepared. */
void *arena_pool_take(size_t bytes);
/* Unmaps every prepared arena; returns how many bytes were released. */
size_t arena_pool_release(void);
/* Arenas in the pool now, and how many were taken out since the process started. */
int arena_pool_count(void);
long arena_pool_taken(void);

#endif
