/*
 * services.c — the coordinator's RPC handlers: Jobs and Status for clients, Cluster for
 * workers. Each handler checks its request, calls into coordinator.c (recovery.c for the
 * fault and restore reports of a recoverable mesh), and answers once.
 * Bad requests get a status naming what is wrong; nothing here exits or aborts.
 */
#include "coordinator.h"

#include "../common/log.h"
#include "../proto/methods.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CO(ctx) ((struct coordinator *)(ctx))

static struct job *job_or_fail(struct rpc_call *call, struct coordinator *co, const char *id) {
    struct job *j = id && id[0] ? coordinator_find_job(co, id) : NULL;
    if (!j) rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %s", id && id[0] ? id : "(empty id)");
    return j;
}

static void model_path(const struct coordinator *co, const struct job *j, char *out, size_t cap,
                       int part) {
    snprintf(out, cap, "%s/%s.safetensors%s", co->models_dir, j->id, part ? ".part" : "");
}

/* ---- Jobs ---- */

static void submit_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__SubmitJobRequest *req = (const void *)m;
    struct job *j;
    moe_status s = coordinator_submit(CO(ctx), req->spec, strlen(req->spec), req->overrides,
                                      req->n_overrides, &j);
    if (s == MOE_EINVAL || s == MOE_EFORMAT || s == MOE_ENOTFOUND || s == MOE_EIO) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "%s", moe_errmsg());
        return;
    }
    if (s != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    struct job_view v;
    job_view_fill(&v, j);
    rpc_reply(call, &v.info.base);
    job_view_free(&v);
    coordinator_schedule(CO(ctx));
}

static void cancel_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    if (job_is_final(j)) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s already ended: %s", j->id,
                 job_state_name(j->state));
        return;
    }
    if (coordinator_cancel(CO(ctx), j) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    struct job_view v;
    job_view_fill(&v, j);
    rpc_reply(call, &v.info.base);
    job_view_free(&v);
}

static void list_jobs(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ListJobsRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    Moed__V1__ListJobsResponse resp = MOED__V1__LIST_JOBS_RESPONSE__INIT;
    struct job_view *views = calloc((size_t)co->n_jobs + 1, sizeof *views);
    Moed__V1__JobInfo **ptrs = calloc((size_t)co->n_jobs + 1, sizeof *ptrs);
    if (!views || !ptrs) {
        free(views);
        free(ptrs);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    size_t n = 0;
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (req->active_only && job_is_final(j)) continue;
        job_view_fill(&views[n], j);
        ptrs[n] = &views[n].info;
        n++;
    }
    resp.n_jobs = n;
    resp.jobs = ptrs;
    rpc_reply(call, &resp.base);
    for (size_t i = 0; i < n; i++) job_view_free(&views[i]);
    free(views);
    free(ptrs);
}

/* The job's recent events, oldest first, as pointers into its ring. */
static size_t recent_events(const struct job *j, Moed__V1__Event **out) {
    for (int i = 0; i < j->n_recent; i++) out[i] = j->recent[(j->recent_head + i) % JOB_RECENT_EVENTS];
    return (size_t)j->n_recent;
}

static void get_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    Moed__V1__JobStatus st = MOED__V1__JOB_STATUS__INIT;
    struct job_view v;
    job_view_fill(&v, j);
    st.job = &v.info;
    st.last = j->last;
    Moed__V1__Event *events[JOB_RECENT_EVENTS];
    st.n_events = recent_events(j, events);
    st.events = events;
    st.spec_json = j->spec_json;
    st.eta_seconds = job_eta_seconds(j);
    st.n_slots = v.n_slots;
    st.slots = v.slot_ptrs;
    rpc_reply(call, &st.base);
    job_view_free(&v);
}

static void watch_closed(struct rpc_call *c, void *arg) {
    struct watcher *w = arg;
    if (w->prev)
        w->prev->next = w->next;
    else if (w->job)
        w->job->watchers = w->next;
    if (w->next) w->next->prev = w->prev;
    free(w);
}

static void watch_job(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__WatchJobRequest *req = (const void *)m;
    struct job *j = job_or_fail(call, CO(ctx), req->job_id);
    if (!j) return;
    /* The first update is the whole picture: state, last metrics, recent events. */
    Moed__V1__JobUpdate u = MOED__V1__JOB_UPDATE__INIT;
    struct job_view v;
    job_view_fill(&v, j);
    u.job = &v.info;
    u.last = j->last;
    Moed__V1__Event *events[JOB_RECENT_EVENTS];
    u.n_new_events = recent_events(j, events);
    u.new_events = events;
    u.eta_seconds = job_eta_seconds(j);
    u.n_slots = v.n_slots;
    u.slots = v.slot_ptrs;
    rpc_stream_send(call, &u.base);
    job_view_free(&v);
    if (job_is_final(j)) {
        rpc_stream_finish(call, GRPC_STATUS_OK, "");
        return;
    }
    struct watcher *w = calloc(1, sizeof *w);
    if (!w) {
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = call;
    w->job = j;
    w->next = j->watchers;
    if (j->watchers) j->watchers->prev = w;
    j->watchers = w;
    rpc_stream_on_close(call, watch_closed, w);
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

static void fetch_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobRef *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = job_or_fail(call, co, req->job_id);
    if (!j) return;
    if (j->state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s has no model: it is %s", j->id,
                 job_state_name(j->state));
        return;
    }
    char path[1200];
    model_path(co, j, path, sizeof path, 0);
    struct fetch *f = calloc(1, sizeof *f);
    if (!f || !(f->buf = malloc(RPC_MODEL_CHUNK))) {
        if (f) free(f);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (f->fd < 0 || fstat(f->fd, &sb) != 0) {
        LOG_ERROR("%s: cannot open its model %s: %s", j->id, path, strerror(errno));
        if (f->fd >= 0) close(f->fd);
        free(f->buf);
        free(f);
        rpc_fail(call, GRPC_STATUS_DATA_LOSS, "the model of %s is missing on the coordinator", j->id);
        return;
    }
    f->total = sb.st_size;
    snprintf(f->job_id, sizeof f->job_id, "%s", j->id);
    rpc_stream_on_close(call, fetch_closed, f);
    rpc_stream_on_sent(call, fetch_next, f);
    fetch_next(call, f);
}

/* ---- the loss curve ---- */

#define LIST_STEPS_MAX 10000
#define LIST_STEPS_BYTES (3 << 20) // below the 4 MiB message limit, whatever the expert count

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

static void list_steps(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
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

/* ---- Status ---- */

static void get_cluster(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct coordinator *co = CO(ctx);
    int64_t now = now_ms();
    Moed__V1__ClusterStatus st = MOED__V1__CLUSTER_STATUS__INIT;
    st.coordinator_version = MOED_VERSION;
    st.coordinator_address = co->address;
    st.started_unix_ms = co->started_ms;
    st.uptime_seconds = (now - co->started_ms) / 1000.0;
    st.heartbeat_timeout_ms = co->cfg.heartbeat_timeout_ms;
    int n = co->n_workers;
    Moed__V1__WorkerInfo *infos = calloc((size_t)n + 1, sizeof *infos);
    Moed__V1__WorkerInfo **wp = calloc((size_t)n + 1, sizeof *wp);
    /* pods: the distinct pod numbers of registered workers, ascending */
    Moed__V1__PodInfo *pods = calloc((size_t)n + 1, sizeof *pods);
    Moed__V1__PodInfo **pp = calloc((size_t)n + 1, sizeof *pp);
    if (!infos || !wp || !pods || !pp) {
        free(infos), free(wp), free(pods), free(pp);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    size_t n_pods = 0;
    for (int i = 0; i < n; i++) {
        struct worker *w = co->workers[i];
        Moed__V1__WorkerInfo wi = MOED__V1__WORKER_INFO__INIT;
        wi.worker_id = w->id;
        wi.address = w->address;
        wi.pod = w->pod;
        wi.state = w->state;
        wi.version = w->version;
        wi.host = w->host;
        wi.pid = w->pid;
        wi.last_heartbeat_unix_ms = w->last_heartbeat_ms;
        wi.ms_since_heartbeat = now - w->last_heartbeat_ms;
        wi.job_id = w->job_id;
        wi.slot = w->slot;
        wi.registered_unix_ms = w->registered_ms;
        wi.cpus = w->cpus;
        wi.data_address = w->data_address;
        char *extra[1] = {w->extra_data_address};
        wi.n_extra_data_addresses = w->extra_data_address[0] ? 1 : 0;
        wi.extra_data_addresses = extra;
        wi.mpi_rank = w->mpi_rank;
        wi.mpi_size = w->mpi_size;
        wi.mpi_job = w->mpi_job;
        infos[i] = wi;
        wp[i] = &infos[i];
        if (w->state == MOED__V1__WORKER_STATE__WORKER_LEFT) continue;
        size_t k = 0;
        while (k < n_pods && pods[k].pod != w->pod) k++;
        if (k == n_pods) {
            Moed__V1__PodInfo pi = MOED__V1__POD_INFO__INIT;
            pi.pod = w->pod;
            pods[n_pods++] = pi;
        }
        pods[k].workers++;
        if (w->state == MOED__V1__WORKER_STATE__WORKER_IDLE || w->state == MOED__V1__WORKER_STATE__WORKER_BUSY)
            pods[k].alive++;
    }
    for (size_t a = 1; a < n_pods; a++) // insertion sort by pod number
        for (size_t b = a; b > 0 && pods[b - 1].pod > pods[b].pod; b--) {
            Moed__V1__PodInfo t = pods[b];
            pods[b] = pods[b - 1];
            pods[b - 1] = t;
        }
    for (size_t k = 0; k < n_pods; k++) {
        pods[k].healthy = pods[k].alive == pods[k].workers;
        pp[k] = &pods[k];
    }
    st.n_workers = (size_t)n;
    st.workers = wp;
    st.n_pods = n_pods;
    st.pods = pp;
    for (int i = 0; i < co->n_jobs; i++) {
        st.jobs_queued += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_QUEUED;
        st.jobs_running += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    }
    st.jobs_total = co->n_jobs;
    rpc_reply(call, &st.base);
    free(infos), free(wp), free(pods), free(pp);
}

/* ---- Cluster (workers) ---- */

static void register_worker(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__RegisterRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    if (!req->address[0] || !strchr(req->address, ':')) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "address \"%s\" is not host:port", req->address);
        return;
    }
    if (req->pod < 0) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "pod %d is negative", req->pod);
        return;
    }
    if (req->data_address[0] && !strchr(req->data_address, ':')) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "data_address \"%s\" is not host:port",
                 req->data_address);
        return;
    }
    if (req->mpi_size < 0 || (req->mpi_size > 0 && (req->mpi_rank < 0 ||
                                                    req->mpi_rank >= req->mpi_size ||
                                                    !req->mpi_job[0]))) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "mpi rank %d of size %d (job \"%s\"): want "
                 "0 <= rank < size and a job id, or size 0", req->mpi_rank, req->mpi_size,
                 req->mpi_job);
        return;
    }
    struct worker *w = req->worker_id[0] ? coordinator_find_worker(co, req->worker_id) : NULL;
    int known = w != NULL;
    if (!w) {
        if (coordinator_add_worker(co, &w) != MOE_OK || coordinator_save_meta(co) != MOE_OK) {
            rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
            return;
        }
        w->registered_ms = now_ms();
    }
    snprintf(w->address, sizeof w->address, "%s", req->address);
    w->pod = req->pod;
    snprintf(w->version, sizeof w->version, "%s", req->version);
    snprintf(w->host, sizeof w->host, "%s", req->host);
    w->pid = req->pid;
    w->cpus = req->cpus;
    snprintf(w->data_address, sizeof w->data_address, "%s", req->data_address);
    w->extra_data_address[0] = 0;
    if (req->n_extra_data_addresses && strchr(req->extra_data_addresses[0], ':'))
        snprintf(w->extra_data_address, sizeof w->extra_data_address, "%s",
                 req->extra_data_addresses[0]);
    w->mpi_rank = req->mpi_rank;
    w->mpi_size = req->mpi_size;
    snprintf(w->mpi_job, sizeof w->mpi_job, "%s", req->mpi_job);
    w->last_heartbeat_ms = now_ms();
    /* The channel first, and kept when the address did not change: a recovery fences the
     * worker on it (one its registration starts, or one resumed at our start), and replacing
     * the channel would cancel that call and lose the worker. */
    if ((!w->channel || strcmp(rpc_channel_target(w->channel), w->address) != 0) &&
        coordinator_connect_worker(co, w) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    /* The slot we had bound it to, if we had (a worker that re-registers after our restart). */
    struct job *bound = w->job_id[0] ? coordinator_find_job(co, w->job_id) : NULL;
    int bound_slot = bound ? job_slot_of(bound, w) : -1;
    /* Re-registration after our restart: a worker still running a slot we think it runs (the
     * same job, slot and epoch) is reattached; anything else it runs will be told to stop by
     * its next heartbeat. */
    struct job *j = req->job_id[0] ? coordinator_find_job(co, req->job_id) : NULL;
    int k = j ? job_slot_of(j, w) : -1;
    int same_epoch = j && (!req->epoch || req->epoch == j->epoch);
    /* A recoverable mesh's worker may hold a frozen state of an older epoch, waiting for the
     * RunSlot of the one it is bound in: it keeps its slot (recovery_worker_state decides). */
    int behind = j && j->recoverable && req->epoch && req->epoch < j->epoch;
    if (j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && k >= 0 && (same_epoch || behind) &&
        !recovery_dropped(j, w)) {
        snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        w->slot = k % j->slots;
        w->epoch = j->epoch;
        if (same_epoch && req->step > j->bindings[k].step) j->bindings[k].step = (long)req->step;
        if (same_epoch && k == 0 && req->step > j->step) j->step = req->step;
        char held[96] = "";
        if (!same_epoch || req->holding)
            snprintf(held, sizeof held, ", %s epoch %llu", req->holding ? "holding its state of"
                     : "still in", (unsigned long long)req->epoch);
        if (j->pods * j->slots == 1)
            coordinator_event(co, j, 1, "reattached", "%s reattached at step %ld%s", w->id,
                              (long)req->step, held);
        else
            coordinator_event(co, j, 1, "reattached", "%s reattached to slot (%d, %d) at step "
                              "%ld%s", w->id, k / j->slots, k % j->slots, (long)req->step, held);
        if (j->recoverable)
            recovery_worker_state(co, j, k, w, req->epoch, req->holding, "re-registered and");
    } else {
        if (req->job_id[0]) {
            snprintf(w->job_id, sizeof w->job_id, "%s", req->job_id); // busy until it stops
            w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
            w->epoch = req->epoch;
        } else {
            w->job_id[0] = 0;
            w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        }
        /* It no longer plays the slot we had bound it to (it restarted, or never got the
         * RunSlot before we did): that slot is lost, and with it the job, unless the job's
         * mesh recovers it. */
        if (bound && bound != j && bound->state == MOED__V1__JOB_STATE__JOB_RUNNING &&
            bound_slot >= 0 && !bound->bindings[bound_slot].ended && !bound->recoverable)
            coordinator_fail_slot(co, bound, bound_slot, "failed",
                                  "worker %s (%s, pod %d) re-registered %s: it no longer runs "
                                  "its slot", w->id, w->address, w->pod,
                                  req->job_id[0] ? "running another job" : "idle");
        else if (bound && bound->state == MOED__V1__JOB_STATE__JOB_RUNNING && bound_slot >= 0 &&
                 !bound->bindings[bound_slot].ended && !recovery_dropped(bound, w))
            recovery_signal(co, bound, bound_slot, FAULT_ENDED,
                            "worker %s (%s, pod %d) re-registered %s: it no longer runs its slot",
                            w->id, w->address, w->pod,
                            req->job_id[0] ? "for another job or epoch" : "idle");
    }
    w->confirmed = 1;
    w->awaiting_idle = 0;
    if (coordinator_save_worker(co, w) != MOE_OK) {
        rpc_fail(call, GRPC_STATUS_INTERNAL, "%s", moe_errmsg());
        return;
    }
    char mpi[320] = "";
    if (w->mpi_size) snprintf(mpi, sizeof mpi, ", MPI rank %d of %d in %s", w->mpi_rank, w->mpi_size,
                              w->mpi_job);
    LOG_INFO("%s %s: %s pod %d pid %d (%s, %d cpus), data plane %s%s", w->id,
             known ? "re-registered" : "registered", w->address, w->pod, w->pid, w->host, w->cpus,
             w->data_address[0] ? w->data_address : "-", mpi);
    Moed__V1__RegisterResponse resp = MOED__V1__REGISTER_RESPONSE__INIT;
    resp.worker_id = w->id;
    resp.heartbeat_interval_ms = co->cfg.heartbeat_interval_ms;
    resp.cluster_id = co->cluster_id;
    rpc_reply(call, &resp.base);
    coordinator_schedule(co);
}

static void heartbeat(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__HeartbeatRequest *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    Moed__V1__HeartbeatResponse resp = MOED__V1__HEARTBEAT_RESPONSE__INIT;
    struct worker *w = coordinator_find_worker(co, req->worker_id);
    if (!w || w->state == MOED__V1__WORKER_STATE__WORKER_LEFT) {
        resp.reregister = 1;
        rpc_reply(call, &resp.base);
        return;
    }
    w->last_heartbeat_ms = now_ms();
    if (!w->confirmed) {
        /* Known from the store, not yet seen by this process: have it register again, with
         * the job and step it is running, so the coordinator reattaches it knowingly. */
        resp.reregister = 1;
        rpc_reply(call, &resp.base);
        return;
    }
    if (w->state == MOED__V1__WORKER_STATE__WORKER_DEAD) {
        /* Back from the dead (a pause, a partition). Its old job already failed, or a
         * recovery replaced it: told to stop below, it becomes a spare. */
        LOG_WARN("%s at %s is heartbeating again", w->id, w->address);
        w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        snprintf(w->job_id, sizeof w->job_id, "%s", req->job_id);
        w->epoch = req->epoch;
        if (req->job_id[0]) w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        coordinator_save_worker(co, w);
    }
    if (!req->job_id[0] && w->awaiting_idle) {
        w->awaiting_idle = 0; // idle now: schedulable again
        coordinator_schedule(co);
    }
    struct job *j = req->job_id[0] ? coordinator_find_job(co, req->job_id) : NULL;
    if (req->job_id[0]) {
        int k = j ? job_slot_of(j, w) : -1;
        int keep = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING &&
                   strcmp(w->job_id, j->id) == 0 && k >= 0;
        int same_epoch = j && (!req->epoch || req->epoch == j->epoch);
        /* a recoverable mesh's worker between its fence and its new epoch keeps its slot */
        if (keep && j->recoverable && (!same_epoch || req->holding))
            keep = recovery_worker_state(co, j, k, w, req->epoch, req->holding, "heartbeats and");
        else if (keep)
            keep = same_epoch && !(j->recoverable && recovery_dropped(j, w));
        if (!keep) {
            resp.stop_job = 1;
        } else if (same_epoch) {
            if (req->step > j->bindings[k].step) j->bindings[k].step = (long)req->step;
            if (k == 0 && req->step > j->step) j->step = req->step;
        }
    } else if (w->job_id[0]) {
        /* It runs nothing: a job we thought it was finishing is over for it, or it no longer
         * plays a slot of it (a recovery fenced it out, the job went back to the queue). A
         * worker still in the job's binding waits for its RunSlot. */
        struct job *mine = coordinator_find_job(co, w->job_id);
        if (!mine || job_is_final(mine) || job_slot_of(mine, w) < 0 || recovery_dropped(mine, w)) {
            w->job_id[0] = 0;
            w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
            coordinator_save_worker(co, w);
            coordinator_schedule(co);
        }
    }
    rpc_reply(call, &resp.base);
}

/* The job and the worker a worker's report names; NOT_FOUND (and 0) when either is unknown. */
static int report_source(struct rpc_call *call, struct coordinator *co, const char *job_id,
                         const char *worker_id, struct job **j, struct worker **w) {
    *j = coordinator_find_job(co, job_id);
    *w = coordinator_find_worker(co, worker_id);
    if (*j && *w) return 1;
    rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no %s %s", *j ? "worker" : "job",
             *j ? worker_id : job_id);
    return 0;
}

static void report_step(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__StepReport *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    Moed__V1__StepReportResponse resp = MOED__V1__STEP_REPORT_RESPONSE__INIT;
    struct job *j;
    struct worker *w;
    if (!report_source(call, co, req->job_id, req->worker_id, &j, &w)) return;
    if (!req->n_metrics) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "a step report without metrics");
        return;
    }
    w->last_heartbeat_ms = now_ms(); // a report is as good as a heartbeat
    /* Only the worker bound to the slot it names, in the current epoch, speaks for it. */
    int k = req->pod >= 0 && req->pod < j->pods && req->slot >= 0 && req->slot < j->slots
                ? req->pod * j->slots + req->slot : -1;
    int bound = j->state == MOED__V1__JOB_STATE__JOB_RUNNING && k >= 0 &&
                strcmp(j->bindings[k].worker_id, w->id) == 0 && !recovery_dropped(j, w);
    if (!bound || (req->epoch && req->epoch != j->epoch)) {
        /* Steps of the epoch before a recovery's new one come late from a slot that keeps its
         * worker: dropped, but that worker must not stop (it waits for, or already runs, the
         * new epoch). */
        resp.stop = !(bound && j->recoverable && req->epoch < j->epoch);
        rpc_reply(call, &resp.base);
        return;
    }
    for (size_t i = 0; i < req->n_metrics; i++) {
        long step = (long)req->metrics[i]->step;
        if (step < 1 || step > j->total_steps || (i > 0 && step <= (long)req->metrics[i - 1]->step)) {
            rpc_fail(call, GRPC_STATUS_OUT_OF_RANGE,
                     "step %ld of %s: steps must ascend within 1..%ld", step, j->id, j->total_steps);
            return;
        }
    }
    /* The slot's own numbers, for the mesh view. */
    struct binding *bd = &j->bindings[k];
    for (size_t i = 0; i < req->n_metrics; i++) {
        const Moed__V1__StepMetrics *mt = req->metrics[i];
        bd->total_alltoall += mt->bytes_alltoall;
        bd->total_allreduce += mt->bytes_allreduce;
        recovery_step_reported(co, j, k, mt); // committed step, replica hashes
    }
    const Moed__V1__StepMetrics *newest = req->metrics[req->n_metrics - 1];
    if ((long)newest->step > bd->step) bd->step = (long)newest->step;
    bd->step_seconds = newest->seconds;
    bd->comm_seconds = newest->comm_seconds;
    bd->bytes_alltoall = newest->bytes_alltoall;
    bd->bytes_allreduce = newest->bytes_allreduce;
    /* Metrics are not decisions: written without fsync, in one batch with the job's step. */
    struct store_batch *b = store_batch_new();
    if (k == 0) { // slot (0, 0) speaks for the job: its loss, its step, the stored curve
        int64_t now = now_ms();
        for (size_t i = 0; i < req->n_metrics; i++) {
            const Moed__V1__StepMetrics *mt = req->metrics[i];
            store_batch_step(b, j->id, mt);
            if (mt->step > j->step) j->step = mt->step;
            j->loss = mt->loss;
            if (mt->val_loss > 0) j->val_loss = mt->val_loss;
            if (mt->seconds > 0)
                j->sec_per_step =
                    j->sec_per_step > 0 ? 0.9 * j->sec_per_step + 0.1 * mt->seconds : mt->seconds;
        }
        Moed__V1__StepMetrics *copy = (Moed__V1__StepMetrics *)pb_clone(&newest->base);
        if (copy) {
            if (!copy->reported_unix_ms) copy->reported_unix_ms = now;
            if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
            j->last = copy;
        }
    }
    coordinator_batch_job(b, j);
    if (store_batch_commit(co->store, b, 0) != MOE_OK)
        LOG_WARN("%s: steps up to %ld not stored: %s", j->id, j->step, moe_errmsg());
    co->steps_reported += req->n_metrics;
    coordinator_notify(co, j, NULL);
    rpc_reply(call, &resp.base);
}

static void upload_model(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__ModelChunk *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j = coordinator_find_job(co, req->job_id);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %s", req->job_id);
        return;
    }
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "%s is %s: no upload accepted", j->id,
                 job_state_name(j->state));
        return;
    }
    if (req->total_bytes <= 0 || req->offset < 0 || req->offset + (int64_t)req->data.len > req->total_bytes) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "chunk at %ld (+%zu) outside a %ld-byte model",
                 (long)req->offset, req->data.len, (long)req->total_bytes);
        return;
    }
    char path[1200];
    model_path(co, j, path, sizeof path, 1);
    if (req->offset == 0) { // (re)start the upload
        if (j->upload_fd >= 0) close(j->upload_fd);
        j->upload_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        j->upload_offset = 0;
        if (j->upload_fd < 0) {
            LOG_ERROR("%s: cannot create %s: %s", j->id, path, strerror(errno));
            rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot store the model");
            return;
        }
    }
    if (j->upload_fd < 0 || req->offset != j->upload_offset) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "chunk at %ld, expected %ld: restart at 0",
                 (long)req->offset, (long)j->upload_offset);
        return;
    }
    size_t done = 0;
    while (done < req->data.len) {
        ssize_t n = write(j->upload_fd, req->data.data + done, req->data.len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            LOG_ERROR("%s: writing %s: %s", j->id, path, strerror(errno));
            rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot store the model");
            return;
        }
        done += (size_t)n;
    }
    j->upload_offset += (int64_t)req->data.len;
    Moed__V1__Empty e = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &e.base);
}

/* SHA-256 of a file, with OpenSSL's libcrypto. */
static int file_sha256(const char *path, unsigned char out[32], int64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    unsigned char buf[1 << 16];
    *size = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) ok = 0;
        if (n <= 0) break;
        *size += n;
        ok = ok && EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned int len = 0;
    ok = ok && EVP_DigestFinal_ex(ctx, out, &len) && len == 32;
    EVP_MD_CTX_free(ctx);
    close(fd);
    return ok ? 0 : -1;
}

static void report_job_end(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__JobEndReport *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j;
    struct worker *w;
    if (!report_source(call, co, req->job_id, req->worker_id, &j, &w)) return;
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    /* the slot the report names, when this worker plays it (a worker may play two) */
    int named = req->pod >= 0 && req->pod < j->pods && req->slot >= 0 && req->slot < j->slots
                    ? req->pod * j->slots + req->slot : -1;
    int k = named >= 0 && !strcmp(j->bindings[named].worker_id, w->id) ? named
                                                                       : job_slot_of(j, w);
    /* An end from another epoch (a binding that was already given up) changes nothing of
     * the current one; it only frees the worker if that is what the worker was bound to. */
    int stale = req->epoch && req->epoch != j->epoch;
    int other_open = 0; /* another slot of this job on the same worker still runs */
    for (int q = 0; q < j->pods * j->slots && !stale; q++)
        other_open |= q != k && !strcmp(j->bindings[q].worker_id, w->id) && !j->bindings[q].ended;
    if (!strcmp(w->job_id, j->id) && !other_open &&
        (!req->epoch || !w->epoch || req->epoch == w->epoch)) {
        w->job_id[0] = 0; // the worker is free again
        if (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY) w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        /* ... once its training thread is gone: until a heartbeat says so, a RunSlot would
         * find it busy (the worker sends one as soon as the thread is joined) */
        w->awaiting_idle = 1;
        coordinator_save_worker(co, w);
    }
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || k < 0 || stale ||
        j->bindings[k].ended) { // cancelled, failed already, or not this worker's slot
        rpc_reply(call, &empty.base);
        coordinator_schedule(co);
        return;
    }
    struct binding *bd = &j->bindings[k];
    int mesh = j->pods * j->slots > 1;
    if (req->step > bd->step) bd->step = (long)req->step;
    if (k == 0 && req->step > j->step) j->step = req->step;
    if (!req->ok && j->recoverable) {
        /* a recoverable mesh recovers the slot: its worker is alive, but its state is gone */
        bd->ended = 1;
        snprintf(bd->error, sizeof bd->error, "%s", req->error[0] ? req->error : "stopped");
        recovery_signal(co, j, k, FAULT_ENDED, "%s ended its slot at step %ld: %s", w->id,
                        (long)req->step, req->error[0] ? req->error : "stopped");
        rpc_reply(call, &empty.base);
        coordinator_schedule(co);
        return;
    }
    if (!req->ok) {
        /* a slot we told to stop (another failed) answers "stopped": that is not a cause */
        if (j->failing_ms && req->stopped) {
            bd->ended = 1;
            snprintf(bd->error, sizeof bd->error, "stopped");
            coordinator_check_failing(co, j, now_ms());
        } else {
            coordinator_slot_failed(co, j, k, (long)req->step,
                                    req->error[0] ? req->error : "stopped");
        }
        rpc_reply(call, &empty.base);
        coordinator_schedule(co);
        return;
    }
    if (req->model_bytes > 0 || req->model_sha256.len) { // this slot wrote the job's model
        char part[1200], final[1200];
        model_path(co, j, part, sizeof part, 1);
        model_path(co, j, final, sizeof final, 0);
        if (j->upload_fd >= 0) {
            int bad = fsync(j->upload_fd) != 0;
            bad |= close(j->upload_fd) != 0;
            j->upload_fd = -1;
            if (bad) LOG_WARN("%s: syncing %s: %s", j->id, part, strerror(errno));
        }
        unsigned char sum[32];
        int64_t size = 0;
        if (file_sha256(part, sum, &size) != 0 || size != req->model_bytes ||
            req->model_sha256.len != 32 || memcmp(sum, req->model_sha256.data, 32) != 0) {
            /* The worker still holds the model: it may upload again. The job stays RUNNING. */
            rpc_fail(call, GRPC_STATUS_DATA_LOSS, "model upload of %s does not match: got %ld "
                     "bytes, reported %ld, checksum %s", j->id, (long)size, (long)req->model_bytes,
                     size == req->model_bytes ? "differs" : "not checked");
            snprintf(w->job_id, sizeof w->job_id, "%s", j->id); // still busy with it
            w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
            return;
        }
        if (rename(part, final) != 0) {
            LOG_ERROR("%s: rename %s: %s", j->id, final, strerror(errno));
            rpc_fail(call, GRPC_STATUS_INTERNAL, "the coordinator cannot store the model");
            snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
            w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
            return;
        }
        j->model_bytes = size;
    }
    bd->ended = 1;
    bd->ok = 1;
    int done = 0, n = j->pods * j->slots;
    for (int i = 0; i < n; i++) done += j->bindings[i].ended && j->bindings[i].ok;
    if (done == n && j->model_bytes > 0) {
        coordinator_finish_job(co, j, MOED__V1__JOB_STATE__JOB_SUCCEEDED, "succeeded",
                               "%ld steps, final loss %.4f, model %ld bytes", (long)j->step,
                               j->loss, (long)j->model_bytes);
    } else if (done == n) {
        coordinator_fail_slot(co, j, -1, "failed", "every slot of %s ended, but none uploaded "
                              "the model", j->id);
    } else if (mesh) { // a decision (the slot is done): synced with its event
        coordinator_event(co, j, 1, "slot_done", "slot (%d, %d) on %s finished at step %ld "
                          "(%d of %d slots done)%s", k / j->slots, k % j->slots, w->id,
                          (long)req->step, done, n, j->model_bytes > 0 ? "; model uploaded" : "");
    }
    rpc_reply(call, &empty.base);
    coordinator_schedule(co);
}

/* ---- recovery (docs/recovery.md): faults and restored slots ---- */

/* The slot a fault or restore report names, if `w` plays it in the job's current epoch (and
 * the report speaks for that epoch); -1 otherwise: such reports are stale and ignored. Fails
 * the call (and returns -2) for a slot outside the mesh. */
static int reported_slot(struct rpc_call *call, const struct job *j, const struct worker *w,
                         int pod, int slot, uint64_t epoch) {
    if (pod < 0 || pod >= j->pods || slot < 0 || slot >= j->slots) {
        rpc_fail(call, GRPC_STATUS_INVALID_ARGUMENT, "slot (%d, %d) is outside the %d x %d mesh "
                 "of %s", pod, slot, j->pods, j->slots, j->id);
        return -2;
    }
    int k = pod * j->slots + slot;
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || strcmp(j->bindings[k].worker_id, w->id) ||
        (epoch && epoch != j->epoch) || recovery_dropped(j, w))
        return -1;
    return k;
}

static void report_fault(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__FaultReport *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j;
    struct worker *w;
    if (!report_source(call, co, req->job_id, req->worker_id, &j, &w)) return;
    w->last_heartbeat_ms = now_ms(); // it is alive, whatever its peers are
    int k = reported_slot(call, j, w, req->pod, req->slot, req->epoch);
    if (k == -2) return;
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    if (k < 0) {
        LOG_INFO("%s: fault report of slot (%d, %d), epoch %llu, from %s ignored (the job is "
                 "%s, epoch %llu): %s", j->id, req->pod, req->slot,
                 (unsigned long long)req->epoch, w->id, job_state_name(j->state),
                 (unsigned long long)j->epoch, req->error);
    } else if (j->recoverable) {
        recovery_fault_report(co, j, k, req);
    } else { // a worker only reports faults of recoverable jobs; otherwise it is a failure
        coordinator_slot_failed(co, j, k, (long)req->step,
                                req->error[0] ? req->error : "data-plane fault");
    }
    rpc_reply(call, &empty.base);
}

static void report_restored(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    const Moed__V1__RestoredReport *req = (const void *)m;
    struct coordinator *co = CO(ctx);
    struct job *j;
    struct worker *w;
    if (!report_source(call, co, req->job_id, req->worker_id, &j, &w)) return;
    w->last_heartbeat_ms = now_ms();
    int k = reported_slot(call, j, w, req->pod, req->slot, req->epoch);
    if (k == -2) return;
    if (k >= 0)
        recovery_restored(co, j, k, req);
    else
        LOG_INFO("%s: restored report of slot (%d, %d), epoch %llu, from %s ignored (epoch %llu)",
                 j->id, req->pod, req->slot, (unsigned long long)req->epoch, w->id,
                 (unsigned long long)j->epoch);
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

/* ---- tables ---- */


const struct rpc_method coordinator_methods[] = {
    {RPC_JOBS_SUBMIT_JOB, &moed__v1__submit_job_request__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, submit_job},
    {RPC_JOBS_CANCEL_JOB, &moed__v1__job_ref__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, cancel_job},
    {RPC_JOBS_LIST_JOBS, &moed__v1__list_jobs_request__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, list_jobs},
    {RPC_JOBS_GET_JOB, &moed__v1__job_ref__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, get_job},
    {RPC_JOBS_WATCH_JOB, &moed__v1__watch_job_request__descriptor, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, watch_job},
    {RPC_JOBS_FETCH_MODEL, &moed__v1__job_ref__descriptor, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, fetch_model},
    {RPC_JOBS_LIST_STEPS, &moed__v1__list_steps_request__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, list_steps},
    {RPC_STATUS_GET_CLUSTER, &moed__v1__get_cluster_request__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, get_cluster},
    {RPC_STATUS_GET_JOB, &moed__v1__job_ref__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, get_job},
    {RPC_STATUS_WATCH_JOB, &moed__v1__watch_job_request__descriptor, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, watch_job},
    {RPC_STATUS_LIST_STEPS, &moed__v1__list_steps_request__descriptor, RPC_UNARY, RPC_AUTH_CLIENT, list_steps},
    {RPC_CLUSTER_REGISTER_WORKER, &moed__v1__register_request__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, register_worker},
    {RPC_CLUSTER_HEARTBEAT, &moed__v1__heartbeat_request__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, heartbeat},
    {RPC_CLUSTER_REPORT_STEP, &moed__v1__step_report__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, report_step},
    {RPC_CLUSTER_UPLOAD_MODEL, &moed__v1__model_chunk__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, upload_model},
    {RPC_CLUSTER_REPORT_JOB_END, &moed__v1__job_end_report__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, report_job_end},
    {RPC_CLUSTER_REPORT_FAULT, &moed__v1__fault_report__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, report_fault},
    {RPC_CLUSTER_REPORT_RESTORED, &moed__v1__restored_report__descriptor, RPC_UNARY, RPC_AUTH_CLUSTER, report_restored},
};
const int coordinator_n_methods = (int)(sizeof coordinator_methods / sizeof coordinator_methods[0]);
