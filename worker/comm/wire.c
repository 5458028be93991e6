/*
 * wire.c — what a header that arrived means: in step or not, agreeing or not.
 *
 * Owns: the check every transport makes when a peer's header is in (its sequence number
 * against the link's count, its kind and sizes against ours), and the words for a
 * disagreement, so that tcp, shared memory and MPI peers report it identically.
 * Never: moves bytes, or calls anything but moe_fail.
 */
#include "comm_internal.h"

#include <limits.h>

const char *wire_kind_name(uint32_t k) {
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

long wire_header_arrived(struct link *k, int channel, struct xfer *x) {
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

moe_status wire_mismatch_error(const struct xfer *x) {
    if (x->in.kind != (uint32_t)x->in_kind)
        return moe_fail(MOE_EINVAL, "comm: rank %d is in %s, we are in %s", x->peer,
                        wire_kind_name(x->in.kind), wire_kind_name(x->in_kind));
    if (x->in.a != x->recv_bytes)
        return moe_fail(MOE_EINVAL,
                        "comm: sizes disagree with rank %d in %s: it sends %llu bytes, we "
                        "expect %zu",
                        x->peer, wire_kind_name(x->kind), (unsigned long long)x->in.a,
                        x->recv_bytes);
    return moe_fail(MOE_EINVAL,
                    "comm: sizes disagree with rank %d in %s: it expects %llu bytes, we send %zu",
                    x->peer, wire_kind_name(x->kind), (unsigned long long)x->in.b, x->send_bytes);
}
