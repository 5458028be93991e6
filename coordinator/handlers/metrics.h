/*
 * metrics.h — the coordinator's /metrics: the Prometheus text exposition format 0.0.4
 * (https://prometheus.io/docs/instrumenting/exposition_formats/) of what it knows.
 *
 * Owns: the exposition writer (families with HELP and TYPE, label values and help escaped,
 * histograms as cumulative _bucket{le}, _sum, _count); which jobs are shown (the active ones
 * and the --metrics-ended-jobs most recently ended, so that a coordinator keeping 10,000 ended
 * jobs does not print them all on every scrape); the metric families themselves (the list with
 * units and labels is docs/operations.md "Metrics"); and the counts of the coordinator's own
 * RPCs (struct rpc_stats, fed by proto/rpc.c's on_done hook).
 * Labels are few-valued on purpose: job_id, pod, slot, worker (the worker's id, never its pid),
 * expert, state, service, method, code. A job is "job_id", not "job": Prometheus gives every
 * series it scrapes a "job" label of its own (the scrape config's job_name), and would rename
 * ours to exported_job.
 * Threads: the loop's (it reads the tables directly; handlers/http_service.c calls it there).
 * Never: decides, writes the store, or reads it (everything comes from memory).
 */
#ifndef MOE_COORD_METRICS_H
#define MOE_COORD_METRICS_H

#include "../state/histogram.h"
#include "../state/state.h"

#include <stddef.h>

/* ---- the exposition writer ---- */

struct expo {
    char *buf;
    size_t len, cap;
    int oom; // an allocation failed: the text is incomplete
};

struct label {
    const char *name, *value;
};

/* "# HELP name help\n# TYPE name type\n" (type: counter, gauge, histogram). */
void expo_family(struct expo *e, const char *name, const char *type, const char *help);
/* One sample: name{labels} value. */
void expo_sample(struct expo *e, const char *name, const struct label *labels, int n_labels,
                 double value);
/* A histogram's samples: name_bucket{labels,le} (cumulative, +Inf last), name_sum,
 * name_count. */
void expo_histogram(struct expo *e, const char *name, const struct label *labels, int n_labels,
                    const struct histogram *h);
/* Takes the text (NUL-terminated; the caller frees it) and resets the writer; NULL when an
 * allocation failed on the way. */
char *expo_take(struct expo *e, size_t *len);

/* ---- the coordinator's RPCs ---- */

struct rpc_stats;
struct rpc_stats *rpc_stats_new(const struct rpc_method *methods, int n_methods);
void rpc_stats_free(struct rpc_stats *s);
/* rpc_server_config.on_done, ctx the coordinator (its rpc_stats). */
void rpc_stats_on_done(void *ctx, int method, grpc_status_code code, double seconds);

/* ---- the whole page ---- */

/* The exposition of everything (malloc'd, NUL-terminated); MOE_ENOMEM. */
moe_status metrics_render(struct coordinator *co, int64_t now_ms, char **out, size_t *len);

/* The jobs /metrics shows: every QUEUED or RUNNING one, and the `ended` most recently ended,
 * in submission order (malloc'd; *n of them). MOE_ENOMEM. */
moe_status metrics_jobs(struct coordinator *co, long ended, struct job ***out, int *n);

#endif
