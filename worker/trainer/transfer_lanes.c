/* transfer_lanes.c — a state transfer over several channels at once (see transfer_lanes.h). */
#include "transfer_lanes.h"

#include "thread_error.h"
#include "transfer_check.h"

#include <pthread.h>
#include <string.h>

/* The lanes' channels: the step's all-to-alls (0) and the buddy copies (2), both idle while
 * a restore runs; the gradients' channel 1 stays out of it. */
static const int lane_channel[TRANSFER_LANES] = {0, 2};

struct lane {
    struct comm *c;
    int peer, lane, sending;
    const struct lane_piece *pc;
    int n;
    uint32_t *sum; // the sender's checksums, or the receiver's of what arrived
    unsigned char *flip;
    struct thread_error err;
};

/* One chunk of piece p: its blocks' checksums sum[...]. */
static moe_status move_chunk(struct lane *ln, const struct lane_piece *p, unsigned char *q,
                             size_t len, uint32_t *sum) {
    int ch = lane_channel[ln->lane];
    if (!ln->sending) {
        CHECK(comm_recv(ln->c, ch, ln->peer, q, len));
        transfer_checksum(q, len, sum, 0); /* the chunk is still in the cache */
        return MOE_OK;
    }
    if (!p->sum) transfer_checksum(q, len, sum, 0);
    int flip = ln->flip && ln->flip >= q && ln->flip < q + len;
    if (flip) *ln->flip ^= 1u << 2;
    moe_status s = comm_send(ln->c, ch, ln->peer, q, len);
    if (flip) *ln->flip ^= 1u << 2;
    return s;
}

/* This lane's chunks (every TRANSFER_LANES-th, counted over all pieces), in order. */
static moe_status run_lane(struct lane *ln) {
    const size_t Q = TRANSFER_LANE_CHUNK_BYTES;
    size_t k = 0;
    uint32_t *sum = ln->sum;
    for (int i = 0; i < ln->n; i++) {
        const struct lane_piece *p = &ln->pc[i];
        for (size_t off = 0; off < p->bytes; off += Q, k++) {
            if (k % TRANSFER_LANES != (size_t)ln->lane) continue;
            size_t len = p->bytes - off < Q ? p->bytes - off : Q;
            CHECK(move_chunk(ln, p, (unsigned char *)p->p + off, len,
                             sum + off / TRANSFER_BLOCK_BYTES));
        }
        sum += transfer_blocks(p->bytes);
    }
    return MOE_OK;
}

static void *lane_main(void *arg) {
    struct lane *ln = arg;
    thread_error_keep(&ln->err, run_lane(ln));
    return NULL;
}

/* The first lane on this thread, the others on their own; the first failure wins. A lane
 * that fails on the data plane breaks the comm, which fails the others' operations at once. */
static moe_status run_lanes(struct comm *c, int peer, int sending, const struct lane_piece *pc,
                            int n, uint32_t *sum, unsigned char *flip) {
    struct lane ln[TRANSFER_LANES];
    pthread_t th[TRANSFER_LANES];
    int started[TRANSFER_LANES] = {0};
    for (int l = 0; l < TRANSFER_LANES; l++)
        ln[l] = (struct lane){c, peer, l, sending, pc, n, sum, flip, {MOE_OK, ""}};
    moe_status s = MOE_OK;
    for (int l = 1; l < TRANSFER_LANES && s == MOE_OK; l++)
        if (!(started[l] = pthread_create(&th[l], NULL, lane_main, &ln[l]) == 0)) {
            s = moe_fail(MOE_ENOMEM, "cannot start a thread for lane %d of a state transfer", l);
            comm_abort(c); /* the peer's side of that lane would wait for nothing */
        }
    if (s == MOE_OK) s = run_lane(&ln[0]);
    for (int l = 1; l < TRANSFER_LANES; l++) {
        if (!started[l]) continue;
        pthread_join(th[l], NULL);
        moe_status e = thread_error_take(&ln[l].err, "");
        if (s == MOE_OK) s = e;
    }
    return s;
}

moe_status transfer_lanes_send(struct comm *c, int to, const struct lane_piece *pc, int n,
                               uint32_t *sum, unsigned char *flip) {
    uint32_t *given = sum;
    for (int i = 0; i < n; i++) {
        if (pc[i].sum) memcpy(given, pc[i].sum, sizeof *given * transfer_blocks(pc[i].bytes));
        given += transfer_blocks(pc[i].bytes);
    }
    return run_lanes(c, to, 1, pc, n, sum, flip);
}

moe_status transfer_lanes_recv(struct comm *c, int from, const struct lane_piece *pc, int n,
                               uint32_t *got) {
    return run_lanes(c, from, 0, pc, n, got, NULL);
}
