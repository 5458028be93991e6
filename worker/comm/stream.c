/*
 * stream.c — the transports of tcp peers: one transfer's messages over a byte stream, either
 * the pair's socket (transport_tcp; sealed per frame by seal.c when the link is encrypted)
 * or, between peers of one host, its shared-memory rings (transport_shm), where large
 * payloads may go by descriptor (cma).
 *
 * Owns: the framing of a message on a stream (header, then payload or a 16-byte descriptor),
 * reading and dropping a payload of a size we disagree with so that the stream stays in
 * step, and the descriptor handshake: read the sender's buffer, then acknowledge; revoke
 * what we described when we give up.
 * Never: copies payload through a buffer of its own (tcp reads and writes user buffers;
 * seal.c seals and opens them through one frame; shm.c copies once into and once out of its
 * ring; cma once, from buffer to buffer), blocks, or decides an operation's fate (it
 * reports; the engine fails the operation).
 */
#include "transport.h"

#include <stdatomic.h>
#include <stdio.h>

#define IO_MAX ((size_t)1 << 30) // one send()/recv() at most; the loop goes on after it
#define CMA_PIECE ((size_t)8 << 20)

static struct link *link_of(struct comm *c, int channel, const struct xfer *x) {
    return &c->peers[x->peer].ch[channel];
}

/* transport_shm's start: a payload big enough goes by descriptor when the pair may read
 * each other's memory. */
static moe_status offer_descriptor(struct comm *c, int channel, struct xfer *x) {
    struct link *k = link_of(c, channel, x);
    if (x->do_send && k->cma && x->send_bytes >= (size_t)c->tun->cma_min) {
        x->out_cma = true;
        x->out.kind |= WIRE_BY_DESCRIPTOR;
        x->desc_out[0] = (uint64_t)(uintptr_t)x->send;
        x->desc_out[1] = x->send_bytes;
        x->ack_target = ++k->cma_posted;
    }
    return MOE_OK;
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
        size_t n = total - x->cma_done;
        long got = cma_read(k->pid, x->peer, (uint8_t *)x->recv + x->cma_done,
                            x->desc_in[0] + x->cma_done, n < CMA_PIECE ? n : CMA_PIECE);
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

/* Sends what the stream takes of our message: header, then descriptor or payload. A message
 * by descriptor is done once the peer acknowledged it. */
static moe_status send_message(struct link *k, bool shm, struct xfer *x, bool *moved) {
    size_t total = WIRE_HEADER_BYTES + (x->out_cma ? WIRE_DESCRIPTOR_BYTES : x->send_bytes);
    while (!x->out_fin) {
        if (x->out_done == total) { // by descriptor: done when the peer has read it
            if (shm_acks(k->tx) < x->ack_target) break;
            x->out_fin = true;
            *moved = true;
            break;
        }
        const uint8_t *p;
        size_t n;
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
        long got = shm       ? shm_send_some(k->tx, k->fd, x->peer, p, n)
                   : k->seal ? seal_send_some(k->seal, k->fd, x->peer, p, n)
                             : tcp_send_some(k->fd, x->peer, p, n);
        if (got < 0) return got == SEAL_EAUTH ? MOE_EAUTH : MOE_EUNAVAILABLE;
        if (got == 0) break;
        *moved = true;
        x->out_done += (size_t)got;
        if (x->out_done == total && !x->out_cma) x->out_fin = true;
    }
    return MOE_OK;
}

/* The peer's header is complete: is its payload a descriptor, and is it the one we expect? */
static moe_status header_in(struct link *k, int channel, bool shm, struct xfer *x) {
    if (shm && k->cma && (x->in.kind & WIRE_BY_DESCRIPTOR)) {
        x->in_cma = true;
        x->in.kind &= ~WIRE_BY_DESCRIPTOR;
    }
    return wire_header_arrived(k, channel, x) < 0 ? MOE_EINTERNAL : MOE_OK;
}

/* Receives what the stream has of the peer's message: header, then descriptor (and the
 * read it describes) or payload; a payload of a size we disagree with is read and dropped. */
static moe_status recv_message(struct link *k, int channel, bool shm, struct xfer *x,
                               bool *moved) {
    char drain[16384];
    while (!x->in_fin) {
        if (x->in_cma && x->in_done == WIRE_HEADER_BYTES + WIRE_DESCRIPTOR_BYTES)
            return read_by_descriptor(k, x, moved);
        uint8_t *p;
        size_t n;
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
        long got = shm       ? shm_recv_some(k->rx, k->fd, x->peer, p, n)
                   : k->seal ? seal_recv_some(k->seal, k->fd, x->peer, p, n)
                             : tcp_recv_some(k->fd, x->peer, p, n);
        if (got < 0) return got == SEAL_EAUTH ? MOE_EAUTH : MOE_EUNAVAILABLE;
        if (got == 0) break;
        *moved = true;
        bool header_was_partial = x->in_done < WIRE_HEADER_BYTES;
        x->in_done += (size_t)got;
        if (header_was_partial && x->in_done == WIRE_HEADER_BYTES)
            CHECK(header_in(k, channel, shm, x));
        if (!x->in_cma && x->in_done >= WIRE_HEADER_BYTES &&
            x->in_done == WIRE_HEADER_BYTES + x->in.a)
            x->in_fin = true;
    }
    return MOE_OK;
}

/* One round of nonblocking progress on a tcp or shm link, both directions. */
static moe_status progress(struct comm *c, int channel, struct xfer *x, bool *moved) {
    struct link *k = link_of(c, channel, x);
    bool shm = k->tx != NULL;
    /* With shared memory, a closed socket only means the peer is gone once the ring has
     * nothing more for us: it may have written everything and closed before we looked. */
    bool gone = shm && x->doorbell && shm_drain_doorbell(k->fd, x->peer) < 0;
    x->doorbell = false;
    char gone_msg[256];
    if (gone) snprintf(gone_msg, sizeof gone_msg, "%s", moe_errmsg());
    CHECK(send_message(k, shm, x, moved));
    CHECK(recv_message(k, channel, shm, x, moved));
    if (gone && !*moved && !(x->in_fin && x->out_fin))
        return moe_fail(MOE_EUNAVAILABLE, "%s", gone_msg);
    return MOE_OK;
}

static void arm(struct comm *c, int channel, struct xfer *x, bool on) {
    struct link *k = link_of(c, channel, x);
    shm_arm(k->tx, k->rx, on);
}

/* A peer may be reading what we described: revoke, so that it reports our failure instead
 * of delivering bytes from a buffer the caller is about to reuse. */
static void revoke_descriptors(struct comm *c, int channel, struct xfer *x, int nx,
                               int culprit) {
    for (int i = 0; i < nx; i++)
        if (x[i].t == &transport_shm && x[i].out_cma && !x[i].out_fin)
            shm_revoke(link_of(c, channel, &x[i])->tx, culprit);
}

const struct transport transport_tcp = {
    .wait = WAIT_POLL,
    .progress = progress,
};

const struct transport transport_shm = {
    .wait = WAIT_SPIN,
    .start = offer_descriptor,
    .progress = progress,
    .arm = arm,
    .abandon = revoke_descriptors,
};
