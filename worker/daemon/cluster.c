/*
 * cluster.c — joining the cluster and staying in it: RegisterWorker at startup (blocking,
 * retried while the coordinator starts), a Heartbeat per interval, and registering again,
 * with the same id and the running job, when a restarted coordinator does not know us. A
 * heartbeat's answer may stop the job the coordinator no longer runs here.
 * Identity: the first registration carries the cluster token and returns our own credential;
 * every later call carries that credential instead (the channel's token is switched), and so
 * does re-registering our id. A coordinator that refuses the credential (its store was lost)
 * gets a registration as a new worker, with the cluster token and no id.
 * Reachability (docs/operations.md, "Addresses"; docs/security.md, "TLS mistakes"): a
 * coordinator that cannot be reached is diagnosed by a dial of our own (proto/diagnose.h) —
 * at start before and between registration attempts (a TLS mistake ends the start at once),
 * and once per loss of heartbeats on the thread pool; the coordinator's `refused` (why it
 * gives us no job) is logged when it changes, never acted on.
 * Loop thread only.
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../common/sdnotify.h"
#include "proto/moed.pb-c.h"
#include "../../proto/diagnose.h"
#include "../../proto/methods.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REGISTER_CALL_TIMEOUT_S 5.0

/* The running job as the coordinator should learn it: id, last step and epoch, or none.
 * With two slots (of one job) the step is the lower one, the epoch the newer one, and it is
 * holding when either slot is. */
static const char *running_job(struct worker *w, long *step, uint64_t *epoch, int *holding) {
    *step = 0;
    *epoch = 0;
    *holding = 0;
    const char *id = "";
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished)) continue;
        long s = atomic_load(&j->step);
        uint64_t e = job_epoch(j);
        if (!id[0] || s < *step) *step = s;
        if (e > *epoch) *epoch = e;
        *holding |= atomic_load(&j->holding);
        id = j->id;
    }
    return id;
}

/* The channel's next calls prove who we are: our credential, or before we have one (or after
 * the coordinator forgot it) the cluster token, which only registers a new worker. */
static void use_identity(struct worker *w) {
    char cred[WORKER_CREDENTIAL_MAX];
    worker_copy_credential(w, cred);
    rpc_channel_set_token(w->coord, cred[0] ? cred : w->token);
}

/* The coordinator does not know our credential (a coordinator whose store is gone): we join
 * again as a new worker. */
static void forget_identity(struct worker *w, const char *why) {
    char id[WORKER_ID_MAX];
    worker_copy_id(w, id);
    LOG_WARN("the coordinator refused the credential of %s (%s): registering as a new worker",
             id, why);
    uv_mutex_lock(&w->id_mu);
    w->worker_id[0] = 0;
    memset(w->credential, 0, sizeof w->credential);
    uv_mutex_unlock(&w->id_mu);
    use_identity(w);
}

static void fill_register(struct worker *w, Moed__V1__RegisterRequest *req, char *id_buf,
                          long *step) {
    worker_copy_id(w, id_buf);
    req->worker_id = id_buf; // "" after forget_identity: a new worker
    use_identity(w);
    req->address = w->address;
    req->pod = w->cfg.pod;
    req->version = (char *)MOED_VERSION;
    req->host = w->host;
    req->pid = (int32_t)getpid();
    req->cpus = w->cpus;
    uint64_t epoch;
    int holding;
    req->job_id = (char *)running_job(w, step, &epoch, &holding);
    req->step = *step;
    req->epoch = epoch;
    req->holding = holding;
    req->data_address = w->data_addresses[0];
    static char *extra[WORKER_MAX_SLOTS];
    req->n_extra_data_addresses = 0;
    for (int k = 1; k < WORKER_MAX_SLOTS; k++)
        if (w->listeners[k]) extra[req->n_extra_data_addresses++] = w->data_addresses[k];
    req->extra_data_addresses = extra;
    req->mpi_rank = w->mpi_rank;
    req->mpi_size = w->mpi_size;
    req->idle_heartbeats = 1; // heartbeat_timer
    req->mpi_job = w->mpi_job;
}

/* Takes the coordinator's answer: our id and credential (kept across re-registrations) and
 * the interval. */
static void apply_registration(struct worker *w, const Moed__V1__RegisterResponse *resp) {
    char old[WORKER_ID_MAX];
    worker_copy_id(w, old);
    if (resp->worker_id[0]) { // an answer without an id keeps the one we have
        uv_mutex_lock(&w->id_mu);
        snprintf(w->worker_id, sizeof w->worker_id, "%s", resp->worker_id);
        if (resp->worker_credential[0])
            snprintf(w->credential, sizeof w->credential, "%s", resp->worker_credential);
        uv_mutex_unlock(&w->id_mu);
        use_identity(w);
        if (old[0] && strcmp(old, resp->worker_id) != 0)
            LOG_WARN("the coordinator gave us a new id: %s (was %s)", resp->worker_id, old);
    }
    long ms = (long)resp->heartbeat_interval_ms;
    if (ms <= 0) ms = 1000; // an unset interval must not become a busy loop
    if (ms < 50) ms = 50;
    int changed = ms != w->heartbeat_ms;
    w->heartbeat_ms = ms;
    long idle = (long)resp->idle_heartbeat_interval_ms;
    w->idle_heartbeat_ms = idle > ms ? idle : 0;
    if (changed && uv_is_active((uv_handle_t *)&w->heartbeat)) worker_heartbeat_start(w);
}

/* Why the coordinator cannot be reached, by a dial of our own (proto/diagnose.h): a TLS mistake
 * fails the start at once, named (retrying cannot mend it), where gRPC would only time out;
 * a coordinator that does not answer yet is waited for. */
static moe_status diagnose_coordinator(struct worker *w, int *said) {
    char why[768];
    enum rpc_diagnosis d = rpc_diagnose(w->cfg.coordinator, &w->cfg.tls, DIAGNOSE_TIMEOUT_S, why,
                                        sizeof why);
    if (d == RPC_DIAG_TLS)
        return moe_fail(MOE_EUNAVAILABLE, "cannot register with the coordinator: %s%s", why,
                        w->cfg.tls.ca_file ? " (--tls-ca)" : " (no --tls-ca was given)");
    if (d == RPC_DIAG_DOWN && !*said) {
        LOG_WARN("the coordinator does not answer yet: %s; retrying for %.0f s", why,
                 REGISTER_RETRY_S);
        *said = 1;
    }
    return MOE_OK;
}

/* The coordinator's word on whether it will give us work (RegisterResponse / HeartbeatResponse
 * `refused`): logged when it changes, never acted on otherwise — we stay registered and keep
 * heartbeating at the interval, and the coordinator probes us again with its backoff. */
static void note_refusal(struct worker *w, const char *refused) {
    if (!refused) refused = "";
    if (!strcmp(refused, w->refused)) return;
    if (refused[0])
        LOG_WARN("the coordinator gives this worker no job: %s", refused);
    else
        LOG_INFO("the coordinator accepts this worker now (it reaches %s)", w->address);
    snprintf(w->refused, sizeof w->refused, "%s", refused);
}

moe_status worker_register(struct worker *w) {
    int said = 0;
    CHECK(diagnose_coordinator(w, &said));
    Moed__V1__RegisterRequest req = MOED__V1__REGISTER_REQUEST__INIT;
    char id[WORKER_ID_MAX];
    long step;
    fill_register(w, &req, id, &step);
    double t0 = moe_clock_s();
    int attempts = 0;
    for (;;) {
        ProtobufCMessage *resp = NULL;
        struct rpc_result res;
        moe_status s = rpc_call_sync(w->coord, RPC_CLUSTER_REGISTER_WORKER, &req.base,
                                     &moed__v1__register_response__descriptor, &resp,
                                     REGISTER_CALL_TIMEOUT_S, &res);
        attempts++;
        if (s == MOE_OK) {
            const Moed__V1__RegisterResponse *r = (const Moed__V1__RegisterResponse *)resp;
            apply_registration(w, r);
            LOG_INFO("registered with the coordinator at %s as %s (cluster %s, pod %d, "
                     "heartbeat every %ld ms), serving on %s",
                     w->cfg.coordinator, w->worker_id, r->cluster_id[0] ? r->cluster_id : "-",
                     w->cfg.pod, w->heartbeat_ms, w->address);
            note_refusal(w, r->refused);
            protobuf_c_message_free_unpacked(resp, NULL);
            if (!w->worker_id[0] || !w->credential[0])
                return moe_fail(MOE_EINTERNAL, "the coordinator at %s registered us without "
                                "a worker id and credential", w->cfg.coordinator);
            return MOE_OK;
        }
        if (s == MOE_EAUTH)
            return moe_fail(MOE_EAUTH, "coordinator refused the cluster token (%s): check "
                            "--cluster-token-file against the coordinator's", res.details);
        if (s != MOE_EUNAVAILABLE) return s; // rpc_call_sync's message names the method
        CHECK(diagnose_coordinator(w, &said));
        double waited = moe_clock_s() - t0;
        if (waited >= REGISTER_RETRY_S)
            return moe_fail(MOE_EUNAVAILABLE, "cannot reach the coordinator at %s after %.0f s "
                            "(%d attempts): %s: %s", w->cfg.coordinator, waited, attempts,
                            rpc_code_name(res.code), res.details);
        LOG_DEBUG("registration attempt %d: %s", attempts, moe_errmsg());
        moe_sleep_s(0.2); // a call that failed fast must not turn into a busy loop
    }
}

/* ---- re-registration (asynchronous, after a heartbeat said the coordinator lost us) ---- */

static void on_reregistered(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct worker *w = arg;
    w->reregistering = 0;
    if (atomic_load(&w->shutting_down)) return;
    char cred[WORKER_CREDENTIAL_MAX];
    worker_copy_credential(w, cred);
    if (cred[0] && (res->code == GRPC_STATUS_UNAUTHENTICATED ||
                    res->code == GRPC_STATUS_PERMISSION_DENIED)) {
        forget_identity(w, res->details); // the next heartbeat's refusal registers us anew
        w->heartbeat_sent_ms = 0;         // at the next tick, however long the idle interval
        return;
    }
    if (res->code != GRPC_STATUS_OK) {
        w->heartbeat_sent_ms = 0;
        if (res->code == GRPC_STATUS_UNAUTHENTICATED)
            LOG_ERROR("coordinator refused the cluster token on re-registration: %s",
                      res->details);
        else
            LOG_WARN("re-registration failed: %s: %s (the next heartbeat tries again)",
                     rpc_code_name(res->code), res->details);
        return;
    }
    apply_registration(w, (const Moed__V1__RegisterResponse *)msg);
    note_refusal(w, ((const Moed__V1__RegisterResponse *)msg)->refused);
    atomic_fetch_add(&w->contact, 1);
    long step;
    uint64_t epoch;
    int holding;
    const char *job = running_job(w, &step, &epoch, &holding);
    if (job[0])
        LOG_INFO("registered again as %s, running %s at step %ld", w->worker_id, job, step);
    else
        LOG_INFO("registered again as %s", w->worker_id);
}

static void reregister(struct worker *w) {
    if (w->reregistering) return;
    Moed__V1__RegisterRequest req = MOED__V1__REGISTER_REQUEST__INIT;
    char id[WORKER_ID_MAX];
    long step;
    fill_register(w, &req, id, &step);
    /* the request is packed before rpc_call_async returns: stack strings are fine */
    if (rpc_call_async(w->pump, w->coord, RPC_CLUSTER_REGISTER_WORKER, &req.base,
                       &moed__v1__register_response__descriptor, REGISTER_CALL_TIMEOUT_S,
                       on_reregistered, w) != MOE_OK) {
        LOG_WARN("re-registration: %s", moe_errmsg());
        return;
    }
    w->reregistering = 1;
}

/* ---- heartbeats ---- */

/* A heartbeat that could not reach the coordinator (after we had joined: a coordinator
 * restarted with another certificate, a firewall) is diagnosed once per loss, by the same dial
 * as at start, on libuv's thread pool: the loop never waits for it. */
struct lost_dial {
    uv_work_t req;
    struct worker *w;
    char why[768];
    enum rpc_diagnosis d;
};

static void lost_dial_work(uv_work_t *req) {
    struct lost_dial *l = req->data;
    l->d = rpc_diagnose(l->w->cfg.coordinator, &l->w->cfg.tls, DIAGNOSE_TIMEOUT_S, l->why,
                        sizeof l->why);
}

static void lost_dial_done(uv_work_t *req, int status) {
    struct lost_dial *l = req->data;
    l->w->diagnosing = 0;
    if (status == 0 && l->d != RPC_DIAG_FINE && !atomic_load(&l->w->shutting_down))
        LOG_WARN("the coordinator at %s cannot be reached: %s", l->w->cfg.coordinator, l->why);
    free(l);
}

static void diagnose_lost(struct worker *w, grpc_status_code code) {
    if (w->diagnosing ||
        (code != GRPC_STATUS_UNAVAILABLE && code != GRPC_STATUS_DEADLINE_EXCEEDED))
        return;
    struct lost_dial *l = calloc(1, sizeof *l);
    if (!l) return;
    l->w = w;
    l->req.data = l;
    if (uv_queue_work(w->loop, &l->req, lost_dial_work, lost_dial_done) != 0) {
        free(l);
        return;
    }
    w->diagnosing = 1;
}

struct heartbeat {
    struct worker *w;
    char job_id[64]; // the job this heartbeat spoke for: stop_job refers to it
    uint64_t epoch;  // ... and its epoch: a slot given a newer one since runs on
};

static void heartbeat_tick(uv_timer_t *t);

static void on_heartbeat(void *arg, const struct rpc_result *res, const ProtobufCMessage *msg) {
    struct heartbeat *hb = arg;
    struct worker *w = hb->w;
    w->heartbeat_in_flight = 0;
    if (atomic_load(&w->shutting_down)) goto done;
    if (res->code == GRPC_STATUS_UNAUTHENTICATED) { // it does not know who we are
        char cred[WORKER_CREDENTIAL_MAX];
        worker_copy_credential(w, cred);
        if (cred[0]) forget_identity(w, res->details);
        reregister(w);
        goto done;
    }
    if (res->code != GRPC_STATUS_OK) {
        w->heartbeat_sent_ms = 0; // the next tick tries again, not the next idle interval
        if (!w->coordinator_lost) {
            LOG_INFO("heartbeat failed (%s: %s); training goes on, retrying every %ld ms",
                     rpc_code_name(res->code), res->details, w->heartbeat_ms);
            diagnose_lost(w, res->code);
        }
        else
            LOG_DEBUG("heartbeat failed: %s: %s", rpc_code_name(res->code), res->details);
        w->coordinator_lost = 1;
        goto done;
    }
    if (w->coordinator_lost) {
        LOG_INFO("heartbeat answered: the coordinator is back");
        atomic_fetch_add(&w->contact, 1);
    }
    w->coordinator_lost = 0;
    const Moed__V1__HeartbeatResponse *r = (const Moed__V1__HeartbeatResponse *)msg;
    if (!r->reregister) note_refusal(w, r->refused);
    if (r->reregister) {
        LOG_INFO("the coordinator does not know us (restarted?): registering again");
        reregister(w);
    }
    if (!r->reregister) worker_spare_hint(w, hb->job_id[0] != 0, r->prepare_job_id,
                                          r->prepare_spec_json);
    long idle = (long)r->idle_heartbeat_interval_ms; // it grows with the idle workers
    if (idle > 0) w->idle_heartbeat_ms = idle > w->heartbeat_ms ? idle : 0;
    for (int k = 0; r->stop_job && hb->job_id[0] && k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (!j || atomic_load(&j->finished) || strcmp(j->id, hb->job_id) != 0) continue;
        if (hb->epoch && job_epoch(j) > hb->epoch) continue; // a RunSlot overtook the answer
        if (job_stop(j, JOB_STOP_COORDINATOR))
            LOG_INFO("%s: the coordinator says it no longer runs here: stopping", hb->job_id);
    }
done:
    free(hb);
    if (w->heartbeat_again && !atomic_load(&w->shutting_down)) {
        w->heartbeat_again = 0;
        heartbeat_tick(&w->heartbeat);
    }
}

static void heartbeat_tick(uv_timer_t *t) {
    struct worker *w = t->data;
    moe_notify_watchdog(); // a loop that stops ticking is what WatchdogSec= catches
    if (w->heartbeat_in_flight || atomic_load(&w->shutting_down)) return;
    struct heartbeat *hb = calloc(1, sizeof *hb);
    if (!hb) return;
    hb->w = w;
    long step;
    uint64_t epoch;
    int holding;
    snprintf(hb->job_id, sizeof hb->job_id, "%s", running_job(w, &step, &epoch, &holding));
    hb->epoch = epoch;
    char id[WORKER_ID_MAX];
    worker_copy_id(w, id);
    Moed__V1__HeartbeatRequest req = MOED__V1__HEARTBEAT_REQUEST__INIT;
    req.worker_id = id;
    req.job_id = hb->job_id;
    req.step = step;
    req.epoch = epoch;
    req.holding = holding;
    req.prepared_job_id = w->spare_job;
    /* long enough for a busy coordinator, short enough that one lost call skips few ticks */
    double timeout = 2.0 * (double)w->heartbeat_ms / 1000.0;
    if (timeout < 1.0) timeout = 1.0;
    if (timeout > 10.0) timeout = 10.0;
    if (rpc_call_async(w->pump, w->coord, RPC_CLUSTER_HEARTBEAT, &req.base,
                       &moed__v1__heartbeat_response__descriptor, timeout, on_heartbeat,
                       hb) != MOE_OK) {
        LOG_DEBUG("heartbeat: %s", moe_errmsg());
        free(hb);
        return;
    }
    w->heartbeat_in_flight = 1;
    w->heartbeat_sent_ms = uv_now(w->loop);
}

static void heartbeat_timer(uv_timer_t *t);

/* Whether this tick's heartbeat may be skipped: a slot runs and a step report was answered
 * within an interval (the coordinator counts it as our heartbeat: one call, not two; the
 * next tick then comes an interval after that answer, so that we are never silent longer
 * than an interval); or none runs and the idle interval the coordinator gave is not over,
 * while our connection to it held (a broken one is a restarted coordinator, maybe: it hears
 * from us at once). */
static int heartbeat_skip(struct worker *w, const char *job, int holding) {
    if (holding) return 0; // fenced: the recovery hears of it at every tick
    if (job[0]) {
        long long answered = atomic_load(&w->report_answered_ms);
        long long since = (long long)(moe_clock_s() * 1e3) - answered;
        if (!answered || since >= w->heartbeat_ms) return 0;
        uv_timer_start(&w->heartbeat, heartbeat_timer, (uint64_t)(w->heartbeat_ms - since),
                       (uint64_t)w->heartbeat_ms);
        return 1;
    }
    return w->idle_heartbeat_ms > 0 && rpc_channel_ready(w->coord) &&
           uv_now(w->loop) - w->heartbeat_sent_ms + (uint64_t)w->heartbeat_ms / 2 <
               (uint64_t)w->idle_heartbeat_ms;
}

/* The timer's tick: every interval while a slot runs (or is held) and no step report stood
 * for it, every idle interval while none does (the coordinator waits that much longer for an
 * idle worker); a job's start is seen at the next tick, so a busy worker is never late by
 * more than one interval. */
static void heartbeat_timer(uv_timer_t *t) {
    struct worker *w = t->data;
    long step;
    uint64_t epoch;
    int holding;
    const char *job = running_job(w, &step, &epoch, &holding);
    if (heartbeat_skip(w, job, holding)) {
        moe_notify_watchdog();
        return;
    }
    heartbeat_tick(t);
}

/* Now, not at the next tick: the coordinator waits for a heartbeat without a job before it
 * gives a worker that just finished one the next (it would find it still busy otherwise). */
void worker_heartbeat_now(struct worker *w) {
    if (atomic_load(&w->shutting_down) || !uv_is_active((uv_handle_t *)&w->heartbeat)) return;
    if (w->heartbeat_in_flight) { // that one may still name the job: another when it is back
        w->heartbeat_again = 1;
        return;
    }
    heartbeat_tick(&w->heartbeat);
}

void worker_heartbeat_start(struct worker *w) {
    w->heartbeat.data = w;
    uv_timer_start(&w->heartbeat, heartbeat_timer, (uint64_t)w->heartbeat_ms,
                   (uint64_t)w->heartbeat_ms);
}
