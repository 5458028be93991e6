/*
 * schedule.c — admitting jobs and binding queued jobs to workers.
 *
 * Owns: admission (a spec parsed and validated again — the coordinator trusts no client — and
 * a mesh that can never be placed refused at once), the queue order (oldest first; none
 * overtakes it), binding (the workers placement.c chooses, stored with the new epoch before
 * RunSlot, with the whole binding table, goes to every bound worker) and what the RunSlot
 * answers of a fresh binding mean: every slot accepted (event "running"); a refusal before
 * any step requeues the job (a busy or unreachable worker, or a stranger at its address: not
 * the job's fault) or fails it (a worker that cannot play it, or max_assign_attempts
 * refusals); a refusal after the first step is a lost slot (faults.c). Recovery's RunSlots
 * (recovery.c) have their own answer handler.
 * Never: chooses workers (placement.c), changes a job's state itself (state/transitions.c),
 * or waits: every call is asynchronous, on the loop.
 */
#include "schedule.h"

#include "../../common/log.h"
#include "../state/events.h"
#include "../state/transitions.h"
#include "../state/worker_calls.h"
#include "export.h"
#include "faults.h"
#include "placement.h"
#include "recovery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

moe_status schedule_submit(struct coordinator *co, const char *spec_text, size_t len,
                           char *const *overrides, size_t n_overrides, const char *resume_from,
                           struct job **out) {
    struct job_spec spec;
    spec_defaults(&spec);
    CHECK(spec_parse(&spec, spec_text, len, "spec"));
    CHECK(spec_set_all(&spec, (const char *const *)overrides, n_overrides));
    CHECK(spec_validate(&spec));
    const Moed__V1__ExportManifest *resume = NULL;
    if (resume_from && resume_from[0]) { // compared as the job will store it: every field
        char *json = spec_to_json(&spec);
        if (!json) return moe_fail(MOE_ENOMEM, "out of memory");
        moe_status s = export_check_resume(co, resume_from, json, &resume);
        free(json);
        CHECK(s);
    }
    /* A mesh no set of live workers could ever hold is refused now, not queued forever. */
    CHECK(placement_check(co, spec.mesh.pods, spec.mesh.slots, spec.mesh.backend));
    return job_admit(co, &spec, resume, out); // logged with its event
}

/* Every slot accepted: the event "running", once. */
static void slot_accepted(struct coordinator *co, struct job *j, const struct assign_ctx *a) {
    int n = job_n_slots(j);
    j->bindings[a->slot].running = 1;
    if (++j->n_running < n) return;
    if (n == 1)
        job_event(co, j, 0, "running", "%s is running slot (0, 0)", a->worker_id);
    else
        job_event(co, j, 0, "running", "all %d slots of the %d x %d mesh are running (epoch "
                  "%llu)", n, j->pods, j->slots, (unsigned long long)a->epoch);
}

/* RunSlot refused (or unreachable) for slot a->slot of a binding that is still current. */
static void slot_refused(struct coordinator *co, struct job *j, const struct assign_ctx *a,
                         const struct rpc_result *res, int not_the_jobs_fault) {
    if (j->step) { // it trained already: the slot is lost
        fault_not_started(co, j, a->slot, a->worker_id, res);
        return;
    }
    char slot[64] = "";
    if (job_n_slots(j) > 1)
        snprintf(slot, sizeof slot, " slot (%d, %d)", a->slot / j->slots, a->slot % j->slots);
    if (res->code == GRPC_STATUS_INVALID_ARGUMENT || res->code == GRPC_STATUS_UNIMPLEMENTED ||
        (!not_the_jobs_fault && ++j->assign_attempts >= co->cfg.max_assign_attempts)) {
        job_finish(co, j, MOED__V1__JOB_STATE__JOB_FAILED, "failed",
                   "worker %s could not start it%s: %s: %s", a->worker_id, slot,
                   rpc_code_name(res->code), res->details);
        worker_call_stop_all(co, j);
    } else {
        job_requeue(co, j, "worker %s refused it%s: %s: %s", a->worker_id, slot,
                    rpc_code_name(res->code), res->details);
    }
}

static void run_slot_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    (void)resp;
    struct assign_ctx *a = arg;
    struct coordinator *co = a->co;
    if (co->stopping) {
        free(a);
        return;
    }
    struct job *j = jobs_find(co, a->job_id);
    struct worker *w = workers_find(co, a->worker_id);
    int current = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->epoch == a->epoch &&
                  !strcmp(j->bindings[a->slot].worker_id, a->worker_id);
    if (res->code == GRPC_STATUS_OK) {
        if (current && !j->bindings[a->slot].running)
            slot_accepted(co, j, a);
        else if (!current && w && j)
            worker_call_stop(co, j, w, a->epoch); // started a binding that is over already
        free(a);
        return;
    }
    int S = j ? j->slots : 1;
    LOG_WARN("RunSlot %s slot (%d, %d) epoch %llu on %s: %s: %s", a->job_id, a->slot / S,
             a->slot % S, (unsigned long long)a->epoch, a->worker_id, rpc_code_name(res->code),
             res->details);
    if (w && strcmp(w->job_id, a->job_id) == 0 && w->epoch == a->epoch) {
        worker_set_free(w, 0);
        worker_save(co, w);
    }
    /* Busy (still finishing its previous job), unreachable, or another process answering at
     * its address (it does not know our credential for it: the worker we registered is gone):
     * not the job's fault. The worker waits for a heartbeat that shows it idle (or for the
     * timeout that declares it dead). */
    int not_the_jobs_fault = res->code == GRPC_STATUS_UNAVAILABLE ||
                             res->code == GRPC_STATUS_DEADLINE_EXCEEDED ||
                             res->code == GRPC_STATUS_UNAUTHENTICATED ||
                             res->code == GRPC_STATUS_PERMISSION_DENIED;
    if (w && not_the_jobs_fault) w->awaiting_idle = 1;
    if (current) slot_refused(co, j, a, res, not_the_jobs_fault);
    free(a);
    schedule_pass(co);
}

/* Binds j to the chosen workers (stored first), then sends RunSlot to each. 0: nothing bound. */
static int bind_and_run(struct coordinator *co, struct job *j, struct worker **chosen) {
    if (job_bind(co, j, chosen) != MOE_OK) return 0;
    if (worker_call_run_slots(co, j, 0, 0, run_slot_reply) != MOE_OK)
        job_fail(co, j, -1, "failed", "%s", moe_errmsg());
    return 1;
}

void schedule_pass(struct coordinator *co) {
    if (co->stopping) return;
    export_poll(co);        // a job that just ended early leaves its state on disk first
    recovery_poll(co);      // a running job that lost a slot comes before any queued job
    recovery_rebalance(co); // and so does one whose slot a survivor plays beside its own
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->state != MOED__V1__JOB_STATE__JOB_QUEUED) continue;
        struct worker **chosen = calloc((size_t)job_n_slots(j), sizeof *chosen);
        if (!chosen) return;
        /* jobs run in submission order: none may overtake the oldest */
        int placed = placement_choose(co, j, chosen);
        if (placed) export_prefer_hosts(j, chosen); // a resumed slot reads its file locally
        placed = placed && bind_and_run(co, j, chosen);
        free(chosen);
        if (!placed) return;
    }
}
