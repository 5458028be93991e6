/*
 * cma.c — single-copy transfers between processes of one host (Linux cross-memory attach).
 *
 * Owns: reading a peer's send buffer straight into our receive buffer with
 * process_vm_readv, and the probe that tells, during the handshake, whether this pair of
 * processes may do that (same user and no ptrace restriction, or CAP_SYS_PTRACE). Open MPI's
 * shared-memory transport moves large messages the same way; copying through a ring costs
 * twice the memory bandwidth, and on a host busy with copies that is the limit.
 * Never: writes into another process, or reads anything a peer did not describe in an
 * authenticated link's ring (address, length) while it waits for our acknowledgement.
 */
#define _GNU_SOURCE // process_vm_readv
#include "transport.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>
#include <openssl/rand.h>

static uint64_t probe_value;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static void probe_init(void) {
    RAND_bytes((unsigned char *)&probe_value, sizeof probe_value);
    probe_value |= 1; // never 0, so an all-zero read cannot pass
}

void cma_probe_of_self(uint64_t *addr, uint64_t *value) {
    pthread_once(&probe_once, probe_init);
    *addr = (uint64_t)(uintptr_t)&probe_value;
    *value = probe_value;
}

bool cma_probe_peer(int pid, uint64_t addr, uint64_t value) {
    uint64_t got = 0;
    if (pid <= 0 || !addr) return false;
    struct iovec local = {.iov_base = &got, .iov_len = sizeof got};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)addr, .iov_len = sizeof got};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)sizeof got &&
           got == value;
}

long cma_read(int pid, int peer, void *dst, uint64_t src, size_t n) {
    struct iovec local = {.iov_base = dst, .iov_len = n};
    struct iovec remote = {.iov_base = (void *)(uintptr_t)src, .iov_len = n};
    for (;;) {
        ssize_t k = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (k > 0) return (long)k;
        if (k < 0 && errno == EINTR) continue;
        moe_fail(MOE_EUNAVAILABLE, "comm: reading rank %d's buffer failed: %s", peer,
                 k == 0 ? "nothing read" : errno == ESRCH ? "process gone" : strerror(errno));
        return -1;
    }
}
