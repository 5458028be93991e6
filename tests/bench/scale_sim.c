/*
 * scale_sim.c — one process playing many workers (see scale_sim.h). Loop thread only.
 */
#include "scale_sim.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../proto/methods.h"
#include "../../proto/rpc.h"
#include "proto/moed.pb-c.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uthash.h>

#define REGISTER_WINDOW 32   // registrations in flight at once
#define CALL_TIMEOUT_S 10.0

struct sim_host;

struct simw {
    int index;                // in the shared array
    struct sim_host *h;
    struct sim_shared *s;
    char id[24];              // "" until registered
    char credential[SIM_CRED_MAX];
    char address[64];
    struct rpc_channel *ch;   // to the coordinator: one each, one connection for all of them
    uv_timer_t beat, report;
    int beat_in_flight, registering, report_in_flight;
    uint64_t beat_sent_ms;    // uv_now of the last heartbeat
    uint64_t report_ok_ms;    // uv_now of the last step report answered as a heartbeat (0: none)
    uint64_t report_sent_ms;  // uv_now of the last step report sent
    long report_every_ms;     // the coordinator's report_interval_ms (0: 1 s, as report.c)
    long reported;            // the last step reported (the next report starts after it)
    long idle_ms;             // the idle interval the coordinator last gave (0: every tick)
    char job[24];             // the job it plays ("": none)
    uint64_t epoch;
    int pod, slot, running, holding;
    long step;
    unsigned binding;         // +1 at each RunSlot and each end of a slot: an answer to a
    unsigned beat_binding, report_binding; // call sent under an older one speaks of that one
    UT_hash_handle hh;        // by id: whom a call's credential names
};

struct sim_host {
    const struct sim_config *cfg;
    uv_loop_t *loop;
    struct rpc_pump *pump;
    struct rpc_server *server;
    struct simw *w;           // cfg->count of them
    struct simw *by_id;       // uthash head
    int registering;            // first registrations in flight
    long heartbeat_ms;
    uv_signal_t sig;
};

static void register_next(struct sim_host *h);
static void heartbeat_start(struct simw *w);
static void heartbeat_soon(struct simw *w);
static void leave_job(struct simw *w);

/* ---- registration ---- */

static void on_registered(void *arg, const struct rpc_result *res, const ProtobufCMessage *m) {
    struct simw *w = arg;
    struct sim_host *h = w->h;
    w->registering = 0;
    if (!w->id[0]) h->registering--;
    if (res->code != GRPC_STATUS_OK) { // a first registration is tried again; a later one
        w->beat_sent_ms = 0;              // by the next heartbeat that asks for it, at the
        register_next(h);                 // next tick (as a real worker: cluster.c)
        return;
    }
    const Moed__V1__RegisterResponse *r = (const Moed__V1__RegisterResponse *)m;
    if (!w->id[0]) {
        snprintf(w->id, sizeof w->id, "%s", r->worker_id);
        snprintf(w->credential, sizeof w->credential, "%s", r->worker_credential);
        snprintf(w->s->id, sizeof w->s->id, "%s", w->id);
        snprintf(w->s->credential, sizeof w->s->credential, "%s", w->credential);
        HASH_ADD_STR(h->by_id, id, w);
        rpc_channel_set_token(w->ch, w->credential);
        if (r->heartbeat_interval_ms > 0) h->heartbeat_ms = (long)r->heartbeat_interval_ms;
        heartbeat_start(w);
    }
    w->idle_ms = r->idle_heartbeat_interval_ms > h->heartbeat_ms
                     ? (long)r->idle_heartbeat_interval_ms : 0;
    atomic_store(&w->s->idle_ms, w->idle_ms);
    atomic_fetch_add(&w->s->registrations, 1);
    register_next(h);
}

static void register_one(struct simw *w) {
    Moed__V1__RegisterRequest req = MOED__V1__REGISTER_REQUEST__INIT;
    int pod = (w->h->cfg->first + w->index) / w->h->cfg->pod_size;
    char host[32];
    snprintf(host, sizeof host, "sim-pod-%d", pod);
    req.worker_id = w->id;
    req.address = w->address;
    req.pod = pod;
    req.version = (char *)"scale-sim";
    req.host = host;
    req.pid = (int32_t)getpid();
    req.cpus = 1;
    req.data_address = w->address; // never dialled: no slot of the simulator opens a data plane
    req.job_id = w->job;
    req.step = w->step;
    req.idle_heartbeats = 1; // heartbeat_tick
    req.epoch = w->job[0] ? w->epoch : 0;
    req.holding = w->holding;
    if (rpc_call_async(w->h->pump, w->ch, RPC_CLUSTER_REGISTER_WORKER, &req.base,
                       &moed__v1__register_response__descriptor, CALL_TIMEOUT_S, on_registered,
                       w) == MOE_OK)
        w->registering = 1;
}

/* The first registrations, REGISTER_WINDOW at a time (a failed one is tried again). */
static void register_next(struct sim_host *h) {
    for (int i = 0; i < h->cfg->count && h->registering < REGISTER_WINDOW; i++) {
        struct simw *w = &h->w[i];
        if (w->id[0] || w->registering) continue;
        register_one(w);
        if (w->registering) h->registering++;
    }
}

/* ---- heartbeats and step reports ---- */

static void on_heartbeat(void *arg, const struct rpc_result *res, const ProtobufCMessage *m) {
    struct simw *w = arg;
    w->beat_in_flight = 0;
    if (res->code != GRPC_STATUS_OK) w->beat_sent_ms = 0; // again at the next tick (cluster.c)
    if (res->code != GRPC_STATUS_OK || atomic_load(&w->s->dead)) return;
    const Moed__V1__HeartbeatResponse *r = (const Moed__V1__HeartbeatResponse *)m;
    if (r->reregister && !w->registering) register_one(w);
    if (r->stop_job && w->job[0] && w->beat_binding == w->binding) leave_job(w);
    if (r->idle_heartbeat_interval_ms > 0) {
        w->idle_ms = r->idle_heartbeat_interval_ms > w->h->heartbeat_ms
                         ? (long)r->idle_heartbeat_interval_ms : 0;
        atomic_store(&w->s->idle_ms, w->idle_ms);
    }
}

/* As a real worker's tick decides (worker/daemon/cluster.c heartbeat_skip): a running slot
 * whose step report was answered within an interval, or an idle worker within the idle
 * interval it was given while its connection held, sends nothing. */
static int heartbeat_skip(struct simw *w, uint64_t now) {
    uint64_t beat = (uint64_t)w->h->heartbeat_ms;
    if (w->holding) return 0;
    if (w->job[0]) return w->report_ok_ms && now - w->report_ok_ms < beat;
    return w->idle_ms && rpc_channel_ready(w->ch) &&
           now - w->beat_sent_ms + beat / 2 < (uint64_t)w->idle_ms;
}

static void heartbeat_tick(uv_timer_t *t) {
    struct simw *w = t->data;
    if (w->beat_in_flight || atomic_load(&w->s->dead)) return;
    uint64_t now = uv_now(w->h->loop);
    if (heartbeat_skip(w, now)) return;
    w->beat_sent_ms = now;
    w->beat_binding = w->binding;
    Moed__V1__HeartbeatRequest req = MOED__V1__HEARTBEAT_REQUEST__INIT;
    req.worker_id = w->id;
    req.job_id = w->job;
    req.step = w->step;
    req.epoch = w->job[0] ? w->epoch : 0;
    req.holding = w->holding;
    double timeout = 2.0 * (double)w->h->heartbeat_ms / 1000.0;
    if (rpc_call_async(w->h->pump, w->ch, RPC_CLUSTER_HEARTBEAT, &req.base,
                       &moed__v1__heartbeat_response__descriptor, timeout < 1 ? 1 : timeout,
                       on_heartbeat, w) == MOE_OK)
        w->beat_in_flight = 1;
}

static void heartbeat_start(struct simw *w) {
    uint64_t phase = (uint64_t)(rand() % (int)w->h->heartbeat_ms);
    uv_timer_start(&w->beat, heartbeat_tick, phase, (uint64_t)w->h->heartbeat_ms);
}

/* As a real worker does when its slot ends (worker_heartbeat_now): idle at once, not at the
 * next idle heartbeat, so the coordinator may give it the next slot. */
static void heartbeat_soon(struct simw *w) {
    w->beat_sent_ms = w->report_ok_ms = 0;
    uv_timer_start(&w->beat, heartbeat_tick, 0, (uint64_t)w->h->heartbeat_ms);
}

/* Its slot is over, however it heard (StopJob, a heartbeat's or a step report's answer): idle
 * at once, and it says so with a heartbeat now, as a real worker does. A heartbeat or report
 * answered after a newer RunSlot speaks of the slot before: the callers drop that stop (under
 * load a spare took a slot while the stop of its old one was on its way, then dropped the new
 * one, and the restarted coordinator found it idle: a recovery in the restart's place). */
static void leave_job(struct simw *w) {
    w->binding++;
    w->job[0] = 0;
    w->running = w->holding = 0;
    atomic_store(&w->s->pod, -1);
    atomic_fetch_add(&w->s->stops, 1);
    heartbeat_soon(w);
}

static void on_reported(void *arg, const struct rpc_result *res, const ProtobufCMessage *m) {
    struct simw *w = arg;
    w->report_in_flight = 0;
    if (res->code != GRPC_STATUS_OK) return;
    const Moed__V1__StepReportResponse *r = (const Moed__V1__StepReportResponse *)m;
    w->report_ok_ms = r->heartbeat_now ? 0 : uv_now(w->h->loop);
    if (r->report_interval_ms > 0) w->report_every_ms = (long)r->report_interval_ms;
    if (w->report_ok_ms && w->job[0] && !w->holding) // the next heartbeat an interval from now
        uv_timer_start(&w->beat, heartbeat_tick, (uint64_t)w->h->heartbeat_ms,
                       (uint64_t)w->h->heartbeat_ms);
    if (r->stop && w->report_binding == w->binding)
        leave_job(w); // the job ended (or this slot of it, not a newer one)
}

#define SIM_REPORT_BATCH_MAX 64

/* One step "trained" per tick; the steps since the last report go in one report per
 * report interval, as a real slot batches them (worker/daemon/report.c). */
static void report_tick(uv_timer_t *t) {
    struct simw *w = t->data;
    if (!w->running || atomic_load(&w->s->dead)) return;
    w->step++;
    atomic_store(&w->s->step, w->step);
    uint64_t now = uv_now(w->h->loop);
    long every = w->report_every_ms > 0 ? w->report_every_ms : 1000;
    if (w->report_in_flight || now - w->report_sent_ms + 1 < (uint64_t)every) return;
    if (w->reported >= w->step || w->step - w->reported > SIM_REPORT_BATCH_MAX)
        w->reported = w->step - 1; // a restore went back, or too many waited: the newest
    Moed__V1__StepMetrics sm[SIM_REPORT_BATCH_MAX], *smp[SIM_REPORT_BATCH_MAX];
    size_t n = 0;
    for (long s = w->reported + 1; s <= w->step; s++, n++) {
        sm[n] = (Moed__V1__StepMetrics)MOED__V1__STEP_METRICS__INIT;
        smp[n] = &sm[n];
        sm[n].step = s;
        sm[n].loss = sm[n].ce = 3.0 / (double)(1 + s);
        sm[n].lr = 1e-3;
        sm[n].tokens = 1024;
        sm[n].seconds = (double)w->h->cfg->report_ms / 1000.0;
        sm[n].tokens_per_second = 1024.0 / sm[n].seconds;
        sm[n].reported_unix_ms = moe_wall_ms();
    }
    w->reported = w->step;
    w->report_sent_ms = now;
    Moed__V1__StepReport req = MOED__V1__STEP_REPORT__INIT;
    req.worker_id = w->id;
    req.job_id = w->job;
    req.pod = w->pod;
    req.slot = w->slot;
    req.epoch = w->epoch;
    req.n_metrics = n;
    req.metrics = smp;
    w->report_binding = w->binding;
    if (rpc_call_async(w->h->pump, w->ch, RPC_CLUSTER_REPORT_STEP, &req.base,
                       &moed__v1__step_report_response__descriptor, CALL_TIMEOUT_S, on_reported,
                       w) == MOE_OK)
        w->report_in_flight = 1;
}

static void ignore_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *m) {
    (void)arg, (void)res, (void)m;
}

/* After a restore RunSlot: back at restore_step, as the real slot reports it. */
static void report_restored(struct simw *w) {
    Moed__V1__RestoredReport req = MOED__V1__RESTORED_REPORT__INIT;
    req.worker_id = w->id;
    req.job_id = w->job;
    req.pod = w->pod;
    req.slot = w->slot;
    req.epoch = w->epoch;
    req.step = w->step;
    rpc_call_async(w->h->pump, w->ch, RPC_CLUSTER_REPORT_RESTORED, &req.base,
                   &moed__v1__empty__descriptor, CALL_TIMEOUT_S, ignore_reply, NULL);
}

/* ---- the Worker service ---- */

static int sim_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]) {
    struct sim_host *h = ctx;
    const char *dot = memchr(cred, '.', len);
    char id[24];
    size_t n = dot ? (size_t)(dot - cred) : 0;
    if (n < 3 || n >= sizeof id) return 0;
    memcpy(id, cred, n);
    id[n] = 0;
    struct simw *w;
    HASH_FIND_STR(h->by_id, id, w);
    if (!w || !rpc_secret_equal(cred, len, w->credential)) return 0;
    snprintf(out, RPC_IDENTITY_MAX, "%d", (int)(w - h->w));
    return 1;
}

/* The simulated worker a call is for, or NULL (answered) when none or lost. */
static struct simw *callee(struct rpc_call *call, void *ctx) {
    struct sim_host *h = ctx;
    const char *who = rpc_call_identity(call);
    struct simw *w = who ? &h->w[atoi(who)] : NULL;
    if (!w) {
        rpc_fail(call, GRPC_STATUS_PERMISSION_DENIED, "only the coordinator may call this");
        return NULL;
    }
    if (atomic_load(&w->s->dead)) { // as a killed process would: nothing answers
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "connection refused (simulated loss)");
        return NULL;
    }
    return w;
}

static void reply_empty(struct rpc_call *call) {
    Moed__V1__Empty e = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &e.base);
}

/* Whether the binding names w's own address at the rank it is given, as a real worker
 * finds its listener in it (the compact form the coordinator sends: every rank's address). */
static int names_me(const struct simw *w, const Moed__V1__RunSlotRequest *req) {
    const Moed__V1__MeshAddresses *a = req->addresses;
    long k = (long)req->pod * req->slots + req->slot, n = (long)req->pods * req->slots;
    if (!a || (long)a->n_host != n || (long)a->n_port != n || k < 0 || k >= n ||
        a->host[k] >= a->n_hosts)
        return 0;
    char addr[80];
    snprintf(addr, sizeof addr, "%s:%u", a->hosts[a->host[k]], a->port[k]);
    return strcmp(addr, w->address) == 0;
}

static void run_slot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    const Moed__V1__RunSlotRequest *req = (const Moed__V1__RunSlotRequest *)msg;
    struct simw *w = callee(call, ctx);
    if (!w) return;
    if (w->running && strcmp(w->job, req->job_id) != 0) {
        rpc_fail(call, GRPC_STATUS_UNAVAILABLE, "busy with %s", w->job);
        return;
    }
    snprintf(w->job, sizeof w->job, "%s", req->job_id);
    w->binding++;
    w->epoch = req->epoch;
    w->pod = req->pod;
    w->slot = req->slot;
    if (req->restore) w->step = (long)req->restore_step;
    else if (!w->running && !w->holding) w->step = 0;
    w->reported = w->step; // its reports start after it
    w->running = 1;
    w->holding = 0;
    atomic_store(&w->s->epoch, w->epoch);
    atomic_store(&w->s->slot, w->slot);
    atomic_store(&w->s->pod, w->pod);
    atomic_store(&w->s->step, w->step);
    atomic_fetch_add(&w->s->restores, req->restore ? 1 : 0);
    atomic_store(&w->s->runslot_ns, sim_now_ns());
    atomic_fetch_add(&w->s->runslots, 1);
    if (!names_me(w, req)) atomic_fetch_add(&w->s->misbound, 1);
    reply_empty(call);
    if (req->restore) report_restored(w);
    uv_timer_start(&w->report, report_tick, (uint64_t)w->h->cfg->report_ms,
                   (uint64_t)w->h->cfg->report_ms);
}

static void stop_job(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    const Moed__V1__StopJobRequest *req = (const Moed__V1__StopJobRequest *)msg;
    struct simw *w = callee(call, ctx);
    if (!w) return;
    if (w->job[0] && !strcmp(w->job, req->job_id) && (!req->epoch || req->epoch >= w->epoch))
        leave_job(w);
    reply_empty(call); // the reachability probe (job "") too
}

/* What a real slot answers: it holds its live step and the one before (replica_fence). */
static void fence_slot(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    const Moed__V1__FenceRequest *req = (const Moed__V1__FenceRequest *)msg;
    struct simw *w = callee(call, ctx);
    if (!w) return;
    Moed__V1__FenceResponse resp = MOED__V1__FENCE_RESPONSE__INIT;
    Moed__V1__StateCopy c[2] = {MOED__V1__STATE_COPY__INIT, MOED__V1__STATE_COPY__INIT};
    Moed__V1__StateCopy *cp[2] = {&c[0], &c[1]};
    if (w->job[0] && !strcmp(w->job, req->job_id)) {
        w->running = 0; // its data plane aborted: frozen until its next epoch
        w->holding = 1;
        resp.holds = 1;
        resp.epoch = w->epoch;
        resp.pod = w->pod;
        resp.slot = w->slot;
        resp.step = w->step;
        c[0].slot = c[1].slot = w->slot;
        c[0].step = w->step;
        c[1].step = w->step - 1;
        resp.n_copies = w->step > 0 ? 2 : 1;
        resp.copies = cp;
    }
    rpc_reply(call, &resp.base);
}

static void inject_fault(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    (void)msg;
    if (callee(call, ctx))
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "a simulated worker has no data plane");
}

static const struct rpc_method sim_methods[] = {
    {RPC_WORKER_RUN_SLOT, &moed__v1__run_slot_request__descriptor, RPC_UNARY, RPC_AUTH_IDENTITY,
     run_slot},
    {RPC_WORKER_STOP_JOB, &moed__v1__stop_job_request__descriptor, RPC_UNARY, RPC_AUTH_IDENTITY,
     stop_job},
    {RPC_WORKER_FENCE_SLOT, &moed__v1__fence_request__descriptor, RPC_UNARY, RPC_AUTH_IDENTITY,
     fence_slot},
    {RPC_WORKER_INJECT_FAULT, &moed__v1__inject_fault_request__descriptor, RPC_UNARY,
     RPC_AUTH_IDENTITY, inject_fault},
};

/* ---- the process ---- */

/* One gRPC server, one port per simulated worker: each has an address of its own, as the
 * coordinator requires (a second worker at an address supersedes the first). */
static moe_status serve(struct sim_host *h) {
    int n = h->cfg->count;
    const char **more = calloc((size_t)n, sizeof *more);
    int *ports = calloc((size_t)n, sizeof *ports);
    if (!more || !ports) return moe_fail(MOE_ENOMEM, "out of memory");
    for (int i = 0; i < n - 1; i++) more[i] = "127.0.0.1:0";
    struct rpc_server_config sc = {.listen = "127.0.0.1:0", .role = "scale-sim",
                                   .identify = sim_identify, .more_listen = more,
                                   .n_more_listen = n - 1, .more_bound = ports + 1};
    moe_status s = rpc_server_start(&h->server, h->pump, &sc, sim_methods,
                                    (int)(sizeof sim_methods / sizeof sim_methods[0]), h,
                                    &ports[0]);
    for (int i = 0; s == MOE_OK && i < n; i++)
        snprintf(h->w[i].address, sizeof h->w[i].address, "127.0.0.1:%d", ports[i]);
    free(more);
    free(ports);
    return s;
}

static void on_signal(uv_signal_t *sig, int signum) {
    (void)signum;
    uv_stop(sig->loop); // the process exits right after: the kernel frees what it held
}

static moe_status host_start(struct sim_host *h) {
    h->w = calloc((size_t)h->cfg->count, sizeof *h->w);
    if (!h->w) return moe_fail(MOE_ENOMEM, "out of memory");
    CHECK(rpc_pump_start(&h->pump, h->loop));
    CHECK(serve(h));
    for (int i = 0; i < h->cfg->count; i++) {
        struct simw *w = &h->w[i];
        w->index = i;
        w->h = h;
        w->s = &h->cfg->shared[h->cfg->first + i];
        atomic_store(&w->s->pod, -1);
        uv_timer_init(h->loop, &w->beat);
        uv_timer_init(h->loop, &w->report);
        w->beat.data = w->report.data = w;
        CHECK(rpc_channel_open(&w->ch, h->cfg->coordinator, NULL, h->cfg->cluster_token, 1));
    }
    return MOE_OK;
}

int sim_main(const struct sim_config *cfg) {
    moe_log_init("scale-sim");
    moe_log_set_level(MOE_LOG_ERROR);
    srand((unsigned)getpid());
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct sim_host h = {.cfg = cfg, .loop = &loop, .heartbeat_ms = 500};
    if (host_start(&h) != MOE_OK) {
        fprintf(stderr, "bench_scale: simulator: %s\n", moe_errmsg());
        return 1;
    }
    uv_signal_init(&loop, &h.sig);
    uv_signal_start(&h.sig, on_signal, SIGTERM);
    register_next(&h);
    uv_run(&loop, UV_RUN_DEFAULT);
    return 0;
}
