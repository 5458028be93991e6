/* data_roots.c — a worker's data roots and opening data paths beneath them (see data_roots.h). */
#define _GNU_SOURCE
#include "data_roots.h"

#include "../../common/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#define MAX_SECRETS 8

struct data_root {
    char *given; // as given, trailing slashes cut ("/" stays)
    char *real;  // realpath: a path may name the root either way
    int fd;      // O_PATH | O_DIRECTORY, held from startup
};

struct data_roots {
    struct data_root *v;
    int n;
    struct {
        dev_t dev;
        ino_t ino;
    } secrets[MAX_SECRETS];
    int n_secrets;
};

/* ---- the kernel's part ---- */

/* Filesystems the kernel makes up: their files are views of the system, not data, and some
 * never end (/proc/kmsg) or cost something to read. */
static int kernel_fs(int fd) {
    static const uint32_t magic[] = {PROC_SUPER_MAGIC,   SYSFS_MAGIC,      DEBUGFS_MAGIC,
                                     TRACEFS_MAGIC,      SECURITYFS_MAGIC, CGROUP_SUPER_MAGIC,
                                     CGROUP2_SUPER_MAGIC, BPF_FS_MAGIC,    DEVPTS_SUPER_MAGIC,
                                     PSTOREFS_MAGIC,     EFIVARFS_MAGIC,   SELINUX_MAGIC,
                                     SMACK_MAGIC,        BINFMTFS_MAGIC,   NSFS_MAGIC,
                                     0x62656570 /* configfs */};
    struct statfs sf;
    if (fstatfs(fd, &sf) != 0) return 1; // cannot tell: refuse
    for (size_t i = 0; i < sizeof magic / sizeof magic[0]; i++)
        if ((uint32_t)sf.f_type == magic[i]) return 1;
    return 0;
}

/* ---- names ---- */

const char *data_name_str(const struct data_name *name, const char *rel, char *out, size_t cap) {
    const char *p = name->path;
    size_t len = strlen(p);
    const char *sep = rel && rel[0] && len > 0 && p[len - 1] != '/' ? "/" : "";
    if (!rel) rel = "";
    if (name->field)
        snprintf(out, cap, "%s '%.400s%s%.200s'", name->field, p, sep, rel);
    else
        snprintf(out, cap, "data: %.400s%s%.200s", p, sep, rel);
    return out;
}

/* The one answer for every path that is not beneath a root: it says nothing of the file. */
static moe_status outside(const struct data_roots *r, const struct data_name *name) {
    char shown[700];
    data_name_str(name, NULL, shown, sizeof shown);
    if (r->n == 0)
        return moe_fail(MOE_EINVAL, "%s: this worker reads no data files: it was started "
                        "without --data-root", shown);
    return moe_fail(MOE_EINVAL, "%s is outside the worker's data roots", shown);
}

/* ---- the roots ---- */

static int is_secret(const struct data_roots *r, const struct stat *st) {
    for (int i = 0; r && i < r->n_secrets; i++)
        if (r->secrets[i].dev == st->st_dev && r->secrets[i].ino == st->st_ino) return 1;
    return 0;
}

/* Is `path` the directory `dir` or beneath it (both canonical or both as given)? The part of
 * path below dir, or NULL. */
static const char *beneath(const char *path, const char *dir) {
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/') return path + 1;
    if (strncmp(path, dir, n) != 0 || (path[n] != '/' && path[n] != 0)) return NULL;
    return path + n;
}

static moe_status root_open(struct data_root *root, const char *dir) {
    root->fd = -1;
    root->given = strdup(dir);
    if (!root->given) return moe_fail(MOE_ENOMEM, "--data-root %s: out of memory", dir);
    size_t n = strlen(root->given);
    while (n > 1 && root->given[n - 1] == '/') root->given[--n] = 0;
    root->fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root->fd < 0) return moe_fail(MOE_EINVAL, "--data-root %s: %s", dir, strerror(errno));
    if (kernel_fs(root->fd))
        return moe_fail(MOE_EINVAL, "--data-root %s is on a kernel filesystem (proc, sysfs, ...), "
                        "which holds no training data", dir);
    root->real = realpath(dir, NULL);
    if (!root->real) return moe_fail(MOE_EINVAL, "--data-root %s: %s", dir, strerror(errno));
    return MOE_OK;
}

moe_status data_roots_open(struct data_roots **out, const char *const *dirs, int n) {
    *out = NULL;
    struct data_roots *r = calloc(1, sizeof *r);
    if (!r || (n > 0 && !(r->v = calloc((size_t)n, sizeof *r->v)))) {
        free(r);
        return moe_fail(MOE_ENOMEM, "out of memory for the data roots");
    }
    for (int i = 0; i < n; i++) {
        r->n = i + 1; // so that close frees it
        moe_status s = root_open(&r->v[i], dirs[i]);
        if (s != MOE_OK) {
            data_roots_close(r);
            return s;
        }
    }
    *out = r;
    return MOE_OK;
}

void data_roots_close(struct data_roots *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        if (r->v[i].fd >= 0) close(r->v[i].fd);
        free(r->v[i].given);
        free(r->v[i].real);
    }
    free(r->v);
    free(r);
}

int data_roots_count(const struct data_roots *r) { return r ? r->n : 0; }

const char *data_roots_dir(const struct data_roots *r, int i) { return r->v[i].given; }

moe_status data_roots_guard(struct data_roots *r, const char *path, const char *what) {
    struct stat st;
    if (stat(path, &st) != 0) return MOE_OK;
    if (r->n_secrets < MAX_SECRETS) {
        r->secrets[r->n_secrets].dev = st.st_dev;
        r->secrets[r->n_secrets].ino = st.st_ino;
        r->n_secrets++;
    }
    char *real = realpath(path, NULL);
    if (!real) return MOE_OK;
    char *slash = strrchr(real, '/');
    if (slash) slash[slash == real ? 1 : 0] = 0; // the directory that holds it
    moe_status s = MOE_OK;
    for (int i = 0; i < r->n && s == MOE_OK; i++)
        if (beneath(real, r->v[i].real))
            s = moe_fail(MOE_EINVAL, "--data-root %s holds %s (%s), the daemon's secret, and "
                         "what lies beside it: choose a data root that does not", r->v[i].given,
                         path, what);
    free(real);
    return s;
}

/* ---- opening ---- */

/* The open file is a regular file (or a directory when allowed) that may be read. `rel`
 * names it in errors beside the source. */
static moe_status check_open(const struct data_roots *r, const struct data_name *name,
                             const char *rel, int fd, int dir_ok, struct stat *st) {
    char shown[700];
    if (fstat(fd, st) != 0)
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(name, rel, shown, sizeof shown),
                        strerror(errno));
    if (r && is_secret(r, st)) return outside(r, name);
    if (!S_ISREG(st->st_mode) && !(dir_ok && S_ISDIR(st->st_mode)))
        return moe_fail(MOE_EINVAL, "%s: not a regular file%s",
                        data_name_str(name, rel, shown, sizeof shown),
                        dir_ok ? " or directory" : "");
    if (r && kernel_fs(fd))
        return moe_fail(MOE_EINVAL, "%s: on a kernel filesystem (proc, sysfs, ...), which holds "
                        "no training data", data_name_str(name, rel, shown, sizeof shown));
    return MOE_OK;
}

/* Opens path beneath dirfd as O_PATH, checks what it is, then opens that for reading the
 * same way and makes sure it is the same file: a FIFO or a device is never opened for
 * reading (that could block or act), and a swap between the two opens is caught. */
static moe_status open_checked(const struct data_roots *r, const struct data_name *name,
                               const char *rel, int dirfd, const char *path, uint64_t resolve,
                               int want, int *fd, int *is_dir) {
    char shown[700];
    int p = moe_openat2(dirfd, path, O_PATH, resolve);
    if (p < 0) {
        int e = errno;
        if (r && (e == EXDEV || e == ELOOP)) return outside(r, name); // left the root
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(name, rel, shown, sizeof shown),
                        strerror(e));
    }
    struct stat st, st2;
    moe_status s = check_open(r, name, rel, p, want != S_IFREG, &st);
    close(p);
    if (s != MOE_OK) return s;
    if (want && (st.st_mode & S_IFMT) != (mode_t)want)
        return moe_fail(MOE_EINVAL, "%s: changed while it was opened",
                        data_name_str(name, rel, shown, sizeof shown));
    int dir = S_ISDIR(st.st_mode);
    int flags = O_RDONLY | O_NOCTTY | (dir ? O_DIRECTORY : O_NONBLOCK);
    int f = moe_openat2(dirfd, path, flags, resolve);
    if (f < 0) {
        int e = errno;
        if (r && (e == EXDEV || e == ELOOP)) return outside(r, name);
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(name, rel, shown, sizeof shown),
                        strerror(e));
    }
    if (fstat(f, &st2) != 0 || st2.st_dev != st.st_dev || st2.st_ino != st.st_ino) {
        close(f);
        return moe_fail(MOE_EINVAL, "%s: changed while it was opened",
                        data_name_str(name, rel, shown, sizeof shown));
    }
    *fd = f;
    *is_dir = dir;
    return MOE_OK;
}

/* The root a path lies beneath (the one that names the most of it) and the rest of the path,
 * or -1. */
static int root_of(const struct data_roots *r, const char *path, const char **rest) {
    int best = -1;
    size_t best_len = 0;
    for (int i = 0; i < r->n; i++) {
        const char *forms[2] = {r->v[i].given, r->v[i].real};
        for (int k = 0; k < 2; k++) {
            const char *tail = beneath(path, forms[k]);
            if (tail && (best < 0 || (size_t)(tail - path) > best_len)) {
                best = i;
                best_len = (size_t)(tail - path);
                *rest = tail;
            }
        }
    }
    if (best >= 0) {
        while (**rest == '/') (*rest)++;
        if (!**rest) *rest = ".";
    }
    return best;
}

moe_status data_path_open(const struct data_roots *r, const struct data_name *name, int *fd,
                          int *is_dir) {
    const char *path = name->path;
    if (!r) return open_checked(NULL, name, NULL, AT_FDCWD, path, 0, 0, fd, is_dir);
    if (path[0] != '/') {
        char shown[700];
        return moe_fail(MOE_EINVAL, "%s must be an absolute path beneath the worker's data "
                        "roots", data_name_str(name, NULL, shown, sizeof shown));
    }
    const char *rest = NULL;
    int i = root_of(r, path, &rest);
    if (i < 0) return outside(r, name);
    return open_checked(r, name, NULL, r->v[i].fd, rest, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
                        0, fd, is_dir);
}

moe_status data_entry_open(const struct data_roots *r, const struct data_name *name, int dirfd,
                           const char *rel, int want_dir, int *fd) {
    int is_dir;
    return open_checked(r, name, rel, dirfd, rel,
                        RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                        want_dir ? S_IFDIR : S_IFREG, fd, &is_dir);
}

/* Reads fd to its end into *buf (malloc'd, *len bytes), starting with room for `hint`. */
static moe_status read_whole(int fd, size_t hint, const char *shown, uint8_t **buf, size_t *len) {
    size_t cap = hint > 0 && hint < SIZE_MAX / 2 ? hint + 1 : 4096, n = 0;
    uint8_t *p = malloc(cap);
    for (;;) {
        if (p && n == cap) {
            uint8_t *q = cap < SIZE_MAX / 2 ? realloc(p, cap * 2) : NULL;
            if (!q) free(p);
            p = q;
            cap *= 2;
        }
        if (!p) return moe_fail(MOE_ENOMEM, "%s: out of memory", shown);
        ssize_t r = read(fd, p + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(p);
            return moe_fail(MOE_EIO, "%s: %s", shown, strerror(e));
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *buf = p;
    *len = n;
    return MOE_OK;
}

moe_status data_read_file(const struct data_roots *roots, const char *field, const char *path,
                          uint8_t **bytes, size_t *n) {
    char shown[700];
    struct data_name name = {field, path};
    data_name_str(&name, NULL, shown, sizeof shown);
    int fd, is_dir;
    CHECK(data_path_open(roots, &name, &fd, &is_dir));
    if (is_dir) {
        close(fd);
        return moe_fail(MOE_EINVAL, "%s: is a directory, not a file", shown);
    }
    struct stat st;
    size_t hint = fstat(fd, &st) == 0 && st.st_size > 0 ? (size_t)st.st_size : 0;
    moe_status res = read_whole(fd, hint, shown, bytes, n);
    close(fd);
    return res;
}
