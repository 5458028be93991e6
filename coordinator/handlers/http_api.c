/*
 * http_api.c — the JSON the live page polls (see http.h), built with cJSON from the same
 * views the gRPC handlers answer with (state/jobs.h job_view, the stored steps). Field names
 * follow proto/moed.proto's where the message has one.
 * Lists are paged like ListJobs and ListSteps (docs/protocol.md "Paging"), so no request makes
 * the coordinator build more than a page.
 */
#include "http.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"
#include "../state/jobs.h"
#include "../state/workers.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define API_JOBS_DEFAULT 50
#define API_JOBS_MAX 500
#define API_STEPS_DEFAULT 2000
#define API_STEPS_MAX 10000

static void answer_json(struct http_answer *a, int status, cJSON *j) {
    a->status = status;
    a->body = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!a->body) {
        a->status = 500;
        a->body = strdup("{\"error\":\"out of memory\"}");
    }
    a->len = a->body ? strlen(a->body) : 0;
}

static void answer_error(struct http_answer *a, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void answer_error(struct http_answer *a, int status, const char *fmt, ...) {
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "error", msg);
    answer_json(a, status, j);
}

/* A query parameter as an integer in [lo, hi]; absent or "" gives `def`. 0 and a 400 answer
 * naming the parameter when it is anything else. */
static int query_long(struct http_answer *a, const char *name, const char *text, long lo,
                      long hi, long def, long *out) {
    *out = def;
    if (!text || !text[0]) return 1;
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (*end || errno || v < lo || v > hi) {
        answer_error(a, 400, "%s=%.40s: an integer from %ld to %ld", name, text, lo, hi);
        return 0;
    }
    *out = v;
    return 1;
}

static const char *state_name(Moed__V1__JobState s) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&moed__v1__job_state__descriptor, (int)s);
    return v ? v->name + 4 : "UNKNOWN"; // "JOB_RUNNING" -> "RUNNING"
}

static cJSON *job_summary(const struct job *j) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "job_id", j->id);
    cJSON_AddStringToObject(o, "name", j->name);
    cJSON_AddStringToObject(o, "state", state_name(j->state));
    cJSON_AddNumberToObject(o, "step", (double)j->step);
    cJSON_AddNumberToObject(o, "total_steps", (double)j->total_steps);
    cJSON_AddNumberToObject(o, "committed_step", (double)j->committed_step);
    cJSON_AddNumberToObject(o, "loss", j->loss);
    cJSON_AddNumberToObject(o, "val_loss", j->val_loss);
    cJSON_AddNumberToObject(o, "bits_per_byte", j->last ? j->last->bits_per_byte : 0);
    cJSON_AddNumberToObject(o, "val_bits_per_byte", j->val_bits_per_byte);
    cJSON_AddNumberToObject(o, "tokens_per_second", j->last ? j->last->tokens_per_second : 0);
    cJSON_AddNumberToObject(o, "pods", j->pods);
    cJSON_AddNumberToObject(o, "slots", j->slots);
    cJSON_AddStringToObject(o, "backend", j->backend);
    cJSON_AddNumberToObject(o, "epoch", (double)j->epoch);
    cJSON_AddNumberToObject(o, "recoveries", j->recoveries);
    cJSON_AddNumberToObject(o, "moves", j->moves);
    cJSON_AddBoolToObject(o, "recovering", j->recovering);
    cJSON_AddStringToObject(o, "held", j->rec && j->rec->part.since_ms ? j->rec->part.text : "");
    cJSON_AddNumberToObject(o, "created_unix_ms", (double)j->created_ms);
    cJSON_AddNumberToObject(o, "started_unix_ms", (double)j->started_ms);
    cJSON_AddNumberToObject(o, "finished_unix_ms", (double)j->finished_ms);
    cJSON_AddStringToObject(o, "error", j->error);
    return o;
}

void http_api_jobs(struct coordinator *co, const char *page_token, const char *page_size,
                   const char *active_only, struct http_answer *a) {
    long after, size, active;
    if (!query_long(a, "page_token", page_token, 0, 1L << 62, 0, &after) ||
        !query_long(a, "page_size", page_size, 1, API_JOBS_MAX, API_JOBS_DEFAULT, &size) ||
        !query_long(a, "active_only", active_only, 0, 1, 0, &active))
        return;
    cJSON *o = cJSON_CreateObject(), *list = cJSON_AddArrayToObject(o, "jobs");
    int n = 0, i = jobs_index_after(co, after), last = -1;
    for (; i < co->n_jobs && n < size; i++) {
        const struct job *j = co->jobs[i];
        if (active && job_is_final(j)) continue;
        cJSON_AddItemToArray(list, job_summary(j));
        n++, last = i;
    }
    char next[24] = "";
    for (; last >= 0 && i < co->n_jobs; i++) // more after this page?
        if (!active || !job_is_final(co->jobs[i])) {
            snprintf(next, sizeof next, "%ld", co->jobs[last]->num);
            break;
        }
    cJSON_AddStringToObject(o, "next_page_token", next);
    cJSON_AddNumberToObject(o, "total", co->n_jobs);
    answer_json(a, 200, o);
}

static cJSON *slot_json(const Moed__V1__SlotStatus *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "pod", s->pod);
    cJSON_AddNumberToObject(o, "slot", s->slot);
    cJSON_AddStringToObject(o, "worker_id", s->worker_id);
    cJSON_AddStringToObject(o, "worker_address", s->worker_address);
    cJSON_AddNumberToObject(o, "step", (double)s->step);
    cJSON_AddNumberToObject(o, "step_seconds", s->step_seconds);
    cJSON_AddNumberToObject(o, "comm_seconds", s->comm_seconds);
    cJSON_AddNumberToObject(o, "total_bytes_alltoall", (double)s->total_bytes_alltoall);
    cJSON_AddNumberToObject(o, "total_bytes_allreduce", (double)s->total_bytes_allreduce);
    cJSON_AddBoolToObject(o, "ended", s->ended);
    cJSON_AddBoolToObject(o, "ok", s->ok);
    cJSON_AddStringToObject(o, "error", s->error);
    cJSON *links = cJSON_AddArrayToObject(o, "links");
    for (size_t i = 0; links && i < s->n_links; i++) {
        cJSON *l = cJSON_CreateObject();
        cJSON_AddNumberToObject(l, "pod", s->links[i]->pod);
        cJSON_AddNumberToObject(l, "slot", s->links[i]->slot);
        cJSON_AddStringToObject(l, "transport", s->links[i]->transport);
        cJSON_AddItemToArray(links, l);
    }
    return o;
}

/* The numbers of a step the page draws (not the state hash, not the per-expert detail of
 * every step: the latest step carries expert_load). */
static cJSON *step_json(const Moed__V1__StepMetrics *m, int with_load) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "step", (double)m->step);
    cJSON_AddNumberToObject(o, "loss", m->loss);
    cJSON_AddNumberToObject(o, "ce", m->ce);
    cJSON_AddNumberToObject(o, "kl", m->kl);
    cJSON_AddNumberToObject(o, "val_loss", m->val_loss);
    cJSON_AddNumberToObject(o, "tokens_per_second", m->tokens_per_second);
    cJSON_AddNumberToObject(o, "seconds", m->seconds);
    cJSON_AddNumberToObject(o, "dropped", (double)m->dropped);
    cJSON_AddNumberToObject(o, "reported_unix_ms", (double)m->reported_unix_ms);
    if (with_load) {
        cJSON *load = cJSON_AddArrayToObject(o, "expert_load");
        for (size_t i = 0; load && i < m->n_expert_load; i++)
            cJSON_AddItemToArray(load, cJSON_CreateNumber(m->expert_load[i]));
    }
    return o;
}

static cJSON *pod_json(const Moed__V1__PodSummary *p) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "pod", p->pod);
    cJSON_AddNumberToObject(o, "slots", p->slots);
    cJSON_AddNumberToObject(o, "bound", p->bound);
    cJSON_AddNumberToObject(o, "alive", p->alive);
    cJSON_AddNumberToObject(o, "training", p->training);
    cJSON_AddNumberToObject(o, "ended", p->ended);
    cJSON_AddNumberToObject(o, "failed", p->failed);
    cJSON_AddNumberToObject(o, "min_step", (double)p->min_step);
    cJSON_AddNumberToObject(o, "max_step", (double)p->max_step);
    cJSON_AddStringToObject(o, "worst", p->worst);
    return o;
}

/* Every slot of a mesh of up to JOB_WATCH_SLOTS slots ("slots"), as WatchJob sends them;
 * a bigger mesh by pod ("pod_summaries", PodSummary's fields), so that a poll of the page costs the
 * same at 10 slots and at 4,096. */
static void add_slots(struct coordinator *co, const struct job *j, cJSON *o) {
    cJSON *slots = cJSON_AddArrayToObject(o, "slots");
    int n = job_n_slots(j);
    if (n <= JOB_WATCH_SLOTS) {
        struct job_view v;
        job_view_fill(&v, j);
        for (size_t k = 0; slots && k < v.n_slots; k++)
            cJSON_AddItemToArray(slots, slot_json(v.slot_ptrs[k]));
        job_view_free(&v);
        return;
    }
    Moed__V1__PodSummary *ps = calloc((size_t)j->pods, sizeof *ps);
    Moed__V1__PodSummary **ptrs = calloc((size_t)j->pods, sizeof *ptrs);
    cJSON *pods = ps && ptrs ? cJSON_AddArrayToObject(o, "pod_summaries") : NULL;
    if (pods) job_pod_summaries(co, j, ps, ptrs);
    for (int p = 0; pods && p < j->pods; p++) cJSON_AddItemToArray(pods, pod_json(ptrs[p]));
    free(ps);
    free(ptrs);
}

void http_api_job(struct coordinator *co, const char *id, struct http_answer *a) {
    struct job *j = jobs_find(co, id);
    if (!j) {
        answer_error(a, 404, "no job %.40s", id);
        return;
    }
    cJSON *o = job_summary(j);
    cJSON_AddNumberToObject(o, "eta_seconds", job_eta_seconds(j));
    if (j->last) cJSON_AddItemToObject(o, "last", step_json(j->last, 1));
    add_slots(co, j, o);
    Moed__V1__Event *events[JOB_RECENT_EVENTS];
    size_t n = job_recent_events(j, events);
    cJSON *ev = cJSON_AddArrayToObject(o, "events");
    for (size_t i = 0; ev && i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "unix_ms", (double)events[i]->unix_ms);
        cJSON_AddStringToObject(e, "kind", events[i]->kind);
        cJSON_AddStringToObject(e, "message", events[i]->message);
        cJSON_AddItemToArray(ev, e);
    }
    answer_json(a, 200, o);
}

struct step_page {
    cJSON *list;
    long n, max;
};

static int add_step(const Moed__V1__StepMetrics *m, void *arg) {
    struct step_page *p = arg;
    if (p->n >= p->max) return 1;
    cJSON_AddItemToArray(p->list, step_json(m, 0));
    p->n++;
    return 0;
}

void http_api_steps(struct coordinator *co, const char *id, const char *from, const char *max,
                    struct http_answer *a) {
    struct job *j = jobs_find(co, id);
    if (!j) {
        answer_error(a, 404, "no job %.40s", id);
        return;
    }
    long first, n;
    if (!query_long(a, "from", from, 0, 1L << 62, 1, &first) ||
        !query_long(a, "max", max, 1, API_STEPS_MAX, API_STEPS_DEFAULT, &n))
        return;
    cJSON *o = cJSON_CreateObject();
    struct step_page p = {cJSON_AddArrayToObject(o, "steps"), 0, n};
    if (store_steps_scan(co->store, j->id, first > 1 ? first : 1, add_step, &p) != MOE_OK) {
        LOG_ERROR("%s: reading its steps for the page: %s", j->id, moe_errmsg());
        cJSON_Delete(o);
        answer_error(a, 500, "the coordinator cannot read the steps of %s", j->id);
        return;
    }
    answer_json(a, 200, o);
}

void http_api_cluster(struct coordinator *co, struct http_answer *a) {
    int64_t now = moe_wall_ms();
    int by_state[5] = {0};
    for (int i = 0; i < co->n_workers; i++) {
        int s = (int)co->workers[i]->state;
        if (s >= 0 && s < 5) by_state[s]++;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "coordinator_address", co->address);
    cJSON_AddStringToObject(o, "coordinator_version", MOED_VERSION);
    cJSON_AddNumberToObject(o, "uptime_seconds", (double)(now - co->started_ms) / 1000.0);
    cJSON_AddNumberToObject(o, "workers_total", co->n_workers);
    cJSON_AddNumberToObject(o, "workers_idle", by_state[MOED__V1__WORKER_STATE__WORKER_IDLE]);
    cJSON_AddNumberToObject(o, "workers_busy", by_state[MOED__V1__WORKER_STATE__WORKER_BUSY]);
    cJSON_AddNumberToObject(o, "workers_dead", by_state[MOED__V1__WORKER_STATE__WORKER_DEAD]);
    cJSON_AddNumberToObject(o, "workers_left", by_state[MOED__V1__WORKER_STATE__WORKER_LEFT]);
    answer_json(a, 200, o);
}
