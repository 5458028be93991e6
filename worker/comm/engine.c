/*
 * engine.c — the progress engine: moves the transfers of one operation with every peer at
 * the same time, until each is done or the operation has failed; and the broken state that
 * a failed operation leaves behind.
 *
 * Owns: the never-hang rule. Each transfer sends and receives simultaneously (a poll() over
 * both directions of every link, plus the comm's abort pipe), so no schedule of peers can
 * deadlock; a broken connection fails the operation at once; a transfer that moves no byte
 * for timeout_s fails it with MOE_EUNAVAILABLE naming the peer; comm_abort wakes it. And the
 * rule that after an error (other than a size disagreement) the comm is broken: every later
 * operation fails at once with the first error, and its tcp links are shut down and its pod
 * peers told, so that every peer's pending operation fails at once too (a failure spreads
 * in one round trip, not one timeout per hop).
 * Never: moves a byte itself or knows how (each transfer's struct transport does: stream.c,
 * mpi.c), allocates per byte, or sleeps with nothing to wake it: every wait is a poll() with
 * a deadline.
 */
#define _GNU_SOURCE // POLLRDHUP: a peer's FIN, seen without reading the stream
#include "engine.h"
#include "transport.h"
#include "../../common/clock.h"
#include "../../common/log.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Every transport, in the order a failed operation abandons their transfers. */
static const struct transport *const transports[] = {&transport_tcp, &transport_shm,
                                                      &transport_mpi};

static moe_status check_usable(struct comm *c) {
    if (atomic_load(&c->aborted))
        return moe_fail(MOE_EINTERNAL, "comm: aborted (epoch %llu is over)",
                        (unsigned long long)c->epoch);
    int b = atomic_load(&c->broken);
    if (b) {
        char msg[sizeof c->broken_msg];
        pthread_mutex_lock(&c->broken_mu);
        memcpy(msg, c->broken_msg, sizeof msg);
        pthread_mutex_unlock(&c->broken_mu);
        return moe_fail((moe_status)b, "comm: broken by an earlier error: %s", msg);
    }
    return MOE_OK;
}

/* Records s and moe_errmsg() as the comm's first error (if it is), tells the peers, and
 * returns s. */
static moe_status break_comm(struct comm *c, moe_status s) {
    pthread_mutex_lock(&c->broken_mu);
    bool first = !atomic_load(&c->broken);
    if (first) {
        snprintf(c->broken_msg, sizeof c->broken_msg, "%s", moe_errmsg());
        atomic_store(&c->broken, (int)s);
    }
    pthread_mutex_unlock(&c->broken_mu);
    /* Tell every peer at once: a peer whose transfers with us are still pending would
     * otherwise wait for its timeout, because we stop moving bytes but are alive. shutdown,
     * not close: the other channel's thread may be polling these sockets right now, and
     * shutdown wakes it (EOF) where close would leave it a reused descriptor. */
    if (first) {
        for (int q = 0; q < c->size; q++)
            for (int ch = 0; ch < COMM_CHANNELS; ch++)
                if (c->peers[q].ch[ch].fd >= 0) shutdown(c->peers[q].ch[ch].fd, SHUT_RDWR);
        if (c->mpi) comm_mpi_leave(c); /* the pod peers' equivalent of the shutdowns */
        LOG_DEBUG("comm: rank %d broke its comm: %s", c->rank, c->broken_msg);
    }
    return s;
}

static const struct transport *transport_of(const struct comm *c, int channel,
                                            const struct xfer *x) {
    const struct peer *p = &c->peers[x->peer];
    if (p->mpi_rank >= 0) return &transport_mpi;
    return p->ch[channel].tx ? &transport_shm : &transport_tcp;
}

static enum stat_kind stat_of(enum op_kind k) {
    if (k == OP_ALLTOALLV) return STAT_ALLTOALL;
    if (k == OP_REDUCE || k == OP_GATHER) return STAT_REDUCE;
    return STAT_OTHER;
}

static bool done(const struct xfer *x) { return x->out_fin && x->in_fin; }

/* Writes each transfer's header and posts what its transport posts up front. On an error,
 * the transfers after the failing one have posted nothing: abandon finds nothing of theirs. */
static moe_status post(struct comm *c, int channel, struct xfer *x, int nx) {
    double now = moe_clock_s();
    for (int i = 0; i < nx; i++) {
        x[i].mpi_state = NULL;
        x[i].t = transport_of(c, channel, &x[i]);
    }
    for (int i = 0; i < nx; i++) {
        struct link *k = &c->peers[x[i].peer].ch[channel];
        x[i].out_cma = x[i].in_cma = false;
        x[i].cma_done = 0;
        x[i].doorbell = false;
        if (x[i].do_send)
            x[i].out = (struct wire_header){.kind = x[i].kind, .seq = k->tx_seq++,
                                            .a = x[i].send_bytes, .b = x[i].hdr_b};
        if (!x[i].in_kind) x[i].in_kind = x[i].kind;
        x[i].out_fin = !x[i].do_send;
        x[i].in_fin = !x[i].do_recv;
        x[i].out_done = x[i].in_done = 0;
        x[i].mismatch = false;
        x[i].last_progress = now;
        if (x[i].t->start) CHECK(x[i].t->start(c, channel, &x[i]));
    }
    return MOE_OK;
}

/* The engine's loop state for one operation. */
struct run {
    struct comm *c;
    int channel;
    struct xfer *x;
    int nx;
    struct pollfd *pf; // (nx + 1) the abort pipe, then the sockets of pending transfers
    int *pf_x;         // (nx + 1) the transfer of each pollfd (-1: the abort pipe)
    bool armed;        // the spinning transports were told we may sleep
    double idle_since; // when the last byte moved
    double spin_s;     // MOE_COMM_SPIN_US
    int culprit;       // the peer whose failure failed the operation, if any
    /* this round */
    double now;
    int pending, test_pending, spin_pending; // unfinished transfers, and by how they wait
    bool moved;
};

static void arm_all(struct run *r, bool on) {
    for (int i = 0; i < r->nx; i++)
        if (r->x[i].t->arm) r->x[i].t->arm(r->c, r->channel, &r->x[i], on);
    r->armed = on;
}

/* One round of nonblocking progress on every unfinished transfer; counts what is left. */
static moe_status progress_round(struct run *r) {
    r->pending = r->test_pending = r->spin_pending = 0;
    r->moved = false;
    r->now = moe_clock_s();
    for (int i = 0; i < r->nx; i++) {
        struct xfer *x = &r->x[i];
        if (done(x)) continue;
        bool moved = false;
        moe_status s = x->t->progress(r->c, r->channel, x, &moved);
        if (s != MOE_OK) {
            r->culprit = x->peer;
            return s;
        }
        if (moved) {
            x->last_progress = r->now;
            r->moved = true;
        }
        if (!done(x)) {
            r->pending++;
            if (x->t->wait == WAIT_TEST) r->test_pending++;
            else if (x->t->wait == WAIT_SPIN) r->spin_pending++;
        }
    }
    return MOE_OK;
}

/* The stalest pending transfer: past timeout_s without progress, its peer is declared
 * stalled. Otherwise *deadline is when it would be. */
static moe_status check_stall(struct run *r, double *deadline) {
    double oldest = r->now;
    int stalled = -1;
    for (int i = 0; i < r->nx; i++)
        if (!done(&r->x[i]) && r->x[i].last_progress <= oldest) {
            oldest = r->x[i].last_progress;
            stalled = i;
        }
    *deadline = oldest + r->c->timeout_s;
    if (r->now - oldest < r->c->timeout_s) return MOE_OK;
    struct xfer *s = &r->x[stalled];
    r->culprit = s->peer;
    if (s->t->stalled) s->t->stalled(r->c, s, r->now - oldest);
    return moe_fail(MOE_EUNAVAILABLE,
                    "comm: rank %d made no progress for %.1f s in %s on channel %d "
                    "(stopped, hung or overloaded)",
                    s->peer, r->now - oldest, wire_kind_name(s->kind), r->channel);
}

/* Sleeps in poll() until the abort pipe or a pending transfer's socket wakes it, or wait_ms
 * pass; marks the transfers whose socket woke it (stream.c drains it, and sees EOF). */
static moe_status sleep_in_poll(struct run *r, int wait_ms) {
    int np = 0;
    r->pf[np] = (struct pollfd){.fd = r->c->abort_pipe[0], .events = POLLIN};
    r->pf_x[np++] = -1;
    for (int i = 0; i < r->nx; i++) {
        struct xfer *x = &r->x[i];
        if (done(x) || x->t->wait == WAIT_TEST) continue;
        short ev = x->t->wait == WAIT_SPIN // doorbells and credits both arrive as bytes
                       ? POLLIN
                       : (short)((x->out_fin ? 0 : POLLOUT) | (x->in_fin ? 0 : POLLIN));
        r->pf[np] = (struct pollfd){.fd = r->c->peers[x->peer].ch[r->channel].fd, .events = ev};
        r->pf_x[np++] = i;
    }
    int n = poll(r->pf, (nfds_t)np, wait_ms);
    if (n < 0 && errno != EINTR) return moe_fail(MOE_EIO, "comm: poll: %s", strerror(errno));
    for (int p = 1; n > 0 && p < np; p++)
        if (r->pf[p].revents) r->x[r->pf_x[p]].doorbell = true;
    return MOE_OK;
}

/* Between two rounds: go on at once, yield, or sleep, by what is pending and what moved. */
static moe_status wait_round(struct run *r, double deadline) {
    int wait_ms = (int)((deadline - r->now) * 1000) + 1;
    if (r->test_pending) {
        /* MPI progresses only inside MPI calls: look again soon, and let the other
         * processes of this host run meanwhile. */
        wait_ms = 0;
        if (!r->moved) sched_yield();
    }
    if (r->moved) {
        r->idle_since = r->now;
        if (r->armed) arm_all(r, false);
        if (!r->test_pending) return MOE_OK; // more may be ready without sleeping
    }
    /* A shared-memory peer answers within microseconds when it is running: yield the
     * core a little while before paying for a sleep and a wake-up. */
    if (r->spin_pending && r->now - r->idle_since < r->spin_s) {
        sched_yield();
        return MOE_OK;
    }
    if (r->spin_pending && !r->armed) { // say we may sleep, then look once more
        arm_all(r, true);
        return MOE_OK;
    }
    return sleep_in_poll(r, wait_ms);
}

/* Progresses every transfer until all are done, the operation fails, or comm_abort. */
static moe_status run_all(struct run *r) {
    r->pf = malloc(sizeof *r->pf * ((size_t)r->nx + 1));
    r->pf_x = malloc(sizeof *r->pf_x * ((size_t)r->nx + 1));
    moe_status res = MOE_OK;
    if (!r->pf || !r->pf_x)
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for %d transfers", r->nx);
    r->idle_since = moe_clock_s();
    while (res == MOE_OK) {
        double deadline;
        res = progress_round(r);
        if (res != MOE_OK || !r->pending) break;
        if (atomic_load(&r->c->aborted)) {
            res = moe_fail(MOE_EINTERNAL, "comm: aborted (epoch %llu is over)",
                           (unsigned long long)r->c->epoch);
            break;
        }
        res = check_stall(r, &deadline);
        if (res == MOE_OK) res = wait_round(r, deadline);
    }
    if (r->armed) arm_all(r, false);
    free(r->pf);
    free(r->pf_x);
    return res;
}

moe_status comm_exchange(struct comm *c, int channel, struct xfer *x, int nx) {
    CHECK(check_usable(c));
    struct run r = {.c = c, .channel = channel, .x = x, .nx = nx, .culprit = -1,
                    .spin_s = c->tun->spin_us * 1e-6};
    moe_status res = post(c, channel, x, nx);
    bool counted = res == MOE_OK; // in c->in_flight
    if (counted) {
        /* Every transfer is posted: from here on an abort settles them (transport_mpi). */
        atomic_fetch_add(&c->in_flight, 1);
        res = run_all(&r);
    }
    if (res == MOE_OK) {
        uint64_t sent = 0;
        for (int i = 0; i < nx; i++)
            if (x[i].do_send) sent += x[i].send_bytes;
        if (nx) atomic_fetch_add(&c->stats[stat_of(x[0].kind)], sent);
        atomic_fetch_sub(&c->in_flight, 1);
        for (int i = 0; i < nx; i++)
            if (x[i].mismatch) return wire_mismatch_error(&x[i]);
        return MOE_OK;
    }
    for (size_t t = 0; t < sizeof transports / sizeof transports[0]; t++)
        if (transports[t]->abandon) transports[t]->abandon(c, channel, x, nx, r.culprit);
    if (counted) atomic_fetch_sub(&c->in_flight, 1);
    return break_comm(c, res);
}

/* A peer's closed connection shows on its socket as a half-close (the FIN a dying process's
 * kernel sends) or a reset, whether or not bytes wait unread in front of it: poll() reports
 * that without reading the stream. Channel 0's sockets stand for the peer (all its links
 * close together); MPI peers have none and are found by their operations. */
moe_status comm_check_peers(struct comm *c) {
    CHECK(check_usable(c));
    double now = moe_clock_s();
    if (now < c->next_peer_check) return MOE_OK;
    c->next_peer_check = now + COMM_PEER_CHECK_MS * 1e-3;
    struct pollfd pf[COMM_MAX_RANKS];
    int who[COMM_MAX_RANKS], n = 0;
    for (int q = 0; q < c->size; q++)
        if (c->peers[q].ch[0].fd >= 0) {
            pf[n] = (struct pollfd){.fd = c->peers[q].ch[0].fd, .events = POLLRDHUP};
            who[n++] = q;
        }
    if (n == 0 || poll(pf, (nfds_t)n, 0) <= 0) return MOE_OK;
    for (int i = 0; i < n; i++)
        if (pf[i].revents & (POLLRDHUP | POLLHUP | POLLERR))
            return break_comm(c, moe_fail(MOE_EUNAVAILABLE, "comm: rank %d closed its "
                                          "connection (process gone?), seen between "
                                          "operations", who[i]));
    return MOE_OK;
}
