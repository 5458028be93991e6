/*
 * recovery.c — how a recoverable mesh survives the loss of slots (docs/recovery.md, "Recovery,
 * as the coordinator drives it"), the committed step, and the replica hash check.
 *
 * Owns: a job's recovery in progress (struct recovery) from the first fault signal to the last
 * ReportRestored:
 *   signal   ReportFault of the current epoch, a bound worker the monitor found dead, a
 *            RunSlot refused during a recovery, a bound worker that holds a frozen state (or
 *            missed its new epoch) after a coordinator restart, a slot's error end: event
 *            "failure"; a signal during a recovery's rebinding or restoring starts it again
 *   fence    FenceSlot (1 s, failing fast) to every worker bound in the epoch; an answer lists
 *            the state copies the worker holds, no answer makes the worker DEAD and its slot lost
 *   plan     T = the largest step >= committed_step at which every slot index has a copy on a
 *            worker that stays; a source for every slot that does not hold its own state at T
 *            (a survivor of the same slot index in another pod first, else a buddy); a spare for
 *            every lost slot (tcp: any idle worker; mpi: a whole idle MPI job per lost pod), or
 *            a wait of up to mesh.spare_wait_s for one (re-planned on every schedule pass)
 *   record   epoch + 1, the binding, T, the sources, committed_step: one synced batch with the
 *            event "recovering", before any RunSlot(restore) goes out
 *   restore  RunSlot answers (a refusal restarts the recovery without that worker) and
 *            ReportRestored; event "recovered" with the time split when every slot is back
 * committed_step: the minimum over the slots of the current epoch of their latest
 * replicated_step; it never decreases, and a recovery raises it to T once every slot is back
 * at T (not when the plan is stored: T may have had a single copy until then).
 * Replica hash check: the latest state hash of each slot; slots of the same index in different
 * pods must agree at the same step. The first agreement is the event "replica_check", further
 * ones only count (job->replica_matches, logged at debug level); every disagreement is the
 * event "replica_mismatch".
 * With no spare for a lost slot (tcp), a worker that stays plays it too, on its second data
 * listener (placement.c: double_up), if one qualifies; otherwise the slot waits for a spare.
 * Move: once a worker is idle, a doubled slot is moved onto it by the same fence, plan, record
 * and restore (recovery_rebalance; events "rebalance", "moving", "moved"; not a recovery unless
 * a fault joins it). Its old worker stays for its other slot and stops the moved one itself.
 * Never: touches tensors or guesses what a worker holds (its FenceResponse says); recovers a job mesh_recoverable() refuses (failure.c fails it as before); or
 * plans below committed_step (that would be a bug: the job fails loudly instead).
 */
#include "coordinator.h"

#include "../common/log.h"
#include "../proto/methods.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FENCE_DEADLINE_S 1.0   // a killed worker is refused at once, a stopped one times out
#define REC_MAX_ROUNDS 8       // fence rounds of one recovery before the job fails
#define REC_MAX_EXCLUDED 16    // workers a recovery will not choose again as spares
#define MOVE_RETRY_MS 10000    // after a move that became a recovery, the next try waits

enum rec_phase { REC_FENCING, REC_WAITING, REC_REBINDING, REC_RESTORING };
enum answer { ANS_PENDING, ANS_HOLDS, ANS_EMPTY, ANS_LOST };

struct state_copy {
    int slot;     // slot index s
    int64_t step;
};

/* What the worker of one slot of the fenced epoch said. */
struct fence_answer {
    char worker_id[24];
    enum answer state;
    int64_t step;                // its live step (ANS_HOLDS)
    struct state_copy *copies;
    int n_copies;
    char why[200];               // ANS_LOST / ANS_EMPTY: what was seen
};

struct recovery {
    enum rec_phase phase;
    int rounds;                  // fence rounds after the first (restarts)
    uint64_t gen;                // the round of calls in flight; older answers are dropped
    int sending;                 // fence calls are being sent: answers wait for the loop's end
    int pending;                 // fence answers still to come
    struct fence_answer *ans;    // (pods * slots) the fenced epoch's slots
    int64_t signal_ms;           // the first fault signal
    int64_t first_fault_ms;      // the earliest ReportFault (0: none)
    int64_t first_fence_ms;      // the first fence round started
    int64_t fence_ms, fenced_ms; // the last fence round: started, every answer in
    int64_t planned_ms;          // the plan was stored
    int64_t accepted_ms;         // every RunSlot(restore) was accepted
    int64_t wait_since_ms;       // no spare since then (0: not waiting)
    int move;                    // a move: the doubled slot that goes to a spare (-1: none)
    int asked_move;              // this began as a move (recovery_rebalance)
    int faulted;                 // the move met a fault (a slot lost, a restart): a recovery too
    int waiting_announced;
    char first_signal[300];
    char exclude[REC_MAX_EXCLUDED][24];
    int n_exclude;
    /* restoring */
    char *restored;              // (pods * slots) ReportRestored seen
    int n_restored;
    double max_transfer_s, max_connect_s;
    uint64_t bytes;
};

struct replica_hash {
    int have;
    int64_t step;
    uint8_t sha[32];
};

static void fence_round(struct coordinator *co, struct job *j);
static void plan(struct coordinator *co, struct job *j);

/* ---- small helpers ---- */

static int n_slots(const struct job *j) { return j->pods * j->slots; }

static const char *slot_text(const struct job *j, int k, char *buf, size_t cap) {
    snprintf(buf, cap, "(%d, %d)", k / j->slots, k % j->slots);
    return buf;
}

/* "slot (1, 0) of the 2 x 2 mesh, epoch 3" */
static const char *slot_where(const struct job *j, int k, char *buf, size_t cap) {
    if (k < 0)
        snprintf(buf, cap, "the %d x %d mesh, epoch %llu", j->pods, j->slots,
                 (unsigned long long)j->epoch);
    else
        snprintf(buf, cap, "slot (%d, %d) of the %d x %d mesh, epoch %llu", k / j->slots,
                 k % j->slots, j->pods, j->slots, (unsigned long long)j->epoch);
    return buf;
}

static void hex_short(const uint8_t *sha, char out[17]) {
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", sha[i]);
}

static void answers_free(struct recovery *r, int n) {
    if (!r->ans) return;
    for (int k = 0; k < n; k++) free(r->ans[k].copies);
    free(r->ans);
    r->ans = NULL;
}

static void rec_free(struct recovery *r, int n) {
    if (!r) return;
    answers_free(r, n);
    free(r->restored);
    free(r);
}

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

static int has_copy(const struct fence_answer *a, int s, int64_t t) {
    for (int i = 0; i < a->n_copies; i++)
        if (a->copies[i].slot == s && a->copies[i].step == t) return 1;
    return 0;
}

/* Frees a worker that no longer plays a slot of j (fenced out, or its pod moved): told to
 * stop if it may still run it, idle again once a heartbeat shows it idle. */
static void release_worker(struct coordinator *co, struct job *j, struct worker *w,
                           struct store_batch *b) {
    if (!w || strcmp(w->job_id, j->id) != 0) return;
    if (w->state != MOED__V1__WORKER_STATE__WORKER_DEAD) coordinator_stop_worker(co, j, w);
    w->job_id[0] = 0;
    if (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY) w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
    w->awaiting_idle = 1;
    if (b)
        coordinator_batch_worker(b, w);
    else
        coordinator_save_worker(co, w);
}

/* The job cannot be recovered: it fails with `why`, the coordinator goes on. */
static void give_up(struct coordinator *co, struct job *j, const char *why) {
    LOG_WARN("%s: recovery impossible: %s", j->id, why);
    coordinator_fail_slot(co, j, -1, "failed", "%s", why); // ends the recovery (finish_job)
}

/* ---- public small pieces ---- */

void recovery_configure(struct job *j, const struct mesh_spec *m) {
    j->recoverable = mesh_recoverable(m);
    j->replicas = m->replicas;
    j->buddies = mesh_buddies(m);
    j->spare_wait_s = m->spare_wait_s;
    j->move_to_spare = m->move_to_spare;
}

uint64_t recovery_round(const struct job *j) { return j->rec ? j->rec->gen : 0; }

void recovery_end(struct job *j) {
    rec_free(j->rec, n_slots(j));
    j->rec = NULL;
    j->recovering = 0;
    j->recovery_signal_ms = 0;
}

/* A worker the recovery in progress has already given up on: it answered its fence with
 * nothing, or not at all, and the epoch has not moved on yet. */
static int dropped(const struct job *j, const struct worker *w, int k) {
    const struct recovery *r = j->rec;
    if (!r || !r->ans || k < 0 || (r->phase != REC_FENCING && r->phase != REC_WAITING)) return 0;
    const struct fence_answer *a = &r->ans[k];
    return !strcmp(a->worker_id, w->id) && (a->state == ANS_LOST || a->state == ANS_EMPTY);
}

int recovery_dropped(const struct job *j, const struct worker *w) {
    return dropped(j, w, job_slot_of(j, w));
}

/* ---- signals ---- */

/* The first signal of a recovery: event "failure", then the fence. */
static void begin(struct coordinator *co, struct job *j, int k, const char *what,
                  const char *kind, int move) {
    struct recovery *r = calloc(1, sizeof *r);
    if (!r) {
        give_up(co, j, "out of memory starting a recovery");
        return;
    }
    int64_t now = now_ms();
    r->move = move;
    r->asked_move = move >= 0;
    j->rec = r;
    j->recovering = 1;
    if (!j->recovery_signal_ms) j->recovery_signal_ms = now; // kept across our restart
    r->signal_ms = j->recovery_signal_ms;
    snprintf(r->first_signal, sizeof r->first_signal, "%s", what);
    char where[96];
    if (move >= 0)
        coordinator_event(co, j, 1, kind, "%s: %s; moving it there from the replicas "
                          "(committed step %lld)", slot_where(j, k, where, sizeof where), what,
                          (long long)j->committed_step);
    else
        coordinator_event(co, j, 1, kind, "%s: %s; recovering from the replicas (mesh.replicas "
                          "= %d, committed step %lld)", slot_where(j, k, where, sizeof where),
                          what, j->replicas, (long long)j->committed_step);
    fence_round(co, j);
}

/* A new fault while the recovery rebinds or restores: the procedure starts again from the
 * fence, with the newest epoch. */
static void restart(struct coordinator *co, struct job *j, int k, const char *what) {
    struct recovery *r = j->rec;
    char where[96];
    r->faulted = 1; // a move that meets a fault is a recovery (events, JobInfo.recoveries)
    if (++r->rounds >= REC_MAX_ROUNDS) {
        char why[900];
        snprintf(why, sizeof why, "%s: the recovery gave up after %d attempts; the last fault: %s",
                 slot_where(j, k, where, sizeof where), r->rounds, what);
        give_up(co, j, why);
        return;
    }
    coordinator_event(co, j, 1, "failure", "%s: %s; the recovery starts again (attempt %d)",
                      slot_where(j, k, where, sizeof where), what, r->rounds + 1);
    fence_round(co, j);
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

void recovery_signal(struct coordinator *co, struct job *j, int k, enum fault_kind kind,
                     const char *fmt, ...) {
    char what[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable) return;
    coordinator_name_ranks(j, what, sizeof what);
    struct recovery *r = j->rec;
    if (!r) {
        begin(co, j, k, what, "failure", -1);
        return;
    }
    if (r->phase == REC_FENCING || r->phase == REC_WAITING)
        note(co, j, k, kind, what);
    else
        restart(co, j, k, what);
}

void recovery_fault_report(struct coordinator *co, struct job *j, int k,
                           const Moed__V1__FaultReport *rep) {
    int64_t now = now_ms();
    recovery_signal(co, j, k, FAULT_REPORTED, "%s reported a data-plane fault at step %lld: %s",
                    rep->worker_id, (long long)rep->step,
                    rep->error[0] ? rep->error : "(no error given)");
    if (j->rec && !j->rec->first_fault_ms) j->rec->first_fault_ms = now;
}

int recovery_worker_state(struct coordinator *co, struct job *j, int k, struct worker *w,
                          uint64_t epoch, int holding, const char *how) {
    if (!epoch) return 1; // a worker that does not say its epoch: nothing to compare
    if (epoch > j->epoch) return 0;
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
    r->fenced_ms = now_ms();
    int lost = 0, empty = 0, n = n_slots(j);
    for (int k = 0; k < n; k++) {
        lost += r->ans[k].state == ANS_LOST;
        empty += r->ans[k].state == ANS_EMPTY;
    }
    LOG_INFO("%s: epoch %llu fenced in %lld ms: %d slot%s lost, %d without state, %d holding",
             j->id, (unsigned long long)j->epoch, (long long)(r->fenced_ms - r->fence_ms), lost,
             lost == 1 ? "" : "s", empty, n - lost - empty);
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
    a->step = resp->step;
    a->copies = resp->n_copies ? calloc(resp->n_copies, sizeof *a->copies) : NULL;
    a->n_copies = 0;
    for (size_t i = 0; a->copies && i < resp->n_copies; i++) {
        if (resp->copies[i]->slot < 0 || resp->copies[i]->slot >= j->slots) continue;
        a->copies[a->n_copies].slot = resp->copies[i]->slot;
        a->copies[a->n_copies].step = resp->copies[i]->step;
        a->n_copies++;
    }
    if (w && w->state == MOED__V1__WORKER_STATE__WORKER_DEAD) {
        /* declared dead a moment ago, but it answered: it still holds its slot */
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        coordinator_save_worker(co, w);
    }
}

static void fence_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct fence_ctx *f = arg;
    struct coordinator *co = f->co;
    struct job *j = co->stopping ? NULL : coordinator_find_job(co, f->job_id);
    struct recovery *r = j ? j->rec : NULL;
    if (!r || r->gen != f->gen || r->phase != REC_FENCING || !r->ans) {
        free(f);
        return; // an older round, or the job ended
    }
    struct worker *w = coordinator_find_worker(co, f->worker_id);
    struct fence_answer *a = &r->ans[f->slot];
    char sl[32];
    if (res->code == GRPC_STATUS_OK) {
        const Moed__V1__FenceResponse *resp = (const Moed__V1__FenceResponse *)msg;
        if (w) w->last_heartbeat_ms = now_ms(); // an answer is as good as a heartbeat
        if (resp->holds && answer_set(r, f->slot, ANS_HOLDS, NULL)) {
            fence_holds(co, j, a, w, resp);
            LOG_INFO("%s: %s fenced slot %s at step %lld, %d cop%s", j->id, f->worker_id,
                     slot_text(j, f->slot, sl, sizeof sl), (long long)resp->step, a->n_copies,
                     a->n_copies == 1 ? "y" : "ies");
        } else if (!resp->holds &&
                   answer_set(r, f->slot, ANS_EMPTY, "holds no state of the job (restarted?)")) {
            LOG_WARN("%s: %s holds no state of slot %s", j->id, f->worker_id,
                     slot_text(j, f->slot, sl, sizeof sl));
            release_worker(co, j, w, NULL); // alive and free: a spare like any other
        }
    } else {
        char why[64]; // for events; the log has gRPC's whole story
        snprintf(why, sizeof why, "did not answer its fence (%s)", rpc_code_name(res->code));
        if (answer_set(r, f->slot, ANS_LOST, why) && w) {
            LOG_WARN("%s: %s at %s did not answer its fence: %s: %s: lost", j->id, w->id,
                     w->address, rpc_code_name(res->code), res->details);
            if (w->state != MOED__V1__WORKER_STATE__WORKER_LEFT) coordinator_mark_dead(co, w);
        }
    }
    free(f);
    fence_answered(co, j);
}

static void fence_round(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int n = n_slots(j);
    answers_free(r, n);
    r->ans = calloc((size_t)n, sizeof *r->ans);
    if (!r->ans) {
        give_up(co, j, "out of memory fencing the epoch");
        return;
    }
    r->phase = REC_FENCING;
    r->gen = ++co->recovery_calls;
    r->fence_ms = now_ms();
    if (!r->first_fence_ms) r->first_fence_ms = r->fence_ms;
    r->pending = n;
    r->sending = 1;
    Moed__V1__FenceRequest req = MOED__V1__FENCE_REQUEST__INIT;
    req.job_id = j->id;
    req.epoch = j->epoch;
    for (int k = 0; k < n; k++) {
        struct fence_answer *a = &r->ans[k];
        snprintf(a->worker_id, sizeof a->worker_id, "%s", j->bindings[k].worker_id);
        struct worker *w = coordinator_find_worker(co, a->worker_id);
        if (!w || w->state == MOED__V1__WORKER_STATE__WORKER_DEAD ||
            w->state == MOED__V1__WORKER_STATE__WORKER_LEFT || !w->channel) {
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
        if (rpc_call_async(co->pump, w->channel, RPC_WORKER_FENCE_SLOT, &req.base,
                           &moed__v1__fence_response__descriptor, FENCE_DEADLINE_S, fence_reply,
                           f) != MOE_OK) {
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

/* ---- plan ---- */

/* Which slots keep their worker: those that answered holding state; with mpi a pod that lost
 * a slot moves whole (its MPI job is one failure domain). */
static void plan_keep(const struct job *j, const struct recovery *r, char *keep) {
    int S = j->slots, n = n_slots(j);
    for (int k = 0; k < n; k++) keep[k] = r->ans[k].state == ANS_HOLDS;
    if (strcmp(j->backend, "mpi") != 0) return;
    for (int p = 0; p < j->pods; p++) {
        int whole = 1;
        for (int s = 0; s < S; s++) whole &= keep[p * S + s];
        if (!whole)
            for (int s = 0; s < S; s++) keep[p * S + s] = 0;
    }
}

/* Whether every slot index has a copy at step t on a worker that stays. */
static int step_covered(const struct job *j, const struct recovery *r, const char *keep,
                        int64_t t) {
    for (int s = 0; s < j->slots; s++) {
        int have = 0;
        for (int k = 0; k < n_slots(j) && !have; k++) have = keep[k] && has_copy(&r->ans[k], s, t);
        if (!have) return 0;
    }
    return 1;
}

/* T: the largest covered step >= committed_step; 0 when nothing is committed yet (any worker
 * can make the step-0 state); -1 when there is none. */
static int64_t plan_step(const struct job *j, const struct recovery *r, const char *keep) {
    int64_t best = -1;
    for (int k = 0; k < n_slots(j); k++) {
        if (!keep[k]) continue;
        for (int i = 0; i < r->ans[k].n_copies; i++) {
            int64_t t = r->ans[k].copies[i].step;
            if (t >= j->committed_step && t > best && step_covered(j, r, keep, t)) best = t;
        }
    }
    if (best < 0 && j->committed_step == 0) best = 0;
    return best;
}

/* The rank of the new epoch that sends slot k its state at t, or -1: its own worker has it. */
static int plan_source(const struct job *j, const struct recovery *r, const char *keep, int k,
                       int64_t t) {
    int S = j->slots, s = k % S;
    if (t == 0 || (keep[k] && has_copy(&r->ans[k], s, t))) return -1;
    for (int p = 0; p < j->pods; p++) { // the same slot index in another pod: its own state
        int q = p * S + s;
        if (q != k && keep[q] && has_copy(&r->ans[q], s, t)) return q;
    }
    for (int q = 0; q < n_slots(j); q++) // a buddy's copy
        if (keep[q] && has_copy(&r->ans[q], s, t)) return q;
    return -2; // cannot happen when t is covered
}

/* Nothing at or above committed_step covers every slot index: the slot to name, and why. */
static void unrecoverable(struct coordinator *co, struct job *j, const char *keep) {
    struct recovery *r = j->rec;
    int S = j->slots, n = n_slots(j), bad = -1;
    for (int s = 0; s < S && bad < 0; s++) {
        int have = 0;
        for (int k = 0; k < n && !have; k++)
            for (int i = 0; keep[k] && i < r->ans[k].n_copies && !have; i++)
                have = r->ans[k].copies[i].slot == s &&
                       r->ans[k].copies[i].step >= j->committed_step;
        if (!have) bad = s;
    }
    char why[900], sl[32];
    if (bad < 0) {
        snprintf(why, sizeof why, "the %d x %d mesh, epoch %llu: no step >= the committed step "
                 "%lld at which every slot's state still has a copy; last committed step %lld",
                 j->pods, j->slots, (unsigned long long)j->epoch, (long long)j->committed_step,
                 (long long)j->committed_step);
        give_up(co, j, why);
        return;
    }
    /* the slot of that index to name: the first whose worker did not stay */
    int k0 = bad;
    for (int p = 0; p < j->pods; p++)
        if (!keep[p * S + bad]) {
            k0 = p * S + bad;
            break;
        }
    /* "w-2 and w-4 lost", or "w-2 lost and w-4 without state" when they differ */
    char who[400] = "";
    size_t o = 0;
    int named = 0, total = 0, same = 1;
    enum answer first = ANS_PENDING;
    for (int p = 0; p < j->pods; p++) {
        if (keep[p * S + bad]) continue;
        if (!total++) first = r->ans[p * S + bad].state;
        same &= r->ans[p * S + bad].state == first;
    }
    for (int p = 0; p < j->pods && o < sizeof who; p++) {
        const struct fence_answer *a = &r->ans[p * S + bad];
        if (keep[p * S + bad]) continue;
        named++;
        const char *how = a->state == ANS_LOST    ? "lost"
                          : a->state == ANS_EMPTY ? "without state"
                                                  : "dropped with its pod";
        o += (size_t)snprintf(who + o, sizeof who - o, "%s%s%s%s",
                              named == 1 ? "" : named == total ? " and " : ", ", a->worker_id,
                              same && named < total ? "" : " ", same && named < total ? "" : how);
    }
    snprintf(why, sizeof why, "slot %s of the %d x %d mesh: every copy of its state is gone "
             "(%s); last committed step %lld", slot_text(j, k0, sl, sizeof sl), j->pods,
             j->slots, who, (long long)j->committed_step);
    give_up(co, j, why);
}

/* No spare for slot k: wait up to mesh.spare_wait_s (re-planned by recovery_poll), then fail. */
static void wait_for_spare(struct coordinator *co, struct job *j, int k) {
    struct recovery *r = j->rec;
    int64_t now = now_ms();
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
                 "committed step %lld", slot_text(j, k, sl, sizeof sl), j->pods, j->slots, need,
                 waited, r->ans[k].worker_id, r->ans[k].why[0] ? r->ans[k].why : "was lost",
                 (long long)j->committed_step);
        give_up(co, j, why);
        return;
    }
    if (!r->waiting_announced) {
        r->waiting_announced = 1;
        coordinator_event(co, j, 0, "recovery_waiting", "slot %s needs a new worker (%s) and "
                          "none is free: waiting up to %.0f s for a spare",
                          slot_text(j, k, sl, sizeof sl), need, j->spare_wait_s);
    }
}

/* "slot (1, 0): w-4 lost -> w-6, state from rank 0 (w-1)" for each slot that moves or pulls. */
static void plan_text(const struct job *j, const struct recovery *r, const char *keep,
                      char *out, size_t cap) {
    size_t o = strlen(out);
    int moved = 0;
    for (int k = 0; k < n_slots(j) && o < cap; k++) {
        int from = j->restore_from[k];
        if (keep[k] && from < 0) continue;
        char sl[32], src[80] = "";
        if (from >= 0)
            snprintf(src, sizeof src, ", state from rank %d (%s)", from,
                     j->bindings[from].worker_id);
        if (keep[k])
            o += (size_t)snprintf(out + o, cap - o, "; slot %s on %s pulls its state%s",
                                  slot_text(j, k, sl, sizeof sl), j->bindings[k].worker_id, src);
        else if (k == r->move && r->ans[k].state == ANS_HOLDS)
            o += (size_t)snprintf(out + o, cap - o, "; slot %s: off %s's second listener -> %s%s",
                                  slot_text(j, k, sl, sizeof sl), r->ans[k].worker_id,
                                  j->bindings[k].worker_id, src);
        else
            o += (size_t)snprintf(out + o, cap - o, "; slot %s: %s %s -> %s%s%s",
                                  slot_text(j, k, sl, sizeof sl), r->ans[k].worker_id,
                                  r->ans[k].state == ANS_LOST    ? "lost"
                                  : r->ans[k].state == ANS_EMPTY ? "without state"
                                                                 : "dropped with its pod",
                                  j->bindings[k].worker_id,
                                  strcmp(r->ans[k].worker_id, j->bindings[k].worker_id)
                                      ? "" : " (back as a spare)", src);
        moved++;
    }
    if (!moved && o < cap) snprintf(out + o, cap - o, "; every slot keeps its worker and state");
}

static void run_slot_answer(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg);

/* Stores the new epoch (binding, T, sources, committed step) with the event "recovering",
 * then sends RunSlot(restore) to every slot. */
static void record(struct coordinator *co, struct job *j, int64_t t, const char *keep,
                   struct worker **spare) {
    struct recovery *r = j->rec;
    int n = n_slots(j), S = j->slots;
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
    for (int k = 0; k < n; k++) { // the workers that leave the job
        int stays = 0; /* a moved slot's worker keeps its other slot (and stops this one when
                        * that slot's RunSlot shows it no longer binds it) */
        for (int q = 0; q < n && !keep[k] && !stays; q++)
            stays = keep[q] && !strcmp(r->ans[q].worker_id, r->ans[k].worker_id);
        if (!keep[k] && !stays)
            release_worker(co, j, coordinator_find_worker(co, r->ans[k].worker_id), b);
    }
    j->epoch++;
    for (int k = 0; k < n; k++) {
        struct binding *bd = &j->bindings[k];
        struct worker *w = keep[k] ? coordinator_find_worker(co, bd->worker_id) : spare[k];
        char kept_addr[DATA_ADDR_MAX]; /* a kept slot keeps its listener (maybe a second one) */
        snprintf(kept_addr, sizeof kept_addr, "%s", bd->data_address);
        memset(bd, 0, sizeof *bd);
        bd->step = (long)t;
        if (!w) continue; // cannot happen: kept workers are known, spares were chosen
        snprintf(bd->worker_id, sizeof bd->worker_id, "%s", w->id);
        snprintf(bd->address, sizeof bd->address, "%s", w->address);
        /* a survivor given a lost slot too (no spare) plays it on its second listener */
        int second = 0;
        for (int q = 0; q < n && !keep[k] && !second; q++)
            second = keep[q] && !strcmp(r->ans[q].worker_id, w->id);
        snprintf(bd->data_address, sizeof bd->data_address, "%s",
                 keep[k] ? kept_addr : second ? w->extra_data_address : w->data_address);
        bd->mpi_rank = w->mpi_rank;
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        if (second) continue; // its record already says it plays this job
        w->slot = k % S;
        w->epoch = j->epoch;
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        w->awaiting_idle = 0;
        coordinator_batch_worker(b, w);
    }
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
    r->planned_ms = now_ms();
    r->accepted_ms = 0;
    char text[700];
    snprintf(text, sizeof text, "epoch %llu: every slot returns to step %lld (committed step "
             "%lld)", (unsigned long long)j->epoch, (long long)t, (long long)j->committed_step);
    plan_text(j, r, keep, text, sizeof text);
    /* The decision is stored before any worker hears of it. */
    if (coordinator_event_batch(co, j, b, 1, only_move(r) ? "moving" : "recovering", "%s",
                                text) != MOE_OK) {
        char why[600];
        snprintf(why, sizeof why, "the coordinator cannot store its recovery plan: %.500s",
                 moe_errmsg());
        give_up(co, j, why);
        return;
    }
    coordinator_send_run_slots(co, j, 1, r->gen, run_slot_answer);
}

/* A move takes the doubled slot off its worker, which keeps its other slot. Of the copies that
 * worker listed, only those of the kept slot stay (its own slot index and, with buddies, the
 * indexes it holds copies of); the others came from the moved slot (its own state, which
 * double_up made sure the kept slot held no copy of, and its buddy copies) and leave with it,
 * so no plan may count or source from them. */
static void plan_move(const struct job *j, struct recovery *r, char *keep,
                      struct worker **kept) {
    int k2 = r->move, n = n_slots(j), S = j->slots, k1 = -1;
    if (k2 < 0) return;
    for (int q = 0; q < n && k1 < 0; q++)
        if (q != k2 && keep[q] && !strcmp(r->ans[q].worker_id, r->ans[k2].worker_id)) k1 = q;
    if (!keep[k2] || k1 < 0) { // lost anyway, or its worker lost the other: a plain recovery
        r->move = -1;
        return;
    }
    keep[k2] = 0;
    kept[k2] = NULL;
    int s1 = k1 % S;
    for (int q = 0; q < n; q++) {
        struct fence_answer *a = &r->ans[q];
        if (strcmp(a->worker_id, r->ans[k2].worker_id) != 0) continue;
        int m = 0;
        for (int i = 0; i < a->n_copies; i++) {
            int back = (s1 - a->copies[i].slot + S) % S; /* 0: its own; 1..buddies: a buddy's */
            if (back <= j->buddies) a->copies[m++] = a->copies[i];
        }
        a->n_copies = m;
    }
}

static void plan(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int n = n_slots(j);
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
        kept[k] = keep[k] ? coordinator_find_worker(co, r->ans[k].worker_id) : NULL;
        if (!kept[k]) keep[k] = 0;
    }
    plan_move(j, r, keep, kept);
    for (int k = 0; k < n; k++) need[k] = !keep[k];
    int64_t t = plan_step(j, r, keep);
    if (t < 0) {
        unrecoverable(co, j, keep);
        goto exit;
    }
    if (t < j->committed_step) { // the argument in docs/recovery.md says never: a bug
        char why[300];
        snprintf(why, sizeof why, "the %d x %d mesh: recovery planned step %lld below the "
                 "committed step %lld (a coordinator bug)", j->pods, j->slots, (long long)t,
                 (long long)j->committed_step);
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
    if (!j->move_to_spare || strcmp(j->backend, "tcp") != 0 || j->n_running != n_slots(j) ||
        j->step <= j->restore_step || now_ms() < j->next_move_ms)
        return -1; // not one step trained since the last re-form, or a move failed lately
    int doubled = -1;
    for (int k = 0; k < n_slots(j) && doubled < 0; k++) {
        const struct worker *w = coordinator_find_worker(co, j->bindings[k].worker_id);
        if (w && w->extra_data_address[0] &&
            !strcmp(j->bindings[k].data_address, w->extra_data_address))
            doubled = k;
    }
    *spare = NULL;
    for (int i = 0; doubled >= 0 && i < co->n_workers && !*spare; i++)
        if (worker_schedulable(co->workers[i]) && co->workers[i]->confirmed) *spare = co->workers[i];
    return *spare ? doubled : -1;
}

void recovery_rebalance(struct coordinator *co) {
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        struct worker *spare;
        if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable || j->rec) continue;
        int k = doubled_slot(co, j, &spare);
        if (k < 0) continue;
        char what[200];
        snprintf(what, sizeof what, "%s plays it on its second listener, beside another slot, "
                 "and %s is idle", j->bindings[k].worker_id, spare->id);
        begin(co, j, k, what, "rebalance", k);
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
              "recovery_resumed", -1);
    }
}

/* ---- rebind and restore ---- */

static void run_slot_answer(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    (void)msg;
    struct assign_ctx *a = arg;
    struct coordinator *co = a->co;
    struct job *j = co->stopping ? NULL : coordinator_find_job(co, a->job_id);
    struct worker *w = j ? coordinator_find_worker(co, a->worker_id) : NULL;
    int bound = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && j->epoch == a->epoch &&
                !strcmp(j->bindings[a->slot].worker_id, a->worker_id);
    int current = bound && j->rec && j->rec->gen == a->gen;
    char sl[32];
    if (res->code == GRPC_STATUS_OK) {
        if (bound && !j->bindings[a->slot].running) {
            /* even after the recovery: it runs the epoch (recovery_worker_state reads it) */
            j->bindings[a->slot].running = 1;
            if (++j->n_running == n_slots(j) && current) {
                j->rec->accepted_ms = now_ms();
                if (j->rec->phase == REC_REBINDING) j->rec->phase = REC_RESTORING;
                LOG_INFO("%s: every slot accepted epoch %llu in %lld ms: restoring", j->id,
                         (unsigned long long)j->epoch,
                         (long long)(j->rec->accepted_ms - j->rec->planned_ms));
            }
        } else if (j && w && job_is_final(j)) {
            coordinator_stop_worker(co, j, w); // it took a binding that is over already
        }
        free(a);
        return;
    }
    LOG_WARN("RunSlot(restore) %s slot %s epoch %llu on %s: %s: %s", a->job_id,
             j ? slot_text(j, a->slot, sl, sizeof sl) : "?", (unsigned long long)a->epoch,
             a->worker_id, rpc_code_name(res->code), res->details);
    if (current) {
        /* a worker that refused (busy, unreachable, or unable to play it) is no spare for this
         * recovery; whether it is alive the next fence says */
        exclude_worker(j->rec, a->worker_id);
        char what[700];
        snprintf(what, sizeof what, "%s refused RunSlot of epoch %llu: %s: %.400s", a->worker_id,
                 (unsigned long long)a->epoch, rpc_code_name(res->code), res->details);
        restart(co, j, a->slot, what);
    }
    free(a);
}

/* Every slot is back at T: event "recovered" with the time split. */
static void recovered(struct coordinator *co, struct job *j) {
    struct recovery *r = j->rec;
    int64_t now = now_ms();
    int64_t accepted = r->accepted_ms ? r->accepted_ms : now;
    char fault[96] = "";
    if (r->first_fault_ms)
        snprintf(fault, sizeof fault, "; the earliest ReportFault at %+lld ms",
                 (long long)(r->first_fault_ms - r->signal_ms));
    char text[1200];
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
                 (double)(now - r->signal_ms) / 1000.0, (unsigned long long)r->bytes);
    else
        snprintf(text, sizeof text,
                 "epoch %llu: every slot is back at step %lld and trains on (recovery %d of the "
                 "job%s); detection %lld ms (first signal: %.300s%s), fencing %lld ms, waiting "
                 "for a spare %lld ms, rebinding %lld ms, state transfer %.3f s (connect %.3f "
                 "s), total %.3f s; %llu bytes of state moved",
                 (unsigned long long)j->epoch, (long long)j->restore_step, j->recoveries + 1,
                 r->rounds ? ", after restarts" : "", (long long)(r->first_fence_ms - r->signal_ms),
                 r->first_signal, fault, (long long)(r->fenced_ms - r->fence_ms),
                 (long long)(r->planned_ms - r->fenced_ms), (long long)(accepted - r->planned_ms),
                 r->max_transfer_s, r->max_connect_s, (double)(now - r->signal_ms) / 1000.0,
                 (unsigned long long)r->bytes);
    if (j->restore_step > j->committed_step) j->committed_step = j->restore_step;
    if (move)
        j->moves++;
    else
        j->recoveries++;
    /* a move that did not happen as one (a fault, a refusal) is not tried again at once: a
     * worker that is idle but cannot take the slot must not cost a fence every pass */
    if (r->asked_move && !move) j->next_move_ms = now + MOVE_RETRY_MS;
    recovery_end(j);
    coordinator_event(co, j, 1, move ? "moved" : "recovered", "%s", text);
}

void recovery_restored(struct coordinator *co, struct job *j, int k,
                       const Moed__V1__RestoredReport *rep) {
    struct recovery *r = j->rec;
    char sl[32];
    if (!r || (r->phase != REC_REBINDING && r->phase != REC_RESTORING) || !r->restored) {
        LOG_INFO("%s: ReportRestored of slot %s from %s outside a restore: ignored", j->id,
                 slot_text(j, k, sl, sizeof sl), rep->worker_id);
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
                 slot_text(j, k, sl, sizeof sl), rep->worker_id, (long long)rep->step,
                 (long long)j->restore_step);
    LOG_INFO("%s: slot %s on %s restored at step %lld (connect %.3f s, transfer %.3f s, "
             "%llu bytes in, %llu out); %d of %d", j->id, slot_text(j, k, sl, sizeof sl),
             rep->worker_id, (long long)rep->step, rep->connect_seconds, rep->transfer_seconds,
             (unsigned long long)rep->bytes_received, (unsigned long long)rep->bytes_sent,
             r->n_restored, n_slots(j));
    if (r->n_restored == n_slots(j)) recovered(co, j);
}

/* ---- committed step and replica hashes ---- */

static void update_committed(struct job *j) {
    long c = LONG_MAX;
    for (int k = 0; k < n_slots(j); k++)
        if (j->bindings[k].replicated_step < c) c = j->bindings[k].replicated_step;
    if (c != LONG_MAX && c > j->committed_step) j->committed_step = c;
}

static void hash_check(struct coordinator *co, struct job *j, int k, int64_t t,
                       const uint8_t *sha) {
    int n = n_slots(j), S = j->slots;
    if (!j->hashes && !(j->hashes = calloc((size_t)n, sizeof *j->hashes))) return;
    struct replica_hash *h = &j->hashes[k];
    h->have = 1;
    h->step = t;
    memcpy(h->sha, sha, 32);
    for (int p = 0; p < j->pods; p++) {
        int q = p * S + k % S;
        const struct replica_hash *o = &j->hashes[q];
        if (q == k || !o->have || o->step != t) continue;
        char mine[17], theirs[17];
        hex_short(sha, mine);
        hex_short(o->sha, theirs);
        if (!memcmp(o->sha, sha, 32)) {
            j->replica_matches++;
            LOG_DEBUG("%s: step %lld, slot index %d: pods %d and %d agree (%s); %llu agreements",
                      j->id, (long long)t, k % S, p, k / S, mine,
                      (unsigned long long)j->replica_matches);
            if (!j->replica_verified) {
                j->replica_verified = 1;
                coordinator_event(co, j, 0, "replica_check", "step %lld: the state of slot index "
                                  "%d is the same in pod %d (%s) and pod %d (%s), sha256 %s...; "
                                  "further agreements are only counted, a disagreement is the "
                                  "event replica_mismatch", (long long)t, k % S, q / S,
                                  j->bindings[q].worker_id, k / S, j->bindings[k].worker_id,
                                  mine);
            }
        } else {
            coordinator_event(co, j, 1, "replica_mismatch", "step %lld, slot index %d: slot "
                              "(%d, %d) on %s has state sha256 %s... but slot (%d, %d) on %s has "
                              "%s...: the data-parallel replicas differ (silent corruption?)",
                              (long long)t, k % S, q / S, q % S, j->bindings[q].worker_id,
                              theirs, k / S, k % S, j->bindings[k].worker_id, mine);
        }
    }
}

void recovery_step_reported(struct coordinator *co, struct job *j, int k,
                            const Moed__V1__StepMetrics *m) {
    struct binding *bd = &j->bindings[k];
    if (m->replicated_step > bd->replicated_step) {
        bd->replicated_step = (long)m->replicated_step;
        update_committed(j);
    }
    if (m->state_sha256.len == 32 && m->state_hash_step >= 0)
        hash_check(co, j, k, m->state_hash_step, m->state_sha256.data);
}
