/*
 * fileio.h — files and directories: written so that readers see all of a file or none of it,
 * made with their parents, hashed.
 *
 * Owns: the one atomic writer of moed (a temporary file beside the target, made with mkstemp,
 * written whole, given its mode, then renamed over the target), the loop that writes a buffer
 * through short writes and EINTR, making a directory with its parents, and the SHA-256 of a
 * file (OpenSSL's libcrypto). Every file another process reads while it may be rewritten goes
 * through here: models, their .json sidecars, address files, cluster state, training state.
 * Never: syncs to disk (callers that need durability fsync themselves: the coordinator's
 * store has RocksDB for that), decides where files go, or logs: failures come back as a
 * moe_status whose message names the file.
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
    char *path; // the target
    char *tmp;  // the temporary beside it
};

/* Creates the temporary file (mode `mode`, whatever the umask). MOE_EIO names path. */
moe_status moe_atomic_begin(struct moe_atomic_file *f, const char *path, mode_t mode);
/* Appends n bytes. On failure the file is dropped (moe_atomic_commit then fails too). */
moe_status moe_atomic_write(struct moe_atomic_file *f, const void *buf, size_t n);
/* Closes and renames the temporary over the target; on any failure removes it. */
moe_status moe_atomic_commit(struct moe_atomic_file *f);
/* Drops the temporary file (safe after a failed write or commit, and twice). */
void moe_atomic_abort(struct moe_atomic_file *f);

/* The whole file in one call: `n` bytes of `data`. */
moe_status moe_write_file_atomic(const char *path, const void *data, size_t n, mode_t mode);

/* Writes all n bytes to fd (short writes and EINTR retried): 0, or -1 with errno set. */
int moe_write_all(int fd, const void *buf, size_t n);

/* Creates the directory and its missing parents (mode for the ones it makes); MOE_EIO names
 * the one it could not make, or a path that exists and is not a directory. */
moe_status moe_mkdir_p(const char *path, mode_t mode);

/* SHA-256 of the file at path and its size in bytes. */
moe_status moe_file_sha256(const char *path, unsigned char sha[32], int64_t *size);

#endif
