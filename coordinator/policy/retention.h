/*
 * retention.h — which ended jobs the coordinator forgets, and when (retention.c).
 *
 * Owns: the retention rule: an ended job (SUCCEEDED, FAILED, CANCELLED) is deleted once
 * --job-retention-s seconds have passed since it ended, and the oldest ended jobs (by
 * submission) beyond --max-finished-jobs are deleted whatever their age. Deletion itself
 * (store, model file, table) is state/transitions.c's job_delete.
 * Never: deletes a queued or running job, or more than RETENTION_BATCH jobs in one tick: a
 * backlog (a lowered limit, a coordinator that was down for a week) drains over several ticks
 * instead of stalling the loop that serves every other call.
 */
#ifndef MOE_COORD_RETENTION_H
#define MOE_COORD_RETENTION_H

#include "../state/transitions.h"

#define RETENTION_BATCH 64 // jobs deleted per monitor tick at most (one synced write)

/* The monitor's tick: deletes up to RETENTION_BATCH expired jobs; returns how many. */
int retention_tick(struct coordinator *co, int64_t now_ms);

#endif
