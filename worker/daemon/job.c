/*
 * job.c — the training thread of one job's slot: trainer_open (a 1 x 1 mesh) or, for one slot
 * of a larger mesh, trainer_open_slot_later and the comm (mesh.c); then step after step, each
 * reported (report.c: batched, held while the coordinator is away); evaluation every
 * run.eval_every steps and at the end; then the model's save and upload (upload.c). In a mesh
 * every slot reports its own steps (with its data-plane time and bytes), and steps,
 * evaluations and the model's save are collective: every slot makes the same calls in the
 * same order.
 * A recoverable job (docs/recovery.md) outlives a data-plane failure: the slot freezes its
 * state, reports the fault and waits for the coordinator's next epoch, then re-forms its comm
 * under the trainer it kept and, if the binding says so, restores before it goes on.
 * The thread talks to the loop only through the job's atomics, its mutexes and w->job_done.
 */
#include "worker.h"

#include "../trainer/outer.h"
#include "../trainer/slot_state.h"
#include "../../kernels/arena_pool.h"

#include "../../common/clock.h"
#include "../../common/log.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void log_step(const struct job *j, const struct trainer *t, const struct step_report *r,
                     double val) {
    char vbuf[48] = "";
    if (val > 0) snprintf(vbuf, sizeof vbuf, " val %.4f", val);
    LOG_INFO("%s: step %ld/%ld loss %.4f ce %.4f aux %.4f lr %.2e grad %.3f load %.2f "
             "%.0f tok/s%s", j->id, r->step, t->spec.run.steps, r->loss, r->ce, r->aux, r->lr,
             r->grad_norm, r->load_max_over_mean, r->seconds > 0 ? r->tokens / r->seconds : 0.0,
             vbuf);
}

/* Runs the steps. Returns 1 when all steps ran, 0 when the job ended early; *error says why
 * (empty when it was stopped). */
static int train_steps(struct job *j, struct rpc_channel *ch, struct trainer *t,
                       struct backlog *b, char *error, size_t error_len, moe_status *why) {
    long total = t->spec.run.steps;
    int log_every = t->spec.run.log_every > 0 ? t->spec.run.log_every : 1;
    while (t->model.step < total) {
        if (atomic_load(&j->stop) != JOB_RUN) return 0;
        struct step_report r;
        if ((*why = trainer_step(t, &r)) != MOE_OK) {
            /* told to stop while a collective waited: the abort is not the job's error */
            if (atomic_load(&j->stop) == JOB_RUN) snprintf(error, error_len, "%s", moe_errmsg());
            return 0;
        }
        atomic_store(&j->step, r.step);
        double val = 0;
        int eval_now = r.step == total ||
                       (t->spec.run.eval_every > 0 && r.step % t->spec.run.eval_every == 0);
        if (eval_now && t->spec.data.val_fraction > 0 &&
            (*why = trainer_eval(t, &val, NULL)) != MOE_OK) {
            if (atomic_load(&j->stop) == JOB_RUN) snprintf(error, error_len, "%s", moe_errmsg());
            return 0;
        }
        if (r.step == 1 || r.step % log_every == 0 || r.step == total || val > 0)
            log_step(j, t, &r, val);
        if (backlog_add(b, t, &r, val) != 0) {
            *why = MOE_ENOMEM;
            snprintf(error, error_len, "out of memory for a step report");
            return 0;
        }
        /* an evaluation and the last step go out at once; other steps within the interval;
         * told to stop, the comm is aborted: the other slots must not wait for us in the next
         * collective */
        if (backlog_flush(j, ch, b, val > 0 || r.step == total) &&
            job_stop(j, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: the coordinator says stop after step %ld", j->id, r.step);
    }
    return 1;
}

/* While the steps run, a peer whose connection closes is a fault the comm's watcher reports
 * at once (mesh.c); outside them (opening, restoring, saving the model, ending) a closing peer
 * may be one that finished or left the epoch first, and the thread judges what it meets. */
static int train(struct job *j, struct rpc_channel *ch, struct trainer *t, struct backlog *b,
                 char *error, size_t error_len, moe_status *why) {
    atomic_store(&j->in_steps, 1);
    int done = train_steps(j, ch, t, b, error, error_len, why);
    atomic_store(&j->in_steps, 0);
    return done;
}

/* The epoch's comm (mesh.c), and the trainer's distributed step re-formed over it. */
static moe_status bind_comm(struct job *j, struct trainer *t) {
    CHECK(job_open_comm(j));
    uv_mutex_lock(&j->comm_mu);
    struct comm *c = j->comm;
    uv_mutex_unlock(&j->comm_mu);
    return trainer_rebind(t, c);
}

/* The trainer could not open: bad data or spec on this host (not memory, not a stop) is
 * marked unrecoverable, and its error names the host (data lives on each worker's host). */
static void trainer_failed(struct job *j, moe_status s, char *error, size_t error_len) {
    j->unrecoverable = s == MOE_EINVAL || s == MOE_EIO || s == MOE_EFORMAT || s == MOE_ENOTFOUND;
    if (j->unrecoverable)
        snprintf(error, error_len, "%.400s (on host %.80s)", moe_errmsg(), j->w->host);
    else
        snprintf(error, error_len, "%s", moe_errmsg());
}

/* A resumed job's slot starts from the exported state of its slot index (slot_state.h): every
 * checksum verified first; a file this worker cannot read or check ends the slot naming it. */
static moe_status resume_state(struct job *j, struct trainer *t) {
    if (j->pods * j->slots == 1 || !t->mesh.rep)
        return moe_fail(MOE_EINVAL, "%s: only a slot of a mesh resumes from an export", j->id);
    moe_status s = slot_state_load(t, j->resume_path, j->resume_step, j->resume_crc32c);
    if (s != MOE_OK) {
        char why[400];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        return moe_fail(s, "resuming from the export: %s", why);
    }
    atomic_store(&j->step, j->resume_step);
    LOG_INFO("%s: slot (%d, %d) resumes at step %ld from %s", j->id, j->pod, j->slot,
             j->resume_step, j->resume_path);
    return MOE_OK;
}

/* Opens the trainer for this job's slot: the plain trainer for a 1 x 1 mesh, else the slot's
 * share of the model and then the comm. Returns 1; 0 when there is no trainer; -1 when the
 * trainer is open but the comm is not. *error says why not; *why is the status. */
static int open_trainer(struct job *j, struct trainer *t, char *error, size_t error_len,
                        moe_status *why) {
    moe_status s;
    /* only beneath the worker's data roots; a stop ends the loading at once */
    const struct data_access access = {j->w->roots, &j->stop};
    if (j->pods * j->slots == 1) {
        s = trainer_open_access(t, &j->spec, &access);
    } else {
        /* the slow part first (data, memory, initialisation: seconds for a big model), so
         * that the peers of the epoch are not left waiting on us in its first transfer; a
         * recovery's new holder skips initialising the state it is about to receive */
        int rank = j->pod * j->slots + j->slot;
        int pulls = j->cur.restore && j->cur.restore_from && j->cur.restore_from[rank] >= 0;
        long prepared = arena_pool_taken();
        s = trainer_open_slot_later(t, &j->spec, j->pod, j->slot, !pulls, &access);
        if (s == MOE_OK && (prepared = arena_pool_taken() - prepared) > 0)
            LOG_INFO("%s: slot (%d, %d) took %ld arenas prepared while it stood by (spare.c)",
                     j->id, j->pod, j->slot, prepared);
        if (s == MOE_OK && j->resume_path[0] && (s = resume_state(j, t)) != MOE_OK) {
            trainer_failed(j, s, error, error_len);
            trainer_close(t); // no trainer: the slot ends
            *why = s;
            return 0;
        }
        if (s != MOE_OK) {
            trainer_failed(j, s, error, error_len);
            *why = s;
            return 0;
        }
        s = bind_comm(j, t);
        if (s != MOE_OK) {
            /* the trainer is ours: keep it for the next epoch (a data-plane failure) */
            snprintf(error, error_len, "%s", moe_errmsg());
            *why = s;
            return -1;
        }
    }
    *why = s;
    if (s != MOE_OK) trainer_failed(j, s, error, error_len);
    return s == MOE_OK;
}

/* ---- recovery: the epochs of one slot (docs/recovery.md) ---- */

/* A data-plane failure (a peer lost, the epoch aborted, a stale or broken connection) is one
 * the coordinator can recover from; anything else (bad spec, memory, divergence) ends the job. */
static int data_plane_error(moe_status s) {
    return s == MOE_EUNAVAILABLE || s == MOE_EINTERNAL || s == MOE_EAUTH;
}

/* After a data-plane failure: freeze the state, tell the coordinator, and wait for its next
 * epoch (returns 1, the binding adopted) or for stop (returns 0). The state stays in memory
 * however long the coordinator is away. */
static int wait_for_epoch(struct job *j, struct rpc_channel *ch, struct trainer *t, int have_t,
                          const char *error) {
    struct state_copy copies[REPLICA_MAX_COPIES];
    long live = -1;
    if (have_t) replica_fence(t, copies, REPLICA_MAX_COPIES, &live, 0);
    if (have_t) outer_abandon(t); /* diloco's overlapped exchange must not outlive the comm */
    job_close_comm(j);
    long step = have_t ? t->model.step : 0;
    LOG_WARN("%s: slot (%d, %d) lost its data plane in epoch %llu after step %ld (%s): holding "
             "its state for the coordinator's next epoch", j->id, j->pod, j->slot,
             (unsigned long long)j->epoch, step, error);
    atomic_store(&j->holding, 1);
    struct fault_detail d = {.refused_from = -1};
    if (have_t) {
        d.mismatch_step = t->mesh.mismatch_step;
        d.mismatch_slot = t->mesh.mismatch_slot;
    }
    /* A newer epoch already waits: the coordinator fenced this slot and rebound it, and would
     * ignore a report of the epoch it left. Not sent: the restore waits for this slot. */
    if (job_epoch(j) > j->epoch)
        LOG_INFO("%s: slot (%d, %d): epoch %llu already waits: the fault is not reported",
                 j->id, j->pod, j->slot, (unsigned long long)job_epoch(j));
    else
        job_report_fault(j, ch, step, error, &d);
    uv_mutex_lock(&j->ep_mu);
    while (atomic_load(&j->stop) == JOB_RUN && !(j->next && j->next->epoch > j->epoch))
        uv_cond_wait(&j->ep_cv, &j->ep_mu);
    int go = atomic_load(&j->stop) == JOB_RUN;
    if (go) { /* under the same lock: the loop never sees the binding taken but not adopted */
        job_adopt(j, j->next);
        j->next = NULL;
    }
    uv_mutex_unlock(&j->ep_mu);
    if (!go) return 0;
    atomic_store(&j->holding, 0);
    LOG_INFO("%s: slot (%d, %d) joins epoch %llu%s", j->id, j->pod, j->slot,
             (unsigned long long)j->epoch, j->cur.restore ? " to restore" : "");
    return 1;
}

/* The restore of a recovery epoch, once the comm and the trainer are up. A state that failed
 * its checksum is reported at once, naming its sender, before this slot leaves the epoch (so
 * the coordinator knows it before the peers' faults make it plan again); the slot then holds
 * no state of its own and waits for the next epoch like any slot whose data plane failed. */
static moe_status restore(struct job *j, struct rpc_channel *ch, struct trainer *t,
                          double connect_s) {
    struct restore_plan p = {j->cur.restore_step, j->cur.restore_from, j->pods * j->slots};
    struct restore_stats st;
    moe_status s = replica_restore(t, &p, &st);
    if (s != MOE_OK && st.refused_from >= 0) {
        char why[512];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        LOG_WARN("%s: slot (%d, %d) epoch %llu: %s", j->id, j->pod, j->slot,
                 (unsigned long long)j->epoch, why);
        struct fault_detail d = {.refused_from = st.refused_from};
        job_report_fault(j, ch, j->cur.restore_step, why, &d);
        return moe_fail(s, "%s", why);
    }
    CHECK(s);
    atomic_store(&j->step, t->model.step);
    job_report_restored(j, ch, t->model.step, connect_s, &st);
    return MOE_OK;
}

/* Joins the job's current epoch: the first one opens the trainer, a later one re-forms the
 * comm under the trainer it has; either restores if the binding says so. */
static int join_epoch(struct job *j, struct rpc_channel *ch, struct trainer *t, int *have_t,
                      char *error, size_t error_len, moe_status *why) {
    double t0 = moe_clock_s();
    if (!*have_t) {
        int opened = open_trainer(j, t, error, error_len, why);
        if (opened == 0) return 0;
        *have_t = 1; /* opened, maybe without its comm (-1): it waits for the next epoch */
        uv_mutex_lock(&j->ep_mu);
        j->trainer = t;
        uv_mutex_unlock(&j->ep_mu);
        if (opened < 0) return 0;
    } else if ((*why = bind_comm(j, t)) != MOE_OK) {
        snprintf(error, error_len, "%s", moe_errmsg());
        return 0;
    }
    if (j->cur.restore && (*why = restore(j, ch, t, moe_clock_s() - t0)) != MOE_OK) {
        snprintf(error, error_len, "restoring step %ld: %s", j->cur.restore_step, moe_errmsg());
        return 0;
    }
    return 1;
}

/* ---- the thread ---- */

/* A report's answer said stop: the job ends here (the coordinator stops the other slots). */
static void note_stop(struct job *j) {
    int run = JOB_RUN;
    atomic_compare_exchange_strong(&j->stop, &run, JOB_STOP_COORDINATOR);
}

static void log_training(const struct job *j, const struct trainer *t) {
    LOG_INFO("%s: training '%s': %zu parameters (%d layers, d_model %d, %d experts, top-%d), "
             "batch %d x %d, %ld steps, %d threads", j->id, t->spec.name, t->model.n_params,
             t->spec.model.n_layers, t->spec.model.d_model, t->spec.model.n_experts,
             t->spec.model.top_k, t->B, t->T, t->spec.run.steps, omp_get_max_threads());
}

/* Every step ran: the held reports go out, then the model is saved and uploaded and the end
 * reported. Returns 1 when the job is over (or the coordinator stopped it); 0 when the
 * collective save lost a peer (error and *why say so): the job recovers and saves again. */
static int finish(struct job *j, struct rpc_channel *ch, const struct trainer *t,
                  struct backlog *b, double t0, char *error, size_t error_len, moe_status *why) {
    if (backlog_drain(j, ch, b)) note_stop(j);
    if (atomic_load(&j->stop) == JOB_STOP_COORDINATOR) return 1;
    LOG_INFO("%s: trained %ld steps in %.1f s", j->id, t->model.step, moe_clock_s() - t0);
    if (job_finish_ok(j, ch, t, j->recoverable)) return 1;
    *why = MOE_EUNAVAILABLE;
    snprintf(error, error_len, "saving the model: %s", moe_errmsg());
    return 0;
}

/* Epoch after epoch until the job is done. Returns 1 when every step ran (the model's end is
 * reported, unless the coordinator stopped it); 0 when it ended early: *error says why, empty
 * when it was stopped. *have_t: the trainer is open. */
static int run_epochs(struct job *j, struct rpc_channel *ch, struct trainer *t, int *have_t,
                      struct backlog *b, char *error, size_t error_len) {
    int logged = 0;
    double t0 = moe_clock_s();
    for (;;) {
        moe_status why = MOE_OK;
        error[0] = 0;
        if (join_epoch(j, ch, t, have_t, error, error_len, &why)) {
            if (!logged) log_training(j, t);
            logged = 1;
            if (train(j, ch, t, b, error, error_len, &why) &&
                finish(j, ch, t, b, t0, error, error_len, &why))
                return 1;
        }
        if (atomic_load(&j->stop) != JOB_RUN || !j->recoverable || !data_plane_error(why))
            return 0;
        if (!wait_for_epoch(j, ch, t, *have_t, error[0] ? error : "the epoch was aborted"))
            return 0;
    }
}

/* The end report of a job that has no model to show: it failed (error says why) or was
 * stopped; a complete one only if the coordinator stopped it after its last step. */
static void report_no_model(struct job *j, struct rpc_channel *ch, const struct trainer *t,
                            int have_t, struct backlog *b, int complete, const char *error) {
    if (complete) {
        if (atomic_load(&j->stop) != JOB_STOP_COORDINATOR) return;
        LOG_INFO("%s: stopped after step %ld (the coordinator asked)", j->id, t->model.step);
        job_report_end(j, ch, 0, 1, "stopped", 0, NULL, NULL);
        return;
    }
    if (backlog_drain(j, ch, b)) note_stop(j);
    long step = have_t ? t->model.step : 0;
    int stop = atomic_load(&j->stop);
    if (stop == JOB_RUN && error[0]) {
        LOG_ERROR("%s: failed at step %ld: %s", j->id, step, error);
        job_report_end(j, ch, 0, 0, error, 0, NULL, NULL);
    } else {
        LOG_INFO("%s: stopped after step %ld (%s)", j->id, step,
                 stop == JOB_STOP_SHUTDOWN ? "the worker is shutting down"
                                           : "the coordinator asked");
        job_report_end(j, ch, 0, 1, stop == JOB_STOP_SHUTDOWN ? "worker shut down" : "stopped",
                       0, NULL, NULL);
    }
}

void job_thread(void *arg) {
    struct job *j = arg;
    struct worker *w = j->w;
    /* OpenMP's thread count is per thread: set it where the math runs */
    if (w->cfg.threads > 0) omp_set_num_threads(w->cfg.threads);
    struct rpc_channel *ch = NULL;
    /* no token: each call carries the worker's credential of the moment (report.c) */
    if (rpc_channel_open(&ch, w->cfg.coordinator, &w->cfg.tls, NULL, 0) != MOE_OK) {
        LOG_ERROR("%s: %s", j->id, moe_errmsg());
        goto done;
    }
    j->report_ch = ch; // before any comm opens: its watcher reports on it
    rpc_channel_connect(ch); /* while the trainer is built: a restore's report goes out at once */
    struct trainer t;
    int have_t = 0;
    struct backlog b = {0};
    char error[512] = "";
    int complete = run_epochs(j, ch, &t, &have_t, &b, error, sizeof error);
    report_no_model(j, ch, &t, have_t, &b, complete, error);
    backlog_free(&b);
    uv_mutex_lock(&j->ep_mu);
    j->trainer = NULL;
    uv_mutex_unlock(&j->ep_mu);
    if (have_t) trainer_close(&t);
    job_close_comm(j);
done:
    rpc_channel_close(ch);
    atomic_store(&j->finished, 1);
    uv_async_send(&w->job_done); // last: after it, the loop may join and free j
}
