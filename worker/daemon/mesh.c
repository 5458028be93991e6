/*
 * mesh.c — a job's data plane as the worker daemon holds it: the comm of one slot of a
 * pods x slots mesh, opened on the training thread from the binding table RunSlot carried
 * (rank = pod * slots + slot, the peers' data addresses, the epoch, the cluster token), and
 * aborted from the loop when the coordinator says stop, so that a slot blocked in a
 * collective returns at once instead of after the data-plane timeout.
 * Never: chooses peers or epochs (the coordinator does), or moves tensor bytes itself (the
 * trainer does, through worker/comm).
 */
#include "worker.h"

#include "../../common/log.h"

#include <stdlib.h>
#include <string.h>

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
        .token = j->w->token,
        .peers = peers,
        .timeout_s = j->timeout_s,
    };
    struct comm *c = NULL;
    double t0 = job_now();
    moe_status s = comm_open(&c, &cfg, j->w->listener);
    free(peers);
    if (s != MOE_OK) return s; // comm's message names the peer
    uv_mutex_lock(&j->comm_mu);
    j->comm = c;
    int abort_now = j->aborted; // StopJob came while we were connecting
    uv_mutex_unlock(&j->comm_mu);
    if (abort_now) comm_abort(c);
    LOG_INFO("%s: data plane up: rank %d of %d (%d x %d, %s, epoch %llu) in %.2f s", j->id,
             cfg.rank, n, j->pods, j->slots, j->backend == COMM_MPI ? "mpi" : "tcp",
             (unsigned long long)j->epoch, job_now() - t0);
    return MOE_OK;
}

void job_abort_comm(struct job *j) {
    uv_mutex_lock(&j->comm_mu);
    j->aborted = 1;
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

void job_free(struct job *j) {
    if (!j) return;
    uv_mutex_destroy(&j->comm_mu);
    free(j->peers);
    free(j);
}
