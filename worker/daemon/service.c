/*
 * service.c — the Worker service the coordinator calls: RunSlot starts a job's slot on a
 * training thread, StopJob asks it to stop. Both need the cluster token. One job at a time;
 * a finished job's thread is joined here, on the loop, before the next can start.
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
    free(j);
}

/* The async callback: wake-ups coalesce, so look at the whole state rather than count. */
void worker_on_job_done(uv_async_t *a) {
    struct worker *w = a->data;
    worker_reap_job(w);
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
            w->job->slot == req->slot) {
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
    if (req->pods != 1 || req->slots != 1) {
        rpc_fail(call, GRPC_STATUS_UNIMPLEMENTED,
                 "%s: a %d x %d mesh (pods x slots) needs the distributed data plane, which "
                 "workers do not have yet: only 1 x 1 jobs run", req->job_id, req->pods,
                 req->slots);
        return;
    }
    if (req->pod != 0 || req->slot != 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s: slot (%d, %d) is outside the 1 x 1 mesh",
                 req->job_id, req->pod, req->slot);
        return;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
        return;
    }
    spec_defaults(&j->spec);
    if (spec_parse(&j->spec, req->spec_json, strlen(req->spec_json), "RunSlot spec_json") !=
            MOE_OK ||
        spec_validate(&j->spec) != MOE_OK) {
        LOG_WARN("%s: refused: %s", req->job_id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        free(j);
        return;
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
        free(j);
        return;
    }
    w->job = j;
    LOG_INFO("%s: running slot (%d, %d) of '%s': %ld steps", j->id, j->pod, j->slot, j->spec.name,
             j->spec.run.steps);
    reply_empty(call);
}

static void stop_job(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__JobRef *req = (const Moed__V1__JobRef *)msg;
    if (w->job && !atomic_load(&w->job->finished) && strcmp(w->job->id, req->job_id) == 0) {
        int run = JOB_RUN;
        if (atomic_compare_exchange_strong(&w->job->stop, &run, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: stop requested by the coordinator", req->job_id);
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
