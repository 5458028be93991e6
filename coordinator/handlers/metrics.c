/*
 * metrics.c — the coordinator's /metrics in the Prometheus text format (see metrics.h).
 * The families, in the order they are written: the jobs', the workers', the coordinator's
 * own. docs/operations.md "Metrics" lists them with their units and labels.
 */
#include "metrics.h"

#include "../state/jobs.h"
#include "../state/workers.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the exposition writer ---- */

static void put(struct expo *e, const char *s, size_t n) {
    if (e->oom) return;
    if (e->len + n + 1 > e->cap) {
        size_t cap = e->cap ? e->cap : 16384;
        while (e->len + n + 1 > cap) cap *= 2;
        char *b = realloc(e->buf, cap);
        if (!b) {
            e->oom = 1;
            return;
        }
        e->buf = b, e->cap = cap;
    }
    memcpy(e->buf + e->len, s, n);
    e->len += n;
    e->buf[e->len] = 0;
}

static void puts_(struct expo *e, const char *s) { put(e, s, strlen(s)); }

/* `s` with backslash and newline escaped, and the double quote when `quote` (label values). */
static void put_escaped(struct expo *e, const char *s, int quote) {
    for (; *s; s++) {
        if (*s == '\\') puts_(e, "\\\\");
        else if (*s == '\n') puts_(e, "\\n");
        else if (*s == '"' && quote) puts_(e, "\\\"");
        else put(e, s, 1);
    }
}

/* Integers as integers (counters, steps), the rest with every digit a double holds. */
static void put_value(struct expo *e, double v) {
    char num[40];
    if (isnan(v)) snprintf(num, sizeof num, "NaN");
    else if (isinf(v)) snprintf(num, sizeof num, "%sInf", v > 0 ? "+" : "-");
    else if (v == floor(v) && fabs(v) < 1e15) snprintf(num, sizeof num, "%.0f", v);
    else { // the shortest of these that reads back as the same double
        snprintf(num, sizeof num, "%.15g", v);
        if (strtod(num, NULL) != v) snprintf(num, sizeof num, "%.17g", v);
    }
    puts_(e, num);
}

void expo_family(struct expo *e, const char *name, const char *type, const char *help) {
    puts_(e, "# HELP ");
    puts_(e, name);
    puts_(e, " ");
    put_escaped(e, help, 0);
    puts_(e, "\n# TYPE ");
    puts_(e, name);
    puts_(e, " ");
    puts_(e, type);
    puts_(e, "\n");
}

static void put_labels(struct expo *e, const struct label *labels, int n, const char *le) {
    if (!n && !le) return;
    puts_(e, "{");
    for (int i = 0; i < n; i++) {
        if (i) puts_(e, ",");
        puts_(e, labels[i].name);
        puts_(e, "=\"");
        put_escaped(e, labels[i].value ? labels[i].value : "", 1);
        puts_(e, "\"");
    }
    if (le) {
        puts_(e, n ? ",le=\"" : "le=\"");
        puts_(e, le);
        puts_(e, "\"");
    }
    puts_(e, "}");
}

void expo_sample(struct expo *e, const char *name, const struct label *labels, int n_labels,
                 double value) {
    puts_(e, name);
    put_labels(e, labels, n_labels, NULL);
    puts_(e, " ");
    put_value(e, value);
    puts_(e, "\n");
}

static void suffixed(struct expo *e, const char *name, const char *suffix) {
    puts_(e, name);
    puts_(e, suffix);
}

void expo_histogram(struct expo *e, const char *name, const struct label *labels, int n_labels,
                    const struct histogram *h) {
    char le[32];
    for (int i = 0; i <= HISTOGRAM_BUCKETS; i++) {
        if (i < HISTOGRAM_BUCKETS) snprintf(le, sizeof le, "%g", histogram_bounds[i]);
        else snprintf(le, sizeof le, "+Inf");
        suffixed(e, name, "_bucket");
        put_labels(e, labels, n_labels, le);
        puts_(e, " ");
        put_value(e, (double)(i < HISTOGRAM_BUCKETS ? h->bucket[i] : h->count));
        puts_(e, "\n");
    }
    suffixed(e, name, "_sum");
    put_labels(e, labels, n_labels, NULL);
    puts_(e, " ");
    put_value(e, h->sum);
    puts_(e, "\n");
    suffixed(e, name, "_count");
    put_labels(e, labels, n_labels, NULL);
    puts_(e, " ");
    put_value(e, (double)h->count);
    puts_(e, "\n");
}

char *expo_take(struct expo *e, size_t *len) {
    char *text = NULL;
    if (e->oom) free(e->buf);
    else text = e->buf ? e->buf : calloc(1, 1); // nothing written: still a valid, empty page
    if (len) *len = text ? e->len : 0;
    memset(e, 0, sizeof *e);
    return text;
}

/* ---- the coordinator's RPCs ---- */

#define RPC_CODES 17 // gRPC's codes 0 (OK) .. 16 (UNAUTHENTICATED)

struct rpc_stats {
    const struct rpc_method *methods;
    int n_methods;                   // the last row, [n_methods], counts unknown methods
    uint64_t (*handled)[RPC_CODES];  // [n_methods + 1]
    struct histogram *seconds;       // [n_methods + 1]
};

struct rpc_stats *rpc_stats_new(const struct rpc_method *methods, int n_methods) {
    struct rpc_stats *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->methods = methods;
    s->n_methods = n_methods;
    s->handled = calloc((size_t)n_methods + 1, sizeof *s->handled);
    s->seconds = calloc((size_t)n_methods + 1, sizeof *s->seconds);
    if (!s->handled || !s->seconds) {
        rpc_stats_free(s);
        return NULL;
    }
    return s;
}

void rpc_stats_free(struct rpc_stats *s) {
    if (!s) return;
    free(s->handled);
    free(s->seconds);
    free(s);
}

void rpc_stats_on_done(void *ctx, int method, grpc_status_code code, double seconds) {
    struct rpc_stats *s = ((struct coordinator *)ctx)->rpc_stats;
    if (!s) return;
    int row = method >= 0 && method < s->n_methods ? method : s->n_methods;
    int c = (int)code >= 0 && (int)code < RPC_CODES ? (int)code : GRPC_STATUS_UNKNOWN;
    s->handled[row][c]++;
    histogram_observe(&s->seconds[row], seconds);
}

/* "/moed.v1.Jobs/SubmitJob" as service "moed.v1.Jobs" and method "SubmitJob". */
static void split_path(const struct rpc_stats *s, int row, char *service, size_t cap,
                       const char **method) {
    if (row >= s->n_methods) {
        snprintf(service, cap, "unknown");
        *method = "unknown";
        return;
    }
    const char *path = s->methods[row].path, *slash = strrchr(path, '/');
    const char *from = path[0] == '/' ? path + 1 : path;
    int n = slash && slash > from ? (int)(slash - from) : 0;
    snprintf(service, cap, "%.*s", n, from);
    *method = slash ? slash + 1 : path;
}

static void write_rpc(struct expo *e, const struct rpc_stats *s) {
    char service[96];
    const char *method;
    expo_family(e, "moed_rpc_server_handled_total", "counter",
                "gRPC calls the coordinator answered, by method and status code");
    for (int r = 0; r <= s->n_methods; r++)
        for (int c = 0; c < RPC_CODES; c++) {
            if (!s->handled[r][c]) continue;
            split_path(s, r, service, sizeof service, &method);
            struct label l[] = {{"service", service}, {"method", method},
                                {"code", rpc_code_name((grpc_status_code)c)}};
            expo_sample(e, "moed_rpc_server_handled_total", l, 3, (double)s->handled[r][c]);
        }
    expo_family(e, "moed_rpc_server_handling_seconds", "histogram",
                "time from a call's arrival to its status (a stream: its whole life)");
    for (int r = 0; r <= s->n_methods; r++) {
        if (!s->seconds[r].count) continue;
        split_path(s, r, service, sizeof service, &method);
        struct label l[] = {{"service", service}, {"method", method}};
        expo_histogram(e, "moed_rpc_server_handling_seconds", l, 2, &s->seconds[r]);
    }
}

/* ---- which jobs ---- */

static int by_finished_desc(const void *a, const void *b) {
    const struct job *x = *(struct job *const *)a, *y = *(struct job *const *)b;
    return (x->finished_ms < y->finished_ms) - (x->finished_ms > y->finished_ms);
}

static int by_number(const void *a, const void *b) {
    const struct job *x = *(struct job *const *)a, *y = *(struct job *const *)b;
    return (x->num > y->num) - (x->num < y->num);
}

moe_status metrics_jobs(struct coordinator *co, long ended, struct job ***out, int *n) {
    struct job **all = malloc(((size_t)co->n_jobs + 1) * sizeof *all);
    if (!all) return moe_fail(MOE_ENOMEM, "out of memory");
    int n_active = 0, n_ended = co->n_jobs;
    for (int i = 0; i < co->n_jobs; i++) { // active ones from the front, ended from the back
        struct job *j = co->jobs[i];
        if (job_is_final(j)) all[--n_ended] = j;
        else all[n_active++] = j;
    }
    int n_final = co->n_jobs - n_ended;
    qsort(all + n_ended, (size_t)n_final, sizeof *all, by_finished_desc);
    int keep = n_final < ended ? n_final : (int)ended;
    memmove(all + n_active, all + n_ended, (size_t)keep * sizeof *all);
    *n = n_active + keep;
    qsort(all, (size_t)*n, sizeof *all, by_number);
    *out = all;
    return MOE_OK;
}

/* ---- the jobs' families ---- */

static const char *const job_states[] = {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED",
                                         "CANCELLED"};
static const Moed__V1__JobState job_state_values[] = {
    MOED__V1__JOB_STATE__JOB_QUEUED, MOED__V1__JOB_STATE__JOB_RUNNING,
    MOED__V1__JOB_STATE__JOB_SUCCEEDED, MOED__V1__JOB_STATE__JOB_FAILED,
    MOED__V1__JOB_STATE__JOB_CANCELLED};
#define N_JOB_STATES 5

struct jobs_page {
    struct job **jobs;
    int n;
};

/* A per-job gauge or counter: one sample per job, its value from `get` (NAN: none). */
static void job_family(struct expo *e, const struct jobs_page *p, const char *name,
                       const char *type, const char *help, double (*get)(const struct job *)) {
    expo_family(e, name, type, help);
    for (int i = 0; i < p->n; i++) {
        double v = get(p->jobs[i]);
        if (isnan(v)) continue;
        struct label l[] = {{"job_id", p->jobs[i]->id}};
        expo_sample(e, name, l, 1, v);
    }
}

static double j_step(const struct job *j) { return (double)j->step; }
static double j_total(const struct job *j) { return (double)j->total_steps; }
static double j_committed(const struct job *j) { return (double)j->committed_step; }
static double j_epoch(const struct job *j) { return (double)j->epoch; }
static double j_loss(const struct job *j) { return j->step > 0 ? j->loss : NAN; }
static double j_val_loss(const struct job *j) { return j->val_loss > 0 ? j->val_loss : NAN; }
static double j_bpb(const struct job *j) {
    return j->last && j->last->bits_per_byte > 0 ? j->last->bits_per_byte : NAN;
}
static double j_val_bpb(const struct job *j) {
    return j->val_bits_per_byte > 0 ? j->val_bits_per_byte : NAN;
}
static double j_recoveries(const struct job *j) { return (double)j->recoveries; }
static double j_moves(const struct job *j) { return (double)j->moves; }
static double j_recovering(const struct job *j) { return j->recovering ? 1 : 0; }
static double j_held(const struct job *j) { return j->rec && j->rec->part.since_ms ? 1 : 0; }
static double j_tps(const struct job *j) { return j->last ? j->last->tokens_per_second : NAN; }
static double j_dropped(const struct job *j) { return j->last ? (double)j->last->dropped : NAN; }
static double j_assign(const struct job *j) {
    return j->last ? (double)j->last->assignments : NAN;
}

static void write_job_states(struct expo *e, const struct jobs_page *p) {
    expo_family(e, "moed_job_state", "gauge",
                "1 for the state the job is in, 0 for the others (the active jobs and the most "
                "recently ended)");
    for (int i = 0; i < p->n; i++)
        for (int s = 0; s < N_JOB_STATES; s++) {
            struct label l[] = {{"job_id", p->jobs[i]->id}, {"state", job_states[s]}};
            expo_sample(e, "moed_job_state", l, 2, p->jobs[i]->state == job_state_values[s]);
        }
    expo_family(e, "moed_job_info", "gauge", "1 per job, its spec's name and data-plane backend");
    for (int i = 0; i < p->n; i++) {
        const struct job *j = p->jobs[i];
        struct label l[] = {{"job_id", j->id}, {"name", j->name}, {"backend", j->backend}};
        expo_sample(e, "moed_job_info", l, 3, 1);
    }
}

/* The per-job gauges and counters, one sample per job each. */
static const struct job_metric {
    const char *name, *type, *help;
    double (*get)(const struct job *); // NAN: no sample for this job
} job_metrics[] = {
    {"moed_job_step", "gauge", "the last completed optimizer step", j_step},
    {"moed_job_total_steps", "gauge", "the steps the job runs (run.steps)", j_total},
    {"moed_job_committed_step", "gauge",
     "the newest step held in every failure domain the spec asks for; a recovery never returns "
     "below it", j_committed},
    {"moed_job_epoch", "gauge", "times the job was bound to workers", j_epoch},
    {"moed_job_loss_nats_per_token", "gauge",
     "training loss at the last step (cross-entropy + auxiliary terms)", j_loss},
    {"moed_job_val_loss_nats_per_token", "gauge",
     "the last held-out loss (absent before the first evaluation)", j_val_loss},
    {"moed_job_bpb", "gauge",
     "the last step's cross-entropy in bits per byte of text: comparable across tokenizers",
     j_bpb},
    {"moed_job_val_bpb", "gauge",
     "the last held-out cross-entropy in bits per byte of text (absent before the first "
     "evaluation since the coordinator started)", j_val_bpb},
    {"moed_job_tokens_per_second", "gauge", "tokens per second of the last step", j_tps},
    {"moed_job_step_dropped_assignments", "gauge",
     "(token, expert) assignments the last step dropped for capacity", j_dropped},
    {"moed_job_step_assignments", "gauge", "(token, expert) assignments of the last step",
     j_assign},
    {"moed_job_recoveries_total", "counter", "failures the job recovered from", j_recoveries},
    {"moed_job_moves_total", "counter", "doubled slots moved onto a spare worker", j_moves},
    {"moed_job_recovering", "gauge", "1 while a recovery is in progress", j_recovering},
    {"moed_job_partition_held", "gauge",
     "1 while a recovery is held through a partition (docs/recovery.md)", j_held},
};

static void write_job_scalars(struct expo *e, const struct jobs_page *p) {
    for (size_t k = 0; k < sizeof job_metrics / sizeof job_metrics[0]; k++) {
        const struct job_metric *m = &job_metrics[k];
        job_family(e, p, m->name, m->type, m->help, m->get);
    }
}

static void write_recovery_durations(struct expo *e, const struct jobs_page *p) {
    expo_family(e, "moed_job_recovery_duration_seconds", "histogram",
                "from a recovery's fault (a silent lost worker's last sign of life, else the "
                "first fault signal: the recovered event's total, docs/recovery.md) until "
                "every slot was back, for the recoveries this coordinator process saw end");
    for (int i = 0; i < p->n; i++) {
        struct label l[] = {{"job_id", p->jobs[i]->id}};
        expo_histogram(e, "moed_job_recovery_duration_seconds", l, 1,
                       &p->jobs[i]->recovery_seconds);
    }
}

static void write_expert_load(struct expo *e, const struct jobs_page *p) {
    expo_family(e, "moed_job_expert_load_ratio", "gauge",
                "each expert's share of the last step's assignments, averaged over the layers "
                "(1/experts when balanced)");
    for (int i = 0; i < p->n; i++) {
        const struct job *j = p->jobs[i];
        for (size_t x = 0; j->last && x < j->last->n_expert_load; x++) {
            char expert[24];
            snprintf(expert, sizeof expert, "%zu", x);
            struct label l[] = {{"job_id", j->id}, {"expert", expert}};
            expo_sample(e, "moed_job_expert_load_ratio", l, 2, j->last->expert_load[x]);
        }
    }
}

/* Per slot of each job's mesh: the numbers its worker last reported. */
enum slot_value { SLOT_STEP, SLOT_SECONDS, SLOT_COMM, SLOT_ALLTOALL, SLOT_ALLREDUCE };

static double slot_value(const struct binding *b, enum slot_value what) {
    switch (what) {
    case SLOT_STEP: return (double)b->step;
    case SLOT_SECONDS: return b->step_seconds;
    case SLOT_COMM: return b->comm_seconds;
    case SLOT_ALLTOALL: return (double)b->total_alltoall;
    case SLOT_ALLREDUCE: return (double)b->total_allreduce;
    }
    return 0;
}

static void slot_family(struct expo *e, const struct jobs_page *p, const char *name,
                        const char *type, const char *help, enum slot_value what) {
    expo_family(e, name, type, help);
    for (int i = 0; i < p->n; i++) {
        const struct job *j = p->jobs[i];
        for (int k = 0; j->bindings && k < job_n_slots(j); k++) {
            char pod[16], slot[16];
            snprintf(pod, sizeof pod, "%d", k / j->slots);
            snprintf(slot, sizeof slot, "%d", k % j->slots);
            struct label l[] = {{"job_id", j->id}, {"pod", pod}, {"slot", slot}};
            expo_sample(e, name, l, 3, slot_value(&j->bindings[k], what));
        }
    }
}

static void write_slots(struct expo *e, const struct jobs_page *p) {
    slot_family(e, p, "moed_job_slot_step", "gauge", "the slot's last completed step",
                SLOT_STEP);
    slot_family(e, p, "moed_job_step_seconds", "gauge", "wall time of the slot's last step",
                SLOT_SECONDS);
    slot_family(e, p, "moed_job_step_comm_seconds", "gauge",
                "of the slot's last step, the time spent waiting on the data plane", SLOT_COMM);
    slot_family(e, p, "moed_job_alltoall_bytes_total", "counter",
                "bytes the slot sent in dispatch/combine all-to-alls in its current epoch "
                "(restarts from 0 when a recovery binds the job again)", SLOT_ALLTOALL);
    slot_family(e, p, "moed_job_allreduce_bytes_total", "counter",
                "bytes the slot sent in gradient and statistics reductions in its current "
                "epoch (restarts from 0 when a recovery binds the job again)", SLOT_ALLREDUCE);
}

/* ---- the workers' and the coordinator's ---- */

static const char *const worker_states[] = {"IDLE", "BUSY", "DEAD", "LEFT"};
static const Moed__V1__WorkerState worker_state_values[] = {
    MOED__V1__WORKER_STATE__WORKER_IDLE, MOED__V1__WORKER_STATE__WORKER_BUSY,
    MOED__V1__WORKER_STATE__WORKER_DEAD, MOED__V1__WORKER_STATE__WORKER_LEFT};

static void write_workers(struct expo *e, const struct coordinator *co, int64_t now) {
    char pod[16];
    expo_family(e, "moed_worker_state", "gauge",
                "1 for the state the worker is in, 0 for the others");
    for (int i = 0; i < co->n_workers; i++) {
        const struct worker *w = co->workers[i];
        snprintf(pod, sizeof pod, "%d", w->pod);
        for (int s = 0; s < 4; s++) {
            struct label l[] = {{"worker", w->id}, {"pod", pod}, {"state", worker_states[s]}};
            expo_sample(e, "moed_worker_state", l, 3, w->state == worker_state_values[s]);
        }
    }
    expo_family(e, "moed_worker_heartbeat_age_seconds", "gauge",
                "seconds since the worker's last heartbeat (or registration)");
    for (int i = 0; i < co->n_workers; i++) {
        const struct worker *w = co->workers[i];
        int64_t last = w->last_heartbeat_ms ? w->last_heartbeat_ms : w->registered_ms;
        snprintf(pod, sizeof pod, "%d", w->pod);
        struct label l[] = {{"worker", w->id}, {"pod", pod}};
        expo_sample(e, "moed_worker_heartbeat_age_seconds", l, 2,
                    last && now > last ? (double)(now - last) / 1000.0 : 0);
    }
}

static void write_coordinator(struct expo *e, const struct coordinator *co, int64_t now) {
    expo_family(e, "moed_coordinator_uptime_seconds", "gauge", "since this process started");
    expo_sample(e, "moed_coordinator_uptime_seconds", NULL, 0,
                (double)(now - co->started_ms) / 1000.0);
    expo_family(e, "moed_coordinator_jobs", "gauge",
                "every job the coordinator keeps, by state (ended ones until retention deletes "
                "them)");
    for (int s = 0; s < N_JOB_STATES; s++) {
        int n = 0;
        for (int i = 0; i < co->n_jobs; i++) n += co->jobs[i]->state == job_state_values[s];
        struct label l[] = {{"state", job_states[s]}};
        expo_sample(e, "moed_coordinator_jobs", l, 1, n);
    }
    expo_family(e, "moed_coordinator_step_reports_total", "counter",
                "step reports from workers handled since this process started");
    expo_sample(e, "moed_coordinator_step_reports_total", NULL, 0, (double)co->steps_reported);
}

moe_status metrics_render(struct coordinator *co, int64_t now_ms, char **out, size_t *len) {
    struct jobs_page p;
    CHECK(metrics_jobs(co, co->cfg.metrics_ended_jobs, &p.jobs, &p.n));
    struct expo e = {0};
    write_job_states(&e, &p);
    write_job_scalars(&e, &p);
    write_recovery_durations(&e, &p);
    write_expert_load(&e, &p);
    write_slots(&e, &p);
    write_workers(&e, co, now_ms);
    write_coordinator(&e, co, now_ms);
    if (co->rpc_stats) write_rpc(&e, co->rpc_stats);
    free(p.jobs);
    *out = expo_take(&e, len);
    return *out ? MOE_OK : moe_fail(MOE_ENOMEM, "out of memory writing /metrics");
}
