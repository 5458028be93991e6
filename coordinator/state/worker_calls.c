/*
 * worker_calls.c — the calls to workers (see worker_calls.h).
 */
#include "worker_calls.h"

#include "../../common/log.h"
#include "../../proto/methods.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void stop_job_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    (void)resp;
    char *what = arg;
    if (res->code != GRPC_STATUS_OK)
        LOG_WARN("StopJob %s: %s: %s (its heartbeat will say stop again)", what,
                 rpc_code_name(res->code), res->details);
    free(what);
}

void worker_call_stop(struct coordinator *co, const struct job *j, const struct worker *w,
                      uint64_t epoch) {
    if (!w->channel) return;
    Moed__V1__StopJobRequest ref = MOED__V1__STOP_JOB_REQUEST__INIT;
    ref.job_id = (char *)j->id;
    ref.epoch = epoch;
    char *what = malloc(80);
    if (what) snprintf(what, 80, "%s epoch %llu on %s", j->id, (unsigned long long)epoch, w->id);
    rpc_call_async(co->pump, w->channel, RPC_WORKER_STOP_JOB, &ref.base,
                   &moed__v1__empty__descriptor, STOP_JOB_DEADLINE_S, stop_job_reply, what);
}

void worker_call_stop_all(struct coordinator *co, const struct job *j) {
    for (int i = 0; i < job_n_slots(j); i++) {
        struct worker *w = workers_find(co, j->bindings[i].worker_id);
        if (w && strcmp(w->job_id, j->id) == 0) worker_call_stop(co, j, w, j->epoch);
    }
}

moe_status worker_call_probe(struct coordinator *co, const struct worker *w, rpc_reply_cb cb,
                             void *arg) {
    if (!w->channel) return moe_fail(MOE_EUNAVAILABLE, "no channel to %s", w->id);
    Moed__V1__StopJobRequest ref = MOED__V1__STOP_JOB_REQUEST__INIT; // job "": none
    return rpc_call_async(co->pump, w->channel, RPC_WORKER_STOP_JOB, &ref.base,
                          &moed__v1__empty__descriptor, PROBE_DEADLINE_S, cb, arg);
}

moe_status worker_call_fence(struct coordinator *co, const struct job *j, const struct worker *w,
                             rpc_reply_cb cb, void *arg) {
    Moed__V1__FenceRequest req = MOED__V1__FENCE_REQUEST__INIT;
    req.job_id = (char *)j->id;
    req.epoch = j->epoch;
    req.hash_copies = j->rec && j->rec->repair; // a repair learns which copies are good
    return rpc_call_async(co->pump, w->channel, RPC_WORKER_FENCE_SLOT, &req.base,
                          &moed__v1__fence_response__descriptor,
                          req.hash_copies ? REPAIR_FENCE_DEADLINE_S : FENCE_DEADLINE_S, cb, arg);
}

/* Whether a RunSlot round must stop sending: the answer given at once changed the job. */
static int round_over(struct coordinator *co, const char *job_id, uint64_t epoch, uint64_t gen) {
    struct job *j = jobs_find(co, job_id);
    return !j || j->epoch != epoch || j->state != MOED__V1__JOB_STATE__JOB_RUNNING ||
           (gen && (j->rec ? j->rec->gen : 0) != gen);
}

/* A resumed job's first epoch (not a recovery's): slot index req->slot loads its state from
 * the export's file (docs/recovery.md, "Export and resume"). */
static void resume_fields(const struct job *j, Moed__V1__RunSlotRequest *req, int restore) {
    req->resume_step = 0;
    req->resume_path = (char *)protobuf_c_empty_string;
    req->resume_crc32c = 0;
    if (restore || !j->resume) return;
    for (size_t i = 0; i < j->resume->n_slots; i++) {
        const Moed__V1__ExportedSlot *e = j->resume->slots[i];
        if (e->slot != req->slot) continue;
        req->resume_step = j->resume->step;
        req->resume_path = e->path;
        req->resume_crc32c = e->crc32c;
    }
}

moe_status worker_call_run_slots(struct coordinator *co, struct job *j, int restore, uint64_t gen,
                                 rpc_reply_cb cb) {
    int n = job_n_slots(j);
    /* The request: the whole table, so that every slot knows every peer's data address. */
    Moed__V1__SlotBinding *tab = calloc((size_t)n, sizeof *tab);
    Moed__V1__SlotBinding **ptrs = calloc((size_t)n, sizeof *ptrs);
    if (!tab || !ptrs) {
        free(tab);
        free(ptrs);
        return moe_fail(MOE_ENOMEM, "out of memory sending RunSlot");
    }
    for (int k = 0; k < n; k++) {
        tab[k] = job_slot_binding(j, k);
        ptrs[k] = &tab[k];
    }
    Moed__V1__RunSlotRequest req = MOED__V1__RUN_SLOT_REQUEST__INIT;
    req.job_id = j->id;
    req.spec_json = j->spec_json;
    req.pods = j->pods;
    req.slots = j->slots;
    req.epoch = j->epoch;
    req.backend = j->backend;
    req.timeout_s = j->timeout_s;
    req.n_bindings = (size_t)n;
    req.bindings = ptrs;
    req.data_key.len = sizeof j->data_key;
    req.data_key.data = j->data_key;
    if (restore && j->restore_from) {
        req.restore = 1;
        req.restore_step = j->restore_step;
        req.n_restore_from = (size_t)n;
        req.restore_from = j->restore_from;
    }
    /* the request is packed by rpc_call_async: copies of what a synchronous answer may change */
    char job_id[24];
    snprintf(job_id, sizeof job_id, "%s", j->id);
    uint64_t epoch = j->epoch;
    for (int k = 0; k < n; k++) {
        struct worker *w = workers_find(co, j->bindings[k].worker_id);
        req.pod = k / j->slots;
        req.slot = k % j->slots;
        resume_fields(j, &req, restore);
        struct assign_ctx *a = calloc(1, sizeof *a);
        if (!a) break;
        a->co = co;
        snprintf(a->job_id, sizeof a->job_id, "%s", job_id);
        snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
        a->epoch = epoch;
        a->gen = gen;
        a->slot = k;
        int reachable = w && w->channel;
        moe_status s = reachable ? rpc_call_async(co->pump, w->channel, RPC_WORKER_RUN_SLOT,
                                                  &req.base, &moed__v1__empty__descriptor,
                                                  RUN_SLOT_DEADLINE_S, cb, a)
                                 : moe_fail(MOE_EUNAVAILABLE, "no channel to %s", a->worker_id);
        if (s != MOE_OK) {
            struct rpc_result r = {reachable ? GRPC_STATUS_INTERNAL : GRPC_STATUS_UNAVAILABLE, ""};
            snprintf(r.details, sizeof r.details, "%s", moe_errmsg());
            cb(a, &r, NULL); // may requeue, fail or re-plan the job: stop sending
            if (round_over(co, job_id, epoch, gen)) break;
            j = jobs_find(co, job_id);
        }
    }
    free(tab);
    free(ptrs);
    return MOE_OK;
}
