/*
 * test_repair_plan.c — which copies a repair counts and where it returns to
 * (coordinator/policy/repair.c over recovery_plan.c; docs/recovery.md, "Repair"), from fence
 * answers written by hand: a 2 x 2 mesh whose slots live at step 10 and hold step 9 as their
 * previous version, every copy hashed as the repair's fence hashes it.
 *   - a flip in slot (1, 1)'s live state: step 10 of slot index 1 is not agreed, T = 9, every
 *     slot holds it itself;
 *   - its previous version corrupt too, and both pods reported step 9's hash (the good one):
 *     T = 9, slot (1, 1) pulls it from rank 1 (the same slot index in pod 0);
 *   - both versions of slot index 1 disagree and nothing was reported: no T, and the reason
 *     names the slot index, the step and what is held;
 *   - a recovery restored every slot to step 10 (only that version held, committed 10) and a
 *     bit flipped in slot (1, 1)'s copy before the next check: the pods' agreement on step 10,
 *     kept since although later reports replaced the per-slot hashes, names the good copy:
 *     T = 10, slot (1, 1) pulls it from rank 1; without that agreement the job fails;
 *   - the same when step 10 was never compared: the slots that kept their own state still hold
 *     step 9, and the repair returns there, one below the committed step.
 */
#include "../common/log.h"
#include "../coordinator/policy/recovery_plan.h"
#include "../coordinator/policy/repair.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N 4 // 2 x 2

static struct binding bindings[N];
static struct replica_hash hashes[N];
static struct fence_answer ans[N];
static struct state_copy copies[N][2];
static struct replica_hash agreed[2 * REPLICA_AGREED_KEEP];
static struct job job;
static struct recovery rec;

/* The hash the right state of (slot index s, step t) has; bad: a wrong one. */
static void sha_of(int s, int64_t t, int bad, uint8_t out[32]) {
    memset(out, 0, 32);
    out[0] = (uint8_t)s;
    out[1] = (uint8_t)t;
    out[2] = (uint8_t)bad;
}

/* Every slot at step 10, holding 10 and 9; wrong[k][v]: copy v (0: live, 1: previous) of
 * slot k hashes wrong. */
static void fence(const int wrong[N][2], int committed) {
    memset(&job, 0, sizeof job);
    memset(&rec, 0, sizeof rec);
    job.pods = job.slots = 2;
    job.bindings = bindings;
    job.hashes = hashes;
    job.committed_step = committed;
    snprintf(job.id, sizeof job.id, "job-1");
    snprintf(job.backend, sizeof job.backend, "tcp");
    rec.ans = ans;
    rec.move = -1;
    rec.repair = 1;
    for (int k = 0; k < N; k++) {
        snprintf(bindings[k].worker_id, sizeof bindings[k].worker_id, "w-%d", k + 1);
        memset(&ans[k], 0, sizeof ans[k]);
        snprintf(ans[k].worker_id, sizeof ans[k].worker_id, "w-%d", k + 1);
        ans[k].state = ANS_HOLDS;
        ans[k].step = 10;
        ans[k].copies = copies[k];
        ans[k].n_copies = 2;
        for (int v = 0; v < 2; v++) {
            copies[k][v] = (struct state_copy){.slot = k % 2, .step = 10 - v, .has_sha = 1};
            sha_of(k % 2, 10 - v, wrong[k][v], copies[k][v].sha);
        }
    }
}

/* The plan as recovery.c makes it for a repair: T, and each slot's source. */
static int64_t plan(int *from) {
    char keep[N];
    plan_keep(&job, &rec, keep);
    repair_verify(&job, &rec, keep);
    int64_t t = plan_step(&job, &rec, keep);
    for (int k = 0; k < N && t >= 0; k++) from[k] = plan_source(&job, &rec, keep, k, t);
    return t;
}

static void test_live_flipped(void) {
    static const int wrong[N][2] = {{0, 0}, {0, 0}, {0, 0}, {1, 0}};
    int from[N];
    fence(wrong, 5);
    int64_t t = plan(from);
    EXPECT_MSG(t == 9, "T = %lld, want 9", (long long)t);
    for (int k = 0; k < N; k++) EXPECT_MSG(from[k] == -1, "slot %d: source %d", k, from[k]);
}

static void test_previous_corrupt(void) {
    static const int wrong[N][2] = {{0, 0}, {0, 0}, {0, 0}, {1, 1}};
    int from[N];
    fence(wrong, 5);
    memset(hashes, 0, sizeof hashes);
    for (int k = 1; k < N; k += 2) { // both pods reported slot index 1's step 9 before the flip
        hashes[k].have = 1;
        hashes[k].step = 9;
        sha_of(1, 9, 0, hashes[k].sha);
    }
    int64_t t = plan(from);
    EXPECT_MSG(t == 9, "T = %lld, want 9", (long long)t);
    EXPECT_MSG(from[3] == 1, "slot (1, 1): source %d, want rank 1", from[3]);
    EXPECT_MSG(from[0] == -1 && from[1] == -1 && from[2] == -1, "sources %d %d %d", from[0],
               from[1], from[2]);
}

static void test_nothing_agreed(void) {
    static const int wrong[N][2] = {{0, 0}, {0, 0}, {0, 0}, {1, 1}};
    int from[N];
    fence(wrong, 5);
    memset(hashes, 0, sizeof hashes);
    int64_t t = plan(from);
    EXPECT_MSG(t < 0, "T = %lld, want none", (long long)t);
    char why[900];
    repair_unrecoverable(&job, &rec, why, sizeof why);
    EXPECT_MSG(strstr(why, "no state they agree on is still held") && strstr(why, "two models"),
               "%s", why);
}

static void test_restored_then_flipped(void) {
    static const int wrong[N][2] = {{0, 0}, {0, 0}, {0, 0}, {1, 0}};
    int from[N];
    for (int with = 0; with < 2; with++) {
        fence(wrong, 10);
        memset(hashes, 0, sizeof hashes);
        memset(agreed, 0, sizeof agreed);
        for (int k = 0; k < N; k++) ans[k].n_copies = 1; // the restore kept S(10) only
        for (int i = 0; i < REPLICA_AGREED_KEEP; i++) { // agreements of steps 7..10
            agreed[REPLICA_AGREED_KEEP + i].have = 1;
            agreed[REPLICA_AGREED_KEEP + i].step = 7 + i;
            sha_of(1, 7 + i, 0, agreed[REPLICA_AGREED_KEEP + i].sha);
        }
        job.agreed = with ? agreed : NULL;
        int64_t t = plan(from);
        if (!with) {
            EXPECT_MSG(t < 0, "no agreement kept: T = %lld, want none", (long long)t);
            continue;
        }
        EXPECT_MSG(t == 10, "T = %lld, want 10", (long long)t);
        EXPECT_MSG(from[3] == 1, "slot (1, 1): source %d, want rank 1", from[3]);
        EXPECT_MSG(from[0] == -1 && from[1] == -1 && from[2] == -1, "sources %d %d %d",
                   from[0], from[1], from[2]);
    }
}

/* A restore returned every slot to the committed step 10 before any check compared it; the
 * slots that returned to their own state kept S(9) (replica.c), the new holder of slot (1, 0)
 * did not; both pods had reported S(9)'s hashes. A bit then flipped in slot (1, 1)'s S(10):
 * a repair returns one step below the committed step, T = 9, the new holder pulling it from
 * rank 0 (slot index 0 in pod 0). A recovery that is not a repair never goes below. */
static void test_restored_never_compared(void) {
    static const int wrong[N][2] = {{0, 0}, {0, 0}, {0, 0}, {1, 0}};
    int from[N];
    fence(wrong, 10);
    memset(hashes, 0, sizeof hashes);
    for (int k = 0; k < N; k++) { // S(9)'s hashes rode in step 10's all-gather
        hashes[k].have = 1;
        hashes[k].step = 9;
        sha_of(k % 2, 9, 0, hashes[k].sha);
    }
    job.agreed = NULL;    // step 10 was never compared
    ans[2].n_copies = 1;  // the new holder of slot (1, 0) holds S(10) only
    int64_t t = plan(from);
    EXPECT_MSG(t == 9, "T = %lld, want 9 (one below the committed step)", (long long)t);
    EXPECT_MSG(from[2] == 0, "slot (1, 0): source %d, want rank 0", from[2]);
    EXPECT_MSG(from[0] == -1 && from[1] == -1 && from[3] == -1, "sources %d %d %d", from[0],
               from[1], from[3]);
    fence(wrong, 10); // the same answers to a recovery's fence (no hashes judged)
    rec.repair = 0;
    char keep[N];
    plan_keep(&job, &rec, keep);
    int64_t t2 = plan_step(&job, &rec, keep);
    EXPECT_MSG(t2 == 10, "a recovery (not a repair): T = %lld, want 10", (long long)t2);
}

int main(void) {
    moe_log_init("test");
    moe_log_set_level(MOE_LOG_WARN);
    test_live_flipped();
    test_previous_corrupt();
    test_nothing_agreed();
    test_restored_then_flipped();
    test_restored_never_compared();
    if (failures) {
        printf("test_repair_plan: %d failures\n", failures);
        return 1;
    }
    printf("test_repair_plan: ok\n");
    return 0;
}
