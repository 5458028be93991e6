/*
 * models.c — uploaded models on the coordinator's disk (see models.h).
 */
#include "models.h"

#include "../../common/fileio.h"
#include "../../common/log.h"

#include <dirent.h>
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
    if (rename(part, final) != 0 || moe_sync_parent(final) != 0) { // the name survives a crash
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

void model_remove(struct coordinator *co, struct job *j) {
    model_upload_abort(j);
    for (int part = 0; part <= 1; part++) {
        char path[1200];
        model_path(co, j, path, sizeof path, part);
        if (unlink(path) != 0 && errno != ENOENT)
            LOG_WARN("%s: cannot remove %s: %s", j->id, path, strerror(errno));
    }
    j->model_bytes = 0;
}

/* "job-17.safetensors" or "job-17.safetensors.part" -> "job-17"; 0 for any other name. */
static int model_job_id(const char *name, char *id, size_t cap) {
    const char *dot = strchr(name, '.');
    if (strncmp(name, "job-", 4) != 0 || !dot || (size_t)(dot - name) >= cap) return 0;
    if (strcmp(dot, ".safetensors") != 0 && strcmp(dot, ".safetensors.part") != 0) return 0;
    memcpy(id, name, (size_t)(dot - name));
    id[dot - name] = 0;
    return 1;
}

void models_sweep(struct coordinator *co) {
    DIR *d = opendir(co->models_dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        char id[24], path[sizeof co->models_dir + sizeof e->d_name + 2];
        if (!model_job_id(e->d_name, id, sizeof id) || jobs_find(co, id)) continue;
        snprintf(path, sizeof path, "%s/%s", co->models_dir, e->d_name);
        if (unlink(path) == 0)
            LOG_INFO("removed %s: its job was deleted", path);
        else
            LOG_WARN("cannot remove %s (its job was deleted): %s", path, strerror(errno));
    }
    closedir(d);
}
