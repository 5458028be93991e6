/*
 * client.c — see client.h.
 */
#include "client.h"

#include "cluster_dir.h"
#include "moectl.h"
#include "proto/moed.pb-c.h"
#include "../proto/diagnose.h"
#include "../proto/methods.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CALL_TIMEOUT_S 30.0
#define TOKEN_MAX 256

int client_option(struct client_options *o, int opt, const char *arg) {
    switch (opt) {
    case OPT_COORDINATOR: o->coordinator = arg; return 1;
    case OPT_TOKEN_FILE: o->token_file = arg; return 1;
    case OPT_CA: o->ca = arg; return 1;
    case OPT_CLUSTER_DIR: o->cluster_dir = arg; return 1;
    default: return 0;
    }
}

int client_take_option(void *ctx, int opt, const char *arg) {
    struct client_args *a = ctx;
    if (client_option(&a->conn, opt, arg)) return 0;
    if (opt != 'j') return -1;
    a->json = 1;
    return 0;
}

moe_status client_cluster_dir(const char *flag, char *out, size_t cap) {
    const char *env = getenv("MOED_CLUSTER_DIR");
    const char *home = getenv("HOME");
    int n;
    if (flag && flag[0])
        n = snprintf(out, cap, "%s", flag);
    else if (env && env[0])
        n = snprintf(out, cap, "%s", env);
    else if (home && home[0])
        n = snprintf(out, cap, "%s/.moed/cluster", home);
    else
        return moe_fail(MOE_EINVAL, "no cluster directory: give --cluster-dir DIR, or set "
                                    "MOED_CLUSTER_DIR or HOME");
    if (n < 0 || (size_t)n >= cap) return moe_fail(MOE_EINVAL, "cluster directory path too long");
    while (n > 1 && out[n - 1] == '/') out[--n] = 0;
    return MOE_OK;
}

int client_open_at(struct client *c, const char *target, const char *token, const char *ca_file) {
    memset(c, 0, sizeof *c);
    snprintf(c->target, sizeof c->target, "%s", target);
    snprintf(c->ca, sizeof c->ca, "%.4000s", ca_file ? ca_file : "");
    struct rpc_tls tls = {.ca_file = ca_file};
    /* Not wait-for-ready: a coordinator that is down should be reported at once, not after
     * the call's deadline. */
    if (rpc_channel_open(&c->ch, target, &tls, token, 0) != MOE_OK)
        return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
    return EXIT_OK;
}

/* The address: --coordinator, $MOED_COORDINATOR, else DIR/coordinator.addr (dir NULL: none
 * could be named). An exit code; `origin` says where the address came from. */
static int resolve_address(const struct client_options *o, const char *dir, char *target,
                           size_t cap, char *origin, size_t origin_cap) {
    const char *env;
    if (o->coordinator && o->coordinator[0]) {
        snprintf(target, cap, "%s", o->coordinator);
        snprintf(origin, origin_cap, "--coordinator");
    } else if ((env = getenv("MOED_COORDINATOR")) && env[0]) {
        snprintf(target, cap, "%s", env);
        snprintf(origin, origin_cap, "MOED_COORDINATOR");
    } else {
        if (!dir) return moectl_fail(EXIT_UNREACHABLE, "no coordinator: %s", moe_errmsg());
        char path[PATH_CAP];
        in_dir(path, dir, "coordinator.addr");
        errno = 0;
        if (read_first_line(path, target, cap) != 0 || !target[0])
            return moectl_fail(EXIT_UNREACHABLE,
                               "no coordinator: %s: %s (start a local cluster with `moectl "
                               "cluster up`, or give --coordinator HOST:PORT)",
                               path, errno ? strerror(errno) : "empty");
        snprintf(origin, origin_cap, "%s", path);
    }
    return EXIT_OK;
}

/* The token: --token-file, $MOED_TOKEN, $MOED_TOKEN_FILE, else DIR/client.token when it
 * exists ("" when none). An exit code. */
static int resolve_token(const struct client_options *o, const char *dir, char *token,
                         size_t cap) {
    const char *env, *token_file = NULL;
    token[0] = 0;
    if (o->token_file) {
        token_file = o->token_file;
    } else if ((env = getenv("MOED_TOKEN")) && env[0]) {
        snprintf(token, cap, "%s", env);
    } else if ((env = getenv("MOED_TOKEN_FILE")) && env[0]) {
        token_file = env;
    } else if (dir) {
        char path[PATH_CAP];
        struct stat st;
        if (stat(in_dir(path, dir, "client.token"), &st) == 0 &&
            rpc_read_token(path, token, cap) != MOE_OK)
            return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
    }
    if (token_file && rpc_read_token(token_file, token, cap) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    return EXIT_OK;
}

/* The CA that signs the coordinator's certificate, if it speaks TLS: --ca, $MOED_TLS_CA, else
 * DIR/tls/cert.pem when it exists. *ca NULL for plaintext; an exit code. */
static int resolve_ca(const struct client_options *o, const char *dir, char *buf,
                      const char **ca) {
    const char *env;
    *ca = NULL;
    if (o->ca) {
        *ca = o->ca;
    } else if ((env = getenv("MOED_TLS_CA"))) {
        *ca = env;
    } else if (dir) {
        struct stat st;
        if (stat(in_dir(buf, dir, "tls/cert.pem"), &st) == 0) *ca = buf;
    }
    if (*ca && !(*ca)[0]) *ca = NULL;
    if (*ca) {
        FILE *f = fopen(*ca, "r");
        if (!f) return moectl_fail(EXIT_BAD_INPUT, "TLS CA %s: %s", *ca, strerror(errno));
        fclose(f);
    }
    return EXIT_OK;
}

int client_open(struct client *c, const struct client_options *o) {
    memset(c, 0, sizeof *c);
    char dir_buf[PATH_MAX], target[256] = "", origin[PATH_CAP], token[TOKEN_MAX], ca_buf[PATH_CAP];
    const char *dir = client_cluster_dir(o->cluster_dir, dir_buf, sizeof dir_buf) == MOE_OK
                          ? dir_buf : NULL;
    const char *ca;
    int code;
    if ((code = resolve_address(o, dir, target, sizeof target, origin, sizeof origin)) ||
        (code = resolve_token(o, dir, token, sizeof token)) ||
        (code = resolve_ca(o, dir, ca_buf, &ca)))
        return code;
    code = client_open_at(c, target, token, ca);
    snprintf(c->origin, sizeof c->origin, "%s", origin);
    return code;
}

void client_close(struct client *c) {
    rpc_channel_close(c->ch);
    c->ch = NULL;
}

int client_exit_code(grpc_status_code code) {
    switch (code) {
    case GRPC_STATUS_OK: return EXIT_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
    case GRPC_STATUS_NOT_FOUND:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_ALREADY_EXISTS: return EXIT_BAD_INPUT;
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_UNAUTHENTICATED:
    case GRPC_STATUS_PERMISSION_DENIED: return EXIT_UNREACHABLE;
    default: return EXIT_RUN_FAILED;
    }
}

#define DIAGNOSE_TIMEOUT_S 5.0

int client_fail(const struct client *c, int code, const struct rpc_result *res) {
    char saved[1024], why[768];
    snprintf(saved, sizeof saved, "%s", moe_errmsg());
    struct rpc_tls tls = {.ca_file = c->ca};
    if ((res->code != GRPC_STATUS_UNAVAILABLE && res->code != GRPC_STATUS_DEADLINE_EXCEEDED) ||
        rpc_diagnose(c->target, &tls, DIAGNOSE_TIMEOUT_S, why, sizeof why) == RPC_DIAG_FINE)
        return moectl_fail(code, "%s", saved);
    /* "ListJobs on H:P: UNAVAILABLE: " as the call said it, then the cause */
    const char *name = strstr(saved, rpc_code_name(res->code));
    int prefix = name ? (int)(name - saved + strlen(rpc_code_name(res->code))) : 0;
    return moectl_fail(code, "%.*s%s%s", prefix, saved, prefix ? ": " : "", why);
}

int client_call(struct client *c, const char *method, const ProtobufCMessage *request,
                const ProtobufCMessageDescriptor *response_type, ProtobufCMessage **response,
                struct rpc_result *res) {
    struct rpc_result local;
    if (!res) res = &local;
    if (rpc_call_sync(c->ch, method, request, response_type, response, CALL_TIMEOUT_S, res) ==
        MOE_OK)
        return EXIT_OK;
    int code = client_exit_code(res->code);
    if (res->code == GRPC_STATUS_OK) code = EXIT_RUN_FAILED; // a reply we could not read
    return client_fail(c, code, res);
}

/* ---- pages ---- */

/* A singular string field of m by name (the page tokens), or NULL. */
static char **string_field(ProtobufCMessage *m, const char *name) {
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (!f || f->type != PROTOBUF_C_TYPE_STRING || f->label == PROTOBUF_C_LABEL_REPEATED)
        return NULL;
    return (char **)((char *)m + f->offset);
}

/* The repeated message field at `path` ("slots", "job.bindings": through singular message
 * fields) of m, as the message holding it and its descriptor; NULL when there is none. */
static ProtobufCMessage *items_field(ProtobufCMessage *m, const char *path, size_t len,
                                     const ProtobufCFieldDescriptor **f) {
    const char *dot = memchr(path, '.', len);
    char name[64];
    size_t n = dot ? (size_t)(dot - path) : len;
    if (!m || n >= sizeof name) return NULL;
    memcpy(name, path, n);
    name[n] = 0;
    *f = protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
    if (!*f) return NULL;
    if (!dot) return (*f)->label == PROTOBUF_C_LABEL_REPEATED &&
                     (*f)->type == PROTOBUF_C_TYPE_MESSAGE ? m : NULL;
    if ((*f)->label == PROTOBUF_C_LABEL_REPEATED || (*f)->type != PROTOBUF_C_TYPE_MESSAGE)
        return NULL;
    return items_field(*(ProtobufCMessage **)((char *)m + (*f)->offset), dot + 1,
                       len - n - 1, f);
}

/* Moves the elements of the repeated field at `path` of `page` onto the end of `into`'s
 * (replies of one type, unpacked with the default allocator); `page` keeps none. 0, or -1
 * out of memory. A field that either lacks (an absent submessage) moves nothing. */
static int move_items(ProtobufCMessage *into, ProtobufCMessage *page, const char *path,
                      size_t len) {
    const ProtobufCFieldDescriptor *f;
    if (!(into = items_field(into, path, len, &f)) || !(page = items_field(page, path, len, &f)))
        return 0;
    size_t *n_into = (size_t *)((char *)into + f->quantifier_offset);
    size_t *n_page = (size_t *)((char *)page + f->quantifier_offset);
    void ***a_into = (void ***)((char *)into + f->offset);
    void ***a_page = (void ***)((char *)page + f->offset);
    if (!*n_page) return 0;
    void **grown = realloc(*a_into, (*n_into + *n_page) * sizeof *grown);
    if (!grown) return -1;
    memcpy(grown + *n_into, *a_page, *n_page * sizeof *grown);
    *a_into = grown;
    *n_into += *n_page;
    *n_page = 0; // its array is freed with it, the elements are into's now
    return 0;
}

/* move_items of each space-separated path of `items` */
static int move_all_items(ProtobufCMessage *into, ProtobufCMessage *page, const char *items) {
    for (const char *p = items; *p;) {
        size_t len = strcspn(p, " ");
        if (len && move_items(into, page, p, len) != 0) return -1;
        p += len + (p[len] == ' ');
    }
    return 0;
}

static size_t items_in(ProtobufCMessage *m, const char *items) {
    const ProtobufCFieldDescriptor *f;
    m = items_field(m, items, strcspn(items, " "), &f);
    return m ? *(const size_t *)((const char *)m + f->quantifier_offset) : 0;
}

int client_call_pages(struct client *c, const char *method, ProtobufCMessage *request,
                      const ProtobufCMessageDescriptor *response_type, const char *items,
                      size_t limit, int quiet, ProtobufCMessage **response,
                      struct rpc_result *res, double timeout_s) {
    struct rpc_result local;
    if (!res) res = &local;
    if (timeout_s <= 0) timeout_s = CALL_TIMEOUT_S;
    *response = NULL;
    char **ask = string_field(request, "page_token"), token[64] = "", first[64];
    snprintf(first, sizeof first, "%.*s", (int)strcspn(items, " ."), items);
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(response_type, first);
    if (!ask || !f || f->label != PROTOBUF_C_LABEL_REPEATED)
        return moectl_fail(EXIT_RUN_FAILED, "%s is not a paged method", method);
    for (;;) {
        ProtobufCMessage *page = NULL;
        *ask = token;
        int code = EXIT_OK;
        if (rpc_call_sync(c->ch, method, request, response_type, &page, timeout_s, res) !=
            MOE_OK) {
            code = res->code == GRPC_STATUS_OK ? EXIT_RUN_FAILED : client_exit_code(res->code);
            if (!quiet) client_fail(c, code, res);
        } else if (*response && move_all_items(*response, page, items) != 0) {
            code = quiet ? EXIT_RUN_FAILED : moectl_fail(EXIT_RUN_FAILED, "out of memory");
        }
        char **next = page ? string_field(page, "next_page_token") : NULL;
        snprintf(token, sizeof token, "%s", next && *next ? *next : "");
        if (!*response) *response = page; // the first page holds the summary and the rest
        else if (page) protobuf_c_message_free_unpacked(page, NULL);
        if (code) {
            if (*response) protobuf_c_message_free_unpacked(*response, NULL);
            *response = NULL;
            *ask = (char *)protobuf_c_empty_string;
            return code;
        }
        if (!token[0] || (limit && items_in(*response, items) >= limit)) break;
    }
    char **last = string_field(*response, "next_page_token"); // "" unless stopped at `limit`
    if (last && *last != protobuf_c_empty_string) {
        free(*last);
        *last = token[0] ? strdup(token) : NULL;
        if (!*last) *last = (char *)protobuf_c_empty_string;
    }
    *ask = (char *)protobuf_c_empty_string; // the request must not point at a local
    return EXIT_OK;
}

/* ---- JSON ---- */

static size_t element_size(ProtobufCType t) {
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: return 4;
    case PROTOBUF_C_TYPE_FLOAT: return sizeof(float);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return 8;
    case PROTOBUF_C_TYPE_DOUBLE: return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL: return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_ENUM: return sizeof(int);
    case PROTOBUF_C_TYPE_STRING: return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES: return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE: return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static cJSON *json_value(const ProtobufCFieldDescriptor *f, const void *p) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32: return cJSON_CreateNumber(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32: return cJSON_CreateNumber(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64: return cJSON_CreateNumber((double)*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: return cJSON_CreateNumber((double)*(const uint64_t *)p);
    case PROTOBUF_C_TYPE_FLOAT: {
        /* as the float it is (0.27, not 0.27000001072883606) */
        char text[32];
        snprintf(text, sizeof text, "%.7g", *(const float *)p);
        return cJSON_CreateNumber(strtod(text, NULL));
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        /* the shortest text that reads back as the same double: cJSON's own printing stops
         * at 15 digits when they come within an epsilon, and a loss compared across runs must
         * be exact */
        double d = *(const double *)p;
        if (!isfinite(d)) return cJSON_CreateNull();
        char text[40];
        for (int digits = 15; digits <= 17; digits++) {
            snprintf(text, sizeof text, "%.*g", digits, d);
            if (strtod(text, NULL) == d) break;
        }
        return cJSON_CreateRaw(text);
    }
    case PROTOBUF_C_TYPE_BOOL: return cJSON_CreateBool(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev ? cJSON_CreateString(ev->name) : cJSON_CreateNumber(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        return cJSON_CreateString(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        char *hex = malloc(2 * b->len + 1);
        if (!hex) return NULL;
        for (size_t i = 0; i < b->len; i++) snprintf(hex + 2 * i, 3, "%02x", b->data[i]);
        hex[2 * b->len] = 0;
        cJSON *j = cJSON_CreateString(hex);
        free(hex);
        return j;
    }
    case PROTOBUF_C_TYPE_MESSAGE: return client_json(*(ProtobufCMessage *const *)p);
    }
    return NULL;
}

cJSON *client_json(const ProtobufCMessage *m) {
    cJSON *obj = cJSON_CreateObject();
    if (!obj || !m) return obj;
    const ProtobufCMessageDescriptor *d = m->descriptor;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const char *base = (const char *)m;
        cJSON *v;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)(base + f->quantifier_offset);
            const char *arr = *(char *const *)(base + f->offset);
            v = cJSON_CreateArray();
            for (size_t k = 0; v && k < n; k++)
                cJSON_AddItemToArray(v, json_value(f, arr + k * element_size(f->type)));
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE &&
                   !*(ProtobufCMessage *const *)(base + f->offset)) {
            continue; // absent
        } else {
            v = json_value(f, base + f->offset);
        }
        if (v) cJSON_AddItemToObject(obj, f->name, v);
    }
    return obj;
}

void client_print_json(const ProtobufCMessage *m) {
    if (moectl_print_json(client_json(m)) != 0)
        fprintf(stderr, "moectl: out of memory printing JSON\n");
}

const char *client_enum_name(const ProtobufCEnumDescriptor *d, int value) {
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, value);
    if (!ev) return "?";
    /* JOB_RUNNING -> RUNNING, WORKER_IDLE -> IDLE */
    const char *u = strchr(ev->name, '_');
    if (value == 0 || !u) return ev->name;
    return u + 1;
}

/* ---- jobs and workers ---- */

const char *client_job_state(int state) {
    return client_enum_name(&moed__v1__job_state__descriptor, state);
}

int client_job_final(int state) {
    return state == MOED__V1__JOB_STATE__JOB_SUCCEEDED ||
           state == MOED__V1__JOB_STATE__JOB_FAILED ||
           state == MOED__V1__JOB_STATE__JOB_CANCELLED;
}

int client_need_job_id(const char *id) {
    if (id[0]) return EXIT_OK;
    return moectl_fail(EXIT_BAD_INPUT, "the job id is empty (moectl jobs lists them)");
}

Moed__V1__ClusterStatus *client_get_cluster(struct client *c, double timeout_s,
                                            struct rpc_result *res) {
    Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    if (client_call_pages(c, RPC_STATUS_GET_CLUSTER, &req.base,
                          &moed__v1__cluster_status__descriptor, "workers", 0, 1, &reply, res,
                          timeout_s) != EXIT_OK)
        return NULL;
    return (Moed__V1__ClusterStatus *)reply;
}

static uint64_t event_hash(const Moed__V1__Event *e) {
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)e->unix_ms;
    for (const char *s = e->kind; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *s = e->message; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

int event_set_add(struct event_set *set, const Moed__V1__Event *e) {
    uint64_t h = event_hash(e);
    for (size_t i = 0; i < set->n; i++)
        if (set->seen[i] == h) return 0;
    if (set->n == set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 64;
        uint64_t *ns = realloc(set->seen, cap * sizeof *ns);
        if (!ns) return 1;
        set->seen = ns;
        set->cap = cap;
    }
    set->seen[set->n++] = h;
    return 1;
}

void event_set_free(struct event_set *set) {
    free(set->seen);
    memset(set, 0, sizeof *set);
}
