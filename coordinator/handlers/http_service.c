/*
 * http_service.c — the HTTP port (see http.h): libmicrohttpd without a thread of its own.
 *
 * MHD runs in "external" epoll mode: its epoll descriptor is watched by a uv_poll and its
 * connection timeouts by a uv_timer, and both call MHD_run on the loop thread. So a request
 * is answered where the coordinator's state lives, like a gRPC handler, with no lock and no
 * snapshot; each answer is built whole (a page of jobs, /metrics of the active jobs and a few
 * ended ones) and MHD sends it as the socket takes it, never blocking the loop.
 * Who may read what (docs/security.md "The HTTP port"): the page's files carry no data and
 * are served to anyone who reaches the port; /api/... needs the client token as
 * "Authorization: Bearer"; /metrics too, unless --http-open.
 */
#include "http.h"

#include "../../common/clock.h"
#include "../../common/fileio.h"
#include "../../common/log.h"
#include "metrics.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Limits: a handful of browsers and scrapers, never a crowd (docs/security.md). */
#define HTTP_MAX_CONNECTIONS 64
#define HTTP_TIMEOUT_S 10           // an idle or slow connection is closed after this long
#define HTTP_CONNECTION_MEMORY 32768 // a request's line and headers must fit in this
#define HTTP_PEM_MAX (1 << 20)

struct http_service {
    struct coordinator *co;
    struct MHD_Daemon *mhd;
    uv_poll_t poll;  // MHD's epoll descriptor
    uv_timer_t timer; // MHD's next connection timeout
    int open_handles;
    char *cert, *key; // PEM text, held while MHD runs
    struct moe_log_limit refusals, mhd_errors;
};

/* ---- driving MHD from the loop ---- */

static void on_timer(uv_timer_t *t);

static void run_mhd(struct http_service *h) {
    /* MHD takes its listening socket off its epoll set while it is at the connection limit and
     * puts it back only at the start of a later MHD_run: after a run that closed connections,
     * nothing else would wake us for it (measured: 200 held connections wedged the port for
     * good). So a run that closed some is followed by another. */
    const union MHD_DaemonInfo *info;
    unsigned before = (info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS))
                          ? info->num_connections : 0;
    MHD_run(h->mhd);
    if ((info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS)) &&
        info->num_connections < before)
        MHD_run(h->mhd);
    MHD_UNSIGNED_LONG_LONG ms;
    if (MHD_get_timeout(h->mhd, &ms) == MHD_YES)
        uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
    else
        uv_timer_stop(&h->timer);
}

static void on_timer(uv_timer_t *t) { run_mhd(t->data); }

static void on_poll(uv_poll_t *p, int status, int events) { run_mhd(p->data); }

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    struct http_service *h = cls;
    char line[300];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n') line[--n] = 0;
    LOG_WARN_LIMITED(&h->mhd_errors, "http: %s", line);
}

/* ---- answers ---- */

static enum MHD_Result send_body(struct MHD_Connection *c, unsigned status, const char *type,
                                 void *body, size_t len, int must_free) {
    struct MHD_Response *r = MHD_create_response_from_buffer(
        len, body, must_free ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        if (must_free) free(body);
        return MHD_NO; // MHD closes the connection
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"moed\"");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    if (!strncmp(type, "text/html", 9)) {
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'");
        MHD_add_response_header(r, "X-Frame-Options", "DENY");
    }
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *text) {
    char *copy = strdup(text);
    if (!copy) return MHD_NO;
    return send_body(c, status, "text/plain; charset=utf-8", copy, strlen(copy), 1);
}

static enum MHD_Result send_answer(struct MHD_Connection *c, struct http_answer *a) {
    if (!a->body) return send_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return send_body(c, (unsigned)a->status, "application/json", a->body, a->len, 1);
}

/* ---- who may read ---- */

static void peer_text(struct MHD_Connection *c, char *out, size_t cap) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    snprintf(out, cap, "?");
    if (!ci || !ci->client_addr) return;
    socklen_t len = ci->client_addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                           : sizeof(struct sockaddr_in);
    char host[64], port[16];
    if (getnameinfo(ci->client_addr, len, host, sizeof host, port, sizeof port,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        snprintf(out, cap, "%s:%s", host, port);
}

/* The request carries the client token (or none is configured). A refusal is logged under a
 * rate limit and answered 401. */
static int authorized(struct http_service *h, struct MHD_Connection *c, const char *url) {
    const char *token = h->co->cfg.client_token;
    if (!token[0]) return 1;
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    if (v && !strncasecmp(v, "Bearer ", 7)) {
        v += 7;
        while (*v == ' ') v++;
        if (rpc_secret_equal(v, strlen(v), token)) return 1;
    }
    char peer[96];
    peer_text(c, peer, sizeof peer);
    LOG_WARN_LIMITED(&h->refusals, "http: refused GET %.100s from %s: %s", url, peer,
                     v ? "wrong token" : "no Authorization: Bearer token");
    return 0;
}

/* ---- routes ---- */

static const char *arg(struct MHD_Connection *c, const char *name) {
    return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static enum MHD_Result serve_asset(struct MHD_Connection *c, const char *url) {
    const char *path = !strcmp(url, "/index.html") ? "/" : url;
    for (int i = 0; i < web_n_assets; i++)
        if (!strcmp(web_assets[i].path, path))
            return send_body(c, MHD_HTTP_OK, web_assets[i].content_type,
                             (void *)web_assets[i].data, web_assets[i].len, 0);
    return send_text(c, MHD_HTTP_NOT_FOUND, "not found: try /, /metrics or /api/jobs\n");
}

static enum MHD_Result serve_metrics(struct http_service *h, struct MHD_Connection *c) {
    char *text;
    size_t len;
    if (metrics_render(h->co, moe_wall_ms(), &text, &len) != MOE_OK)
        return send_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return send_body(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len, 1);
}

/* /api/jobs/<id>[/steps] */
static enum MHD_Result serve_job(struct http_service *h, struct MHD_Connection *c,
                                 const char *rest) {
    char id[24];
    size_t n = strcspn(rest, "/");
    if (n == 0 || n >= sizeof id)
        return send_text(c, MHD_HTTP_NOT_FOUND, "not found: /api/jobs/<job id>\n");
    memcpy(id, rest, n);
    id[n] = 0;
    struct http_answer a = {0};
    if (!rest[n])
        http_api_job(h->co, id, &a);
    else if (!strcmp(rest + n, "/steps"))
        http_api_steps(h->co, id, arg(c, "from"), arg(c, "max"), &a);
    else
        return send_text(c, MHD_HTTP_NOT_FOUND, "not found: /api/jobs/<id> or .../steps\n");
    return send_answer(c, &a);
}

static enum MHD_Result route(struct http_service *h, struct MHD_Connection *c,
                             const char *url) {
    int is_api = !strncmp(url, "/api/", 5);
    if (!is_api && strcmp(url, "/metrics") != 0) return serve_asset(c, url);
    if ((is_api || !h->co->cfg.http_open) && !authorized(h, c, url))
        return send_text(c, MHD_HTTP_UNAUTHORIZED,
                         "unauthorized: send the client token as \"Authorization: Bearer "
                         "<token>\"\n");
    if (!is_api) return serve_metrics(h, c);
    struct http_answer a = {0};
    if (!strcmp(url, "/api/jobs"))
        http_api_jobs(h->co, arg(c, "page_token"), arg(c, "page_size"), arg(c, "active_only"),
                      &a);
    else if (!strcmp(url, "/api/cluster"))
        http_api_cluster(h->co, &a);
    else if (!strncmp(url, "/api/jobs/", 10))
        return serve_job(h, c, url + 10);
    else
        return send_text(c, MHD_HTTP_NOT_FOUND,
                         "not found: /api/jobs, /api/jobs/<id>, /api/jobs/<id>/steps, "
                         "/api/cluster\n");
    return send_answer(c, &a);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **state) {
    struct http_service *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served\n");
    if (*upload_size) { // a GET with a body: nothing of it is read
        *upload_size = 0;
        return MHD_YES;
    }
    if (*state) return MHD_YES; // answered on the first call already
    *state = h;
    return route(h, c, url);
}

/* ---- start and stop ---- */

/* "HOST:PORT" or "[V6]:PORT" as a socket address to bind. */
static moe_status listen_address(const char *listen, struct sockaddr_storage *sa) {
    char host[160], port[16];
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1] || strlen(colon + 1) >= sizeof port ||
        (size_t)(colon - listen) >= sizeof host)
        return moe_fail(MOE_EINVAL, "--http-listen %s: give HOST:PORT", listen);
    const char *h0 = listen, *h1 = colon;
    if (*h0 == '[' && h1 > h0 && h1[-1] == ']') h0++, h1--;
    snprintf(host, sizeof host, "%.*s", (int)(h1 - h0), h0);
    snprintf(port, sizeof port, "%s", colon + 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (*end || port[0] < '0' || port[0] > '9' || p > 65535)
        return moe_fail(MOE_EINVAL, "--http-listen %s: the port must be 0 to 65535", listen);
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0 || !res)
        return moe_fail(MOE_EINVAL, "--http-listen %s: %s", listen, gai_strerror(rc));
    memset(sa, 0, sizeof *sa);
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return MOE_OK;
}

static char *read_pem(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(HTTP_PEM_MAX + 1);
    size_t n = buf ? fread(buf, 1, HTTP_PEM_MAX, f) : 0;
    int bad = ferror(f) || n == 0 || n == HTTP_PEM_MAX;
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    return buf;
}

/* The gRPC port's certificate and key, in memory for GnuTLS. */
static moe_status load_tls(struct http_service *h) {
    const struct coordinator_config *cfg = &h->co->cfg;
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
        return moe_fail(MOE_EINVAL, "--http-listen with --tls-cert: this libmicrohttpd was "
                        "built without TLS, and the HTTP port would not be encrypted");
    if (!(h->cert = read_pem(cfg->tls_cert)))
        return moe_fail(MOE_EIO, "--tls-cert %s: cannot read it (for the HTTP port)",
                        cfg->tls_cert);
    if (!(h->key = read_pem(cfg->tls_key)))
        return moe_fail(MOE_EIO, "--tls-key %s: cannot read it (for the HTTP port)",
                        cfg->tls_key);
    return MOE_OK;
}

static void handle_closed(uv_handle_t *hd) {
    struct http_service *h = hd->data;
    if (--h->open_handles > 0) return;
    free(h->cert);
    free(h->key);
    free(h);
}

static void free_unstarted(struct http_service *h) {
    free(h->cert);
    free(h->key);
    free(h);
}

static struct MHD_Daemon *start_mhd(struct http_service *h, const struct sockaddr_storage *sa) {
    unsigned flags = MHD_USE_EPOLL;
    if (sa->ss_family == AF_INET6) flags |= MHD_USE_IPv6;
    if (h->cert) flags |= MHD_USE_TLS;
    struct MHD_OptionItem tls[] = {
        {MHD_OPTION_HTTPS_MEM_KEY, 0, h->key},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, h->cert},
        {MHD_OPTION_END, 0, NULL},
    };
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_MAX_CONNECTIONS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_CONNECTION_MEMORY,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h, MHD_OPTION_ARRAY,
        h->cert ? tls : tls + 2, MHD_OPTION_END);
}

/* "host:port" of what MHD bound: a wildcard host is reached at the host the coordinator
 * advertises (its --advertise, or its hostname; docs/operations.md, "Addresses"). */
static void bound_address(struct http_service *h, const char *listen) {
    struct coordinator *co = h->co;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    char host[140];
    snprintf(host, sizeof host, "%.139s", listen);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    if (!strcmp(host, "0.0.0.0") || !strcmp(host, "[::]") || !host[0]) {
        const char *at = strrchr(co->address, ':'); // co->address is set before we start
        snprintf(host, sizeof host, "%.*s", at ? (int)(at - co->address) : 0, co->address);
    }
    snprintf(co->http_address, sizeof co->http_address, "%s:%u", host,
             di ? (unsigned)di->port : 0u);
}

moe_status http_service_start(struct coordinator *co) {
    const struct coordinator_config *cfg = &co->cfg;
    struct sockaddr_storage sa;
    CHECK(listen_address(cfg->http_listen, &sa));
    struct http_service *h = calloc(1, sizeof *h);
    if (!h) return moe_fail(MOE_ENOMEM, "out of memory");
    h->co = co;
    h->refusals = (struct moe_log_limit)MOE_LOG_LIMIT_INIT("refused HTTP requests like this");
    h->mhd_errors = (struct moe_log_limit)MOE_LOG_LIMIT_INIT("HTTP errors like this");
    moe_status st;
    if (cfg->tls_cert[0] && (st = load_tls(h)) != MOE_OK) {
        free_unstarted(h);
        return st;
    }
    if (!(h->mhd = start_mhd(h, &sa))) {
        free_unstarted(h);
        return moe_fail(MOE_EIO, "--http-listen %s: cannot serve HTTP there (in use, or not "
                        "an address of this host)", cfg->http_listen);
    }
    const union MHD_DaemonInfo *ep = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    bound_address(h, cfg->http_listen);
    uv_timer_init(co->loop, &h->timer);
    uv_poll_init(co->loop, &h->poll, ep->epoll_fd);
    h->timer.data = h->poll.data = h;
    h->open_handles = 2;
    uv_poll_start(&h->poll, UV_READABLE, on_poll);
    co->http = h;
    if (cfg->http_addr_file[0]) {
        char line[200];
        int n = snprintf(line, sizeof line, "%s\n", co->http_address);
        CHECK(moe_write_file_atomic(cfg->http_addr_file, line, (size_t)n, 0644));
    }
    LOG_INFO("HTTP on %s://%s: /metrics (%s), the live page and its API (client token)",
             h->cert ? "https" : "http", co->http_address,
             cfg->http_open || !cfg->client_token[0] ? "open" : "client token");
    return MOE_OK;
}

void http_service_stop(struct coordinator *co) {
    struct http_service *h = co->http;
    if (!h) return;
    co->http = NULL;
    uv_close((uv_handle_t *)&h->poll, handle_closed); // off the loop's epoll before MHD closes it
    uv_close((uv_handle_t *)&h->timer, handle_closed);
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
}
