/*
 * collectives.c — the operations of comm.h, each expressed as exchanges between the members
 * of a group (engine.c moves the bytes).
 *
 * Owns: the algorithms and their fixed order. Reduce-scatter: the owner of each chunk
 * receives that chunk from every member and adds the members' copies with tree_sum in
 * member order, so the bits depend on the group's order only, never on timing or on the
 * backend. An all-reduce of two members is one exchange of whole buffers, each adding the
 * two in member order (the same bits, half the round trips). Large buffers go in pieces (COMM_PIECE_BYTES per member per round), so a
 * reduction needs members x piece bytes of scratch, not a copy of the buffer; tree_sum adds
 * each element independently, so the pieces change no bit. All-to-all and gathers move
 * bytes straight between user buffers.
 * Never: assumes anything about the peers' timing, adds in any other order, or knows how a
 * peer is reached (engine.h is all it calls).
 */
#include "engine.h"
#include "../../kernels/tree_sum.h"

#include <stdlib.h>
#include <string.h>

TREE_SUM_DEFINE(tree_sum_u64, uint64_t) // two's complement: the int64 sum, without UB

#define COMM_PIECE_BYTES ((size_t)1 << 20)
/* a two-member all-reduce's pieces: each round is a round trip, so they are larger */
#define COMM_EXCHANGE_PIECE_BYTES ((size_t)16 << 20)

static moe_status check_group(const struct comm *c, int channel, const struct comm_group *g) {
    if (channel < 0 || channel >= COMM_CHANNELS)
        return moe_fail(MOE_EINVAL, "comm: channel %d outside [0, %d)", channel, COMM_CHANNELS);
    if (!g || g->n < 1 || g->n > COMM_MAX_RANKS || g->me < 0 || g->me >= g->n)
        return moe_fail(MOE_EINVAL, "comm: group of %d members with me = %d", g ? g->n : 0,
                        g ? g->me : 0);
    if (g->ranks[g->me] != c->rank)
        return moe_fail(MOE_EINVAL, "comm: group member %d is rank %d, but we are rank %d", g->me,
                        g->ranks[g->me], c->rank);
    unsigned char seen[COMM_MAX_RANKS] = {0};
    for (int i = 0; i < g->n; i++) {
        int r = g->ranks[i];
        if (r < 0 || r >= c->size)
            return moe_fail(MOE_EINVAL, "comm: group member %d is rank %d, outside the comm", i, r);
        if (seen[r]++)
            return moe_fail(MOE_EINVAL, "comm: rank %d appears twice in a group", r);
    }
    return MOE_OK;
}

void comm_chunk(size_t n, int members, int i, size_t *lo, size_t *hi) {
    size_t m = (size_t)members, base = n / m, rem = n % m, ii = (size_t)i;
    *lo = ii * base + (ii < rem ? ii : rem);
    *hi = *lo + base + (ii < rem ? 1 : 0);
}

/* The channel's scratch for the leaves of a reduction, grown as needed and kept until
 * comm_close; NULL: out of memory. */
static void *channel_scratch(struct comm *c, int channel, size_t bytes) {
    if (bytes <= c->scratch_bytes[channel]) return c->scratch[channel];
    void *p = realloc(c->scratch[channel], bytes);
    if (!p) return NULL;
    c->scratch[channel] = p;
    c->scratch_bytes[channel] = bytes;
    return p;
}

static struct xfer *xfers_alloc(int n) {
    struct xfer *x = calloc((size_t)(n > 0 ? n : 1), sizeof *x);
    if (!x) moe_fail(MOE_ENOMEM, "comm: out of memory for %d transfers", n);
    return x;
}

moe_status comm_alltoallv(struct comm *c, int channel, const struct comm_group *g,
                          const void *send, const size_t *send_bytes, void *recv,
                          const size_t *recv_bytes) {
    CHECK(check_group(c, channel, g));
    struct xfer *x = xfers_alloc(g->n - 1);
    if (!x) return MOE_ENOMEM;
    size_t so = 0, ro = 0;
    int nx = 0;
    for (int j = 0; j < g->n; j++) {
        if (j == g->me) {
            size_t n = send_bytes[j] < recv_bytes[j] ? send_bytes[j] : recv_bytes[j];
            if (n) memmove((char *)recv + ro, (const char *)send + so, n);
        } else {
            x[nx++] = (struct xfer){.peer = g->ranks[j], .kind = OP_ALLTOALLV, .do_send = true,
                                    .do_recv = true, .check_b = true,
                                    .send = (const char *)send + so, .send_bytes = send_bytes[j],
                                    .hdr_b = recv_bytes[j], .recv = (char *)recv + ro,
                                    .recv_bytes = recv_bytes[j]};
        }
        so += send_bytes[j];
        ro += recv_bytes[j];
    }
    moe_status res = comm_exchange(c, channel, x, nx);
    free(x);
    CHECK(res);
    if (send_bytes[g->me] != recv_bytes[g->me])
        return moe_fail(MOE_EINVAL, "comm: alltoallv sends %zu bytes to itself but expects %zu",
                        send_bytes[g->me], recv_bytes[g->me]);
    return MOE_OK;
}

typedef void (*sum_fn)(void *const *leaves, int n, size_t count);
static void sum_f32(void *const *l, int n, size_t k) { tree_sum_f32((float *const *)l, n, k); }
static void sum_f64(void *const *l, int n, size_t k) { tree_sum_f64((double *const *)l, n, k); }
static void sum_u64(void *const *l, int n, size_t k) { tree_sum_u64((uint64_t *const *)l, n, k); }

static size_t piece_len(size_t lo, size_t hi, size_t off, size_t piece) {
    if (hi - lo <= off) return 0;
    size_t left = hi - lo - off;
    return left < piece ? left : piece;
}

static moe_status reduce_scatter(struct comm *c, int channel, const struct comm_group *g,
                                 void *buf, size_t n, size_t elt, sum_fn sum) {
    CHECK(check_group(c, channel, g));
    int m = g->n, me = g->me;
    size_t piece = COMM_PIECE_BYTES / elt;
    size_t maxchunk = n / (size_t)m + (n % (size_t)m != 0);
    /* At least one round even when n = 0: members that disagree on n find out. */
    size_t rounds = maxchunk ? (maxchunk + piece - 1) / piece : 1;
    uint8_t *scratch = channel_scratch(c, channel, (size_t)m * piece * elt);
    void **leaves = malloc(sizeof *leaves * (size_t)m);
    struct xfer *x = xfers_alloc(m - 1);
    moe_status res = MOE_OK;
    if (!scratch || !leaves || !x) {
        res = moe_fail(MOE_ENOMEM, "comm: out of memory for a reduction over %d members", m);
        goto exit;
    }
    size_t my_lo, my_hi;
    comm_chunk(n, m, me, &my_lo, &my_hi);
    for (size_t r = 0; r < rounds; r++) {
        size_t off = r * piece, mine = piece_len(my_lo, my_hi, off, piece);
        int nx = 0;
        for (int j = 0; j < m; j++) {
            leaves[j] = j == me ? (uint8_t *)buf + (my_lo + off) * elt
                                : scratch + (size_t)j * piece * elt;
            if (j == me) continue;
            size_t lo, hi;
            comm_chunk(n, m, j, &lo, &hi);
            size_t theirs = piece_len(lo, hi, off, piece);
            x[nx++] = (struct xfer){.peer = g->ranks[j], .kind = OP_REDUCE, .do_send = true,
                                    .do_recv = true, .check_b = true,
                                    .send = (uint8_t *)buf + (lo + off) * elt,
                                    .send_bytes = theirs * elt, .hdr_b = mine * elt,
                                    .recv = leaves[j], .recv_bytes = mine * elt};
        }
        CHECK_GOTO(comm_exchange(c, channel, x, nx), res, exit);
        if (mine == 0) continue;
        sum(leaves, m, mine);
        if (me != 0) memcpy((uint8_t *)buf + (my_lo + off) * elt, leaves[0], mine * elt);
    }
exit:
    free(leaves);
    free(x);
    return res;
}

static moe_status allgather_chunks(struct comm *c, int channel, const struct comm_group *g,
                                   void *buf, size_t n, size_t elt) {
    CHECK(check_group(c, channel, g));
    struct xfer *x = xfers_alloc(g->n - 1);
    if (!x) return MOE_ENOMEM;
    size_t my_lo, my_hi;
    comm_chunk(n, g->n, g->me, &my_lo, &my_hi);
    int nx = 0;
    for (int j = 0; j < g->n; j++) {
        if (j == g->me) continue;
        size_t lo, hi;
        comm_chunk(n, g->n, j, &lo, &hi);
        x[nx++] = (struct xfer){.peer = g->ranks[j], .kind = OP_GATHER, .do_send = true,
                                .do_recv = true, .check_b = true,
                                .send = (uint8_t *)buf + my_lo * elt,
                                .send_bytes = (my_hi - my_lo) * elt, .hdr_b = (hi - lo) * elt,
                                .recv = (uint8_t *)buf + lo * elt, .recv_bytes = (hi - lo) * elt};
    }
    moe_status res = comm_exchange(c, channel, x, nx);
    free(x);
    return res;
}

moe_status comm_reduce_scatter(struct comm *c, int channel, const struct comm_group *g,
                               float *buf, size_t n) {
    return reduce_scatter(c, channel, g, buf, n, sizeof *buf, sum_f32);
}

moe_status comm_allgather_chunks(struct comm *c, int channel, const struct comm_group *g,
                                 float *buf, size_t n) {
    return allgather_chunks(c, channel, g, buf, n, sizeof *buf);
}

/* Two members: each sends the other its whole buffer and both add the two copies in member
 * order. The same bytes on the wire as a reduce-scatter and an all-gather (n each way), in one
 * exchange instead of two: half the latency, which is what a link between datacenters costs.
 * Each element is leaves[0] + leaves[1] as the owner of its chunk would have added it, so the
 * bits are those of the two-step form. */
static moe_status exchange_sum(struct comm *c, int channel, const struct comm_group *g,
                               void *buf, size_t n, size_t elt, sum_fn sum) {
    size_t piece = COMM_EXCHANGE_PIECE_BYTES / elt;
    size_t rounds = n ? (n + piece - 1) / piece : 1; /* n = 0: a round, to compare sizes */
    uint8_t *scratch = channel_scratch(c, channel, (n == 0 ? 1 : n < piece ? n : piece) * elt);
    if (!scratch) return moe_fail(MOE_ENOMEM, "comm: out of memory for a two-member reduction");
    int peer = g->ranks[1 - g->me];
    for (size_t r = 0; r < rounds; r++) {
        size_t off = r * piece, len = n - off < piece ? n - off : piece;
        uint8_t *mine = (uint8_t *)buf + off * elt;
        struct xfer x = {.peer = peer, .kind = OP_REDUCE, .do_send = true, .do_recv = true,
                         .check_b = true, .send = mine, .send_bytes = len * elt,
                         .hdr_b = len * elt, .recv = scratch, .recv_bytes = len * elt};
        CHECK(comm_exchange(c, channel, &x, 1));
        void *leaves[2] = {g->me == 0 ? (void *)mine : scratch, g->me == 0 ? scratch : mine};
        sum(leaves, 2, len);
        if (g->me != 0 && len) memcpy(mine, scratch, len * elt);
    }
    return MOE_OK;
}

static moe_status allreduce(struct comm *c, int channel, const struct comm_group *g, void *buf,
                            size_t n, size_t elt, sum_fn sum) {
    if (g && g->n == 2) {
        CHECK(check_group(c, channel, g));
        return exchange_sum(c, channel, g, buf, n, elt, sum);
    }
    CHECK(reduce_scatter(c, channel, g, buf, n, elt, sum));
    return allgather_chunks(c, channel, g, buf, n, elt);
}

moe_status comm_allreduce(struct comm *c, int channel, const struct comm_group *g, float *buf,
                          size_t n) {
    return allreduce(c, channel, g, buf, n, sizeof *buf, sum_f32);
}

moe_status comm_allreduce_f64(struct comm *c, int channel, const struct comm_group *g,
                              double *buf, size_t n) {
    return allreduce(c, channel, g, buf, n, sizeof *buf, sum_f64);
}

moe_status comm_allreduce_i64(struct comm *c, int channel, const struct comm_group *g,
                              int64_t *buf, size_t n) {
    return allreduce(c, channel, g, buf, n, sizeof *buf, sum_u64);
}

moe_status comm_allgather(struct comm *c, int channel, const struct comm_group *g,
                          const void *send, size_t bytes, void *recv) {
    CHECK(check_group(c, channel, g));
    struct xfer *x = xfers_alloc(g->n - 1);
    if (!x) return MOE_ENOMEM;
    int nx = 0;
    for (int j = 0; j < g->n; j++) {
        if (j == g->me) continue;
        x[nx++] = (struct xfer){.peer = g->ranks[j], .kind = OP_ALLGATHER, .do_send = true,
                                .do_recv = true, .check_b = true, .send = send,
                                .send_bytes = bytes, .hdr_b = bytes,
                                .recv = (uint8_t *)recv + (size_t)j * bytes, .recv_bytes = bytes};
    }
    moe_status res = comm_exchange(c, channel, x, nx);
    free(x);
    CHECK(res);
    if (bytes) memmove((uint8_t *)recv + (size_t)g->me * bytes, send, bytes);
    return MOE_OK;
}

moe_status comm_barrier(struct comm *c, int channel, const struct comm_group *g) {
    CHECK(check_group(c, channel, g));
    struct xfer *x = xfers_alloc(g->n - 1);
    if (!x) return MOE_ENOMEM;
    int nx = 0;
    for (int j = 0; j < g->n; j++)
        if (j != g->me)
            x[nx++] = (struct xfer){.peer = g->ranks[j], .kind = OP_BARRIER, .do_send = true,
                                    .do_recv = true, .check_b = true};
    moe_status res = comm_exchange(c, channel, x, nx);
    free(x);
    return res;
}

static moe_status check_peer(const struct comm *c, int channel, int rank) {
    if (channel < 0 || channel >= COMM_CHANNELS)
        return moe_fail(MOE_EINVAL, "comm: channel %d outside [0, %d)", channel, COMM_CHANNELS);
    if (rank < 0 || rank >= c->size || rank == c->rank)
        return moe_fail(MOE_EINVAL, "comm: rank %d is not a peer of rank %d in a %d-rank comm",
                        rank, c->rank, c->size);
    return MOE_OK;
}

/* The receiver acknowledges with its expected size, so both ends learn of a disagreement
 * and the sender knows the bytes arrived. */
moe_status comm_send(struct comm *c, int channel, int to_rank, const void *buf, size_t bytes) {
    CHECK(check_peer(c, channel, to_rank));
    struct xfer x = {.peer = to_rank, .kind = OP_SEND, .in_kind = OP_ACK, .do_send = true,
                     .do_recv = true, .check_b = true, .send = buf, .send_bytes = bytes};
    return comm_exchange(c, channel, &x, 1);
}

moe_status comm_recv(struct comm *c, int channel, int from_rank, void *buf, size_t bytes) {
    CHECK(check_peer(c, channel, from_rank));
    struct xfer x = {.peer = from_rank, .kind = OP_SEND, .do_recv = true, .recv = buf,
                     .recv_bytes = bytes};
    moe_status got = comm_exchange(c, channel, &x, 1);
    if (got != MOE_OK && got != MOE_EINVAL) return got;
    struct xfer ack = {.peer = from_rank, .kind = OP_ACK, .do_send = true, .hdr_b = bytes};
    CHECK(comm_exchange(c, channel, &ack, 1));
    return got;
}
