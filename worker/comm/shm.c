/*
 * shm.c — the shared-memory byte stream between two processes on one host.
 *
 * Owns: one single-producer single-consumer byte ring per direction in a POSIX shm segment
 * (created by the connecting side during the handshake, mapped by the other, and unlinked
 * once both have it), and the doorbell rule: a side about to sleep in poll() raises its
 * "waiting" flag in the ring and looks once more; a side that moves bytes and sees the flag
 * writes one byte on the pair's tcp socket. So running peers exchange no syscalls at all,
 * and a sleeping one is never missed; a spare doorbell only costs a spurious wake-up. A
 * full doorbell socket is fine: the peer has unread doorbells, so it will wake. The tcp
 * socket stays the failure detector: a dead peer is its EOF.
 * Never: blocks, spins, or frames messages (stream.c's header travels through the ring
 * like any byte).
 */
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#define SHM_DATA_OFFSET 4096 // head and tail on their own cache lines, data page-aligned

struct ring_control {
    _Atomic uint64_t head; // bytes ever written (producer's)
    char pad0[56];
    _Atomic uint64_t tail; // bytes ever read (consumer's)
    char pad1[56];
    uint64_t capacity;
    char pad2[56];
    _Atomic uint64_t acks;    // descriptors the consumer has finished reading (cma)
    _Atomic uint32_t revoked; // the producer gave up on an operation: descriptors are void
    char pad3[52];
    _Atomic uint32_t consumer_waiting; // about to sleep in poll(): ring the doorbell
    char pad4[60];
    _Atomic uint32_t producer_waiting;
};

struct shm_ring {
    struct ring_control *ctl;
    uint8_t *data;
    size_t capacity, map_bytes;
    char name[64];
    bool owner; // created it: unlinks the name on close (attach already did, usually)
};

static struct shm_ring *map_ring(int fd, size_t bytes, const char *name, bool owner) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        moe_fail(MOE_EIO, "comm: mmap of %s: %s", name, strerror(errno));
        return NULL;
    }
    struct shm_ring *r = calloc(1, sizeof *r);
    if (!r) {
        munmap(p, bytes);
        moe_fail(MOE_ENOMEM, "comm: out of memory for a ring");
        return NULL;
    }
    r->ctl = p;
    r->data = (uint8_t *)p + SHM_DATA_OFFSET;
    r->map_bytes = bytes;
    r->capacity = bytes - SHM_DATA_OFFSET;
    r->owner = owner;
    snprintf(r->name, sizeof r->name, "%s", name);
    return r;
}

struct shm_ring *shm_ring_create(size_t capacity, char *name, size_t name_len) {
    uint32_t rnd[2];
    RAND_bytes((unsigned char *)rnd, sizeof rnd);
    snprintf(name, name_len, "/moed-comm-%d-%08x%08x", (int)getpid(), rnd[0], rnd[1]);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        moe_fail(MOE_EIO, "comm: shm_open %s: %s", name, strerror(errno));
        return NULL;
    }
    size_t bytes = SHM_DATA_OFFSET + capacity;
    if (ftruncate(fd, (off_t)bytes) != 0) {
        moe_fail(MOE_EIO, "comm: ftruncate %s: %s", name, strerror(errno));
        close(fd);
        shm_unlink(name);
        return NULL;
    }
    struct shm_ring *r = map_ring(fd, bytes, name, true);
    close(fd);
    if (!r) {
        shm_unlink(name);
        return NULL;
    }
    r->ctl->capacity = r->capacity; // the rest is zero: a fresh ftruncate'd segment
    return r;
}

struct shm_ring *shm_ring_attach(const char *name) {
    if (name[0] != '/' || strchr(name + 1, '/')) {
        moe_fail(MOE_EINVAL, "comm: bad shared memory name \"%s\"", name);
        return NULL;
    }
    int fd = shm_open(name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        moe_fail(MOE_EIO, "comm: shm_open %s: %s", name, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= SHM_DATA_OFFSET) {
        moe_fail(MOE_EIO, "comm: shared memory %s has a bad size", name);
        close(fd);
        return NULL;
    }
    struct shm_ring *r = map_ring(fd, (size_t)st.st_size, name, false);
    close(fd);
    if (r && r->ctl->capacity != r->capacity) {
        moe_fail(MOE_EIO, "comm: shared memory %s is not a ring", name);
        shm_ring_close(r);
        return NULL;
    }
    shm_unlink(name); // both ends have it mapped now; nothing to leak if either dies
    return r;
}

void shm_ring_close(struct shm_ring *r) {
    if (!r) return;
    if (r->owner) shm_unlink(r->name); // ENOENT when the peer unlinked it: fine
    munmap(r->ctl, r->map_bytes);
    free(r);
}

/* Errors are ignored here on purpose: a peer that finished its operation and closed its
 * end may reset the socket while our last doorbell is on its way, and that is no failure.
 * A peer we still need bytes from is judged by the reader side (shm_drain_doorbell) only
 * once the ring itself can make no more progress. */
static void notify(int fd) {
    static const char one = 1;
    while (send(fd, &one, 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno == EINTR) {
    }
}

int shm_drain_doorbell(int fd, int peer) {
    char trash[256];
    for (;;) {
        long k = tcp_recv_some(fd, peer, trash, sizeof trash);
        if (k < 0) return -1;
        if (k < (long)sizeof trash) return 0;
    }
}

/* The other half of shm_arm: a peer that said it may sleep gets a doorbell. Either it sees
 * our update when it looks again after arming, or we see its flag (seq_cst on both sides). */
static void wake(_Atomic uint32_t *waiting, int fd) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(waiting, memory_order_relaxed)) notify(fd);
}

void shm_arm(struct shm_ring *tx, struct shm_ring *rx, bool on) {
    atomic_store(&tx->ctl->producer_waiting, on);
    atomic_store(&rx->ctl->consumer_waiting, on);
}

long shm_send_some(struct shm_ring *r, int fd, int peer, const void *p, size_t n) {
    uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
    size_t room = r->capacity - (size_t)(head - tail);
    size_t k = n < room ? n : room;
    if (k == 0) return 0;
    size_t at = (size_t)(head % r->capacity), first = r->capacity - at;
    if (first > k) first = k;
    memcpy(r->data + at, p, first);
    if (k > first) memcpy(r->data, (const uint8_t *)p + first, k - first);
    atomic_store_explicit(&r->ctl->head, head + k, memory_order_release);
    wake(&r->ctl->consumer_waiting, fd);
    return (long)k;
}

long shm_recv_some(struct shm_ring *r, int fd, int peer, void *p, size_t n) {
    uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
    size_t avail = (size_t)(head - tail);
    if (avail > r->capacity) { // only a corrupt or hostile peer gets here
        moe_fail(MOE_EUNAVAILABLE, "comm: rank %d's shared memory ring is corrupt", peer);
        return -1;
    }
    size_t k = n < avail ? n : avail;
    if (k == 0) return 0;
    size_t at = (size_t)(tail % r->capacity), first = r->capacity - at;
    if (first > k) first = k;
    if (p) {
        memcpy(p, r->data + at, first);
        if (k > first) memcpy((uint8_t *)p + first, r->data, k - first);
    }
    atomic_store_explicit(&r->ctl->tail, tail + k, memory_order_release);
    wake(&r->ctl->producer_waiting, fd);
    return (long)k;
}

void shm_ack(struct shm_ring *r, int fd) {
    atomic_fetch_add_explicit(&r->ctl->acks, 1, memory_order_release);
    wake(&r->ctl->producer_waiting, fd);
}
uint64_t shm_acks(const struct shm_ring *r) {
    return atomic_load_explicit(&r->ctl->acks, memory_order_acquire);
}
void shm_revoke(struct shm_ring *r, int culprit) {
    atomic_store(&r->ctl->revoked, (uint32_t)(culprit >= 0 ? culprit + 2 : 1));
}
int shm_revoked(const struct shm_ring *r) { return (int)atomic_load(&r->ctl->revoked); }
