/*
 * fileio.h — files and directories: written so that readers see all of a file or none of it,
 * made with their parents, hashed.
 *
 * Owns: the one atomic writer of moed (a temporary file beside the target, made exclusively
 * with a random name, written whole, given its mode, then renamed over the target; on request
 * durable: the file synced before the rename and its directory after; a directory synced after
 * a caller's own rename), the loop that writes a
 * buffer through short writes and EINTR, making a directory with its parents, opening a
 * directory beneath another without leaving it (openat2 RESOLVE_BENEATH, no symlinks), and
 * the SHA-256 of a file (OpenSSL's libcrypto). Every file another process reads while it may
 * be rewritten goes through here: models, their .json sidecars, address files, cluster state,
 * training state, exported slot states.
 * Never: decides where files go or whether they must be durable (the coordinator's store has
 * RocksDB for its own), or logs: failures come back as a moe_status whose message names the
 * file.
 */
#ifndef MOE_FILEIO_H
#define MOE_FILEIO_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* A file being written under a temporary name. */
struct moe_atomic_file {
    int fd;
    int dirfd;   // the directory path and tmp are relative to (AT_FDCWD: the process's)
    int durable; // commit syncs the file before the rename and the directory after it
    char *path;  // the target
    char *tmp;   // the temporary beside it
    char *shown; // how errors name the target (path, or the caller's full name for it)
};

/* Creates the temporary file (mode `mode`, whatever the umask). MOE_EIO names path. */
moe_status moe_atomic_begin(struct moe_atomic_file *f, const char *path, mode_t mode);
/* The same beneath the open directory dirfd (O_RDONLY, so that it can be synced when durable;
 * not taken over): `name` is one entry of it, followed nowhere if it is a symlink; errors name
 * it as `shown`. */
moe_status moe_atomic_begin_at(struct moe_atomic_file *f, int dirfd, const char *name,
                               const char *shown, mode_t mode, int durable);
/* Appends n bytes. On failure the file is dropped (moe_atomic_commit then fails too). */
moe_status moe_atomic_write(struct moe_atomic_file *f, const void *buf, size_t n);
/* Closes and renames the temporary over the target; on any failure removes it. */
moe_status moe_atomic_commit(struct moe_atomic_file *f);
/* Drops the temporary file (safe after a failed write or commit, and twice). */
void moe_atomic_abort(struct moe_atomic_file *f);

/* The whole file in one call: `n` bytes of `data`. */
moe_status moe_write_file_atomic(const char *path, const void *data, size_t n, mode_t mode);

/* fsync of the directory that holds path (after a rename into it, so that the new name
 * survives a crash): 0, or -1 with errno set. */
int moe_sync_parent(const char *path);

/* Writes all n bytes to fd (short writes and EINTR retried): 0, or -1 with errno set. */
int moe_write_all(int fd, const void *buf, size_t n);

/* Creates the directory and its missing parents (mode for the ones it makes); MOE_EIO names
 * the one it could not make, or a path that exists and is not a directory. */
moe_status moe_mkdir_p(const char *path, mode_t mode);

/* openat2(2) (glibc 2.36 has no wrapper): -1 with errno as the kernel set it. A rename racing
 * the walk of ".." (EAGAIN) is retried; without openat2 (kernel < 5.6) an unconfined open
 * (resolve 0) is a plain openat, a confined one fails with ENOSYS. O_CLOEXEC is always added. */
int moe_openat2(int dirfd, const char *path, int flags, uint64_t resolve);

/* Opens the directory `rel` ("a/b", "" or NULL: root itself) beneath the open directory rootfd
 * (O_RDONLY | O_DIRECTORY into *out), making the missing ones (mode) when `create`. No
 * component may be "..", a symlink or leave rootfd (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS):
 * MOE_EINVAL naming `shown` (how the caller names root/rel) and the component; MOE_EIO for
 * what the filesystem refused. */
moe_status moe_dir_open_beneath(int rootfd, const char *rel, int create, mode_t mode,
                                const char *shown, int *out);

/* SHA-256 of the file at path and its size in bytes. */
moe_status moe_file_sha256(const char *path, unsigned char sha[32], int64_t *size);

#endif
