/*
 * safetensors.h — reading and writing .safetensors files (the trained model's format).
 *
 * Owns: the file format: an 8-byte little-endian header length, a JSON header (parsed with
 * cJSON) mapping tensor names to {dtype, shape, data_offsets} plus an optional "__metadata__"
 * map of strings, padded with spaces to a multiple of 8, then the raw little-endian data.
 * Writes go to a temporary file in the same directory that is renamed into place, so a failed
 * write never leaves a partial file under the requested name.
 * Never: interprets tensor names or knows about the model; model_io.c does that.
 */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include "fileio.h"
#include "status.h"

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_NAME_MAX 256

enum st_dtype { ST_F32 = 0, ST_F64, ST_I32, ST_I64, ST_BF16, ST_F16, ST_U8 };

struct st_tensor_out {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; // ndim-product * dtype size bytes
};

struct st_meta {
    const char *key, *value;
};

/* Writes tensors (in the order given) and metadata atomically to path (mode 0644). */
moe_status st_write(const char *path, const struct st_tensor_out *tensors, int n_tensors,
                    const struct st_meta *meta, int n_meta);
/* The same into an atomic file the caller began (where, its mode, durable or not) and then
 * commits; on failure the file is dropped (common/fileio.h). */
moe_status st_write_into(struct moe_atomic_file *f, const struct st_tensor_out *tensors,
                         int n_tensors, const struct st_meta *meta, int n_meta);

struct st_tensor {
    char name[ST_NAME_MAX];
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; // points into the loaded file
    size_t nbytes;
};

struct st_file {
    char path[1024];
    uint8_t *buf; // the whole file
    size_t size;
    int n_tensors;
    struct st_tensor *tensors;
    int n_meta;
    char **meta_keys, **meta_values;
};

/* Loads and validates the whole file: header JSON well formed, every dtype known, offsets
 * in bounds, non-overlapping and covering the data section, byte counts matching shapes.
 * Failures are MOE_EIO (cannot read) or MOE_EFORMAT, the message naming the file and the fault. */
moe_status st_read(struct st_file *f, const char *path);
/* The same from an open file (closed before returning, whatever the outcome); `path` names it
 * in errors (a file opened beneath a worker's data roots). */
moe_status st_read_fd(struct st_file *f, int fd, const char *path);
void st_close(struct st_file *f);

/* NULL when absent. */
const struct st_tensor *st_find(const struct st_file *f, const char *name);
const char *st_meta_get(const struct st_file *f, const char *key);

/* Checks that tensor `name` exists with the given dtype and shape; the error names both the
 * expected and the found shape. */
moe_status st_expect(const struct st_file *f, const char *name, enum st_dtype dtype, int ndim,
                     const int64_t *shape, const struct st_tensor **out);

const char *st_dtype_name(enum st_dtype d);
size_t st_dtype_size(enum st_dtype d);

#endif
