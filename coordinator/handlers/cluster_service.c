/*
 * cluster_service.c — the Cluster service: what workers call (see handlers.h).
 * Registration and heartbeats go to policy/membership.c, reports to policy/reports.c (faults
 * to policy/faults.c, restores to policy/recovery.c). Every call that may have freed a worker
 * ends with a schedule pass, once the worker has its answer.
 * Identity: every call but a first registration carries the calling worker's own credential
 * (proto/rpc.c resolved it through state/workers.c before the handler runs), and a worker
 * speaks only for itself: a request naming another worker's id is refused (PERMISSION_DENIED,
 * logged under a rate limit). Which slot a worker may speak for is the policies' to judge.
 */
#include "handlers.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../policy/faults.h"
#include "../policy/membership.h"
#include "../policy/recovery.h"
#include "../policy/reports.h"
#include "../policy/schedule.h"

#include <stdio.h>
#include <string.h>

#define CO(ctx) ((struct coordinator *)(ctx))

/* The worker whose credential the call carries, when the request names that worker (`named`;
 * NULL: the request names none); otherwise the call is refused and NULL returned. */
static struct worker *caller(struct rpc_call *call, struct coordinator *co, const char *named) {
    const char *me = rpc_call_identity(call);
    struct worker *w = me ? workers_find(co, me) : NULL;
    if (!w) {
        rpc_refuse(call, GRPC_STATUS_UNAUTHENTICATED, "this call needs a worker's own credential");
        return NULL;
    }
    if (named && strcmp(named, w->id) != 0) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "%s cannot speak for worker %.64s",
                   w->id, named);
        return NULL;
    }
    return w;
}

/* The job a worker's report names and the worker (the caller itself); 0 after failing the call
 * when the caller is not the named worker, or the job is unknown (NOT_FOUND). */
static int report_source(struct rpc_call *call, struct coordinator *co, const char *job_id,
                         const char *worker_id, struct job **j, struct worker **w) {
    *w = caller(call, co, worker_id);
    if (!*w) return 0;
    *j = jobs_find(co, job_id);
    if (*j) return 1;
    rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %.64s", job_id);
    return 0;
}

static void reply_empty(struct rpc_call *call) {
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

/* What the request alone can show is wrong with a registration; NULL when nothing. */
static const char *bad_registration(const Moed__V1__RegisterRequest *req, char *why, size_t cap) {
    if (!req->address[0] || !strchr(req->address, ':'))
        snprintf(why, cap, "address \"%s\" is not host:port", req->address);
    else if (req->pod < 0)
        snprintf(why, cap, "pod %d is negative", req->pod);
    else if (req->data_address[0] && !strchr(req->data_address, ':'))
        snprintf(why, cap, "data_address \"%s\" is not host:port", req->data_address);
    else if (req->mpi_size < 0 ||
             (req->mpi_size > 0 &&
              (req->mpi_rank < 0 || req->mpi_rank >= req->mpi_size || !req->mpi_job[0])))
        snprintf(why, cap, "mpi rank %d of size %d (job \"%s\"): want 0 <= rank < size and a job "
                 "id, or size 0", req->mpi_rank, req->mpi_size, req->mpi_job);
    else
        return NULL;
    return why;
}

void handle_register_worker(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__RegisterRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    char why[512];
    if (bad_registration(req, why, sizeof why)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", why);
        return;
    }
    /* The cluster token makes a new worker; an existing id is re-registered only with that
     * worker's own credential (a restarted worker process registers as a new one). */
    const char *me = rpc_call_identity(call);
    struct worker *known = me ? workers_find(co, me) : NULL;
    if (me && strcmp(req->worker_id, me) != 0) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "the credential of %s cannot register "
                   "worker id \"%.64s\"", me, req->worker_id);
        return;
    }
    if (!me && req->worker_id[0] && workers_find(co, req->worker_id)) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "worker id %.64s is taken: registering it "
                   "again needs its worker credential (without an id, a new worker joins)",
                   req->worker_id);
        return;
    }
    struct worker *w;
    if (membership_register(co, req, known, rpc_call_peer(call), &w) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    Moed__V1__RegisterResponse resp = MOED__V1__REGISTER_RESPONSE__INIT;
    resp.worker_id = w->id;
    resp.heartbeat_interval_ms = co->cfg.heartbeat_interval_ms;
    resp.idle_heartbeat_interval_ms = membership_idle_told(co, w);
    resp.cluster_id = co->cluster_id;
    resp.worker_credential = w->credential;
    resp.refused = w->refused;
    rpc_reply(call, &resp.base);
    schedule_pass(co);
}

void handle_heartbeat(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__HeartbeatRequest *req = (const void *)m;
    struct worker *w = caller(call, CO(ctx), req->worker_id);
    if (!w) return;
    Moed__V1__HeartbeatResponse resp = MOED__V1__HEARTBEAT_RESPONSE__INIT;
    membership_heartbeat(CO(ctx), w, req, &resp);
    rpc_reply(call, &resp.base);
}

void handle_report_step(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__StepReport *req = (const void *)m;
    struct job *j;
    struct worker *w;
    if (!report_source(call, CO(ctx), req->job_id, req->worker_id, &j, &w)) return;
    if (!req->n_metrics) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "a step report without metrics");
        return;
    }
    int stop;
    if (reports_step(CO(ctx), j, w, req, &stop) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_OUT_OF_RANGE, "%s", moe_errmsg());
        return;
    }
    Moed__V1__StepReportResponse resp = MOED__V1__STEP_REPORT_RESPONSE__INIT;
    resp.stop = stop;
    /* it stands for a heartbeat (reports.c), unless the heartbeat's answer would say more
     * than "alive": register again (a restarted coordinator), or back from the dead */
    resp.heartbeat_now = !w->confirmed || !worker_alive(w) ||
                         w->state == MOED__V1__WORKER_STATE__WORKER_LEFT;
    resp.report_interval_ms = membership_report_interval(CO(ctx));
    rpc_reply(call, &resp.base);
}

void handle_upload_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ModelChunk *req = (const void *)m;
    struct worker *w = caller(call, CO(ctx), NULL); // the chunk names no worker: the caller
    if (!w) return;
    struct job *j = jobs_find(CO(ctx), req->job_id);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %s", req->job_id);
        return;
    }
    /* offset + len is never computed: an offset near INT64_MAX would overflow it */
    if (req->total_bytes <= 0 || req->offset < 0 || req->offset > req->total_bytes ||
        req->data.len > (uint64_t)(req->total_bytes - req->offset)) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "chunk at %ld (+%zu) outside a %ld-byte model",
                 (long)req->offset, req->data.len, (long)req->total_bytes);
        return;
    }
    moe_status s = reports_model_chunk(CO(ctx), j, w, req);
    if (s == MOE_EAUTH) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "%s", moe_errmsg());
        return;
    }
    if (s != MOE_OK) {
        rpc_fail(call, s == MOE_EINVAL ? GRPC_STATUS_FAILED_PRECONDITION : GRPC_STATUS_INTERNAL,
                 "%s", moe_errmsg());
        return;
    }
    reply_empty(call);
}

void handle_report_job_end(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobEndReport *req = (const void *)m;
    struct job *j;
    struct worker *w;
    if (!report_source(call, CO(ctx), req->job_id, req->worker_id, &j, &w)) return;
    moe_status s = reports_job_end(CO(ctx), j, w, req);
    if (s == MOE_EAUTH) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "%s", moe_errmsg());
        return;
    }
    if (s != MOE_OK) {
        rpc_fail(call, s == MOE_EFORMAT ? GRPC_STATUS_DATA_LOSS : GRPC_STATUS_INTERNAL, "%s",
                 moe_errmsg());
        return;
    }
    reply_empty(call);
    schedule_pass(CO(ctx));
}

/* The slot a fault or restore report speaks for (reports_slot); -1 for a stale report, -2
 * after failing the call for a slot outside the mesh. */
static int recovery_report_slot(struct rpc_call *call, const struct job *j, struct worker *w,
                                int pod, int slot, uint64_t epoch) {
    w->last_heartbeat_ms = moe_wall_ms(); // it is alive, whatever its peers are
    int k = reports_slot(j, w, pod, slot, epoch);
    if (k == -2) rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
    return k;
}

void handle_report_fault(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__FaultReport *req = (const void *)m;
    struct job *j;
    struct worker *w;
    if (!report_source(call, CO(ctx), req->job_id, req->worker_id, &j, &w)) return;
    int k = recovery_report_slot(call, j, w, req->pod, req->slot, req->epoch);
    if (k == -2) return;
    if (k >= 0)
        fault_reported(CO(ctx), j, k, req);
    else
        LOG_INFO("%s: fault report of slot (%d, %d), epoch %llu, from %s ignored (the job is "
                 "%s, epoch %llu): %s", j->id, req->pod, req->slot,
                 (unsigned long long)req->epoch, w->id, job_state_name(j->state),
                 (unsigned long long)j->epoch, req->error);
    reply_empty(call);
}

void handle_report_restored(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__RestoredReport *req = (const void *)m;
    struct job *j;
    struct worker *w;
    if (!report_source(call, CO(ctx), req->job_id, req->worker_id, &j, &w)) return;
    int k = recovery_report_slot(call, j, w, req->pod, req->slot, req->epoch);
    if (k == -2) return;
    if (k >= 0)
        recovery_restored(CO(ctx), j, k, req);
    else
        LOG_INFO("%s: restored report of slot (%d, %d), epoch %llu, from %s ignored (epoch %llu)",
                 j->id, req->pod, req->slot, (unsigned long long)req->epoch, w->id,
                 (unsigned long long)j->epoch);
    reply_empty(call);
}
