/*
 * mesh.c — a job as the loop and its training thread share it. Its data plane: the comm of
 * one slot of a pods x slots mesh, opened on the training thread from the binding table
 * RunSlot carried (rank = pod * slots + slot, the peers' data addresses, the epoch, the
 * job's data-plane key, mesh.encrypt), and aborted from the loop when the coordinator says stop, so that a slot
 * blocked in a collective returns at once instead of after the data-plane timeout; a peer
 * whose connection closes while the steps run is reported from the comm's watcher thread at
 * once (comm_config.on_peer_lost), not when the step next reaches the data plane. Stopping
 * the job (the coordinator's word, or a shutdown) and waking a thread that waits.
 * For recovery (docs/recovery.md) it also owns the bindings of epochs: the first one adopted
 * when RunSlot makes the job, a later one handed from the loop (a recovery's RunSlot) to the
 * training thread; and the fence: FenceSlot aborts the epoch's comm and freezes the trainer's
 * state (worker/trainer/replica.h) so that the copies it lists stay what they are until the
 * next epoch begins.
 * Never: chooses peers or epochs (the coordinator does), or moves tensor bytes itself (the
 * trainer does, through worker/comm).
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/log.h"

#include <stdlib.h>
#include <string.h>

/* The comm's watcher thread: a peer's connection closed while this slot trains. The
 * coordinator hears it now rather than when the step next reaches the data plane (a large
 * part of a step later); the thread meets the same failure there, freezes its state and
 * reports again, which the coordinator takes as the same fault. A peer seen exiting is
 * named as such: the coordinator takes it as lost without waiting for its fence. */
static void peer_lost(void *arg, int rank, bool exited, const char *why) {
    struct job *j = arg;
    if (!atomic_load(&j->in_steps) || atomic_load(&j->stop) != JOB_RUN || !j->recoverable)
        return;
    LOG_WARN("%s: slot (%d, %d) epoch %llu: peer rank %d lost: %s", j->id, j->pod, j->slot,
             (unsigned long long)j->epoch, rank, why);
    struct fault_detail d = {.refused_from = -1, .peer_exited = exited, .exited_rank = rank};
    job_report_fault(j, j->report_ch, atomic_load(&j->step), why, &d);
}

moe_status job_open_comm(struct job *j) {
    int n = j->pods * j->slots;
    const char **peers = calloc((size_t)n, sizeof *peers);
    if (!peers) return moe_fail(MOE_ENOMEM, "out of memory for the peer table");
    for (int r = 0; r < n; r++) {
        /* mpi: the ranks of our own pod are reached through MPI, the other pods through tcp */
        int same_pod = r / j->slots == j->pod;
        peers[r] = j->backend == COMM_MPI && same_pod ? NULL : j->peers[r];
    }
    struct comm_config cfg = {
        .backend = j->backend,
        .rank = j->pod * j->slots + j->slot,
        .size = n,
        .pods = j->pods,
        .slots = j->slots,
        .epoch = j->epoch,
        .job_id = j->id,
        .key = j->data_key,
        .encrypt = j->spec.mesh.encrypt,
        .peers = peers,
        .timeout_s = j->timeout_s,
        .cancel = &j->open_cancel,
        .on_peer_lost = j->report_ch ? peer_lost : NULL,
        .on_peer_lost_arg = j,
    };
    struct comm *c = NULL;
    double t0 = moe_clock_s();
    moe_status s = comm_open(&c, &cfg, j->w->listeners[j->local]);
    free(peers);
    if (s != MOE_OK) return s; // comm's message names the peer
    uv_mutex_lock(&j->comm_mu);
    j->comm = c;
    /* StopJob, or a fence of this epoch, came while we were connecting */
    int abort_now = j->aborted || j->fenced_epoch >= j->epoch;
    uv_mutex_unlock(&j->comm_mu);
    if (abort_now) comm_abort(c);
    for (int r = 0; r < n && r < COMM_MAX_RANKS; r++) j->links[r] = comm_peer_transport(c, r);
    j->links_epoch = j->epoch;
    LOG_INFO("%s: data plane up: rank %d of %d (%d x %d, %s, epoch %llu, %d peers over shared "
             "memory, %d over encrypted tcp) in %.2f s", j->id, cfg.rank, n, j->pods, j->slots,
             j->backend == COMM_MPI ? "mpi" : "tcp", (unsigned long long)j->epoch,
             comm_shm_peers(c), comm_encrypted_peers(c), moe_clock_s() - t0);
    return MOE_OK;
}

/* Any thread: a collective blocked in the job's comm returns now. */
static void abort_comm(struct job *j) {
    uv_mutex_lock(&j->comm_mu);
    j->aborted = 1;
    atomic_store(&j->open_cancel, 1);
    if (j->comm) comm_abort(j->comm);
    uv_mutex_unlock(&j->comm_mu);
}

void job_close_comm(struct job *j) {
    uv_mutex_lock(&j->comm_mu);
    struct comm *c = j->comm;
    j->comm = NULL;
    uv_mutex_unlock(&j->comm_mu);
    if (c) comm_close(c);
}

void epoch_binding_free(struct epoch_binding *b) {
    if (!b) return;
    free(b->peers);
    free(b->restore_from);
    free(b);
}

uint64_t job_epoch(struct job *j) {
    uv_mutex_lock(&j->ep_mu);
    uint64_t e = j->next && j->next->epoch > j->epoch ? j->next->epoch : j->epoch;
    uv_mutex_unlock(&j->ep_mu);
    return e;
}

void job_adopt(struct job *j, struct epoch_binding *b) {
    uv_mutex_lock(&j->comm_mu);
    j->epoch = b->epoch;
    j->aborted = 0;
    atomic_store(&j->open_cancel, j->fenced_epoch >= j->epoch ||
                                      atomic_load(&j->stop) == JOB_STOP_COORDINATOR);
    free(j->peers);
    j->peers = b->peers;
    b->peers = NULL;
    j->timeout_s = b->timeout_s;
    uv_mutex_unlock(&j->comm_mu);
    free(j->cur.restore_from);
    j->cur = *b;
    b->restore_from = NULL;
    free(b);
}

void job_next_epoch(struct job *j, struct epoch_binding *b) {
    uv_mutex_lock(&j->ep_mu);
    if (j->next && j->next->epoch >= b->epoch) { /* the same (or newer) one is waiting */
        uv_mutex_unlock(&j->ep_mu);
        epoch_binding_free(b);
        return;
    }
    /* a thread still in an older epoch (opening it, or in it without having noticed the
     * failure yet) leaves it now: before the binding is published, so that nothing here can
     * reach the comm of the epoch the thread adopts next (it adopts under ep_mu) */
    uv_mutex_lock(&j->comm_mu);
    atomic_store(&j->open_cancel, 1);
    if (j->comm) comm_abort(j->comm);
    uv_mutex_unlock(&j->comm_mu);
    epoch_binding_free(j->next);
    j->next = b;
    uv_cond_broadcast(&j->ep_cv);
    uv_mutex_unlock(&j->ep_mu);
}

/* Wakes the thread if it waits for an epoch. */
static void wake(struct job *j) {
    uv_mutex_lock(&j->ep_mu);
    uv_cond_broadcast(&j->ep_cv);
    uv_mutex_unlock(&j->ep_mu);
}

int job_stop(struct job *j, enum job_stop why) {
    int run = JOB_RUN;
    int stopped = atomic_compare_exchange_strong(&j->stop, &run, (int)why);
    if (why == JOB_STOP_COORDINATOR) abort_comm(j);
    wake(j);
    return stopped;
}

int job_fence(struct job *j, uint64_t epoch, struct state_copy *copies, int max, int *n,
              long *live, int hash) {
    uv_mutex_lock(&j->comm_mu);
    if (epoch > j->fenced_epoch) j->fenced_epoch = epoch;
    if (j->epoch <= epoch) atomic_store(&j->open_cancel, 1);
    if (j->comm && j->epoch <= epoch) comm_abort(j->comm);
    uv_mutex_unlock(&j->comm_mu);
    *n = 0;
    *live = -1;
    uv_mutex_lock(&j->ep_mu);
    int holds = j->trainer != NULL;
    if (holds) *n = replica_fence(j->trainer, copies, max, live, hash);
    uv_mutex_unlock(&j->ep_mu);
    return holds && *n > 0;
}

void job_free(struct job *j) {
    if (!j) return;
    uv_mutex_destroy(&j->comm_mu);
    uv_mutex_destroy(&j->ep_mu);
    uv_cond_destroy(&j->ep_cv);
    epoch_binding_free(j->next);
    free(j->cur.restore_from);
    free(j->peers);
    free(j);
}
