/*
 * repair.c — a replica mismatch repaired by returning to an agreed state and replaying (see
 * repair.h). It decides which copies count and what the events say; recovery.c drives,
 * and this file never calls it.
 */
#include "repair.h"

#include "../../common/log.h"
#include "../state/events.h"
#include "../state/workers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex_short(const uint8_t *sha, char out[17]) {
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", sha[i]);
}

/* "pod 0 (w-1), pod 1 (w-3)": the workers of slot index s. */
static void replicas_text(const struct job *j, int s, char *out, size_t cap) {
    size_t o = 0;
    out[0] = 0;
    for (int p = 0; p < j->pods && o < cap; p++)
        o += (size_t)snprintf(out + o, cap - o, "%spod %d (%s)", p ? ", " : "", p,
                              j->bindings[p * j->slots + s].worker_id);
}

/* A new watch for slot index s at step t (the plan fills in the rest). */
static int watch_new(struct job *j, int s, int64_t t) {
    struct repair_watch *w = calloc(1, sizeof *w);
    int P = j->pods;
    if (w) {
        w->worker_id = calloc((size_t)P, sizeof *w->worker_id);
        w->have = calloc((size_t)P, 1);
        w->sha = calloc((size_t)P, sizeof *w->sha);
        w->replayed = calloc((size_t)P, 1);
        w->replay_sha = calloc((size_t)P, sizeof *w->replay_sha);
    }
    if (!w || !w->worker_id || !w->have || !w->sha || !w->replayed || !w->replay_sha) {
        repair_watch_free(w);
        return -1;
    }
    w->slot = s;
    w->step = t;
    w->back_to = w->held_lo = w->held_hi = -1;
    w->pods = P;
    repair_watch_free(j->repair);
    j->repair = w;
    return 0;
}

/* A repair of slot index s from step t, unless one is under way (one at a time: this one
 * joins it). */
static enum repair_next start(struct job *j, int s, int64_t t, const char *seen, char *what) {
    if (j->rec && j->rec->repair) return REPAIR_NOTHING;
    char who[600];
    replicas_text(j, s, who, sizeof who);
    if (watch_new(j, s, t) != 0) LOG_WARN("%s: out of memory noting the repair", j->id);
    snprintf(what, REPAIR_WHAT_MAX, "step %lld, slot index %d: the replicas on %s differ (%s)",
             (long long)t, s, who, seen);
    return REPAIR_START;
}

enum repair_next repair_fault_report(struct coordinator *co, struct job *j, int k,
                                     const Moed__V1__FaultReport *rep, char *what) {
    if (j->rec && j->rec->repair) return REPAIR_AS_FAULT; // another slot of the same stop
    int s = rep->mismatch_slot >= 0 && rep->mismatch_slot < j->slots ? rep->mismatch_slot
                                                                       : k % j->slots;
    char who[600];
    replicas_text(j, s, who, sizeof who);
    job_event(co, j, 1, "replica_mismatch", "step %lld, slot index %d: the state hashes of "
              "its replicas on %s differ; every slot stopped before the update of step %lld "
              "(%s: %s)", (long long)rep->mismatch_step, s, who,
              (long long)rep->mismatch_step + 1, rep->worker_id,
              rep->error[0] ? rep->error : "no detail");
    return start(j, s, rep->mismatch_step, "the slots' own check in the step", what);
}

enum repair_next repair_reported_mismatch(struct job *j, int k, int64_t t, char *what) {
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable) return REPAIR_NOTHING;
    return start(j, k % j->slots, t, "the coordinator's comparison of the reported hashes", what);
}

/* ---- the plan ---- */

/* Whether two pods reported sha as slot index s's state at step t: in their latest reports,
 * or in an agreement kept since (replicas.c). */
static int reported_agreed(const struct job *j, int s, int64_t t, const uint8_t *sha) {
    int n = 0;
    for (int p = 0; j->hashes && p < j->pods; p++) {
        const struct replica_hash *h = &j->hashes[p * j->slots + s];
        n += h->have && h->step == t && !memcmp(h->sha, sha, 32);
    }
    for (int i = 0; j->agreed && i < REPLICA_AGREED_KEEP; i++) {
        const struct replica_hash *a = &j->agreed[s * REPLICA_AGREED_KEEP + i];
        n += 2 * (a->have && a->step == t && !memcmp(a->sha, sha, 32));
    }
    return n >= 2;
}

/* Whether another worker's answer holds the same copy with the same hash. */
static int held_agreed(const struct recovery *r, int n, int k, const struct state_copy *c) {
    for (int q = 0; q < n; q++) {
        if (r->ans[q].state != ANS_HOLDS || !strcmp(r->ans[q].worker_id, r->ans[k].worker_id))
            continue;
        for (int i = 0; i < r->ans[q].n_copies; i++) {
            const struct state_copy *o = &r->ans[q].copies[i];
            if (o->has_sha && o->slot == c->slot && o->step == c->step &&
                !memcmp(o->sha, c->sha, 32))
                return 1;
        }
    }
    return 0;
}

/* Each pod's hash of the step that disagreed: from its fence answer, else from its report. */
static void note_hashes(struct job *j, const struct recovery *r) {
    struct repair_watch *w = j->repair;
    for (int k = 0; w && k < job_n_slots(j); k++) // what is held of it, for a failure's words
        for (int i = 0; i < r->ans[k].n_copies; i++) {
            int64_t t = r->ans[k].copies[i].step;
            if (r->ans[k].copies[i].slot != w->slot) continue;
            if (w->held_lo < 0 || t < w->held_lo) w->held_lo = t;
            if (t > w->held_hi) w->held_hi = t;
        }
    for (int p = 0; w && p < w->pods; p++) {
        int k = p * j->slots + w->slot;
        const struct fence_answer *a = &r->ans[k];
        snprintf(w->worker_id[p], sizeof w->worker_id[p], "%s", a->worker_id);
        for (int i = 0; i < a->n_copies && !w->have[p]; i++)
            if (a->copies[i].has_sha && a->copies[i].slot == w->slot &&
                a->copies[i].step == w->step) {
                memcpy(w->sha[p], a->copies[i].sha, 32);
                w->have[p] = 1;
            }
        const struct replica_hash *h = j->hashes ? &j->hashes[k] : NULL;
        if (!w->have[p] && h && h->have && h->step == w->step) {
            memcpy(w->sha[p], h->sha, 32);
            w->have[p] = 1;
        }
    }
}

void repair_verify(struct job *j, struct recovery *r, const char *keep) {
    int n = job_n_slots(j);
    note_hashes(j, r);
    char **good = calloc((size_t)n, sizeof *good);
    if (!good) { // nothing verified: the plan finds no step and the job fails
        for (int k = 0; k < n; k++) r->ans[k].n_copies = 0;
        return;
    }
    for (int k = 0; k < n; k++) {
        struct fence_answer *a = &r->ans[k];
        good[k] = a->n_copies ? calloc((size_t)a->n_copies, 1) : NULL;
        for (int i = 0; good[k] && i < a->n_copies; i++) {
            const struct state_copy *c = &a->copies[i];
            good[k][i] = keep[k] && c->has_sha &&
                         (held_agreed(r, n, k, c) || reported_agreed(j, c->slot, c->step, c->sha));
        }
    }
    for (int k = 0; k < n; k++) { // then drop the others: the answers are read above
        struct fence_answer *a = &r->ans[k];
        int m = 0;
        for (int i = 0; i < a->n_copies; i++) {
            char h[17] = "none";
            if (a->copies[i].has_sha) hex_short(a->copies[i].sha, h);
            LOG_INFO("%s: repair: %s holds slot index %d at step %lld, sha256 %s: %s", j->id,
                     a->worker_id, a->copies[i].slot, (long long)a->copies[i].step, h,
                     good[k] && good[k][i] ? "agreed" : "not agreed: not used");
            if (good[k] && good[k][i]) a->copies[m++] = a->copies[i];
        }
        a->n_copies = m;
        free(good[k]);
    }
    free(good);
}

void repair_planned(struct job *j, const struct recovery *r, int64_t t) {
    (void)r;
    if (j->repair) j->repair->back_to = t;
}

void repair_unrecoverable(const struct job *j, const struct recovery *r, char *why, size_t cap) {
    (void)r;
    const struct repair_watch *w = j->repair;
    char held[120] = "none";
    if (w && w->held_hi >= 0)
        snprintf(held, sizeof held, "steps %lld to %lld", (long long)w->held_lo,
                 (long long)w->held_hi);
    snprintf(why, cap, "the replicas of slot index %d differ at step %lld and no state they "
             "agree on is still held (its copies held: %s, none both agreed on and at or "
             "above step %lld, one below the committed step; the last agreement is older): the "
             "job fails rather than train on with two models", w ? w->slot : -1,
             w ? (long long)w->step : -1LL, held, (long long)j->committed_step - 1);
}

/* ---- the replay's verdict ---- */

/* One more wrong copy of w: counted, and drained at REPAIR_DRAIN_AFTER. */
static void count_wrong(struct coordinator *co, struct worker *w, char *out, size_t cap) {
    w->wrong_copies++;
    if (w->wrong_copies >= REPAIR_DRAIN_AFTER && !w->drained) {
        w->drained = 1;
        LOG_WARN("%s: drained: %d of its copies were wrong; it gets no new slot (a restarted "
                 "worker process registers as a new worker)", w->id, w->wrong_copies);
    }
    worker_save(co, w);
    snprintf(out, cap, "%s has had %d wrong cop%s%s", w->id, w->wrong_copies,
             w->wrong_copies == 1 ? "y" : "ies",
             w->drained ? ": drained (given no new slot)" : "");
}

/* The replay's hashes of the step that disagreed, once every pod reported its own: the one
 * they agree on (NULL: they differ still, and the slots' check stops the job again). */
static const uint8_t *replay_agreed(struct repair_watch *w, int p, const uint8_t *sha) {
    memcpy(w->replay_sha[p], sha, 32);
    w->replayed[p] = 1;
    for (int q = 0; q < w->pods; q++)
        if (!w->replayed[q]) return NULL;
    for (int q = 1; q < w->pods; q++)
        if (memcmp(w->replay_sha[q], w->replay_sha[0], 32) != 0) return NULL;
    return w->replay_sha[0];
}

void repair_hash_reported(struct coordinator *co, struct job *j, int k, int64_t t,
                          const uint8_t *reported) {
    struct repair_watch *w = j->repair;
    int s = k % j->slots;
    if (!w || w->slot != s || w->step != t || w->back_to < 0) return;
    const uint8_t *sha = replay_agreed(w, k / j->slots, reported);
    if (!sha) return;
    char good[17], bad[17], wrong[600] = "", counts[600] = "";
    size_t o = 0, c = 0;
    hex_short(sha, good);
    for (int p = 0; p < w->pods; p++) {
        if (!w->have[p] || !memcmp(w->sha[p], sha, 32)) continue;
        hex_short(w->sha[p], bad);
        o += (size_t)snprintf(wrong + o, o < sizeof wrong ? sizeof wrong - o : 0,
                              "%sthe copy on %s (pod %d) was wrong (sha256 %s...)",
                              o ? "; " : "", w->worker_id[p], p, bad);
        struct worker *wk = workers_find(co, w->worker_id[p]);
        if (wk && c < sizeof counts) {
            count_wrong(co, wk, counts + c, sizeof counts - c);
            c = strlen(counts);
        }
    }
    if (!o) snprintf(wrong, sizeof wrong, "no hash of the wrong copy was held to name it");
    job_event(co, j, 1, "repaired", "slot index %d, step %lld: %s; every slot returned to "
              "step %lld and replayed, and the replicas agree again (sha256 %s...)%s%s", s,
              (long long)t, wrong, (long long)w->back_to, good, c ? "; " : "", counts);
    repair_watch_free(w);
    j->repair = NULL;
}
