/*
 * upload.c — how a job ends, on its training thread: the trained model is saved to the
 * scratch directory, hashed (SHA-256, which the coordinator checks), uploaded in chunks of
 * RPC_MODEL_CHUNK bytes from offset 0, and the end is reported (report.c). Each call is
 * retried while the coordinator is unreachable (it may be restarting): the model must not be
 * lost. The scratch files go once the coordinator has the model; if it never got it they
 * stay, and the log says where. In a mesh the save is collective (every slot calls it, the
 * slots of pod 0 send their experts to the writer); only the slot that wrote the file
 * (trainer_writes_model) uploads it, the others report their end without a model.
 * Never: decides whether the job is over (job.c does), or keeps a model the coordinator has.
 */
#include "worker.h"

#include "../../common/clock.h"
#include "../../common/fileio.h"
#include "../../common/log.h"
#include "proto/moed.pb-c.h"
#include "../../proto/methods.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UPLOAD_RESTARTS 3 // times a refused or corrupted upload starts over from offset 0

/* Reads exactly n bytes at off (short reads of a regular file are retried). */
static moe_status read_at(int fd, const char *path, unsigned char *buf, size_t n, long off) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(off + (long)got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return moe_fail(MOE_EIO, "cannot read %s at offset %ld: %s", path, off + (long)got,
                            r < 0 ? strerror(errno) : "file shorter than expected");
        got += (size_t)r;
    }
    return MOE_OK;
}

static moe_status upload_model(struct job *j, struct rpc_channel *ch, const char *path,
                               long size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot open %s: %s", path, strerror(errno));
    unsigned char *buf = malloc(RPC_MODEL_CHUNK);
    moe_status res = MOE_OK;
    if (!buf) {
        res = moe_fail(MOE_ENOMEM, "out of memory uploading %s", path);
        goto exit;
    }
    int restarts = 0;
    long off = 0;
    do { // at least one chunk, so that even an empty file arrives
        size_t n = (size_t)(size - off < RPC_MODEL_CHUNK ? size - off : RPC_MODEL_CHUNK);
        CHECK_GOTO(read_at(fd, path, buf, n, off), res, exit);
        Moed__V1__ModelChunk chunk = MOED__V1__MODEL_CHUNK__INIT;
        chunk.job_id = j->id;
        chunk.offset = off;
        chunk.data.len = n;
        chunk.data.data = buf;
        chunk.total_bytes = size;
        ProtobufCMessage *resp = NULL;
        res = job_call_retry(j, ch, RPC_CLUSTER_UPLOAD_MODEL, &chunk.base,
                             &moed__v1__empty__descriptor, &resp, FINISH_RETRY_S, NULL);
        if (res == MOE_OK) {
            protobuf_c_message_free_unpacked(resp, NULL);
            off += (long)n;
            continue;
        }
        /* A coordinator that restarted mid-upload forgot the chunks it had: start over. */
        if (res != MOE_EUNAVAILABLE && off > 0 && restarts < UPLOAD_RESTARTS) {
            LOG_WARN("%s: the coordinator refused the chunk at offset %ld (%s): uploading "
                     "again from the start", j->id, off, moe_errmsg());
            restarts++;
            off = 0;
            res = MOE_OK;
            continue;
        }
        goto exit;
    } while (off < size);
exit:
    free(buf);
    close(fd);
    return res;
}

/* The scratch files of a model that will not be uploaded (again). */
static void remove_scratch(const char *path, const char *config) {
    unlink(path);
    unlink(config);
}

/* Saves the model (collective in a mesh) and, on the slot that writes it, hashes it. Returns
 * 1 when there is a model to upload (*size, sha); 0 when the job's end is reported already
 * (no model: another slot writes it, the coordinator stopped the save, or it failed); -1 when
 * a recoverable job lost a peer during the save (nothing reported, moe_errmsg says what). */
static int save(struct job *j, struct rpc_channel *ch, const struct trainer *t, int recoverable,
                const char *path, const char *config, unsigned char sha[32], int64_t *size) {
    moe_status s = trainer_save_model(t, path);
    int writer = trainer_writes_model(t);
    if (s != MOE_OK && recoverable && atomic_load(&j->stop) == JOB_RUN &&
        (s == MOE_EUNAVAILABLE || s == MOE_EINTERNAL)) {
        /* a peer was lost during the collective save: the job recovers and saves again */
        char why[512];
        snprintf(why, sizeof why, "%s", moe_errmsg());
        remove_scratch(path, config);
        moe_fail(s, "%s", why);
        return -1;
    }
    if (s == MOE_OK && writer) s = moe_file_sha256(path, sha, size);
    if (s == MOE_OK && !writer) { // our experts went to the writer: nothing to upload
        LOG_INFO("%s: slot (%d, %d) done; slot (0, 0) uploads the model", j->id, j->pod, j->slot);
        job_report_end(j, ch, 1, 0, "", 0, NULL, NULL);
        return 0;
    }
    if (s != MOE_OK && atomic_load(&j->stop) == JOB_STOP_COORDINATOR) {
        /* another slot failed and the coordinator aborted the collective save */
        LOG_INFO("%s: stopped while saving the model (the coordinator asked)", j->id);
        job_report_end(j, ch, 0, 1, "stopped", 0, NULL, NULL);
        remove_scratch(path, config);
        return 0;
    }
    if (s != MOE_OK) {
        char error[600];
        snprintf(error, sizeof error, "saving the trained model: %s", moe_errmsg());
        LOG_ERROR("%s: %s", j->id, error);
        job_report_end(j, ch, 0, 0, error, 0, NULL, NULL);
        remove_scratch(path, config);
        return 0;
    }
    return 1;
}

/* Uploads the saved model and reports the end with its size and hash, again while the
 * coordinator answers DATA_LOSS (what arrived does not match). Returns 1 when it has the
 * model; 0 when the end is reported as failed or could not be reported (the model stays). */
static int upload_until_accepted(struct job *j, struct rpc_channel *ch, const char *path,
                                 int64_t size, const unsigned char sha[32]) {
    char error[600];
    for (int attempt = 1;; attempt++) {
        LOG_INFO("%s: uploading the model (%ld bytes)", j->id, size);
        double t0 = moe_clock_s();
        moe_status s = upload_model(j, ch, path, size);
        if (s != MOE_OK) {
            snprintf(error, sizeof error, "uploading the trained model: %s", moe_errmsg());
            LOG_ERROR("%s: %s; the model stays in %s", j->id, error, path);
            job_report_end(j, ch, 0, 0, error, 0, NULL, NULL);
            return 0;
        }
        LOG_INFO("%s: model uploaded in %.2f s", j->id, moe_clock_s() - t0);
        struct rpc_result res;
        if (job_report_end(j, ch, 1, 0, "", size, sha, &res) == MOE_OK) return 1;
        if (res.code == GRPC_STATUS_DATA_LOSS && attempt > UPLOAD_RESTARTS) {
            snprintf(error, sizeof error, "the model arrived corrupted %d times: %s", attempt,
                     res.details);
            LOG_ERROR("%s: %s; the model stays in %s", j->id, error, path);
            job_report_end(j, ch, 0, 0, error, 0, NULL, NULL);
            return 0;
        }
        if (res.code != GRPC_STATUS_DATA_LOSS) {
            LOG_ERROR("%s: the model stays in %s", j->id, path);
            return 0;
        }
        LOG_WARN("%s: the coordinator got a different model (%s): uploading again", j->id,
                 res.details);
    }
}

int job_finish_ok(struct job *j, struct rpc_channel *ch, const struct trainer *t,
                  int recoverable) {
    char path[PATH_MAX + 80], config[PATH_MAX + 80];
    snprintf(path, sizeof path, "%s/%s.safetensors", j->w->scratch, j->id);
    snprintf(config, sizeof config, "%s/%s.json", j->w->scratch, j->id);
    unsigned char sha[32];
    int64_t size = 0;
    int saved = save(j, ch, t, recoverable, path, config, sha, &size);
    if (saved < 0) return 0;
    if (saved == 0) return 1;
    if (!upload_until_accepted(j, ch, path, size, sha)) return 1;
    LOG_INFO("%s: succeeded", j->id);
    remove_scratch(path, config);
    return 1;
}
