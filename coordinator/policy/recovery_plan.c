/*
 * recovery_plan.c — the plan of a recovery, from what the fenced workers answered (see
 * recovery_plan.h). No calls, no events, no store: they read the answers and the job and write
 * only the plan, so the plan reads apart from the calls that drive a recovery (recovery.c).
 */
#include "recovery_plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int has_copy(const struct fence_answer *a, int s, int64_t t) {
    for (int i = 0; i < a->n_copies; i++)
        if (a->copies[i].slot == s && a->copies[i].step == t) return 1;
    return 0;
}


void plan_keep(const struct job *j, const struct recovery *r, char *keep) {
    int S = j->slots, n = job_n_slots(j);
    for (int k = 0; k < n; k++) keep[k] = r->ans[k].state == ANS_HOLDS;
    if (strcmp(j->backend, "mpi") != 0) return;
    for (int p = 0; p < j->pods; p++) {
        int whole = 1;
        for (int s = 0; s < S; s++) whole &= keep[p * S + s];
        if (!whole)
            for (int s = 0; s < S; s++) keep[p * S + s] = 0;
    }
}

/* Whether every slot index has a copy at step t on a worker that stays (and, with `fresh`,
 * whose state of it this recovery never refused). */
static int step_covered(const struct job *j, const struct recovery *r, const char *keep,
                        int64_t t, int fresh) {
    for (int s = 0; s < j->slots; s++) {
        int have = 0;
        for (int k = 0; k < job_n_slots(j) && !have; k++)
            have = keep[k] && has_copy(&r->ans[k], s, t) &&
                   !(fresh && plan_refused(r, r->ans[k].worker_id, s));
        if (!have) return 0;
    }
    return 1;
}

/* The newest step >= floor that step_covered judges so. O(slots * copies) to list the
 * candidate steps, and each distinct step judged once (a failed one is remembered) at
 * O(slots) when pod 0 holds it, O(slots^2) at worst; judging a failed step again for every
 * slot that holds it made that the common case. */
static int64_t newest_covered(const struct job *j, const struct recovery *r, const char *keep,
                              int64_t floor, int fresh) {
    int64_t best = -1, failed[8];
    int n_failed = 0;
    for (int k = 0; k < job_n_slots(j); k++) {
        for (int i = 0; keep[k] && i < r->ans[k].n_copies; i++) {
            int64_t t = r->ans[k].copies[i].step;
            int known = 0;
            for (int f = 0; f < n_failed && !known; f++) known = failed[f] == t;
            if (known || t < floor || t <= best) continue;
            if (step_covered(j, r, keep, t, fresh)) best = t;
            else if (n_failed < 8) failed[n_failed++] = t; // (beyond 8: judged again)
        }
    }
    return best;
}

int64_t plan_step(const struct job *j, const struct recovery *r, const char *keep) {
    /* a repair may return one step below the committed step: a restore returns every slot to
     * the committed step, whose state no check may have compared yet, and the slots that kept
     * their own state still hold the one before it (replica.c), which a check did */
    int64_t floor = r->repair && j->committed_step > 0 ? j->committed_step - 1 : j->committed_step;
    /* a step whose only holders sent refused copies gives way to an older one another worker
     * holds; with none, the newest held step, whose refused sources plan_source reports */
    int64_t best = newest_covered(j, r, keep, floor, 1);
    if (best < 0 && r->n_refused > 0) best = newest_covered(j, r, keep, floor, 0);
    if (best < 0 && j->committed_step == 0) best = 0;
    return best;
}

int plan_refused(const struct recovery *r, const char *worker, int s) {
    for (int i = 0; i < r->n_refused; i++)
        if (r->refused[i].slot == s && !strcmp(r->refused[i].worker_id, worker)) return 1;
    return 0;
}

/* Worker q can send slot index s's state at t, and no restore of this recovery refused it. */
static int can_source(const struct recovery *r, const char *keep, int q, int s, int64_t t) {
    return keep[q] && has_copy(&r->ans[q], s, t) && !plan_refused(r, r->ans[q].worker_id, s);
}

int plan_source(const struct job *j, const struct recovery *r, const char *keep, int k,
                int64_t t) {
    int S = j->slots, s = k % S;
    if (t == 0 || (keep[k] && has_copy(&r->ans[k], s, t))) return -1;
    for (int p = 0; p < j->pods; p++) { // the same slot index in another pod: its own state
        int q = p * S + s;
        if (q != k && can_source(r, keep, q, s, t)) return q;
    }
    for (int q = 0; q < job_n_slots(j); q++) // a buddy's copy
        if (q != k && can_source(r, keep, q, s, t)) return q;
    return -2; // only when every source left was refused: t is covered
}

void plan_refused_text(const struct recovery *r, char *out, size_t cap) {
    size_t o = strlen(out);
    for (int i = 0; i < r->n_refused && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s for slot index %d (%s)",
                              i ? "; " : "; sources refused: ", r->refused[i].worker_id,
                              r->refused[i].slot, r->refused[i].why);
}

void plan_no_source(const struct job *j, const struct recovery *r, int k, int64_t t, char *why,
                    size_t cap) {
    char sl[32];
    size_t o = (size_t)snprintf(why, cap, "slot %s of the %d x %d mesh: no source of its state "
                                "at step %lld left at attempt %d: every worker holding a copy "
                                "sent one that failed its checksum",
                                job_slot_text(j, k, sl, sizeof sl), j->pods, j->slots,
                                (long long)t, r->rounds + 1);
    for (int i = 0; i < r->n_refused && o < cap; i++)
        if (r->refused[i].slot == k % j->slots)
            o += (size_t)snprintf(why + o, cap - o, "; refused from %s: %s",
                                  r->refused[i].worker_id, r->refused[i].why);
    if (o < cap)
        snprintf(why + o, cap - o, "; last committed step %lld", (long long)j->committed_step);
}

void plan_unrecoverable(const struct job *j, const struct recovery *r, const char *keep,
                        char *why, size_t cap) {
    int S = j->slots, n = job_n_slots(j), bad = -1;
    for (int s = 0; s < S && bad < 0; s++) {
        int have = 0;
        for (int k = 0; k < n && !have; k++)
            for (int i = 0; keep[k] && i < r->ans[k].n_copies && !have; i++)
                have = r->ans[k].copies[i].slot == s &&
                       r->ans[k].copies[i].step >= j->committed_step;
        if (!have) bad = s;
    }
    char sl[32];
    if (bad < 0) {
        snprintf(why, cap, "the %d x %d mesh, epoch %llu: no step >= the committed step "
                 "%lld at which every slot's state still has a copy; last committed step %lld",
                 j->pods, j->slots, (unsigned long long)j->epoch, (long long)j->committed_step,
                 (long long)j->committed_step);
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
    snprintf(why, cap, "slot %s of the %d x %d mesh: every copy of its state is gone "
             "(%s); last committed step %lld", job_slot_text(j, k0, sl, sizeof sl), j->pods,
             j->slots, who, (long long)j->committed_step);
}

void plan_text(const struct job *j, const struct recovery *r, const char *keep, char *out,
               size_t cap) {
    size_t o = strlen(out);
    int moved = 0;
    for (int k = 0; k < job_n_slots(j) && o < cap; k++) {
        int from = j->restore_from[k];
        if (keep[k] && from < 0) continue;
        char sl[32], src[80] = "";
        if (from >= 0)
            snprintf(src, sizeof src, ", state from rank %d (%s)", from,
                     j->bindings[from].worker_id);
        if (keep[k])
            o += (size_t)snprintf(out + o, cap - o, "; slot %s on %s pulls its state%s",
                                  job_slot_text(j, k, sl, sizeof sl), j->bindings[k].worker_id,
                                  src);
        else if (k == r->move && r->ans[k].state == ANS_HOLDS)
            o += (size_t)snprintf(out + o, cap - o, "; slot %s: off %s's second listener -> %s%s",
                                  job_slot_text(j, k, sl, sizeof sl), r->ans[k].worker_id,
                                  j->bindings[k].worker_id, src);
        else
            o += (size_t)snprintf(out + o, cap - o, "; slot %s: %s %s -> %s%s%s",
                                  job_slot_text(j, k, sl, sizeof sl), r->ans[k].worker_id,
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

void plan_move(const struct job *j, struct recovery *r, char *keep, struct worker **kept) {
    int k2 = r->move, n = job_n_slots(j), S = j->slots, k1 = -1;
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

void plan_answer_copies(struct fence_answer *a, const Moed__V1__FenceResponse *resp, int slots) {
    a->step = resp->step;
    a->copies = resp->n_copies ? calloc(resp->n_copies, sizeof *a->copies) : NULL;
    a->n_copies = 0;
    for (size_t i = 0; a->copies && i < resp->n_copies; i++) {
        const Moed__V1__StateCopy *c = resp->copies[i];
        if (c->slot < 0 || c->slot >= slots) continue;
        struct state_copy *o = &a->copies[a->n_copies++];
        o->slot = c->slot;
        o->step = c->step;
        o->has_sha = c->sha256.len == 32;
        if (o->has_sha) memcpy(o->sha, c->sha256.data, 32);
    }
}
