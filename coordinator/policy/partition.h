/*
 * partition.h — a partition held, not fatal (partition.c; docs/recovery.md, "Partitions").
 */
#ifndef MOE_COORD_PARTITION_H
#define MOE_COORD_PARTITION_H

#include "../state/jobs.h"

/* Slot k's worker reported a data-plane fault: which rank it lost, if it names one, joins the
 * record of who cannot reach whom (a recovery in progress only). */
void partition_report(struct job *j, int k, const Moed__V1__FaultReport *rep);
/* Whether every slot's worker of the fenced epoch answered holding its state. */
int partition_all_hold(const struct job *j);
/* The fence after a rebind's data-plane fault found every slot held: a partition. Starts the
 * hold (event "partition_held") or goes on with it; the next rebind waits the backoff.
 * 0: held; -1: it has lasted mesh.partition_wait_s, `why` is the job's failure reason. */
int partition_hold(struct coordinator *co, struct job *j, char *why, size_t cap);
/* Before a held recovery rebinds: 1 while the backoff runs, 0 to rebind now (or when a slot
 * was lost meanwhile: no longer a partition only), -1 when mesh.partition_wait_s has passed
 * (`why` says so). */
int partition_wait(struct coordinator *co, struct job *j, char *why, size_t cap);
/* The recovery cannot go on without a worker lost at its fence (`base`: why it would fail:
 * no spare, no copy left). When a lost worker's fence timed out or found no route (cut off
 * from the coordinator, not known dead), the recovery waits for it up to mesh.partition_wait_s
 * from the start of its wait (event "partition_held" once): 1. -1: that has passed, `why` is
 * the failure reason. 0: every lost worker is known dead, fail with `base`. */
int partition_cut_off(struct coordinator *co, struct job *j, const char *base, char *why,
                      size_t cap);
/* Every slot is back: event "partition_healed" if the recovery was held. */
void partition_healed(struct coordinator *co, struct job *j);

#endif
