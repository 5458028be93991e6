/* arena_pool.c — state arenas mapped and faulted in ahead of need (see arena_pool.h). */
#define _GNU_SOURCE
#include "arena_pool.h"

#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static void *pool[ARENA_POOL_MAX];
static size_t pool_bytes[ARENA_POOL_MAX];
static int n_pool;
static long n_taken;

static int count_of(size_t bytes) {
    int k = 0;
    for (int i = 0; i < n_pool; i++) k += pool_bytes[i] == bytes;
    return k;
}

/* A mapping on huge pages with every page present: MADV_POPULATE_WRITE where the kernel has
 * it (5.14), else one write per page (the kernel's zero page is replaced by a real one). */
static void *map_populated(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
#ifdef MADV_POPULATE_WRITE
    if (madvise(p, bytes, MADV_POPULATE_WRITE) == 0) return p;
#endif
    for (size_t off = 0; off < bytes; off += 4096) ((volatile char *)p)[off] = 0;
    return p;
}

int arena_pool_prepare(size_t bytes, int count) {
    for (;;) {
        pthread_mutex_lock(&mu);
        int have = count_of(bytes), full = n_pool >= ARENA_POOL_MAX;
        pthread_mutex_unlock(&mu);
        if (have >= count || full || bytes == 0) return have;
        void *p = map_populated(bytes); /* outside the lock: a take goes on meanwhile */
        if (!p) return have;
        pthread_mutex_lock(&mu);
        if (n_pool < ARENA_POOL_MAX) {
            pool[n_pool] = p, pool_bytes[n_pool++] = bytes;
            p = NULL;
        }
        pthread_mutex_unlock(&mu);
        if (p) munmap(p, bytes);
    }
}

void *arena_pool_take(size_t bytes) {
    void *p = NULL;
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n_pool && !p; i++)
        if (pool_bytes[i] == bytes) {
            p = pool[i];
            pool[i] = pool[n_pool - 1], pool_bytes[i] = pool_bytes[n_pool - 1];
            n_pool--;
            n_taken++;
        }
    pthread_mutex_unlock(&mu);
    return p;
}

size_t arena_pool_release(void) {
    pthread_mutex_lock(&mu);
    int n = n_pool;
    void *p[ARENA_POOL_MAX];
    size_t b[ARENA_POOL_MAX], total = 0;
    memcpy(p, pool, sizeof p);
    memcpy(b, pool_bytes, sizeof b);
    n_pool = 0;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++) {
        munmap(p[i], b[i]);
        total += b[i];
    }
    return total;
}

int arena_pool_count(void) {
    pthread_mutex_lock(&mu);
    int n = n_pool;
    pthread_mutex_unlock(&mu);
    return n;
}

long arena_pool_taken(void) {
    pthread_mutex_lock(&mu);
    long n = n_taken;
    pthread_mutex_unlock(&mu);
    return n;
}
