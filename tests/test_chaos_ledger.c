/*
 * test_chaos_ledger.c — how `moectl chaos` reads a job's event history (cli/chaos_ledger.c):
 * the episodes the events form and the account of a fault's window of seqs, for the histories
 * chaos meets — a fault that lands during a move that then completes (issue 18), a move that
 * meets a fault and ends as a recovery, a coordinator restart in the middle of a move,
 * reattachment, a repair (with or without a fence of its own), a recovery still in progress,
 * one that spans two faults' windows, a job that failed — and episodes before the window that
 * must not count.
 */
#include "../cli/chaos_ledger.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>

/* A history whose events are `kinds` (space-separated), seq 0, 1, 2, ... */
static void history(struct ledger *l, const char *kinds) {
    ledger_free(l);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", kinds);
    l->cap = 64;
    l->ev = calloc(l->cap, sizeof *l->ev);
    char *save = NULL;
    for (char *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        struct ledger_event *e = &l->ev[l->n];
        e->seq = (int64_t)l->n, e->unix_ms = 1000 + (int64_t)l->n;
        snprintf(e->kind, sizeof e->kind, "%s", t);
        e->message = strdup(t);
        l->n++;
    }
    l->next_seq = (int64_t)l->n;
}

static struct account of(const struct ledger *l, int64_t from, int64_t to) {
    struct account a;
    ledger_account(l, from, to, &a);
    return a;
}

static void test_moves(struct ledger *l) {
    /* issue 18: a SIGSTOP (window from seq 2) during a move that completes */
    history(l, "running rebalance moving moved");
    struct account a = of(l, 2, 4);
    EXPECT(a.moved == 1 && a.recovered == 0 && a.open_seq < 0 && a.earlier_seq == 1);
    EXPECT(a.moved_by && a.moved_by->seq == 3 && a.first_seq == 2 && a.last_seq == 3);
    EXPECT(ledger_episode_since(l, 2) && !ledger_episode_since(l, 4));
    /* a move that meets a fault is a recovery */
    history(l, "rebalance moving failure recovering recovered");
    a = of(l, 2, 5);
    EXPECT(a.recovered == 1 && a.moved == 0 && a.earlier_seq == 0 && a.open_seq < 0);
    /* the coordinator killed during a move (window from seq 2): resumed as a recovery */
    history(l, "rebalance moving recovery_resumed recovering reattached recovered");
    a = of(l, 2, 6);
    EXPECT(a.recovered == 1 && a.reattached == 1 && a.earlier_seq == 0);
}

static void test_windows(struct ledger *l) {
    /* an episode that closed before the window does not count */
    history(l, "failure recovering recovered reattached reattached");
    struct account a = of(l, 3, 5);
    EXPECT(a.recovered == 0 && a.reattached == 2 && a.first_seq == 3 && a.last_seq == 4);
    EXPECT(a.earlier_seq < 0 && a.open_seq < 0);
    /* nothing at all: held */
    a = of(l, 5, 5);
    EXPECT(a.recovered + a.moved + a.repaired + a.reattached == 0 && a.first_seq < 0);
    /* in progress at the window's end */
    history(l, "failure recovering");
    a = of(l, 0, 2);
    EXPECT(a.open_seq == 0 && a.recovered == 0);
    /* one move over two windows: in progress at the end of the first, closed in the second,
     * which says it began before it */
    history(l, "reattached rebalance moving moved");
    a = of(l, 0, 2);
    EXPECT(a.open_seq == 1 && a.moved == 0);
    a = of(l, 2, 4);
    EXPECT(a.moved == 1 && a.earlier_seq == 1 && a.open_seq < 0);
    /* two recoveries in one window */
    history(l, "failure recovered failure recovering recovered");
    a = of(l, 0, 5);
    EXPECT(a.recovered == 2 && a.recovered_by->seq == 4);
    /* a failed job ends the episode in progress */
    history(l, "failure recovering failed");
    a = of(l, 0, 3);
    EXPECT(a.open_seq < 0 && a.recovered == 0);
}

static void test_repairs(struct ledger *l) {
    history(l, "running replica_mismatch repairing repaired");
    struct account a = of(l, 1, 4);
    EXPECT(a.repaired == 1 && a.mismatches == 1 && a.repair_seq < 0 && a.mismatch->seq == 1);
    a = of(l, 1, 3); // before "repaired": still open
    EXPECT(a.repaired == 0 && a.repair_seq == 1);
    /* a repair that fences and rebinds is the repair's, not a recovery left open */
    history(l, "replica_mismatch repairing recovering repaired");
    a = of(l, 0, 4);
    EXPECT(a.repaired == 1 && a.open_seq < 0 && a.recovered == 0 && a.repair_seq < 0);
    /* no repair (before the coordinator has one): the mismatch stays open */
    history(l, "replica_mismatch replica_check");
    a = of(l, 0, 2);
    EXPECT(a.repair_seq == 0 && a.repaired == 0);
}

int main(void) {
    struct ledger l = {0};
    test_moves(&l);
    test_windows(&l);
    test_repairs(&l);
    ledger_free(&l);
    if (failures) printf("test_chaos_ledger: %d checks failed\n", failures);
    else printf("test_chaos_ledger: all checks passed\n");
    return failures > 0;
}
