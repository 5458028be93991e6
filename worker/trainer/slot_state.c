/* slot_state.c — a slot's whole state in one checked file (see slot_state.h). */
#include "slot_state.h"

#include "../../common/crc32c.h"
#include "../../common/fileio.h"
#include "../../common/safetensors.h"
#include "model_io.h"
#include "outer.h"
#include "replica.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The four arenas, then with diloco the outer version's carry (outer.h): its momentum, and
 * overlapped the mean its next outer step applies. */
enum { MAX_PARTS = 6 };
static const char *const part_names[MAX_PARTS] = {"state.params", "state.adam_m",
                                                  "state.adam_v", "state.buffers",
                                                  "state.outer_momentum", "state.outer_mean"};

/* A directory that anyone may write is no place for a job's state (docs/security.md). */
static moe_status check_dir(int dirfd, const char *dir) {
    struct stat st;
    if (fstat(dirfd, &st) != 0)
        return moe_fail(MOE_EIO, "cannot stat export directory %s: %s", dir, strerror(errno));
    if ((st.st_mode & S_IWOTH) && !(st.st_mode & S_ISVTX))
        return moe_fail(MOE_EIO, "export directory %s is writable by anyone: refused", dir);
    return MOE_OK;
}

/* The CRC-32C and size of the file `name` beneath dirfd, read back from disk. */
static moe_status file_crc(int dirfd, const char *name, const char *path, uint32_t *crc,
                           int64_t *size) {
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        int err = errno;
        if (fd >= 0) close(fd);
        return moe_fail(MOE_EIO, "cannot read %s: %s", path, strerror(err));
    }
    enum { CHUNK = 1 << 20 };
    char *buf = malloc(CHUNK);
    *crc = 0;
    *size = 0;
    size_t n;
    while (buf && (n = fread(buf, 1, CHUNK, f)) > 0) {
        *crc = moe_crc32c(*crc, buf, n);
        *size += (int64_t)n;
    }
    int bad = !buf || ferror(f);
    free(buf);
    fclose(f);
    return bad ? moe_fail(MOE_EIO, "cannot read %s back", path) : MOE_OK;
}

/* The metadata of a slot's file: owned strings in val[] and key[], pointed at by meta[]. */
struct meta_texts {
    char val[4 + MAX_PARTS][96];
    char key[MAX_PARTS][48];
    char *cfg;
    struct st_meta meta[6 + MAX_PARTS];
    int n;
};

static void meta_add(struct meta_texts *m, const char *key, const char *value) {
    m->meta[m->n].key = key;
    m->meta[m->n].value = value;
    m->n++;
}

static moe_status build_meta(struct meta_texts *m, const struct trainer *t, const char *job_id,
                             long step, const struct st_tensor_out *out, int n_out) {
    m->n = 0;
    m->cfg = model_config_json(&t->model.cfg);
    if (!m->cfg) return moe_fail(MOE_ENOMEM, "out of memory");
    snprintf(m->val[0], sizeof m->val[0], "%.80s", job_id);
    snprintf(m->val[1], sizeof m->val[1], "%ld", step);
    snprintf(m->val[2], sizeof m->val[2], "%d", t->mesh.slot);
    snprintf(m->val[3], sizeof m->val[3], "%dx%d", t->mesh.pods, t->mesh.slots);
    meta_add(m, "format", SLOT_STATE_FORMAT);
    meta_add(m, "moed.job", m->val[0]);
    meta_add(m, "moed.step", m->val[1]);
    meta_add(m, "moed.slot", m->val[2]);
    meta_add(m, "moed.mesh", m->val[3]);
    meta_add(m, "moed.model_config", m->cfg);
    for (int i = 0; i < n_out; i++) {
        size_t bytes = (size_t)out[i].shape[0] * sizeof(real);
        snprintf(m->val[4 + i], sizeof m->val[4 + i], "%08x", moe_crc32c(0, out[i].data, bytes));
        snprintf(m->key[i], sizeof m->key[i], "moed.crc32c.%s", out[i].name);
        meta_add(m, m->key[i], m->val[4 + i]);
    }
    return MOE_OK;
}

/* The file `name` beneath dirfd: a temporary beside it, synced, renamed, the directory synced
 * (common/fileio.h); then read back whole for its CRC-32C. */
static moe_status write_file(int dirfd, const char *name, const struct st_tensor_out *parts,
                             int n_parts, const struct meta_texts *m,
                             struct slot_state_file *out) {
    struct moe_atomic_file f;
    CHECK(moe_atomic_begin_at(&f, dirfd, name, out->path, 0600, 1));
    CHECK(st_write_into(&f, parts, n_parts, m->meta, m->n));
    CHECK(moe_atomic_commit(&f));
    return file_crc(dirfd, name, out->path, &out->crc32c, &out->bytes);
}

/* The file's tensors: 4, with diloco 5 (the outer momentum), overlapped 6 (its mean too). */
static int carry_parts(const struct trainer *t) {
    if (!t->mesh.outer) return 4;
    return outer_carried(t) > t->model.n_params ? 6 : 5;
}

moe_status slot_state_export(struct trainer *t, const char *job_id, long step, int dirfd,
                             const char *dir, struct slot_state_file *out) {
    const real *arena[4], *carry = NULL;
    if (!replica_own_state(t, step, arena, &carry))
        return moe_fail(MOE_ENOTFOUND, "slot (%d, %d) holds no state of step %ld (live step %ld)",
                        t->mesh.pod, t->mesh.slot, step, t->model.step);
    CHECK(check_dir(dirfd, dir));
    char shown[SPEC_PATH_MAX + 80], name[64];
    snprintf(shown, sizeof shown, "%s/%s", dir, job_id);
    snprintf(name, sizeof name, "slot-%d-step-%ld.safetensors", t->mesh.slot, step);
    snprintf(out->path, sizeof out->path, "%s/%s", shown, name);
    int sub;
    CHECK(moe_dir_open_beneath(dirfd, job_id, 1, 0700, shown, &sub));
    const struct model *m = &t->model;
    int64_t np = (int64_t)m->n_params, nb = (int64_t)m->n_buffers;
    int n_parts = carry_parts(t);
    struct st_tensor_out parts[MAX_PARTS] = {
        {part_names[0], ST_F32, 1, {np}, arena[0]}, {part_names[1], ST_F32, 1, {np}, arena[1]},
        {part_names[2], ST_F32, 1, {np}, arena[2]}, {part_names[3], ST_F32, 1, {nb}, arena[3]},
    };
    if (n_parts > 4) parts[4] = (struct st_tensor_out){part_names[4], ST_F32, 1, {np}, carry};
    if (n_parts > 5)
        parts[5] = (struct st_tensor_out){part_names[5], ST_F32, 1, {np + nb}, carry + np};
    struct meta_texts meta;
    moe_status s = build_meta(&meta, t, job_id, step, parts, n_parts);
    if (s == MOE_OK) s = write_file(sub, name, parts, n_parts, &meta, out);
    free(meta.cfg);
    close(sub);
    return s;
}

/* ---- loading ---- */

static moe_status meta_is(const struct st_file *f, const char *key, const char *want) {
    const char *got = st_meta_get(f, key);
    if (got && !strcmp(got, want)) return MOE_OK;
    return moe_fail(MOE_EINVAL, "%s: %s is %s, this slot needs %s", f->path, key,
                    got ? got : "missing", want);
}

static moe_status check_meta(const struct st_file *f, const struct trainer *t, long step) {
    char want[96];
    CHECK(meta_is(f, "format", SLOT_STATE_FORMAT));
    snprintf(want, sizeof want, "%ld", step);
    CHECK(meta_is(f, "moed.step", want));
    snprintf(want, sizeof want, "%d", t->mesh.slot);
    CHECK(meta_is(f, "moed.slot", want));
    snprintf(want, sizeof want, "%dx%d", t->mesh.pods, t->mesh.slots);
    CHECK(meta_is(f, "moed.mesh", want));
    const char *cfg_json = st_meta_get(f, "moed.model_config");
    struct model_config cfg;
    if (!cfg_json) return moe_fail(MOE_EFORMAT, "%s: no model config", f->path);
    CHECK(model_config_from_json(&cfg, cfg_json, f->path));
    if (memcmp(&cfg, &t->model.cfg, sizeof cfg) != 0)
        return moe_fail(MOE_EINVAL, "%s: the state is of another model config", f->path);
    return MOE_OK;
}

/* Every tensor with the shape of t's arenas and the CRC-32C its writer recorded. An export
 * of a diloco job made before the file carried the outer momentum has none: it is zero then
 * (got[4] NULL); an overlapped job's must carry its mean. */
static moe_status check_parts(const struct st_file *f, const struct trainer *t,
                              const struct st_tensor *got[MAX_PARTS]) {
    int64_t np = (int64_t)t->model.n_params, nb = (int64_t)t->model.n_buffers;
    const int64_t n[MAX_PARTS] = {np, np, np, nb, np, np + nb};
    int n_parts = carry_parts(t);
    if (n_parts == 5 && !st_find(f, part_names[4])) n_parts = 4, got[4] = NULL;
    if (n_parts == 6 && !st_find(f, part_names[5]))
        return moe_fail(MOE_EINVAL, "%s: no %s: the export is not of a job with "
                        "mesh.outer_overlap (the mean in flight is needed to go on)", f->path,
                        part_names[5]);
    for (int i = 0; i < n_parts; i++) {
        CHECK(st_expect(f, part_names[i], ST_F32, 1, &n[i], &got[i]));
        char key[64], crc[16];
        snprintf(key, sizeof key, "moed.crc32c.%s", part_names[i]);
        snprintf(crc, sizeof crc, "%08x", moe_crc32c(0, got[i]->data, got[i]->nbytes));
        const char *want = st_meta_get(f, key);
        if (!want || strcmp(want, crc) != 0)
            return moe_fail(MOE_EFORMAT, "%s: %s has CRC-32C %s, its writer recorded %s",
                            f->path, part_names[i], crc, want ? want : "none");
    }
    return MOE_OK;
}

moe_status slot_state_load(struct trainer *t, const char *path, long step, uint32_t crc32c) {
    struct st_file f;
    CHECK(st_read(&f, path));
    moe_status res = MOE_OK;
    uint32_t crc = moe_crc32c(0, f.buf, f.size);
    if (crc != crc32c) {
        res = moe_fail(MOE_EFORMAT, "%s: CRC-32C %08x, the export recorded %08x (damaged or "
                       "replaced since)", path, crc, crc32c);
        goto exit;
    }
    CHECK_GOTO(check_meta(&f, t, step), res, exit);
    const struct st_tensor *got[MAX_PARTS] = {NULL};
    CHECK_GOTO(check_parts(&f, t, got), res, exit);
    struct model *m = &t->model;
    real *dst[4] = {m->param_mem, m->m_mem, m->v_mem, m->buffer_mem};
    for (int i = 0; i < 4; i++) memcpy(dst[i], got[i]->data, got[i]->nbytes);
    m->step = step;
    if (t->mesh.outer) { /* diloco: an outer step's state, with its carry */
        real *carry = outer_incoming_momentum(t);
        memset(carry, 0, sizeof(real) * outer_carried(t));
        if (got[4]) memcpy(carry, got[4]->data, got[4]->nbytes);
        if (got[5]) memcpy(carry + m->n_params, got[5]->data, got[5]->nbytes);
        outer_adopt(t);
    }
exit:
    st_close(&f);
    return res;
}
