/*
 * service.c — the Worker service the coordinator calls: RunSlot starts a job's slot on a
 * training thread, StopJob asks it to stop (and aborts its data plane, so that a collective
 * waiting on a peer returns at once). Both need the cluster token. One job at a time; a
 * finished job's thread is joined here, on the loop, before the next can start. RunSlot
 * checks everything it is given (the mesh, the slot, the binding table, the backend against
 * what this process can do) and answers INVALID_ARGUMENT naming what is wrong.
 */
#include "worker.h"

#include "../../common/log.h"
#include "proto/moed.pb-c.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

void worker_reap_job(struct worker *w) {
    struct job *j = w->job;
    if (!j || !atomic_load(&j->finished)) return;
    /* finished is the thread's last word: the join returns at once */
    uv_thread_join(&j->thread);
    LOG_DEBUG("%s: training thread joined", j->id);
    w->job = NULL;
    job_free(j);
}

/* The async callback: wake-ups coalesce, so look at the whole state rather than count. */
void worker_on_job_done(uv_async_t *a) {
    struct worker *w = a->data;
    int had = w->job != NULL;
    worker_reap_job(w);
    if (had && !w->job) worker_heartbeat_now(w); // "idle": the coordinator may bind us again
    if (atomic_load(&w->shutting_down) && !w->job) worker_shutdown_continue(w);
}

/* The id names the scratch file (<dir>/<id>.safetensors): nothing that could leave it. */
static int job_id_ok(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n >= sizeof ((struct job *)0)->id || id[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!isalnum(c) && c != '-' && c != '_' && c != '.') return 0;
    }
    return 1;
}

static void reply_empty(struct rpc_call *call) {
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

/* The mesh part of a RunSlot for more than one slot: the binding table must name every slot
 * once with a data address, and an mpi slot must be this process's MPI rank. Returns 0 when
 * it is fine, else 1 after failing the call. */
static int check_mesh(struct rpc_call *call, struct worker *w, const Moed__V1__RunSlotRequest *req,
                      long n, enum comm_backend *backend) {
    if (n > COMM_MAX_RANKS) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: a %d x %d mesh has more than %d slots",
                 req->job_id, req->pods, req->slots, COMM_MAX_RANKS);
        return 1;
    }
    if (req->epoch == 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: epoch 0: a mesh binding needs an epoch",
                 req->job_id);
        return 1;
    }
    if (strcmp(req->backend, "mpi") == 0) {
        *backend = COMM_MPI;
    } else if (strcmp(req->backend, "tcp") == 0 || !req->backend[0]) {
        *backend = COMM_TCP;
    } else {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: backend '%.32s': want tcp or mpi",
                 req->job_id, req->backend);
        return 1;
    }
    if (*backend == COMM_MPI && (w->mpi_size != req->slots || w->mpi_rank != req->slot)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) of an mpi mesh needs MPI "
                 "rank %d of %d, but this worker is %s", req->job_id, req->pod, req->slot,
                 req->slot, req->slots, w->mpi_size ? "another rank" : "not under mpirun");
        return 1;
    }
    if ((long)req->n_bindings != n) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: %zu bindings for a %d x %d mesh",
                 req->job_id, req->n_bindings, req->pods, req->slots);
        return 1;
    }
    char *seen = calloc((size_t)n, 1);
    if (!seen) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
        return 1;
    }
    int bad = 0;
    for (size_t i = 0; i < req->n_bindings && !bad; i++) {
        const Moed__V1__SlotBinding *b = req->bindings[i];
        long k = (long)b->pod * req->slots + b->slot;
        int needs_tcp = *backend == COMM_TCP || b->pod != req->pod;
        if (b->pod < 0 || b->pod >= req->pods || b->slot < 0 || b->slot >= req->slots || seen[k]) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: binding %zu names slot (%d, %d): "
                     "outside the mesh or twice", req->job_id, i, b->pod, b->slot);
            bad = 1;
        } else if (needs_tcp && (!strchr(b->data_address, ':') ||
                                 strlen(b->data_address) >= COMM_ADDR_MAX)) {
            rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) on %.64s has no "
                     "usable data address ('%.64s')", req->job_id, b->pod, b->slot, b->worker_id,
                     b->data_address);
            bad = 1;
        }
        if (!bad) seen[k] = 1;
    }
    free(seen);
    return bad;
}

static void run_slot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__RunSlotRequest *req = (const Moed__V1__RunSlotRequest *)msg;
    if (atomic_load(&w->shutting_down)) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "worker %s is shutting down", w->worker_id);
        return;
    }
    worker_reap_job(w); // a job that just ended may not have been joined yet
    if (w->job) {
        if (strcmp(w->job->id, req->job_id) == 0 && w->job->pod == req->pod &&
            w->job->slot == req->slot && w->job->epoch == req->epoch) {
            /* a coordinator that restarted may send the same slot again: it runs already */
            LOG_INFO("%s: RunSlot again for the slot it is running: nothing to do", req->job_id);
            reply_empty(call);
            return;
        }
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "busy with %s", w->job->id);
        return;
    }
    if (!job_id_ok(req->job_id)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
                 "job_id '%.64s' is not a job id (letters, digits, '-', '_', '.'; at most 63)",
                 req->job_id);
        return;
    }
    if (req->pods < 1 || req->slots < 1) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT,
                 "%s: the mesh must have pods >= 1 and slots >= 1 (got %d x %d)", req->job_id,
                 req->pods, req->slots);
        return;
    }
    if (req->pod < 0 || req->pod >= req->pods || req->slot < 0 || req->slot >= req->slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) is outside the %d x %d mesh",
                 req->job_id, req->pod, req->slot, req->pods, req->slots);
        return;
    }
    long n = (long)req->pods * req->slots;
    int mesh = n > 1;
    enum comm_backend backend = COMM_TCP;
    if (mesh && check_mesh(call, w, req, n, &backend)) return;
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
        return;
    }
    uv_mutex_init(&j->comm_mu);
    spec_defaults(&j->spec);
    if (spec_parse(&j->spec, req->spec_json, strlen(req->spec_json), "RunSlot spec_json") !=
            MOE_OK ||
        spec_validate(&j->spec) != MOE_OK) {
        LOG_WARN("%s: refused: %s", req->job_id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        job_free(j);
        return;
    }
    if (j->spec.mesh.pods != req->pods || j->spec.mesh.slots != req->slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: the spec's mesh is %d x %d but RunSlot "
                 "binds a %d x %d mesh", req->job_id, j->spec.mesh.pods, j->spec.mesh.slots,
                 req->pods, req->slots);
        job_free(j);
        return;
    }
    j->pods = req->pods;
    j->slots = req->slots;
    j->epoch = req->epoch;
    j->backend = backend;
    j->timeout_s = req->timeout_s > 0 ? req->timeout_s : j->spec.mesh.timeout_s;
    if (mesh) {
        j->peers = calloc((size_t)n, sizeof *j->peers);
        if (!j->peers) {
            rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
            job_free(j);
            return;
        }
        for (size_t i = 0; i < req->n_bindings; i++) {
            const Moed__V1__SlotBinding *b = req->bindings[i];
            snprintf(j->peers[b->pod * req->slots + b->slot], COMM_ADDR_MAX, "%s", b->data_address);
        }
    }
    j->w = w;
    snprintf(j->id, sizeof j->id, "%s", req->job_id);
    j->pod = req->pod;
    j->slot = req->slot;
    atomic_init(&j->stop, JOB_RUN);
    atomic_init(&j->step, 0);
    atomic_init(&j->finished, 0);
    if (uv_thread_create(&j->thread, job_thread, j) != 0) {
        LOG_ERROR("%s: cannot start a training thread", j->id);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker cannot start a training thread");
        job_free(j);
        return;
    }
    w->job = j;
    LOG_INFO("%s: running slot (%d, %d) of the %d x %d mesh of '%s' (epoch %llu): %ld steps",
             j->id, j->pod, j->slot, j->pods, j->slots, j->spec.name,
             (unsigned long long)j->epoch, j->spec.run.steps);
    reply_empty(call);
}

static void stop_job(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__JobRef *req = (const Moed__V1__JobRef *)msg;
    if (w->job && !atomic_load(&w->job->finished) && strcmp(w->job->id, req->job_id) == 0) {
        int run = JOB_RUN;
        if (atomic_compare_exchange_strong(&w->job->stop, &run, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: stop requested by the coordinator", req->job_id);
        job_abort_comm(w->job); // a collective waiting on a peer returns now
    } else {
        LOG_DEBUG("StopJob %.64s: not running here", req->job_id);
    }
    reply_empty(call); // idempotent: stopping a job that is not here is done already
}

const struct rpc_method worker_methods[] = {
    {"/moed.v1.Worker/RunSlot", &moed__v1__run_slot_request__descriptor, RPC_UNARY,
     RPC_AUTH_CLUSTER, run_slot},
    {"/moed.v1.Worker/StopJob", &moed__v1__job_ref__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER,
     stop_job},
};
const int worker_n_methods = sizeof worker_methods / sizeof worker_methods[0];
