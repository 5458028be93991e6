/*
 * coordinator.c — the coordinator's state: the job and worker tables, their records in the
 * store, events and watchers, submitting and cancelling, the heartbeat monitor, start and
 * stop (see coordinator.h for the other files). The RPC handlers in services.c translate
 * requests into these calls.
 */
#include "coordinator.h"

#include "../common/log.h"
#include "../common/spec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void coordinator_config_defaults(struct coordinator_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:0");
    c->heartbeat_interval_ms = COORD_HEARTBEAT_INTERVAL_MS;
    c->heartbeat_timeout_ms = COORD_HEARTBEAT_TIMEOUT_MS;
    c->max_assign_attempts = 3;
}

int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ProtobufCMessage *pb_clone(const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return NULL;
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    free(buf);
    return copy;
}

const char *job_state_name(Moed__V1__JobState s) {
    switch (s) {
    case MOED__V1__JOB_STATE__JOB_QUEUED: return "QUEUED";
    case MOED__V1__JOB_STATE__JOB_RUNNING: return "RUNNING";
    case MOED__V1__JOB_STATE__JOB_SUCCEEDED: return "SUCCEEDED";
    case MOED__V1__JOB_STATE__JOB_FAILED: return "FAILED";
    case MOED__V1__JOB_STATE__JOB_CANCELLED: return "CANCELLED";
    default: return "UNSPECIFIED";
    }
}

int job_is_final(const struct job *j) {
    return j->state == MOED__V1__JOB_STATE__JOB_SUCCEEDED ||
           j->state == MOED__V1__JOB_STATE__JOB_FAILED ||
           j->state == MOED__V1__JOB_STATE__JOB_CANCELLED;
}

struct job *coordinator_find_job(struct coordinator *co, const char *id) {
    for (int i = 0; i < co->n_jobs; i++)
        if (strcmp(co->jobs[i]->id, id) == 0) return co->jobs[i];
    return NULL;
}

struct worker *coordinator_find_worker(struct coordinator *co, const char *id) {
    for (int i = 0; i < co->n_workers; i++)
        if (strcmp(co->workers[i]->id, id) == 0) return co->workers[i];
    return NULL;
}

/* ---- protobuf views ---- */

void job_view_fill(struct job_view *v, const struct job *j) {
    Moed__V1__JobInfo init = MOED__V1__JOB_INFO__INIT;
    v->info = init;
    int n = j->pods * j->slots;
    v->bind = calloc((size_t)n, sizeof *v->bind);
    v->bind_ptrs = calloc((size_t)n, sizeof *v->bind_ptrs);
    v->slot = calloc((size_t)n, sizeof *v->slot);
    v->slot_ptrs = calloc((size_t)n, sizeof *v->slot_ptrs);
    if (!v->bind || !v->bind_ptrs || !v->slot || !v->slot_ptrs) n = 0; // a view without
                                                                     // bindings beats no answer
    v->n_slots = (size_t)n;
    for (int i = 0; i < n; i++) {
        const struct binding *b = &j->bindings[i];
        Moed__V1__SlotStatus ss = MOED__V1__SLOT_STATUS__INIT;
        ss.pod = i / j->slots;
        ss.slot = i % j->slots;
        ss.worker_id = (char *)b->worker_id;
        ss.worker_address = (char *)b->address;
        ss.data_address = (char *)b->data_address;
        ss.step = b->step;
        ss.step_seconds = b->step_seconds;
        ss.comm_seconds = b->comm_seconds;
        ss.bytes_alltoall = b->bytes_alltoall;
        ss.bytes_allreduce = b->bytes_allreduce;
        ss.total_bytes_alltoall = b->total_alltoall;
        ss.total_bytes_allreduce = b->total_allreduce;
        ss.ended = b->ended;
        ss.ok = b->ok;
        ss.error = (char *)b->error;
        ss.mpi_rank = b->mpi_rank;
        v->slot[i] = ss;
        v->slot_ptrs[i] = &v->slot[i];
    }
    int bound = 0;
    for (int i = 0; i < n; i++) {
        if (!j->bindings[i].worker_id[0]) continue; // unbound slots (a queued job) are left out
        Moed__V1__SlotBinding b = MOED__V1__SLOT_BINDING__INIT;
        b.pod = i / j->slots;
        b.slot = i % j->slots;
        b.worker_id = (char *)j->bindings[i].worker_id;
        b.worker_address = (char *)j->bindings[i].address;
        b.data_address = (char *)j->bindings[i].data_address;
        v->bind[bound] = b;
        v->bind_ptrs[bound] = &v->bind[bound];
        bound++;
    }
    v->info.job_id = (char *)j->id;
    v->info.name = (char *)j->name;
    v->info.state = j->state;
    v->info.step = j->step;
    v->info.total_steps = j->total_steps;
    v->info.loss = j->loss;
    v->info.val_loss = j->val_loss;
    v->info.created_unix_ms = j->created_ms;
    v->info.started_unix_ms = j->started_ms;
    v->info.finished_unix_ms = j->finished_ms;
    v->info.error = (char *)j->error;
    v->info.n_bindings = (size_t)bound;
    v->info.bindings = v->bind_ptrs;
    v->info.pods = j->pods;
    v->info.slots = j->slots;
    v->info.model_bytes = j->model_bytes;
    v->info.epoch = j->epoch;
    v->info.backend = (char *)j->backend;
    v->info.committed_step = j->committed_step;
    v->info.recoveries = j->recoveries;
    v->info.moves = j->moves;
    v->info.recovering = j->recovering;
}

void job_view_free(struct job_view *v) {
    free(v->bind);
    free(v->bind_ptrs);
    free(v->slot);
    free(v->slot_ptrs);
}

int job_slot_of(const struct job *j, const struct worker *w) {
    for (int k = 0; k < j->pods * j->slots; k++)
        if (strcmp(j->bindings[k].worker_id, w->id) == 0) return k;
    return -1;
}

double job_eta_seconds(const struct job *j) {
    if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || j->sec_per_step <= 0) return 0;
    return (double)(j->total_steps - j->step) * j->sec_per_step;
}

/* ---- persistence ---- */

static void job_record(Moed__Store__JobRecord *rec, struct job_view *v, const struct job *j) {
    Moed__Store__JobRecord init = MOED__STORE__JOB_RECORD__INIT;
    *rec = init;
    job_view_fill(v, j);
    rec->job = &v->info;
    rec->spec_json = j->spec_json;
    rec->next_event = j->next_event;
    rec->n_slots = v->n_slots;
    rec->slots = v->slot_ptrs;
    rec->restore_step = j->restore_step;
    if (j->restore_from) {
        rec->n_restore_from = (size_t)(j->pods * j->slots);
        rec->restore_from = j->restore_from;
    }
    rec->recovery_signal_ms = j->recovery_signal_ms;
}

void coordinator_batch_job(struct store_batch *b, const struct job *j) {
    Moed__Store__JobRecord rec;
    struct job_view v;
    job_record(&rec, &v, j);
    store_batch_job(b, &rec); // packs now
    job_view_free(&v);
}

static void batch_meta(struct store_batch *b, const struct coordinator *co) {
    Moed__Store__MetaRecord m = MOED__STORE__META_RECORD__INIT;
    m.next_job = co->next_job;
    m.next_worker = co->next_worker;
    m.cluster_id = (char *)co->cluster_id;
    store_batch_meta(b, &m);
}

/* extra: room for the one extra data address the message points to (the caller's). */
static void worker_info(Moed__V1__WorkerInfo *wi, const struct worker *w, char *extra[1]) {
    Moed__V1__WorkerInfo init = MOED__V1__WORKER_INFO__INIT;
    *wi = init;
    wi->worker_id = (char *)w->id;
    wi->address = (char *)w->address;
    wi->pod = w->pod;
    wi->state = w->state;
    wi->version = (char *)w->version;
    wi->host = (char *)w->host;
    wi->pid = w->pid;
    wi->last_heartbeat_unix_ms = w->last_heartbeat_ms;
    wi->job_id = (char *)w->job_id;
    wi->slot = w->slot;
    wi->registered_unix_ms = w->registered_ms;
    wi->cpus = w->cpus;
    wi->data_address = (char *)w->data_address;
    extra[0] = (char *)w->extra_data_address;
    wi->n_extra_data_addresses = w->extra_data_address[0] ? 1 : 0;
    wi->extra_data_addresses = extra;
    wi->mpi_rank = w->mpi_rank;
    wi->mpi_size = w->mpi_size;
    wi->mpi_job = (char *)w->mpi_job;
}

void coordinator_batch_worker(struct store_batch *b, const struct worker *w) {
    Moed__V1__WorkerInfo wi;
    char *extra[1];
    worker_info(&wi, w, extra);
    store_batch_worker(b, &wi); // packs now
}

moe_status coordinator_save_worker(struct coordinator *co, const struct worker *w) {
    struct store_batch *b = store_batch_new();
    coordinator_batch_worker(b, w);
    return store_batch_commit(co->store, b, 1);
}

/* ---- events and watchers ---- */

static void recent_push(struct job *j, Moed__V1__Event *e) {
    int slot = (j->recent_head + j->n_recent) % JOB_RECENT_EVENTS;
    if (j->n_recent == JOB_RECENT_EVENTS) {
        moed__v1__event__free_unpacked(j->recent[j->recent_head], NULL);
        slot = j->recent_head;
        j->recent_head = (j->recent_head + 1) % JOB_RECENT_EVENTS;
    } else {
        j->n_recent++;
    }
    j->recent[slot] = e;
}

/* Too far behind: a watcher that has this many updates queued skips the next step updates
 * (it still gets every event and the final state). */
#define WATCHER_MAX_QUEUED 16
#define STORE_LOCK_WAIT_S 10.0 // a restart waits this long for a dying predecessor's lock

void coordinator_notify(struct coordinator *co, struct job *j, const Moed__V1__Event *new_event) {
    if (!j->watchers) return;
    Moed__V1__JobUpdate u = MOED__V1__JOB_UPDATE__INIT;
    struct job_view v;
    job_view_fill(&v, j);
    u.job = &v.info;
    u.last = j->last;
    u.eta_seconds = job_eta_seconds(j);
    u.n_slots = v.n_slots;
    u.slots = v.slot_ptrs;
    Moed__V1__Event *ev[1] = {(Moed__V1__Event *)new_event};
    if (new_event) {
        u.n_new_events = 1;
        u.new_events = ev;
    }
    int final = job_is_final(j);
    struct rpc_message *msg = rpc_message_pack(&u.base); // once, however many watchers
    for (struct watcher *w = j->watchers, *next; w && msg; w = next) {
        next = w->next;
        if (!final && !new_event && rpc_stream_queued(w->call) >= WATCHER_MAX_QUEUED) continue;
        rpc_stream_send_packed(w->call, msg);
        if (final) rpc_stream_finish(w->call, GRPC_STATUS_OK, ""); // on_close unlinks it
    }
    rpc_message_free(msg);
    job_view_free(&v);
}

static moe_status event_commit(struct coordinator *co, struct job *j, struct store_batch *b,
                               int sync, const char *kind, const char *msg) {
    Moed__V1__Event e = MOED__V1__EVENT__INIT;
    e.unix_ms = now_ms();
    e.kind = (char *)kind;
    e.message = (char *)msg;
    int64_t seq = j->next_event++;
    coordinator_batch_job(b, j);
    store_batch_event(b, j->id, seq, &e);
    moe_status s = store_batch_commit(co->store, b, sync);
    if (s != MOE_OK) {
        LOG_ERROR("store: cannot record event of %s: %s", j->id, moe_errmsg());
        return s;
    }
    LOG_INFO("%s: %s: %s", j->id, kind, msg);
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e.base);
    if (copy) recent_push(j, copy);
    coordinator_notify(co, j, &e);
    return MOE_OK;
}

moe_status coordinator_event(struct coordinator *co, struct job *j, int sync, const char *kind,
                             const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return event_commit(co, j, store_batch_new(), sync, kind, msg);
}

moe_status coordinator_event_batch(struct coordinator *co, struct job *j, struct store_batch *b,
                                   int sync, const char *kind, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return event_commit(co, j, b, sync, kind, msg);
}

/* ---- jobs ---- */

static struct job *job_new(void) {
    struct job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->upload_fd = -1;
    return j;
}

static void job_free(struct job *j) {
    recovery_end(j);
    free(j->hashes);
    free(j->restore_from);
    free(j->spec_json);
    free(j->bindings);
    if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
    for (int i = 0; i < j->n_recent; i++)
        moed__v1__event__free_unpacked(j->recent[(j->recent_head + i) % JOB_RECENT_EVENTS], NULL);
    if (j->upload_fd >= 0) close(j->upload_fd);
    for (struct watcher *w = j->watchers; w; w = w->next) w->job = NULL;
    free(j);
}

static moe_status jobs_append(struct coordinator *co, struct job *j) {
    if (co->n_jobs == co->cap_jobs) {
        int cap = co->cap_jobs ? co->cap_jobs * 2 : 64;
        struct job **nj = realloc(co->jobs, (size_t)cap * sizeof *nj);
        if (!nj) return moe_fail(MOE_ENOMEM, "out of memory for the job table");
        co->jobs = nj;
        co->cap_jobs = cap;
    }
    co->jobs[co->n_jobs++] = j;
    return MOE_OK;
}

moe_status coordinator_submit(struct coordinator *co, const char *spec_text, size_t len,
                              char *const *overrides, size_t n_overrides, struct job **out) {
    struct job_spec spec;
    spec_defaults(&spec);
    CHECK(spec_parse(&spec, spec_text, len, "spec"));
    for (size_t i = 0; i < n_overrides; i++) CHECK(spec_set(&spec, overrides[i]));
    CHECK(spec_validate(&spec));
    /* A mesh no set of live workers could ever hold is refused now, not queued forever. */
    CHECK(placement_check(co, spec.mesh.pods, spec.mesh.slots, spec.mesh.backend));

    struct job *j = job_new();
    if (!j) return moe_fail(MOE_ENOMEM, "out of memory");
    j->num = co->next_job;
    snprintf(j->id, sizeof j->id, "job-%ld", j->num);
    snprintf(j->name, sizeof j->name, "%s", spec.name);
    j->state = MOED__V1__JOB_STATE__JOB_QUEUED;
    j->total_steps = spec.run.steps;
    j->created_ms = now_ms();
    j->spec_json = spec_to_json(&spec);
    j->pods = spec.mesh.pods;
    j->slots = spec.mesh.slots;
    snprintf(j->backend, sizeof j->backend, "%s", spec.mesh.backend);
    j->timeout_s = spec.mesh.timeout_s;
    recovery_configure(j, &spec.mesh);
    j->bindings = calloc((size_t)(j->pods * j->slots), sizeof *j->bindings);
    if (!j->spec_json || !j->bindings) {
        job_free(j);
        return moe_fail(MOE_ENOMEM, "out of memory");
    }
    /* One batch: the job, its first event and the advanced counter. */
    Moed__V1__Event e = MOED__V1__EVENT__INIT;
    char msg[256];
    snprintf(msg, sizeof msg, "submitted: %s, %ld steps", j->name, j->total_steps);
    e.unix_ms = j->created_ms;
    e.kind = "submitted";
    e.message = msg;
    int64_t seq = j->next_event++;
    co->next_job++;
    struct store_batch *b = store_batch_new();
    batch_meta(b, co);
    coordinator_batch_job(b, j);
    store_batch_event(b, j->id, seq, &e);
    moe_status s = store_batch_commit(co->store, b, 1);
    if (s == MOE_OK) s = jobs_append(co, j);
    if (s != MOE_OK) {
        co->next_job--;
        job_free(j);
        return s;
    }
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e.base);
    if (copy) recent_push(j, copy);
    LOG_INFO("%s: submitted (%s, %ld steps)", j->id, j->name, j->total_steps);
    *out = j;
    return MOE_OK;
}

void coordinator_release_workers(struct coordinator *co, struct job *j, int still_running) {
    for (int i = 0; i < j->pods * j->slots; i++) {
        struct worker *w = coordinator_find_worker(co, j->bindings[i].worker_id);
        if (!w || strcmp(w->job_id, j->id) != 0) continue;
        /* A worker still finishing the job stays bound until it reports the end (or its
         * heartbeat shows it idle): it must not be handed a new job while busy. */
        if (still_running) continue;
        w->job_id[0] = 0;
        if (w->state == MOED__V1__WORKER_STATE__WORKER_BUSY) w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
        coordinator_save_worker(co, w);
    }
}

moe_status coordinator_finish_job(struct coordinator *co, struct job *j, Moed__V1__JobState state,
                                  const char *kind, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (job_is_final(j)) return moe_fail(MOE_EINVAL, "%s already ended (%s)", j->id, job_state_name(j->state));
    j->state = state;
    j->finished_ms = now_ms();
    recovery_end(j); // a recovery in progress is over with the job (its answers are dropped)
    if (state != MOED__V1__JOB_STATE__JOB_SUCCEEDED) snprintf(j->error, sizeof j->error, "%s", msg);
    if (j->upload_fd >= 0) {
        close(j->upload_fd);
        j->upload_fd = -1;
    }
    CHECK(coordinator_event(co, j, 1, kind, "%s", msg)); // also notifies and finishes watchers
    return MOE_OK;
}

moe_status coordinator_cancel(struct coordinator *co, struct job *j) {
    if (job_is_final(j))
        return moe_fail(MOE_EINVAL, "%s already ended (%s)", j->id, job_state_name(j->state));
    int was_running = j->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    CHECK(coordinator_finish_job(co, j, MOED__V1__JOB_STATE__JOB_CANCELLED, "cancelled",
                                 "cancelled by a client at step %ld", j->step));
    if (was_running) coordinator_stop_workers(co, j);
    coordinator_release_workers(co, j, was_running);
    coordinator_schedule(co);
    return MOE_OK;
}

/* ---- failure detection: the monitor's tick (failure.c decides) ---- */

static void monitor_tick(uv_timer_t *t) {
    struct coordinator *co = t->data;
    int64_t now = now_ms();
    for (int i = 0; i < co->n_workers; i++) {
        struct worker *w = co->workers[i];
        if (w->state != MOED__V1__WORKER_STATE__WORKER_IDLE && w->state != MOED__V1__WORKER_STATE__WORKER_BUSY)
            continue;
        int64_t silent = now - w->last_heartbeat_ms;
        if (silent > co->cfg.heartbeat_timeout_ms) coordinator_worker_dead(co, w, silent);
    }
    for (int i = 0; i < co->n_jobs; i++) coordinator_check_failing(co, co->jobs[i], now);
    coordinator_schedule(co);
}

/* ---- start / stop ---- */

static int load_job(const Moed__Store__JobRecord *r, void *arg) {
    struct coordinator *co = arg;
    const Moed__V1__JobInfo *in = r->job;
    struct job *j = job_new();
    if (!j) return 1;
    snprintf(j->id, sizeof j->id, "%s", in->job_id);
    j->num = strtol(in->job_id + 4, NULL, 10);
    snprintf(j->name, sizeof j->name, "%s", in->name);
    j->state = in->state;
    j->step = in->step;
    j->total_steps = in->total_steps;
    j->loss = in->loss;
    j->val_loss = in->val_loss;
    j->created_ms = in->created_unix_ms;
    j->started_ms = in->started_unix_ms;
    j->finished_ms = in->finished_unix_ms;
    snprintf(j->error, sizeof j->error, "%s", in->error);
    j->spec_json = strdup(r->spec_json);
    j->pods = in->pods > 0 ? in->pods : 1;
    j->slots = in->slots > 0 ? in->slots : 1;
    j->bindings = calloc((size_t)(j->pods * j->slots), sizeof *j->bindings);
    for (size_t i = 0; j->bindings && i < in->n_bindings; i++) {
        const Moed__V1__SlotBinding *b = in->bindings[i];
        int k = b->pod * j->slots + b->slot;
        if (k < 0 || k >= j->pods * j->slots) continue;
        snprintf(j->bindings[k].worker_id, sizeof j->bindings[k].worker_id, "%s", b->worker_id);
        snprintf(j->bindings[k].address, sizeof j->bindings[k].address, "%s", b->worker_address);
        snprintf(j->bindings[k].data_address, sizeof j->bindings[k].data_address, "%s",
                 b->data_address);
    }
    for (size_t i = 0; j->bindings && i < r->n_slots; i++) {
        const Moed__V1__SlotStatus *ss = r->slots[i];
        int k = ss->pod * j->slots + ss->slot;
        if (ss->pod < 0 || ss->slot < 0 || ss->slot >= j->slots || k >= j->pods * j->slots)
            continue;
        struct binding *bd = &j->bindings[k];
        bd->mpi_rank = ss->mpi_rank;
        bd->step = (long)ss->step;
        bd->step_seconds = ss->step_seconds;
        bd->comm_seconds = ss->comm_seconds;
        bd->bytes_alltoall = ss->bytes_alltoall;
        bd->bytes_allreduce = ss->bytes_allreduce;
        bd->total_alltoall = ss->total_bytes_alltoall;
        bd->total_allreduce = ss->total_bytes_allreduce;
        bd->ended = ss->ended;
        bd->ok = ss->ok;
        snprintf(bd->error, sizeof bd->error, "%s", ss->error);
    }
    j->epoch = in->epoch;
    snprintf(j->backend, sizeof j->backend, "%s", in->backend[0] ? in->backend : "tcp");
    /* the data-plane timeout is in the stored spec (JobInfo does not carry it) */
    struct job_spec spec;
    spec_defaults(&spec);
    j->timeout_s = spec.mesh.timeout_s;
    if (r->spec_json && spec_parse(&spec, r->spec_json, strlen(r->spec_json), "stored spec") == MOE_OK)
        j->timeout_s = spec.mesh.timeout_s;
    spec.mesh.pods = j->pods; // what the job was bound as, whatever the stored spec says
    spec.mesh.slots = j->slots;
    snprintf(spec.mesh.backend, sizeof spec.mesh.backend, "%s", j->backend);
    recovery_configure(j, &spec.mesh);
    j->committed_step = in->committed_step;
    j->recoveries = in->recoveries;
    j->moves = in->moves;
    j->recovering = in->recovering;
    j->restore_step = r->restore_step;
    j->recovery_signal_ms = r->recovery_signal_ms;
    if (r->n_restore_from == (size_t)(j->pods * j->slots) &&
        (j->restore_from = calloc(r->n_restore_from, sizeof *j->restore_from)))
        memcpy(j->restore_from, r->restore_from, r->n_restore_from * sizeof *j->restore_from);
    j->model_bytes = in->model_bytes;
    j->next_event = r->next_event;
    if (!j->spec_json || !j->bindings || jobs_append(co, j) != MOE_OK) {
        job_free(j);
        return 1;
    }
    return 0;
}

static int load_event(const Moed__V1__Event *e, void *arg) {
    Moed__V1__Event *copy = (Moed__V1__Event *)pb_clone(&e->base);
    if (copy) recent_push(arg, copy);
    return 0;
}

static int load_last_step(const Moed__V1__StepMetrics *m, void *arg) {
    struct job *j = arg;
    if (j->last) moed__v1__step_metrics__free_unpacked(j->last, NULL);
    j->last = (Moed__V1__StepMetrics *)pb_clone(&m->base);
    return 0;
}

static moe_status worker_channel(struct coordinator *co, struct worker *w) {
    if (w->channel) rpc_channel_close(w->channel);
    w->channel = NULL;
    struct rpc_tls tls = {NULL, NULL, co->cfg.worker_tls_ca};
    return rpc_channel_open(&w->channel, w->address, co->cfg.worker_tls_ca[0] ? &tls : NULL,
                            co->cfg.cluster_token, 0);
}

static int load_worker(const Moed__V1__WorkerInfo *in, void *arg) {
    struct coordinator *co = arg;
    struct worker *w = calloc(1, sizeof *w);
    if (!w) return 1;
    snprintf(w->id, sizeof w->id, "%s", in->worker_id);
    w->num = strtol(in->worker_id + 2, NULL, 10);
    snprintf(w->address, sizeof w->address, "%s", in->address);
    w->pod = in->pod;
    w->state = in->state;
    snprintf(w->version, sizeof w->version, "%s", in->version);
    snprintf(w->host, sizeof w->host, "%s", in->host);
    w->pid = in->pid;
    w->cpus = in->cpus;
    w->registered_ms = in->registered_unix_ms;
    w->last_heartbeat_ms = in->last_heartbeat_unix_ms;
    snprintf(w->job_id, sizeof w->job_id, "%s", in->job_id);
    w->slot = in->slot;
    snprintf(w->data_address, sizeof w->data_address, "%s", in->data_address);
    snprintf(w->extra_data_address, sizeof w->extra_data_address, "%s",
             in->n_extra_data_addresses ? in->extra_data_addresses[0] : "");
    w->mpi_rank = in->mpi_rank;
    w->mpi_size = in->mpi_size;
    snprintf(w->mpi_job, sizeof w->mpi_job, "%s", in->mpi_job);
    if (co->n_workers == co->cap_workers) {
        int cap = co->cap_workers ? co->cap_workers * 2 : 16;
        struct worker **nw = realloc(co->workers, (size_t)cap * sizeof *nw);
        if (!nw) {
            free(w);
            return 1;
        }
        co->workers = nw;
        co->cap_workers = cap;
    }
    co->workers[co->n_workers++] = w;
    return 0;
}

moe_status coordinator_add_worker(struct coordinator *co, struct worker **out) {
    Moed__V1__WorkerInfo wi = MOED__V1__WORKER_INFO__INIT;
    char id[24];
    snprintf(id, sizeof id, "w-%ld", co->next_worker);
    wi.worker_id = id;
    if (load_worker(&wi, co) != 0) return moe_fail(MOE_ENOMEM, "out of memory for the worker table");
    co->next_worker++;
    *out = co->workers[co->n_workers - 1];
    return MOE_OK;
}

moe_status coordinator_connect_worker(struct coordinator *co, struct worker *w) {
    return worker_channel(co, w);
}

moe_status coordinator_save_meta(struct coordinator *co) {
    struct store_batch *b = store_batch_new();
    batch_meta(b, co);
    return store_batch_commit(co->store, b, 1);
}

static moe_status write_addr_file(const char *path, const char *addr) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return moe_fail(MOE_EIO, "cannot write %s: %s", tmp, strerror(errno));
    fprintf(f, "%s\n", addr);
    if (fclose(f) != 0 || rename(tmp, path) != 0)
        return moe_fail(MOE_EIO, "cannot write %s: %s", path, strerror(errno));
    return MOE_OK;
}

static void on_signal(uv_signal_t *s, int signum) {
    struct coordinator *co = s->data;
    LOG_INFO("signal %d: shutting down", signum);
    coordinator_stop(co);
}

moe_status coordinator_start(struct coordinator *co, uv_loop_t *loop,
                             const struct coordinator_config *cfg) {
    memset(co, 0, sizeof *co);
    co->cfg = *cfg;
    co->loop = loop;
    co->started_ms = now_ms();
    if (mkdir(cfg->dir, 0700) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create %s: %s", cfg->dir, strerror(errno));
    char db[1100];
    snprintf(db, sizeof db, "%s/db", cfg->dir);
    snprintf(co->models_dir, sizeof co->models_dir, "%s/models", cfg->dir);
    if (mkdir(co->models_dir, 0700) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create %s: %s", co->models_dir, strerror(errno));
    /* A coordinator restarted right after a kill -9 can find its predecessor's lock on the
     * database for a moment, until the kernel has torn all of that process down. */
    moe_status opened = store_open(&co->store, db, 0);
    if (opened != MOE_OK) {
        if (!strstr(moe_errmsg(), "lock")) return opened;
        LOG_WARN("%s; waiting up to %.0f s for it to be released (another coordinator on this "
                 "directory, or the previous one still exiting)", moe_errmsg(), STORE_LOCK_WAIT_S);
        CHECK(store_open(&co->store, db, STORE_LOCK_WAIT_S));
    }

    Moed__Store__MetaRecord *meta;
    CHECK(store_meta_get(co->store, &meta));
    co->next_job = meta->next_job > 0 ? meta->next_job : 1;
    co->next_worker = meta->next_worker > 0 ? meta->next_worker : 1;
    snprintf(co->cluster_id, sizeof co->cluster_id, "%s", meta->cluster_id);
    moed__store__meta_record__free_unpacked(meta, NULL);
    if (!co->cluster_id[0]) {
        unsigned char rnd[8];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, 0x5a, sizeof rnd);
        for (int i = 0; i < 8; i++) snprintf(co->cluster_id + 2 * i, 3, "%02x", rnd[i]);
        CHECK(coordinator_save_meta(co));
    }
    CHECK(store_jobs_scan(co->store, load_job, co));
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        CHECK(store_events_tail(co->store, j->id, JOB_RECENT_EVENTS, load_event, j));
        if (j->step > 0) CHECK(store_steps_scan(co->store, j->id, j->step, load_last_step, j));
    }
    CHECK(store_workers_scan(co->store, load_worker, co));
    /* Workers we knew get a full heartbeat timeout from now to show they are still there;
     * their running jobs stay RUNNING meanwhile (principle 5: a restart loses nothing). */
    int64_t now = now_ms();
    int running = 0;
    for (int i = 0; i < co->n_workers; i++) {
        struct worker *w = co->workers[i];
        if (w->state == MOED__V1__WORKER_STATE__WORKER_IDLE || w->state == MOED__V1__WORKER_STATE__WORKER_BUSY) {
            w->last_heartbeat_ms = now;
            CHECK(worker_channel(co, w));
        }
        struct job *j = w->job_id[0] ? coordinator_find_job(co, w->job_id) : NULL;
        if (j && job_slot_of(j, w) >= 0) w->epoch = j->epoch; // the binding it was given
    }
    for (int i = 0; i < co->n_jobs; i++) running += co->jobs[i]->state == MOED__V1__JOB_STATE__JOB_RUNNING;
    LOG_INFO("store %s: %d jobs (%d running), %d workers known, cluster %s", db, co->n_jobs,
             running, co->n_workers, co->cluster_id);

    CHECK(rpc_pump_start(&co->pump, loop));
    struct rpc_tls tls = {cfg->tls_cert, cfg->tls_key, NULL};
    struct rpc_server_config sc = {
        .listen = cfg->listen,
        .tls = cfg->tls_cert[0] ? &tls : NULL,
        .client_token = cfg->client_token,
        .cluster_token = cfg->cluster_token,
        .role = "coordinator",
    };
    int port = 0;
    CHECK(rpc_server_start(&co->server, co->pump, &sc, coordinator_methods, coordinator_n_methods,
                           co, &port));
    char host[140];
    snprintf(host, sizeof host, "%.139s", cfg->listen);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    if (!strcmp(host, "0.0.0.0") || !strcmp(host, "[::]") || !host[0]) snprintf(host, sizeof host, "127.0.0.1");
    snprintf(co->address, sizeof co->address, "%s:%d", host, port);
    if (cfg->addr_file[0]) CHECK(write_addr_file(cfg->addr_file, co->address));
    LOG_INFO("listening on %s (%s)", co->address, cfg->tls_cert[0] ? "TLS" : "insecure");

    uv_timer_init(loop, &co->monitor);
    co->monitor.data = co;
    long tick = cfg->heartbeat_timeout_ms / 10;
    if (tick < 50) tick = 50;
    if (tick > 1000) tick = 1000;
    uv_timer_start(&co->monitor, monitor_tick, (uint64_t)tick, (uint64_t)tick);
    uv_signal_init(loop, &co->sig_term);
    uv_signal_init(loop, &co->sig_int);
    co->sig_term.data = co->sig_int.data = co;
    uv_signal_start(&co->sig_term, on_signal, SIGTERM);
    uv_signal_start(&co->sig_int, on_signal, SIGINT);
    recovery_resume(co); // recoveries the previous process had not finished: fenced again
    coordinator_schedule(co);
    return MOE_OK;
}

static void pump_stopped(void *arg) {
    struct coordinator *co = arg;
    for (int i = 0; i < co->n_jobs; i++) job_free(co->jobs[i]);
    free(co->jobs);
    co->jobs = NULL;
    co->n_jobs = 0;
    for (int i = 0; i < co->n_workers; i++) {
        if (co->workers[i]->channel) rpc_channel_close(co->workers[i]->channel);
        free(co->workers[i]);
    }
    free(co->workers);
    co->workers = NULL;
    co->n_workers = 0;
    store_close(co->store);
    co->store = NULL;
    LOG_INFO("stopped");
}

static void server_stopped(void *arg) {
    struct coordinator *co = arg;
    rpc_pump_stop(co->pump, pump_stopped, co);
}

void coordinator_stop(struct coordinator *co) {
    if (co->stopping) return;
    co->stopping = 1;
    uv_close((uv_handle_t *)&co->monitor, NULL);
    uv_close((uv_handle_t *)&co->sig_term, NULL);
    uv_close((uv_handle_t *)&co->sig_int, NULL);
    rpc_server_shutdown(co->server, server_stopped, co);
}
