/*
 * transitions.c — the job state machine's moves (see transitions.h).
 */
#include "transitions.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "events.h"
#include "models.h"
#include "worker_calls.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every write of j->state: refused (and logged: it is a coordinator bug) when the machine in
 * jobs.h has no such move. */
static moe_status set_state(struct job *j, Moed__V1__JobState to) {
    if (!job_state_allowed(j, to)) {
        LOG_ERROR("%s: %s -> %s is not a transition of a job", j->id, job_state_name(j->state),
                  job_state_name(to));
        return moe_fail(MOE_EINVAL, "%s is %s: it cannot become %s", j->id,
                        job_state_name(j->state), job_state_name(to));
    }
    j->state = to;
    return MOE_OK;
}

moe_status job_admit(struct coordinator *co, const struct job_spec *spec,
                     const Moed__V1__ExportManifest *resume, struct job **out) {
    struct job *j = job_create(co, spec);
    if (!j) return moe_fail(MOE_ENOMEM, "out of memory");
    char from[120] = "";
    if (resume) { // it starts where that export left: no recovery may plan below it
        j->resume = (Moed__V1__ExportManifest *)pb_clone(&resume->base);
        if (!j->resume) {
            job_free(j);
            return moe_fail(MOE_ENOMEM, "out of memory");
        }
        j->committed_step = resume->step;
        snprintf(from, sizeof from, ", resuming %s at step %lld", resume->job_id,
                 (long long)resume->step);
    }
    /* One batch: the job, its first event and the advanced counter. */
    co->next_job++;
    struct store_batch *b = store_batch_new();
    coordinator_batch_meta(b, co);
    moe_status s = job_event_batch(co, j, b, 1, "submitted", "submitted: %s, %ld steps%s",
                                   j->name, j->total_steps, from);
    if (s == MOE_OK) s = jobs_add(co, j);
    if (s != MOE_OK) {
        co->next_job--;
        job_free(j);
        return s;
    }
    *out = j;
    return MOE_OK;
}

moe_status job_bind(struct coordinator *co, struct job *j, struct worker **chosen) {
    int n = job_n_slots(j);
    CHECK(set_state(j, MOED__V1__JOB_STATE__JOB_RUNNING));
    j->started_ms = moe_wall_ms();
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
        worker_batch(b, w);
    }
    job_bindings_changed(j);
    char text[700];
    job_binding_text(j, text, sizeof text);
    /* The decision is stored before any worker hears of it. */
    moe_status s = job_event_batch(co, j, b, 1, "scheduled", "%s", text);
    if (s != MOE_OK) { // nothing happened: the job waits in the queue, its workers stay free
        LOG_ERROR("%s: cannot store the binding: %s", j->id, moe_errmsg());
        j->state = MOED__V1__JOB_STATE__JOB_QUEUED;
        j->started_ms = 0;
        j->epoch--;
        for (int k = 0; k < n; k++) {
            chosen[k]->job_id[0] = 0;
            chosen[k]->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        }
        memset(j->bindings, 0, sizeof *j->bindings * (size_t)n);
        job_bindings_changed(j);
    }
    return s;
}

void job_requeue(struct coordinator *co, struct job *j, const char *fmt, ...) {
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (set_state(j, MOED__V1__JOB_STATE__JOB_QUEUED) != MOE_OK) return;
    j->started_ms = 0;
    worker_call_stop_all(co, j);
    memset(j->bindings, 0, sizeof *j->bindings * (size_t)job_n_slots(j));
    job_bindings_changed(j);
    j->n_running = 0;
    job_event(co, j, 1, "requeued", "%s", why);
}

moe_status job_finish(struct coordinator *co, struct job *j, Moed__V1__JobState state,
                      const char *kind, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (job_is_final(j))
        return moe_fail(MOE_EINVAL, "%s already ended (%s)", j->id, job_state_name(j->state));
    CHECK(set_state(j, state));
    j->finished_ms = moe_wall_ms();
    job_drop_recovery(j); // a recovery in progress is over with the job (its answers are dropped)
    if (state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) snprintf(j->error, sizeof j->error, "%s", msg);
    model_upload_abort(j);
    CHECK(job_event(co, j, 1, kind, "%s", msg)); // also notifies and finishes watchers
    return MOE_OK;
}

/* A recoverable mesh that trained a step holds its state in its workers' memory when it ends
 * early (one that failed before its first step has nothing a resubmit would not remake): it is
 * marked for the export (policy/export.c, docs/recovery.md "Export and resume"), which stops
 * the workers once the state is on disk. Not in a repair: the replicas disagree, and no copy
 * held is known good. 1 when marked. */
static int export_marked(struct job *j, int repairing) {
    j->export_due = j->recoverable && j->epoch > 0 && j->step > 0 && !repairing;
    return j->export_due;
}

void job_fail(struct coordinator *co, struct job *j, int k, const char *kind, const char *fmt,
              ...) {
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (job_n_slots(j) > 1) job_name_ranks(j, why, sizeof why);
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING) return;
    int repairing = j->rec && j->rec->repair; // job_finish drops the recovery
    /* A 1 x 1 job keeps the message it always had; a mesh says which slot. */
    if (job_n_slots(j) == 1 || k < 0) {
        job_finish(co, j, MOED__V1__JOB_STATE__JOB_FAILED, kind, "%s", why);
    } else {
        char where[96];
        job_finish(co, j, MOED__V1__JOB_STATE__JOB_FAILED, kind, "%s: %s",
                   job_slot_where(j, k, where, sizeof where), why);
    }
    /* A slot blocked in a collective returns at once; every worker stays bound until it
     * reports the end (or a heartbeat shows it idle): it must not get a new job while busy.
     * A recoverable mesh's workers hold its state: they are stopped after its export. */
    if (!export_marked(j, repairing)) worker_call_stop_all(co, j);
}

moe_status job_cancel(struct coordinator *co, struct job *j) {
    if (job_is_final(j))
        return moe_fail(MOE_EINVAL, "%s already ended (%s)", j->id, job_state_name(j->state));
    int was_running = j->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    int repairing = j->rec && j->rec->repair;
    CHECK(job_finish(co, j, MOED__V1__JOB_STATE__JOB_CANCELLED, "cancelled",
                     "cancelled by a client at step %ld", j->step));
    if (was_running && !export_marked(j, repairing)) worker_call_stop_all(co, j);
    return MOE_OK;
}

moe_status job_delete(struct coordinator *co, struct job *const *del, int n) {
    if (n <= 0) return MOE_OK;
    CHECK(jobs_delete_records(co, del, n));
    for (int i = 0; i < n; i++) {
        model_remove(co, del[i]);
        LOG_INFO("%s: deleted (%s, finished %lld)", del[i]->id, job_state_name(del[i]->state),
                 (long long)del[i]->finished_ms);
    }
    jobs_drop(co, del, n);
    return MOE_OK;
}
