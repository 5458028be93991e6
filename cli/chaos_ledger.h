/*
 * chaos_ledger.h — a job's event history as `moectl chaos` reads it, and what a window of it
 * says the job did about a fault (docs/operations.md, "Chaos testing").
 *
 * Owns: a copy of every event of one job, read with ListEvents page after page from the last
 * seq it holds (the history survives the coordinator's restart: seqs are stored); the episodes
 * the events form — a recovery (from "failure", "recovery_resumed" or "recovering" to
 * "recovered"), a move ("rebalance"/"moving" to "moved"; one that meets a fault closes as
 * "recovered"), a repair ("replica_mismatch" to "repaired") — and the account of a window of
 * seqs: the episodes that overlapped it, the "reattached" events in it, and whether one is
 * still in progress.
 * Never: looks at the job's status or at processes (chaos.c judges whether the job survived,
 * from an account and the status), or prints.
 */
#ifndef MOECTL_CHAOS_LEDGER_H
#define MOECTL_CHAOS_LEDGER_H

#include "../proto/rpc.h"

#include <stddef.h>
#include <stdint.h>

struct ledger_event {
    int64_t seq, unix_ms;
    char kind[32];
    char *message;
};

struct ledger {
    struct ledger_event *ev; // ascending seq
    size_t n, cap;
    int64_t next_seq;        // where the next ListEvents starts
};

/* Reads the events past the last one held, every page, each call bounded by timeout_s.
 * MOE_OK with n_new (optional) set; an error with *res saying which (UNAVAILABLE while the
 * coordinator restarts) and moe_errmsg() saying why. */
moe_status ledger_pull(struct ledger *l, struct rpc_channel *ch, const char *job_id,
                       double timeout_s, struct rpc_result *res, size_t *n_new);
void ledger_free(struct ledger *l);

/* The first event of kind `kind` with seq >= from, or NULL. */
const struct ledger_event *ledger_find(const struct ledger *l, const char *kind, int64_t from);
/* 1 when an event that opens or advances a recovery or a move has seq >= from. */
int ledger_episode_since(const struct ledger *l, int64_t from);

/* What a window [from, to) of the history holds. An episode overlaps it when it began before
 * `to` and had not closed before `from`. */
struct account {
    int recovered, moved, repaired; // episodes overlapping the window, by how they closed
    int reattached;                 // "reattached" events in the window
    int mismatches;                 // "replica_mismatch" events in the window
    int64_t open_seq;               // a recovery or move still in progress began here (-1)
    int64_t repair_seq;             // a replica_mismatch without its "repaired" yet (-1)
    int64_t first_seq, last_seq;    // the span of the events above (-1: none)
    int64_t earlier_seq;            // an episode that covered it began before `from`: its
                                    //   first seq (-1: none did)
    const struct ledger_event *recovered_by, *moved_by, *repaired_by, *mismatch;
};
void ledger_account(const struct ledger *l, int64_t from, int64_t to, struct account *a);

#endif
