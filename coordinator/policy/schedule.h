/*
 * schedule.h — admitting jobs and binding queued jobs to idle workers (schedule.c).
 */
#ifndef MOE_COORD_SCHEDULE_H
#define MOE_COORD_SCHEDULE_H

#include "../state/jobs.h"

/* Parses and validates a spec (with `--set` overrides) and admits it as a new QUEUED job.
 * MOE_EINVAL / MOE_EFORMAT name the field; a mesh the live workers could never hold is
 * refused now (placement_check), not queued forever. resume_from ("" or NULL: none): the job
 * whose complete export it starts from (export_check_resume: MOE_ENOTFOUND, MOE_EINVAL). */
moe_status schedule_submit(struct coordinator *co, const char *spec_text, size_t len,
                           char *const *overrides, size_t n_overrides, const char *resume_from,
                           struct job **out);

/* One pass: exports of jobs that just ended early (export.c), recoveries waiting for a spare and doubled slots first (recovery.c), then the
 * oldest queued jobs whose whole mesh the idle workers can hold, in submission order (none
 * overtakes the oldest). Called after anything that may free a worker or queue a job. */
void schedule_pass(struct coordinator *co);

#endif
