#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int moe_write_all(int fd, const void *buf, size_t n) {
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            if (w == 0) errno = EIO;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

moe_status moe_atomic_begin(struct moe_atomic_file *f, const char *path, mode_t mode) {
    f->fd = -1;
    f->path = strdup(path);
    size_t cap = strlen(path) + sizeof ".tmp.XXXXXX";
    f->tmp = malloc(cap);
    if (!f->path || !f->tmp) {
        moe_atomic_abort(f);
        return moe_fail(MOE_ENOMEM, "out of memory writing %s", path);
    }
    snprintf(f->tmp, cap, "%s.tmp.XXXXXX", path);
    f->fd = mkstemp(f->tmp);
    if (f->fd < 0) {
        int err = errno;
        free(f->tmp);
        f->tmp = NULL; // nothing was created: nothing to remove
        moe_atomic_abort(f);
        return moe_fail(MOE_EIO, "cannot write %s: %s", path, strerror(err));
    }
    /* mkstemp makes the file 0600; the caller says who may read it. */
    if (fchmod(f->fd, mode) != 0) {
        int err = errno;
        moe_atomic_abort(f);
        return moe_fail(MOE_EIO, "cannot write %s: %s", path, strerror(err));
    }
    return MOE_OK;
}

static moe_status already_failed(const struct moe_atomic_file *f) {
    return moe_fail(MOE_EIO, "cannot write %s: already failed", f->path ? f->path : "?");
}

moe_status moe_atomic_write(struct moe_atomic_file *f, const void *buf, size_t n) {
    if (f->fd < 0) return already_failed(f);
    if (moe_write_all(f->fd, buf, n) == 0) return MOE_OK;
    int err = errno;
    moe_status s = moe_fail(MOE_EIO, "cannot write %s: %s", f->path, strerror(err));
    moe_atomic_abort(f);
    return s;
}

moe_status moe_atomic_commit(struct moe_atomic_file *f) {
    if (f->fd < 0) return already_failed(f);
    int fd = f->fd;
    f->fd = -1;
    if (close(fd) != 0 || rename(f->tmp, f->path) != 0) {
        int err = errno;
        moe_status s = moe_fail(MOE_EIO, "cannot write %s: %s", f->path, strerror(err));
        moe_atomic_abort(f);
        return s;
    }
    free(f->tmp); // renamed into place: nothing left to remove
    f->tmp = NULL;
    moe_atomic_abort(f);
    return MOE_OK;
}

void moe_atomic_abort(struct moe_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    f->tmp = f->path = NULL;
}

moe_status moe_write_file_atomic(const char *path, const void *data, size_t n, mode_t mode) {
    struct moe_atomic_file f;
    CHECK(moe_atomic_begin(&f, path, mode));
    CHECK(moe_atomic_write(&f, data, n));
    return moe_atomic_commit(&f);
}

moe_status moe_file_sha256(const char *path, unsigned char sha[32], int64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot open %s: %s", path, strerror(errno));
    enum { CHUNK = 1 << 16 };
    unsigned char *buf = malloc(CHUNK);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    moe_status res = MOE_OK;
    *size = 0;
    if (!buf || !ctx) {
        res = moe_fail(MOE_ENOMEM, "out of memory hashing %s", path);
        goto exit;
    }
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) goto crypto_fail;
    for (;;) {
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            res = moe_fail(MOE_EIO, "cannot read %s: %s", path, strerror(errno));
            goto exit;
        }
        if (n == 0) break;
        *size += n;
        if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) goto crypto_fail;
    }
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx, sha, &len) != 1 || len != 32) goto crypto_fail;
    goto exit;
crypto_fail:
    res = moe_fail(MOE_EINTERNAL, "SHA-256 of %s failed in libcrypto", path);
exit:
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    return res;
}

moe_status moe_mkdir_p(const char *path, mode_t mode) {
    size_t n = strlen(path);
    if (n == 0) return moe_fail(MOE_EINVAL, "an empty directory name");
    char *buf = strdup(path);
    if (!buf) return moe_fail(MOE_ENOMEM, "out of memory creating %s", path);
    moe_status s = MOE_OK;
    for (char *p = buf + 1; s == MOE_OK; p++) {
        if (*p != '/' && *p != 0) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            s = moe_fail(MOE_EIO, "cannot create %s: %s", buf, strerror(errno));
        *p = c;
        if (!c) break;
    }
    free(buf);
    struct stat st;
    if (s == MOE_OK && (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)))
        s = moe_fail(MOE_EIO, "%s: not a directory", path);
    return s;
}
