/*
 * partition.c — a partition is held, not fatal (docs/recovery.md, "Partitions").
 *
 * Owns: telling a partition from a loss with what the coordinator has seen, and holding a
 * recovery through one. When a rebind's data plane fails (ReportFault: a peer that could not
 * be connected to, or stopped answering) and the fence after it finds every slot's worker
 * answering with its state, nothing is lost: the workers cannot reach each other. The
 * recovery is then held: event "partition_held" (who reported losing whom, since when), its
 * rebinds are not counted against REC_MAX_ROUNDS, each waits a backoff (1 s doubling to
 * 10 s) after the last failed one, and when the hold has lasted mesh.partition_wait_s the job
 * fails naming the pods that could not reach each other and for how long. A rebind that
 * works ends it: event "partition_healed". JobInfo.held says it all meanwhile.
 * Also: a worker whose fence timed out or found no route (cut off from the coordinator, not
 * known dead) that no plan can do without (no spare after mesh.spare_wait_s, the last copy of
 * a slot) is waited for up to mesh.partition_wait_s (recovery.c fences again when it is back).
 * Never: fences, plans or rebinds (recovery.c does, and counts the faults that are no
 * partition), or decides that a worker is dead (a fence that finds one lost is no partition).
 */
#include "partition.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"

#include <stdio.h>
#include <string.h>

#define PART_BACKOFF_MIN_MS 1000
#define PART_BACKOFF_MAX_MS 10000

void partition_report(struct job *j, int k, const Moed__V1__FaultReport *rep) {
    struct partition *p = j->rec ? &j->rec->part : NULL;
    int to = job_blamed_rank(j, rep->error, k);
    if (!p || rep->transfer_refused || to < 0 || k < 0 || k >= job_n_slots(j)) return;
    for (int i = 0; i < p->n_pairs; i++)
        if (p->pairs[i].from == k && p->pairs[i].to == to) return;
    if (p->n_pairs == PART_MAX_PAIRS) return; // enough to say which pods
    p->pairs[p->n_pairs].from = k;
    p->pairs[p->n_pairs++].to = to;
}

int partition_all_hold(const struct job *j) {
    const struct recovery *r = j->rec;
    if (!r || !r->ans) return 0;
    for (int k = 0; k < job_n_slots(j); k++)
        if (r->ans[k].state != ANS_HOLDS) return 0;
    return 1;
}

/* "pod 0 and pod 1 cannot reach each other (rank 0 lost rank 2, ...)": the pods first, each
 * pair once, then the ranks as reported. Slots of one pod are named only when no two pods lost
 * each other: beside a cut between pods, a loss inside a pod is the cut's echo (a rank whose
 * links across the cut never came up cannot serve its own pod's either). */
static void who_text(const struct job *j, const struct partition *p, char *out, size_t cap) {
    int seen[PART_MAX_PAIRS][2], n_seen = 0;
    size_t len = 0;
    out[0] = 0;
    for (int pass = 0; pass < 2 && !n_seen; pass++) // 0: pairs of pods; 1: inside pods
        for (int i = 0; i < p->n_pairs && len < cap; i++) {
            int a = p->pairs[i].from / j->slots, b = p->pairs[i].to / j->slots, dup = 0;
            if ((a == b) != pass) continue;
            if (a > b) {
                int t = a;
                a = b;
                b = t;
            }
            for (int q = 0; q < n_seen; q++) dup |= seen[q][0] == a && seen[q][1] == b;
            if (dup) continue;
            seen[n_seen][0] = a;
            seen[n_seen++][1] = b;
            if (a == b)
                len += snprintf(out + len, cap - len, "%sslots of pod %d", len ? ", " : "", a);
            else
                len += snprintf(out + len, cap - len, "%spod %d and pod %d", len ? ", " : "", a,
                                b);
        }
    if (!n_seen) {
        snprintf(out, cap, "slots of the %d x %d mesh", j->pods, j->slots);
        return;
    }
    if (len < cap) len += snprintf(out + len, cap - len, " cannot reach each other (");
    for (int i = 0; i < p->n_pairs && len < cap; i++)
        len += snprintf(out + len, cap - len, "%srank %d lost rank %d", i ? ", " : "",
                        p->pairs[i].from, p->pairs[i].to);
    if (len < cap) snprintf(out + len, cap - len, ")");
}

/* JobInfo.held: who, how it retries, until when. */
static void held_text(const struct job *j, struct partition *p) {
    char who[400];
    who_text(j, p, who, sizeof who);
    snprintf(p->text, sizeof p->text, "%s; every slot's worker answers holding its state; "
             "%d rebind%s failed, the next within %d s; the job fails once this lasts %.0f s "
             "(mesh.partition_wait_s)", who, p->tries, p->tries == 1 ? "" : "s",
             PART_BACKOFF_MAX_MS / 1000, j->partition_wait_s);
}

/* The hold has lasted mesh.partition_wait_s: the job's failure reason. */
static int too_long(const struct job *j, const struct partition *p, int64_t now, char *why,
                    size_t cap) {
    double held_s = (double)(now - p->since_ms) / 1000.0;
    if (held_s < j->partition_wait_s) return 0;
    char who[400];
    who_text(j, p, who, sizeof who);
    snprintf(why, cap, "the %d x %d mesh: %s for %.0f s (mesh.partition_wait_s = %.0f s); "
             "every worker answered holding its state, %d rebind%s failed; the last fault: "
             "%.400s; last committed step %lld", j->pods, j->slots, who, held_s,
             j->partition_wait_s, p->tries, p->tries == 1 ? "" : "s", p->suspect_what,
             (long long)j->committed_step);
    return 1;
}

int partition_hold(struct coordinator *co, struct job *j, char *why, size_t cap) {
    struct partition *p = &j->rec->part;
    int64_t now = moe_wall_ms();
    int first = !p->since_ms;
    if (first) p->since_ms = now;
    p->tries++;
    int64_t backoff = (int64_t)PART_BACKOFF_MIN_MS << (p->tries < 5 ? p->tries - 1 : 4);
    if (backoff > PART_BACKOFF_MAX_MS) backoff = PART_BACKOFF_MAX_MS;
    p->retry_ms = now + backoff;
    held_text(j, p);
    if (too_long(j, p, now, why, cap)) return -1;
    LOG_WARN("%s: partition held (try %d, next rebind in %lld ms): %s; the fault: %s", j->id,
             p->tries, (long long)backoff, p->text, p->suspect_what);
    if (first) {
        char who[400];
        who_text(j, p, who, sizeof who);
        job_event(co, j, 1, "partition_held", "%s; every slot's worker answered its fence "
                  "holding its state, so nothing is lost: the recovery waits for the link, "
                  "rebinding again every 1 to 10 s, for up to %.0f s (mesh.partition_wait_s); "
                  "the fault: %.400s", who, j->partition_wait_s, p->suspect_what);
    }
    return 0;
}

int partition_wait(struct coordinator *co, struct job *j, char *why, size_t cap) {
    struct partition *p = &j->rec->part;
    (void)co;
    if (!p->since_ms || !partition_all_hold(j)) return 0;
    int64_t now = moe_wall_ms();
    if (too_long(j, p, now, why, cap)) return -1;
    return now < p->retry_ms;
}

/* "w-3 (slot (1, 0)), w-4 (slot (1, 1))": the workers lost at the fence by a timeout. */
static int cut_off_text(const struct job *j, char *out, size_t cap) {
    const struct recovery *r = j->rec;
    size_t len = 0;
    int n = 0;
    out[0] = 0;
    for (int k = 0; r->ans && k < job_n_slots(j) && len < cap; k++) {
        if (r->ans[k].state != ANS_LOST || !r->ans[k].cut_off) continue;
        char sl[32];
        len += snprintf(out + len, cap - len, "%s%s (slot %s)", n++ ? ", " : "",
                        r->ans[k].worker_id, job_slot_text(j, k, sl, sizeof sl));
    }
    return n;
}

int partition_cut_off(struct coordinator *co, struct job *j, const char *base, char *why,
                      size_t cap) {
    struct recovery *r = j->rec;
    struct partition *p = &r->part;
    char who[300];
    if (!cut_off_text(j, who, sizeof who)) return 0;
    int64_t now = moe_wall_ms();
    if (!r->wait_since_ms) r->wait_since_ms = now;
    double waited = (double)(now - r->wait_since_ms) / 1000.0;
    if (waited >= j->partition_wait_s) {
        snprintf(why, cap, "%s; %s did not answer its fence in time and did not come back "
                 "within %.0f s (mesh.partition_wait_s): cut off from the coordinator, or dead",
                 base, who, j->partition_wait_s);
        return -1;
    }
    if (p->since_ms) return 1;
    p->since_ms = now;
    snprintf(p->text, sizeof p->text, "%.180s did not answer its fence in time: cut off from "
             "the coordinator, not known dead; without it: %.180s; waiting for it to come back, "
             "or for what it lacks, until %.0f s (mesh.partition_wait_s)", who, base,
             j->partition_wait_s);
    LOG_WARN("%s: %s", j->id, p->text);
    job_event(co, j, 1, "partition_held", "%s", p->text);
    return 1;
}

void partition_healed(struct coordinator *co, struct job *j) {
    struct partition *p = &j->rec->part;
    if (!p->since_ms) return;
    char failed[48] = "";
    if (p->tries)
        snprintf(failed, sizeof failed, " and %d rebind%s that failed", p->tries,
                 p->tries == 1 ? "" : "s");
    job_event(co, j, 1, "partition_healed", "the partition is over: every slot reached its "
              "peers in epoch %llu, after %.1f s held%s", (unsigned long long)j->epoch,
              (double)(moe_wall_ms() - p->since_ms) / 1000.0, failed);
}
