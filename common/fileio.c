#define _GNU_SOURCE
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/openat2.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
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

/* A temporary name beside `name`: name.tmp.XXXXXX, the X's random. */
static void tmp_name(char *out, size_t cap, const char *name) {
    static const char abc[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    unsigned char r[6];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
        unsigned long x = (unsigned long)getpid() ^ (unsigned long)clock();
        for (size_t i = 0; i < sizeof r; i++, x >>= 5) r[i] = (unsigned char)(x + i * 37);
    }
    char x[7];
    for (size_t i = 0; i < sizeof r; i++) x[i] = abc[r[i] % (sizeof abc - 1)];
    x[6] = 0;
    snprintf(out, cap, "%s.tmp.%s", name, x);
}

static moe_status atomic_fail(struct moe_atomic_file *f, const char *what, int err) {
    moe_status s = moe_fail(MOE_EIO, "cannot %s %s: %s", what, f->shown ? f->shown : "?",
                            strerror(err));
    moe_atomic_abort(f);
    return s;
}

moe_status moe_atomic_begin_at(struct moe_atomic_file *f, int dirfd, const char *name,
                               const char *shown, mode_t mode, int durable) {
    *f = (struct moe_atomic_file){.fd = -1, .dirfd = dirfd, .durable = durable};
    size_t cap = strlen(name) + sizeof ".tmp.XXXXXX";
    f->path = strdup(name);
    f->shown = strdup(shown ? shown : name);
    f->tmp = malloc(cap);
    if (!f->path || !f->shown || !f->tmp) {
        moe_atomic_abort(f);
        return moe_fail(MOE_ENOMEM, "out of memory writing %s", shown ? shown : name);
    }
    for (int tries = 0; f->fd < 0 && tries < 16; tries++) {
        tmp_name(f->tmp, cap, name);
        f->fd = openat(dirfd, f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (f->fd < 0 && errno != EEXIST) break;
    }
    if (f->fd < 0) {
        int err = errno;
        free(f->tmp);
        f->tmp = NULL; // nothing was created: nothing to remove
        return atomic_fail(f, "write", err);
    }
    /* made 0600; the caller says who may read it, whatever the umask */
    if (fchmod(f->fd, mode) != 0) return atomic_fail(f, "write", errno);
    return MOE_OK;
}

moe_status moe_atomic_begin(struct moe_atomic_file *f, const char *path, mode_t mode) {
    return moe_atomic_begin_at(f, AT_FDCWD, path, path, mode, 0);
}

static moe_status already_failed(const struct moe_atomic_file *f) {
    return moe_fail(MOE_EIO, "cannot write %s: already failed", f->shown ? f->shown : "?");
}

moe_status moe_atomic_write(struct moe_atomic_file *f, const void *buf, size_t n) {
    if (f->fd < 0) return already_failed(f);
    if (moe_write_all(f->fd, buf, n) == 0) return MOE_OK;
    return atomic_fail(f, "write", errno);
}

int moe_sync_parent(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    int rc = fd >= 0 ? fsync(fd) : -1;
    int err = errno;
    if (fd >= 0) close(fd);
    free(dir);
    errno = err;
    return rc;
}

/* fsync of the directory the target is in: dirfd, or the parent of a path of the process's. */
static int sync_dir(const struct moe_atomic_file *f) {
    return f->dirfd != AT_FDCWD ? fsync(f->dirfd) : moe_sync_parent(f->path);
}

moe_status moe_atomic_commit(struct moe_atomic_file *f) {
    if (f->fd < 0) return already_failed(f);
    int fd = f->fd;
    f->fd = -1;
    if ((f->durable && fsync(fd) != 0) || close(fd) != 0 ||
        renameat(f->dirfd, f->tmp, f->dirfd, f->path) != 0)
        return atomic_fail(f, "write", errno);
    free(f->tmp); // renamed into place: nothing left to remove
    f->tmp = NULL;
    if (f->durable && sync_dir(f) != 0) return atomic_fail(f, "sync the directory of", errno);
    moe_atomic_abort(f);
    return MOE_OK;
}

void moe_atomic_abort(struct moe_atomic_file *f) {
    if (f->fd >= 0) close(f->fd);
    f->fd = -1;
    if (f->tmp) unlinkat(f->dirfd, f->tmp, 0);
    free(f->tmp);
    free(f->path);
    free(f->shown);
    f->tmp = f->path = f->shown = NULL;
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

int moe_openat2(int dirfd, const char *path, int flags, uint64_t resolve) {
    struct open_how how = {.flags = (uint64_t)(flags | O_CLOEXEC), .resolve = resolve};
    for (int tries = 0;; tries++) {
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
        if (fd >= 0) return (int)fd;
        if (errno == EAGAIN && tries < 16) continue;
        if (errno == ENOSYS && resolve == 0) return openat(dirfd, path, flags | O_CLOEXEC);
        return -1;
    }
}

/* One step of moe_dir_open_beneath: the entry `comp` of the directory cur, made if asked. */
static moe_status dir_step(int cur, const char *comp, int create, mode_t mode, const char *shown,
                           int *next) {
    if (!strcmp(comp, ".."))
        return moe_fail(MOE_EINVAL, "%s: \"..\" is not allowed", shown);
    if (create && mkdirat(cur, comp, mode) != 0 && errno != EEXIST)
        return moe_fail(MOE_EIO, "cannot create %s (at %s): %s", shown, comp, strerror(errno));
    *next = moe_openat2(cur, comp, O_RDONLY | O_DIRECTORY,
                        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    if (*next >= 0) return MOE_OK;
    if (errno == ELOOP || errno == EXDEV)
        return moe_fail(MOE_EINVAL, "%s: %s is a symlink (refused: it may lead elsewhere)",
                        shown, comp);
    return moe_fail(MOE_EIO, "cannot open %s (at %s): %s", shown, comp, strerror(errno));
}

moe_status moe_dir_open_beneath(int rootfd, const char *rel, int create, mode_t mode,
                                const char *shown, int *out) {
    char *buf = strdup(rel ? rel : "");
    int cur = fcntl(rootfd, F_DUPFD_CLOEXEC, 0);
    if (!buf || cur < 0) {
        free(buf);
        if (cur >= 0) close(cur);
        return moe_fail(MOE_ENOMEM, "cannot open %s: out of memory or descriptors", shown);
    }
    moe_status s = MOE_OK;
    char *save = NULL;
    for (char *comp = strtok_r(buf, "/", &save); comp && s == MOE_OK;
         comp = strtok_r(NULL, "/", &save)) {
        if (!strcmp(comp, ".")) continue;
        int next = -1;
        s = dir_step(cur, comp, create, mode, shown, &next);
        close(cur);
        cur = next;
    }
    free(buf);
    if (s != MOE_OK) return s;
    *out = cur;
    return MOE_OK;
}
