/*
 * placement.c — which worker processes play the slots of a job's mesh.
 *
 * Owns: the placement rule and the check, at submission, that a mesh can be placed at all.
 * The rule (docs/operations.md, "Placement"), for a mesh of P pods x S slots:
 *   - one worker plays one slot: a job needs P * S idle workers, never oversubscribes;
 *   - tcp: logical pod p takes S idle workers of one physical pod (the workers' --pod), the
 *     lowest-numbered physical pod that still has S idle workers; the slots in the order the
 *     workers registered. A logical pod for which no physical pod has S idle workers left
 *     takes the first S idle workers in registration order, whatever their pods.
 *   - mpi: logical pod p is one mpirun job of exactly S ranks, every rank idle; slot s is MPI
 *     rank s. MPI jobs are taken lowest physical pod (of rank 0) first, then in the order
 *     their rank 0 registered.
 * Idle workers left over are spares. A recovery replaces lost slots from them
 * (placement_replace): tcp one spare per lost slot, from the physical pod of the logical pod's
 * surviving slots when it has one; mpi a whole idle MPI job for each pod that lost a slot.
 * Never: changes a worker or a job (schedule.c and recovery.c bind what this file chooses),
 * or looks at anything but the worker table: the choice depends only on it, so it is
 * predictable.
 */
#include "placement.h"

#include <stdlib.h>
#include <string.h>

static int is_mpi(const char *backend) { return backend && strcmp(backend, "mpi") == 0; }

/* Which workers a choice may take; ctx is the chooser's (a recovery's exclusions). */
typedef int (*usable_fn)(const struct worker *w, const void *ctx);

static int usable_alive(const struct worker *w, const void *ctx) {
    (void)ctx;
    return worker_alive(w);
}

static int usable_schedulable(const struct worker *w, const void *ctx) {
    (void)ctx;
    return worker_schedulable(w);
}

/* Whether worker index i leads (is rank 0 of) a complete MPI job of `slots` ranks whose every
 * rank is usable; g[r] gets the worker index of rank r. */
static int mpi_group(const struct coordinator *co, int i, int slots, usable_fn ok,
                     const void *ctx, int *g) {
    const struct worker *lead = co->workers[i];
    if (lead->mpi_size != slots || lead->mpi_rank != 0 || !lead->mpi_job[0] || !ok(lead, ctx))
        return 0;
    g[0] = i;
    for (int r = 1; r < slots; r++) {
        g[r] = -1;
        for (int k = 0; k < co->n_workers && g[r] < 0; k++) {
            const struct worker *w = co->workers[k];
            if (w->mpi_rank == r && w->mpi_size == slots && ok(w, ctx) &&
                strcmp(w->mpi_job, lead->mpi_job) == 0)
                g[r] = k;
        }
        if (g[r] < 0) return 0;
    }
    return 1;
}

/* Up to max_groups complete MPI jobs of `slots` ranks, lowest physical pod of rank 0 first
 * (then registration order); ranks[g * slots + r] is the worker index of rank r of group g.
 * Returns how many. */
static int mpi_groups(const struct coordinator *co, int slots, usable_fn ok, const void *ctx,
                      int *ranks, int max_groups) {
    char *taken = calloc((size_t)co->n_workers + 1, 1);
    if (!taken) return 0;
    int n = 0;
    while (n < max_groups) {
        int best = -1;
        for (int i = 0; i < co->n_workers; i++)
            if (!taken[i] && (best < 0 || co->workers[i]->pod < co->workers[best]->pod) &&
                mpi_group(co, i, slots, ok, ctx, ranks + (size_t)n * slots))
                best = i;
        if (best < 0) break;
        mpi_group(co, best, slots, ok, ctx, ranks + (size_t)n * slots);
        taken[best] = 1;
        n++;
    }
    free(taken);
    return n;
}

moe_status placement_check(const struct coordinator *co, int pods, int slots, const char *backend) {
    long need = (long)pods * slots;
    int live = 0;
    for (int i = 0; i < co->n_workers; i++) live += worker_alive(co->workers[i]);
    if (need > live)
        return moe_fail(MOE_EINVAL,
                        "mesh: mesh.pods x mesh.slots = %d x %d = %ld slots, but the cluster has "
                        "%d live worker%s (one worker plays one slot)",
                        pods, slots, need, live, live == 1 ? "" : "s");
    if (!is_mpi(backend)) return MOE_OK;
    int *ranks = malloc(sizeof *ranks * (size_t)pods * (size_t)slots);
    if (!ranks) return moe_fail(MOE_ENOMEM, "out of memory");
    int groups = mpi_groups(co, slots, usable_alive, NULL, ranks, pods);
    free(ranks);
    if (groups < pods) {
        int mpi_workers = 0;
        for (int i = 0; i < co->n_workers; i++)
            mpi_workers += worker_alive(co->workers[i]) && co->workers[i]->mpi_size > 0;
        return moe_fail(MOE_EINVAL,
                        "mesh: mesh.backend = mpi needs %d pod%s, each one mpirun job of exactly "
                        "mesh.slots = %d live ranks, but the cluster has %d such job%s (%d live "
                        "workers started under mpirun; `moectl cluster up --backend mpi`)",
                        pods, pods == 1 ? "" : "s", slots, groups, groups == 1 ? "" : "s",
                        mpi_workers);
    }
    return MOE_OK;
}

static int choose_mpi(const struct coordinator *co, const struct job *j, struct worker **out) {
    int *ranks = malloc(sizeof *ranks * (size_t)j->pods * (size_t)j->slots);
    if (!ranks) return 0;
    int groups = mpi_groups(co, j->slots, usable_schedulable, NULL, ranks, j->pods);
    if (groups == j->pods)
        for (int k = 0; k < j->pods * j->slots; k++) out[k] = co->workers[ranks[k]];
    free(ranks);
    return groups == j->pods;
}

/* Idle workers per physical pod: (pod, idle) ascending by pod. */
struct pod_idle {
    int pod, idle;
};

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int cmp_pod(const void *key, const void *elem) {
    return cmp_int(key, &((const struct pod_idle *)elem)->pod);
}

/* O(N log N) for N workers, once per choice. Returns how many pods have idle workers. */
static int pods_idle(const struct coordinator *co, struct pod_idle *out) {
    int *pods = malloc(sizeof *pods * ((size_t)co->n_workers + 1)), m = 0, runs = 0;
    if (!pods) return -1;
    for (int i = 0; i < co->n_workers; i++)
        if (worker_schedulable(co->workers[i])) pods[m++] = co->workers[i]->pod;
    qsort(pods, (size_t)m, sizeof *pods, cmp_int);
    for (int k = 0; k < m; k++) {
        if (!runs || out[runs - 1].pod != pods[k]) out[runs++] = (struct pod_idle){pods[k], 0};
        out[runs - 1].idle++;
    }
    free(pods);
    return runs;
}

/* Logical pod p's S workers into out: those of physical pod `pod` (any pod when -1) not used
 * yet, in registration order. Returns how many it found. O(N). */
static int take_pod(const struct coordinator *co, int pod, int S, char *used,
                    struct pod_idle *pi, int runs, struct worker **out) {
    int s = 0;
    for (int i = 0; i < co->n_workers && s < S; i++) {
        struct worker *w = co->workers[i];
        if (used[i] || !worker_schedulable(w) || (pod >= 0 && w->pod != pod)) continue;
        used[i] = 1;
        out[s++] = w;
        struct pod_idle *r = bsearch(&w->pod, pi, (size_t)runs, sizeof *pi, cmp_pod);
        if (r) r->idle--;
    }
    return s;
}

/* O(N log N + P * (N + pods)) for N workers and a job of P logical pods: the idle workers are
 * counted per physical pod once, each logical pod then scans the counts and the workers once. */
static int choose_tcp(const struct coordinator *co, const struct job *j, struct worker **out) {
    int n = co->n_workers, S = j->slots;
    char *used = calloc((size_t)n + 1, 1);
    struct pod_idle *pi = malloc(sizeof *pi * ((size_t)n + 1));
    int runs = used && pi ? pods_idle(co, pi) : -1, placed = runs >= 0;
    for (int p = 0; p < j->pods && placed; p++) {
        int best = -1; // the lowest-numbered physical pod with S idle workers not taken yet
        for (int r = 0; r < runs && best < 0; r++)
            if (pi[r].idle >= S) best = pi[r].pod;
        placed = take_pod(co, best, S, used, pi, runs, out + (size_t)p * S) == S;
    }
    free(used);
    free(pi);
    return placed;
}

int placement_choose(const struct coordinator *co, const struct job *j, struct worker **out) {
    return is_mpi(j->backend) ? choose_mpi(co, j, out) : choose_tcp(co, j, out);
}

/* ---- recovery: replacing lost slots ---- */

struct replace_ctx {
    char (*exclude)[24];
    int n_exclude;
};

static int usable_spare(const struct worker *w, const void *ctx) {
    const struct replace_ctx *rc = ctx;
    /* only workers this process has heard from: one known from the store alone may be gone,
     * and a refused RunSlot costs the recovery a whole new fence round */
    if (!worker_schedulable(w) || !w->confirmed) return 0;
    for (int i = 0; i < rc->n_exclude; i++)
        if (strcmp(rc->exclude[i], w->id) == 0) return 0;
    return 1;
}

static int replace_mpi(const struct coordinator *co, const struct job *j, const char *need,
                       const struct replace_ctx *rc, struct worker **out) {
    int S = j->slots, pods_needed = 0;
    for (int p = 0; p < j->pods; p++) pods_needed += need[p * S] != 0;
    int *ranks = malloc(sizeof *ranks * (size_t)(pods_needed ? pods_needed : 1) * (size_t)S);
    if (!ranks) return -1;
    int groups = mpi_groups(co, S, usable_spare, rc, ranks, pods_needed);
    int g = 0, res = 1;
    for (int p = 0; p < j->pods && res == 1; p++) {
        if (!need[p * S]) continue;
        if (g >= groups) {
            res = -1 - p * S;
            break;
        }
        for (int s = 0; s < S; s++) out[p * S + s] = co->workers[ranks[g * S + s]];
        g++;
    }
    free(ranks);
    return res;
}

/* No spare for slot k: a worker that stays in the job plays it too (docs/recovery.md). It
 * must have a second data listener, play one slot only (counting the slots given out in this
 * plan), and hold no other copy of slot k's state — not the same slot index in another pod,
 * not a buddy of it — so that the slot's copies stay in different processes. Another pod's
 * worker first (its pod keeps its own slots' speed). NULL when none qualifies. */
static struct worker *double_up(const struct job *j, const char *need,
                                struct worker *const *keep, struct worker *const *out, int k) {
    int S = j->slots, n = j->pods * S, s = k % S, p = k / S, buddies = j->buddies;
    struct worker *best = NULL;
    int best_elsewhere = 0;
    for (int i = 0; i < n; i++) {
        struct worker *w = keep[i];
        if (!w || !w->extra_data_address[0] || w->mpi_size) continue;
        int si = i % S, pi = i / S;
        if (si == s) continue; /* a data-parallel copy of slot k already */
        if (pi == p && ((si - s + S) % S) >= 1 && ((si - s + S) % S) <= buddies) continue;
        int taken = 0; /* already two slots: one of its own before, or one in this plan */
        for (int q = 0; q < n && !taken; q++)
            taken = (need[q] && q != k && out[q] == w) || (q != i && keep[q] == w);
        if (taken) continue;
        if (!best || (pi != p && !best_elsewhere)) {
            best = w;
            best_elsewhere = pi != p;
        }
    }
    return best;
}

static int replace_tcp(const struct coordinator *co, const struct job *j, const char *need,
                       struct worker *const *keep, const struct replace_ctx *rc,
                       struct worker **out) {
    int n = co->n_workers, S = j->slots;
    char *used = calloc((size_t)n + 1, 1);
    if (!used) return -1;
    int res = 1;
    for (int k = 0; k < j->pods * S && res == 1; k++) {
        if (!need[k]) continue;
        /* the physical pod where the logical pod's other slots live, if any stay */
        int home = -1;
        for (int s = 0; s < S && home < 0; s++)
            if (keep[(k / S) * S + s]) home = keep[(k / S) * S + s]->pod;
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (used[i] || !usable_spare(co->workers[i], rc)) continue;
            if (best < 0) best = i;
            if (co->workers[i]->pod == home) {
                best = i;
                break;
            }
        }
        if (best >= 0) {
            used[best] = 1;
            out[k] = co->workers[best];
            continue;
        }
        struct worker *host = double_up(j, need, keep, out, k);
        if (!host) {
            res = -1 - k;
            break;
        }
        out[k] = host;
    }
    free(used);
    return res;
}

int placement_replace(const struct coordinator *co, const struct job *j, const char *need,
                      struct worker *const *keep, char (*exclude)[24], int n_exclude,
                      struct worker **out) {
    struct replace_ctx rc = {exclude, n_exclude};
    return is_mpi(j->backend) ? replace_mpi(co, j, need, &rc, out)
                              : replace_tcp(co, j, need, keep, &rc, out);
}
