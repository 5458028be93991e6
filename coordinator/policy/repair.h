/*
 * repair.h — silent corruption repaired by replay (docs/recovery.md, "Repair").
 *
 * Every step is a pure function of the previous state and the data, so when the data-parallel
 * replicas of a slot index disagree, the job goes back to a state they agree on and replays:
 * a recovery (recovery.c) whose fence asks for every copy's hash and whose plan counts only
 * copies whose hash is agreed (held the same by two workers, or reported the same by two pods
 * at that step). The replay then tells which copy was wrong: at the step that disagreed, the
 * replicas agree again, and the copy whose hash differs from that agreement was the wrong
 * one. Its worker's wrong copies are counted; wrong twice, it is drained.
 * Owns: the events "replica_mismatch" (a slot's own check stopped the step), "repaired", the
 * verification of a repair's copies, its reason to fail, the drain rule.
 * Never: sends calls or restores anything itself (the recovery machinery does).
 */
#ifndef MOE_COORD_REPAIR_H
#define MOE_COORD_REPAIR_H

#include "../state/jobs.h"

#define REPAIR_DRAIN_AFTER 2 // wrong copies after which a worker gets no new slot

/* What the caller does next about a replica mismatch (repair.c decides, recovery.c acts: this
 * file never calls into recovery, whose plan calls into it). */
enum repair_next {
    REPAIR_NOTHING, // the job already repairs: the mismatch joins that repair
    REPAIR_START,   // recovery_repair(co, j, k, what): a new repair, its reason in what
    REPAIR_AS_FAULT // recovery_fault_report(): another slot's report of a stop under repair
};
#define REPAIR_WHAT_MAX 900

/* ReportFault with mismatch_step > 0 from slot k: event "replica_mismatch", then what next
 * (what: REPAIR_WHAT_MAX bytes). */
enum repair_next repair_fault_report(struct coordinator *co, struct job *j, int k,
                                     const Moed__V1__FaultReport *rep, char *what);
/* The coordinator's own comparison of reported hashes found slot k's replicas differ at
 * step t ("replica_mismatch" is already out): what next. */
enum repair_next repair_reported_mismatch(struct job *j, int k, int64_t t, char *what);

/* The plan of a repair: of the copies in the fence answers, keeps only those whose hash is
 * agreed (recovery_plan's functions then see nothing else), after noting each pod's hash of
 * the step that disagreed (j->repair). */
void repair_verify(struct job *j, struct recovery *r, const char *keep);
/* The plan returns every slot to t. */
void repair_planned(struct job *j, const struct recovery *r, int64_t t);
/* No step with an agreed copy of every slot index is held: why the job fails. */
void repair_unrecoverable(const struct job *j, const struct recovery *r, char *why, size_t cap);

/* Slot k of the current epoch reported its state hash at step t (replicas.c): once every pod
 * has reported the step a repair replayed, the same, the copy that differed from it was
 * wrong: event "repaired", the count, the drain. */
void repair_hash_reported(struct coordinator *co, struct job *j, int k, int64_t t,
                          const uint8_t *sha);

#endif
