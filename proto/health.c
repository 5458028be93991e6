/*
 * health.c — grpc.health.v1.Health for a server of proto/rpc.h (see health.h).
 *
 * One status per server: every name it lists is served by the same process, which is
 * serving or not as a whole. Watch streams sit in a list; each gets the status at once, then
 * each change (the protocol's "the status now, then every change").
 */
#include "health.h"

#include <stdlib.h>
#include <string.h>

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus serving_status;
#define SERVICE_UNKNOWN GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN

struct watcher {
    struct rpc_call *call;
    struct rpc_health *h;
    int known;                // of a name the server answers for: told each change
    struct watcher *next;
};

struct rpc_health {
    const char *const *services;
    int n_services;
    int serving;
    struct watcher *watchers; // every open Watch stream
    int n_watchers;           // at most RPC_HEALTH_MAX_WATCHES
};

struct rpc_health *rpc_health_new(const char *const *services, int n_services) {
    struct rpc_health *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->services = services;
    h->n_services = n_services;
    return h;
}

static int known(const struct rpc_health *h, const char *service) {
    if (!service || !service[0]) return 1;
    for (int i = 0; i < h->n_services; i++)
        if (!strcmp(h->services[i], service)) return 1;
    return 0;
}

static serving_status status_now(const struct rpc_health *h) {
    return h->serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static void send_status(struct rpc_call *c, serving_status st) {
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = st;
    rpc_stream_send(c, &r.base); // -1: the client left; on_close unlinks it
}

void rpc_health_set(struct rpc_health *h, int serving) {
    if (!h || !!serving == h->serving) return;
    h->serving = !!serving;
    for (struct watcher *w = h->watchers; w; w = w->next)
        if (w->known) send_status(w->call, status_now(h));
}

int rpc_health_serving(const struct rpc_health *h) { return h && h->serving; }

void rpc_health_free(struct rpc_health *h) {
    if (!h) return;
    while (h->watchers) { // none once the server is down; never leak one regardless
        struct watcher *w = h->watchers;
        h->watchers = w->next;
        free(w);
    }
    free(h);
}

void rpc_health_check(struct rpc_call *call, const ProtobufCMessage *request, void *ctx) {
    const Grpc__Health__V1__HealthCheckRequest *req =
        (const Grpc__Health__V1__HealthCheckRequest *)request;
    struct rpc_health *h = rpc_call_health(call);
    if (!h || !known(h, req->service)) {
        rpc_fail(call, GRPC_STATUS_NOT_FOUND, "unknown service '%.64s'", req->service);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = status_now(h);
    rpc_reply(call, &r.base);
}

static void watch_closed(struct rpc_call *c, void *arg) {
    struct watcher *me = arg;
    for (struct watcher **p = &me->h->watchers; *p; p = &(*p)->next) {
        if (*p != me) continue;
        *p = me->next;
        me->h->n_watchers--;
        break;
    }
    free(me);
}

/* Open until the client cancels or the server goes down: the protocol's Watch never ends on
 * its own, not even for an unknown name (SERVICE_UNKNOWN, and the name may appear later).
 * Anyone may open one without a credential, so their number is bounded. */
void rpc_health_watch(struct rpc_call *call, const ProtobufCMessage *request, void *ctx) {
    const Grpc__Health__V1__HealthCheckRequest *req =
        (const Grpc__Health__V1__HealthCheckRequest *)request;
    struct rpc_health *h = rpc_call_health(call);
    if (!h) {
        rpc_stream_finish(call, GRPC_STATUS_UNIMPLEMENTED, "no health service here");
        return;
    }
    if (h->n_watchers >= RPC_HEALTH_MAX_WATCHES) {
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                          "too many health watches open; use Check");
        return;
    }
    struct watcher *w = calloc(1, sizeof *w);
    if (!w) {
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->call = call;
    w->h = h;
    w->known = known(h, req->service);
    w->next = h->watchers;
    h->watchers = w;
    h->n_watchers++;
    rpc_stream_on_close(call, watch_closed, w);
    send_status(call, w->known ? status_now(h) : SERVICE_UNKNOWN);
}
