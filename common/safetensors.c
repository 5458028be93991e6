#include "safetensors.h"
#include "fileio.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is not a model header but a corrupted length field. */
#define ST_HEADER_MAX (100u * 1000u * 1000u)
/* JSON numbers are doubles: integers above 2^53 cannot be represented exactly. */
#define ST_INT_MAX 9007199254740992.0

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_F32] = {"F32", 4}, [ST_F64] = {"F64", 8},  [ST_I32] = {"I32", 4}, [ST_I64] = {"I64", 8},
    [ST_BF16] = {"BF16", 2}, [ST_F16] = {"F16", 2}, [ST_U8] = {"U8", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *st_dtype_name(enum st_dtype d) {
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].name : "?";
}

size_t st_dtype_size(enum st_dtype d) {
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].size : 0;
}

static int dtype_from_name(const char *name, enum st_dtype *out) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(dtypes[i].name, name) == 0) {
            *out = (enum st_dtype)i;
            return 1;
        }
    return 0;
}

/* "[4, 4]" into buf; used by every message that shows a shape. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf + len, cap - len, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

/* Product of the dims times the element size; *ok = 0 when a dim is negative or the product
 * exceeds `limit`. */
static size_t shape_bytes(int ndim, const int64_t *shape, enum st_dtype dtype, size_t limit,
                          int *ok) {
    *ok = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0) return *ok = 0, 0;
    for (int i = 0; i < ndim; i++)
        if (shape[i] == 0) return 0; // an empty tensor, however large its other dims
    size_t n = st_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if ((uint64_t)shape[i] > limit / n) return *ok = 0, 0;
        n *= (size_t)shape[i];
    }
    return n <= limit ? n : (*ok = 0, 0);
}

/* ---- writing ---- */

static cJSON *int_array(int n, const int64_t *v) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        cJSON *x = cJSON_CreateNumber((double)v[i]);
        if (!x || !cJSON_AddItemToArray(a, x)) {
            cJSON_Delete(x);
            cJSON_Delete(a);
            return NULL;
        }
    }
    return a;
}

/* Tensor i of a write, against the header built so far: its byte size in *nbytes. */
static moe_status check_tensor(const char *path, const cJSON *root, const struct st_tensor_out *t,
                               int i, size_t *nbytes) {
    if (!t->name || strlen(t->name) >= ST_NAME_MAX || strcmp(t->name, "__metadata__") == 0)
        return moe_fail(MOE_EINVAL, "%s: tensor %d has an invalid name", path, i);
    if (cJSON_GetObjectItemCaseSensitive(root, t->name))
        return moe_fail(MOE_EINVAL, "%s: tensor '%s' given twice", path, t->name);
    if ((int)t->dtype < 0 || (int)t->dtype >= N_DTYPES)
        return moe_fail(MOE_EINVAL, "%s: tensor '%s' has unknown dtype %d", path, t->name,
                        (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return moe_fail(MOE_EINVAL, "%s: tensor '%s' has %d dims (at most %d)", path, t->name,
                        t->ndim, ST_MAX_DIMS);
    int ok;
    *nbytes = shape_bytes(t->ndim, t->shape, t->dtype, (size_t)1 << 52, &ok);
    if (!ok) {
        char sh[256];
        return moe_fail(MOE_EINVAL, "%s: tensor '%s' has invalid shape %s", path, t->name,
                        shape_str(sh, sizeof sh, t->ndim, t->shape));
    }
    if (*nbytes > 0 && !t->data)
        return moe_fail(MOE_EINVAL, "%s: tensor '%s' has no data", path, t->name);
    return MOE_OK;
}

/* The header JSON (unpadded), tensor byte sizes in nbytes[]. */
static moe_status build_header(const char *path, const struct st_tensor_out *tensors,
                               int n_tensors, const struct st_meta *meta, int n_meta,
                               size_t *nbytes, char **out) {
    moe_status res = MOE_OK;
    cJSON *root = cJSON_CreateObject();
    if (!root) return moe_fail(MOE_ENOMEM, "%s: out of memory building the header", path);

    if (n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        if (!m) goto nomem;
        for (int i = 0; i < n_meta; i++) {
            if (!meta[i].key || !meta[i].value) {
                res = moe_fail(MOE_EINVAL, "%s: metadata entry %d has no key or value", path, i);
                goto fail;
            }
            if (cJSON_GetObjectItemCaseSensitive(m, meta[i].key)) {
                res = moe_fail(MOE_EINVAL, "%s: metadata key '%s' given twice", path, meta[i].key);
                goto fail;
            }
            if (!cJSON_AddStringToObject(m, meta[i].key, meta[i].value)) goto nomem;
        }
    }

    uint64_t offset = 0;
    for (int i = 0; i < n_tensors; i++) {
        const struct st_tensor_out *t = &tensors[i];
        CHECK_GOTO(check_tensor(path, root, t, i, &nbytes[i]), res, fail);
        int64_t offs[2] = {(int64_t)offset, (int64_t)(offset + nbytes[i])};
        offset += nbytes[i];
        if (offset > ((uint64_t)1 << 52)) {
            res = moe_fail(MOE_EINVAL, "%s: tensors exceed 2^52 bytes", path);
            goto fail;
        }

        cJSON *e = cJSON_AddObjectToObject(root, t->name);
        if (!e || !cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype))) goto nomem;
        cJSON *shape = int_array(t->ndim, t->shape);
        if (!shape || !cJSON_AddItemToObject(e, "shape", shape)) {
            cJSON_Delete(shape);
            goto nomem;
        }
        cJSON *o = int_array(2, offs);
        if (!o || !cJSON_AddItemToObject(e, "data_offsets", o)) {
            cJSON_Delete(o);
            goto nomem;
        }
    }

    *out = cJSON_PrintUnformatted(root);
    if (!*out) goto nomem;
    cJSON_Delete(root);
    return MOE_OK;

nomem:
    res = moe_fail(MOE_ENOMEM, "%s: out of memory building the header", path);
fail:
    cJSON_Delete(root);
    return res;
}

moe_status st_write_into(struct moe_atomic_file *f, const struct st_tensor_out *tensors,
                         int n_tensors, const struct st_meta *meta, int n_meta) {
    const char *path = f->shown;
    moe_status res = MOE_OK;
    char *json = NULL;
    size_t *nbytes = calloc(n_tensors > 0 ? (size_t)n_tensors : 1, sizeof *nbytes);
    if (!nbytes) res = moe_fail(MOE_ENOMEM, "%s: out of memory", path);
    else if (n_tensors < 0 || n_meta < 0)
        res = moe_fail(MOE_EINVAL, "%s: negative tensor or metadata count", path);
    else
        res = build_header(path, tensors, n_tensors, meta, n_meta, nbytes, &json);
    if (res != MOE_OK) {
        moe_atomic_abort(f);
        goto exit;
    }
    size_t json_len = strlen(json);
    size_t header_len = (json_len + 7) / 8 * 8; // data starts 8-aligned in the file
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    static const char spaces[] = "        ";
    CHECK_GOTO(moe_atomic_write(f, len_le, sizeof len_le), res, exit);
    CHECK_GOTO(moe_atomic_write(f, json, json_len), res, exit);
    CHECK_GOTO(moe_atomic_write(f, spaces, header_len - json_len), res, exit);
    for (int i = 0; i < n_tensors; i++)
        if (nbytes[i] > 0) CHECK_GOTO(moe_atomic_write(f, tensors[i].data, nbytes[i]), res, exit);
exit:
    free(json);
    free(nbytes);
    return res;
}

moe_status st_write(const char *path, const struct st_tensor_out *tensors, int n_tensors,
                    const struct st_meta *meta, int n_meta) {
    struct moe_atomic_file f;
    CHECK(moe_atomic_begin(&f, path, 0644)); // a model is meant to be shared
    CHECK(st_write_into(&f, tensors, n_tensors, meta, n_meta));
    return moe_atomic_commit(&f);
}

/* ---- reading ---- */

static moe_status read_whole_fd(int fd, const char *path, uint8_t **buf, size_t *size);

static moe_status read_whole_file(const char *path, uint8_t **buf, size_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_fail(MOE_EIO, "%s: %s", path, strerror(errno));
    return read_whole_fd(fd, path, buf, size);
}

/* Reads all of fd (closed before returning); `path` names it in errors. */
static moe_status read_whole_fd(int fd, const char *path, uint8_t **buf, size_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0) goto io_error;
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return moe_fail(MOE_EIO, "%s: not a regular file", path);
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    uint8_t *b = malloc(cap);
    if (!b) {
        close(fd);
        return moe_fail(MOE_ENOMEM, "%s: out of memory reading %zu bytes", path, cap);
    }
    for (;;) {
        if (n == cap) { // the file grew while we read it
            uint8_t *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                close(fd);
                return moe_fail(MOE_ENOMEM, "%s: out of memory", path);
            }
            b = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, b + n, cap - n);
        if (r < 0) {
            if (errno == EINTR) continue;
            free(b);
            goto io_error;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    *buf = b;
    *size = n;
    return MOE_OK;

io_error:;
    int e = errno;
    close(fd);
    return moe_fail(MOE_EIO, "%s: %s", path, strerror(e));
}

/* A non-negative integer that a JSON double holds exactly. */
static int json_uint(const cJSON *x, int64_t *out) {
    if (!cJSON_IsNumber(x)) return 0;
    double v = x->valuedouble;
    if (!(v >= 0 && v <= ST_INT_MAX) || floor(v) != v) return 0;
    *out = (int64_t)v;
    return 1;
}

struct span {
    size_t begin, end;
    int tensor;
};

static int span_cmp(const void *a, const void *b) {
    const struct span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int name_cmp(const void *a, const void *b) {
    const struct st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static moe_status parse_tensor(const char *path, const cJSON *e, struct st_tensor *t,
                               const uint8_t *data, size_t data_size, struct span *sp) {
    char sh[256];
    if (!cJSON_IsObject(e))
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' is not an object", path, t->name);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' has no dtype string", path, t->name);
    if (!dtype_from_name(dt->valuestring, &t->dtype))
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' has unsupported dtype '%.32s'", path,
                        t->name, dt->valuestring);

    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(shape))
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' has no shape array", path, t->name);
    int ndim = cJSON_GetArraySize(shape);
    if (ndim > ST_MAX_DIMS)
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' has %d dims (at most %d)", path, t->name,
                        ndim, ST_MAX_DIMS);
    t->ndim = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, shape) {
        if (!json_uint(x, &t->shape[t->ndim]))
            return moe_fail(MOE_EFORMAT,
                            "%s: tensor '%s' shape entry %d is not a non-negative integer", path,
                            t->name, t->ndim);
        t->ndim++;
    }

    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    int64_t o[2];
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !json_uint(cJSON_GetArrayItem(offs, 0), &o[0]) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &o[1]))
        return moe_fail(MOE_EFORMAT,
                        "%s: tensor '%s' data_offsets is not a pair of non-negative integers",
                        path, t->name);
    if (o[0] > o[1] || (uint64_t)o[1] > data_size)
        return moe_fail(MOE_EFORMAT,
                        "%s: tensor '%s' data_offsets [%lld, %lld] lie outside the %zu-byte "
                        "data section",
                        path, t->name, (long long)o[0], (long long)o[1], data_size);

    int ok;
    size_t want = shape_bytes(t->ndim, t->shape, t->dtype, (size_t)1 << 62, &ok);
    if (!ok || want != (size_t)(o[1] - o[0])) {
        char need[64];
        if (ok) snprintf(need, sizeof need, "%zu bytes", want);
        else snprintf(need, sizeof need, "more than 2^62 bytes");
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' data_offsets [%lld, %lld] do not match "
                                     "shape %s of %s (%s)",
                        path, t->name, (long long)o[0], (long long)o[1],
                        shape_str(sh, sizeof sh, t->ndim, t->shape), st_dtype_name(t->dtype), need);
    }
    t->data = data + o[0];
    t->nbytes = want;
    sp->begin = (size_t)o[0];
    sp->end = (size_t)o[1];
    return MOE_OK;
}

static moe_status parse_meta(struct st_file *f, const cJSON *m) {
    if (!cJSON_IsObject(m))
        return moe_fail(MOE_EFORMAT, "%s: __metadata__ is not an object", f->path);
    int n = cJSON_GetArraySize(m);
    f->meta_keys = calloc((size_t)n + 1, sizeof *f->meta_keys);
    f->meta_values = calloc((size_t)n + 1, sizeof *f->meta_values);
    if (!f->meta_keys || !f->meta_values) return moe_fail(MOE_ENOMEM, "%s: out of memory", f->path);
    const cJSON *x;
    cJSON_ArrayForEach(x, m) {
        if (!cJSON_IsString(x))
            return moe_fail(MOE_EFORMAT, "%s: __metadata__ entry '%.64s' is not a string",
                            f->path, x->string);
        f->meta_keys[f->n_meta] = strdup(x->string);
        f->meta_values[f->n_meta] = strdup(x->valuestring);
        if (!f->meta_keys[f->n_meta] || !f->meta_values[f->n_meta]) {
            f->n_meta++; // so that st_close frees the one that was allocated
            return moe_fail(MOE_ENOMEM, "%s: out of memory", f->path);
        }
        f->n_meta++;
    }
    return MOE_OK;
}

/* The 8-byte header size and what it allows: *hlen, the JSON header's length. */
static moe_status header_size(const struct st_file *f, uint64_t *hlen) {
    const char *path = f->path;
    if (f->size < 8)
        return moe_fail(MOE_EFORMAT,
                        "%s: not a safetensors file (%zu bytes, shorter than the 8-byte header "
                        "size)",
                        path, f->size);
    *hlen = 0;
    for (int i = 0; i < 8; i++) *hlen |= (uint64_t)f->buf[i] << (8 * i);
    if (*hlen > f->size - 8)
        return moe_fail(MOE_EFORMAT,
                        "%s: not a safetensors file (header size %llu exceeds file size %zu)",
                        path, (unsigned long long)*hlen, f->size);
    if (*hlen > ST_HEADER_MAX)
        return moe_fail(MOE_EFORMAT,
                        "%s: not a safetensors file (header size %llu exceeds the limit of %u)",
                        path, (unsigned long long)*hlen, ST_HEADER_MAX);
    if (*hlen < 2)
        return moe_fail(MOE_EFORMAT, "%s: not a safetensors file (header size %llu)", path,
                        (unsigned long long)*hlen);
    if (memchr(f->buf + 8, '\0', *hlen))
        return moe_fail(MOE_EFORMAT, "%s: header contains a NUL byte", path);
    return MOE_OK;
}

/* The header as a JSON object, nothing after it but white space. *root is the caller's. */
static moe_status header_json(const struct st_file *f, uint64_t hlen, cJSON **root) {
    const char *path = f->path;
    *root = NULL;
    /* A terminated copy: cJSON must never look past the header, whatever it holds. */
    char *text = malloc(hlen + 1);
    if (!text) return moe_fail(MOE_ENOMEM, "%s: out of memory", path);
    memcpy(text, f->buf + 8, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    moe_status res = MOE_OK;
    *root = cJSON_ParseWithLengthOpts(text, hlen, &end, 0);
    if (!*root) {
        long at = end ? (long)(end - text) : 0;
        res = moe_fail(MOE_EFORMAT, "%s: header is not valid JSON (near byte %ld)", path, at);
        goto exit;
    }
    for (const char *p = end; p < text + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            res = moe_fail(MOE_EFORMAT, "%s: header has trailing bytes after the JSON (byte %ld)",
                           path, (long)(p - text));
            goto exit;
        }
    if (!cJSON_IsObject(*root))
        res = moe_fail(MOE_EFORMAT, "%s: header is not a JSON object", path);
exit:
    free(text);
    return res;
}

/* Every entry of the header: the metadata, and each tensor with its span of the data. */
static moe_status parse_entries(struct st_file *f, const cJSON *root, const uint8_t *data,
                                size_t data_size, struct span *spans) {
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            CHECK(parse_meta(f, e));
            continue;
        }
        struct st_tensor *t = &f->tensors[f->n_tensors];
        if (strlen(e->string) >= ST_NAME_MAX)
            return moe_fail(MOE_EFORMAT, "%s: tensor name '%.40s...' is %zu bytes (at most %d)",
                            f->path, e->string, strlen(e->string), ST_NAME_MAX - 1);
        strcpy(t->name, e->string);
        spans[f->n_tensors].tensor = f->n_tensors;
        CHECK(parse_tensor(f->path, e, t, data, data_size, &spans[f->n_tensors]));
        f->n_tensors++;
    }
    return MOE_OK;
}

/* The tensors must tile the data section exactly: no overlap, no gap, no trailing bytes. */
static moe_status check_tiling(const struct st_file *f, struct span *spans, int n,
                               size_t data_size) {
    qsort(spans, (size_t)n, sizeof *spans, span_cmp);
    size_t covered = 0;
    for (int i = 0; i < n; i++) {
        const struct span *s = &spans[i];
        if (s->begin < covered) {
            const struct span *prev = &spans[i - 1];
            return moe_fail(MOE_EFORMAT,
                            "%s: tensors '%s' [%zu, %zu] and '%s' [%zu, %zu] overlap", f->path,
                            f->tensors[prev->tensor].name, prev->begin, prev->end,
                            f->tensors[s->tensor].name, s->begin, s->end);
        }
        if (s->begin > covered)
            return moe_fail(MOE_EFORMAT, "%s: data bytes [%zu, %zu) belong to no tensor",
                            f->path, covered, s->begin);
        covered = s->end;
    }
    if (covered != data_size)
        return moe_fail(MOE_EFORMAT, "%s: data bytes [%zu, %zu) belong to no tensor", f->path,
                        covered, data_size);
    return MOE_OK;
}

/* cJSON keeps duplicate keys; a file that names a tensor twice is ambiguous. */
static moe_status check_unique(const struct st_file *f) {
    int n = f->n_tensors;
    struct st_tensor *sorted = malloc(((size_t)n + 1) * sizeof *sorted);
    if (!sorted) return moe_fail(MOE_ENOMEM, "%s: out of memory", f->path);
    memcpy(sorted, f->tensors, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, name_cmp);
    moe_status res = MOE_OK;
    for (int i = 1; i < n && res == MOE_OK; i++)
        if (strcmp(sorted[i - 1].name, sorted[i].name) == 0)
            res = moe_fail(MOE_EFORMAT, "%s: tensor '%s' appears twice", f->path, sorted[i].name);
    free(sorted);
    return res;
}

static moe_status parse_file(struct st_file *f) {
    uint64_t hlen = 0;
    CHECK(header_size(f, &hlen));
    cJSON *root = NULL;
    struct span *spans = NULL;
    moe_status res;
    CHECK_GOTO(header_json(f, hlen, &root), res, exit);
    const uint8_t *data = f->buf + 8 + hlen;
    size_t data_size = f->size - 8 - (size_t)hlen;
    int n = 0, n_meta_objs = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) n_meta_objs++;
        else n++;
    }
    if (n_meta_objs > 1) {
        res = moe_fail(MOE_EFORMAT, "%s: header has more than one __metadata__", f->path);
        goto exit;
    }
    f->tensors = calloc((size_t)n + 1, sizeof *f->tensors);
    spans = calloc((size_t)n + 1, sizeof *spans);
    if (!f->tensors || !spans) {
        res = moe_fail(MOE_ENOMEM, "%s: out of memory", f->path);
        goto exit;
    }
    CHECK_GOTO(parse_entries(f, root, data, data_size, spans), res, exit);
    CHECK_GOTO(check_tiling(f, spans, n, data_size), res, exit);
    res = check_unique(f);
exit:
    free(spans);
    cJSON_Delete(root);
    return res;
}

static moe_status read_and_parse(struct st_file *f, const char *path, int fd) {
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    moe_status res = fd < 0 ? read_whole_file(path, &f->buf, &f->size)
                            : read_whole_fd(fd, path, &f->buf, &f->size);
    if (res == MOE_OK) res = parse_file(f);
    if (res != MOE_OK) {
        st_close(f);
        /* Names in the message come from the file: keep the message one printable line. */
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        for (char *c = msg; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
        moe_fail(res, "%s", msg);
    }
    return res;
}

moe_status st_read(struct st_file *f, const char *path) { return read_and_parse(f, path, -1); }

moe_status st_read_fd(struct st_file *f, int fd, const char *path) {
    return read_and_parse(f, path, fd);
}

void st_close(struct st_file *f) {
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    free(f->tensors);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

const struct st_tensor *st_find(const struct st_file *f, const char *name) {
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *st_meta_get(const struct st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

moe_status st_expect(const struct st_file *f, const char *name, enum st_dtype dtype, int ndim,
                     const int64_t *shape, const struct st_tensor **out) {
    const struct st_tensor *t = st_find(f, name);
    if (out) *out = NULL;
    if (!t) return moe_fail(MOE_ENOTFOUND, "%s: no tensor '%s'", f->path, name);
    int same = t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[256], got[256];
        return moe_fail(MOE_EFORMAT, "%s: tensor '%s' is %s %s, expected %s %s", f->path, name,
                        shape_str(got, sizeof got, t->ndim, t->shape), st_dtype_name(t->dtype),
                        shape_str(want, sizeof want, ndim, shape), st_dtype_name(dtype));
    }
    if (out) *out = t;
    return MOE_OK;
}
