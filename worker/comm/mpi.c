/*
 * mpi.c — the mpi backend: peers of the same pod reached through Open MPI.
 *
 * Owns: MPI initialisation (MPI_THREAD_MULTIPLE, or a clear refusal), one duplicate of
 * MPI_COMM_WORLD per channel (so that the two channels' messages never match each other),
 * and the nonblocking transfers the engine polls: a header message (tag 1) then a payload
 * message (tag 2) per direction, MPI_Isend/MPI_Irecv + MPI_Test, so an MPI peer is
 * progressed in the same loop as tcp peers and the same deadline applies.
 * The failure domain is the pod: Open MPI 4.1 cannot report a dead rank (a blocking or
 * waited-on operation with it hangs), so when an MPI peer makes no progress for timeout_s
 * this rank calls MPI_Abort, which ends the whole mpirun job; the other pods' replicas
 * rebuild it. When an operation fails for another reason (a tcp peer died, comm_abort) with
 * MPI requests pending, they are first driven to completion for up to timeout_s (a pod peer
 * in the same operation finishes its side), then the receives still open are cancelled;
 * a send that nobody will ever match cannot be, and its buffer belongs to the caller, so
 * then the job is aborted too. To keep that from happening when a pod peer merely left the
 * operation (its comm broke on a tcp peer of another pod, or the coordinator fenced it), a
 * rank whose comm breaks tells its pod peers at once (a LEAVE message, tag 3, on every
 * channel: the MPI form of shutting down its sockets), a pending transfer with a peer that
 * left fails instead of waiting out the timeout, and closing a broken comm drains what the
 * pod peers still send until each has left too (or timeout_s): their sends complete, and the
 * pod survives to form the next epoch.
 * Never: calls a blocking MPI operation after MPI_Init_thread (MPI_Comm_idup, not dup),
 * sends to a rank outside the pod, or calls the engine (a header that arrived is checked by
 * wire.c, and the engine learns the outcome from transport_mpi's return values).
 */
#include "transport.h"
#include "../../common/clock.h"
#include "../../common/log.h"

#include <limits.h>
#include <mpi.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define TAG_HEADER 1
#define TAG_PAYLOAD 2
#define TAG_LEAVE 3

struct comm_mpi {
    MPI_Comm comm[COMM_CHANNELS];
    atomic_int left;       // our LEAVE went out
    MPI_Request *leave;    // (COMM_CHANNELS * slots) its sends
};

/* One transfer's requests: 0 header out, 1 payload out, 2 header in, 3 payload in. */
struct mpi_xfer {
    MPI_Request req[4];
    MPI_Comm comm;
    void *drain; // payload of a disagreeing size lands here and is dropped
    bool header_in;
};

moe_status comm_mpi_init(int *rank, int *size) {
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS)
            return moe_fail(MOE_EUNAVAILABLE, "comm: MPI_Init_thread failed");
    } else {
        MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_MULTIPLE)
        return moe_fail(MOE_EINVAL,
                        "comm: this MPI provides thread level %d; moed needs "
                        "MPI_THREAD_MULTIPLE (%d) for its two channels",
                        provided, MPI_THREAD_MULTIPLE);
    /* Errors come back as codes; a dead rank still hangs, which the deadline handles. */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, size);
    return MOE_OK;
}

void comm_mpi_finalize(void) {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (inited && !finalized) MPI_Finalize();
}

static void mpi_abort_job(const char *why) {
    LOG_ERROR("comm: %s; aborting the MPI job (the pod is the failure domain)", why);
    MPI_Abort(MPI_COMM_WORLD, 70);
}

moe_status comm_mpi_open(struct comm *c) {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) return moe_fail(MOE_EINVAL, "comm: the mpi backend needs comm_mpi_init first");
    int wrank, wsize;
    MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    int pod = c->rank / c->slots, slot = c->rank % c->slots;
    if (wsize != c->slots || wrank != slot)
        return moe_fail(MOE_EINVAL,
                        "comm: rank %d is slot %d of %d, but its MPI job has it as rank %d of %d "
                        "(one mpirun per pod, MPI rank = slot)",
                        c->rank, slot, c->slots, wrank, wsize);
    c->mpi = calloc(1, sizeof *c->mpi);
    if (!c->mpi) return moe_fail(MOE_ENOMEM, "comm: out of memory");
    for (int ch = 0; ch < COMM_CHANNELS; ch++) c->mpi->comm[ch] = MPI_COMM_NULL;
    for (int s = 0; s < c->slots; s++)
        if (s != slot) c->peers[pod * c->slots + s].mpi_rank = s;
    /* Collective over the pod: nonblocking, so a pod member that never comes is a timeout
     * (and an abort of the job), not a hang. */
    MPI_Request req[COMM_CHANNELS];
    for (int ch = 0; ch < COMM_CHANNELS; ch++)
        if (MPI_Comm_idup(MPI_COMM_WORLD, &c->mpi->comm[ch], &req[ch]) != MPI_SUCCESS)
            return moe_fail(MOE_EUNAVAILABLE, "comm: MPI_Comm_idup failed");
    double deadline = c->open_deadline;
    for (;;) {
        int done = 0;
        MPI_Testall(COMM_CHANNELS, req, &done, MPI_STATUSES_IGNORE);
        if (done) break;
        if (moe_clock_s() > deadline)
            mpi_abort_job("the pod's MPI ranks did not all join the comm in time");
        sched_yield();
    }
    for (int ch = 0; ch < COMM_CHANNELS; ch++)
        MPI_Comm_set_errhandler(c->mpi->comm[ch], MPI_ERRORS_RETURN);
    return MOE_OK;
}

void comm_mpi_leave(struct comm *c) {
    struct comm_mpi *m = c->mpi;
    if (!m || atomic_exchange(&m->left, 1)) return;
    static const char bye = 1;
    int S = c->slots, me = c->rank % S;
    m->leave = malloc(sizeof *m->leave * (size_t)(COMM_CHANNELS * S));
    if (!m->leave) return; /* the peers then wait out their timeout, as before */
    for (int ch = 0; ch < COMM_CHANNELS; ch++)
        for (int s = 0; s < S; s++) {
            MPI_Request *r = &m->leave[ch * S + s];
            *r = MPI_REQUEST_NULL;
            if (s != me && m->comm[ch] != MPI_COMM_NULL)
                MPI_Isend(&bye, 1, MPI_BYTE, s, TAG_LEAVE, m->comm[ch], r);
        }
}

/* A broken comm's last act: take whatever the pod peers still send (their pending sends
 * complete) until every one of them has left on every channel, or timeout_s. */
static void drain(struct comm *c) {
    struct comm_mpi *m = c->mpi;
    int S = c->slots, me = c->rank % S, missing = (S - 1) * COMM_CHANNELS;
    char *seen = calloc((size_t)(COMM_CHANNELS * S), 1);
    double deadline = moe_clock_s() + c->timeout_s;
    long drained = 0;
    while (seen && missing > 0 && moe_clock_s() < deadline) {
        int any = 0;
        for (int ch = 0; ch < COMM_CHANNELS; ch++) {
            int flag = 0;
            MPI_Message msg;
            MPI_Status st;
            if (MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, m->comm[ch], &flag, &msg, &st) !=
                    MPI_SUCCESS || !flag)
                continue;
            int n = 0;
            MPI_Get_count(&st, MPI_BYTE, &n);
            void *buf = malloc(n > 0 ? (size_t)n : 1);
            if (!buf) break;
            MPI_Mrecv(buf, n, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
            free(buf);
            any = 1;
            int src = st.MPI_SOURCE;
            if (st.MPI_TAG == TAG_LEAVE && src >= 0 && src < S && src != me &&
                !seen[ch * S + src]) {
                seen[ch * S + src] = 1;
                missing--;
            } else {
                drained++;
            }
        }
        if (!any) sched_yield();
    }
    if (missing > 0)
        LOG_DEBUG("comm: %d pod peer channel%s did not leave within %.1f s", missing,
                  missing == 1 ? "" : "s", c->timeout_s);
    if (drained) LOG_DEBUG("comm: drained %ld MPI messages of pod peers", drained);
    free(seen);
}

void comm_mpi_close(struct comm *c) {
    struct comm_mpi *m = c->mpi;
    if (!m) return;
    if (atomic_load(&c->broken) || atomic_load(&c->aborted)) {
        comm_mpi_leave(c);
        drain(c);
    }
    for (int i = 0; m->leave && i < COMM_CHANNELS * c->slots; i++)
        if (m->leave[i] != MPI_REQUEST_NULL) MPI_Request_free(&m->leave[i]); /* tiny: sent */
    free(m->leave);
    for (int ch = 0; ch < COMM_CHANNELS; ch++)
        if (m->comm[ch] != MPI_COMM_NULL) MPI_Comm_free(&m->comm[ch]);
    free(m);
    c->mpi = NULL;
}

static moe_status start(struct comm *c, int channel, struct xfer *x) {
    if (x->send_bytes > INT_MAX || x->recv_bytes > INT_MAX)
        return moe_fail(MOE_EINVAL, "comm: %zu bytes to rank %d: the mpi backend moves at most "
                        "%d bytes per message", x->send_bytes > x->recv_bytes ? x->send_bytes
                        : x->recv_bytes, x->peer, INT_MAX);
    struct mpi_xfer *m = calloc(1, sizeof *m);
    if (!m) return moe_fail(MOE_ENOMEM, "comm: out of memory");
    for (int i = 0; i < 4; i++) m->req[i] = MPI_REQUEST_NULL;
    m->comm = c->mpi->comm[channel];
    x->mpi_state = m;
    int to = c->peers[x->peer].mpi_rank;
    int rc = MPI_SUCCESS;
    if (x->do_send) {
        rc |= MPI_Isend(&x->out, (int)WIRE_HEADER_BYTES, MPI_BYTE, to, TAG_HEADER, m->comm,
                        &m->req[0]);
        if (x->send_bytes)
            rc |= MPI_Isend(x->send, (int)x->send_bytes, MPI_BYTE, to, TAG_PAYLOAD, m->comm,
                            &m->req[1]);
    }
    if (x->do_recv)
        rc |= MPI_Irecv(&x->in, (int)WIRE_HEADER_BYTES, MPI_BYTE, to, TAG_HEADER, m->comm,
                        &m->req[2]);
    if (rc != MPI_SUCCESS)
        return moe_fail(MOE_EUNAVAILABLE, "comm: posting MPI transfers with rank %d failed",
                        x->peer);
    return MOE_OK;
}

/* Frees what a transfer holds once its requests are all done (or cancelled). */
static void release(struct xfer *x) {
    struct mpi_xfer *m = x->mpi_state;
    free(m->drain);
    free(m);
    x->mpi_state = NULL;
}

static int test(MPI_Request *r, bool *progressed) {
    if (*r == MPI_REQUEST_NULL) return 1;
    int done = 0;
    if (MPI_Test(r, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return -1;
    if (done) *progressed = true;
    return done;
}

/* 1 done, 0 pending, <0 error (moe_fail set). *progressed when anything completed. */
static int progress(struct comm *c, int channel, struct xfer *x, bool *progressed) {
    struct mpi_xfer *m = x->mpi_state;
    if (test(&m->req[0], progressed) < 0 || test(&m->req[1], progressed) < 0) goto fail;
    if (x->do_recv && !m->header_in) {
        int h = test(&m->req[2], progressed);
        if (h < 0) goto fail;
        if (h) {
            m->header_in = true;
            long n = wire_header_arrived(&c->peers[x->peer].ch[channel], channel, x);
            if (n < 0) return -1;
            void *dst = x->recv;
            if (x->mismatch) dst = m->drain = malloc(n ? (size_t)n : 1);
            if ((n && !dst) || n > INT_MAX) {
                moe_fail(MOE_ENOMEM, "comm: no room for %ld bytes from rank %d", n, x->peer);
                return -1;
            }
            if (n && MPI_Irecv(dst, (int)n, MPI_BYTE, c->peers[x->peer].mpi_rank, TAG_PAYLOAD,
                               m->comm, &m->req[3]) != MPI_SUCCESS)
                goto fail;
        }
    }
    if (test(&m->req[3], progressed) < 0) goto fail;
    x->out_fin = m->req[0] == MPI_REQUEST_NULL && m->req[1] == MPI_REQUEST_NULL;
    x->in_fin = !x->do_recv || (m->header_in && m->req[3] == MPI_REQUEST_NULL);
    if (x->out_fin && x->in_fin) {
        release(x);
        return 1;
    }
    if (!*progressed) { /* waiting: has the peer left the epoch? (its data came before) */
        int left = 0;
        MPI_Iprobe(c->peers[x->peer].mpi_rank, TAG_LEAVE, m->comm, &left, MPI_STATUS_IGNORE);
        if (left) {
            moe_fail(MOE_EUNAVAILABLE, "comm: rank %d left the epoch (its comm broke)", x->peer);
            return -1;
        }
    }
    return 0;
fail:
    moe_fail(MOE_EUNAVAILABLE, "comm: an MPI transfer with rank %d failed", x->peer);
    return -1;
}

/* transport_mpi's progress: any failure is the peer's being unavailable. */
static moe_status progress_status(struct comm *c, int channel, struct xfer *x, bool *moved) {
    return progress(c, channel, x, moved) < 0 ? MOE_EUNAVAILABLE : MOE_OK;
}

/* An MPI peer made no progress for timeout_s: Open MPI 4.1 cannot give up on a rank, so the
 * pod is the failure domain. Does not return. */
static void stalled(struct comm *c, const struct xfer *x, double idle_s) {
    LOG_ERROR("comm: rank %d (MPI rank %d) made no progress for %.1f s in %s; "
              "aborting this MPI job",
              x->peer, c->peers[x->peer].mpi_rank, idle_s, wire_kind_name(x->kind));
    mpi_abort_job("an MPI peer stalled");
}

/* The op failed with MPI requests pending, whose buffers are the caller's: let them finish
 * (up to timeout_s), cancel the receives still open, and abort the MPI job (the failure
 * domain) if a send remains. Returns with no request pending. */
static void settle(struct comm *c, int channel, struct xfer *x, int nx, int culprit) {
    (void)culprit; // whoever failed the operation, a pod peer in it still completes its side
    /* First let the transfers finish: a pod peer that is in the same operation completes
     * its side whether or not it is failing too (it settles the same way), and nothing has
     * to be torn out of Open MPI. Cancelling our receives instead would strand its sends. */
    double deadline = moe_clock_s() + c->timeout_s;
    for (bool broken = false; !broken;) {
        int pending = 0;
        for (int i = 0; i < nx && !broken; i++) {
            if (!x[i].mpi_state) continue;
            bool moved = false;
            int r = progress(c, channel, &x[i], &moved);
            broken = r < 0; // a broken stream: cancel what is left
            pending += r == 0;
        }
        if (!pending || moe_clock_s() > deadline) break;
        sched_yield();
    }
    /* What is left waits on a peer that never came: receives can be cancelled; a send that
     * no one will match cannot, and its buffer is the caller's. */
    for (int i = 0; i < nx; i++) {
        struct mpi_xfer *m = x[i].mpi_state;
        if (!m) continue;
        for (int q = 2; q < 4; q++)
            if (m->req[q] != MPI_REQUEST_NULL) MPI_Cancel(&m->req[q]);
    }
    deadline = moe_clock_s() + 1;
    for (int i = 0; i < nx; i++) {
        struct mpi_xfer *m = x[i].mpi_state;
        if (!m) continue;
        for (;;) {
            int done = 0;
            MPI_Testall(4, m->req, &done, MPI_STATUSES_IGNORE);
            if (done) break;
            if (moe_clock_s() > deadline)
                mpi_abort_job("an MPI send to a peer that left the operation cannot be "
                              "cancelled");
            sched_yield();
        }
        release(&x[i]);
    }
}

const struct transport transport_mpi = {
    .wait = WAIT_TEST,
    .start = start,
    .progress = progress_status,
    .abandon = settle,
    .stalled = stalled,
};
