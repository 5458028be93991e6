/*
 * export.c — ExportState: a job that ended FAILED or CANCELLED leaves its state on disk
 * (docs/recovery.md, "Export and resume"). The coordinator fenced the slot first, so its state
 * is frozen; the coordinator asks for one slot index at one step, and this worker writes its
 * own copy (live or previous version) to one file (worker/trainer/slot_state.h).
 * The write runs on libuv's thread pool (a state of many GB takes seconds: the loop keeps
 * heartbeating), under the job's ep_mu, which the training thread takes before it closes its
 * trainer: the state cannot go away while it is written, and the job is not freed until every
 * export of it has answered (struct job.exporting).
 * Never: chooses the step or the slot index (the coordinator does), or writes anywhere but
 * beneath this worker's export directory (run.export_dir may name a directory inside it): the
 * path is opened component by component beneath it (openat2 RESOLVE_BENEATH, no symlinks),
 * not judged by its text. The load of a resumed slot (job.c) reads the path the coordinator
 * recorded: the file is checked whole (CRC-32C, format, shapes) before a byte is used.
 */
#include "worker.h"

#include "../../common/fileio.h"
#include "../../common/log.h"
#include "../trainer/slot_state.h"
#include "proto/moed.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct export_work {
    uv_work_t req;
    struct worker *w;
    struct job *j;
    struct rpc_call *call;
    long step;
    char root[PATH_MAX + 16]; // this worker's export directory
    char rel[PATH_MAX + 16];  // run.export_dir beneath it ("": the root itself)
    char dir[PATH_MAX + 16];  // root/rel: how files and errors are named
    moe_status status;
    char error[512];
    struct slot_state_file file;
};

/* The directory the request names (run.export_dir), which must lie beneath this worker's
 * export directory (--export-dir, else <scratch>/exports: a job writes nowhere else), or that
 * directory itself: split into x->root and x->rel here by its text, then opened component by
 * component beneath the root by export_open (no symlink, no ".."). 0, or -1 after failing the
 * call. */
static int export_dir(struct rpc_call *call, const struct worker *w, const char *asked,
                      struct export_work *x) {
    if (w->cfg.export_dir[0])
        snprintf(x->root, sizeof x->root, "%s", w->cfg.export_dir);
    else
        snprintf(x->root, sizeof x->root, "%s/exports", w->scratch);
    size_t n = strlen(x->root);
    while (n > 1 && x->root[n - 1] == '/') x->root[--n] = 0;
    int inside = !asked[0] || (!strncmp(asked, x->root, n) && (asked[n] == '/' || !asked[n]));
    if (!inside) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "run.export_dir %s is not beneath this "
                 "worker's export directory %s (--export-dir) on host %s", asked, x->root,
                 w->host);
        return -1;
    }
    snprintf(x->rel, sizeof x->rel, "%s", asked[0] ? asked + n : "");
    snprintf(x->dir, sizeof x->dir, "%s", asked[0] ? asked : x->root);
    return 0;
}

/* The export directory open (O_RDONLY), made where missing: the root by its path (the
 * worker's own flag), what the job names beneath it without leaving it (common/fileio.h). */
static moe_status export_open(const struct export_work *x, int *dirfd) {
    CHECK(moe_mkdir_p(x->root, 0700));
    int root = open(x->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return moe_fail(MOE_EIO, "cannot open export directory %s: %s", x->root, strerror(errno));
    moe_status s = moe_dir_open_beneath(root, x->rel, 1, 0700, x->dir, dirfd);
    close(root);
    return s;
}

static void export_run(uv_work_t *req) {
    struct export_work *x = req->data;
    struct job *j = x->j;
    uv_mutex_lock(&j->ep_mu);
    if (!j->trainer)
        x->status = moe_fail(MOE_ENOTFOUND, "slot (%d, %d) of %s holds no state any more",
                             j->pod, j->slot, j->id);
    else {
        int dirfd = -1;
        x->status = export_open(x, &dirfd);
        if (x->status == MOE_OK)
            x->status = slot_state_export(j->trainer, j->id, x->step, dirfd, x->dir, &x->file);
        if (dirfd >= 0) close(dirfd);
    }
    uv_mutex_unlock(&j->ep_mu);
    if (x->status != MOE_OK) snprintf(x->error, sizeof x->error, "%s", moe_errmsg());
}

static void export_done(uv_work_t *req, int status) {
    struct export_work *x = req->data;
    struct worker *w = x->w;
    x->j->exporting--;
    if (status != 0) {
        rpc_fail(x->call, GRPC_STATUS_INTERNAL, "the export was cancelled");
    } else if (x->status != MOE_OK) {
        LOG_WARN("%s: export of slot index %d at step %ld: %s", x->j->id, x->j->slot, x->step,
                 x->error);
        int refused = x->status == MOE_ENOTFOUND || x->status == MOE_EINVAL;
        rpc_fail(x->call, refused ? GRPC_STATUS_FAILED_PRECONDITION : GRPC_STATUS_INTERNAL,
                 "%s (on host %s)", x->error, w->host);
    } else {
        LOG_INFO("%s: exported slot index %d at step %ld: %s (%lld bytes, CRC-32C %08x)",
                 x->j->id, x->j->slot, x->step, x->file.path, (long long)x->file.bytes,
                 x->file.crc32c);
        Moed__V1__ExportStateResponse resp = MOED__V1__EXPORT_STATE_RESPONSE__INIT;
        resp.path = x->file.path;
        resp.bytes = x->file.bytes;
        resp.crc32c = x->file.crc32c;
        resp.host = w->host;
        rpc_reply(x->call, &resp.base);
    }
    free(x);
    uv_async_send(&w->job_done); // its thread may have finished while we wrote: reap it
}

/* The slot of job `id` this worker plays whose slot index is `slot` (its thread may be holding
 * or have ended its epoch, but still has its trainer). */
static struct job *slot_of(struct worker *w, const char *id, int slot) {
    for (int k = 0; k < WORKER_MAX_SLOTS; k++) {
        struct job *j = w->jobs[k];
        if (j && strcmp(j->id, id) == 0 && j->slot == slot) return j;
    }
    return NULL;
}

void worker_export_state(struct rpc_call *call, const ProtobufCMessage *msg, void *ctx) {
    struct worker *w = ctx;
    const Moed__V1__ExportStateRequest *req = (const Moed__V1__ExportStateRequest *)msg;
    if (!worker_called_by(call, "coordinator")) return;
    struct job *j = slot_of(w, req->job_id, req->slot);
    if (!j) {
        rpc_fail(call, GRPC_STATUS_FAILED_PRECONDITION, "no slot of index %d of %.64s here",
                 req->slot, req->job_id);
        return;
    }
    struct export_work *x = calloc(1, sizeof *x);
    if (!x) {
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker out of memory");
        return;
    }
    x->req.data = x;
    x->w = w;
    x->j = j;
    x->call = call;
    x->step = (long)req->step;
    if (export_dir(call, w, req->dir, x) != 0) {
        free(x);
        return;
    }
    if (uv_queue_work(w->loop, &x->req, export_run, export_done) != 0) {
        free(x);
        rpc_fail(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "worker cannot start the export");
        return;
    }
    j->exporting++;
    rpc_defer(call); // export_done answers
}
