/*
 * client.c — see client.h.
 */
#include "client.h"

#include "moectl.h"
#include "proto/moed.pb-c.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

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

/* The first line of a small file, surrounding whitespace dropped. -1 with errno set when it
 * cannot be read. */
static int read_line_file(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *got = fgets(out, (int)cap, f);
    fclose(f);
    if (!got) {
        errno = ENODATA;
        return -1;
    }
    size_t n = strlen(out);
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r' || out[n - 1] == ' ')) out[--n] = 0;
    size_t lead = strspn(out, " \t");
    memmove(out, out + lead, n - lead + 1);
    return 0;
}

int client_open_at(struct client *c, const char *target, const char *token, const char *ca_file) {
    memset(c, 0, sizeof *c);
    snprintf(c->target, sizeof c->target, "%s", target);
    struct rpc_tls tls = {.ca_file = ca_file};
    /* Not wait-for-ready: a coordinator that is down should be reported at once, not after
     * the call's deadline. */
    if (rpc_channel_open(&c->ch, target, &tls, token, 0) != MOE_OK)
        return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
    return EXIT_OK;
}

int client_open(struct client *c, const struct client_options *o) {
    memset(c, 0, sizeof *c);
    char dir[PATH_MAX], path[PATH_MAX + 32];
    int dir_ok = client_cluster_dir(o->cluster_dir, dir, sizeof dir) == MOE_OK;
    const char *env;

    /* the address */
    char target[256] = "", origin[PATH_MAX + 64];
    if (o->coordinator && o->coordinator[0]) {
        snprintf(target, sizeof target, "%s", o->coordinator);
        snprintf(origin, sizeof origin, "--coordinator");
    } else if ((env = getenv("MOED_COORDINATOR")) && env[0]) {
        snprintf(target, sizeof target, "%s", env);
        snprintf(origin, sizeof origin, "MOED_COORDINATOR");
    } else {
        if (!dir_ok) return moectl_fail(EXIT_UNREACHABLE, "no coordinator: %s", moe_errmsg());
        snprintf(path, sizeof path, "%s/coordinator.addr", dir);
        errno = 0;
        if (read_line_file(path, target, sizeof target) != 0 || !target[0])
            return moectl_fail(EXIT_UNREACHABLE,
                               "no coordinator: %s: %s (start a local cluster with `moectl "
                               "cluster up`, or give --coordinator HOST:PORT)",
                               path, errno ? strerror(errno) : "empty");
        snprintf(origin, sizeof origin, "%s", path);
    }

    /* the token */
    char token[TOKEN_MAX] = "";
    const char *token_file = NULL;
    if (o->token_file) {
        token_file = o->token_file;
    } else if ((env = getenv("MOED_TOKEN")) && env[0]) {
        snprintf(token, sizeof token, "%s", env);
    } else if ((env = getenv("MOED_TOKEN_FILE")) && env[0]) {
        token_file = env;
    } else if (dir_ok) {
        snprintf(path, sizeof path, "%s/client.token", dir);
        struct stat st;
        if (stat(path, &st) == 0) {
            if (rpc_read_token(path, token, sizeof token) != MOE_OK)
                return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
        }
    }
    if (token_file && rpc_read_token(token_file, token, sizeof token) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());

    /* the CA that signs the coordinator's certificate, if it speaks TLS */
    const char *ca = NULL;
    char ca_path[PATH_MAX + 32];
    if (o->ca) {
        ca = o->ca;
    } else if ((env = getenv("MOED_TLS_CA"))) {
        ca = env;
    } else if (dir_ok) {
        snprintf(ca_path, sizeof ca_path, "%s/tls/cert.pem", dir);
        struct stat st;
        if (stat(ca_path, &st) == 0) ca = ca_path;
    }
    if (ca && ca[0]) {
        FILE *f = fopen(ca, "r");
        if (!f) return moectl_fail(EXIT_BAD_INPUT, "TLS CA %s: %s", ca, strerror(errno));
        fclose(f);
    }

    int code = client_open_at(c, target, token, ca && ca[0] ? ca : NULL);
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
    return moectl_fail(code, "%s", moe_errmsg());
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
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE && !*(ProtobufCMessage *const *)(base + f->offset)) {
            continue; // absent
        } else {
            v = json_value(f, base + f->offset);
        }
        if (v) cJSON_AddItemToObject(obj, f->name, v);
    }
    return obj;
}

void client_print_json(const ProtobufCMessage *m) {
    cJSON *j = client_json(m);
    char *text = j ? cJSON_PrintUnformatted(j) : NULL;
    if (text) printf("%s\n", text);
    else fprintf(stderr, "moectl: out of memory printing JSON\n");
    fflush(stdout);
    cJSON_free(text);
    cJSON_Delete(j);
}

const char *client_enum_name(const ProtobufCEnumDescriptor *d, int value) {
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(d, value);
    if (!ev) return "?";
    /* JOB_RUNNING -> RUNNING, WORKER_IDLE -> IDLE */
    const char *u = strchr(ev->name, '_');
    if (value == 0 || !u) return ev->name;
    return u + 1;
}

/* ---- time ---- */


void client_age(char *out, size_t cap, long long ms) {
    if (ms < 0) ms = 0;
    long long s = ms / 1000;
    if (s < 60)
        snprintf(out, cap, "%.1fs", ms / 1000.0);
    else if (s < 3600)
        snprintf(out, cap, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, cap, "%lldh%02lldm", s / 3600, s / 60 % 60);
    else
        snprintf(out, cap, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

void client_clock(char *out, size_t cap, long long unix_ms) {
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    strftime(out, cap, "%H:%M:%S", &tm);
}

void client_duration(char *out, size_t cap, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, cap, "%ld:%02ld", s / 60, s % 60);
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
