/*
 * test_rpc — proto/rpc.c against real gRPC on 127.0.0.1. A libuv loop on its own thread runs a
 * toy service whose methods ("/test.Echo/...") reuse moed.v1 messages (JobRef in, JobInfo or
 * ModelChunk out); the test thread calls it the way moectl and the workers do.
 *
 * Established here: unary answers and error codes reach the client with their details; a
 * missing or wrong token gets UNAUTHENTICATED before the handler runs; unknown methods get
 * UNIMPLEMENTED; garbage, truncated, absent and oversized requests get an error and the server
 * keeps serving; a handler that forgets to answer yields INTERNAL; server streams run to the
 * end, fail with a status, and can be closed by the client mid-stream (on_close runs); on_sent
 * paces a large transfer with at most one message queued; asynchronous calls from the loop
 * thread; blocking calls from several threads at once; TLS with a self-signed certificate (and
 * its refusal of clients that do not trust it); a shutdown that cancels open streams and
 * pending calls, after which the loop runs dry with no handle left (and, under ASan, no leak).
 * A method table that leaves a row's auth class unset, or opens a method outside the health
 * service without a credential, is refused at server start.
 * And proto/methods.h names exactly the methods of proto/moed.proto, and the coordinator's
 * method table serves each of its services' methods with the request type the .proto gives.
 */
#include "../common/log.h"
#include "../coordinator/handlers/handlers.h"
#include "../proto/health.h"
#include "../proto/methods.h"
#include "../proto/rpc.h"
#include "check.h"
#include "proto/moed.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/time.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CLIENT_TOKEN "client-secret-0123456789"
#define CLUSTER_TOKEN "cluster-secret-9876543210"
#define BIG_CHUNKS 24 // a 24 MiB transfer through on_sent, 1 MiB at a time

/* ---- the loop thread and its toy server ---- */

struct env;

/* Work the test thread hands to the loop thread (servers are started and stopped there). */
struct loop_job {
    void (*fn)(struct env *e, void *arg);
    void *arg;
    int wait; // the poster waits for `done`; otherwise the job is freed after it runs
    int done;
    struct loop_job *next;
};

struct env {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wake;
    uv_mutex_t mu;
    uv_cond_t cv;
    struct loop_job *head, *tail;

    struct rpc_pump *pump;
    struct rpc_server *server, *tls_server;
    int port, tls_port;
    char target[64], tls_target[64];

    /* what the handlers saw (written on the loop thread, read by the test thread) */
    atomic_int unary_calls, cluster_calls, open_calls, stream_calls;
    atomic_int count_closed, forever_closed, big_closed;
    atomic_long big_sent;
    atomic_int big_max_queued;
    atomic_int loop_failures;
    atomic_int servers_down, pump_down;
    /* the asynchronous calls of test_async */
    atomic_int async_done;
    grpc_status_code async_code[3];
    char async_detail[3][512];
    char async_job[3][32];
    struct rpc_channel *dead_channel; // to a closed port, wait_for_ready: pending until cancelled
    atomic_int pending_done;
    grpc_status_code pending_code;
};

/* A check made on the loop thread: counted apart and added to `failures` at the end. */
#define LOOP_EXPECT(e, cond)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL %s:%d (loop thread): %s\n", __FILE__, __LINE__, #cond);                   \
            atomic_fetch_add(&(e)->loop_failures, 1);                                              \
        }                                                                                          \
    } while (0)

static void wake_cb(uv_async_t *a) {
    struct env *e = a->data;
    for (;;) {
        uv_mutex_lock(&e->mu);
        struct loop_job *j = e->head;
        if (j) {
            e->head = j->next;
            if (!e->head) e->tail = NULL;
        }
        uv_mutex_unlock(&e->mu);
        if (!j) return;
        j->fn(e, j->arg);
        if (!j->wait) {
            free(j);
            continue;
        }
        /* a waited-for job lives on the poster's stack: `done` is the last touch */
        uv_mutex_lock(&e->mu);
        j->done = 1;
        uv_cond_broadcast(&e->cv);
        uv_mutex_unlock(&e->mu);
    }
}

static void post(struct env *e, struct loop_job *j) {
    uv_mutex_lock(&e->mu);
    j->next = NULL;
    if (e->tail)
        e->tail->next = j;
    else
        e->head = j;
    e->tail = j;
    uv_mutex_unlock(&e->mu);
    uv_async_send(&e->wake);
}

/* Runs fn(e, arg) on the loop thread and returns when it has. */
static void on_loop(struct env *e, void (*fn)(struct env *, void *), void *arg) {
    struct loop_job j = {fn, arg, 1, 0, NULL};
    post(e, &j);
    uv_mutex_lock(&e->mu);
    while (!j.done) uv_cond_wait(&e->cv, &e->mu);
    uv_mutex_unlock(&e->mu);
}

/* Queues fn(e, arg) on the loop thread without waiting for it. */
static void on_loop_later(struct env *e, void (*fn)(struct env *, void *), void *arg) {
    struct loop_job *j = calloc(1, sizeof *j);
    if (!j) abort();
    j->fn = fn;
    j->arg = arg;
    post(e, j);
}

static void loop_main(void *arg) {
    struct env *e = arg;
    uv_run(&e->loop, UV_RUN_DEFAULT);
}

/* Polls until *v >= want; 0 when it got there within `seconds`. */
static int wait_for(atomic_int *v, int want, double seconds) {
    for (int ms = 0; ms < seconds * 1000; ms++) {
        if (atomic_load(v) >= want) return 0;
        uv_sleep(1);
    }
    return atomic_load(v) >= want ? 0 : -1;
}

/* -- the toy service -- */

static void echo_unary(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    const Moed__V1__JobRef *req = (const void *)m;
    atomic_fetch_add(&e->unary_calls, 1);
    LOOP_EXPECT(e, !strcmp(rpc_call_method(call), "/test.Echo/Unary"));
    LOOP_EXPECT(e, !strncmp(rpc_call_peer(call), "ipv4:127.0.0.1:", 15));
    const char *id = req->job_id;
    if (!strcmp(id, "notfound")) {
        rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no job %s", id);
        return;
    }
    if (!strcmp(id, "forget")) return; // the module must answer INTERNAL for us
    if (!strcmp(id, "sleep")) uv_sleep(300);
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    info.job_id = req->job_id;
    info.name = "echo";
    info.step = (int64_t)strlen(id);
    rpc_reply(call, &info.base);
    if (!strcmp(id, "twice")) rpc_reply(call, &info.base); // logged and ignored
}

static void cluster_unary(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    atomic_fetch_add(&e->cluster_calls, 1);
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

/* Answers with the caller's identity as the job id ("-": none); "deny" is refused as a
 * service refuses a caller that asks for what it may not. */
static void identity_unary(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    (void)ctx;
    const Moed__V1__JobRef *req = (const void *)m;
    const char *who = rpc_call_identity(call);
    if (!strcmp(req->job_id, "deny")) {
        rpc_refuse(call, GRPC_STATUS_PERMISSION_DENIED, "%s may not", who ? who : "nobody");
        return;
    }
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    info.job_id = (char *)(who ? who : "-");
    rpc_reply(call, &info.base);
}

/* The toy server's credentials: "<name>.secret-of-<name>" for alice and bob. */
static int toy_identify(void *ctx, const char *cred, size_t len, char out[RPC_IDENTITY_MAX]) {
    (void)ctx;
    static const char *const names[] = {"alice", "bob"};
    for (size_t i = 0; i < 2; i++) {
        char want[64];
        snprintf(want, sizeof want, "%s.secret-of-%s", names[i], names[i]);
        if (rpc_secret_equal(cred, len, want)) {
            snprintf(out, RPC_IDENTITY_MAX, "%s", names[i]);
            return 1;
        }
    }
    return 0;
}

static void open_unary(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    atomic_fetch_add(&e->open_calls, 1);
    Moed__V1__Empty empty = MOED__V1__EMPTY__INIT;
    rpc_reply(call, &empty.base);
}

static void count_closed(struct rpc_call *c, void *arg) {
    struct env *e = arg;
    atomic_fetch_add(&e->count_closed, 1);
}

/* "N" streams N JobInfos (step 1..N) and ends OK; "N:fail" ends FAILED_PRECONDITION instead;
 * anything else is NOT_FOUND before the first message. */
static void count_stream(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    const Moed__V1__JobRef *req = (const void *)m;
    atomic_fetch_add(&e->stream_calls, 1);
    char *end;
    long n = strtol(req->job_id, &end, 10);
    if (end == req->job_id || n < 0) {
        rpc_fail(call, GRPC_STATUS_NOT_FOUND, "no count in \"%s\"", req->job_id);
        return;
    }
    rpc_stream_on_close(call, count_closed, e);
    for (long i = 1; i <= n; i++) {
        Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
        info.step = i;
        info.total_steps = n;
        LOOP_EXPECT(e, rpc_stream_send(call, &info.base) == 0);
    }
    if (!strcmp(end, ":fail"))
        rpc_stream_finish(call, GRPC_STATUS_FAILED_PRECONDITION, "stopped on purpose");
    else
        rpc_stream_finish(call, GRPC_STATUS_OK, NULL);
    Moed__V1__JobInfo late = MOED__V1__JOB_INFO__INIT;
    LOOP_EXPECT(e, rpc_stream_send(call, &late.base) == -1); // nothing after finish
}

/* Sends a JobInfo every 2 ms until the client goes away. */
struct ticker {
    uv_timer_t timer;
    struct rpc_call *call;
    struct env *e;
    long sent;
};

static void ticker_tick(uv_timer_t *t) {
    struct ticker *tk = t->data;
    if (rpc_stream_queued(tk->call) > 2) return; // a slow reader: skip a beat
    Moed__V1__JobInfo info = MOED__V1__JOB_INFO__INIT;
    info.step = ++tk->sent;
    rpc_stream_send(tk->call, &info.base);
}

static void ticker_free(uv_handle_t *h) { free(h->data); }

static void forever_closed(struct rpc_call *c, void *arg) {
    struct ticker *tk = arg;
    uv_timer_stop(&tk->timer);
    uv_close((uv_handle_t *)&tk->timer, ticker_free);
    atomic_fetch_add(&tk->e->forever_closed, 1);
}

static void forever_stream(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    atomic_fetch_add(&e->stream_calls, 1);
    struct ticker *tk = calloc(1, sizeof *tk);
    if (!tk) {
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    tk->call = call;
    tk->e = e;
    uv_timer_init(&e->loop, &tk->timer);
    tk->timer.data = tk;
    uv_timer_start(&tk->timer, ticker_tick, 0, 2);
    rpc_stream_on_close(call, forever_closed, tk);
}

/* A large transfer paced by on_sent, the way FetchModel streams a model file. */
struct transfer {
    struct env *e;
    int64_t offset, total;
    uint8_t *buf;
    int max_queued;
};

static uint8_t pattern(int64_t pos) { return (uint8_t)(((uint64_t)pos * 2654435761u) >> 13); }

static void big_next(struct rpc_call *c, void *arg) {
    struct transfer *t = arg;
    if (t->offset >= t->total) {
        rpc_stream_finish(c, GRPC_STATUS_OK, NULL);
        return;
    }
    int64_t n = t->total - t->offset;
    if (n > RPC_MODEL_CHUNK) n = RPC_MODEL_CHUNK;
    for (int64_t i = 0; i < n; i++) t->buf[i] = pattern(t->offset + i);
    Moed__V1__ModelChunk chunk = MOED__V1__MODEL_CHUNK__INIT;
    chunk.job_id = "big";
    chunk.offset = t->offset;
    chunk.total_bytes = t->total;
    chunk.data.len = (size_t)n;
    chunk.data.data = t->buf;
    t->offset += n;
    LOOP_EXPECT(t->e, rpc_stream_send(c, &chunk.base) == 0);
    if ((int)rpc_stream_queued(c) > t->max_queued) t->max_queued = (int)rpc_stream_queued(c);
}

static void big_closed(struct rpc_call *c, void *arg) {
    struct transfer *t = arg;
    atomic_store(&t->e->big_sent, (long)t->offset);
    atomic_store(&t->e->big_max_queued, t->max_queued);
    atomic_fetch_add(&t->e->big_closed, 1);
    free(t->buf);
    free(t);
}

static void big_stream(struct rpc_call *call, const ProtobufCMessage *m, void *ctx) {
    struct env *e = ctx;
    atomic_fetch_add(&e->stream_calls, 1);
    struct transfer *t = calloc(1, sizeof *t);
    if (!t || !(t->buf = malloc(RPC_MODEL_CHUNK))) {
        free(t);
        rpc_stream_finish(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    t->e = e;
    t->total = (int64_t)BIG_CHUNKS * RPC_MODEL_CHUNK - 12345; // the last chunk is short
    rpc_stream_on_close(call, big_closed, t);
    rpc_stream_on_sent(call, big_next, t);
    big_next(call, t);
}

#define REF (&moed__v1__job_ref__descriptor) // every toy method takes a JobRef
static const struct rpc_method toy_methods[] = {
    {"/test.Echo/Unary", REF, RPC_UNARY, RPC_AUTH_CLIENT, echo_unary},
    {"/test.Echo/Cluster", REF, RPC_UNARY, RPC_AUTH_CLUSTER, cluster_unary},
    {RPC_HEALTH_PREFIX "Open", REF, RPC_UNARY, RPC_AUTH_HEALTH, open_unary},
    {"/test.Echo/Identity", REF, RPC_UNARY, RPC_AUTH_IDENTITY, identity_unary},
    {"/test.Echo/Join", REF, RPC_UNARY, RPC_AUTH_CLUSTER, identity_unary},
    {"/test.Echo/Count", REF, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, count_stream},
    {"/test.Echo/Forever", REF, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, forever_stream},
    {"/test.Echo/Big", REF, RPC_SERVER_STREAM, RPC_AUTH_CLIENT, big_stream},
};
#define N_TOY_METHODS ((int)(sizeof toy_methods / sizeof toy_methods[0]))

/* -- starting and stopping, on the loop thread -- */

struct server_start {
    const struct rpc_tls *tls;
    struct rpc_server **out;
    int *port;
    moe_status status;
    char error[256];
};

static void start_server_on_loop(struct env *e, void *arg) {
    struct server_start *ss = arg;
    struct rpc_server_config cfg = {.listen = "127.0.0.1:0",
                                    .tls = ss->tls,
                                    .client_token = CLIENT_TOKEN,
                                    .cluster_token = CLUSTER_TOKEN,
                                    .identify = toy_identify,
                                    .role = "test"};
    ss->status = rpc_server_start(ss->out, e->pump, &cfg, toy_methods, N_TOY_METHODS, e, ss->port);
    snprintf(ss->error, sizeof ss->error, "%s", ss->status == MOE_OK ? "" : moe_errmsg());
}

static void start_pump_on_loop(struct env *e, void *arg) {
    moe_status *st = arg;
    *st = rpc_pump_start(&e->pump, &e->loop);
}

static void pump_stopped(void *arg) {
    struct env *e = arg;
    atomic_store(&e->pump_down, 1);
    uv_close((uv_handle_t *)&e->wake, NULL); // the last handle: the loop runs dry
}

static void server_down(void *arg) {
    struct env *e = arg;
    if (atomic_fetch_add(&e->servers_down, 1) + 1 == 2) rpc_pump_stop(e->pump, pump_stopped, e);
}

static void shutdown_on_loop(struct env *e, void *arg) {
    rpc_server_shutdown(e->tls_server, server_down, e);
    rpc_server_shutdown(e->server, server_down, e);
}

/* ---- client helpers ---- */

static moe_status echo(struct rpc_channel *ch, const char *id, Moed__V1__JobInfo **out,
                       double timeout_s, struct rpc_result *res) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    moe_status s = rpc_call_sync(ch, "/test.Echo/Unary", &ref.base, &moed__v1__job_info__descriptor,
                                 &resp, timeout_s, res);
    *out = (Moed__V1__JobInfo *)resp;
    return s;
}

/* An echo call that must succeed and echo `id`. */
static void expect_echo(struct rpc_channel *ch, const char *id) {
    Moed__V1__JobInfo *info = NULL;
    struct rpc_result res;
    moe_status s = echo(ch, id, &info, 5, &res);
    EXPECT_MSG(s == MOE_OK && info && !strcmp(info->job_id, id) && !strcmp(info->name, "echo") &&
                   info->step == (int64_t)strlen(id),
               "echo(%s) on %s: %s", id, rpc_channel_target(ch),
               s == MOE_OK ? "wrong reply" : moe_errmsg());
    if (info) moed__v1__job_info__free_unpacked(info, NULL);
}

/* A call that must fail with `code` and `needle` in the details. */
static void expect_code(struct rpc_channel *ch, const char *method, const char *id,
                        grpc_status_code code, const char *needle) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = (char *)id;
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    moe_status s =
        rpc_call_sync(ch, method, &ref.base, &moed__v1__job_info__descriptor, &resp, 5, &res);
    EXPECT_MSG(s != MOE_OK && res.code == code && strstr(res.details, needle) && !resp,
               "%s(%s): got %s \"%s\", wanted %s with \"%s\"", method, id, rpc_code_name(res.code),
               res.details, rpc_code_name(code), needle);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
}

/* A call built by hand with gRPC's core API: raw request bytes (NULL: no message at all), no
 * size limit on our side, so the server's own checks are what answers. */
static grpc_status_code raw_call(const char *target, const char *method, const void *bytes,
                                 size_t len, const char *token, char *details, size_t cap) {
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    grpc_arg args[] = {{GRPC_ARG_INTEGER, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, {.integer = -1}}};
    grpc_channel_args cargs = {1, args};
    grpc_channel *ch = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_slice m = grpc_slice_from_copied_string(method);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_seconds(10, GPR_TIMESPAN));
    grpc_call *call =
        grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m, NULL, deadline, NULL);
    grpc_slice_unref(m);

    grpc_metadata md;
    char auth[128];
    grpc_metadata_array initial_md, trailing_md;
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);
    grpc_byte_buffer *request = NULL, *response = NULL;
    if (bytes) {
        grpc_slice s = grpc_slice_from_copied_buffer(bytes, len);
        request = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
    }
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice det = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (token) {
        snprintf(auth, sizeof auth, "Bearer %s", token);
        md.key = grpc_slice_from_static_string("authorization");
        md.value = grpc_slice_from_copied_string(auth);
        ops[n].data.send_initial_metadata.count = 1;
        ops[n].data.send_initial_metadata.metadata = &md;
    }
    n++;
    if (request) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = request;
    }
    ops[n++].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &response;
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[n].data.recv_status_on_client.status = &status;
    ops[n++].data.recv_status_on_client.status_details = &det;
    int tag;
    if (grpc_call_start_batch(call, ops, n, &tag, NULL) == GRPC_CALL_OK)
        grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    size_t dl = GRPC_SLICE_LENGTH(det) < cap - 1 ? GRPC_SLICE_LENGTH(det) : cap - 1;
    memcpy(details, GRPC_SLICE_START_PTR(det), dl);
    details[dl] = 0;
    grpc_slice_unref(det);
    if (token) grpc_slice_unref(md.value);
    if (request) grpc_byte_buffer_destroy(request);
    if (response) grpc_byte_buffer_destroy(response);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    grpc_channel_destroy(ch);
    return status;
}

/* A port nothing listens on (bound, then released). */
static int closed_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = 0;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

/* ---- the tests ---- */

static void test_read_token(void) {
    char dir[] = "/tmp/test_rpc_tok.XXXXXX";
    if (!mkdtemp(dir)) {
        EXPECT_MSG(0, "mkdtemp failed");
        return;
    }
    char path[256], tok[64];
    snprintf(path, sizeof path, "%s/t", dir);
    FILE *f = fopen(path, "w");
    fputs("  \tsecret-token\r\n\n", f);
    fclose(f);
    EXPECT(rpc_read_token(path, tok, sizeof tok) == MOE_OK && !strcmp(tok, "secret-token"));
    EXPECT_FAIL(rpc_read_token(path, tok, 8), MOE_EINVAL, "longer than 7 bytes");
    f = fopen(path, "w");
    fputs(" \n", f);
    fclose(f);
    EXPECT_FAIL(rpc_read_token(path, tok, sizeof tok), MOE_EINVAL, "is empty");
    unlink(path);
    EXPECT_FAIL(rpc_read_token(path, tok, sizeof tok), MOE_EIO, path);
    rmdir(dir);
    EXPECT(!strcmp(rpc_code_name(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED"));
    EXPECT(!strcmp(rpc_code_name((grpc_status_code)99), "UNKNOWN_CODE"));
}

static void test_unary(struct env *e, struct rpc_channel *ch) {
    int before = atomic_load(&e->unary_calls);
    expect_echo(ch, "job-1");
    expect_echo(ch, ""); // an empty message is a valid JobRef
    expect_echo(ch, "twice");
    Moed__V1__JobInfo *info = NULL;
    struct rpc_result res;
    EXPECT_FAIL(echo(ch, "notfound", &info, 5, &res), MOE_ENOTFOUND, "Unary on 127.0.0.1:");
    EXPECT(res.code == GRPC_STATUS_NOT_FOUND && !strcmp(res.details, "no job notfound") && !info);
    EXPECT(strstr(moe_errmsg(), "NOT_FOUND: no job notfound"));

    EXPECT_FAIL(echo(ch, "forget", &info, 5, &res), MOE_EINTERNAL, "INTERNAL");
    EXPECT(res.code == GRPC_STATUS_INTERNAL && strstr(res.details, "no answer"));

    /* the loop is busy past the deadline: the client gives up on its own */
    EXPECT_FAIL(echo(ch, "sleep", &info, 0.1, &res), MOE_EUNAVAILABLE, "DEADLINE_EXCEEDED");
    EXPECT(res.code == GRPC_STATUS_DEADLINE_EXCEEDED);

    /* a reply that is not the type the client expects */
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = "job-1";
    ProtobufCMessage *resp = NULL;
    EXPECT_FAIL(rpc_call_sync(ch, "/test.Echo/Unary", &ref.base,
                              &moed__v1__step_metrics__descriptor, &resp, 5, &res),
                MOE_EINTERNAL, "the reply is not a moed.v1.StepMetrics");
    EXPECT(!resp);
    EXPECT(wait_for(&e->unary_calls, before + 7, 2) == 0);
    EXPECT_MSG(atomic_load(&e->unary_calls) == before + 7, "handler ran %d times, wanted 7",
               atomic_load(&e->unary_calls) - before);
    expect_echo(ch, "after-errors");
}

/* The identity a call to `method` on ch is answered with ("-": none); "" when it failed. */
static void expect_identity(struct rpc_channel *ch, const char *method, const char *want) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = "who";
    ProtobufCMessage *resp = NULL;
    struct rpc_result res;
    rpc_call_sync(ch, method, &ref.base, &moed__v1__job_info__descriptor, &resp, 5, &res);
    const char *got = resp ? ((Moed__V1__JobInfo *)resp)->job_id : "";
    EXPECT_MSG(!strcmp(got, want), "%s: identity \"%s\", wanted \"%s\" (%s %s)", method, got,
               want, rpc_code_name(res.code), res.details);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
}

/* IDENTITY methods take only a credential the server's identify accepts; CLUSTER ones the
 * cluster token or such a credential; the handler learns whose it is. */
static void test_identity(struct env *e) {
    struct rpc_channel *ch = NULL, *cluster = NULL;
    EXPECT(rpc_channel_open(&ch, e->target, NULL, "alice.secret-of-alice", 0) == MOE_OK);
    EXPECT(rpc_channel_open(&cluster, e->target, NULL, CLUSTER_TOKEN, 0) == MOE_OK);
    if (!ch || !cluster) return;
    expect_identity(ch, "/test.Echo/Identity", "alice");
    expect_identity(ch, "/test.Echo/Join", "alice");
    expect_identity(cluster, "/test.Echo/Join", "-"); // the token: no identity
    expect_code(cluster, "/test.Echo/Identity", "who", GRPC_STATUS_UNAUTHENTICATED, "credential");
    expect_code(ch, "/test.Echo/Unary", "who", GRPC_STATUS_UNAUTHENTICATED, "client token");
    expect_code(ch, "/test.Echo/Identity", "deny", GRPC_STATUS_PERMISSION_DENIED, "alice may not");
    /* the channel's secret changes between calls */
    rpc_channel_set_token(ch, "bob.secret-of-bob");
    expect_identity(ch, "/test.Echo/Identity", "bob");
    const char *bad[] = {"bob.secret-of-alice", "bob.secret-of-bo", "bob.secret-of-bobb",
                         "alice", "", NULL};
    for (int i = 0; bad[i]; i++) {
        rpc_channel_set_token(ch, bad[i]);
        expect_code(ch, "/test.Echo/Identity", "who", GRPC_STATUS_UNAUTHENTICATED, "credential");
        expect_code(ch, "/test.Echo/Join", "who", GRPC_STATUS_UNAUTHENTICATED, "cluster token");
    }
    rpc_channel_close(ch);
    rpc_channel_close(cluster);
}

static void test_credentials(void) {
    char a[128], b[128], small[40];
    EXPECT(rpc_new_credential("w-12", a, sizeof a) == MOE_OK);
    EXPECT(rpc_new_credential("w-12", b, sizeof b) == MOE_OK);
    EXPECT_MSG(strlen(a) == 5 + RPC_SECRET_HEX && !strncmp(a, "w-12.", 5) &&
                   strspn(a + 5, "0123456789abcdef") == RPC_SECRET_HEX, "credential %s", a);
    EXPECT(strcmp(a, b) != 0);
    EXPECT_FAIL(rpc_new_credential("w-12", small, sizeof small), MOE_EINVAL, "does not fit");
    EXPECT(rpc_secret_equal(a, strlen(a), a));
    EXPECT(!rpc_secret_equal(b, strlen(b), a));
    EXPECT(!rpc_secret_equal(a, strlen(a) - 1, a));
    EXPECT(!rpc_secret_equal("", 0, "")); // nothing expected: nothing matches
}

/* The first `burst` lines of an interval pass, the rest are counted; the next interval starts
 * afresh (its first line writes the count). */
static void test_log_limit(void) {
    struct moe_log_limit l = MOE_LOG_LIMIT_INIT("refused calls like this");
    int passed = 0;
    for (int i = 0; i < 100; i++) passed += moe_log_limit_pass(&l, MOE_LOG_WARN, 100.0 + i * 0.01);
    EXPECT_MSG(passed == MOE_LOG_LIMIT_BURST && l.suppressed == 100 - MOE_LOG_LIMIT_BURST,
               "%d passed, %ld counted", passed, l.suppressed);
    EXPECT(moe_log_limit_pass(&l, MOE_LOG_WARN, 100.0 + MOE_LOG_LIMIT_INTERVAL_S + 0.5));
    EXPECT(l.suppressed == 0 && l.written == 1);
    moe_log_limit_end(&l, MOE_LOG_WARN, 120.0);
    EXPECT(l.window_start == 0 && l.written == 0);
}

static void test_auth(struct env *e) {
    struct rpc_channel *none = NULL, *wrong = NULL, *longer = NULL, *cluster = NULL;
    EXPECT(rpc_channel_open(&none, e->target, NULL, NULL, 0) == MOE_OK);
    EXPECT(rpc_channel_open(&wrong, e->target, NULL, "client-secret-0123456788", 0) == MOE_OK);
    EXPECT(rpc_channel_open(&longer, e->target, NULL, CLIENT_TOKEN "x", 0) == MOE_OK);
    EXPECT(rpc_channel_open(&cluster, e->target, NULL, CLUSTER_TOKEN, 0) == MOE_OK);
    if (!none || !wrong || !longer || !cluster) return;
    int unary = atomic_load(&e->unary_calls), clus = atomic_load(&e->cluster_calls);
    int streams = atomic_load(&e->stream_calls);

    expect_code(none, "/test.Echo/Unary", "x", GRPC_STATUS_UNAUTHENTICATED, "client token");
    expect_code(wrong, "/test.Echo/Unary", "x", GRPC_STATUS_UNAUTHENTICATED, "client token");
    expect_code(longer, "/test.Echo/Unary", "x", GRPC_STATUS_UNAUTHENTICATED, "client token");
    expect_code(cluster, "/test.Echo/Unary", "x", GRPC_STATUS_UNAUTHENTICATED, "client token");
    Moed__V1__JobInfo *info = NULL;
    EXPECT_FAIL(echo(none, "x", &info, 5, NULL), MOE_EAUTH, "UNAUTHENTICATED");
    /* a client token does not open cluster methods */
    struct rpc_channel *client = NULL;
    EXPECT(rpc_channel_open(&client, e->target, NULL, CLIENT_TOKEN, 0) == MOE_OK);
    expect_code(client, "/test.Echo/Cluster", "x", GRPC_STATUS_UNAUTHENTICATED, "cluster token");
    expect_code(none, "/test.Echo/Cluster", "x", GRPC_STATUS_UNAUTHENTICATED, "cluster token");
    /* streams check the token before the handler too */
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = "3";
    struct rpc_stream *s = NULL;
    EXPECT(rpc_stream_open(&s, wrong, "/test.Echo/Count", &ref.base, 5) == MOE_OK);
    if (s) {
        ProtobufCMessage *msg = NULL;
        struct rpc_result res;
        EXPECT(rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res) == -1 && !msg);
        EXPECT(res.code == GRPC_STATUS_UNAUTHENTICATED);
        rpc_stream_close(s);
    }
    /* none of the above reached a handler */
    uv_sleep(20);
    EXPECT(atomic_load(&e->unary_calls) == unary);
    EXPECT(atomic_load(&e->cluster_calls) == clus);
    EXPECT(atomic_load(&e->stream_calls) == streams);

    /* the right tokens, and a method that needs none */
    Moed__V1__JobRef r = MOED__V1__JOB_REF__INIT;
    ProtobufCMessage *resp = NULL;
    EXPECT(rpc_call_sync(cluster, "/test.Echo/Cluster", &r.base, &moed__v1__empty__descriptor,
                         &resp, 5, NULL) == MOE_OK);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
    EXPECT(rpc_call_sync(none, RPC_HEALTH_PREFIX "Open", &r.base, &moed__v1__empty__descriptor, &resp, 5,
                         NULL) == MOE_OK);
    if (resp) protobuf_c_message_free_unpacked(resp, NULL);
    EXPECT(atomic_load(&e->cluster_calls) == clus + 1);
    EXPECT(atomic_load(&e->open_calls) >= 1);
    rpc_channel_close(none);
    rpc_channel_close(wrong);
    rpc_channel_close(longer);
    rpc_channel_close(cluster);
    rpc_channel_close(client);
}

static void test_bad_requests(struct env *e, struct rpc_channel *ch) {
    expect_code(ch, "/test.Echo/Nope", "x", GRPC_STATUS_UNIMPLEMENTED,
                "unknown method /test.Echo/Nope");
    expect_code(ch, "/other.Service/Unary", "x", GRPC_STATUS_UNIMPLEMENTED, "unknown method");

    int before = atomic_load(&e->unary_calls);
    char det[256];
    const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x13, 0x37};
    grpc_status_code c = raw_call(e->target, "/test.Echo/Unary", garbage, sizeof garbage,
                                  CLIENT_TOKEN, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_INVALID_ARGUMENT && strstr(det, "not a valid moed.v1.JobRef"),
               "garbage: %s \"%s\"", rpc_code_name(c), det);

    /* a valid JobRef cut short inside its string */
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    ref.job_id = "job-123456789";
    uint8_t packed[64];
    size_t len = moed__v1__job_ref__pack(&ref, packed);
    c = raw_call(e->target, "/test.Echo/Unary", packed, len - 4, CLIENT_TOKEN, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_INVALID_ARGUMENT, "truncated: %s \"%s\"", rpc_code_name(c), det);
    c = raw_call(e->target, "/test.Echo/Unary", packed, len, CLIENT_TOKEN, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_OK, "whole: %s \"%s\"", rpc_code_name(c), det);

    /* no message at all, only a half-close */
    c = raw_call(e->target, "/test.Echo/Unary", NULL, 0, CLIENT_TOKEN, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_INVALID_ARGUMENT && strstr(det, "no request message"),
               "no message: %s \"%s\"", rpc_code_name(c), det);

    /* bigger than RPC_MAX_MESSAGE: refused by the transport, the server never buffers it */
    size_t big = RPC_MAX_MESSAGE + (1 << 20);
    uint8_t *huge = malloc(big);
    if (huge) {
        memset(huge, 'a', big);
        huge[0] = 0x0a; // field 1, length-delimited: a plausible start
        c = raw_call(e->target, "/test.Echo/Unary", huge, big, CLIENT_TOKEN, det, sizeof det);
        EXPECT_MSG(c == GRPC_STATUS_RESOURCE_EXHAUSTED, "oversized: %s \"%s\"", rpc_code_name(c),
                   det);
        c = raw_call(e->target, "/test.Echo/Count", huge, big, CLIENT_TOKEN, det, sizeof det);
        EXPECT_MSG(c == GRPC_STATUS_RESOURCE_EXHAUSTED, "oversized stream: %s \"%s\"",
                   rpc_code_name(c), det);
        free(huge);
    }
    /* garbage to a stream method, and without a token to an unknown one */
    c = raw_call(e->target, "/test.Echo/Count", garbage, sizeof garbage, CLIENT_TOKEN, det,
                 sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_INVALID_ARGUMENT, "garbage stream: %s \"%s\"", rpc_code_name(c),
               det);
    c = raw_call(e->target, "/test.Echo/Nope", garbage, sizeof garbage, NULL, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_UNIMPLEMENTED, "unknown, garbage: %s \"%s\"", rpc_code_name(c),
               det);
    /* garbage without a token: the token is checked first */
    c = raw_call(e->target, "/test.Echo/Unary", garbage, sizeof garbage, NULL, det, sizeof det);
    EXPECT_MSG(c == GRPC_STATUS_UNAUTHENTICATED, "garbage, no token: %s \"%s\"", rpc_code_name(c),
               det);

    EXPECT_MSG(atomic_load(&e->unary_calls) == before + 1,
               "the handler ran %d times for 1 good call", atomic_load(&e->unary_calls) - before);
    expect_echo(ch, "still-serving");
}

/* Reads a Count stream to its end; returns the number of messages, checking their order. */
static int read_count(struct rpc_stream *s, struct rpc_result *res, int *ret) {
    int got = 0;
    for (;;) {
        ProtobufCMessage *msg = NULL;
        int r = rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, res);
        if (r != 1) {
            *ret = r;
            return got;
        }
        Moed__V1__JobInfo *info = (Moed__V1__JobInfo *)msg;
        got++;
        EXPECT_MSG(info->step == got, "message %d carries step %ld", got, (long)info->step);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
}

static void test_streams(struct env *e, struct rpc_channel *ch) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    struct rpc_stream *s = NULL;
    struct rpc_result res;
    int ret, closed = atomic_load(&e->count_closed);

    ref.job_id = "50";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    int got = read_count(s, &res, &ret);
    EXPECT_MSG(got == 50 && ret == 0 && res.code == GRPC_STATUS_OK, "count 50: %d messages, ret %d",
               got, ret);
    ProtobufCMessage *msg = NULL;
    /* an ended stream stays ended */
    EXPECT(rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res) == 0 && !msg);
    rpc_stream_close(s);

    ref.job_id = "0";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    got = read_count(s, &res, &ret);
    EXPECT(got == 0 && ret == 0);
    rpc_stream_close(s);

    ref.job_id = "7:fail";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    got = read_count(s, &res, &ret);
    EXPECT_MSG(got == 7 && ret == -1 && res.code == GRPC_STATUS_FAILED_PRECONDITION &&
                   !strcmp(res.details, "stopped on purpose"),
               "7:fail: %d messages, ret %d, %s \"%s\"", got, ret, rpc_code_name(res.code),
               res.details);
    EXPECT(strstr(moe_errmsg(), "Count on 127.0.0.1:") &&
           strstr(moe_errmsg(), "FAILED_PRECONDITION"));
    rpc_stream_close(s);

    ref.job_id = "abc"; // the handler fails before the first message
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    got = read_count(s, &res, &ret);
    EXPECT(got == 0 && ret == -1 && res.code == GRPC_STATUS_NOT_FOUND &&
           strstr(res.details, "abc"));
    rpc_stream_close(s);

    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Missing", &ref.base, 10) == MOE_OK);
    got = read_count(s, &res, &ret);
    EXPECT(got == 0 && ret == -1 && res.code == GRPC_STATUS_UNIMPLEMENTED);
    rpc_stream_close(s);

    /* the wrong message type on the client side: the stream fails and is cancelled */
    ref.job_id = "5";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    EXPECT(rpc_stream_next(s, &moed__v1__step_metrics__descriptor, &msg, &res) == -1 && !msg);
    EXPECT(res.code == GRPC_STATUS_INTERNAL && strstr(res.details, "not a moed.v1.StepMetrics"));
    rpc_stream_close(s);

    /* closed mid-stream: 3 of 5000 read, then the client walks away */
    ref.job_id = "5000";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
    for (int i = 0; i < 3; i++) {
        EXPECT(rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res) == 1 && msg);
        if (msg) protobuf_c_message_free_unpacked(msg, NULL);
    }
    rpc_stream_close(s);
    /* 50, 0, 7:fail, 5 and 5000 registered on_close; each runs exactly once */
    EXPECT_MSG(wait_for(&e->count_closed, closed + 5, 5) == 0, "on_close ran %d of 5 times",
               atomic_load(&e->count_closed) - closed);

    /* an endless stream, closed by the client; the server's timer goes with it */
    int fclosed = atomic_load(&e->forever_closed);
    ref.job_id = "";
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Forever", &ref.base, 0) == MOE_OK);
    long last = 0;
    for (int i = 0; i < 10; i++) {
        EXPECT(rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res) == 1 && msg);
        if (msg) {
            EXPECT(((Moed__V1__JobInfo *)msg)->step > last);
            last = ((Moed__V1__JobInfo *)msg)->step;
            protobuf_c_message_free_unpacked(msg, NULL);
        }
    }
    rpc_stream_close(s);
    EXPECT_MSG(wait_for(&e->forever_closed, fclosed + 1, 5) == 0, "Forever's on_close did not run");
    uv_sleep(20);
    EXPECT(atomic_load(&e->count_closed) == closed + 5);
    EXPECT(atomic_load(&e->forever_closed) == fclosed + 1);

    /* a deadline ends an open stream too */
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Forever", &ref.base, 0.2) == MOE_OK);
    int n = 0, r;
    while ((r = rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res)) == 1) {
        protobuf_c_message_free_unpacked(msg, NULL);
        n++;
    }
    EXPECT_MSG(r == -1 && res.code == GRPC_STATUS_DEADLINE_EXCEEDED,
               "deadline: %d messages then %s", n, rpc_code_name(res.code));
    rpc_stream_close(s);
    EXPECT_MSG(wait_for(&e->forever_closed, fclosed + 2, 5) == 0, "on_close after a deadline");
}

static void test_big(struct env *e, struct rpc_channel *ch) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    struct rpc_stream *s = NULL;
    struct rpc_result res;
    int closed = atomic_load(&e->big_closed);
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Big", &ref.base, 60) == MOE_OK);
    if (!s) return;
    int64_t offset = 0, total = -1;
    int chunks = 0, bad = 0, r;
    ProtobufCMessage *msg;
    while ((r = rpc_stream_next(s, &moed__v1__model_chunk__descriptor, &msg, &res)) == 1) {
        Moed__V1__ModelChunk *c = (Moed__V1__ModelChunk *)msg;
        if (c->offset != offset || c->data.len == 0 || c->data.len > RPC_MODEL_CHUNK) bad++;
        if (total < 0) total = c->total_bytes;
        for (size_t i = 0; i < c->data.len; i++)
            if (c->data.data[i] != pattern(c->offset + (int64_t)i)) {
                bad++;
                break;
            }
        offset += (int64_t)c->data.len;
        chunks++;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    rpc_stream_close(s);
    int64_t want = (int64_t)BIG_CHUNKS * RPC_MODEL_CHUNK - 12345;
    EXPECT_MSG(r == 0 && bad == 0 && chunks == BIG_CHUNKS && offset == want && total == want,
               "big: ret %d (%s), %d chunks, %ld of %ld bytes, %d bad", r, rpc_code_name(res.code),
               chunks, (long)offset, (long)want, bad);
    EXPECT(wait_for(&e->big_closed, closed + 1, 5) == 0);
    EXPECT(atomic_load(&e->big_sent) == want);
    EXPECT_MSG(atomic_load(&e->big_max_queued) <= 1, "on_sent let %d messages queue up",
               atomic_load(&e->big_max_queued));

    /* the same transfer abandoned after two chunks: on_close runs, nothing more is read */
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Big", &ref.base, 60) == MOE_OK);
    for (int i = 0; i < 2; i++) {
        EXPECT(rpc_stream_next(s, &moed__v1__model_chunk__descriptor, &msg, &res) == 1);
        if (msg) protobuf_c_message_free_unpacked(msg, NULL);
    }
    rpc_stream_close(s);
    EXPECT(wait_for(&e->big_closed, closed + 2, 5) == 0);
    EXPECT(atomic_load(&e->big_sent) < want);
}

/* -- asynchronous calls, started on the loop thread -- */

struct async_slot {
    struct env *e;
    int i;
};

static void async_reply(void *arg, const struct rpc_result *res, const ProtobufCMessage *response) {
    struct async_slot *a = arg;
    struct env *e = a->e;
    e->async_code[a->i] = res->code;
    snprintf(e->async_detail[a->i], sizeof e->async_detail[a->i], "%s", res->details);
    if (response)
        snprintf(e->async_job[a->i], sizeof e->async_job[a->i], "%s",
                 ((const Moed__V1__JobInfo *)response)->job_id);
    LOOP_EXPECT(e, (res->code == GRPC_STATUS_OK) == (response != NULL));
    free(a);
    atomic_fetch_add(&e->async_done, 1); // last: the test thread reads the fields after this
}

struct async_args {
    struct rpc_channel *ch;
    moe_status started[3];
};

static void async_on_loop(struct env *e, void *arg) {
    struct async_args *aa = arg;
    static const char *ids[] = {"async-1", "notfound", "async-3"};
    static const char *methods[] = {"/test.Echo/Unary", "/test.Echo/Unary", "/test.Echo/Nowhere"};
    for (int i = 0; i < 3; i++) {
        struct async_slot *a = calloc(1, sizeof *a);
        a->e = e;
        a->i = i;
        Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
        ref.job_id = (char *)ids[i];
        aa->started[i] = rpc_call_async(e->pump, aa->ch, methods[i], &ref.base,
                                        &moed__v1__job_info__descriptor, 5, async_reply, a);
        if (aa->started[i] != MOE_OK) free(a);
    }
}

static void pending_reply(void *arg, const struct rpc_result *res,
                          const ProtobufCMessage *response) {
    struct env *e = arg;
    e->pending_code = res->code;
    atomic_store(&e->pending_done, 1);
}

/* A call that cannot complete (nothing listens, and it waits for the connection): only
 * rpc_pump_stop ends it. */
static void pending_on_loop(struct env *e, void *arg) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    moe_status *st = arg;
    *st = rpc_call_async(e->pump, e->dead_channel, "/test.Echo/Unary", &ref.base,
                         &moed__v1__job_info__descriptor, 120, pending_reply, e);
}

static void test_async(struct env *e, struct rpc_channel *ch) {
    struct async_args aa = {.ch = ch};
    on_loop(e, async_on_loop, &aa);
    for (int i = 0; i < 3; i++) EXPECT(aa.started[i] == MOE_OK);
    EXPECT(wait_for(&e->async_done, 3, 10) == 0);
    EXPECT_MSG(e->async_code[0] == GRPC_STATUS_OK && !strcmp(e->async_job[0], "async-1"),
               "async 1: %s \"%s\"", rpc_code_name(e->async_code[0]), e->async_detail[0]);
    EXPECT_MSG(e->async_code[1] == GRPC_STATUS_NOT_FOUND &&
                   !strcmp(e->async_detail[1], "no job notfound"),
               "async 2: %s \"%s\"", rpc_code_name(e->async_code[1]), e->async_detail[1]);
    EXPECT_MSG(e->async_code[2] == GRPC_STATUS_UNIMPLEMENTED, "async 3: %s \"%s\"",
               rpc_code_name(e->async_code[2]), e->async_detail[2]);

    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", closed_port());
    EXPECT(rpc_channel_open(&e->dead_channel, dead, NULL, CLIENT_TOKEN, 1) == MOE_OK);
    moe_status st = MOE_EINTERNAL;
    on_loop(e, pending_on_loop, &st);
    EXPECT(st == MOE_OK);

    /* without wait_for_ready, a call to nobody fails fast */
    struct rpc_channel *nobody = NULL;
    EXPECT(rpc_channel_open(&nobody, dead, NULL, CLIENT_TOKEN, 0) == MOE_OK);
    Moed__V1__JobInfo *info = NULL;
    struct rpc_result res;
    double t0 = uv_hrtime() * 1e-9;
    EXPECT_FAIL(echo(nobody, "x", &info, 10, &res), MOE_EUNAVAILABLE, "UNAVAILABLE");
    EXPECT(uv_hrtime() * 1e-9 - t0 < 5);
    rpc_channel_close(nobody);
}

/* -- blocking calls from several threads at once -- */

#define THREADS 8
#define CALLS_PER_THREAD 100

struct hammer {
    struct env *e;
    struct rpc_channel *shared;
    int id;
    int ok, bad;
};

static void hammer_main(void *arg) {
    struct hammer *h = arg;
    struct rpc_channel *own = NULL;
    if (rpc_channel_open(&own, h->e->target, NULL, CLIENT_TOKEN, 0) != MOE_OK) {
        h->bad = CALLS_PER_THREAD;
        return;
    }
    for (int i = 0; i < CALLS_PER_THREAD; i++) {
        char id[32];
        snprintf(id, sizeof id, "t%d-call-%d", h->id, i);
        Moed__V1__JobInfo *info = NULL;
        moe_status s = echo(i % 2 ? own : h->shared, id, &info, 10, NULL);
        if (s == MOE_OK && info && !strcmp(info->job_id, id))
            h->ok++;
        else
            h->bad++;
        if (info) moed__v1__job_info__free_unpacked(info, NULL);
    }
    rpc_channel_close(own);
}

static void test_concurrent(struct env *e, struct rpc_channel *ch) {
    int before = atomic_load(&e->unary_calls);
    struct hammer h[THREADS];
    uv_thread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        h[i] = (struct hammer){e, ch, i, 0, 0};
        uv_thread_create(&t[i], hammer_main, &h[i]);
    }
    int ok = 0, bad = 0;
    for (int i = 0; i < THREADS; i++) {
        uv_thread_join(&t[i]);
        ok += h[i].ok;
        bad += h[i].bad;
    }
    EXPECT_MSG(ok == THREADS * CALLS_PER_THREAD && bad == 0, "concurrent: %d ok, %d failed", ok,
               bad);
    EXPECT(atomic_load(&e->unary_calls) == before + THREADS * CALLS_PER_THREAD);
}

/* -- TLS -- */

static int make_cert(const char *dir, const char *name) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
             "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout %s/%s.key "
             "-out %s/%s.pem >/dev/null 2>&1",
             dir, name, dir, name);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_tls(struct env *e, const char *dir) {
    char cert[256], key[256], other[256], missing[256];
    snprintf(cert, sizeof cert, "%s/server.pem", dir);
    snprintf(key, sizeof key, "%s/server.key", dir);
    snprintf(other, sizeof other, "%s/other.pem", dir);
    snprintf(missing, sizeof missing, "%s/missing.pem", dir);

    /* configuration mistakes are refused by name */
    struct rpc_server *never = NULL;
    int port = 0;
    struct rpc_tls no_key = {.cert_file = cert};
    struct server_start ss = {&no_key, &never, &port, MOE_OK, ""};
    on_loop(e, start_server_on_loop, &ss);
    EXPECT_MSG(ss.status == MOE_EINVAL && strstr(ss.error, "needs a key file"), "%s", ss.error);
    struct rpc_tls no_file = {.cert_file = missing, .key_file = key};
    ss = (struct server_start){&no_file, &never, &port, MOE_OK, ""};
    on_loop(e, start_server_on_loop, &ss);
    EXPECT_MSG(ss.status == MOE_EIO && strstr(ss.error, "missing.pem"), "%s", ss.error);
    struct rpc_channel *bad = NULL;
    struct rpc_tls no_ca = {.ca_file = missing};
    EXPECT_FAIL(rpc_channel_open(&bad, e->target, &no_ca, CLIENT_TOKEN, 0), MOE_EIO, "missing.pem");

    struct rpc_tls server_tls = {.cert_file = cert, .key_file = key};
    ss = (struct server_start){&server_tls, &e->tls_server, &e->tls_port, MOE_OK, ""};
    on_loop(e, start_server_on_loop, &ss);
    EXPECT_MSG(ss.status == MOE_OK, "TLS server: %s", ss.error);
    if (ss.status != MOE_OK) return;
    snprintf(e->tls_target, sizeof e->tls_target, "127.0.0.1:%d", e->tls_port);

    struct rpc_tls trust = {.ca_file = cert}, trust_other = {.ca_file = other};
    struct rpc_channel *tls = NULL, *plain = NULL, *wrong_ca = NULL, *tls_to_plain = NULL;
    EXPECT(rpc_channel_open(&tls, e->tls_target, &trust, CLIENT_TOKEN, 0) == MOE_OK);
    EXPECT(rpc_channel_open(&plain, e->tls_target, NULL, CLIENT_TOKEN, 0) == MOE_OK);
    EXPECT(rpc_channel_open(&wrong_ca, e->tls_target, &trust_other, CLIENT_TOKEN, 0) == MOE_OK);
    EXPECT(rpc_channel_open(&tls_to_plain, e->target, &trust, CLIENT_TOKEN, 0) == MOE_OK);
    if (tls && plain && wrong_ca && tls_to_plain) {
        int before = atomic_load(&e->unary_calls);
        expect_echo(tls, "over-tls");
        expect_code(tls, "/test.Echo/Cluster", "x", GRPC_STATUS_UNAUTHENTICATED, "cluster token");
        Moed__V1__JobInfo *info = NULL;
        struct rpc_result res;
        EXPECT_MSG(echo(plain, "plain", &info, 5, &res) != MOE_OK && res.code != GRPC_STATUS_OK,
                   "an insecure client got through to a TLS server");
        EXPECT_MSG(echo(wrong_ca, "wrong-ca", &info, 5, &res) != MOE_OK &&
                       res.code != GRPC_STATUS_OK,
                   "a client trusting another CA got through");
        EXPECT_MSG(echo(tls_to_plain, "tls-to-plain", &info, 5, &res) != MOE_OK &&
                       res.code != GRPC_STATUS_OK,
                   "a TLS client got an answer from a plaintext server");
        EXPECT(atomic_load(&e->unary_calls) == before + 1);
        /* streams over TLS */
        Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
        ref.job_id = "20";
        struct rpc_stream *s = NULL;
        int ret;
        EXPECT(rpc_stream_open(&s, tls, "/test.Echo/Count", &ref.base, 10) == MOE_OK);
        EXPECT(read_count(s, &res, &ret) == 20 && ret == 0);
        rpc_stream_close(s);
    }
    rpc_channel_close(tls);
    rpc_channel_close(plain);
    rpc_channel_close(wrong_ca);
    rpc_channel_close(tls_to_plain);
}

/* Shutdown with a stream open and an asynchronous call pending: the stream ends on the
 * client, on_close runs, the pending call's callback runs, and the loop runs dry. */
static void test_shutdown(struct env *e, struct rpc_channel *ch) {
    Moed__V1__JobRef ref = MOED__V1__JOB_REF__INIT;
    struct rpc_stream *s = NULL;
    struct rpc_result res;
    ProtobufCMessage *msg = NULL;
    int fclosed = atomic_load(&e->forever_closed);
    EXPECT(rpc_stream_open(&s, ch, "/test.Echo/Forever", &ref.base, 0) == MOE_OK);
    for (int i = 0; i < 2; i++) {
        EXPECT(rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res) == 1);
        if (msg) protobuf_c_message_free_unpacked(msg, NULL);
    }
    EXPECT(!atomic_load(&e->pending_done));

    on_loop_later(e, shutdown_on_loop, NULL);
    int r, n = 0;
    while ((r = rpc_stream_next(s, &moed__v1__job_info__descriptor, &msg, &res)) == 1) {
        protobuf_c_message_free_unpacked(msg, NULL);
        n++;
    }
    EXPECT_MSG(r == -1 &&
                   (res.code == GRPC_STATUS_CANCELLED || res.code == GRPC_STATUS_UNAVAILABLE),
               "the open stream ended with %d, %s \"%s\"", r, rpc_code_name(res.code), res.details);
    rpc_stream_close(s);

    uv_thread_join(&e->thread); // returns once the loop has run dry
    EXPECT(atomic_load(&e->servers_down) == 2);
    EXPECT(atomic_load(&e->pump_down) == 1);
    EXPECT(atomic_load(&e->forever_closed) == fclosed + 1);
    EXPECT_MSG(atomic_load(&e->pending_done) && e->pending_code == GRPC_STATUS_CANCELLED,
               "the pending call ended: %d, %s", atomic_load(&e->pending_done),
               rpc_code_name(e->pending_code));
    EXPECT_MSG(uv_loop_close(&e->loop) == 0, "handles are left on the loop");

    /* nobody answers any more */
    Moed__V1__JobInfo *info = NULL;
    EXPECT_FAIL(echo(ch, "gone", &info, 5, &res), MOE_EUNAVAILABLE, "UNAVAILABLE");
}


/* ---- the method paths against the .proto ---- */

static const ProtobufCMethodDescriptor *proto_method(const char *path) {
    static const ProtobufCServiceDescriptor *services[] = {
        &moed__v1__jobs__descriptor, &moed__v1__status__descriptor,
        &moed__v1__cluster__descriptor, &moed__v1__worker__descriptor,
        &grpc__health__v1__health__descriptor};
    for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
        for (unsigned m = 0; m < services[i]->n_methods; m++) {
            char want[160];
            snprintf(want, sizeof want, "/%s/%s", services[i]->name, services[i]->methods[m].name);
            if (!strcmp(want, path)) return &services[i]->methods[m];
        }
    return NULL;
}

/* No credential opens only the health service: a table that would open anything else, or
 * that forgets to name a row's class, never serves. */
static void test_auth_classes(struct env *e) {
    /* an address it could never bind: should the table pass, the start still fails (EIO),
     * and no stray server is left running */
    struct rpc_server_config cfg = {.listen = "127.0.0.1:notaport", .role = "test"};
    const struct rpc_method sneaky[] = {
        {"/test.Echo/Unary", REF, RPC_UNARY, RPC_AUTH_CLIENT, echo_unary},
        {"/test.Echo/Sneaky", REF, RPC_UNARY, RPC_AUTH_HEALTH, open_unary}};
    const struct rpc_method lookalike[] = {
        {"/grpc.health.v1.HealthX/Check", REF, RPC_UNARY, RPC_AUTH_HEALTH, open_unary}};
    const struct rpc_method unset[] = {{"/test.Echo/Unset", REF, RPC_UNARY, 0, open_unary}};
    struct rpc_server *never = NULL;
    EXPECT_FAIL(rpc_server_start(&never, e->pump, &cfg, sneaky, 2, e, NULL), MOE_EINVAL,
                "/test.Echo/Sneaky may not go without a credential");
    EXPECT_FAIL(rpc_server_start(&never, e->pump, &cfg, lookalike, 1, e, NULL), MOE_EINVAL,
                "may not go without a credential");
    EXPECT_FAIL(rpc_server_start(&never, e->pump, &cfg, unset, 1, e, NULL), MOE_EINVAL,
                "/test.Echo/Unset names no auth class");
    EXPECT(never == NULL);
}

static void test_method_paths(void) {
    static const char *paths[] = {
        RPC_JOBS_SUBMIT_JOB, RPC_JOBS_CANCEL_JOB, RPC_JOBS_LIST_JOBS, RPC_JOBS_GET_JOB,
        RPC_JOBS_WATCH_JOB, RPC_JOBS_FETCH_MODEL, RPC_JOBS_LIST_STEPS, RPC_STATUS_GET_CLUSTER,
        RPC_STATUS_GET_JOB, RPC_STATUS_WATCH_JOB, RPC_STATUS_LIST_STEPS,
        RPC_JOBS_DELETE_JOB, RPC_JOBS_LIST_EVENTS, RPC_STATUS_LIST_EVENTS,
        RPC_CLUSTER_REGISTER_WORKER, RPC_CLUSTER_HEARTBEAT, RPC_CLUSTER_REPORT_STEP,
        RPC_CLUSTER_UPLOAD_MODEL, RPC_CLUSTER_REPORT_JOB_END, RPC_CLUSTER_REPORT_FAULT,
        RPC_CLUSTER_REPORT_RESTORED, RPC_WORKER_RUN_SLOT, RPC_WORKER_STOP_JOB,
        RPC_WORKER_FENCE_SLOT, RPC_WORKER_INJECT_FAULT, RPC_WORKER_EXPORT_STATE};
    size_t n = sizeof paths / sizeof paths[0];
    for (size_t i = 0; i < n; i++) EXPECT_MSG(proto_method(paths[i]), "%s is not in moed.proto", paths[i]);
    size_t in_proto = moed__v1__jobs__descriptor.n_methods + moed__v1__status__descriptor.n_methods +
                      moed__v1__cluster__descriptor.n_methods + moed__v1__worker__descriptor.n_methods;
    EXPECT_MSG(n == in_proto, "methods.h names %zu methods, moed.proto has %zu", n, in_proto);
    /* the coordinator serves Jobs, Status, Cluster and Health whole, each with the .proto's
     * types */
    size_t served = moed__v1__jobs__descriptor.n_methods + moed__v1__status__descriptor.n_methods +
                    moed__v1__cluster__descriptor.n_methods +
                    grpc__health__v1__health__descriptor.n_methods;
    EXPECT((size_t)coordinator_n_methods == served);
    for (int i = 0; i < coordinator_n_methods; i++) {
        const struct rpc_method *m = &coordinator_methods[i];
        const ProtobufCMethodDescriptor *d = proto_method(m->path);
        EXPECT_MSG(d && d->input == m->request_type, "%s: request type differs from moed.proto",
                   m->path);
        /* who may call: anyone the health service; clients the Jobs and Status services; a
         * worker's own credential every Cluster call but RegisterWorker, which the cluster
         * token opens too (a new worker) */
        int health = !strncmp(m->path, RPC_HEALTH_PREFIX, strlen(RPC_HEALTH_PREFIX));
        enum rpc_auth want = health ? RPC_AUTH_HEALTH
                             : strncmp(m->path, "/moed.v1.Cluster/", 17) != 0 ? RPC_AUTH_CLIENT
                             : !strcmp(m->path, RPC_CLUSTER_REGISTER_WORKER) ? RPC_AUTH_CLUSTER
                                                                            : RPC_AUTH_IDENTITY;
        EXPECT_MSG(m->auth == want, "%s: auth %d, wanted %d", m->path, (int)m->auth, (int)want);
    }
}

int main(void) {
    moe_log_init("test");
    test_method_paths();
    alarm(240); // a hang is a failure, not a stuck ctest
    test_read_token();
    test_credentials();
    test_log_limit();

    struct env *e = calloc(1, sizeof *e);
    if (!e) return 1;
    uv_loop_init(&e->loop);
    uv_mutex_init(&e->mu);
    uv_cond_init(&e->cv);
    uv_async_init(&e->loop, &e->wake, wake_cb);
    e->wake.data = e;
    uv_thread_create(&e->thread, loop_main, e);

    moe_status st = MOE_EINTERNAL;
    on_loop(e, start_pump_on_loop, &st);
    EXPECT(st == MOE_OK);
    struct server_start ss = {NULL, &e->server, &e->port, MOE_OK, ""};
    on_loop(e, start_server_on_loop, &ss);
    if (st != MOE_OK || ss.status != MOE_OK) {
        printf("FAIL cannot start: %s\n", ss.error);
        return 1;
    }
    EXPECT(e->port > 0);
    snprintf(e->target, sizeof e->target, "127.0.0.1:%d", e->port);
    /* an address that is not host:port is refused by name */
    struct rpc_server *never = NULL;
    struct rpc_server_config cfg = {.listen = "127.0.0.1:notaport", .role = "test"};
    EXPECT_FAIL(rpc_server_start(&never, e->pump, &cfg, toy_methods, N_TOY_METHODS, e, NULL),
                MOE_EIO, "cannot listen on 127.0.0.1:notaport");
    test_auth_classes(e);

    struct rpc_channel *ch = NULL;
    EXPECT(rpc_channel_open(&ch, e->target, NULL, CLIENT_TOKEN, 0) == MOE_OK);
    EXPECT(!strcmp(rpc_channel_target(ch), e->target));

    test_unary(e, ch);
    test_auth(e);
    test_identity(e);
    test_bad_requests(e, ch);
    test_streams(e, ch);
    test_big(e, ch);
    test_async(e, ch);
    test_concurrent(e, ch);

    char dir[] = "/tmp/test_rpc_tls.XXXXXX";
    int have_tls = 0;
    if (system("command -v openssl >/dev/null 2>&1") != 0) {
        printf("note: openssl is not installed: the TLS part is skipped\n");
    } else if (!mkdtemp(dir) || make_cert(dir, "server") != 0 || make_cert(dir, "other") != 0) {
        EXPECT_MSG(0, "cannot make a self-signed certificate with openssl in %s", dir);
    } else {
        have_tls = 1;
        test_tls(e, dir);
    }
    if (!e->tls_server) { // keep shutdown's shape: two servers go down, then the pump
        struct rpc_tls *none = NULL;
        struct server_start plain = {none, &e->tls_server, &e->tls_port, MOE_OK, ""};
        on_loop(e, start_server_on_loop, &plain);
        EXPECT(plain.status == MOE_OK);
    }

    test_shutdown(e, ch);
    rpc_channel_close(ch);
    rpc_channel_close(e->dead_channel);
    if (have_tls) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) printf("note: could not remove %s\n", dir);
    }
    uv_mutex_destroy(&e->mu);
    uv_cond_destroy(&e->cv);
    failures += atomic_load(&e->loop_failures);
    free(e);
    rpc_shutdown_library();
    if (failures) {
        printf("test_rpc: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_rpc: all checks passed\n");
    return 0;
}
