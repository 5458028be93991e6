/*
 * rpc.h — gRPC (C core) call mechanics for moed's processes, so that services read as handlers.
 *
 * Owns: the completion queue of a process and the thread that drains it; handing every
 * completion to the process's libuv loop (handlers and callbacks run on the loop thread only,
 * so daemon state needs no locks); request/reply framing with protobuf-c; token and
 * credential checks (who a credential belongs to is the service's resolver's answer), refusals
 * logged under a rate limit;
 * server-streaming with one send in flight and a queue behind it; client calls (blocking for
 * the CLI and the training thread, asynchronous for the loop); TLS or insecure credentials.
 * Never: knows what a job or a worker is. Services own their state; this module owns calls.
 *
 * Status codes are gRPC's (grpc_status_code). A handler answers every call exactly once:
 * rpc_reply or rpc_fail for unary calls, rpc_stream_finish for streams.
 */
#ifndef MOE_RPC_H
#define MOE_RPC_H

#include "../common/status.h"

#include <grpc/grpc.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <uv.h>

/* Largest message either side accepts; bigger ones fail with RESOURCE_EXHAUSTED. Model
 * chunks are 1 MiB, so 4 MiB leaves room without letting a client make us allocate much. */
#define RPC_MAX_MESSAGE (4 << 20)
#define RPC_MODEL_CHUNK (1 << 20)

/* Calls grpc_init once per process (idempotent); rpc_shutdown_library at exit. */
void rpc_init(void);
void rpc_shutdown_library(void);

/* TLS material, all PEM file paths; NULL or "" members mean "not configured". A server with
 * cert+key serves TLS; a client with ca verifies the server against it. */
struct rpc_tls {
    const char *cert_file;
    const char *key_file;
    const char *ca_file;
};

/* ---- the pump: one completion queue drained by one thread into a libuv loop ---- */

struct rpc_pump;

moe_status rpc_pump_start(struct rpc_pump **out, uv_loop_t *loop);
/* Cancels outstanding client calls, shuts the queue down, joins the thread and closes the
 * loop handles; `done` runs on the loop once everything is released. Servers on this pump
 * must be shut down first. */
void rpc_pump_stop(struct rpc_pump *p, void (*done)(void *arg), void *arg);

/* ---- servers ---- */

/* What a call must carry as "authorization: Bearer <secret>":
 *   CLIENT    the client token;
 *   CLUSTER   the cluster token, or a credential the server's `identify` accepts (the call then
 *             has that identity: rpc_call_identity);
 *   IDENTITY  only a credential `identify` accepts: a token alone is refused (UNAUTHENTICATED);
 *   HEALTH    nothing: the standard health service, which stock probes call without a token.
 *             rpc_server_start refuses it on any path outside "/grpc.health.v1.Health/", so it
 *             can never open another method.
 * A token that is not configured ("") is not checked (CLIENT, CLUSTER). A row that names no
 * class (0, RPC_AUTH_UNSET) is refused by rpc_server_start: forgetting is never "open". */
enum rpc_auth {
    RPC_AUTH_UNSET = 0,
    RPC_AUTH_CLIENT,
    RPC_AUTH_CLUSTER,
    RPC_AUTH_IDENTITY,
    RPC_AUTH_HEALTH,
};
#define RPC_HEALTH_PREFIX "/grpc.health.v1.Health/"
enum rpc_kind { RPC_UNARY = 0, RPC_SERVER_STREAM };

struct rpc_call;   // one incoming call, owned by this module
struct rpc_server;

/* `request` is the unpacked message (freed by this module after the handler returns; copy
 * what must outlive it). `ctx` is the server's context (a struct coordinator *, ...). */
typedef void (*rpc_handler)(struct rpc_call *call, const ProtobufCMessage *request, void *ctx);

struct rpc_method {
    const char *path;                                 // "/moed.v1.Jobs/SubmitJob"
    const ProtobufCMessageDescriptor *request_type;
    enum rpc_kind kind;
    enum rpc_auth auth;                               // which token the call must carry
    rpc_handler handler;
};

#define RPC_IDENTITY_MAX 64

/* Whose credential `cred` (len bytes, the bearer value) is: writes the identity ("w-3",
 * "coordinator"; fewer than RPC_IDENTITY_MAX bytes) to `out` and returns 1, or returns 0 when
 * it is no one's. `ctx` is the server's context. Runs on the loop thread before the request is
 * unpacked; it must compare secrets in constant time (rpc_secret_equal). */
typedef int (*rpc_identify_fn)(void *ctx, const char *cred, size_t len,
                               char out[RPC_IDENTITY_MAX]);

struct rpc_server_config {
    const char *listen;              // "127.0.0.1:7070"; port 0 picks a free one
    const struct rpc_tls *tls;       // NULL: insecure
    const char *client_token;        // required by RPC_AUTH_CLIENT methods
    const char *cluster_token;       // required by RPC_AUTH_CLUSTER methods
    rpc_identify_fn identify;        // RPC_AUTH_IDENTITY (and CLUSTER) credentials; NULL: none
    const char *role;                // for log lines: "coordinator", "worker"
    /* Runs on the loop thread once per call as its status goes out, or as a stream ends
     * without one (CANCELLED): the index of its method in `methods` (-1: an unknown method),
     * the code, and the seconds since the call arrived (a stream's whole life). For counting
     * (the coordinator's /metrics); it must not touch the call. NULL: none. */
    void (*on_done)(void *ctx, int method, grpc_status_code code, double seconds);
    struct rpc_health *health;       // what the health service answers (proto/health.h); NULL: none
    /* More listeners, each "host:port" (port 0 picks one), bound before the server starts;
     * their ports go to more_bound[i]. One process that plays many workers, each at an
     * address of its own (tests/bench/bench_scale.c). NULL / 0: none. */
    const char *const *more_listen;
    int n_more_listen;
    int *more_bound;
};

/* Binds, registers `methods` (the array must outlive the server) and starts serving.
 * *bound_port gets the port actually bound. Unknown methods get UNIMPLEMENTED. A table whose
 * row names no auth class, or RPC_AUTH_HEALTH outside the health service, is MOE_EINVAL. */
moe_status rpc_server_start(struct rpc_server **out, struct rpc_pump *pump,
                            const struct rpc_server_config *cfg, const struct rpc_method *methods,
                            int n_methods, void *ctx, int *bound_port);
/* Stops accepting, cancels calls in flight (open streams get their on_close callback), and
 * runs `done` on the loop when the server is destroyed. */
void rpc_server_shutdown(struct rpc_server *s, void (*done)(void *arg), void *arg);

/* Unary answers. The call is released after the status is sent: drop the pointer. */
void rpc_reply(struct rpc_call *c, const ProtobufCMessage *response);
void rpc_fail(struct rpc_call *c, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A unary handler that answers later, on the loop (after work on another thread): the call
 * stays valid until its rpc_reply or rpc_fail, which must come exactly once. */
void rpc_defer(struct rpc_call *c);
/* rpc_fail for a caller that may not do what it asks (PERMISSION_DENIED, UNAUTHENTICATED): the
 * refusal is logged with the method, the peer and the caller's identity, under the rate limit
 * of that method's refusals (the first few per 10 s in full, then a count). */
void rpc_refuse(struct rpc_call *c, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streams. rpc_stream_send packs `msg` and queues it (one send in flight per call); returns
 * -1 once the call is finished or the client went away. rpc_stream_finish sends the status
 * after the queue drains. on_close runs once when the call ends for any reason (finished,
 * client cancelled, server shut down); after it returns the call pointer is invalid. The
 * owner must not use the call after on_close (it typically unlinks it from a watcher list). */
int rpc_stream_send(struct rpc_call *c, const ProtobufCMessage *msg);
void rpc_stream_finish(struct rpc_call *c, grpc_status_code code, const char *details);

/* One message for many streams (a job's watchers): packed once, its bytes shared by every
 * send. The message may be freed as soon as the sends are queued. */
struct rpc_message;
struct rpc_message *rpc_message_pack(const ProtobufCMessage *msg);
int rpc_stream_send_packed(struct rpc_call *c, const struct rpc_message *m);
void rpc_message_free(struct rpc_message *m);
void rpc_stream_on_close(struct rpc_call *c, void (*on_close)(struct rpc_call *c, void *arg),
                         void *arg);
size_t rpc_stream_queued(const struct rpc_call *c); // messages not yet handed to gRPC
/* on_sent runs each time the queue becomes empty after a send completed: the place to send
 * the next piece of a large transfer without queueing it all (FetchModel). */
void rpc_stream_on_sent(struct rpc_call *c, void (*on_sent)(struct rpc_call *c, void *arg),
                        void *arg);

const char *rpc_call_method(const struct rpc_call *c);
const char *rpc_call_peer(const struct rpc_call *c); // "ipv4:127.0.0.1:50312"
/* The identity the server's `identify` gave the call's credential; NULL when the call carried
 * a token instead (or its method needs none). */
const char *rpc_call_identity(const struct rpc_call *c);
/* The health state of the call's server (rpc_server_config.health). */
struct rpc_health *rpc_call_health(const struct rpc_call *c);

/* ---- clients ---- */

struct rpc_channel;

/* `target` "host:port"; `token` sent as "authorization: Bearer <token>" (NULL: none).
 * wait_for_ready: calls wait for the connection (until their deadline) instead of failing
 * fast with UNAVAILABLE while the server is down: workers want that, the CLI does not. */
moe_status rpc_channel_open(struct rpc_channel **out, const char *target, const struct rpc_tls *tls,
                            const char *token, int wait_for_ready);
/* The bearer secret of the channel's next calls (NULL or "": none); calls already started keep
 * the one they had. Any thread. */
void rpc_channel_set_token(struct rpc_channel *ch, const char *token);
/* Starts connecting now, in gRPC's threads, instead of at the first call: for a channel
 * whose first call must be quick (a recovery's new holder reports its restore on it). */
void rpc_channel_connect(struct rpc_channel *ch);
void rpc_channel_close(struct rpc_channel *ch);
const char *rpc_channel_target(const struct rpc_channel *ch);
/* Whether the channel holds a connection now (READY); it does not try to connect. A call
 * made after the connection broke (a restarted server) finds it not ready: a caller that
 * calls seldom (an idle worker's heartbeat) calls at once then. */
int rpc_channel_ready(struct rpc_channel *ch);

/* The outcome of a client call: gRPC's code and the server's message. */
struct rpc_result {
    grpc_status_code code;
    char details[512];
};

/* Blocking unary call, safe from any thread. On GRPC_STATUS_OK, *response is the unpacked
 * reply (free with protobuf_c_message_free_unpacked(m, NULL)). Returns MOE_OK on success;
 * otherwise fails with a message "<method> on <target>: <CODE>: <details>" and fills `res`. */
moe_status rpc_call_sync(struct rpc_channel *ch, const char *method, const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_type,
                         ProtobufCMessage **response, double timeout_s, struct rpc_result *res);

/* Asynchronous unary call from the loop thread; `cb` runs on the loop with the result and the
 * unpacked response (NULL unless OK; freed after cb returns). */
typedef void (*rpc_reply_cb)(void *arg, const struct rpc_result *res, const ProtobufCMessage *response);
moe_status rpc_call_async(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                          const ProtobufCMessage *request,
                          const ProtobufCMessageDescriptor *response_type, double timeout_s,
                          rpc_reply_cb cb, void *arg);

/* rpc_call_async of one request to many callees, packed once (rpc_message_pack): each call
 * sends the shared bytes followed by `tail`'s. Protobuf merges concatenated messages (a
 * scalar field's last value wins), so the tail sets what differs between callees. */
moe_status rpc_call_async_packed(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                                 const struct rpc_message *request, const ProtobufCMessage *tail,
                                 const ProtobufCMessageDescriptor *response_type,
                                 double timeout_s, rpc_reply_cb cb, void *arg);

/* Blocking server-streaming call (moectl watch, fetch). timeout_s <= 0: no deadline. */
struct rpc_stream;
moe_status rpc_stream_open(struct rpc_stream **out, struct rpc_channel *ch, const char *method,
                           const ProtobufCMessage *request, double timeout_s);
/* 1: *msg holds the next message (caller frees); 0: the stream ended with OK; -1: it failed,
 * `res` (and moe_errmsg) say why. */
int rpc_stream_next(struct rpc_stream *s, const ProtobufCMessageDescriptor *type,
                    ProtobufCMessage **msg, struct rpc_result *res);
void rpc_stream_close(struct rpc_stream *s); // cancels the call if it is still open

const char *rpc_code_name(grpc_status_code code); // "UNAUTHENTICATED"

/* Reads a token file (one line, surrounding whitespace dropped); MOE_EIO names the file. */
moe_status rpc_read_token(const char *path, char *out, size_t cap);

/* A new secret credential "<prefix>.<64 hex digits>" (256 random bits from OpenSSL's
 * RAND_bytes); MOE_EINVAL when it does not fit in cap, MOE_EINTERNAL without randomness. */
#define RPC_SECRET_HEX 64
moe_status rpc_new_credential(const char *prefix, char *out, size_t cap);
/* Whether a presented secret (len bytes) equals the expected one, in time that depends only on
 * the lengths. */
int rpc_secret_equal(const char *given, size_t len, const char *expected);

#endif
