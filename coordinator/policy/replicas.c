/*
 * replicas.c — what the slots' step reports say about the replicas (see replicas.h).
 */
#include "replicas.h"

#include "../../common/log.h"
#include "../state/events.h"
#include "recovery.h"
#include "repair.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hex_short(const uint8_t *sha, char out[17]) {
    for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", sha[i]);
}

static void update_committed(struct job *j) {
    long c = LONG_MAX;
    for (int k = 0; k < job_n_slots(j); k++)
        if (j->bindings[k].replicated_step < c) c = j->bindings[k].replicated_step;
    if (c != LONG_MAX && c > j->committed_step) j->committed_step = c;
}

/* Two pods agree on slot index s at step t: kept in place of the oldest agreement held. */
static void note_agreed(struct job *j, int s, int64_t t, const uint8_t *sha) {
    if (!j->agreed && !(j->agreed = calloc((size_t)j->slots * REPLICA_AGREED_KEEP,
                                           sizeof *j->agreed)))
        return;
    struct replica_hash *ring = &j->agreed[s * REPLICA_AGREED_KEEP], *oldest = ring;
    for (int i = 0; i < REPLICA_AGREED_KEEP; i++) {
        if (ring[i].have && ring[i].step == t) return;
        if (!ring[i].have || (oldest->have && ring[i].step < oldest->step)) oldest = &ring[i];
    }
    oldest->have = 1;
    oldest->step = t;
    memcpy(oldest->sha, sha, 32);
}

static void hash_check(struct coordinator *co, struct job *j, int k, int64_t t,
                       const uint8_t *sha) {
    int n = job_n_slots(j), S = j->slots;
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
            note_agreed(j, k % S, t, sha);
            LOG_DEBUG("%s: step %lld, slot index %d: pods %d and %d agree (%s); %llu agreements",
                      j->id, (long long)t, k % S, p, k / S, mine,
                      (unsigned long long)j->replica_matches);
            if (!j->replica_verified) {
                j->replica_verified = 1;
                job_event(co, j, 0, "replica_check", "step %lld: the state of slot index "
                                  "%d is the same in pod %d (%s) and pod %d (%s), sha256 %s...; "
                                  "further agreements are only counted, a disagreement is the "
                                  "event replica_mismatch", (long long)t, k % S, q / S,
                                  j->bindings[q].worker_id, k / S, j->bindings[k].worker_id,
                                  mine);
            }
        } else {
            job_event(co, j, 1, "replica_mismatch", "step %lld, slot index %d: slot "
                              "(%d, %d) on %s has state sha256 %s... but slot (%d, %d) on %s has "
                              "%s...: the data-parallel replicas differ (silent corruption?)",
                              (long long)t, k % S, q / S, q % S, j->bindings[q].worker_id,
                              theirs, k / S, k % S, j->bindings[k].worker_id, mine);
            char what[REPAIR_WHAT_MAX];
            if (repair_reported_mismatch(j, k, t, what) == REPAIR_START)
                recovery_repair(co, j, k, what);
            return;
        }
    }
}

void replicas_step_reported(struct coordinator *co, struct job *j, int k,
                            const Moed__V1__StepMetrics *m) {
    struct binding *bd = &j->bindings[k];
    if (m->replicated_step > bd->replicated_step) {
        bd->replicated_step = (long)m->replicated_step;
        update_committed(j);
    }
    if (m->state_sha256.len == 32 && m->state_hash_step >= 0) {
        repair_hash_reported(co, j, k, m->state_hash_step, m->state_sha256.data);
        hash_check(co, j, k, m->state_hash_step, m->state_sha256.data);
    }
}
