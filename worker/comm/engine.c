/*
 * engine.c — the progress engine: moves the transfers of one operation with every peer at
 * the same time, until each is done or the operation has failed.
 *
 * Owns: the never-hang rule. Each transfer sends and receives simultaneously (a poll() over
 * both directions of every link, plus the comm's abort pipe), so no schedule of peers can
 * deadlock; a broken connection fails the operation at once; a transfer that moves no byte
 * for timeout_s fails it with MOE_EUNAVAILABLE naming the peer; comm_abort wakes it. Also
 * the header check that keeps a stream in step when peers disagree on sizes.
 * Never: allocates per byte or copies payload through a buffer of its own (tcp reads and
 * writes user buffers directly; shm.c copies once into and once out of its ring; cma
 * copies once, from the sender's buffer into the receiver's), and never sleeps with
 * nothing to wake it: every wait is a poll() with a deadline.
 */
#include "comm_internal.h"
#include "../../common/clock.h"
#include "../../common/log.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define IO_MAX ((size_t)1 << 30) // one send()/recv() at most; the loop goes on after it

static const char *kind_name(uint32_t k) {
    switch (k) {
    case OP_ALLTOALLV: return "alltoallv";
    case OP_REDUCE: return "reduce-scatter";
    case OP_GATHER: return "allgather_chunks";
    case OP_ALLGATHER: return "allgather";
    case OP_BARRIER: return "barrier";
    case OP_SEND: return "send";
    case OP_ACK: return "send acknowledgement";
    }
    return "an unknown operation";
}

long comm_header_arrived(struct comm *c, int channel, struct xfer *x) {
    struct link *k = &c->peers[x->peer].ch[channel];
    if (x->in.seq != k->rx_seq) {
        moe_fail(MOE_EINTERNAL, "comm: stream from rank %d is out of step on channel %d "
                 "(message %u, expected %u)", x->peer, channel, x->in.seq, k->rx_seq);
        return -1;
    }
    k->rx_seq++;
    if (x->in.kind != (uint32_t)x->in_kind || x->in.a != x->recv_bytes ||
        (x->check_b && x->in.b != x->send_bytes))
        x->mismatch = true;
    if (x->in.a > (uint64_t)LONG_MAX) {
        moe_fail(MOE_EINTERNAL, "comm: rank %d announced %llu bytes", x->peer,
                 (unsigned long long)x->in.a);
        return -1;
    }
    return (long)x->in.a;
}

/* Copies a piece of the peer's buffer that it described, straight into ours; after the
 * last piece, acknowledges it (the sender may then reuse its buffer). A payload of a size
 * we disagree with is not read at all: acknowledged, and the stream is in step. */
static moe_status read_by_descriptor(struct link *k, struct xfer *x, bool *moved) {
    if (x->desc_in[1] != x->in.a)
        return moe_fail(MOE_EINTERNAL, "comm: rank %d described %llu bytes for a %llu-byte "
                        "payload", x->peer, (unsigned long long)x->desc_in[1],
                        (unsigned long long)x->in.a);
    size_t total = x->mismatch ? 0 : (size_t)x->in.a;
    if (x->cma_done < total) {
        /* Pieces, so that one large read does not starve the other peers' progress. */
        size_t n = total - x->cma_done, piece = (size_t)8 << 20;
        long got = cma_read(k->pid, x->peer, (uint8_t *)x->recv + x->cma_done,
                            x->desc_in[0] + x->cma_done, n < piece ? n : piece);
        if (got < 0) return MOE_EUNAVAILABLE;
        x->cma_done += (size_t)got;
        *moved = true;
        if (x->cma_done < total) return MOE_OK;
    }
    /* The sender revokes before it gives up and reuses its buffer: what we read after
     * that may be anything. */
    atomic_thread_fence(memory_order_seq_cst);
    int why = shm_revoked(k->rx);
    if (why > 1)
        return moe_fail(MOE_EUNAVAILABLE, "comm: rank %d gave up on the operation because of "
                        "rank %d", x->peer, why - 2);
    if (why)
        return moe_fail(MOE_EUNAVAILABLE, "comm: rank %d gave up on the operation (aborted)",
                        x->peer);
    shm_ack(k->rx, k->fd);
    x->in_fin = true;
    *moved = true;
    return MOE_OK;
}

/* One round of nonblocking progress on a tcp or shm link. *moved when a byte moved. */
static moe_status progress_link(struct comm *c, int channel, struct xfer *x, bool *moved) {
    struct link *k = &c->peers[x->peer].ch[channel];
    bool shm = k->tx != NULL;
    /* With shared memory, a closed socket only means the peer is gone once the ring has
     * nothing more for us: it may have written everything and closed before we looked. */
    bool gone = shm && x->doorbell && shm_drain_doorbell(k->fd, x->peer) < 0;
    x->doorbell = false;
    char gone_msg[256];
    if (gone) snprintf(gone_msg, sizeof gone_msg, "%s", moe_errmsg());
    size_t out_total = WIRE_HEADER_BYTES + (x->out_cma ? WIRE_DESCRIPTOR_BYTES : x->send_bytes);
    while (!x->out_fin) {
        const uint8_t *p;
        size_t n;
        if (x->out_done == out_total) { // by descriptor: done when the peer has read it
            if (shm_acks(k->tx) < x->ack_target) break;
            x->out_fin = true;
            *moved = true;
            break;
        }
        if (x->out_done < WIRE_HEADER_BYTES) {
            p = (const uint8_t *)&x->out + x->out_done;
            n = WIRE_HEADER_BYTES - x->out_done;
        } else if (x->out_cma) {
            size_t at = x->out_done - WIRE_HEADER_BYTES;
            p = (const uint8_t *)x->desc_out + at;
            n = WIRE_DESCRIPTOR_BYTES - at;
        } else {
            size_t at = x->out_done - WIRE_HEADER_BYTES;
            p = (const uint8_t *)x->send + at;
            n = x->send_bytes - at;
        }
        if (n > IO_MAX) n = IO_MAX;
        long got = shm ? shm_send_some(k->tx, k->fd, x->peer, p, n)
                       : tcp_send_some(k->fd, x->peer, p, n);
        if (got < 0) return MOE_EUNAVAILABLE;
        if (got == 0) break;
        *moved = true;
        x->out_done += (size_t)got;
        if (x->out_done == out_total && !x->out_cma) x->out_fin = true;
    }
    char drain[16384];
    while (!x->in_fin) {
        uint8_t *p;
        size_t n;
        if (x->in_cma && x->in_done == WIRE_HEADER_BYTES + WIRE_DESCRIPTOR_BYTES) {
            CHECK(read_by_descriptor(k, x, moved));
            break;
        }
        if (x->in_done < WIRE_HEADER_BYTES) {
            p = (uint8_t *)&x->in + x->in_done;
            n = WIRE_HEADER_BYTES - x->in_done;
        } else if (x->in_cma) {
            size_t at = x->in_done - WIRE_HEADER_BYTES;
            p = (uint8_t *)x->desc_in + at;
            n = WIRE_DESCRIPTOR_BYTES - at;
        } else {
            size_t at = x->in_done - WIRE_HEADER_BYTES;
            n = (size_t)x->in.a - at;
            if (x->mismatch) { // keep the stream in step: read and forget
                p = shm ? NULL : (uint8_t *)drain;
                if (!shm && n > sizeof drain) n = sizeof drain;
            } else {
                p = (uint8_t *)x->recv + at;
            }
        }
        if (n > IO_MAX) n = IO_MAX;
        long got = shm ? shm_recv_some(k->rx, k->fd, x->peer, p, n)
                       : tcp_recv_some(k->fd, x->peer, p, n);
        if (got < 0) return MOE_EUNAVAILABLE;
        if (got == 0) break;
        *moved = true;
        bool header_was_partial = x->in_done < WIRE_HEADER_BYTES;
        x->in_done += (size_t)got;
        if (header_was_partial && x->in_done == WIRE_HEADER_BYTES) {
            if (shm && k->cma && (x->in.kind & WIRE_BY_DESCRIPTOR)) {
                x->in_cma = true;
                x->in.kind &= ~WIRE_BY_DESCRIPTOR;
            }
            if (comm_header_arrived(c, channel, x) < 0) return MOE_EINTERNAL;
        }
        if (!x->in_cma && x->in_done >= WIRE_HEADER_BYTES &&
            x->in_done == WIRE_HEADER_BYTES + x->in.a)
            x->in_fin = true;
    }
    if (gone && !*moved && !(x->in_fin && x->out_fin))
        return moe_fail(MOE_EUNAVAILABLE, "%s", gone_msg);
    return MOE_OK;
}

static void arm_links(struct comm *c, int channel, struct xfer *x, int nx, bool on) {
    for (int i = 0; i < nx; i++) {
        struct link *k = &c->peers[x[i].peer].ch[channel];
        if (k->tx) shm_arm(k->tx, k->rx, on);
    }
}

static enum stat_kind stat_of(enum op_kind k) {
    if (k == OP_ALLTOALLV) return STAT_ALLTOALL;
    if (k == OP_REDUCE || k == OP_GATHER) return STAT_REDUCE;
    return STAT_OTHER;
}

static moe_status mismatch_error(const struct xfer *x) {
    if (x->in.kind != (uint32_t)x->in_kind)
        return moe_fail(MOE_EINVAL, "comm: rank %d is in %s, we are in %s", x->peer,
                        kind_name(x->in.kind), kind_name(x->in_kind));
    if (x->in.a != x->recv_bytes)
        return moe_fail(MOE_EINVAL,
                        "comm: sizes disagree with rank %d in %s: it sends %llu bytes, we "
                        "expect %zu",
                        x->peer, kind_name(x->kind), (unsigned long long)x->in.a, x->recv_bytes);
    return moe_fail(MOE_EINVAL,
                    "comm: sizes disagree with rank %d in %s: it expects %llu bytes, we send %zu",
                    x->peer, kind_name(x->kind), (unsigned long long)x->in.b, x->send_bytes);
}

moe_status comm_exchange(struct comm *c, int channel, struct xfer *x, int nx) {
    CHECK(comm_check_usable(c));
    moe_status res = MOE_OK;
    struct pollfd *pf = NULL;
    double now = moe_clock_s();
    bool any_mpi = false, armed = false, counted = false; // counted: in c->in_flight
    int culprit = -1; // the peer whose failure failed the operation, if any
    size_t cma_min = (size_t)c->tun->cma_min;
    for (int i = 0; i < nx; i++) x[i].mpi_state = NULL;
    for (int i = 0; i < nx; i++) {
        struct link *k = &c->peers[x[i].peer].ch[channel];
        x[i].out_cma = x[i].in_cma = false;
        x[i].cma_done = 0;
        x[i].doorbell = false;
        if (x[i].do_send) {
            x[i].out = (struct wire_header){.kind = x[i].kind, .seq = k->tx_seq++,
                                            .a = x[i].send_bytes, .b = x[i].hdr_b};
            if (k->cma && x[i].send_bytes >= cma_min) {
                x[i].out_cma = true;
                x[i].out.kind |= WIRE_BY_DESCRIPTOR;
                x[i].desc_out[0] = (uint64_t)(uintptr_t)x[i].send;
                x[i].desc_out[1] = x[i].send_bytes;
                x[i].ack_target = ++k->cma_posted;
            }
        }
        if (!x[i].in_kind) x[i].in_kind = x[i].kind;
        x[i].out_fin = !x[i].do_send;
        x[i].in_fin = !x[i].do_recv;
        x[i].out_done = x[i].in_done = 0;
        x[i].mismatch = false;
        x[i].last_progress = now;
        if (c->peers[x[i].peer].mpi_rank >= 0) {
            any_mpi = true;
            CHECK_GOTO(comm_mpi_start(c, channel, &x[i]), res, fail);
        }
    }
    /* Every transfer is posted: from here on an abort settles them (comm_mpi_settle). */
    atomic_fetch_add(&c->in_flight, 1);
    counted = true;
    pf = malloc(sizeof *pf * ((size_t)nx + 1));
    int *pf_x = malloc(sizeof *pf_x * ((size_t)nx + 1));
    if (!pf || !pf_x) {
        free(pf_x);
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for %d transfers", nx);
        goto fail;
    }
    double idle_since = moe_clock_s(), spin_s = c->tun->spin_us * 1e-6;
    for (;;) {
        int pending = 0, mpi_pending = 0, shm_pending = 0;
        bool moved_any = false;
        now = moe_clock_s();
        for (int i = 0; i < nx; i++) {
            if (x[i].out_fin && x[i].in_fin) continue;
            bool moved = false;
            if (c->peers[x[i].peer].mpi_rank >= 0) {
                int r = comm_mpi_progress(c, &x[i], &moved);
                if (r < 0) {
                    res = MOE_EUNAVAILABLE;
                    culprit = x[i].peer;
                    goto fail_free;
                }
            } else {
                res = progress_link(c, channel, &x[i], &moved);
                if (res != MOE_OK) {
                    culprit = x[i].peer;
                    goto fail_free;
                }
            }
            if (moved) {
                x[i].last_progress = now;
                moved_any = true;
            }
            if (!(x[i].out_fin && x[i].in_fin)) {
                pending++;
                if (c->peers[x[i].peer].mpi_rank >= 0) mpi_pending++;
                else if (c->peers[x[i].peer].ch[channel].tx) shm_pending++;
            }
        }
        if (!pending) break;
        if (atomic_load(&c->aborted)) {
            res = moe_fail(MOE_EINTERNAL, "comm: aborted (epoch %llu is over)",
                           (unsigned long long)c->epoch);
            goto fail_free;
        }
        /* The deadline of the stalest transfer; past it, that peer is declared stalled. */
        double oldest = now;
        int stalled = -1;
        for (int i = 0; i < nx; i++)
            if (!(x[i].out_fin && x[i].in_fin) && x[i].last_progress <= oldest) {
                oldest = x[i].last_progress;
                stalled = i;
            }
        if (now - oldest >= c->timeout_s) {
            struct xfer *s = &x[stalled];
            culprit = s->peer;
            if (c->peers[s->peer].mpi_rank >= 0) {
                /* Open MPI 4.1 cannot give up on a rank: the pod is the failure domain. */
                LOG_ERROR("comm: rank %d (MPI rank %d) made no progress for %.1f s in %s; "
                          "aborting this MPI job",
                          s->peer, c->peers[s->peer].mpi_rank, now - oldest, kind_name(s->kind));
                comm_mpi_stalled();
            }
            res = moe_fail(MOE_EUNAVAILABLE,
                           "comm: rank %d made no progress for %.1f s in %s on channel %d "
                           "(stopped, hung or overloaded)",
                           s->peer, now - oldest, kind_name(s->kind), channel);
            goto fail_free;
        }
        int np = 0;
        pf[np] = (struct pollfd){.fd = c->abort_pipe[0], .events = POLLIN};
        pf_x[np++] = -1;
        for (int i = 0; i < nx; i++) {
            if ((x[i].out_fin && x[i].in_fin) || c->peers[x[i].peer].mpi_rank >= 0) continue;
            struct link *k = &c->peers[x[i].peer].ch[channel];
            short ev = k->tx ? POLLIN // shm: doorbells and credits both arrive as bytes
                             : (short)((x[i].out_fin ? 0 : POLLOUT) | (x[i].in_fin ? 0 : POLLIN));
            pf[np] = (struct pollfd){.fd = k->fd, .events = ev};
            pf_x[np++] = i;
        }
        int wait_ms = (int)((oldest + c->timeout_s - now) * 1000) + 1;
        if (mpi_pending) {
            /* MPI progresses only inside MPI calls: look again soon, and let the other
             * processes of this host run meanwhile. */
            wait_ms = 0;
            if (!moved_any) sched_yield();
        }
        if (moved_any) {
            idle_since = now;
            if (armed) arm_links(c, channel, x, nx, false);
            armed = false;
            if (!mpi_pending) continue; // more may be ready without sleeping
        }
        /* A shared-memory peer answers within microseconds when it is running: yield the
         * core a little while before paying for a sleep and a wake-up. */
        if (shm_pending && now - idle_since < spin_s) {
            sched_yield();
            continue;
        }
        if (shm_pending && !armed) { // say we may sleep, then look once more
            arm_links(c, channel, x, nx, true);
            armed = true;
            continue;
        }
        int r = poll(pf, (nfds_t)np, wait_ms);
        if (r < 0 && errno != EINTR) {
            res = moe_fail(MOE_EIO, "comm: poll: %s", strerror(errno));
            goto fail_free;
        }
        for (int p = 1; r > 0 && p < np; p++)
            if (pf[p].revents) x[pf_x[p]].doorbell = true;
    }
    if (armed) arm_links(c, channel, x, nx, false);
    free(pf);
    free(pf_x);
    uint64_t sent = 0;
    for (int i = 0; i < nx; i++)
        if (x[i].do_send) sent += x[i].send_bytes;
    if (nx) atomic_fetch_add(&c->stats[stat_of(x[0].kind)], sent);
    atomic_fetch_sub(&c->in_flight, 1);
    for (int i = 0; i < nx; i++)
        if (x[i].mismatch) return mismatch_error(&x[i]);
    return MOE_OK;
fail_free:
    free(pf_x);
fail:
    free(pf);
    if (armed) arm_links(c, channel, x, nx, false);
    for (int i = 0; i < nx; i++)
        if (x[i].out_cma && !x[i].out_fin) shm_revoke(c->peers[x[i].peer].ch[channel].tx, culprit);
    if (any_mpi) comm_mpi_settle(c, x, nx);
    if (counted) atomic_fetch_sub(&c->in_flight, 1);
    return comm_break(c, res);
}
