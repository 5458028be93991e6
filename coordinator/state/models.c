/*
 * models.c — uploaded models on the coordinator's disk (see models.h).
 */
#include "models.h"

#include "../../common/fileio.h"
#include "../../common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void model_path(const struct coordinator *co, const struct job *j, char *out, size_t cap,
                       int part) {
    snprintf(out, cap, "%s/%s.safetensors%s", co->models_dir, j->id, part ? ".part" : "");
}

moe_status model_upload_chunk(struct coordinator *co, struct job *j, const char *uploader,
                              int64_t offset, const uint8_t *data, size_t len) {
    char path[1200];
    model_path(co, j, path, sizeof path, 1);
    if (offset != 0 && j->upload_fd >= 0 && strcmp(j->upload_worker, uploader) != 0)
        return moe_fail(MOE_EINVAL, "chunk at %ld from %s: the upload in progress is %s's",
                        (long)offset, uploader, j->upload_worker);
    if (offset == 0) { // (re)start the upload
        snprintf(j->upload_worker, sizeof j->upload_worker, "%s", uploader);
        if (j->upload_fd >= 0) close(j->upload_fd);
        j->upload_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        j->upload_offset = 0;
        if (j->upload_fd < 0) {
            LOG_ERROR("%s: cannot create %s: %s", j->id, path, strerror(errno));
            return moe_fail(MOE_EIO, "the coordinator cannot store the model");
        }
    }
    if (j->upload_fd < 0 || offset != j->upload_offset)
        return moe_fail(MOE_EINVAL, "chunk at %ld, expected %ld: restart at 0", (long)offset,
                        (long)j->upload_offset);
    if (moe_write_all(j->upload_fd, data, len) != 0) {
        LOG_ERROR("%s: writing %s: %s", j->id, path, strerror(errno));
        return moe_fail(MOE_EIO, "the coordinator cannot store the model");
    }
    j->upload_offset += (int64_t)len;
    return MOE_OK;
}

void model_upload_abort(struct job *j) {
    if (j->upload_fd >= 0) close(j->upload_fd);
    j->upload_fd = -1;
    j->upload_worker[0] = 0;
}

moe_status model_upload_commit(struct coordinator *co, struct job *j, const char *uploader,
                               int64_t bytes, const uint8_t *sha, size_t sha_len) {
    char part[1200], final[1200];
    if (strcmp(j->upload_worker, uploader) != 0)
        return moe_fail(MOE_EFORMAT, "the model of %s was not uploaded by %s (%s): upload it "
                        "again", j->id, uploader, j->upload_worker[0] ? j->upload_worker
                                                                      : "no upload");
    model_path(co, j, part, sizeof part, 1);
    model_path(co, j, final, sizeof final, 0);
    if (j->upload_fd >= 0) {
        int bad = fsync(j->upload_fd) != 0;
        bad |= close(j->upload_fd) != 0;
        j->upload_fd = -1;
        if (bad) LOG_WARN("%s: syncing %s: %s", j->id, part, strerror(errno));
    }
    unsigned char sum[32];
    int64_t size = 0;
    if (moe_file_sha256(part, sum, &size) != MOE_OK || size != bytes || sha_len != 32 ||
        memcmp(sum, sha, 32) != 0)
        return moe_fail(MOE_EFORMAT, "model upload of %s does not match: got %ld bytes, "
                        "reported %ld, checksum %s", j->id, (long)size, (long)bytes,
                        size == bytes ? "differs" : "not checked");
    if (rename(part, final) != 0) {
        LOG_ERROR("%s: rename %s: %s", j->id, final, strerror(errno));
        return moe_fail(MOE_EIO, "the coordinator cannot store the model");
    }
    j->model_bytes = size;
    return MOE_OK;
}

moe_status model_open(struct coordinator *co, const struct job *j, int *fd, int64_t *size) {
    char path[1200];
    model_path(co, j, path, sizeof path, 0);
    *fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (*fd < 0 || fstat(*fd, &sb) != 0) {
        LOG_ERROR("%s: cannot open its model %s: %s", j->id, path, strerror(errno));
        if (*fd >= 0) close(*fd);
        *fd = -1;
        return moe_fail(MOE_EIO, "the model of %s is missing on the coordinator", j->id);
    }
    *size = sb.st_size;
    return MOE_OK;
}
