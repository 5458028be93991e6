/*
 * watch.c — the peer watcher: a thread per comm that sleeps in one poll() over every tcp
 * peer's channel-0 socket and the abort pipe, and calls comm_config.on_peer_lost the moment a
 * peer's connection closes.
 *
 * Why a thread: the rank's own threads see a killed peer only when they next touch the data
 * plane (an operation, or comm_check_peers between pieces of compute), which can be a large
 * part of a step later; the coordinator can start a recovery only once it is told. A
 * process's kernel closes its sockets the instant it dies, so a sleeping poll() wakes within
 * a scheduling delay of the kill.
 * Owns: the watcher's life (started by comm_open, joined by comm_close) and the rule that it
 * calls back at most once, never after the comm was aborted or broke by its own doing (a
 * broken comm shuts its sockets down itself, which looks like every peer closing).
 * A peer on the same host that may read our memory (cma) is also probed every few ms: an
 * exiting process's memory is detached first, and only once its kernel has freed it (tens of
 * ms per GB) are its sockets closed; the probe sees the first.
 * Never: reads or writes a byte of any link (poll asks for POLLRDHUP only: the data plane's
 * bytes stay where they are; the probe reads nothing), changes the comm's state, or blocks an
 * operation: operations and comm_check_peers still meet the dead peer on their own.
 */
#define _GNU_SOURCE // POLLRDHUP: a peer's FIN, seen without reading the stream
#include "comm_internal.h"
#include "../../common/log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

struct comm_watch {
    struct comm *c;
    pthread_t thread;
    void (*cb)(void *arg, int rank, bool exited, const char *why);
    void *arg;
    int n;                          // watched peers; pf[n] is the abort pipe
    int who[COMM_MAX_RANKS];        // the rank of pf[i]
    int pid[COMM_MAX_RANKS];        // > 0: its process, on this host with cma (probed)
    bool probe;                     // some peer is probed
    struct pollfd pf[COMM_MAX_RANKS + 1];
};

/* A same-host peer whose process is exiting: its memory is detached at the start of the
 * exit, long before its kernel has freed it and closed its sockets (tens of ms per GB), and
 * from then on process_vm_readv fails with ESRCH. Address 0 is never mapped, so a live peer
 * answers EFAULT and no byte of it is read. */
static bool gone(int pid) {
    char b;
    struct iovec local = {.iov_base = &b, .iov_len = 1};
    struct iovec remote = {.iov_base = NULL, .iov_len = 1};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) < 0 && errno == ESRCH;
}

/* Sleeps until a peer hangs up (or, probed every WATCH_PROBE_MS, is exiting) or the comm is
 * aborted (or closed); returns the index of that peer, or -1. *exiting: seen by the probe. */
#define WATCH_PROBE_MS 5
static int wait_hangup(struct comm_watch *w, bool *exiting) {
    for (;;) {
        int k = poll(w->pf, (nfds_t)w->n + 1, w->probe ? WATCH_PROBE_MS : -1);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            LOG_WARN("comm: rank %d's peer watcher stops: poll: %s", w->c->rank, strerror(errno));
            return -1;
        }
        if (w->pf[w->n].revents || atomic_load(&w->c->aborted)) return -1;
        for (int i = 0; i < w->n; i++) {
            if (w->pf[i].revents & (POLLRDHUP | POLLHUP | POLLERR)) return i;
            if (w->pid[i] > 0 && gone(w->pid[i])) return *exiting = true, i;
        }
    }
}

static void *watch_main(void *arg) {
    struct comm_watch *w = arg;
    bool exiting = false;
    int i = wait_hangup(w, &exiting);
    /* a comm that broke (or was aborted) meanwhile has shut its own sockets: the hang-up is
     * ours, and whoever broke it reports the fault with the real cause */
    if (i < 0 || atomic_load(&w->c->broken) || atomic_load(&w->c->aborted)) return NULL;
    char why[160];
    snprintf(why, sizeof why, "comm: rank %d %s, seen by the peer watcher", w->who[i],
             exiting ? "is exiting (process gone)" : "closed its connection (process gone?)");
    w->cb(w->arg, w->who[i], exiting, why);
    return NULL;
}

moe_status comm_watch_start(struct comm *c, void (*cb)(void *, int, bool, const char *),
                            void *arg) {
    if (!cb) return MOE_OK;
    struct comm_watch *w = calloc(1, sizeof *w);
    if (!w) return moe_fail(MOE_ENOMEM, "comm: out of memory for the peer watcher");
    w->c = c, w->cb = cb, w->arg = arg;
    for (int q = 0; q < c->size; q++)
        if (q != c->rank && c->peers[q].ch[0].fd >= 0) {
            const struct link *k = &c->peers[q].ch[0];
            w->pf[w->n] = (struct pollfd){.fd = k->fd, .events = POLLRDHUP};
            w->pid[w->n] = k->cma ? k->pid : 0;
            w->probe |= k->cma && k->pid > 0;
            w->who[w->n++] = q;
        }
    if (w->n == 0) { // MPI peers only: their operations find them
        free(w);
        return MOE_OK;
    }
    w->pf[w->n] = (struct pollfd){.fd = c->abort_pipe[0], .events = POLLIN};
    int e = pthread_create(&w->thread, NULL, watch_main, w);
    if (e != 0) {
        free(w);
        return moe_fail(MOE_EINTERNAL, "comm: peer watcher thread: %s", strerror(e));
    }
    c->watch = w;
    return MOE_OK;
}

void comm_watch_stop(struct comm *c) {
    struct comm_watch *w = c->watch;
    if (!w) return;
    pthread_join(w->thread, NULL); // the caller aborted the comm: the poll() has returned
    free(w);
    c->watch = NULL;
}
