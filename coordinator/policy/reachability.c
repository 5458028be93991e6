/*
 * reachability.c — refusing what the coordinator cannot use (see reachability.h).
 */
#include "reachability.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../../common/netaddr.h"
#include "../../proto/diagnose.h"
#include "../state/worker_calls.h"
#include "schedule.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct probe {
    uv_work_t work; // the diagnosis, on the thread pool
    struct coordinator *co;
    char worker_id[24];
    unsigned gen;
    char address[160];
    char ca[1024];
    struct rpc_result res;
    char why[768];
};

/* w's reason changed to `why` ("": accepted): said once. */
static void set_refused(struct worker *w, const char *why, long retry_s) {
    if (!strcmp(w->refused, why)) return;
    if (why[0] && retry_s)
        LOG_WARN("%s refused: %s (probing it again in %ld s)", w->id, why, retry_s);
    else if (why[0])
        LOG_WARN("%s refused: %s", w->id, why);
    else if (w->refused[0])
        LOG_INFO("%s at %s is reachable now: it may be given jobs", w->id, w->address);
    snprintf(w->refused, sizeof w->refused, "%s", why);
}

static void probe_succeeded(struct coordinator *co, struct worker *w) {
    w->probing = 0;
    w->reachable = 1;
    w->probe_failures = 0;
    set_refused(w, "", 0);
    schedule_pass(co); // it may take a queued job, or a recovery's slot
}

static void probe_failed(struct worker *w, const char *reason) {
    w->probing = 0;
    w->reachable = 0;
    long backoff = PROBE_BACKOFF_MIN_MS << (w->probe_failures < 6 ? w->probe_failures : 6);
    if (backoff > PROBE_BACKOFF_MAX_MS) backoff = PROBE_BACKOFF_MAX_MS;
    w->probe_failures++;
    w->next_probe_ms = moe_wall_ms() + backoff;
    char why[768];
    snprintf(why, sizeof why, "the coordinator cannot reach its Worker service at %.160s: %.540s",
             w->address, reason);
    set_refused(w, why, backoff / 1000);
}

/* The probe's own worker, or NULL when the answer is stale (a newer registration or probe). */
static struct worker *probe_owner(struct probe *p) {
    if (p->co->stopping) return NULL;
    struct worker *w = workers_find(p->co, p->worker_id);
    return w && w->probe_gen == p->gen ? w : NULL;
}

static void diagnose_work(uv_work_t *req) {
    struct probe *p = req->data;
    struct rpc_tls tls = {NULL, NULL, p->ca};
    if (rpc_diagnose(p->address, &tls, PROBE_DIAGNOSE_S, p->why, sizeof p->why) == RPC_DIAG_FINE)
        snprintf(p->why, sizeof p->why, "%s: %.400s", rpc_code_name(p->res.code),
                 p->res.details); // the dial worked: gRPC's own words are all there is
}

static void diagnose_done(uv_work_t *req, int status) {
    struct probe *p = req->data;
    struct worker *w = probe_owner(p);
    if (w) {
        if (status != 0) snprintf(p->why, sizeof p->why, "%s", p->res.details);
        probe_failed(w, p->why);
    }
    free(p);
}

/* Any answer from the worker's server (even a refusal of the credential, which a worker that
 * has not yet taken in its registration's answer gives) shows that the address, the transport
 * and TLS work; what gRPC answers when it could not get there (UNAVAILABLE, DEADLINE_EXCEEDED)
 * is diagnosed. */
static void on_probe(void *arg, const struct rpc_result *res, const ProtobufCMessage *resp) {
    (void)resp;
    struct probe *p = arg;
    struct worker *w = probe_owner(p);
    if (!w) {
        free(p);
        return;
    }
    if (res->code != GRPC_STATUS_UNAVAILABLE && res->code != GRPC_STATUS_DEADLINE_EXCEEDED &&
        res->code != GRPC_STATUS_CANCELLED) {
        struct coordinator *co = p->co;
        free(p);
        probe_succeeded(co, w);
        return;
    }
    p->res = *res;
    p->work.data = p;
    if (uv_queue_work(p->co->loop, &p->work, diagnose_work, diagnose_done) != 0)
        diagnose_done(&p->work, -1);
}

static void probe_start(struct coordinator *co, struct worker *w) {
    struct probe *p = calloc(1, sizeof *p);
    if (!p) return; // the next heartbeat after the backoff tries again
    p->co = co;
    snprintf(p->worker_id, sizeof p->worker_id, "%s", w->id);
    p->gen = ++w->probe_gen;
    snprintf(p->address, sizeof p->address, "%s", w->address);
    snprintf(p->ca, sizeof p->ca, "%s", co->cfg.worker_tls_ca);
    w->probing = 1;
    if (worker_call_probe(co, w, on_probe, p) != MOE_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        free(p);
        probe_failed(w, why);
    }
}

void reach_registered(struct coordinator *co, struct worker *w, const char *peer) {
    char why[768];
    w->probe_gen++; // an answer to an earlier probe no longer counts
    w->reachable = 0;
    w->probing = 0;
    w->probe_failures = 0;
    w->refused_for_good = net_loopback_refusal(w->address, w->data_address, peer, co->address,
                                               why, sizeof why);
    if (w->refused_for_good) {
        set_refused(w, why, 0);
        return;
    }
    probe_start(co, w);
}

void reach_heartbeat(struct coordinator *co, struct worker *w, int64_t now) {
    if (w->reachable || w->probing || w->refused_for_good || !w->refused[0] ||
        now < w->next_probe_ms)
        return;
    probe_start(co, w);
}
