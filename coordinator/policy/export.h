/*
 * export.h — nothing is lost when a job cannot go on: the export of a FAILED or CANCELLED job's
 * state, and the checks of a job that resumes from it (export.c; docs/recovery.md, "Export and
 * resume").
 */
#ifndef MOE_COORD_EXPORT_H
#define MOE_COORD_EXPORT_H

#include "../state/jobs.h"
#include "../state/workers.h"

#define EXPORT_DEADLINE_S 600.0 // one ExportState: a state of many GB written, synced, read back

/* Starts the export of every job that ended with its state held (transitions.c marks it:
 * export_due). The monitor's tick and every schedule pass call it. */
void export_poll(struct coordinator *co);

/* Whether worker w must keep holding j's state: j's export has not finished and w plays one of
 * its slots (its heartbeats and step reports are not told to stop). */
int export_holds(const struct job *j, const struct worker *w);

/* A resumed job's placement (tcp): inside each pod, the workers chosen[] are permuted so that
 * slot s runs where slot index s's file was written when a chosen worker is on that host (its
 * file is read there, not over shared storage). The pods and the set of workers stay. */
void export_prefer_hosts(const struct job *j, struct worker **chosen);

/* SubmitJob with resume_from: whether the new job (its validated spec, as JSON) may start from
 * job `from`'s export: `from` ended FAILED or CANCELLED, its export is complete, and the
 * specs agree but for the name, run.steps (which may grow, not shrink below the exported step),
 * run.output, run.export_dir and the logging knobs. MOE_ENOTFOUND (no such job) or MOE_EINVAL
 * with one line naming what differs or which slot index is missing; *out: the manifest. */
moe_status export_check_resume(struct coordinator *co, const char *from, const char *spec_json,
                               const Moed__V1__ExportManifest **out);

#endif
