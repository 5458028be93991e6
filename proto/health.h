/*
 * health.h — the standard gRPC health service (grpc.health.v1.Health: Check and Watch) on a
 * server of proto/rpc.h, so that stock probes (grpc_health_probe, Kubernetes' gRPC probe,
 * grpcurl) can ask a daemon whether it serves, without a token.
 *
 * Owns: a server's serving status (one status for every name the server answers to: "" and
 * the services it lists), Check's answers, the open Watch streams (a bounded number: no
 * credential is needed to open one) and the message each gets when the status changes.
 * Never: decides when a daemon serves (the daemon calls rpc_health_set), or lets a call
 * without a credential reach any other method (RPC_AUTH_HEALTH, held to these paths by
 * rpc_server_start). What each daemon reports: docs/operations.md "Health".
 */
#ifndef MOE_PROTO_HEALTH_H
#define MOE_PROTO_HEALTH_H

#include "rpc.h"

#include "proto/grpc/health/v1/health.pb-c.h"

#define RPC_HEALTH_CHECK RPC_HEALTH_PREFIX "Check"
#define RPC_HEALTH_WATCH RPC_HEALTH_PREFIX "Watch"

struct rpc_health;

/* Watch streams open at once per server (anyone may open them, without a credential); beyond
 * it Watch answers RESOURCE_EXHAUSTED. Probes use Check; a Watch is one per client channel. */
#define RPC_HEALTH_MAX_WATCHES 256

/* A status for "" and each of `services` (an array that must outlive it: "moed.v1.Jobs", ...),
 * NOT_SERVING until rpc_health_set says otherwise. NULL when out of memory. */
struct rpc_health *rpc_health_new(const char *const *services, int n_services);
/* SERVING (1) or NOT_SERVING (0), told at once to every Watch of a known name. Loop thread. */
void rpc_health_set(struct rpc_health *h, int serving);
int rpc_health_serving(const struct rpc_health *h);
/* After the server that used it is down (its streams are closed by then). NULL is fine. */
void rpc_health_free(struct rpc_health *h);

/* The handlers; they find the state through rpc_call_health (rpc_server_config.health). */
void rpc_health_check(struct rpc_call *call, const ProtobufCMessage *request, void *ctx);
void rpc_health_watch(struct rpc_call *call, const ProtobufCMessage *request, void *ctx);

/* The two rows a server's method table adds to serve the health service. */
#define RPC_HEALTH_METHODS                                                                     \
    {RPC_HEALTH_CHECK, &grpc__health__v1__health_check_request__descriptor, RPC_UNARY,         \
     RPC_AUTH_HEALTH, rpc_health_check},                                                       \
    {RPC_HEALTH_WATCH, &grpc__health__v1__health_check_request__descriptor, RPC_SERVER_STREAM, \
     RPC_AUTH_HEALTH, rpc_health_watch}

#endif
