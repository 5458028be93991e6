/*
 * data_roots.h — where a worker may read training data, and opening a source path safely.
 *
 * Owns: a worker's data roots (directories given with --data-root, each held open from
 * startup), the files it must never read even inside a root (its own secrets, by identity),
 * and opening a data path: beneath a root with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
 * so that "..", absolute symlinks and symlinks that leave the root fail, then checked on the
 * open file (fstat, fstatfs): only regular files and directories, never a kernel filesystem
 * (proc, sysfs, debugfs, ...), a device, a FIFO or a socket. Without roots (`moectl train`:
 * the user's own files, read as the user) any path is opened, with the same type checks.
 * A refused path outside the roots gets one message whatever the file is (there or not,
 * readable or not, its type or size): "data.sources[1].path '/etc/shadow' is outside the
 * worker's data roots". Inside a root the errors say what is wrong.
 * Never: reads a data source (data.c does; data_read_file reads one small whole file), or
 * decides by the text of a path alone what it reaches.
 * See docs/security-data-roots.md.
 */
#ifndef MOE_DATA_ROOTS_H
#define MOE_DATA_ROOTS_H

#include "../../common/status.h"

#include <stddef.h>
#include <stdint.h>

struct data_roots;

/* Opens the n directories (each must exist, be a directory and not on a kernel filesystem);
 * n == 0 is a worker that reads no file at all. */
moe_status data_roots_open(struct data_roots **out, const char *const *dirs, int n);
void data_roots_close(struct data_roots *r);
int data_roots_count(const struct data_roots *r);
const char *data_roots_dir(const struct data_roots *r, int i); // as given

/* A secret of the daemon (its token file, its TLS key): never read, even through a hard link
 * inside a root; and MOE_EINVAL when the directory that holds it lies inside a root (its
 * neighbours are secrets too). `what` names it in that error ("--cluster-token-file"). A
 * path that does not exist is no error. */
moe_status data_roots_guard(struct data_roots *r, const char *path, const char *what);

/* How a path is named in errors: `field` ("data.sources[1].path") with roots, else "data". */
struct data_name {
    const char *field; // NULL: unconfined, messages read "data: PATH: ..."
    const char *path;  // the source as the spec gave it
};

/* Opens a source path (r NULL: anywhere) for reading: *fd (O_RDONLY, close-on-exec) and
 * *is_dir. MOE_EINVAL or MOE_EIO naming it when refused. */
moe_status data_path_open(const struct data_roots *r, const struct data_name *name, int *fd,
                          int *is_dir);

/* Opens `rel` ("sub/a.txt", found by listing a source directory open at dirfd) beneath dirfd,
 * following no symlink, with the same checks; want_dir: a directory, else a regular file.
 * Errors name it as the source's path joined with rel. */
moe_status data_entry_open(const struct data_roots *r, const struct data_name *name, int dirfd,
                           const char *rel, int want_dir, int *fd);

/* Reads the whole regular file `path` beneath the roots (NULL: anywhere) into *bytes
 * (malloc'd), in one go (a small file: an index, a tokenizer); errors name it as "FIELD 'PATH'". */
moe_status data_read_file(const struct data_roots *roots, const char *field, const char *path,
                          uint8_t **bytes, size_t *n);

/* Writes "data: PATH/REL" or "FIELD 'PATH/REL'" (rel NULL or ""): how errors name a file. */
const char *data_name_str(const struct data_name *name, const char *rel, char *out, size_t cap);

#endif
