/*
 * recovery.c — how a recoverable mesh survives the loss of slots (docs/recovery.md, "Recovery,
 * as the coordinator drives it").
 *
 * Owns: driving a job's recovery (state/recovery_state.h) from the first fault signal to the
 * last ReportRestored:
 *   signal   whatever policy/faults.c hands over for a recoverable job (ReportFault of the
 *            current epoch, a bound worker the monitor found dead, a slot's error end, a worker
 *            that re-registered without its slot), a RunSlot refused during a recovery, and a
 *            bound worker that holds a frozen state (or missed its new epoch) after a
 *            coordinator restart: event "failure"; a signal during a recovery's rebinding or
 *            restoring starts it again
 *   fence    FenceSlot (1 s, failing fast) to every worker bound in the epoch (one found dead
 *            too, unless superseded); an answer lists the state copies the worker holds, no
 *            answer makes the worker DEAD and its slot lost (cut off, not known dead, when the
 *            call timed out or found no route: partition.c may wait for it to come back)
 *   plan     recovery_plan.c: the slots that keep their worker, T, the sources; placement.c: a
 *            spare for every lost slot (tcp: any idle worker, or a survivor's second listener;
 *            mpi: a whole idle MPI job per lost pod), or a wait of up to mesh.spare_wait_s for
 *            one (re-planned on every schedule pass)
 *   record   epoch + 1, the binding, T, the sources: one synced batch with the event
 *            "recovering", before any RunSlot(restore) goes out
 *   restore  RunSlot answers (a refusal restarts the recovery without that worker) and
 *            ReportRestored; event "recovered" with the time split when every slot is back, and
 *            the committed step raised to T (not when the plan is stored: T may have had a
 *            single copy until then)
 * Partition: a rebind's data-plane fault counts as an attempt only if the fence after it finds
 * a slot lost; when every worker answers holding its state, partition.c holds the recovery
 * (events "partition_held", "partition_healed"; rebound after a backoff, not counted against
 * REC_MAX_ROUNDS, failed after mesh.partition_wait_s).
 * Move: once a worker is idle, a doubled slot is moved onto it by the same fence, plan, record
 * and restore (recovery_rebalance; events "rebalance", "moving", "moved"; not a recovery unless
 * a fault joins it). Its old worker stays for its other slot and stops the moved one itself.
 * Never: touches tensors or guesses what a worker holds (its FenceResponse says); decides
 * whether a job recovers at all (faults.c does, from mesh_recoverable); or plans below
 * committed_step (that would be a bug: the job fails loudly instead).
 */
#include "recovery.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"
#include "../state/transitions.h"
#include "../state/worker_calls.h"
#include "partition.h"
#include "placement.h"
#include "recovery_plan.h"
#include "repair.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REC_MAX_ROUNDS 8       // fence rounds of one recovery before the job fails
#define MOVE_RETRY_MS 10000    // after a move that became a recovery, the next try waits

static void fence_round(struct coordinator *co, struct job *j);
static void plan(struct coordinator *co, struct job *j);
static void peer_exited(struct coordinator *co, struct job *j, const Moed__V1__FaultReport *rep);

static void exclude_worker(struct recovery *r, const char *id) {
    for (int i = 0; i < r->n_exclude; i++)
        if (!strcmp(r->exclude[i], id)) return;
    if (r->n_exclude == REC_MAX_EXCLUDED) { // the oldest exclusion makes room
        memmove(r->exclude[0], r->exclude[1], sizeof r->exclude[0] * (REC_MAX_EXCLUDED - 1));
        r->n_exclude--;
    }
    snprintf(r->exclude[r->n_exclude++], sizeof r->exclude[0], "%s", id);
}

/* A move that no fault joined: its own events ("moving", "moved"), not counted as a recovery. */
static int only_move(const struct recovery *r) { return r->move >= 0 && !r->faulted; }

/* Frees a worker that no longer plays a slot of j (fenced out, or its pod moved): told to
 * stop if it may still run it, idle again once a heartbeat shows it idle. */
static void release_worker(struct coordinator *co, struct job *j, struct worker *w,
                           struct store_batch *b) {
    if (!w || strcmp(w->job_id, j->id) != 0) return;
    if (w->state != MOED__V1__WORKER_STATE__WORKER_DEAD) worker_call_stop(co, j, w, w->epoch);
    worker_set_free(w, 1);
    if (b)
        worker_batch(b, w);
    else
        worker_save(co, w);
}

/* The job cannot be recovered: it fails with `why`, the coordinator goes on. */
static void give_up(struct coordinator *co, struct job *j, const char *why) {
    LOG_WARN("%s: recovery impossible: %s", j->id, why);
    job_fail(co, j, -1, "failed", "%s", why); // ends the recovery (job_finish)
}

/* ---- public small pieces ---- */
/* A worker the recovery in progress has already given up on: it answered its fence with
 * nothing, or not at all, and the epoch has not moved on yet. */
static int dropped(const struct job *j, const struct worker *w, int k) {
    const struct recovery *r = j->rec;
    if (!r || !r->ans || k < 0 || (r->phase != REC_FENCING && r->phase != REC_WAITING)) return 0;
    const struct fence_answer *a = &r->ans[k];
    return !strcmp(a->worker_id, w->id) && (a->state == ANS_LOST || a->state == ANS_EMPTY);
}

int recovery_dropped(const struct job *j, const struct worker *w) {
    return dropped(j, w, job_slot_of(j, w->id));
}

/* ---- signals ---- */

/* What a recovery's detection and total are timed from (docs/recovery.md, "What the figures
 * measure"): the fault's effect as the coordinator can know it. A worker the recovery lost
 * that had been silent for more than two heartbeat intervals at the first signal was failing
 * before it: the recovery is timed from its last sign of life, its last heartbeat or step
 * report, whichever is newer (a ReportFault counts too: cluster_service.c). Otherwise (a
 * killed worker whose peer reported the closed connection at once, a worker that reported its
 * own fault) from the first signal, the report itself; a move from its decision. Kept across
 * our restart: JobRecord.recovery_since_ms. */
static void since_lost(struct coordinator *co, struct job *j, const struct worker *w) {
    struct recovery *r = j->rec;
    if (!w || w->last_heartbeat_ms <= 0 || w->last_heartbeat_ms >= r->since_ms ||
        r->signal_ms - w->last_heartbeat_ms <= 2 * co->cfg.heartbeat_interval_ms)
        return;
    r->since_ms = j->recovery_since_ms = w->last_heartbeat_ms;
    snprintf(r->since, sizeof r->since, "%s's last %s", w->id,
             w->last_report_ms >= w->last_heartbeat_ms ? "step report" : "heartbeat");
}

/* At the first signal: `dead`, the signal says slot k's worker is gone. */
static void since_fault(struct coordinator *co, struct job *j, int k, int dead, int64_t now) {
    struct recovery *r = j->rec;
    const char *id = k >= 0 ? j->bindings[k].worker_id : "";
    r->since_ms = j->recovery_since_ms ? j->recovery_since_ms : now;
    if (j->recovery_since_ms)
        snprintf(r->since, sizeof r->since, "the recovery's start, before the coordinator "
                 "restarted");
    else if (id[0] && r->move < 0)
        snprintf(r->since, sizeof r->since, "%s's report", id);
    else
        snprintf(r->since, sizeof r->since, "the first signal");
    j->recovery_since_ms = r->since_ms;
    if (dead && id[0]) since_lost(co, j, workers_find(co, id));
}

/* The first fence round's lost workers: one silent before the first signal times the recovery
 * (a SIGSTOPped worker whose peer's data plane timed out before the heartbeats did). */
static void since_fenced(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    if (r->rounds || only_move(r)) return;
    for (int k = 0; k < job_n_slots(j); k++)
        if (r->ans[k].state == ANS_LOST) since_lost(co, j, workers_find(co, r->ans[k].worker_id));
}

/* The first signal of a recovery: event "failure", then the fence. `dead`: the signal says
 * slot k's worker is gone. */
static void begin(struct coordinator *co, struct job *j, int k, const char *what,
                  const char *kind, int move, int dead) {
    struct recovery *r = calloc(1, sizeof *r);
    if (!r) {
        give_up(co, j, "out of memory starting a recovery");
        return;
    }
    int64_t now = moe_wall_ms();
    r->move = move;
    r->asked_move = move >= 0;
    r->repair = !strcmp(kind, "repairing"); // the fence asks for the copies' hashes
    j->rec = r;
    j->recovering = 1;
    r->signal_ms = now;
    since_fault(co, j, k, dead, now);
    snprintf(r->first_signal, sizeof r->first_signal, "%s", what);
    char where[96];
    if (r->repair)
        job_event(co, j, 1, kind, "%s; every slot returns to the last step whose state the "
                          "replicas agree on, the wrong copy restored from a good one, and "
                          "replays (committed step %lld)", what, (long long)j->committed_step);
    else if (move >= 0)
        job_event(co, j, 1, kind, "%s: %s; moving it there from the replicas "
                          "(committed step %lld)", job_slot_where(j, k, where, sizeof where), what,
                          (long long)j->committed_step);
    else
        job_event(co, j, 1, kind, "%s: %s; recovering from the replicas (mesh.replicas "
                          "= %d, committed step %lld)", job_slot_where(j, k, where, sizeof where),
                          what, j->replicas, (long long)j->committed_step);
    fence_round(co, j);
}

/* One more attempt of the recovery (event "failure"); 0 when that was the last one allowed
 * and the job failed. */
static int counted(struct coordinator *co, struct job *j, int k, const char *what) {
    struct recovery *r = j->rec;
    char where[96];
    if (++r->rounds >= REC_MAX_ROUNDS) {
        char why[1800];
        snprintf(why, sizeof why, "%s: the recovery gave up after %d attempts (at most %d); the "
                 "last fault: %s", job_slot_where(j, k, where, sizeof where), r->rounds,
                 REC_MAX_ROUNDS, what);
        plan_refused_text(r, why, sizeof why);
        give_up(co, j, why);
        return 0;
    }
    job_event(co, j, 1, "failure", "%s: %s; the recovery starts again (attempt %d)",
                      job_slot_where(j, k, where, sizeof where), what, r->rounds + 1);
    return 1;
}

/* A new fault while the recovery rebinds or restores: the procedure starts again from the
 * fence, with the newest epoch. `reach`: a data-plane fault, which may be a partition: the
 * fence tells (plan: counted, or held by partition.c). */
static void restart(struct coordinator *co, struct job *j, int k, const char *what, int reach) {
    struct recovery *r = j->rec;
    r->faulted = 1; // a move that meets a fault is a recovery (events, JobInfo.recoveries)
    if (reach && !r->part.suspect) {
        r->part.suspect = 1;
        r->part.suspect_slot = k;
        snprintf(r->part.suspect_what, sizeof r->part.suspect_what, "%.499s", what);
        LOG_INFO("%s: %s; fencing to tell a partition from a loss", j->id, what);
    } else if (!counted(co, j, k, what)) {
        return;
    }
    fence_round(co, j);
}

void recovery_repair(struct coordinator *co, struct job *j, int k, const char *what) {
    struct recovery *r = j->rec;
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable || (r && r->repair))
        return;
    if (!r) {
        begin(co, j, k, what, "repairing", -1, 0);
        return;
    }
    /* a recovery in progress becomes a repair: fenced again, this time for the hashes */
    r->repair = 1;
    job_event(co, j, 1, "repairing", "%s; the recovery in progress becomes a repair", what);
    if (r->phase == REC_FENCING || r->phase == REC_WAITING)
        fence_round(co, j);
    else
        restart(co, j, k, what, 0);
}

/* A signal while the fence answers come in or a spare is awaited: what it says about the
 * slot's worker goes into its answer (a pending fence call decides by itself). */
static void note(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                 const char *what) {
    struct recovery *r = j->rec;
    LOG_INFO("%s: during the recovery: %s", j->id, what);
    if (k < 0 || !r->ans) return;
    struct fence_answer *a = &r->ans[k];
    if (strcmp(a->worker_id, j->bindings[k].worker_id) != 0 || a->state == ANS_PENDING) return;
    enum answer was = a->state;
    if (kind == FAULT_DEAD && a->state != ANS_LOST) a->state = ANS_LOST;
    if (kind == FAULT_ENDED && a->state == ANS_HOLDS) a->state = ANS_EMPTY;
    if (a->state == was) return;
    snprintf(a->why, sizeof a->why, "%.199s", what);
    a->n_copies = 0;
    if (r->phase == REC_WAITING) plan(co, j); // the plan it waits with is wrong now
}

/* `reach`: a data-plane fault that may mean only that peers cannot reach each other. */
static void signal_fault(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                         int reach, char *what, size_t cap) {
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable) return;
    job_name_ranks(j, what, cap);
    struct recovery *r = j->rec;
    if (!r) {
        begin(co, j, k, what, "failure", -1, kind == FAULT_DEAD);
        return;
    }
    if (r->phase == REC_FENCING || r->phase == REC_WAITING)
        note(co, j, k, kind, what);
    else
        restart(co, j, k, what, reach);
}

void recovery_signal(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                     const char *fmt, ...) {
    char what[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    signal_fault(co, j, k, kind, 0, what, sizeof what);
}

/* A restore refused the state rep->source_rank sent (its checksum failed): that worker is no
 * source of that slot index for the rest of this recovery (recovery_plan.c plan_source). */
static void note_refused(struct job *j, int k, const Moed__V1__FaultReport *rep) {
    struct recovery *r = j->rec;
    if (!r || rep->source_rank < 0 || rep->source_rank >= job_n_slots(j)) return;
    const char *src = j->bindings[rep->source_rank].worker_id;
    if (plan_refused(r, src, k % j->slots)) return;
    if (r->n_refused == REC_MAX_REFUSED) { // the oldest makes room
        memmove(&r->refused[0], &r->refused[1], sizeof r->refused[0] * (REC_MAX_REFUSED - 1));
        r->n_refused--;
    }
    struct refused_source *f = &r->refused[r->n_refused++];
    snprintf(f->worker_id, sizeof f->worker_id, "%s", src);
    f->slot = k % j->slots;
    snprintf(f->why, sizeof f->why, "%.239s", rep->error);
    LOG_WARN("%s: %s refused the state of slot index %d from %s (rank %d): %s; not a source of "
             "it again in this recovery", j->id, rep->worker_id, f->slot, src, rep->source_rank,
             rep->error);
}

void recovery_fault_report(struct coordinator *co, struct job *j, int k,
                           const Moed__V1__FaultReport *rep) {
    int64_t now = moe_wall_ms();
    if (rep->transfer_refused) note_refused(j, k, rep);
    partition_report(j, k, rep);
    char what[700];
    snprintf(what, sizeof what, "%s reported a data-plane fault at step %lld: %s",
             rep->worker_id, (long long)rep->step, rep->error[0] ? rep->error : "(no error given)");
    signal_fault(co, j, k, FAULT_REPORTED, !rep->transfer_refused, what, sizeof what);
    if (j->rec && !j->rec->first_fault_ms) j->rec->first_fault_ms = now;
    if (rep->peer_exited) peer_exited(co, j, rep);
}

/* A worker whose fence found it cut off (not dead) shows up again holding its state of the
 * fenced epoch while the recovery waits without it: fenced again, so that its copies count. */
static int back_from_cut(struct coordinator *co, struct job *j, int k, const struct worker *w,
                         uint64_t epoch, int holding) {
    struct recovery *r = j->rec;
    if (!r || r->phase != REC_WAITING || !r->ans || k < 0 || !holding || epoch != j->epoch)
        return 0;
    const struct fence_answer *a = &r->ans[k];
    if (a->state != ANS_LOST || !a->cut_off || strcmp(a->worker_id, w->id) != 0) return 0;
    LOG_WARN("%s: %s is back, holding its state of epoch %llu: fencing again", j->id, w->id,
             (unsigned long long)epoch);
    fence_round(co, j);
    return 1;
}

int recovery_worker_state(struct coordinator *co, struct job *j, int k, struct worker *w,
                          uint64_t epoch, int holding, const char *how) {
    if (!epoch) return 1; // a worker that does not say its epoch: nothing to compare
    if (epoch > j->epoch) return 0;
    if (back_from_cut(co, j, k, w, epoch, holding)) return 1;
    if (dropped(j, w, k)) return 0; // fenced out: it becomes a spare once it stopped
    if (epoch == j->epoch && !holding) return 1;
    if (j->rec) return 1;           // our recovery reaches it: a fence, then its RunSlot
    if (epoch < j->epoch && j->bindings[k].running) return 1; // said before it took the epoch
    /* It waits for an epoch no recovery of this process will send (the coordinator restarted
     * after fencing it, or its ReportFault was lost): a recovery must. */
    recovery_signal(co, j, k, FAULT_HOLDING, "%s %s %s epoch %llu (the job is at epoch %llu)",
                    w->id, how, holding ? "holds its frozen state of" : "still runs",
                    (unsigned long long)epoch, (unsigned long long)j->epoch);
    return 1;
}

/* ---- fence ---- */

struct fence_ctx {
    struct coordinator *co;
    char job_id[24];
    char worker_id[24];
    uint64_t gen;
    int slot;
};

static void fence_answered(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    if (r->pending || r->sending) return;
    r->fenced_ms = moe_wall_ms();
    int lost = 0, empty = 0, n = job_n_slots(j);
    for (int k = 0; k < n; k++) {
        lost += r->ans[k].state == ANS_LOST;
        empty += r->ans[k].state == ANS_EMPTY;
    }
    LOG_INFO("%s: epoch %llu fenced in %lld ms: %d slot%s lost, %d without state, %d holding",
             j->id, (unsigned long long)j->epoch, (long long)(r->fenced_ms - r->fence_ms), lost,
             lost == 1 ? "" : "s", empty, n - lost - empty);
    since_fenced(co, j);
    plan(co, j);
}

/* Records one slot's answer; 1 if it was the first for that slot. */
static int answer_set(struct recovery *r, int k, enum answer state, const char *why) {
    struct fence_answer *a = &r->ans[k];
    if (a->state != ANS_PENDING) return 0;
    a->state = state;
    if (why) snprintf(a->why, sizeof a->why, "%.199s", why);
    r->pending--;
    return 1;
}

static void fence_holds(struct coordinator *co, struct job *j, struct fence_answer *a,
                        struct worker *w, const Moed__V1__FenceResponse *resp) {
    plan_answer_copies(a, resp, j->slots);
    if (w && w->state == MOED__V1__WORKER_STATE__WORKER_DEAD) {
        /* declared dead a moment ago, but it answered: it still holds its slot */
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        worker_save(co, w);
    }
}

/* A fence that timed out or found no route to the worker: it may be alive and cut off from
 * the coordinator (a partition). A refused or reset connection says its process is gone. */
static int cut_off(const struct rpc_result *res) {
    if (res->code == GRPC_STATUS_DEADLINE_EXCEEDED) return 1;
    return res->code == GRPC_STATUS_UNAVAILABLE &&
           (strstr(res->details, "No route") || strstr(res->details, "unreachable") ||
            strstr(res->details, "timed out") || strstr(res->details, "Timeout"));
}

static void fence_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct fence_ctx *f = arg;
    struct coordinator *co = f->co;
    struct job *j = co->stopping ? NULL : jobs_find(co, f->job_id);
    struct recovery *r = j ? j->rec : NULL;
    if (!r || r->gen != f->gen || r->phase != REC_FENCING || !r->ans) {
        free(f);
        return; // an older round, or the job ended
    }
    struct worker *w = workers_find(co, f->worker_id);
    struct fence_answer *a = &r->ans[f->slot];
    char sl[32];
    if (res->code == GRPC_STATUS_OK) {
        const Moed__V1__FenceResponse *resp = (const Moed__V1__FenceResponse *)msg;
        if (w) w->last_heartbeat_ms = moe_wall_ms(); // an answer is as good as a heartbeat
        if (resp->holds && answer_set(r, f->slot, ANS_HOLDS, NULL)) {
            fence_holds(co, j, a, w, resp);
            LOG_INFO("%s: %s fenced slot %s at step %lld, %d cop%s", j->id, f->worker_id,
                     job_slot_text(j, f->slot, sl, sizeof sl), (long long)resp->step, a->n_copies,
                     a->n_copies == 1 ? "y" : "ies");
        } else if (!resp->holds &&
                   answer_set(r, f->slot, ANS_EMPTY, "holds no state of the job (restarted?)")) {
            LOG_WARN("%s: %s holds no state of slot %s", j->id, f->worker_id,
                     job_slot_text(j, f->slot, sl, sizeof sl));
            release_worker(co, j, w, NULL); // alive and free: a spare like any other
        }
    } else {
        char why[64]; // for events; the log has gRPC's whole story
        snprintf(why, sizeof why, "did not answer its fence (%s)", rpc_code_name(res->code));
        int set = answer_set(r, f->slot, ANS_LOST, why);
        if (set) a->cut_off = cut_off(res);
        if (set && w) {
            LOG_WARN("%s: %s at %s did not answer its fence: %s: %s: lost", j->id, w->id,
                     w->address, rpc_code_name(res->code), res->details);
            if (w->state != MOED__V1__WORKER_STATE__WORKER_LEFT) worker_mark_dead(co, w);
        }
    }
    free(f);
    fence_answered(co, j);
}

/* The reporter's peer watcher saw the process of rank rep->exited_rank (of this epoch) exit
 * (worker/comm/watch.c): its worker is lost now. Its fence would be refused only once its
 * kernel has freed its memory and closed its sockets, milliseconds (tens per GB) later, and
 * the plan would wait for that. */
static void peer_exited(struct coordinator *co, struct job *j, const Moed__V1__FaultReport *rep) {
    struct recovery *r = j->rec;
    int g = rep->exited_rank;
    if (!r || r->phase != REC_FENCING || !r->ans || rep->epoch != j->epoch || g < 0 ||
        g >= job_n_slots(j) || strcmp(r->ans[g].worker_id, j->bindings[g].worker_id) != 0)
        return;
    char why[64];
    snprintf(why, sizeof why, "is gone (%.24s saw its process exit)", rep->worker_id);
    if (!answer_set(r, g, ANS_LOST, why)) return;
    struct worker *w = workers_find(co, r->ans[g].worker_id);
    LOG_WARN("%s: %s %s: lost without waiting for its fence", j->id, r->ans[g].worker_id, why);
    if (w && w->state != MOED__V1__WORKER_STATE__WORKER_LEFT) worker_mark_dead(co, w);
    fence_answered(co, j);
}

/* Another live worker registered at w's address: w's process is gone for sure. */
static int superseded(const struct coordinator *co, const struct worker *w) {
    for (int i = 0; i < co->n_workers; i++) {
        const struct worker *o = co->workers[i];
        if (o != w && worker_alive(o) && !strcmp(o->address, w->address)) return 1;
    }
    return 0;
}

static void fence_round(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int n = job_n_slots(j);
    recovery_answers_free(r, n);
    r->ans = calloc((size_t)n, sizeof *r->ans);
    if (!r->ans) {
        give_up(co, j, "out of memory fencing the epoch");
        return;
    }
    r->phase = REC_FENCING;
    r->gen = ++co->recovery_calls;
    r->fence_ms = moe_wall_ms();
    if (!r->first_fence_ms) r->first_fence_ms = r->fence_ms;
    r->pending = n;
    r->sending = 1;
    for (int k = 0; k < n; k++) {
        struct fence_answer *a = &r->ans[k];
        snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
        struct worker *w = workers_find(co, a->worker_id);
        /* one the monitor found silent is fenced too: a refusal says it is dead, a timeout
         * that it may be cut off from us (a partition) */
        if (!w || w->state == MOED__V1__WORKER_STATE__WORKER_LEFT || !w->channel ||
            (w->state == MOED__V1__WORKER_STATE__WORKER_DEAD && superseded(co, w))) {
            answer_set(r, k, ANS_LOST, "is dead");
            continue;
        }
        struct fence_ctx *f = calloc(1, sizeof *f);
        if (!f) {
            answer_set(r, k, ANS_LOST, "could not be fenced: out of memory");
            continue;
        }
        f->co = co;
        snprintf(f->job_id, sizeof f->job_id, "%s", j->id);
        snprintf(f->worker_id, sizeof f->worker_id, "%s", w->id);
        f->gen = r->gen;
        f->slot = k;
        if (worker_call_fence(co, j, w, fence_reply, f) != MOE_OK) {
            char why[200];
            snprintf(why, sizeof why, "could not be fenced: %.160s", moe_errmsg());
            answer_set(r, k, ANS_LOST, why);
            free(f);
        }
    }
    LOG_INFO("%s: fencing epoch %llu (%d slots)", j->id, (unsigned long long)j->epoch, n);
    r->sending = 0;
    fence_answered(co, j);
}
/* No spare for slot k: wait up to mesh.spare_wait_s (re-planned by recovery_poll), then fail. */
static void wait_for_spare(struct coordinator *co, struct job *j, int k) {
    struct recovery *r = j->rec;
    int64_t now = moe_wall_ms();
    r->phase = REC_WAITING;
    if (!r->wait_since_ms) r->wait_since_ms = now;
    double waited = (double)(now - r->wait_since_ms) / 1000.0;
    int mpi = !strcmp(j->backend, "mpi");
    char sl[32], need[96];
    if (mpi)
        snprintf(need, sizeof need, "an idle mpirun job of %d ranks", j->slots);
    else
        snprintf(need, sizeof need, "an idle worker");
    if (waited >= j->spare_wait_s) {
        char why[900];
        snprintf(why, sizeof why, "slot %s of the %d x %d mesh: no worker to play it (%s) after "
                 "waiting %.0f s for a spare (mesh.spare_wait_s); its worker %s %s; last "
                 "committed step %lld", job_slot_text(j, k, sl, sizeof sl), j->pods, j->slots, need,
                 waited, r->ans[k].worker_id, r->ans[k].why[0] ? r->ans[k].why : "was lost",
                 (long long)j->committed_step);
        char held[1400];
        int cut = partition_cut_off(co, j, why, held, sizeof held); // it may come back
        if (cut <= 0) give_up(co, j, cut < 0 ? held : why);
        return;
    }
    if (!r->waiting_announced) {
        r->waiting_announced = 1;
        job_event(co, j, 0, "recovery_waiting", "slot %s needs a new worker (%s) and "
                          "none is free: waiting up to %.0f s for a spare",
                          job_slot_text(j, k, sl, sizeof sl), need, j->spare_wait_s);
    }
}


static void run_slot_answer(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg);

/* The workers that leave the job: freed, in the plan's batch. A moved slot's worker keeps its
 * other slot (and stops this one when that slot's RunSlot shows it no longer binds it). */
static void release_leavers(struct coordinator *co, struct job *j, const char *keep,
                            struct store_batch *b) {
    struct recovery *r = j->rec;
    int n = job_n_slots(j);
    for (int k = 0; k < n; k++) {
        int stays = 0;
        for (int q = 0; q < n && !keep[k] && !stays; q++)
            stays = keep[q] && !strcmp(r->ans[q].worker_id, r->ans[k].worker_id);
        if (!keep[k] && !stays)
            release_worker(co, j, workers_find(co, r->ans[k].worker_id), b);
    }
}

/* The new epoch's binding: kept slots keep their worker and listener, lost ones get their
 * spare (a survivor given a lost slot too plays it on its second listener); every slot starts
 * at step t. The workers' records go into the plan's batch. */
static void rebind(struct coordinator *co, struct job *j, int64_t t, const char *keep,
                   struct worker **spare, struct store_batch *b) {
    struct recovery *r = j->rec;
    int n = job_n_slots(j);
    for (int k = 0; k < n; k++) {
        struct binding *bd = &j->bindings[k];
        struct worker *w = keep[k] ? workers_find(co, bd->worker_id) : spare[k];
        char kept_addr[DATA_ADDR_MAX]; /* a kept slot keeps its listener (maybe a second one) */
        snprintf(kept_addr, sizeof kept_addr, "%s", bd->data_address);
        memset(bd, 0, sizeof *bd);
        bd->step = (long)t;
        if (!w) continue; // cannot happen: kept workers are known, spares were chosen
        snprintf(bd->worker_id, sizeof bd->worker_id, "%s", w->id);
        snprintf(bd->address, sizeof bd->address, "%s", w->address);
        int second = 0;
        for (int q = 0; q < n && !keep[k] && !second; q++)
            second = keep[q] && !strcmp(r->ans[q].worker_id, w->id);
        snprintf(bd->data_address, sizeof bd->data_address, "%s",
                 keep[k] ? kept_addr : second ? w->extra_data_address : w->data_address);
        bd->mpi_rank = w->mpi_rank;
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        if (second) continue; // its record already says it plays this job
        w->slot = k % j->slots;
        w->epoch = j->epoch;
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        w->awaiting_idle = 0;
        worker_batch(b, w);
    }
    job_bindings_changed(j);
}

/* The plan in `b` and the job's record, stored with the event "recovering" (or "moving"); a
 * rebind of a held partition that every worker keeps is stored without one (partition_held
 * said it: one event per retry would drown the log during a long partition). */
static moe_status record_plan(struct coordinator *co, struct job *j, struct store_batch *b,
                              const char *text) {
    if (j->rec->part.since_ms && partition_all_hold(j)) {
        LOG_INFO("%s: partition held: rebinding again: %s", j->id, text);
        job_batch(b, j);
        return store_batch_commit(co->store, b, 1);
    }
    return job_event_batch(co, j, b, 1, only_move(j->rec) ? "moving" : "recovering", "%s", text);
}

/* Where the coordinator's own part of a recovery went, from the first sign of the fault to
 * the last RunSlot handed to gRPC (what the "recovery plan" time names; the workers'
 * receipt and restore come after): bench_scale reads this line. */
static void log_plan_times(const struct job *j, const struct recovery *r) {
    int64_t now = moe_wall_ms(), from = r->signal_ms ? r->signal_ms : r->fence_ms;
    LOG_INFO("%s: epoch %llu: %d RunSlots sent %lld ms after the fault (fence round %lld ms, "
             "plan %lld ms, store and send %lld ms)", j->id, (unsigned long long)j->epoch,
             job_n_slots(j), (long long)(now - from), (long long)(r->fenced_ms - r->fence_ms),
             (long long)(r->planned_ms - r->fenced_ms), (long long)(now - r->planned_ms));
}

/* Stores the new epoch (binding, T, sources) with the event "recovering", then sends
 * RunSlot(restore) to every slot. */
static void record(struct coordinator *co, struct job *j, int64_t t, const char *keep,
                   struct worker **spare) {
    struct recovery *r = j->rec;
    int n = job_n_slots(j);
    int32_t *from = calloc((size_t)n, sizeof *from);
    char *restored = calloc((size_t)n, 1);
    struct store_batch *b = store_batch_new();
    if (!from || !restored || !b) {
        free(from);
        free(restored);
        store_batch_free(b);
        give_up(co, j, "out of memory recording the recovery");
        return;
    }
    for (int k = 0; k < n; k++) from[k] = plan_source(j, r, keep, k, t);
    release_leavers(co, j, keep, b);
    j->epoch++;
    rebind(co, j, t, keep, spare, b);
    free(j->restore_from);
    j->restore_from = from;
    j->restore_step = t;
    /* committed_step is not raised to T here: T may have one copy only (a survivor that
     * finished step T while its data-parallel peer lost the step's last message with the
     * connection), and if that worker dies before the restore ends, the next plan must be
     * free to go back below T. Once every slot is restored, T is in every pod: then it is. */
    j->step = t;
    j->n_running = 0;
    j->failing_ms = 0;
    free(r->restored);
    r->restored = restored;
    r->n_restored = 0;
    r->max_transfer_s = r->max_connect_s = 0;
    r->bytes = 0;
    r->phase = REC_REBINDING;
    r->gen = ++co->recovery_calls;
    r->planned_ms = moe_wall_ms();
    r->accepted_ms = 0;
    char text[700];
    snprintf(text, sizeof text, "epoch %llu: every slot returns to step %lld (committed step "
             "%lld)", (unsigned long long)j->epoch, (long long)t, (long long)j->committed_step);
    plan_text(j, r, keep, text, sizeof text);
    /* The decision is stored before any worker hears of it. */
    if (record_plan(co, j, b, text) != MOE_OK) {
        char why[600];
        snprintf(why, sizeof why, "the coordinator cannot store its recovery plan: %.500s",
                 moe_errmsg());
        give_up(co, j, why);
        return;
    }
    if (worker_call_run_slots(co, j, 1, r->gen, run_slot_answer) != MOE_OK) {
        give_up(co, j, moe_errmsg());
        return;
    }
    log_plan_times(j, r);
}

/* Whether a plan may be made now: after a rebind's data-plane fault the fence's answers say
 * whether it was a partition (every slot held: held, not counted) or a loss (counted); a held
 * recovery waits its backoff (phase REC_WAITING: recovery_poll plans again). 0: not now (the
 * job may have failed). */
static int partition_gate(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    char why[1400];
    int held = 0;
    if (r->part.suspect) {
        r->part.suspect = 0;
        if (!partition_all_hold(j))
            return counted(co, j, r->part.suspect_slot, r->part.suspect_what);
        held = partition_hold(co, j, why, sizeof why);
    }
    if (held == 0) held = partition_wait(co, j, why, sizeof why);
    if (held < 0) give_up(co, j, why);
    if (held > 0) r->phase = REC_WAITING;
    return held == 0;
}

static void plan(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int n = job_n_slots(j);
    if (!partition_gate(co, j)) return;
    char *keep = calloc((size_t)n, 1), *need = calloc((size_t)n, 1);
    struct worker **kept = calloc((size_t)n, sizeof *kept);
    struct worker **spare = calloc((size_t)n, sizeof *spare);
    if (!keep || !need || !kept || !spare) {
        give_up(co, j, "out of memory planning the recovery");
        goto exit;
    }
    plan_keep(j, r, keep);
    for (int k = 0; k < n; k++) /* the ReportFaults a fence causes are no fault; a lost slot is */
        if (r->ans[k].state != ANS_HOLDS) r->faulted = 1;
    for (int k = 0; k < n; k++) {
        kept[k] = keep[k] ? workers_find(co, r->ans[k].worker_id) : NULL;
        if (!kept[k]) keep[k] = 0;
    }
    plan_move(j, r, keep, kept);
    if (r->repair) repair_verify(j, r, keep); // only copies whose hash is agreed count
    for (int k = 0; k < n; k++) need[k] = !keep[k];
    int64_t t = plan_step(j, r, keep);
    if (t >= 0 && r->repair) repair_planned(j, r, t);
    if (t < 0) {
        char why[900], held[1400];
        int cut = 0;
        if (r->repair) {
            repair_unrecoverable(j, r, why, sizeof why);
        } else {
            plan_unrecoverable(j, r, keep, why, sizeof why);
            cut = partition_cut_off(co, j, why, held, sizeof held); // the copy may come back
        }
        if (cut > 0) r->phase = REC_WAITING;
        if (cut <= 0) give_up(co, j, cut < 0 ? held : why);
        goto exit;
    }
    if (t < j->committed_step - (r->repair ? 1 : 0)) { // docs/recovery.md says never: a bug
        char why[300];
        snprintf(why, sizeof why, "the %d x %d mesh: recovery planned step %lld below the "
                 "committed step %lld (a coordinator bug)", j->pods, j->slots, (long long)t,
                 (long long)j->committed_step);
        give_up(co, j, why);
        goto exit;
    }
    for (int k = 0; k < n; k++)
        if (plan_source(j, r, keep, k, t) == -2) { // every source left was refused
            char why[2400];
            plan_no_source(j, r, k, t, why, sizeof why);
            give_up(co, j, why);
            goto exit;
        }
    int needy = 0;
    for (int k = 0; k < n; k++) needy += need[k];
    int placed = needy ? placement_replace(co, j, need, kept, r->exclude, r->n_exclude, spare) : 1;
    if (placed != 1) {
        int k = -1 - placed; // the first slot without a spare
        if (k < 0 || k >= n) k = 0;
        wait_for_spare(co, j, k);
        goto exit;
    }
    record(co, j, t, keep, spare);
exit:
    free(keep);
    free(need);
    free(kept);
    free(spare);
}

void recovery_poll(struct coordinator *co) {
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->rec && j->rec->phase == REC_WAITING && j->state == MOED__V1__JOB_STATE__JOB_RUNNING)
            plan(co, j);
    }
}

/* A tcp job's slot that plays on a worker's second listener (a recovery that found no spare),
 * when an idle worker could take it now (*spare); -1: none to move. */
static int doubled_slot(struct coordinator *co, const struct job *j, struct worker **spare) {
    if (!j->move_to_spare || strcmp(j->backend, "tcp") != 0 || j->n_running != job_n_slots(j) ||
        j->step <= j->restore_step || moe_wall_ms() < j->next_move_ms)
        return -1; // not one step trained since the last re-form, or a move failed lately
    int doubled = -1;
    for (int k = 0; k < job_n_slots(j) && doubled < 0; k++) {
        const struct worker *w = workers_find(co, j->bindings[k].worker_id);
        if (w && w->extra_data_address[0] &&
            !strcmp(j->bindings[k].data_address, w->extra_data_address))
            doubled = k;
    }
    *spare = NULL;
    for (int i = 0; doubled >= 0 && i < co->n_workers && !*spare; i++)
        if (worker_schedulable(co->workers[i]) && co->workers[i]->confirmed)
            *spare = co->workers[i];
    return *spare ? doubled : -1;
}

void recovery_rebalance(struct coordinator *co) {
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        struct worker *spare;
        if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable || j->rec) continue;
        /* Not while a repair waits for its replay's hashes of the step that disagreed: a move's
         * new epoch would drop the old epoch's reports still on their way, and the wrong copy
         * would never be named. Once the committed step is past that step they have come. */
        if (j->repair && j->repair->back_to >= 0 && j->committed_step <= j->repair->step) continue;
        int k = doubled_slot(co, j, &spare);
        if (k < 0) continue;
        char what[200];
        snprintf(what, sizeof what, "%s plays it on its second listener, beside another slot, "
                 "and %s is idle", j->bindings[k].worker_id, spare->id);
        begin(co, j, k, what, "rebalance", k, 0);
    }
}

void recovery_resume(struct coordinator *co) {
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recovering || j->rec) continue;
        if (!j->recoverable) { // a spec that changed meaning between versions: nothing to resume
            j->recovering = 0;
            continue;
        }
        begin(co, j, -1, "the coordinator restarted during a recovery: fencing the epoch again",
              "recovery_resumed", -1, 0);
    }
}

/* ---- rebind and restore ---- */

static void run_slot_answer(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    (void)msg;
    struct assign_ctx *a = arg;
    struct coordinator *co = a->co;
    struct job *j = co->stopping ? NULL : jobs_find(co, a->job_id);
    struct worker *w = j ? workers_find(co, a->worker_id) : NULL;
    int bound = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->epoch == a->epoch &&
                !strcmp(j->bindings[a->slot].worker_id, a->worker_id);
    int current = bound && j->rec && j->rec->gen == a->gen;
    char sl[32];
    if (res->code == GRPC_STATUS_OK) {
        if (bound && !j->bindings[a->slot].running) {
            /* even after the recovery: it runs the epoch (recovery_worker_state reads it) */
            j->bindings[a->slot].running = 1;
            if (++j->n_running == job_n_slots(j) && current) {
                j->rec->accepted_ms = moe_wall_ms();
                if (j->rec->phase == REC_REBINDING) j->rec->phase = REC_RESTORING;
                LOG_INFO("%s: every slot accepted epoch %llu in %lld ms: restoring", j->id,
                         (unsigned long long)j->epoch,
                         (long long)(j->rec->accepted_ms - j->rec->planned_ms));
            }
        } else if (j && w && job_is_final(j)) {
            worker_call_stop(co, j, w, a->epoch); // it took a binding that is over already
        }
        free(a);
        return;
    }
    LOG_WARN("RunSlot(restore) %s slot %s epoch %llu on %s: %s: %s", a->job_id,
             j ? job_slot_text(j, a->slot, sl, sizeof sl) : "?", (unsigned long long)a->epoch,
             a->worker_id, rpc_code_name(res->code), res->details);
    if (current) {
        /* a worker that refused (busy, unreachable, or unable to play it) is no spare for this
         * recovery; whether it is alive the next fence says */
        exclude_worker(j->rec, a->worker_id);
        char what[700];
        snprintf(what, sizeof what, "%s refused RunSlot of epoch %llu: %s: %.400s", a->worker_id,
                 (unsigned long long)a->epoch, rpc_code_name(res->code), res->details);
        restart(co, j, a->slot, what, 0);
    }
    free(a);
}

/* Every slot is back at T: event "recovered" with the time split, timed from r->since_ms. */
static void recovered(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int64_t now = moe_wall_ms();
    int64_t accepted = r->accepted_ms ? r->accepted_ms : now;
    double total_s = (double)(now - r->since_ms) / 1000.0;
    char fault[96] = "";
    if (r->first_fault_ms)
        snprintf(fault, sizeof fault, "; the earliest ReportFault at %+lld ms",
                 (long long)(r->first_fault_ms - r->since_ms));
    char text[1400];
    int move = only_move(r);
    if (move)
        snprintf(text, sizeof text,
                 "epoch %llu: every slot is back at step %lld and trains on (slot (%d, %d) "
                 "moved from %s onto %s); fencing %lld ms, rebinding %lld ms, state transfer "
                 "%.3f s (connect %.3f s), total %.3f s; %llu bytes of state moved",
                 (unsigned long long)j->epoch, (long long)j->restore_step, r->move / j->slots,
                 r->move % j->slots, r->ans ? r->ans[r->move].worker_id : "?",
                 j->bindings[r->move].worker_id, (long long)(r->fenced_ms - r->fence_ms),
                 (long long)(accepted - r->planned_ms), r->max_transfer_s, r->max_connect_s,
                 total_s, (unsigned long long)r->bytes);
    else
        snprintf(text, sizeof text,
                 "epoch %llu: every slot is back at step %lld and trains on (recovery %d of the "
                 "job%s); detection %lld ms (since %s; first signal at %+lld ms: %.300s%s), "
                 "fencing %lld ms, %s %lld ms, rebinding %lld ms, state "
                 "transfer %.3f s (connect %.3f s), total %.3f s; %llu bytes of state moved",
                 (unsigned long long)j->epoch, (long long)j->restore_step, j->recoveries + 1,
                 r->rounds ? ", after restarts" : "", (long long)(r->first_fence_ms - r->since_ms),
                 r->since, (long long)(r->signal_ms - r->since_ms), r->first_signal, fault,
                 (long long)(r->fenced_ms - r->fence_ms),
                 r->part.since_ms ? "waiting out the partition" : "waiting for a spare",
                 (long long)(r->planned_ms - r->fenced_ms),
                 (long long)(accepted - r->planned_ms), r->max_transfer_s, r->max_connect_s,
                 total_s, (unsigned long long)r->bytes);
    if (j->restore_step > j->committed_step) j->committed_step = j->restore_step;
    if (move) {
        j->moves++;
    } else {
        j->recoveries++;
        histogram_observe(&j->recovery_seconds, total_s);
    }
    /* a move that did not happen as one (a fault, a refusal) is not tried again at once: a
     * worker that is idle but cannot take the slot must not cost a fence every pass */
    if (r->asked_move && !move) j->next_move_ms = now + MOVE_RETRY_MS;
    partition_healed(co, j);
    job_drop_recovery(j);
    job_event(co, j, 1, move ? "moved" : "recovered", "%s", text);
}

void recovery_restored(struct coordinator *co, struct job *j, int k,
                       const Moed__V1__RestoredReport *rep) {
    struct recovery *r = j->rec;
    char sl[32];
    if (!r || (r->phase != REC_REBINDING && r->phase != REC_RESTORING) || !r->restored) {
        LOG_INFO("%s: ReportRestored of slot %s from %s outside a restore: ignored", j->id,
                 job_slot_text(j, k, sl, sizeof sl), rep->worker_id);
        return;
    }
    if (r->restored[k]) return;
    r->restored[k] = 1;
    r->n_restored++;
    if (rep->transfer_seconds > r->max_transfer_s) r->max_transfer_s = rep->transfer_seconds;
    if (rep->connect_seconds > r->max_connect_s) r->max_connect_s = rep->connect_seconds;
    r->bytes += rep->bytes_received;
    if (rep->step != j->restore_step)
        LOG_WARN("%s: slot %s on %s restored step %lld, the plan said %lld", j->id,
                 job_slot_text(j, k, sl, sizeof sl), rep->worker_id, (long long)rep->step,
                 (long long)j->restore_step);
    LOG_INFO("%s: slot %s on %s restored at step %lld (connect %.3f s, transfer %.3f s, "
             "%llu bytes in, %llu out); %d of %d", j->id, job_slot_text(j, k, sl, sizeof sl),
             rep->worker_id, (long long)rep->step, rep->connect_seconds, rep->transfer_seconds,
             (unsigned long long)rep->bytes_received, (unsigned long long)rep->bytes_sent,
             r->n_restored, job_n_slots(j));
    if (r->n_restored == job_n_slots(j)) recovered(co, j);
}

