/*
 * schedule.c — binding queued jobs to workers: the oldest queued job whose whole mesh the
 * idle workers can hold (placement.c chooses them) is bound, slot by slot, in a new epoch;
 * the binding is stored (one synced batch with the job and the workers) before RunSlot, with
 * the whole binding table, goes to every bound worker; and the answers are handled: every
 * slot accepted (event "running"), or a refusal that requeues the job (a busy or unreachable
 * worker, before any step) or fails it (a worker that cannot play it). Recovery's RunSlots
 * (recovery.c) go through the same sender with their own answer handler.
 * Never: chooses workers (placement.c), or waits: every call is asynchronous, on the loop.
 */
#include "coordinator.h"

#include "../common/log.h"
#include "../proto/methods.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Unbinds every slot of a job that goes back to the queue; workers that may have started it
 * are told to stop, and stay bound until they say they have (end report, idle heartbeat). */
static void requeue(struct coordinator *co, struct job *j, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void requeue(struct coordinator *co, struct job *j, const char *fmt, ...) {
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    j->state = MOED__V1__JOB_STATE__JOB_QUEUED;
    j->started_ms = 0;
    coordinator_stop_workers(co, j);
    memset(j->bindings, 0, sizeof *j->bindings * (size_t)(j->pods * j->slots));
    j->n_running = 0;
    coordinator_event(co, j, 1, "requeued", "%s", why);
}

static void run_slot_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    struct assign_ctx *a = arg;
    struct coordinator *co = a->co;
    if (co->stopping) {
        free(a);
        return;
    }
    struct job *j = coordinator_find_job(co, a->job_id);
    struct worker *w = coordinator_find_worker(co, a->worker_id);
    int current = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->epoch == a->epoch &&
                  !strcmp(j->bindings[a->slot].worker_id, a->worker_id);
    int P = j ? j->pods : 1, S = j ? j->slots : 1;
    if (res->code == GRPC_STATUS_OK) {
        if (current && !j->bindings[a->slot].running) {
            j->bindings[a->slot].running = 1;
            if (++j->n_running == P * S) {
                if (P * S == 1)
                    coordinator_event(co, j, 0, "running", "%s is running slot (0, 0)", a->worker_id);
                else
                    coordinator_event(co, j, 0, "running", "all %d slots of the %d x %d mesh "
                                      "are running (epoch %llu)", P * S, P, S,
                                      (unsigned long long)a->epoch);
            }
        } else if (!current && w && j) {
            coordinator_stop_worker(co, j, w); // started a binding that is over already
        }
        free(a);
        return;
    }
    LOG_WARN("RunSlot %s slot (%d, %d) epoch %llu on %s: %s: %s", a->job_id, a->slot / S,
             a->slot % S, (unsigned long long)a->epoch, a->worker_id, rpc_code_name(res->code),
             res->details);
    if (w && strcmp(w->job_id, a->job_id) == 0 && w->epoch == a->epoch) {
        w->job_id[0] = 0;
        if (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY) w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        coordinator_save_worker(co, w);
    }
    /* Busy (still finishing its previous job) or unreachable: not the job's fault. The worker
     * waits for a heartbeat that shows it idle (or for the timeout that declares it dead). */
    int not_the_jobs_fault = res->code == GRPC_STATUS_UNAVAILABLE ||
                             res->code == GRPC_STATUS_DEADLINE_EXCEEDED;
    if (w && not_the_jobs_fault) w->awaiting_idle = 1;
    if (current && !j->step) {
        char slot[64] = "";
        if (P * S > 1) snprintf(slot, sizeof slot, " slot (%d, %d)", a->slot / S, a->slot % S);
        if (res->code == GRPC_STATUS_INVALID_ARGUMENT || res->code == GRPC_STATUS_UNIMPLEMENTED ||
            (!not_the_jobs_fault && ++j->assign_attempts >= co->cfg.max_assign_attempts)) {
            coordinator_finish_job(co, j, MOED__V1__JOB_STATE__JOB_FAILED, "failed",
                                   "worker %s could not start it%s: %s: %s", a->worker_id, slot,
                                   rpc_code_name(res->code), res->details);
            coordinator_stop_workers(co, j);
        } else {
            requeue(co, j, "worker %s refused it%s: %s: %s", a->worker_id, slot,
                    rpc_code_name(res->code), res->details);
        }
    } else if (current) {
        coordinator_fail_slot(co, j, a->slot, "failed", "worker %s could not start it: %s: %s",
                              a->worker_id, rpc_code_name(res->code), res->details);
    }
    free(a);
    coordinator_schedule(co);
}

/* "slot (0, 0) bound to w-1 at 127.0.0.1:4000" for 1 x 1; the table of a mesh otherwise. */
void coordinator_binding_text(const struct job *j, char *out, size_t cap) {
    int n = j->pods * j->slots;
    if (n == 1) {
        snprintf(out, cap, "slot (0, 0) bound to %s at %s", j->bindings[0].worker_id,
                 j->bindings[0].address);
        return;
    }
    size_t o = (size_t)snprintf(out, cap, "epoch %llu: %d x %d mesh (%s) bound:",
                                (unsigned long long)j->epoch, j->pods, j->slots, j->backend);
    for (int k = 0; k < n && o < cap; k++)
        o += (size_t)snprintf(out + o, cap - o, "%s (%d, %d) %s", k ? "," : "", k / j->slots,
                              k % j->slots, j->bindings[k].worker_id);
}

/* Binds every slot of j to the chosen workers, stores the binding and the new epoch (one
 * synced batch), then sends RunSlot to each. Returns 0 when nothing could be stored. */
static int bind_job(struct coordinator *co, struct job *j, struct worker **chosen) {
    int n = j->pods * j->slots;
    j->state = MOED__V1__JOB_STATE__JOB_RUNNING;
    j->started_ms = now_ms();
    j->epoch++;
    j->n_running = 0;
    j->failing_ms = 0;
    struct store_batch *b = store_batch_new();
    for (int k = 0; k < n; k++) {
        struct worker *w = chosen[k];
        struct binding *bd = &j->bindings[k];
        memset(bd, 0, sizeof *bd);
        snprintf(bd->worker_id, sizeof bd->worker_id, "%s", w->id);
        snprintf(bd->address, sizeof bd->address, "%s", w->address);
        snprintf(bd->data_address, sizeof bd->data_address, "%s", w->data_address);
        bd->mpi_rank = w->mpi_rank;
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        w->slot = k % j->slots;
        w->epoch = j->epoch;
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        coordinator_batch_worker(b, w);
    }
    char text[700];
    coordinator_binding_text(j, text, sizeof text);
    /* The decision is stored before any worker hears of it. */
    if (coordinator_event_batch(co, j, b, 1, "scheduled", "%s", text) != MOE_OK) {
        LOG_ERROR("%s: cannot store the binding: %s", j->id, moe_errmsg());
        j->state = MOED__V1__JOB_STATE__JOB_QUEUED;
        j->started_ms = 0;
        j->epoch--;
        for (int k = 0; k < n; k++) {
            chosen[k]->job_id[0] = 0;
            chosen[k]->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        }
        memset(j->bindings, 0, sizeof *j->bindings * (size_t)n);
        return 0;
    }
    coordinator_send_run_slots(co, j, 0, 0, run_slot_reply);
    return 1;
}

void coordinator_send_run_slots(struct coordinator *co, struct job *j, int restore, uint64_t gen,
                                rpc_reply_cb cb) {
    int n = j->pods * j->slots;
    /* The request: the whole table, so that every slot knows every peer's data address. */
    Moed__V1__SlotBinding *tab = calloc((size_t)n, sizeof *tab);
    Moed__V1__SlotBinding **ptrs = calloc((size_t)n, sizeof *ptrs);
    if (!tab || !ptrs) {
        free(tab);
        free(ptrs);
        coordinator_fail_slot(co, j, -1, "failed", "out of memory sending RunSlot");
        return;
    }
    for (int k = 0; k < n; k++) {
        Moed__V1__SlotBinding sb = MOED__V1__SLOT_BINDING__INIT;
        sb.pod = k / j->slots;
        sb.slot = k % j->slots;
        sb.worker_id = j->bindings[k].worker_id;
        sb.worker_address = j->bindings[k].address;
        sb.data_address = j->bindings[k].data_address;
        tab[k] = sb;
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
        struct worker *w = coordinator_find_worker(co, j->bindings[k].worker_id);
        req.pod = k / j->slots;
        req.slot = k % j->slots;
        struct assign_ctx *a = calloc(1, sizeof *a);
        if (!a) break;
        a->co = co;
        snprintf(a->job_id, sizeof a->job_id, "%s", job_id);
        snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
        a->epoch = epoch;
        a->gen = gen;
        a->slot = k;
        moe_status s = w && w->channel
                           ? rpc_call_async(co->pump, w->channel, RPC_WORKER_RUN_SLOT,
                                            &req.base, &moed__v1__empty__descriptor, 10.0, cb, a)
                           : moe_fail(MOE_EUNAVAILABLE, "no channel to %s", a->worker_id);
        if (s != MOE_OK) {
            struct rpc_result r = {w && w->channel ? GRPC_STATUS_INTERNAL : GRPC_STATUS_UNAVAILABLE, ""};
            snprintf(r.details, sizeof r.details, "%s", moe_errmsg());
            cb(a, &r, NULL); // may requeue, fail or re-plan the job: stop sending
            if (!(j = coordinator_find_job(co, job_id)) || j->epoch != epoch ||
                j->state != MOED__V1__JOB_STATE__JOB_RUNNING ||
                (gen && recovery_round(j) != gen))
                break;
        }
    }
    free(tab);
    free(ptrs);
}

void coordinator_schedule(struct coordinator *co) {
    if (co->stopping) return;
    recovery_poll(co);      // a running job that lost a slot comes before any queued job
    recovery_rebalance(co); // and so does one whose slot a survivor plays beside its own
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->state != MOED__V1__JOB_STATE__JOB_QUEUED) continue;
        struct worker **chosen = calloc((size_t)(j->pods * j->slots), sizeof *chosen);
        if (!chosen) return;
        /* jobs run in submission order: none may overtake the oldest */
        int placed = placement_choose(co, j, chosen) && bind_job(co, j, chosen);
        free(chosen);
        if (!placed) return;
    }
}

