/*
 * http.h — the coordinator's HTTP port (off unless --http-listen): Prometheus' /metrics, the
 * live page, and the small JSON API the page polls. docs/operations.md "Metrics" and "The live
 * page" say what is served; docs/security.md "The HTTP port" who may read it.
 *
 * Owns:
 *   http_service.c  the server: libmicrohttpd driven from the coordinator's libuv loop (no
 *                   thread of its own: MHD's epoll descriptor watched by a uv_poll, its timeouts
 *                   by a uv_timer, so every request is answered on the loop thread and reads the
 *                   tables like any handler); its limits (connections, per-connection timeout,
 *                   request size, GET and HEAD only); the client token (Authorization: Bearer);
 *                   TLS with the gRPC port's certificate; the routes; the page's files.
 *   http_api.c      the JSON the page reads (cJSON): pages of jobs, one job, its steps.
 *   metrics.c       /metrics (metrics.h).
 *   web/            the page (index.html, app.js, style.css), compiled into the binary at
 *                   build time (CMakeLists.txt: web_assets.c, generated, never committed).
 * Never: blocks the loop on a client (answers are built whole and sent as the socket allows),
 * decides or changes anything (GET only), or exits on a bad request.
 */
#ifndef MOE_COORD_HTTP_H
#define MOE_COORD_HTTP_H

#include "../state/state.h"

#include <stddef.h>

/* Binds cfg.http_listen and serves from co->loop; co->http_address gets the bound address.
 * MOE_EIO when it cannot bind or read the TLS files, MOE_EINVAL for a bad address. */
moe_status http_service_start(struct coordinator *co);
/* Stops serving (connections in flight are closed); frees everything once the loop has
 * closed its handles. */
void http_service_stop(struct coordinator *co);

/* ---- http_api.c: answers as JSON text (malloc'd) and an HTTP status ---- */

struct http_answer {
    int status;        // 200, 400, 404, 500
    char *body;        // malloc'd JSON (an {"error": ...} object when status != 200)
    size_t len;
};

/* GET /api/jobs?page_token=T&page_size=N&active_only=1: a page of jobs, newest last. */
void http_api_jobs(struct coordinator *co, const char *page_token, const char *page_size,
                   const char *active_only, struct http_answer *a);
/* GET /api/jobs/<id>: the job, its slots, its recent events, its latest step. */
void http_api_job(struct coordinator *co, const char *id, struct http_answer *a);
/* GET /api/jobs/<id>/steps?from=N&max=M: the stored steps from N on (the loss curve). */
void http_api_steps(struct coordinator *co, const char *id, const char *from, const char *max,
                    struct http_answer *a);
/* GET /api/cluster: the coordinator and its workers by state. */
void http_api_cluster(struct coordinator *co, struct http_answer *a);

/* ---- the page's files (generated web_assets.c) ---- */

struct web_asset {
    const char *path;         // "/", "/app.js"
    const char *content_type;
    const unsigned char *data;
    size_t len;
};
extern const struct web_asset web_assets[];
extern const int web_n_assets;

#endif
