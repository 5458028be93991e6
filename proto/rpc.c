/*
 * rpc.c — see rpc.h. The shape of it:
 *
 *   gRPC threads ── completion queue ── pump thread ──(mutex queue + uv_async)──▶ loop thread
 *
 * Every operation we start carries a `struct rpc_tag` whose fn runs on the loop thread when
 * the operation completes. Server calls are reference-counted by their outstanding batches;
 * a call is freed when the last batch completes, never earlier.
 */
#include "rpc.h"

#include "../common/log.h"
#include "absl_mutex.h"

#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rpc_tag {
    void (*fn)(struct rpc_tag *tag, int ok);
};

/* ---- library ---- */

static uv_once_t init_once = UV_ONCE_INIT;
static int initialized; // grpc_shutdown without grpc_init crashes: a process that never
                        // made a call may still end with rpc_shutdown_library
static void do_init(void) {
    rpc_absl_mutex_fast(); // before gRPC takes its first lock (absl_mutex.h)
    grpc_init();
    initialized = 1;
}
void rpc_init(void) { uv_once(&init_once, do_init); }
void rpc_shutdown_library(void) {
    if (initialized) grpc_shutdown();
}

const char *rpc_code_name(grpc_status_code code) {
    static const char *names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT",
                                  "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
                                  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                  "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    if ((int)code >= 0 && (size_t)code < sizeof names / sizeof names[0]) return names[code];
    return "UNKNOWN_CODE";
}

static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t n = fread(buf + len, 1, 4096, f);
        len += n;
        if (n < 4096) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[len] = 0;
    return buf;
}

moe_status rpc_read_token(const char *path, char *out, size_t cap) {
    char *text = read_text_file(path);
    if (!text) return moe_fail(MOE_EIO, "cannot read token file %s: %s", path, strerror(errno));
    char *s = text;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r')) n--;
    moe_status res = MOE_OK;
    if (n == 0)
        res = moe_fail(MOE_EINVAL, "token file %s is empty", path);
    else if (n >= cap)
        res = moe_fail(MOE_EINVAL, "token in %s is longer than %zu bytes", path, cap - 1);
    else {
        memcpy(out, s, n);
        out[n] = 0;
    }
    free(text);
    return res;
}

int rpc_secret_equal(const char *given, size_t len, const char *expected) {
    size_t n = strlen(expected);
    if (len != n || n == 0) return 0; // the lengths are not the secret
    return CRYPTO_memcmp(given, expected, n) == 0;
}

moe_status rpc_new_credential(const char *prefix, char *out, size_t cap) {
    unsigned char raw[RPC_SECRET_HEX / 2];
    if (strlen(prefix) + 1 + RPC_SECRET_HEX >= cap)
        return moe_fail(MOE_EINVAL, "a credential for %s does not fit in %zu bytes", prefix, cap);
    if (RAND_bytes(raw, (int)sizeof raw) != 1)
        return moe_fail(MOE_EINTERNAL, "no randomness for a new credential (RAND_bytes)");
    size_t n = (size_t)snprintf(out, cap, "%s.", prefix);
    for (size_t i = 0; i < sizeof raw; i++) n += (size_t)snprintf(out + n, cap - n, "%02x", raw[i]);
    OPENSSL_cleanse(raw, sizeof raw);
    return MOE_OK;
}

/* ---- messages <-> byte buffers ---- */

/* A message packed once, for many calls or streams. */
struct rpc_message {
    grpc_byte_buffer *bb;
};

static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg) {
    size_t size = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(size);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

/* NULL when the bytes are not a `type` message. */
static ProtobufCMessage *unpack_message(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *type) {
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb)) return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    ProtobufCMessage *msg = protobuf_c_message_unpack(type, NULL, GRPC_SLICE_LENGTH(all),
                                                      GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    grpc_byte_buffer_reader_destroy(&reader);
    return msg;
}

/* Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF): what proto3 requires of a string field, and what protobuf-c does not check. */
static int utf8_valid(const unsigned char *s) {
    while (*s) {
        unsigned c = *s++;
        int more = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2
                 : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (more < 0) return 0;
        unsigned cp = more ? c & (0x3Fu >> more) : c;
        for (int i = 0; i < more; i++, s++) {
            if ((*s & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (*s & 0x3Fu);
        }
        static const unsigned least[] = {0, 0x80, 0x800, 0x10000};
        if (cp < least[more] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    }
    return 1;
}

/* The first string field of `m` (nested messages included) that is not UTF-8, or NULL. A
 * string that is not UTF-8 would be stored and echoed into replies that stock clients then
 * refuse to parse whole (one bad registration made GetCluster unreadable to Python's grpc). */
static const ProtobufCFieldDescriptor *non_utf8_field(const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE) continue;
        const char *base = (const char *)m;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)(base + f->quantifier_offset) != f->id)
            continue;
        size_t n = 1;
        void *const *items = (void *const *)(base + f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            n = *(const size_t *)(base + f->quantifier_offset);
            items = *(void *const *const *)(base + f->offset);
        }
        for (size_t k = 0; k < n; k++) {
            if (!items[k]) continue;
            if (f->type == PROTOBUF_C_TYPE_STRING && !utf8_valid(items[k])) return f;
            if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                const ProtobufCFieldDescriptor *bad = non_utf8_field(items[k]);
                if (bad) return bad;
            }
        }
    }
    return NULL;
}

/* ---- pump ---- */

struct pump_event {
    struct rpc_tag *tag; // NULL: the queue has shut down
    int ok;
};

struct client_call;

struct rpc_pump {
    uv_loop_t *loop;
    grpc_completion_queue *cq;
    uv_thread_t thread;
    uv_async_t async;
    uv_mutex_t mu;
    struct pump_event *events;
    size_t n_events, cap_events;
    struct client_call *calls; // async client calls in flight
    int stopping;
    void (*done)(void *arg);
    void *done_arg;
};

static void pump_push(struct rpc_pump *p, struct rpc_tag *tag, int ok) {
    uv_mutex_lock(&p->mu);
    if (p->n_events == p->cap_events) {
        size_t cap = p->cap_events ? p->cap_events * 2 : 64;
        struct pump_event *ne = realloc(p->events, cap * sizeof *ne);
        if (!ne) {
            /* Losing a completion would leak a call forever; there is no way to go on. */
            LOG_ERROR("rpc: out of memory queueing a completion");
            abort();
        }
        p->events = ne;
        p->cap_events = cap;
    }
    p->events[p->n_events++] = (struct pump_event){tag, ok};
    uv_mutex_unlock(&p->mu);
    uv_async_send(&p->async);
}

static void pump_thread(void *arg) {
    struct rpc_pump *p = arg;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(p->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) {
            pump_push(p, NULL, 0);
            return;
        }
        if (ev.type == GRPC_OP_COMPLETE) pump_push(p, ev.tag, ev.success);
    }
}

static void pump_closed(uv_handle_t *h) {
    struct rpc_pump *p = h->data;
    void (*done)(void *) = p->done;
    void *arg = p->done_arg;
    uv_mutex_destroy(&p->mu);
    free(p->events);
    free(p);
    if (done) done(arg);
}

/* One batch per turn of the loop: what arrives meanwhile was signalled by pump_push and is
 * drained at the next turn, after the loop's timers. Draining until the queue was empty never
 * returned under a steady stream of calls (thousands of workers), and the coordinator's
 * heartbeat monitor, a timer, went unrun for tens of seconds. */
static void pump_drain(uv_async_t *a) {
    struct rpc_pump *p = a->data;
    uv_mutex_lock(&p->mu);
    size_t n = p->n_events;
    struct pump_event *batch = n ? malloc(n * sizeof *batch) : NULL;
    if (batch) {
        memcpy(batch, p->events, n * sizeof *batch);
        p->n_events = 0;
    }
    uv_mutex_unlock(&p->mu);
    if (!n) return;
    if (!batch) {
        LOG_ERROR("rpc: out of memory draining completions");
        abort();
    }
    int shutdown = 0;
    for (size_t i = 0; i < n; i++) {
        if (!batch[i].tag)
            shutdown = 1;
        else
            batch[i].tag->fn(batch[i].tag, batch[i].ok);
    }
    free(batch);
    if (shutdown) {
        uv_thread_join(&p->thread);
        grpc_completion_queue_destroy(p->cq);
        p->cq = NULL;
        uv_close((uv_handle_t *)&p->async, pump_closed);
        return;
    }
    uv_mutex_lock(&p->mu);
    int more = p->n_events > 0;
    uv_mutex_unlock(&p->mu);
    if (more) uv_async_send(a); // the next turn, whether or not pump_push's send coalesced
}

moe_status rpc_pump_start(struct rpc_pump **out, uv_loop_t *loop) {
    rpc_init();
    struct rpc_pump *p = calloc(1, sizeof *p);
    if (!p) return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    p->loop = loop;
    p->cq = grpc_completion_queue_create_for_next(NULL);
    uv_mutex_init(&p->mu);
    uv_async_init(loop, &p->async, pump_drain);
    p->async.data = p;
    if (uv_thread_create(&p->thread, pump_thread, p) != 0) {
        grpc_completion_queue_destroy(p->cq);
        uv_close((uv_handle_t *)&p->async, NULL);
        /* p is freed after the close callback would run; keep it simple: leak on this path. */
        return moe_fail(MOE_EINTERNAL, "rpc: cannot start the completion-queue thread");
    }
    *out = p;
    return MOE_OK;
}

/* ---- client calls (shared parts) ---- */

struct rpc_channel {
    grpc_channel *channel;
    char target[256];
    uv_mutex_t auth_mu; // auth may change between calls (rpc_channel_set_token)
    char auth[320];     // "Bearer <token>", or "" for none
    int wait_for_ready;
};

struct client_ops {
    grpc_metadata auth_md;
    int has_auth;       // auth_md.value is this call's own copy
    grpc_metadata_array initial_md, trailing_md;
    grpc_byte_buffer *request, *response;
    grpc_status_code status;
    grpc_slice details;
};

static gpr_timespec deadline_after(double seconds) {
    if (seconds <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis((int64_t)(seconds * 1000.0), GPR_TIMESPAN));
}

static grpc_call *client_call_create(struct rpc_channel *ch, grpc_completion_queue *cq,
                                     const char *method, double timeout_s) {
    grpc_slice m = grpc_slice_from_copied_string(method);
    grpc_call *call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m,
                                               NULL, deadline_after(timeout_s), NULL);
    grpc_slice_unref(m);
    return call;
}

/* Fills ops[0..n) with the "send one request, half-close" part of a call. */
static size_t client_send_ops(struct rpc_channel *ch, struct client_ops *co, grpc_op *ops) {
    size_t n = 0;
    memset(ops, 0, 3 * sizeof *ops);
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    uv_mutex_lock(&ch->auth_mu);
    if (ch->auth[0]) { // the call's own copy: the channel's may change while it is in flight
        co->auth_md.key = grpc_slice_from_static_string("authorization");
        co->auth_md.value = grpc_slice_from_copied_string(ch->auth);
        co->has_auth = 1;
        ops[n].data.send_initial_metadata.count = 1;
        ops[n].data.send_initial_metadata.metadata = &co->auth_md;
    }
    uv_mutex_unlock(&ch->auth_mu);
    if (ch->wait_for_ready) ops[n].flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
    n++;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = co->request;
    n++;
    ops[n].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    n++;
    return n;
}

static void client_ops_init(struct client_ops *co, const ProtobufCMessage *request) {
    memset(co, 0, sizeof *co);
    grpc_metadata_array_init(&co->initial_md);
    grpc_metadata_array_init(&co->trailing_md);
    co->request = request ? pack_message(request) : NULL;
    co->details = grpc_empty_slice();
}

static void client_ops_destroy(struct client_ops *co) {
    if (co->has_auth) grpc_slice_unref(co->auth_md.value);
    co->has_auth = 0;
    grpc_metadata_array_destroy(&co->initial_md);
    grpc_metadata_array_destroy(&co->trailing_md);
    if (co->request) grpc_byte_buffer_destroy(co->request);
    if (co->response) grpc_byte_buffer_destroy(co->response);
    grpc_slice_unref(co->details);
}

static void result_from(struct rpc_result *res, grpc_status_code code, grpc_slice details) {
    res->code = code;
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n >= sizeof res->details) n = sizeof res->details - 1;
    memcpy(res->details, GRPC_SLICE_START_PTR(details), n);
    res->details[n] = 0;
}

static moe_status fail_result(const struct rpc_channel *ch, const char *method,
                              const struct rpc_result *res) {
    moe_status s = MOE_EINTERNAL;
    switch (res->code) {
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_FAILED_PRECONDITION:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_ALREADY_EXISTS: s = MOE_EINVAL; break;
    case GRPC_STATUS_NOT_FOUND: s = MOE_ENOTFOUND; break;
    case GRPC_STATUS_UNAUTHENTICATED:
    case GRPC_STATUS_PERMISSION_DENIED: s = MOE_EAUTH; break;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_CANCELLED: s = MOE_EUNAVAILABLE; break;
    default: break;
    }
    const char *short_method = strrchr(method, '/');
    return moe_fail(s, "%s on %s: %s: %s", short_method ? short_method + 1 : method, ch->target,
                    rpc_code_name(res->code), res->details[0] ? res->details : "(no details)");
}

/* ---- channels ---- */

moe_status rpc_channel_open(struct rpc_channel **out, const char *target, const struct rpc_tls *tls,
                            const char *token, int wait_for_ready) {
    rpc_init();
    struct rpc_channel *ch = calloc(1, sizeof *ch);
    if (!ch) return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    snprintf(ch->target, sizeof ch->target, "%s", target);
    uv_mutex_init(&ch->auth_mu);
    if (token && token[0]) snprintf(ch->auth, sizeof ch->auth, "Bearer %s", token);
    ch->wait_for_ready = wait_for_ready;

    grpc_channel_credentials *creds;
    if (tls && tls->ca_file && tls->ca_file[0]) {
        char *ca = read_text_file(tls->ca_file);
        if (!ca) {
            uv_mutex_destroy(&ch->auth_mu);
            free(ch);
            return moe_fail(MOE_EIO, "cannot read TLS CA file %s: %s", tls->ca_file, strerror(errno));
        }
        creds = grpc_ssl_credentials_create(ca, NULL, NULL, NULL);
        free(ca);
    } else {
        creds = grpc_insecure_credentials_create();
    }
    /* Keepalive notices a dead peer within seconds on idle streams (a watch); a short
     * reconnect backoff lets workers find a restarted coordinator within a second.
     * GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left at its default on purpose: gRPC uses it as
     * the minimum time a connection attempt gets (handshake included), and at 100 ms a busy
     * machine failed fast calls with UNAVAILABLE "tcp handshaker shutdown". */
    grpc_arg args[] = {
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = RPC_MAX_MESSAGE}},
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, {.integer = RPC_MAX_MESSAGE}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = 10000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = 5000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
        {GRPC_ARG_INTEGER, GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, {.integer = 100}},
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, {.integer = 1000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_ENABLE_RETRIES, {.integer = 0}},
    };
    grpc_channel_args cargs = {sizeof args / sizeof args[0], args};
    ch->channel = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    if (!ch->channel) {
        uv_mutex_destroy(&ch->auth_mu);
        free(ch);
        return moe_fail(MOE_EINVAL, "cannot create a channel to %s", target);
    }
    *out = ch;
    return MOE_OK;
}

void rpc_channel_set_token(struct rpc_channel *ch, const char *token) {
    uv_mutex_lock(&ch->auth_mu);
    if (token && token[0])
        snprintf(ch->auth, sizeof ch->auth, "Bearer %s", token);
    else
        ch->auth[0] = 0;
    uv_mutex_unlock(&ch->auth_mu);
}

void rpc_channel_connect(struct rpc_channel *ch) {
    (void)grpc_channel_check_connectivity_state(ch->channel, 1);
}

void rpc_channel_close(struct rpc_channel *ch) {
    if (!ch) return;
    grpc_channel_destroy(ch->channel);
    OPENSSL_cleanse(ch->auth, sizeof ch->auth);
    uv_mutex_destroy(&ch->auth_mu);
    free(ch);
}

const char *rpc_channel_target(const struct rpc_channel *ch) { return ch->target; }

int rpc_channel_ready(struct rpc_channel *ch) {
    return grpc_channel_check_connectivity_state(ch->channel, 0) == GRPC_CHANNEL_READY;
}

/* ---- blocking unary ---- */

static void drain_and_destroy(grpc_completion_queue *cq) {
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
           GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
}

moe_status rpc_call_sync(struct rpc_channel *ch, const char *method, const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_type,
                         ProtobufCMessage **response, double timeout_s, struct rpc_result *res) {
    struct rpc_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    *response = NULL;

    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_call *call = client_call_create(ch, cq, method, timeout_s);
    struct client_ops co;
    client_ops_init(&co, request);
    grpc_op ops[6];
    size_t n = client_send_ops(ch, &co, ops);
    memset(ops + n, 0, 3 * sizeof *ops);
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &co.initial_md;
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &co.response;
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &co.trailing_md;
    ops[n].data.recv_status_on_client.status = &co.status;
    ops[n++].data.recv_status_on_client.status_details = &co.details;

    moe_status st = MOE_OK;
    int tag;
    grpc_call_error e = grpc_call_start_batch(call, ops, n, &tag, NULL);
    if (e != GRPC_CALL_OK) {
        res->code = GRPC_STATUS_INTERNAL;
        snprintf(res->details, sizeof res->details, "grpc_call_start_batch: error %d", (int)e);
    } else {
        grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        result_from(res, co.status, co.details);
        if (res->code == GRPC_STATUS_OK) {
            *response = co.response ? unpack_message(co.response, response_type) : NULL;
            if (!*response) {
                res->code = GRPC_STATUS_INTERNAL;
                snprintf(res->details, sizeof res->details, "the reply is not a %s",
                         response_type->name);
            }
        }
    }
    if (res->code != GRPC_STATUS_OK) st = fail_result(ch, method, res);
    client_ops_destroy(&co);
    grpc_call_unref(call);
    drain_and_destroy(cq);
    return st;
}

/* ---- asynchronous unary on the pump ---- */

struct client_call {
    struct rpc_tag tag;
    struct rpc_pump *pump;
    struct client_call *prev, *next;
    grpc_call *call;
    struct client_ops co;
    const ProtobufCMessageDescriptor *response_type;
    rpc_reply_cb cb;
    void *arg;
    struct rpc_channel *channel; // for error messages only
    char method[128];
};

static void client_call_done(struct rpc_tag *tag, int ok) {
    struct client_call *cc = (struct client_call *)tag;
    struct rpc_pump *p = cc->pump;
    if (cc->prev)
        cc->prev->next = cc->next;
    else
        p->calls = cc->next;
    if (cc->next) cc->next->prev = cc->prev;

    struct rpc_result res;
    result_from(&res, cc->co.status, cc->co.details);
    ProtobufCMessage *msg = NULL;
    if (res.code == GRPC_STATUS_OK) {
        msg = cc->co.response ? unpack_message(cc->co.response, cc->response_type) : NULL;
        if (!msg) {
            res.code = GRPC_STATUS_INTERNAL;
            snprintf(res.details, sizeof res.details, "the reply is not a %s", cc->response_type->name);
        }
    }
    if (cc->cb) cc->cb(cc->arg, &res, msg);
    if (msg) protobuf_c_message_free_unpacked(msg, NULL);
    client_ops_destroy(&cc->co);
    grpc_call_unref(cc->call);
    free(cc);
}

/* The bytes of a shared message followed by a tail's: the tail's slice is new, the shared
 * ones are references. */
static grpc_byte_buffer *append_message(const struct rpc_message *m, const ProtobufCMessage *tail) {
    const grpc_slice_buffer *sb = &m->bb->data.raw.slice_buffer;
    grpc_slice s[8];
    if (sb->count + 1 > sizeof s / sizeof *s) return NULL;
    memcpy(s, sb->slices, sb->count * sizeof *s);
    size_t size = protobuf_c_message_get_packed_size(tail);
    s[sb->count] = grpc_slice_malloc(size);
    protobuf_c_message_pack(tail, GRPC_SLICE_START_PTR(s[sb->count]));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(s, sb->count + 1);
    grpc_slice_unref(s[sb->count]);
    return bb;
}

static moe_status call_async(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                             const ProtobufCMessage *request, grpc_byte_buffer *packed,
                             const ProtobufCMessageDescriptor *response_type, double timeout_s,
                             rpc_reply_cb cb, void *arg);

moe_status rpc_call_async(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                          const ProtobufCMessage *request,
                          const ProtobufCMessageDescriptor *response_type, double timeout_s,
                          rpc_reply_cb cb, void *arg) {
    return call_async(p, ch, method, request, NULL, response_type, timeout_s, cb, arg);
}

moe_status rpc_call_async_packed(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                                 const struct rpc_message *request, const ProtobufCMessage *tail,
                                 const ProtobufCMessageDescriptor *response_type,
                                 double timeout_s, rpc_reply_cb cb, void *arg) {
    if (p->stopping) return moe_fail(MOE_EUNAVAILABLE, "rpc: shutting down");
    grpc_byte_buffer *bb = append_message(request, tail);
    if (!bb) return moe_fail(MOE_EINTERNAL, "rpc: a shared message in too many pieces");
    return call_async(p, ch, method, NULL, bb, response_type, timeout_s, cb, arg);
}

/* `packed` (taken) when not NULL, else `request` packed. */
static moe_status call_async(struct rpc_pump *p, struct rpc_channel *ch, const char *method,
                             const ProtobufCMessage *request, grpc_byte_buffer *packed,
                             const ProtobufCMessageDescriptor *response_type, double timeout_s,
                             rpc_reply_cb cb, void *arg) {
    if (p->stopping) return moe_fail(MOE_EUNAVAILABLE, "rpc: shutting down");
    struct client_call *cc = calloc(1, sizeof *cc);
    if (!cc) {
        if (packed) grpc_byte_buffer_destroy(packed);
        return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    }
    cc->tag.fn = client_call_done;
    cc->pump = p;
    cc->response_type = response_type;
    cc->cb = cb;
    cc->arg = arg;
    cc->channel = ch;
    snprintf(cc->method, sizeof cc->method, "%s", method);
    cc->call = client_call_create(ch, p->cq, method, timeout_s);
    client_ops_init(&cc->co, request);
    if (packed) cc->co.request = packed;
    grpc_op ops[6];
    size_t n = client_send_ops(ch, &cc->co, ops);
    memset(ops + n, 0, 3 * sizeof *ops);
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &cc->co.initial_md;
    ops[n].op = GRPC_OP_RECV_MESSAGE;
    ops[n++].data.recv_message.recv_message = &cc->co.response;
    ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[n].data.recv_status_on_client.trailing_metadata = &cc->co.trailing_md;
    ops[n].data.recv_status_on_client.status = &cc->co.status;
    ops[n++].data.recv_status_on_client.status_details = &cc->co.details;
    grpc_call_error e = grpc_call_start_batch(cc->call, ops, n, &cc->tag, NULL);
    if (e != GRPC_CALL_OK) {
        client_ops_destroy(&cc->co);
        grpc_call_unref(cc->call);
        free(cc);
        return moe_fail(MOE_EINTERNAL, "rpc: starting %s failed (error %d)", method, (int)e);
    }
    cc->next = p->calls;
    if (p->calls) p->calls->prev = cc;
    p->calls = cc;
    return MOE_OK;
}

void rpc_pump_stop(struct rpc_pump *p, void (*done)(void *arg), void *arg) {
    p->stopping = 1;
    p->done = done;
    p->done_arg = arg;
    for (struct client_call *cc = p->calls; cc; cc = cc->next) grpc_call_cancel(cc->call, NULL);
    /* The queue reports SHUTDOWN after the cancelled calls' completions have been delivered. */
    grpc_completion_queue_shutdown(p->cq);
}

/* ---- blocking server-streaming client ---- */

struct rpc_stream {
    struct rpc_channel *ch;
    char method[128];
    grpc_completion_queue *cq;
    grpc_call *call;
    struct client_ops co;
    int ended; // status received
};

moe_status rpc_stream_open(struct rpc_stream **out, struct rpc_channel *ch, const char *method,
                           const ProtobufCMessage *request, double timeout_s) {
    struct rpc_stream *s = calloc(1, sizeof *s);
    if (!s) return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    s->ch = ch;
    snprintf(s->method, sizeof s->method, "%s", method);
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    s->call = client_call_create(ch, s->cq, method, timeout_s);
    client_ops_init(&s->co, request);
    grpc_op ops[4];
    size_t n = client_send_ops(ch, &s->co, ops);
    memset(ops + n, 0, sizeof *ops);
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->co.initial_md;
    int tag;
    if (grpc_call_start_batch(s->call, ops, n, &tag, NULL) != GRPC_CALL_OK) {
        rpc_stream_close(s);
        return moe_fail(MOE_EINTERNAL, "rpc: starting %s failed", method);
    }
    grpc_completion_queue_pluck(s->cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    *out = s;
    return MOE_OK;
}

int rpc_stream_next(struct rpc_stream *s, const ProtobufCMessageDescriptor *type,
                    ProtobufCMessage **msg, struct rpc_result *res) {
    struct rpc_result local;
    if (!res) res = &local;
    memset(res, 0, sizeof *res);
    *msg = NULL;
    if (s->ended) return 0;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->co.response;
    int tag;
    if (grpc_call_start_batch(s->call, &op, 1, &tag, NULL) != GRPC_CALL_OK) {
        res->code = GRPC_STATUS_INTERNAL;
        snprintf(res->details, sizeof res->details, "cannot receive");
        fail_result(s->ch, s->method, res);
        return -1;
    }
    grpc_completion_queue_pluck(s->cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (s->co.response) {
        *msg = unpack_message(s->co.response, type);
        grpc_byte_buffer_destroy(s->co.response);
        s->co.response = NULL;
        if (*msg) return 1;
        grpc_call_cancel(s->call, NULL);
        res->code = GRPC_STATUS_INTERNAL;
        snprintf(res->details, sizeof res->details, "a streamed message is not a %s", type->name);
        fail_result(s->ch, s->method, res);
        /* the status still has to be collected before the call can go */
    }
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &s->co.trailing_md;
    op.data.recv_status_on_client.status = &s->co.status;
    op.data.recv_status_on_client.status_details = &s->co.details;
    if (grpc_call_start_batch(s->call, &op, 1, &tag, NULL) == GRPC_CALL_OK)
        grpc_completion_queue_pluck(s->cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    s->ended = 1;
    if (res->code != GRPC_STATUS_OK) return -1; // the unpack failure above
    result_from(res, s->co.status, s->co.details);
    if (res->code == GRPC_STATUS_OK) return 0;
    fail_result(s->ch, s->method, res);
    return -1;
}

void rpc_stream_close(struct rpc_stream *s) {
    if (!s) return;
    if (!s->ended) {
        grpc_call_cancel(s->call, NULL);
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        op.data.recv_status_on_client.trailing_metadata = &s->co.trailing_md;
        op.data.recv_status_on_client.status = &s->co.status;
        op.data.recv_status_on_client.status_details = &s->co.details;
        int tag;
        if (grpc_call_start_batch(s->call, &op, 1, &tag, NULL) == GRPC_CALL_OK)
            grpc_completion_queue_pluck(s->cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    }
    client_ops_destroy(&s->co);
    grpc_call_unref(s->call);
    drain_and_destroy(s->cq);
    free(s);
}

/* ---- servers ---- */

struct request_slot {
    struct rpc_tag tag;
    struct rpc_server *srv;
    int method; // index into srv->methods; -1: the catch-all for unknown methods
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
    grpc_call_details details; // catch-all only
};

struct call_tag {
    struct rpc_tag tag;
    struct rpc_call *call;
};

struct rpc_call {
    struct rpc_server *srv;
    const struct rpc_method *method;
    const char *path; // method->path, or the unknown path's copy
    char unknown_path[128];
    grpc_call *call;
    char peer[96];
    char identity[RPC_IDENTITY_MAX]; // from the server's identify; "" when none
    int refs;          // batches in flight, plus one while the handler holds a unary call
    int answered;      // unary: a reply or failure went out
    int deferred;      // unary: the handler answers later (rpc_defer), holding a reference
    int initial_sent;
    int status_sent;
    int closed;        // RECV_CLOSE_ON_SERVER completed: the call is over
    int cancelled;     // the client went away or a send failed (loop thread only)
    int close_cancelled; // written by gRPC's threads when the close op finishes; read only
                         // once its completion reaches the loop (stream_closed)
    int method_index;  // in srv->methods; -1: unknown (for on_done)
    uint64_t arrived_ns; // uv_hrtime when it arrived
    int counted;       // on_done has run
    struct call_tag close_tag, send_tag, status_tag, unary_tag;
    /* streaming */
    grpc_byte_buffer **queue;
    size_t q_head, q_len, q_cap;
    int sending;
    int finishing;
    grpc_status_code fin_code;
    char fin_details[512];
    void (*on_close)(struct rpc_call *c, void *arg);
    void *on_close_arg;
    void (*on_sent)(struct rpc_call *c, void *arg);
    void *on_sent_arg;
    struct rpc_call *prev, *next; // live calls of the server
};

struct rpc_server {
    struct rpc_pump *pump;
    grpc_server *server;
    const struct rpc_method *methods;
    int n_methods;
    void **handles;
    void *ctx;
    char *client_token, *cluster_token;
    rpc_identify_fn identify;
    void (*on_done)(void *ctx, int method, grpc_status_code code, double seconds);
    struct rpc_health *health; // answers the health service (proto/health.h)
    /* refusals, one rate limit per method and kind (REFUSE_*); [n_methods] for unknown ones */
    struct moe_log_limit *limits;
    char role[32];
    struct rpc_call *calls;
    int slots_out; // request slots still registered with gRPC
    int shutting_down;
    int shutdown_tag_done;
    struct rpc_tag shutdown_tag;
    void (*done)(void *arg);
    void *done_arg;
};

#define SLOTS_PER_METHOD 4

/* Kinds of refusal, each rate-limited on its own per method (a flood of one kind does not
 * hide the first lines of another). */
enum { REFUSE_AUTH = 0, REFUSE_DENIED, REFUSE_MALFORMED, REFUSE_KINDS };

static struct moe_log_limit *refusal_limit(struct rpc_server *srv, const struct rpc_method *m,
                                           int kind) {
    int i = m ? (int)(m - srv->methods) : srv->n_methods;
    return &srv->limits[i * REFUSE_KINDS + kind];
}

static void slot_arm(struct request_slot *s);
static void server_maybe_destroy(struct rpc_server *srv);

/* The server's on_done, once per call. */
static void call_count(struct rpc_call *c, grpc_status_code code) {
    if (c->counted || !c->srv->on_done) return;
    c->counted = 1;
    c->srv->on_done(c->srv->ctx, c->method_index, code,
                    (double)(uv_hrtime() - c->arrived_ns) / 1e9);
}

static void call_release(struct rpc_call *c) {
    if (--c->refs > 0) return;
    struct rpc_server *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    for (size_t i = 0; i < c->q_len; i++)
        grpc_byte_buffer_destroy(c->queue[(c->q_head + i) % c->q_cap]);
    free(c->queue);
    grpc_call_unref(c->call);
    free(c);
    server_maybe_destroy(srv);
}

static void unary_done(struct rpc_tag *tag, int ok) {
    struct rpc_call *c = ((struct call_tag *)tag)->call;
    c->closed = 1;
    call_release(c);
}

static void send_unary(struct rpc_call *c, grpc_byte_buffer *bb, grpc_status_code code,
                       const char *details) {
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA; // always: a status alone leaves clients waiting
    if (bb) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
    }
    grpc_slice det = grpc_slice_from_copied_string(details ? details : "");
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = &det;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &c->close_cancelled;
    c->answered = 1;
    call_count(c, code);
    c->unary_tag.tag.fn = unary_done;
    c->unary_tag.call = c;
    c->refs++;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->unary_tag, NULL);
    grpc_slice_unref(det);
    if (bb) grpc_byte_buffer_destroy(bb); // the batch holds its own reference
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("rpc: answering %s failed (error %d)", c->path, (int)e);
        c->refs--;
    }
    if (c->deferred) { // the reference rpc_defer took
        c->deferred = 0;
        call_release(c);
    }
}

void rpc_defer(struct rpc_call *c) {
    if (c->answered || c->deferred) return;
    c->deferred = 1;
    c->refs++;
}

void rpc_reply(struct rpc_call *c, const ProtobufCMessage *response) {
    if (c->answered) {
        LOG_ERROR("rpc: %s answered twice", c->path);
        return;
    }
    send_unary(c, pack_message(response), GRPC_STATUS_OK, NULL);
}

void rpc_fail(struct rpc_call *c, grpc_status_code code, const char *fmt, ...) {
    char details[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    if (c->method && c->method->kind == RPC_SERVER_STREAM) {
        rpc_stream_finish(c, code, details);
        return;
    }
    if (c->answered) {
        LOG_ERROR("rpc: %s answered twice", c->path);
        return;
    }
    LOG_DEBUG("rpc: %s from %s: %s: %s", c->path, c->peer, rpc_code_name(code), details);
    send_unary(c, NULL, code, details);
}

void rpc_refuse(struct rpc_call *c, grpc_status_code code, const char *fmt, ...) {
    char details[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(details, sizeof details, fmt, ap);
    va_end(ap);
    LOG_WARN_LIMITED(refusal_limit(c->srv, c->method, REFUSE_DENIED),
                     "rpc: refused %s from %s%s%s: %s: %s", c->path, c->peer,
                     c->identity[0] ? " as " : "", c->identity, rpc_code_name(code), details);
    rpc_fail(c, code, "%s", details);
}

/* -- streams -- */

static void stream_pump(struct rpc_call *c);

static void stream_closed(struct rpc_tag *tag, int ok) {
    struct rpc_call *c = ((struct call_tag *)tag)->call;
    c->closed = 1;
    if (c->close_cancelled) c->cancelled = 1;
    for (size_t i = 0; i < c->q_len; i++)
        grpc_byte_buffer_destroy(c->queue[(c->q_head + i) % c->q_cap]);
    c->q_len = 0;
    call_count(c, c->status_sent ? c->fin_code : GRPC_STATUS_CANCELLED);
    if (c->on_close) {
        void (*cb)(struct rpc_call *, void *) = c->on_close;
        c->on_close = NULL;
        cb(c, c->on_close_arg);
    }
    call_release(c);
}

static void stream_sent(struct rpc_tag *tag, int ok) {
    struct rpc_call *c = ((struct call_tag *)tag)->call;
    c->sending = 0;
    if (!ok) c->cancelled = 1;
    stream_pump(c);
    if (ok && !c->sending && !c->q_len && !c->finishing && !c->closed && !c->cancelled && c->on_sent)
        c->on_sent(c, c->on_sent_arg);
    call_release(c);
}

static void stream_status_sent(struct rpc_tag *tag, int ok) {
    struct rpc_call *c = ((struct call_tag *)tag)->call;
    call_release(c);
}

/* Starts the next send, or the status once the queue is empty and finish was asked for. */
static void stream_pump(struct rpc_call *c) {
    if (c->sending || c->status_sent) return;
    if (c->closed || c->cancelled) return;
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->initial_sent) {
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        c->initial_sent = 1;
    }
    if (c->q_len) {
        grpc_byte_buffer *bb = c->queue[c->q_head];
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = bb;
        c->sending = 1;
        c->send_tag.tag.fn = stream_sent;
        c->send_tag.call = c;
        c->refs++;
        if (grpc_call_start_batch(c->call, ops, n, &c->send_tag, NULL) != GRPC_CALL_OK) {
            c->sending = 0;
            c->refs--;
            c->cancelled = 1;
        }
        grpc_byte_buffer_destroy(bb);
        return;
    }
    if (!c->finishing) {
        if (n) { // initial metadata on its own, so the client sees the stream open at once
            c->send_tag.tag.fn = stream_sent;
            c->send_tag.call = c;
            c->sending = 1;
            c->refs++;
            if (grpc_call_start_batch(c->call, ops, n, &c->send_tag, NULL) != GRPC_CALL_OK) {
                c->sending = 0;
                c->refs--;
            }
        }
        return;
    }
    grpc_slice det = grpc_slice_from_copied_string(c->fin_details);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = c->fin_code;
    ops[n++].data.send_status_from_server.status_details = &det;
    c->status_sent = 1;
    call_count(c, c->fin_code);
    c->status_tag.tag.fn = stream_status_sent;
    c->status_tag.call = c;
    c->refs++;
    if (grpc_call_start_batch(c->call, ops, n, &c->status_tag, NULL) != GRPC_CALL_OK) c->refs--;
    grpc_slice_unref(det);
}

/* Queues `bb` (taking ownership). */
static int stream_enqueue(struct rpc_call *c, grpc_byte_buffer *bb) {
    if (c->closed || c->cancelled || c->finishing) {
        grpc_byte_buffer_destroy(bb);
        return -1;
    }
    if (c->q_len == c->q_cap) {
        size_t cap = c->q_cap ? c->q_cap * 2 : 8;
        grpc_byte_buffer **nq = malloc(cap * sizeof *nq);
        if (!nq) {
            grpc_byte_buffer_destroy(bb);
            return -1;
        }
        for (size_t i = 0; i < c->q_len; i++) nq[i] = c->queue[(c->q_head + i) % c->q_cap];
        free(c->queue);
        c->queue = nq;
        c->q_head = 0;
        c->q_cap = cap;
    }
    c->queue[(c->q_head + c->q_len) % c->q_cap] = bb;
    c->q_len++;
    stream_pump(c);
    return 0;
}

int rpc_stream_send(struct rpc_call *c, const ProtobufCMessage *msg) {
    if (c->closed || c->cancelled || c->finishing) return -1;
    return stream_enqueue(c, pack_message(msg));
}

struct rpc_message *rpc_message_pack(const ProtobufCMessage *msg) {
    struct rpc_message *m = malloc(sizeof *m);
    if (m) m->bb = pack_message(msg);
    return m;
}

void rpc_message_free(struct rpc_message *m) {
    if (!m) return;
    grpc_byte_buffer_destroy(m->bb);
    free(m);
}

int rpc_stream_send_packed(struct rpc_call *c, const struct rpc_message *m) {
    if (c->closed || c->cancelled || c->finishing) return -1;
    /* a copy of a byte buffer shares its slices: a reference, not the bytes */
    return stream_enqueue(c, grpc_byte_buffer_copy(m->bb));
}

void rpc_stream_finish(struct rpc_call *c, grpc_status_code code, const char *details) {
    if (c->finishing) return;
    c->finishing = 1;
    c->answered = 1;
    c->fin_code = code;
    snprintf(c->fin_details, sizeof c->fin_details, "%s", details ? details : "");
    stream_pump(c);
}

void rpc_stream_on_close(struct rpc_call *c, void (*on_close)(struct rpc_call *c, void *arg),
                         void *arg) {
    c->on_close = on_close;
    c->on_close_arg = arg;
}

void rpc_stream_on_sent(struct rpc_call *c, void (*on_sent)(struct rpc_call *c, void *arg),
                        void *arg) {
    c->on_sent = on_sent;
    c->on_sent_arg = arg;
}

size_t rpc_stream_queued(const struct rpc_call *c) { return c->q_len; }
const char *rpc_call_method(const struct rpc_call *c) { return c->path; }
const char *rpc_call_peer(const struct rpc_call *c) { return c->peer; }
const char *rpc_call_identity(const struct rpc_call *c) {
    return c->identity[0] ? c->identity : NULL;
}
struct rpc_health *rpc_call_health(const struct rpc_call *c) { return c->srv->health; }

/* -- incoming calls -- */

/* The secret of the call's "authorization: Bearer <secret>" (the first such header); NULL when
 * there is none. */
static const char *bearer_of(const grpc_metadata_array *md, size_t *len) {
    for (size_t i = 0; i < md->count; i++) {
        if (grpc_slice_str_cmp(md->metadata[i].key, "authorization") != 0) continue;
        const char *v = (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
        size_t vlen = GRPC_SLICE_LENGTH(md->metadata[i].value);
        if (vlen < 7 || memcmp(v, "Bearer ", 7) != 0) return NULL;
        *len = vlen - 7;
        return v + 7;
    }
    return NULL;
}

/* Whether the call may reach method m's handler; the identity of its credential, if it has
 * one, goes to c->identity. NULL when it may; else why not (the client's answer). */
static const char *authorize(struct rpc_server *srv, const struct rpc_method *m,
                             const grpc_metadata_array *md, struct rpc_call *c) {
    if (m->auth == RPC_AUTH_HEALTH) return NULL; // rpc_server_start kept it to health paths
    if (m->auth < RPC_AUTH_CLIENT || m->auth > RPC_AUTH_IDENTITY) return "no such auth class";
    size_t len = 0;
    const char *bearer = bearer_of(md, &len);
    if (m->auth == RPC_AUTH_CLIENT) {
        if (!srv->client_token || !srv->client_token[0]) return NULL;
        return bearer && rpc_secret_equal(bearer, len, srv->client_token)
                   ? NULL : "missing or wrong client token";
    }
    int open = m->auth == RPC_AUTH_CLUSTER && (!srv->cluster_token || !srv->cluster_token[0]);
    if (m->auth == RPC_AUTH_CLUSTER && bearer && !open &&
        rpc_secret_equal(bearer, len, srv->cluster_token))
        return NULL;
    if (bearer && srv->identify && srv->identify(srv->ctx, bearer, len, c->identity)) {
        c->identity[RPC_IDENTITY_MAX - 1] = 0;
        return NULL;
    }
    c->identity[0] = 0;
    if (open) return NULL;
    return m->auth == RPC_AUTH_CLUSTER ? "missing or wrong cluster token"
                                       : "missing or unknown credential: this call needs the "
                                         "caller's own credential, not a token";
}

static struct rpc_call *call_new(struct rpc_server *srv, grpc_call *gc) {
    struct rpc_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->srv = srv;
    c->call = gc;
    char *peer = grpc_call_get_peer(gc);
    snprintf(c->peer, sizeof c->peer, "%s", peer ? peer : "?");
    gpr_free(peer);
    c->refs = 1; // the handler's (or the stream owner's) reference
    c->method_index = -1;
    c->arrived_ns = uv_hrtime();
    c->next = srv->calls;
    if (srv->calls) srv->calls->prev = c;
    srv->calls = c;
    return c;
}

static void handle_call(struct rpc_server *srv, struct request_slot *s) {
    const struct rpc_method *m = &srv->methods[s->method];
    struct rpc_call *c = call_new(srv, s->call);
    if (!c) {
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(s->call);
        return;
    }
    c->method = m;
    c->method_index = s->method;
    c->path = m->path;
    ProtobufCMessage *req = NULL;
    const ProtobufCFieldDescriptor *bad;
    const char *refused = authorize(srv, m, &s->md, c);
    if (refused) {
        LOG_WARN_LIMITED(refusal_limit(srv, m, REFUSE_AUTH), "rpc: rejected %s from %s: %s",
                         m->path, c->peer, refused);
        c->method = NULL; // answer as unary whatever the kind
        send_unary(c, NULL, GRPC_STATUS_UNAUTHENTICATED, refused);
    } else if (!s->payload) {
        c->method = NULL;
        send_unary(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, "no request message");
    } else if (!(req = unpack_message(s->payload, m->request_type))) {
        LOG_WARN_LIMITED(refusal_limit(srv, m, REFUSE_MALFORMED), "rpc: malformed %s from %s",
                         m->path, c->peer);
        c->method = NULL;
        char det[200];
        snprintf(det, sizeof det, "malformed request: not a valid %s", m->request_type->name);
        send_unary(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, det);
    } else if ((bad = non_utf8_field(req))) {
        LOG_WARN_LIMITED(refusal_limit(srv, m, REFUSE_MALFORMED),
                         "rpc: malformed %s from %s: %s is not UTF-8", m->path, c->peer, bad->name);
        c->method = NULL;
        char det[200];
        snprintf(det, sizeof det, "malformed request: string field %s is not valid UTF-8",
                 bad->name);
        send_unary(c, NULL, GRPC_STATUS_INVALID_ARGUMENT, det);
    } else if (m->kind == RPC_SERVER_STREAM) {
        c->close_tag.tag.fn = stream_closed;
        c->close_tag.call = c;
        grpc_op op;
        memset(&op, 0, sizeof op);
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &c->close_cancelled;
        if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK) {
            c->method = NULL;
            send_unary(c, NULL, GRPC_STATUS_INTERNAL, "cannot start the stream");
        } else {
            stream_pump(c); // initial metadata out now
            m->handler(c, req, srv->ctx);
            /* the close batch holds the reference from here; on_close drops it */
            protobuf_c_message_free_unpacked(req, NULL);
            return;
        }
    } else {
        m->handler(c, req, srv->ctx);
        if (!c->answered && !c->deferred) {
            LOG_ERROR("rpc: handler of %s returned without answering", m->path);
            send_unary(c, NULL, GRPC_STATUS_INTERNAL, "internal error: no answer");
        }
    }
    if (req) protobuf_c_message_free_unpacked(req, NULL);
    call_release(c); // the handler's reference; the answer batch holds its own
}

static void handle_unknown(struct rpc_server *srv, struct request_slot *s) {
    struct rpc_call *c = call_new(srv, s->call);
    if (!c) {
        grpc_call_unref(s->call);
        return;
    }
    size_t n = GRPC_SLICE_LENGTH(s->details.method);
    if (n >= sizeof c->unknown_path) n = sizeof c->unknown_path - 1;
    memcpy(c->unknown_path, GRPC_SLICE_START_PTR(s->details.method), n);
    c->unknown_path[n] = 0;
    c->path = c->unknown_path;
    LOG_WARN_LIMITED(refusal_limit(srv, NULL, REFUSE_MALFORMED), "rpc: unknown method %s from %s",
                     c->path, c->peer);
    char det[200];
    snprintf(det, sizeof det, "unknown method %s", c->path);
    send_unary(c, NULL, GRPC_STATUS_UNIMPLEMENTED, det);
    call_release(c);
}

static void slot_done(struct rpc_tag *tag, int ok) {
    struct request_slot *s = (struct request_slot *)tag;
    struct rpc_server *srv = s->srv;
    if (ok && s->call) {
        if (s->method >= 0)
            handle_call(srv, s);
        else
            handle_unknown(srv, s);
    }
    s->call = NULL;
    if (s->payload) grpc_byte_buffer_destroy(s->payload);
    s->payload = NULL;
    grpc_metadata_array_destroy(&s->md);
    if (s->method < 0) grpc_call_details_destroy(&s->details);
    /* Counted out only now: while this slot counts, a call released above cannot let a
     * shutting-down server be destroyed under us. */
    srv->slots_out--;
    if (ok && !srv->shutting_down) {
        slot_arm(s);
        return;
    }
    free(s);
    server_maybe_destroy(srv);
}

static void slot_arm(struct request_slot *s) {
    struct rpc_server *srv = s->srv;
    grpc_metadata_array_init(&s->md);
    grpc_call_error e;
    if (s->method >= 0) {
        e = grpc_server_request_registered_call(srv->server, srv->handles[s->method], &s->call,
                                                &s->deadline, &s->md, &s->payload, srv->pump->cq,
                                                srv->pump->cq, s);
    } else {
        grpc_call_details_init(&s->details);
        e = grpc_server_request_call(srv->server, &s->call, &s->details, &s->md, srv->pump->cq,
                                     srv->pump->cq, s);
    }
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("rpc: cannot request calls (error %d)", (int)e);
        grpc_metadata_array_destroy(&s->md);
        if (s->method < 0) grpc_call_details_destroy(&s->details);
        free(s);
        return;
    }
    srv->slots_out++;
}

static moe_status add_slot(struct rpc_server *srv, int method) {
    struct request_slot *s = calloc(1, sizeof *s);
    if (!s) return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    s->tag.fn = slot_done;
    s->srv = srv;
    s->method = method;
    slot_arm(s);
    return MOE_OK;
}

static grpc_server_credentials *server_credentials(const struct rpc_tls *tls, moe_status *st) {
    *st = MOE_OK;
    if (!tls || !tls->cert_file || !tls->cert_file[0]) return grpc_insecure_server_credentials_create();
    if (!tls->key_file || !tls->key_file[0]) {
        *st = moe_fail(MOE_EINVAL, "TLS: a certificate (%s) needs a key file too", tls->cert_file);
        return NULL;
    }
    char *cert = read_text_file(tls->cert_file);
    char *key = read_text_file(tls->key_file);
    if (!cert || !key) {
        *st = moe_fail(MOE_EIO, "cannot read TLS %s %s", cert ? "key" : "certificate",
                       cert ? tls->key_file : tls->cert_file);
        free(cert);
        free(key);
        return NULL;
    }
    grpc_ssl_pem_key_cert_pair pair = {key, cert};
    grpc_server_credentials *creds = grpc_ssl_server_credentials_create(NULL, &pair, 1, 0, NULL);
    free(cert);
    free(key);
    return creds;
}

/* Every row names its auth class, and only the health service goes without a credential. */
static moe_status check_auth_classes(const struct rpc_method *methods, int n_methods) {
    for (int i = 0; i < n_methods; i++) {
        enum rpc_auth a = methods[i].auth;
        if (a < RPC_AUTH_CLIENT || a > RPC_AUTH_HEALTH)
            return moe_fail(MOE_EINVAL, "rpc: %s names no auth class", methods[i].path);
        if (a == RPC_AUTH_HEALTH &&
            strncmp(methods[i].path, RPC_HEALTH_PREFIX, strlen(RPC_HEALTH_PREFIX)) != 0)
            return moe_fail(MOE_EINVAL, "rpc: %s may not go without a credential: only %s* "
                            "methods do", methods[i].path, RPC_HEALTH_PREFIX);
    }
    return MOE_OK;
}

moe_status rpc_server_start(struct rpc_server **out, struct rpc_pump *pump,
                            const struct rpc_server_config *cfg, const struct rpc_method *methods,
                            int n_methods, void *ctx, int *bound_port) {
    rpc_init();
    CHECK(check_auth_classes(methods, n_methods));
    struct rpc_server *srv = calloc(1, sizeof *srv);
    if (!srv) return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    srv->pump = pump;
    srv->methods = methods;
    srv->n_methods = n_methods;
    srv->ctx = ctx;
    srv->client_token = cfg->client_token ? strdup(cfg->client_token) : NULL;
    srv->cluster_token = cfg->cluster_token ? strdup(cfg->cluster_token) : NULL;
    srv->identify = cfg->identify;
    srv->on_done = cfg->on_done;
    srv->health = cfg->health;
    snprintf(srv->role, sizeof srv->role, "%s", cfg->role ? cfg->role : "server");
    srv->handles = calloc((size_t)n_methods, sizeof *srv->handles);
    srv->limits = calloc((size_t)(n_methods + 1) * REFUSE_KINDS, sizeof *srv->limits);
    if (!srv->handles || !srv->limits) {
        free(srv->handles);
        free(srv->limits);
        free(srv->client_token);
        free(srv->cluster_token);
        free(srv);
        return moe_fail(MOE_ENOMEM, "rpc: out of memory");
    }
    for (int i = 0; i < (n_methods + 1) * REFUSE_KINDS; i++)
        srv->limits[i] = (struct moe_log_limit)MOE_LOG_LIMIT_INIT("refused calls like this");

    /* Clients ping every 10 s (keepalive); allow it without calls in flight. */
    grpc_arg args[] = {
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, {.integer = RPC_MAX_MESSAGE}},
        {GRPC_ARG_INTEGER, GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, {.integer = RPC_MAX_MESSAGE}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, {.integer = 1}},
        {GRPC_ARG_INTEGER, GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, {.integer = 5000}},
        /* gRPC sets SO_REUSEPORT by default: two daemons could then share a port and split
         * its calls between them. A port in use must be an error. */
        {GRPC_ARG_INTEGER, GRPC_ARG_ALLOW_REUSEPORT, {.integer = 0}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIME_MS, {.integer = 10000}},
        {GRPC_ARG_INTEGER, GRPC_ARG_KEEPALIVE_TIMEOUT_MS, {.integer = 5000}},
    };
    grpc_channel_args sargs = {sizeof args / sizeof args[0], args};
    srv->server = grpc_server_create(&sargs, NULL);
    grpc_server_register_completion_queue(srv->server, pump->cq, NULL);
    for (int i = 0; i < n_methods; i++)
        srv->handles[i] = grpc_server_register_method(srv->server, methods[i].path, NULL,
                                                      GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    moe_status st;
    grpc_server_credentials *creds = server_credentials(cfg->tls, &st);
    if (!creds) goto fail;
    int port = grpc_server_add_http2_port(srv->server, cfg->listen, creds);
    for (int i = 0; port && i < cfg->n_more_listen; i++)
        if ((cfg->more_bound[i] = grpc_server_add_http2_port(srv->server, cfg->more_listen[i],
                                                             creds)) == 0)
            port = 0;
    grpc_server_credentials_release(creds);
    if (port == 0) {
        st = moe_fail(MOE_EIO, "%s: cannot listen on %s (in use, or not a host:port)", srv->role,
                      cfg->listen);
        goto fail;
    }
    grpc_server_start(srv->server);
    for (int i = 0; i < n_methods; i++)
        for (int k = 0; k < SLOTS_PER_METHOD; k++) CHECK(add_slot(srv, i));
    CHECK(add_slot(srv, -1));
    if (bound_port) *bound_port = port;
    *out = srv;
    return MOE_OK;
fail:
    /* grpc_server_destroy on a server never started needs no shutdown */
    grpc_server_destroy(srv->server);
    free(srv->handles);
    free(srv->limits);
    free(srv->client_token);
    free(srv->cluster_token);
    free(srv);
    return st;
}

static void server_shutdown_done(struct rpc_tag *tag, int ok) {
    struct rpc_server *srv = (struct rpc_server *)((char *)tag - offsetof(struct rpc_server, shutdown_tag));
    srv->shutdown_tag_done = 1;
    server_maybe_destroy(srv);
}

/* Destroys the server once shutdown completed, every request slot came back, and every call
 * is gone; then runs the owner's `done`. */
static void server_maybe_destroy(struct rpc_server *srv) {
    if (!srv->shutting_down || !srv->shutdown_tag_done || srv->slots_out > 0 || srv->calls) return;
    grpc_server_destroy(srv->server);
    void (*done)(void *) = srv->done;
    void *arg = srv->done_arg;
    for (int i = 0; i < (srv->n_methods + 1) * REFUSE_KINDS; i++) // counts not yet written
        moe_log_limit_end(&srv->limits[i], MOE_LOG_WARN, moe_clock_s());
    free(srv->handles);
    free(srv->limits);
    free(srv->client_token);
    free(srv->cluster_token);
    free(srv);
    if (done) done(arg);
}

void rpc_server_shutdown(struct rpc_server *s, void (*done)(void *arg), void *arg) {
    if (s->shutting_down) return;
    s->shutting_down = 1;
    s->done = done;
    s->done_arg = arg;
    s->shutdown_tag.fn = server_shutdown_done;
    grpc_server_shutdown_and_notify(s->server, s->pump->cq, &s->shutdown_tag);
    grpc_server_cancel_all_calls(s->server);
}
