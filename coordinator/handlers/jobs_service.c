/*
 * jobs_service.c — the Jobs and Status services: what clients call (see handlers.h).
 * Submitting and cancelling go to policy/schedule.c and state/transitions.c, deleting to
 * state/jobs.c; every other call reads the tables (views of jobs and workers, the stored loss
 * curve, the model file). Lists come in pages (page_after, page_size).
 */
#include "handlers.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../policy/schedule.h"
#include "../state/events.h"
#include "../state/models.h"
#include "../state/transitions.h"
#include "../state/workers.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CO(ctx) ((struct coordinator *)(ctx))
#define LIST_STEPS_MAX 10000
#define LIST_STEPS_BYTES (3 << 20) // below the 4 MiB message limit, whatever the expert count
#define LIST_EVENTS_MAX 10000
#define LIST_EVENTS_BYTES (3 << 20)
/* Pages (docs/protocol.md "Paging"): a page_size of 0 (an older client) gets the default; a
 * page never packs beyond PAGE_BYTES, whatever the jobs' meshes or the workers' addresses. */
#define LIST_JOBS_DEFAULT 100
#define LIST_JOBS_MAX 1000
#define CLUSTER_WORKERS_DEFAULT 500
#define CLUSTER_WORKERS_MAX 5000
#define JOB_SLOTS_DEFAULT 500
#define JOB_SLOTS_MAX 5000
#define PAGE_BYTES (3 << 20)

/* The job a request names; NOT_FOUND (and NULL) when there is none. */
static struct job *job_or_fail(struct rpc_call *call, struct coordinator *co, const char *id) {
    struct job *j = id && id[0] ? jobs_find(co, id) : NULL;
    if (!j) rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %s", id && id[0] ? id : "(empty id)");
    return j;
}

static void reply_job_info(struct rpc_call *call, const struct job *j) {
    struct job_view v;
    job_view_fill(&v, j);
    rpc_reply(call, &v.info.base);
    job_view_free(&v);
}

void handle_submit_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__SubmitJobRequest *req = (const void *)m;
    struct job *j;
    /* Sizes first: nothing of a request beyond the limits is parsed (docs/security.md). */
    if (spec_check_sizes(strlen(req->spec), (const char *const *)req->overrides,
                         req->n_overrides) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        return;
    }
    moe_status s = schedule_submit(CO(ctx), req->spec, strlen(req->spec), req->overrides,
                                   req->n_overrides, req->resume_from, &j);
    if (req->resume_from[0] && (s == MOE_EINVAL || s == MOE_ENOTFOUND) &&
        !strncmp(moe_errmsg(), "--resume-from", 13)) { // the job named, not the spec, is wrong
        rpc_fail(call, s == MOE_ENOTFOUND ? GRPC_STATUS_NOT_FOUND
                                          : GRPC_STATUS_FAILED_PRECONDITION, "%s", moe_errmsg());
        return;
    }
    if (s == MOE_EINVAL || s == MOE_EFORMAT || s == MOE_ENOTFOUND || s == MOE_EIO) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        return;
    }
    if (s != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    reply_job_info(call, j);
    schedule_pass(CO(ctx));
}

void handle_cancel_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    if (job_is_final(j)) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s already ended: %s", j->id,
                 job_state_name(j->state));
        return;
    }
    if (job_cancel(CO(ctx), j) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    schedule_pass(CO(ctx)); // its workers may take the next job
    reply_job_info(call, j);
}

/* ---- pages ---- */

static int page_size(int32_t asked, int def, int max) {
    return asked <= 0 ? def : asked > max ? max : asked;
}

/* A page token is the number of the last job (or worker) of the page before: "" is 0, the
 * first page. 0 and INVALID_ARGUMENT for anything this coordinator never gave out. */
static int page_after(struct rpc_call *call, const char *token, long *after) {
    *after = 0;
    if (!token[0]) return 1;
    char *end;
    errno = 0;
    long v = strtol(token, &end, 10);
    if (token[0] < '0' || token[0] > '9' || *end || errno || v < 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "page_token \"%.40s\" is not a token this "
                 "coordinator gave out (send the next_page_token of the page before, or \"\")",
                 token);
        return 0;
    }
    *after = v;
    return 1;
}

/* Every job's state, counted for each page's summary; `total` counts those the request
 * matches. */
static void count_jobs(Moed__V1__ListJobsResponse *r, const struct coordinator *co,
                       int active_only) {
    for (int i = 0; i < co->n_jobs; i++) {
        const struct job *j = co->jobs[i];
        r->total += !active_only || !job_is_final(j);
        switch (j->state) {
        case MOED__V1__JOB_STATE__JOB_QUEUED: r->queued++; break;
        case MOED__V1__JOB_STATE__JOB_RUNNING: r->running++; break;
        case MOED__V1__JOB_STATE__JOB_SUCCEEDED: r->succeeded++; break;
        case MOED__V1__JOB_STATE__JOB_FAILED: r->failed++; break;
        case MOED__V1__JOB_STATE__JOB_CANCELLED: r->cancelled++; break;
        default: break;
        }
    }
}

struct job_page {
    struct job_view *views;
    Moed__V1__JobInfo **ptrs;
    size_t n;
    char next[24];
};

/* The jobs of one page, from the first above `after` that the request matches. */
static void fill_job_page(struct job_page *p, struct coordinator *co, int active_only,
                          long after, size_t max) {
    size_t bytes = 0;
    int i = jobs_index_after(co, after), last = -1;
    for (; i < co->n_jobs && p->n < max; i++) {
        struct job *j = co->jobs[i];
        if (active_only && job_is_final(j)) continue;
        /* a mesh bigger than a watch's sends no bindings: GetJob pages them */
        int n_slots = job_n_slots(j);
        job_view_fill_slots(&p->views[p->n], j, 0, n_slots <= JOB_WATCH_SLOTS ? n_slots : 0);
        bytes += protobuf_c_message_get_packed_size(&p->views[p->n].info.base) + 8;
        if (p->n && bytes > PAGE_BYTES) {
            job_view_free(&p->views[p->n]);
            break;
        }
        p->ptrs[p->n] = &p->views[p->n].info;
        p->n++;
        last = i;
    }
    for (; last >= 0 && i < co->n_jobs; i++) // more after this page?
        if (!active_only || !job_is_final(co->jobs[i])) {
            snprintf(p->next, sizeof p->next, "%ld", co->jobs[last]->num);
            break;
        }
}

void handle_list_jobs(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ListJobsRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    long after;
    if (!page_after(call, req->page_token, &after)) return;
    size_t max = (size_t)page_size(req->page_size, LIST_JOBS_DEFAULT, LIST_JOBS_MAX);
    struct job_page p = {calloc(max, sizeof *p.views), calloc(max, sizeof *p.ptrs), 0, ""};
    if (!p.views || !p.ptrs) {
        free(p.views);
        free(p.ptrs);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    fill_job_page(&p, co, req->active_only, after, max);
    Moed__V1__ListJobsResponse resp = MOED__V1__LIST_JOBS_RESPONSE__INIT;
    resp.n_jobs = p.n;
    resp.jobs = p.ptrs;
    resp.next_page_token = p.next;
    count_jobs(&resp, co, req->active_only);
    rpc_reply(call, &resp.base);
    for (size_t i = 0; i < p.n; i++) job_view_free(&p.views[i]);
    free(p.views);
    free(p.ptrs);
}

void handle_delete_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = job_or_fail(call, co, req->job_id);
    if (!j) return;
    if (!job_is_final(j)) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s is %s: only an ended job "
                 "(SUCCEEDED, FAILED or CANCELLED) can be deleted; cancel it first", j->id,
                 job_state_name(j->state));
        return;
    }
    if (job_delete(co, &j, 1) != MOE_OK) {
        LOG_ERROR("deleting %s: %s", req->job_id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot delete %s", req->job_id);
        return;
    }
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

/* The slots of GetJob's page: from the index the token names, at most `max`, and with their
 * bindings and the spec about PAGE_BYTES (one slot at least); the view is filled and next set
 * when more follow. 0 after failing the call for a token past the mesh. */
static int fill_slot_page(struct rpc_call *call, struct job_view *v, const struct job *j,
                          const Moed__V1__JobRef *req, char next[24]) {
    long first;
    int n_slots = job_n_slots(j), n = 0;
    if (!page_after(call, req->page_token, &first)) return 0;
    if (first > 0 && first >= n_slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "page_token \"%.40s\" is past the %d slots "
                 "of %s", req->page_token, n_slots, j->id);
        return 0;
    }
    int max = req->summary_only ? 0 : page_size(req->page_size, JOB_SLOTS_DEFAULT, JOB_SLOTS_MAX);
    job_view_fill_slots(v, j, (int)first, max < n_slots - (int)first ? max : n_slots - (int)first);
    size_t bytes = strlen(j->spec_json); // a spec may be 1 MiB, a slot's links hundreds
    for (; n < (int)v->n_slots; n++) {
        Moed__V1__SlotBinding b = job_slot_binding(j, (int)first + n);
        bytes += protobuf_c_message_get_packed_size(&v->slot[n].base) +
                 protobuf_c_message_get_packed_size(&b.base) + 16;
        if (n && bytes > PAGE_BYTES) break;
    }
    v->n_slots = (size_t)n;
    size_t bound = 0; // the page's bindings: those of its first n slots, in the same order
    while (bound < v->info.n_bindings && v->info.bindings[bound]->pod * j->slots +
                                                v->info.bindings[bound]->slot < first + n)
        bound++;
    v->info.n_bindings = bound;
    if (!req->summary_only && first + n < n_slots) snprintf(next, 24, "%ld", first + n);
    return 1;
}

void handle_get_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    Moed__V1__JobStatus st = MOED__V1__JOB_STATUS__INIT;
    struct job_view v;
    char next[24] = "";
    Moed__V1__PodSummary *pods = calloc((size_t)j->pods, sizeof *pods);
    Moed__V1__PodSummary **pod_ptrs = calloc((size_t)j->pods, sizeof *pod_ptrs);
    if (!pods || !pod_ptrs) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else if (fill_slot_page(call, &v, j, req, next)) {
        job_pod_summaries(CO(ctx), j, pods, pod_ptrs);
        st.job = &v.info;
        st.last = j->last;
        Moed__V1__Event *events[JOB_RECENT_EVENTS];
        st.n_events = job_recent_events(j, events);
        st.events = events;
        st.spec_json = j->spec_json;
        st.eta_seconds = job_eta_seconds(j);
        st.n_slots = v.n_slots;
        st.slots = v.slot_ptrs;
        st.next_page_token = next;
        st.n_pods = (size_t)j->pods;
        st.pods = pod_ptrs;
        rpc_reply(call, &st.base);
        job_view_free(&v);
    }
    free(pods);
    free(pod_ptrs);
}

void handle_watch_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__WatchJobRequest *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    /* The first update is the whole picture: state, last metrics, recent events. */
    struct job_update x;
    job_update_fill(&x, CO(ctx), j);
    Moed__V1__Event *events[JOB_RECENT_EVENTS];
    x.u.n_new_events = job_recent_events(j, events);
    x.u.new_events = events;
    rpc_stream_send(call, &x.u.base);
    job_update_free(&x);
    if (job_is_final(j))
        rpc_stream_finish(call, GRPC_STATUS_OK, "");
    else if (job_watch(j, call) != MOE_OK)
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
}

/* FetchModel streams the file a chunk at a time: the next read happens when the previous
 * chunk has been handed to the network, so a large model never sits in memory whole. */
struct fetch {
    int fd;
    int64_t offset, total;
    char job_id[24];
    uint8_t *buf;
};

static void fetch_closed(struct rpc_call *c, void *arg) {
    (void)c;
    struct fetch *f = arg;
    close(f->fd);
    free(f->buf);
    free(f);
}

static void fetch_next(struct rpc_call *c, void *arg) {
    struct fetch *f = arg;
    if (f->offset >= f->total) {
        rpc_stream_finish(c, GRPC_STATUS_OK, "");
        return;
    }
    int64_t want = f->total - f->offset;
    if (want > RPC_MODEL_CHUNK) want = RPC_MODEL_CHUNK;
    ssize_t got = pread(f->fd, f->buf, (size_t)want, f->offset);
    if (got != want) {
        rpc_stream_finish(c, GRPC_STATUS_DATA_LOSS, "the stored model is shorter than recorded");
        return;
    }
    Moed__V1__ModelChunk chunk = MOED__V1__MODEL_CHUNK__INIT;
    chunk.job_id = f->job_id;
    chunk.offset = f->offset;
    chunk.total_bytes = f->total;
    chunk.data.len = (size_t)got;
    chunk.data.data = f->buf;
    f->offset += got;
    rpc_stream_send(c, &chunk.base);
}

void handle_fetch_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = job_or_fail(call, co, req->job_id);
    if (!j) return;
    if (j->state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s has no model: it is %s", j->id,
                 job_state_name(j->state));
        return;
    }
    struct fetch *f = calloc(1, sizeof *f);
    if (!f || !(f->buf = malloc(RPC_MODEL_CHUNK))) {
        free(f);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (model_open(co, j, &f->fd, &f->total) != MOE_OK) {
        free(f->buf);
        free(f);
        rpc_fail(call, GRPC_STATUS_DATA_LOSS, "%s", moe_errmsg());
        return;
    }
    snprintf(f->job_id, sizeof f->job_id, "%s", j->id);
    rpc_stream_on_close(call, fetch_closed, f);
    rpc_stream_on_sent(call, fetch_next, f);
    fetch_next(call, f);
}

/* ---- the loss curve ---- */

struct step_list {
    Moed__V1__StepMetrics **steps;
    size_t n, max, bytes;
};

static int collect_step(const Moed__V1__StepMetrics *m, void *arg) {
    struct step_list *l = arg;
    size_t size = protobuf_c_message_get_packed_size(&m->base) + 8;
    if (l->n >= l->max || (l->n && l->bytes + size > LIST_STEPS_BYTES)) return 1;
    Moed__V1__StepMetrics *copy = (Moed__V1__StepMetrics *)pb_clone(&m->base);
    if (!copy) return 1;
    l->steps[l->n++] = copy;
    l->bytes += size;
    return 0;
}

void handle_list_steps(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ListStepsRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = job_or_fail(call, co, req->job_id);
    if (!j) return;
    struct step_list l = {0};
    l.max = req->max_steps > 0 && req->max_steps <= LIST_STEPS_MAX ? (size_t)req->max_steps
                                                                    : LIST_STEPS_MAX;
    l.steps = calloc(l.max, sizeof *l.steps);
    if (!l.steps) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    moe_status s = store_steps_scan(co->store, j->id, req->from_step > 1 ? req->from_step : 1,
                                    collect_step, &l);
    if (s != MOE_OK) {
        LOG_ERROR("%s: reading its steps: %s", j->id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot read the steps of %s", j->id);
    } else {
        Moed__V1__ListStepsResponse resp = MOED__V1__LIST_STEPS_RESPONSE__INIT;
        resp.n_steps = l.n;
        resp.steps = l.steps;
        rpc_reply(call, &resp.base);
    }
    for (size_t i = 0; i < l.n; i++) moed__v1__step_metrics__free_unpacked(l.steps[i], NULL);
    free(l.steps);
}

/* ---- the whole history of events ---- */

struct event_list {
    Moed__V1__Event **events;
    size_t n, max, bytes;
};

static int collect_event(int64_t seq, const Moed__V1__Event *e, void *arg) {
    struct event_list *l = arg;
    size_t size = protobuf_c_message_get_packed_size(&e->base) + 16; // + seq, + framing
    if (l->n >= l->max || (l->n && l->bytes + size > LIST_EVENTS_BYTES)) return 1;
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e->base);
    if (!copy) return 1;
    copy->seq = seq; // the key's number: events stored before Event.seq existed lack the field
    l->events[l->n++] = copy;
    l->bytes += size;
    return 0;
}

void handle_list_events(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ListEventsRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = job_or_fail(call, co, req->job_id);
    if (!j) return;
    struct event_list l = {0};
    l.max = req->max_events > 0 && req->max_events <= LIST_EVENTS_MAX ? (size_t)req->max_events
                                                                       : LIST_EVENTS_MAX;
    l.events = calloc(l.max, sizeof *l.events);
    if (!l.events) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    int64_t from = req->from_seq > 0 ? req->from_seq : 0;
    moe_status s = store_events_range(co->store, j->id, from, collect_event, &l);
    if (s != MOE_OK) {
        LOG_ERROR("%s: reading its events: %s", j->id, moe_errmsg());
        rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot read the events of %s", j->id);
    } else {
        Moed__V1__ListEventsResponse resp = MOED__V1__LIST_EVENTS_RESPONSE__INIT;
        resp.n_events = l.n;
        resp.events = l.events;
        resp.next_seq = l.n ? l.events[l.n - 1]->seq + 1 : from;
        rpc_reply(call, &resp.base);
    }
    for (size_t i = 0; i < l.n; i++) moed__v1__event__free_unpacked(l.events[i], NULL);
    free(l.events);
}

/* ---- Status ---- */

void handle_get_cluster(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__GetClusterRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    int64_t now = moe_wall_ms();
    long after;
    if (!page_after(call, req->page_token, &after)) return;
    int max = req->summary_only
                  ? 0
                  : page_size(req->page_size, CLUSTER_WORKERS_DEFAULT, CLUSTER_WORKERS_MAX);
    struct cluster_view v;
    if (cluster_view_fill(&v, co, now, after, max, PAGE_BYTES) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    v.st.coordinator_version = MOED_VERSION;
    v.st.coordinator_address = co->address;
    v.st.started_unix_ms = co->started_ms;
    v.st.uptime_seconds = (double)(now - co->started_ms) / 1000.0;
    v.st.heartbeat_timeout_ms = co->cfg.heartbeat_timeout_ms;
    rpc_reply(call, &v.st.base);
    cluster_view_free(&v);
}
