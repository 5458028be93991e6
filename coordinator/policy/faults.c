/*
 * faults.c — what a lost slot means for its job: the one place that decides "recover or fail".
 *
 * Every way a slot of a running job can be lost comes here (faults.h), says what was seen, and
 * decide() gives the verdict:
 *   - a recoverable mesh (mesh_recoverable: mesh.replicas copies in different failure domains)
 *     recovers, whatever the fault: recovery.c takes the signal;
 *   - otherwise a 1 x 1 job fails at once, with the fault as its reason;
 *   - a worker found dead, or one that re-registered without its slot, fails its job at once,
 *     naming that worker (and, when its peers had already reported losing it, what they saw);
 *   - a slot that never started in its epoch (the scheduler's RunSlot refused after the job's
 *     first step) fails the job at once;
 *   - a slot that could not load the job's data or spec (ReportJobEnd.unrecoverable: the same
 *     data fails the same way on every attempt) fails the job at once, recoverable or not;
 *   - a slot that ended with an error, or reported a data-plane fault, opens the failure
 *     window: the other slots are told to stop, and the job fails once every slot has answered
 *     or MESH_FAILURE_WINDOW_MS has passed — naming the slot that never answered if there is
 *     one (the peers of a dead slot all report losing it; the silent one is the cause), else
 *     the slot the first failure's data-plane error names (job_blamed_rank), else the slot
 *     that reported it.
 * Never: recovers a job (recovery.c does), decides that a worker is dead on its own (the
 * monitor's heartbeat timeout and a recovery's fence do), or ends a job except through
 * state/transitions.c.
 */
#include "faults.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"
#include "../state/transitions.h"
#include "../state/worker_calls.h"
#include "repair.h"

#include <stdio.h>
#include <string.h>

#define MESH_FAILURE_WINDOW_MS 2000

enum fault_source {
    LOST_DEAD,        // the monitor: no heartbeat
    LOST_ENDED,       // ReportJobEnd with an error
    LOST_REPORTED,    // ReportFault
    LOST_ABANDONED,   // re-registered without its slot
    LOST_NOT_STARTED, // the scheduler's RunSlot refused after step 1
    LOST_UNRUNNABLE,  // ReportJobEnd.unrecoverable: its data or spec cannot be loaded there
};

enum verdict { RECOVER, FAIL_NOW, FAIL_WINDOW };

/* The rule, all of it. */
static enum verdict decide(const struct job *j, enum fault_source source) {
    if (source == LOST_UNRUNNABLE) return FAIL_NOW;
    if (j->recoverable && source != LOST_NOT_STARTED) return RECOVER;
    if (job_n_slots(j) == 1) return FAIL_NOW;
    switch (source) {
    case LOST_DEAD:
    case LOST_ABANDONED:
    case LOST_UNRUNNABLE:
    case LOST_NOT_STARTED: return FAIL_NOW;
    case LOST_ENDED:
    case LOST_REPORTED: return FAIL_WINDOW;
    }
    return FAIL_NOW;
}

/* Whether slot k of j is still a slot to lose: the job runs and the slot has not ended. */
static int losable(const struct job *j, int k) {
    return j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && k >= 0 && k < job_n_slots(j) &&
           !j->bindings[k].ended;
}

/* ---- the failure window of a mesh ---- */

static void decide_failure(struct coordinator *co, struct job *j) {
    int n = job_n_slots(j), silent = -1;
    for (int k = 0; k < n && silent < 0; k++)
        if (!j->bindings[k].ended) silent = k;
    if (silent < 0) { // everyone answered: the first failure is the cause
        /* ... and the slot it names failed, not the slot that reported it (often rank 0,
         * which is healthy) */
        int k = j->first_failed, blamed = job_blamed_rank(j, j->first_failure, k);
        if (blamed < 0)
            job_fail(co, j, k, "failed", "%s", j->first_failure);
        else
            job_fail(co, j, blamed, "failed", "worker %s failed as slot (%d, %d) on %s "
                     "reported: %s", j->bindings[blamed].worker_id, k / j->slots, k % j->slots,
                     j->bindings[k].worker_id, j->first_failure);
        return;
    }
    const struct binding *b = &j->bindings[silent];
    struct worker *w = workers_find(co, b->worker_id);
    job_fail(co, j, silent, "failed",
             "worker %s (%s, pod %d) stopped answering its peers after step %ld; first report: "
             "slot (%d, %d) on %s", b->worker_id, b->address, w ? w->pod : -1, b->step,
             j->first_failed / j->slots, j->first_failed % j->slots, j->first_failure);
}

static void check_window(struct coordinator *co, struct job *j, int64_t now) {
    if (!j->failing_ms || j->state != MOED__V1__JOB_STATE__JOB_RUNNING) return;
    int open = 0;
    for (int k = 0; k < job_n_slots(j); k++) open += !j->bindings[k].ended;
    if (!open || now - j->failing_ms >= MESH_FAILURE_WINDOW_MS) decide_failure(co, j);
}

/* Slot k ended badly (`error`, at `step`): a 1 x 1 job fails now; a mesh opens the window. */
static void slot_failed(struct coordinator *co, struct job *j, int k, enum fault_source source,
                        long step, const char *error) {
    struct binding *b = &j->bindings[k];
    b->ended = 1;
    b->ok = 0;
    snprintf(b->error, sizeof b->error, "%s", error);
    if (decide(j, source) == FAIL_NOW) {
        job_fail(co, j, k, "failed", "%s at step %ld: %s", b->worker_id, step, error);
        return;
    }
    if (!j->failing_ms) {
        j->failing_ms = moe_wall_ms();
        j->first_failed = k;
        snprintf(j->first_failure, sizeof j->first_failure, "%s at step %ld: %s", b->worker_id,
                 step, error);
        job_event(co, j, 0, "slot_failed", "slot (%d, %d) on %s failed at step %ld: %s; "
                  "stopping the other slots", k / j->slots, k % j->slots, b->worker_id, step,
                  error);
        worker_call_stop_all(co, j); // their collectives return now, and they answer
    }
    check_window(co, j, moe_wall_ms());
}

void faults_tick(struct coordinator *co, int64_t now) {
    for (int i = 0; i < co->n_jobs; i++) check_window(co, co->jobs[i], now);
}

/* ---- the ways a slot is lost ---- */

/* w is DEAD (`why`: what showed it); the slot it played is lost. */
static void worker_lost(struct coordinator *co, struct worker *w, const char *why) {
    LOG_WARN("%s at %s is dead: %s", w->id, w->address, why);
    char job_id[24];
    snprintf(job_id, sizeof job_id, "%s", w->job_id);
    worker_mark_dead(co, w);
    struct job *j = job_id[0] ? jobs_find(co, job_id) : NULL;
    int k = j ? job_slot_of(j, w->id) : -1;
    if (!losable(j, k)) return;
    long step = j->bindings[k].step > j->step ? j->bindings[k].step : j->step;
    if (decide(j, LOST_DEAD) == RECOVER)
        recovery_signal(co, j, k, FAULT_DEAD, "worker %s (%s, pod %d) died at step %ld: %s",
                        w->id, w->address, w->pod, step, why);
    else if (j->failing_ms) // its peers reported losing it first: the reason says what they saw
        job_fail(co, j, k, "worker_dead", "worker %s (%s, pod %d) stopped answering its peers "
                 "after step %ld (%s); first report: slot (%d, %d) on %s", w->id, w->address,
                 w->pod, j->bindings[k].step, why, j->first_failed / j->slots,
                 j->first_failed % j->slots, j->first_failure);
    else
        job_fail(co, j, k, "worker_dead", "worker %s (%s, pod %d) died at step %ld: %s", w->id,
                 w->address, w->pod, step, why);
}

void fault_worker_dead(struct coordinator *co, struct worker *w, int64_t silent_ms) {
    char why[64];
    snprintf(why, sizeof why, "no heartbeat for %.1f s", silent_ms / 1000.0);
    worker_lost(co, w, why);
}

void fault_worker_superseded(struct coordinator *co, struct worker *w, const struct worker *by) {
    char why[96];
    snprintf(why, sizeof why, "%s registered at its address", by->id);
    worker_lost(co, w, why);
}

void fault_slot_ended(struct coordinator *co, struct job *j, int k, const struct worker *w,
                      long step, const char *error, int stopped, int unrecoverable) {
    if (!losable(j, k)) return;
    const char *why = error[0] ? error : "stopped";
    if (unrecoverable && !stopped) {
        slot_failed(co, j, k, LOST_UNRUNNABLE, step, why);
    } else if (decide(j, LOST_ENDED) == RECOVER) {
        /* its worker is alive, but its state is gone */
        struct binding *bd = &j->bindings[k];
        bd->ended = 1;
        snprintf(bd->error, sizeof bd->error, "%s", why);
        recovery_signal(co, j, k, FAULT_ENDED, "%s ended its slot at step %ld: %s", w->id, step,
                        why);
    } else if (j->failing_ms && stopped) {
        /* a slot we told to stop (another failed) answers "stopped": that is not a cause */
        j->bindings[k].ended = 1;
        snprintf(j->bindings[k].error, sizeof j->bindings[k].error, "stopped");
        check_window(co, j, moe_wall_ms());
    } else {
        slot_failed(co, j, k, LOST_ENDED, step, why);
    }
}

static void replica_mismatch(struct coordinator *co, struct job *j, int k,
                             const Moed__V1__FaultReport *r) {
    char what[REPAIR_WHAT_MAX];
    switch (repair_fault_report(co, j, k, r, what)) {
    case REPAIR_START: recovery_repair(co, j, k, what); break;
    case REPAIR_AS_FAULT: recovery_fault_report(co, j, k, r); break;
    case REPAIR_NOTHING: break;
    }
}

void fault_reported(struct coordinator *co, struct job *j, int k, const Moed__V1__FaultReport *r) {
    /* an ended slot's fault still counts: a recovery times its earliest ReportFault */
    if (!j || j->state != MOED__V1__JOB_STATE__JOB_RUNNING || k < 0) return;
    if (decide(j, LOST_REPORTED) != RECOVER) // a worker only reports faults of recoverable
        slot_failed(co, j, k, LOST_REPORTED, (long)r->step, // jobs; otherwise it is a failure
                    r->error[0] ? r->error : "data-plane fault");
    else if (r->mismatch_step > 0) // the replicas differ: not a lost data plane
        replica_mismatch(co, j, k, r);
    else
        recovery_fault_report(co, j, k, r);
}

void fault_slot_abandoned(struct coordinator *co, struct job *j, int k, const struct worker *w,
                          const struct job *runs) {
    if (!losable(j, k) || recovery_dropped(j, w)) return;
    /* still in this job, in another epoch: its next heartbeat tells it to stop (a recovery
     * would pick it up, a plain job has no other epoch to wait for) */
    if (runs == j && !j->recoverable) return;
    int runs_another = w->job_id[0] != 0; // what it registered as running
    if (decide(j, LOST_ABANDONED) == RECOVER)
        recovery_signal(co, j, k, FAULT_ENDED, "worker %s (%s, pod %d) re-registered %s: it no "
                        "longer runs its slot", w->id, w->address, w->pod,
                        runs_another ? "for another job or epoch" : "idle");
    else
        job_fail(co, j, k, "failed", "worker %s (%s, pod %d) re-registered %s: it no longer runs "
                 "its slot", w->id, w->address, w->pod,
                 runs_another ? "running another job" : "idle");
}

void fault_slot_forgotten(struct coordinator *co, struct job *j, int k, const struct worker *w) {
    if (!losable(j, k) || recovery_dropped(j, w)) return;
    if (decide(j, LOST_ABANDONED) == RECOVER)
        recovery_signal(co, j, k, FAULT_ENDED, "worker %s (%s, pod %d) runs nothing: it no "
                        "longer plays its slot of epoch %llu", w->id, w->address, w->pod,
                        (unsigned long long)j->epoch);
    else
        job_fail(co, j, k, "failed", "worker %s (%s, pod %d) runs nothing: it no longer plays "
                 "its slot of epoch %llu", w->id, w->address, w->pod,
                 (unsigned long long)j->epoch);
}

void fault_not_started(struct coordinator *co, struct job *j, int k, const char *worker_id,
                       const struct rpc_result *res) {
    if (decide(j, LOST_NOT_STARTED) != FAIL_NOW) return;
    job_fail(co, j, k, "failed", "worker %s could not start it: %s: %s", worker_id,
             rpc_code_name(res->code), res->details);
}
