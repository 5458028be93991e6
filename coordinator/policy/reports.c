/*
 * reports.c — what a worker's reports about its slots mean for their job.
 *
 * Owns: who speaks for a slot (only the worker bound to it, in the current epoch: anything
 * else is stale, and the worker is told to stop unless it waits for a recovery's new epoch),
 * step reports (the slot's progress and links, the committed step and the replica check, the
 * loss curve), a slot's end (the worker is free again; an error is a lost slot for faults.c; a
 * done slot counts towards the job's end, and the job SUCCEEDS once every slot ended ok and
 * the model it uploaded checks out), the model's upload, and the fault and restore reports
 * of a recovery (recovery.c). The model is written by slot (0, 0) (the trainer's writer): only
 * the worker bound to it in the current epoch may upload it, and only that uploader's end
 * report, with the size and SHA-256 of what arrived, commits it.
 * Never: ends a job except through state/transitions.c, or trusts a report's slot without
 * checking that the reporting worker plays it.
 */
#include "reports.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"
#include "../state/models.h"
#include "../state/transitions.h"
#include "export.h"
#include "faults.h"
#include "recovery.h"
#include "replicas.h"

#include <stdio.h>
#include <string.h>

/* ---- steps ---- */

moe_status reports_step(struct coordinator *co, struct job *j, struct worker *w,
                        const Moed__V1__StepReport *req, int *stop) {
    *stop = 0;
    w->last_heartbeat_ms = w->last_report_ms = moe_wall_ms(); // as good as a heartbeat
    /* Only the worker bound to the slot it names, in the current epoch, speaks for it. */
    int k = req->pod >= 0 && req->pod < j->pods && req->slot >= 0 && req->slot < j->slots
                ? req->pod * j->slots + req->slot : -1;
    int bound = j->state == MOED__V1__JOB_STATE__JOB_RUNNING && k >= 0 &&
                strcmp(j->bindings[k].worker_id, w->id) == 0 && !recovery_dropped(j, w);
    int late = bound && j->recoverable && req->epoch && req->epoch < j->epoch;
    if (!bound || (req->epoch && req->epoch != j->epoch && !late)) {
        *stop = !export_holds(j, w); // its fence comes: a stop now would lose the state
        return MOE_OK;
    }
    for (size_t i = 0; i < req->n_metrics; i++) {
        long step = (long)req->metrics[i]->step;
        if (step < 1 || step > j->total_steps ||
            (i > 0 && step <= (long)req->metrics[i - 1]->step))
            return moe_fail(MOE_EINVAL, "step %ld of %s: steps must ascend within 1..%ld", step,
                            j->id, j->total_steps);
    }
    if (late) {
        /* Steps of the epoch before a recovery's new one come late from a slot that keeps its
         * worker: that worker must not stop (it waits for, or already runs, the new epoch),
         * and slot (0, 0)'s go into the stored curve, which would otherwise miss the steps
         * between the last report and the fault that the new epoch does not compute again. */
        if (k == 0 && req->n_metrics) job_record_late_steps(co, j, req->metrics, req->n_metrics);
        return MOE_OK;
    }
    if (req->n_links) job_record_links(j, k, req->links, req->n_links); // shown with the steps
    for (size_t i = 0; i < req->n_metrics; i++) replicas_step_reported(co, j, k, req->metrics[i]);
    job_record_steps(co, j, k, req->metrics, req->n_metrics);
    return MOE_OK;
}

/* ---- a slot's end ---- */

/* The slot the end report names, when this worker plays it (a worker may play two). */
static int ended_slot(const struct job *j, const struct worker *w,
                      const Moed__V1__JobEndReport *req) {
    int named = req->pod >= 0 && req->pod < j->pods && req->slot >= 0 && req->slot < j->slots
                    ? req->pod * j->slots + req->slot : -1;
    return named >= 0 && !strcmp(j->bindings[named].worker_id, w->id) ? named
                                                                     : job_slot_of(j, w->id);
}

/* The worker is free again once it reported the end of its last open slot of j (in the epoch
 * it was bound in); until a heartbeat shows its training thread gone, a RunSlot would find it
 * busy (the worker sends one as soon as the thread is joined). */
static void free_reporter(struct coordinator *co, struct job *j, struct worker *w, int k,
                          const Moed__V1__JobEndReport *req, int stale) {
    int other_open = 0; /* another slot of this job on the same worker still runs */
    for (int q = 0; q < job_n_slots(j) && !stale; q++)
        other_open |= q != k && !strcmp(j->bindings[q].worker_id, w->id) && !j->bindings[q].ended;
    if (!strcmp(w->job_id, j->id) && !other_open &&
        (!req->epoch || !w->epoch || req->epoch == w->epoch)) {
        worker_set_free(w, 1);
        worker_save(co, w);
    }
}

/* Slot k ended ok: the job SUCCEEDS once every slot did and the model is in; a mesh's slot
 * that finishes first says so (a decision: synced with its event). */
static void slot_done(struct coordinator *co, struct job *j, int k, const struct worker *w,
                      long step) {
    struct binding *bd = &j->bindings[k];
    bd->ended = 1;
    bd->ok = 1;
    int done = 0, n = job_n_slots(j);
    for (int i = 0; i < n; i++) done += j->bindings[i].ended && j->bindings[i].ok;
    if (done == n && j->model_bytes > 0)
        job_finish(co, j, MOED__V1__JOB_STATE__JOB_SUCCEEDED, "succeeded",
                   "%ld steps, final loss %.4f, model %ld bytes", (long)j->step, j->loss,
                   (long)j->model_bytes);
    else if (done == n)
        job_fail(co, j, -1, "failed", "every slot of %s ended, but none uploaded the model",
                 j->id);
    else if (n > 1)
        job_event(co, j, 1, "slot_done", "slot (%d, %d) on %s finished at step %ld (%d of %d "
                  "slots done)%s", k / j->slots, k % j->slots, w->id, step, done, n,
                  j->model_bytes > 0 ? "; model uploaded" : "");
}

moe_status reports_job_end(struct coordinator *co, struct job *j, struct worker *w,
                           const Moed__V1__JobEndReport *req) {
    int k = ended_slot(j, w, req);
    /* An end from another epoch (a binding that was already given up) changes nothing of the
     * current one; it only frees the worker if that is what the worker was bound to. */
    int stale = req->epoch && req->epoch != j->epoch;
    free_reporter(co, j, w, k, req, stale);
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || k < 0 || stale || j->bindings[k].ended)
        return MOE_OK; // cancelled, failed already, or not this worker's slot
    struct binding *bd = &j->bindings[k];
    if (req->step > bd->step) bd->step = (long)req->step;
    if (k == 0 && req->step > j->step) j->step = req->step;
    if (!req->ok) {
        fault_slot_ended(co, j, k, w, (long)req->step, req->error, req->stopped,
                         req->unrecoverable);
        return MOE_OK;
    }
    if (req->model_bytes > 0 || req->model_sha256.len) { // this slot wrote the job's model
        if (k != MODEL_WRITER_SLOT)
            return moe_fail(MOE_EAUTH, "%s plays slot (%d, %d) of %s: only slot (0, 0) reports "
                            "the model", w->id, k / j->slots, k % j->slots, j->id);
        moe_status s = model_upload_commit(co, j, w->id, req->model_bytes,
                                           req->model_sha256.data, req->model_sha256.len);
        if (s != MOE_OK) { // the worker still holds the model: it may upload again
            snprintf(w->job_id, sizeof w->job_id, "%s", j->id); // still busy with it
            w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
            return s;
        }
    }
    slot_done(co, j, k, w, (long)req->step);
    return MOE_OK;
}

moe_status reports_model_chunk(struct coordinator *co, struct job *j, const struct worker *w,
                               const Moed__V1__ModelChunk *req) {
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING)
        return moe_fail(MOE_EINVAL, "%s is %s: no upload accepted", j->id,
                        job_state_name(j->state));
    if (strcmp(j->bindings[MODEL_WRITER_SLOT].worker_id, w->id) != 0 || recovery_dropped(j, w))
        return moe_fail(MOE_EAUTH, "%s does not play slot (0, 0) of %s (epoch %llu), which "
                        "uploads its model", w->id, j->id, (unsigned long long)j->epoch);
    return model_upload_chunk(co, j, w->id, req->offset, req->data.data, req->data.len);
}

/* ---- recovery's reports ---- */

int reports_slot(const struct job *j, const struct worker *w, int pod, int slot, uint64_t epoch) {
    if (pod < 0 || pod >= j->pods || slot < 0 || slot >= j->slots) {
        moe_fail(MOE_EINVAL, "slot (%d, %d) is outside the %d x %d mesh of %s", pod, slot,
                 j->pods, j->slots, j->id);
        return -2;
    }
    int k = pod * j->slots + slot;
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || strcmp(j->bindings[k].worker_id, w->id) ||
        (epoch && epoch != j->epoch) || recovery_dropped(j, w))
        return -1;
    return k;
}
