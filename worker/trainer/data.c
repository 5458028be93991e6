#include "data.h"
#include "../../kernels/mix64.h"
#include "data_roots.h"
#include "tokens.h"

#include "../../common/log.h"
#include "../../common/tokenizer.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A file whose first BINARY_PROBE bytes hold a NUL is not text (fortune's .dat indexes,
 * images, compiled files that sit beside a corpus). */
#define BINARY_PROBE 4096
/* Files read into the heap are read this much at a time, the stop flag checked in between. */
#define READ_CHUNK (1 << 20)

/* ---- loading ---- */

/* One source being loaded: how it may be read, how errors name it, the stream it fills. */
struct loader {
    const struct data_roots *roots; // NULL: any path
    const atomic_int *cancel;       // non-zero: stop
    struct data_name name;
    struct data_stream *s;
    int cap;      // of s->segments
    int n_copied; // files read into the heap
};

static moe_status stopped(const struct loader *l) {
    if (l->cancel && atomic_load(l->cancel) != 0)
        return moe_fail(MOE_ECANCELED, "data: loading %s stopped", l->name.path);
    return MOE_OK;
}

/* Heap copies, for the files that cannot be mapped (see add_file). */
struct bytebuf {
    uint8_t *p;
    size_t n, cap;
};

static int bytebuf_reserve(struct bytebuf *b, size_t extra) {
    if (b->cap - b->n >= extra) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->n < extra) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Reads fd from its current offset to EOF into b, READ_CHUNK at a time so that a stop is
 * seen; `hint` is the size fstat reported. The file was opened O_NONBLOCK: one with nothing
 * to read yet (a kernel file such as /proc/kmsg, which `moectl train` may be given) is an
 * error rather than a wait that never ends. */
static moe_status read_to_end(const struct loader *l, int fd, const char *rel, size_t hint,
                              struct bytebuf *b) {
    char shown[700];
    /* Room for the whole file and one more byte, so that the read seeing EOF needs no growth. */
    size_t want = hint > 0 && hint < SIZE_MAX ? hint + 1 : 4096;
    for (;;) {
        CHECK(stopped(l));
        /* Grows again only when the file grew under us (or stat gave no size). */
        if ((want > 0 || b->n == b->cap) && bytebuf_reserve(b, want > 0 ? want : 4096) != 0)
            return moe_fail(MOE_ENOMEM, "%s: out of memory",
                            data_name_str(&l->name, rel, shown, sizeof shown));
        want = 0;
        size_t room = b->cap - b->n < READ_CHUNK ? b->cap - b->n : READ_CHUNK;
        ssize_t r = read(fd, b->p + b->n, room);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return moe_fail(MOE_EINVAL, "%s: has nothing to read yet (not a file of data)",
                                data_name_str(&l->name, rel, shown, sizeof shown));
            return moe_fail(MOE_EIO, "%s: %s", data_name_str(&l->name, rel, shown, sizeof shown),
                            strerror(errno));
        }
        if (r == 0) return MOE_OK;
        b->n += (size_t)r;
    }
}

static void segment_release(struct data_segment *g) {
    if (g->mapped) munmap((void *)g->bytes, g->n);
    else free((void *)g->bytes);
}

static moe_status push_segment(struct loader *l, struct data_segment g) {
    struct data_stream *s = l->s;
    if (s->n_segments == l->cap) {
        int c = l->cap ? l->cap * 2 : 16;
        struct data_segment *p = realloc(s->segments, (size_t)c * sizeof *p);
        if (!p) return moe_fail(MOE_ENOMEM, "data: %s: out of memory", l->name.path);
        s->segments = p;
        l->cap = c;
    }
    g.start = s->n;
    s->segments[s->n_segments++] = g;
    s->n += g.n;
    return MOE_OK;
}

/* The bytes of the open file fd (regular, checked by data_roots.c): mapped, or read into the
 * heap where mapping fails or the file reports size 0 (see add_file). */
static moe_status file_bytes(struct loader *l, int fd, const char *rel, struct data_segment *g) {
    char shown[700];
    struct stat st;
    if (fstat(fd, &st) != 0)
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(&l->name, rel, shown, sizeof shown),
                        strerror(errno));
    size_t size = st.st_size > 0 ? (size_t)st.st_size : 0;
    if (st.st_size > 0 && (off_t)size != st.st_size)
        return moe_fail(MOE_EINVAL, "%s: too large to map",
                        data_name_str(&l->name, rel, shown, sizeof shown));
    if (size > 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            g->bytes = p;
            g->n = size;
            g->mapped = 1;
            return MOE_OK;
        }
        LOG_DEBUG("%s: cannot map (%s), reading it into memory",
                  data_name_str(&l->name, rel, shown, sizeof shown), strerror(errno));
        l->n_copied++;
    }
    struct bytebuf b = {0};
    moe_status res = read_to_end(l, fd, rel, size, &b);
    if (res != MOE_OK) {
        free(b.p);
        return res;
    }
    g->bytes = b.p;
    g->n = b.n;
    return MOE_OK;
}

/* Appends the open file fd (closed here) to the stream as one segment, or none when it is
 * empty (an empty file still counts in n_files). With `text_only`, a file whose first
 * BINARY_PROBE bytes hold a NUL is left out and not counted.
 *
 * The file is mapped, not read: only the pages a batch touches are ever read, and they live
 * in the page cache, shared with every other process that maps the file. The mapping stays
 * valid after close(). A file that shrinks while mapped makes the pages past its new end raise
 * SIGBUS when read — corpora must not be truncated while a job reads them.
 * Two kinds of file are read into the heap instead, so that they load as they always have:
 * files that report size 0 yet hold bytes (procfs, sysfs: only without data roots), and files
 * that cannot be mapped (a filesystem without mmap, or more files than vm.max_map_count
 * allows mappings). */
static moe_status add_file(struct loader *l, int fd, const char *rel, int text_only) {
    struct data_segment g = {0};
    moe_status res = file_bytes(l, fd, rel, &g);
    close(fd);
    if (res != MOE_OK) return res;
    struct data_stream *s = l->s;
    if (g.n == 0) {
        segment_release(&g);
        s->n_files++;
        return MOE_OK;
    }
    if (text_only && memchr(g.bytes, '\0', g.n < BINARY_PROBE ? g.n : BINARY_PROBE)) {
        LOG_DEBUG("data: skipping %s/%s (binary)", l->name.path, rel);
        segment_release(&g);
        return MOE_OK;
    }
    /* Batches read short windows at random offsets: readahead would only evict useful pages. */
    if (g.mapped) (void)madvise((void *)g.bytes, g.n, MADV_RANDOM);
    res = push_segment(l, g);
    if (res != MOE_OK) {
        segment_release(&g);
        return res;
    }
    s->n_files++;
    return MOE_OK;
}

struct pathlist {
    char **p;
    int n, cap;
};

static void pathlist_free(struct pathlist *l) {
    for (int i = 0; i < l->n; i++) free(l->p[i]);
    free(l->p);
}

static int pathlist_push(struct pathlist *out, char *path) {
    if (out->n == out->cap) {
        int cap = out->cap ? out->cap * 2 : 64;
        char **p = realloc(out->p, (size_t)cap * sizeof *p);
        if (!p) return -1;
        out->p = p;
        out->cap = cap;
    }
    out->p[out->n++] = path;
    return 0;
}

static int path_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static moe_status walk_dir(struct loader *l, int top, const char *prefix, struct pathlist *out);

/* One entry of a directory being walked: a directory is walked, a regular file collected
 * (its path relative to the source's top directory `top`), anything else skipped. */
static moe_status walk_entry(struct loader *l, int top, int dfd, const char *prefix,
                             const char *name, struct pathlist *out) {
    char shown[700];
    size_t len = strlen(prefix) + 1 + strlen(name) + 1;
    char *rel = malloc(len);
    if (!rel) return moe_fail(MOE_ENOMEM, "data: %s: out of memory", l->name.path);
    snprintf(rel, len, "%s%s%s", prefix, prefix[0] ? "/" : "", name);
    struct stat st;
    if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        moe_status s = moe_fail(MOE_EIO, "%s: %s",
                                data_name_str(&l->name, rel, shown, sizeof shown),
                                strerror(errno));
        free(rel);
        return s;
    }
    moe_status res = MOE_OK;
    if (S_ISDIR(st.st_mode)) {
        res = walk_dir(l, top, rel, out);
    } else if (S_ISREG(st.st_mode)) {
        if (pathlist_push(out, rel) == 0) return MOE_OK;
        res = moe_fail(MOE_ENOMEM, "data: %s: out of memory", l->name.path);
    } else {
        LOG_DEBUG("%s: skipped (%s)", data_name_str(&l->name, rel, shown, sizeof shown),
                  S_ISLNK(st.st_mode) ? "symlink" : "not a regular file");
    }
    free(rel);
    return res;
}

/* Collects the regular files under directory `prefix` of the source open at `top` ("" is top
 * itself), recursively, skipping dot-entries and symlinks. Each directory is opened beneath
 * top without following a symlink (data_entry_open), so the walk never leaves it. */
static moe_status walk_dir(struct loader *l, int top, const char *prefix, struct pathlist *out) {
    char shown[700];
    int dfd = top;
    if (prefix[0]) CHECK(data_entry_open(l->roots, &l->name, top, prefix, 1, &dfd));
    else if ((dfd = dup(top)) < 0)
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(&l->name, NULL, shown, sizeof shown),
                        strerror(errno));
    DIR *d = fdopendir(dfd);
    if (!d) {
        int e = errno;
        close(dfd);
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(&l->name, prefix, shown, sizeof shown),
                        strerror(e));
    }
    moe_status res = MOE_OK;
    for (;;) {
        if ((res = stopped(l)) != MOE_OK) break;
        errno = 0;
        struct dirent *ent = readdir(d);
        if (!ent) {
            if (errno != 0)
                res = moe_fail(MOE_EIO, "%s: %s",
                               data_name_str(&l->name, prefix, shown, sizeof shown),
                               strerror(errno));
            break;
        }
        if (ent->d_name[0] == '.') continue;
        if ((res = walk_entry(l, top, dirfd(d), prefix, ent->d_name, out)) != MOE_OK) break;
    }
    closedir(d);
    return res;
}

static moe_status load_dir(struct loader *l, int top) {
    struct pathlist files = {0};
    moe_status res;
    CHECK_GOTO(walk_dir(l, top, "", &files), res, exit);
    /* One global byte-wise order over the paths, so "a.txt" < "a/b.txt" never depends on the
     * order readdir happens to return. */
    if (files.n > 1) qsort(files.p, (size_t)files.n, sizeof *files.p, path_cmp);
    for (int i = 0; i < files.n; i++) {
        int fd;
        CHECK_GOTO(stopped(l), res, exit);
        CHECK_GOTO(data_entry_open(l->roots, &l->name, top, files.p[i], 0, &fd), res, exit);
        CHECK_GOTO(add_file(l, fd, files.p[i], 1), res, exit);
    }
    if (l->s->n_files == 0) {
        char shown[700];
        res = moe_fail(MOE_EINVAL, "%s: no text files",
                       data_name_str(&l->name, NULL, shown, sizeof shown));
    }
exit:
    pathlist_free(&files);
    return res;
}

static void release_segments(struct data_stream *s) {
    for (int i = 0; i < s->n_segments; i++) segment_release(&s->segments[i]);
    free(s->segments);
    s->segments = NULL;
    s->n_segments = 0;
}

/* Source `index` (-1: a stream for `eval`, not a spec's source) as `a` says it may be read. */
static moe_status load_path(struct data_stream *s, const char *path, int index,
                            const struct data_access *a) {
    memset(s, 0, sizeof *s);
    char field[48];
    snprintf(field, sizeof field, "data.sources[%d].path", index);
    const struct data_roots *roots = a ? a->roots : NULL;
    struct loader l = {.roots = roots, .cancel = a ? a->cancel : NULL, .s = s};
    l.name.field = roots ? field : NULL;
    l.name.path = path;
    if (strlen(path) >= sizeof s->path)
        return moe_fail(MOE_EINVAL, "%s%s%.64s...: path longer than %d bytes",
                        roots ? field : "data", roots ? " '" : ": ", path, SPEC_PATH_MAX - 1);
    strcpy(s->path, path);

    int fd, is_dir;
    moe_status res = stopped(&l);
    if (res == MOE_OK) res = data_path_open(roots, &l.name, &fd, &is_dir);
    if (res == MOE_OK) {
        if (is_dir) {
            res = load_dir(&l, fd);
            close(fd);
        } else {
            res = add_file(&l, fd, NULL, 0);
        }
    }
    char shown[700];
    if (res == MOE_OK && s->n == 0)
        res = moe_fail(MOE_EINVAL, "%s: empty", data_name_str(&l.name, NULL, shown, sizeof shown));
    if (res != MOE_OK) {
        release_segments(s);
        s->n = 0;
        s->n_files = 0;
        return res;
    }
    if (l.n_copied > 0)
        LOG_WARN("data: %s: %d file(s) could not be memory-mapped and were read into private "
                 "memory instead (MOE_LOG_LEVEL=debug names them)",
                 path, l.n_copied);
    s->n_train = s->n;
    s->n_bytes = s->n;
    return MOE_OK;
}

moe_status data_load_stream(struct data_stream *s, const char *path) {
    CHECK(load_path(s, path, -1, NULL));
    LOG_DEBUG("data: %s: %zu bytes from %d file(s)", s->path, s->n, s->n_files);
    return MOE_OK;
}

static void release_ids(struct data_stream *s) {
    if (s->ids_mapped) munmap((void *)s->ids, s->ids_mapped);
    else free((void *)s->ids);
    s->ids = NULL;
    s->ids_mapped = 0;
}

void data_stream_free(struct data_stream *s) {
    release_segments(s);
    release_ids(s);
    memset(s, 0, sizeof *s);
}

/* An open source holds something: a file of at least one byte, or a directory with at least
 * one entry that is not a dot-file. One fstat or the first few readdir entries: never a walk,
 * so RunSlot answers at once however big the corpus (the loader finds the rest). */
static moe_status check_not_empty(const struct data_name *name, int fd, int is_dir) {
    char shown[700];
    if (!is_dir) {
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_size == 0)
            return moe_fail(MOE_EINVAL, "%s: empty",
                            data_name_str(name, NULL, shown, sizeof shown));
        return MOE_OK;
    }
    int dfd = dup(fd);
    DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
    if (!d) {
        int e = errno;
        if (dfd >= 0) close(dfd);
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(name, NULL, shown, sizeof shown),
                        strerror(e));
    }
    struct dirent *ent;
    errno = 0;
    while ((ent = readdir(d)) && ent->d_name[0] == '.') errno = 0;
    int e = errno;
    closedir(d);
    if (ent) return MOE_OK;
    if (e)
        return moe_fail(MOE_EIO, "%s: %s", data_name_str(name, NULL, shown, sizeof shown),
                        strerror(e));
    return moe_fail(MOE_EINVAL, "%s: an empty directory",
                    data_name_str(name, NULL, shown, sizeof shown));
}

moe_status data_check_sources(const struct data_roots *roots, const struct data_spec *spec) {
    for (int j = 0; j < spec->n_sources && j < SPEC_MAX_SOURCES; j++) {
        char field[48];
        snprintf(field, sizeof field, "data.sources[%d].path", j);
        struct data_name name = {field, spec->sources[j].path};
        int fd, is_dir;
        CHECK(data_path_open(roots, &name, &fd, &is_dir));
        moe_status s = check_not_empty(&name, fd, is_dir);
        close(fd);
        CHECK(s);
    }
    /* the tokenizer and the prepared tokens are checked the same cheap way */
    const char *fields[2] = {"data.tokenizer", "data.prepared"};
    const char *paths[2] = {spec->tokenizer, spec->prepared};
    for (int k = 0; k < 2; k++) {
        if (!paths[k][0]) continue;
        struct data_name name = {fields[k], paths[k]};
        int fd, is_dir;
        CHECK(data_path_open(roots, &name, &fd, &is_dir));
        close(fd);
        char shown[700];
        if (is_dir != (k == 1))
            return moe_fail(MOE_EINVAL, "%s: %s", data_name_str(&name, NULL, shown, sizeof shown),
                            k == 1 ? "not a directory (moectl data prepare -o DIR)"
                                   : "a directory, not a tokenizer file");
    }
    return MOE_OK;
}

/* The split of a loaded source into training and held-out parts, checked against T. */
static moe_status split_source(struct data_stream *s, int j, const struct data_spec *spec,
                               int T, const struct data_roots *roots) {
    char field[48], shown[700];
    snprintf(field, sizeof field, "data.sources[%d].path", j);
    struct data_name name = {roots ? field : NULL, s->path};
    data_name_str(&name, NULL, shown, sizeof shown);
    size_t need = (size_t)T + 1;
    size_t held = (size_t)floor((double)s->n * spec->val_fraction);
    const char *unit = s->ids ? "tokens" : "bytes";
    s->n_train = s->n - held;
    if (s->n_train < need)
        return moe_fail(MOE_EINVAL, "%s: training part has %zu %s, fewer than seq_len+1 = %zu",
                        shown, s->n_train, unit, need);
    if (spec->val_fraction > 0 && held < need)
        return moe_fail(MOE_EINVAL,
                        "%s: held-out part (data.val_fraction = %g) has %zu %s, fewer than "
                        "seq_len+1 = %zu",
                        shown, spec->val_fraction, held, unit, need);
    char text[48] = "";
    if (s->ids) snprintf(text, sizeof text, " (%zu bytes of text)", s->n_bytes);
    LOG_INFO("data: %s: %zu %s%s from %d file(s), %zu for training, %zu held out", s->path,
             s->n, unit, text, s->n_files, s->n_train, held);
    return MOE_OK;
}

moe_status data_open_access(struct dataset *d, const struct data_spec *spec, int T,
                            const struct data_access *a) {
    memset(d, 0, sizeof *d);
    if (T < 1) return moe_fail(MOE_EINVAL, "data: seq_len = %d must be at least 1", T);
    if (spec->n_sources < 1 || spec->n_sources > SPEC_MAX_SOURCES)
        return moe_fail(MOE_EINVAL, "data: %d sources (need 1 to %d)", spec->n_sources,
                        SPEC_MAX_SOURCES);
    d->sources = calloc((size_t)spec->n_sources, sizeof *d->sources);
    if (!d->sources) return moe_fail(MOE_ENOMEM, "data: out of memory");
    d->spec = spec;
    d->T = T;

    moe_status res = MOE_OK;
    const struct data_roots *roots = a ? a->roots : NULL;
    if (spec->tokenizer[0])
        CHECK_GOTO(data_tokenizer_open(roots, "data.tokenizer", spec->tokenizer, &d->tok_model,
                                       &d->tok_model_len, &d->tok),
                   res, fail);
    for (int j = 0; j < spec->n_sources; j++) {
        struct data_stream *s = &d->sources[j];
        d->n_sources = j + 1; // so that data_close frees it
        if (spec->prepared[0]) {
            CHECK_GOTO(tokens_load_source(s, d, j, roots), res, fail);
        } else {
            CHECK_GOTO(load_path(s, spec->sources[j].path, j, a), res, fail);
            if (d->tok) CHECK_GOTO(data_tokenize_stream(s, d->tok), res, fail);
        }
        CHECK_GOTO(split_source(s, j, spec, T, roots), res, fail);
    }
    return MOE_OK;

fail:
    data_close(d);
    return res;
}

moe_status data_open(struct dataset *d, const struct data_spec *spec, int T) {
    return data_open_access(d, spec, T, NULL);
}

void data_close(struct dataset *d) {
    for (int j = 0; j < d->n_sources; j++) data_stream_free(&d->sources[j]);
    free(d->sources);
    if (d->tok) tokenizer_free(d->tok);
    free(d->tok_model);
    memset(d, 0, sizeof *d);
}

/* ---- tokens ---- */

moe_status data_tokenizer_open(const struct data_roots *roots, const char *field,
                               const char *path, uint8_t **bytes, size_t *n,
                               struct tokenizer **tok) {
    char shown[700];
    struct data_name name = {field, path};
    data_name_str(&name, NULL, shown, sizeof shown);
    CHECK(data_read_file(roots, field, path, bytes, n));
    moe_status res = tokenizer_load(*bytes, *n, shown, tok);
    if (res != MOE_OK) {
        free(*bytes);
        *bytes = NULL;
    }
    return res;
}

moe_status data_tokenize_stream(struct data_stream *s, const struct tokenizer *tok) {
    uint32_t *ids = NULL;
    size_t n_ids = 0, cap = 0;
    for (int k = 0; k < s->n_segments; k++) {
        const struct data_segment *g = &s->segments[k];
        moe_status res = tokenizer_encode(tok, g->bytes, g->n, &ids, &n_ids, &cap);
        if (res != MOE_OK) {
            free(ids);
            return res;
        }
    }
    release_segments(s);
    s->ids = ids;
    s->tok = tok;
    s->n_bytes = s->n;
    s->n = s->n_train = n_ids;
    return MOE_OK;
}

static uint64_t window_bytes(const struct data_stream *s, size_t off, int T) {
    if (!s->ids) return (uint64_t)T;
    uint64_t sum = 0;
    for (int t = 1; t <= T; t++)
        sum += (uint64_t)tokenizer_token_bytes(s->tok, (int)s->ids[off + t]);
    return sum;
}

/* ---- batches ---- */

void data_weights_at(const struct data_spec *spec, long step, double *weights) {
    int n = spec->n_sources;
    for (int j = 0; j < n; j++) weights[j] = spec->sources[j].weight;
    for (int k = 0; k < spec->n_schedule && spec->schedule[k].step <= step; k++)
        for (int j = 0; j < n; j++) weights[j] = spec->schedule[k].weights[j];
    double sum = 0;
    for (int j = 0; j < n; j++) sum += weights[j] > 0 ? weights[j] : 0;
    for (int j = 0; j < n; j++) {
        /* spec_validate rejects an all-zero mixture; fall back to uniform rather than NaN. */
        if (!(sum > 0)) weights[j] = 1.0 / n;
        else weights[j] = weights[j] > 0 ? weights[j] / sum : 0;
    }
}

static int pick_source(const double *w, int n, double u) {
    double acc = 0;
    int last = 0;
    for (int j = 0; j < n; j++) {
        if (!(w[j] > 0)) continue;
        acc += w[j];
        last = j;
        if (acc > u) return j;
    }
    return last; // rounding left the cumulative sum at or below u
}

/* The segment holding stream byte `off` (< s->n): the last one starting at or before it. */
static const struct data_segment *segment_at(const struct data_stream *s, size_t off) {
    int lo = 0, hi = s->n_segments - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (s->segments[mid].start <= off) lo = mid;
        else hi = mid - 1;
    }
    return &s->segments[lo];
}

/* tokens[t] = stream byte off+t, targets[t] = stream byte off+t+1, for t < T. Reads straight
 * from the mapping; the window needs off + T < s->n. */
static void write_window(const struct data_stream *s, size_t off, int T, int *tokens,
                         int *targets) {
    if (s->ids) {
        for (int t = 0; t < T; t++) {
            tokens[t] = (int)s->ids[off + t];
            targets[t] = (int)s->ids[off + t + 1];
        }
        return;
    }
    const struct data_segment *g = segment_at(s, off);
    size_t in = off - g->start, need = (size_t)T + 1;
    if (g->n - in >= need) { // the window lies inside one file: the common case
        const uint8_t *bytes = g->bytes + in;
        for (int t = 0; t < T; t++) {
            tokens[t] = bytes[t];
            targets[t] = bytes[t + 1];
        }
        return;
    }
    /* It crosses into the following files: byte k of the window is token k and target k-1. */
    for (size_t k = 0; k < need; g++, in = 0) {
        size_t m = g->n - in < need - k ? g->n - in : need - k;
        const uint8_t *bytes = g->bytes + in;
        for (size_t j = 0; j < m; j++, k++) {
            if (k < (size_t)T) tokens[k] = bytes[j];
            if (k > 0) targets[k - 1] = bytes[j];
        }
    }
}

/* Sequence i of a step (step_key and the weights w in force): its source and start. */
static const struct data_stream *train_window(const struct dataset *d, uint64_t step_key,
                                              const double *w, int i, size_t *off) {
    uint64_t h1 = mix64(step_key ^ (uint64_t)i);
    uint64_t h2 = mix64(h1);
    double u = (double)(h1 >> 11) * 0x1.0p-53;
    const struct data_stream *s = &d->sources[pick_source(w, d->n_sources, u)];
    *off = (size_t)(h2 % (uint64_t)(s->n_train - (size_t)d->T));
    return s;
}

void data_train_batch(const struct dataset *d, uint64_t seed, long step, int first, int count,
                      int *tokens, int *targets) {
    int T = d->T;
    double w[SPEC_MAX_SOURCES];
    data_weights_at(d->spec, step, w);
    uint64_t step_key = mix64(mix64(seed) ^ (uint64_t)step);
    for (int j = 0; j < count; j++) {
        size_t off;
        const struct data_stream *s = train_window(d, step_key, w, first + j, &off);
        write_window(s, off, T, tokens + (size_t)j * T, targets + (size_t)j * T);
    }
}

uint64_t data_train_batch_bytes(const struct dataset *d, uint64_t seed, long step, int first,
                                int count) {
    if (!d->tok) return (uint64_t)count * (uint64_t)d->T;
    double w[SPEC_MAX_SOURCES];
    data_weights_at(d->spec, step, w);
    uint64_t step_key = mix64(mix64(seed) ^ (uint64_t)step), sum = 0;
    for (int j = 0; j < count; j++) {
        size_t off;
        const struct data_stream *s = train_window(d, step_key, w, first + j, &off);
        sum += window_bytes(s, off, d->T);
    }
    return sum;
}

void data_shard_batch(const struct dataset *d, uint64_t seed, long step, int shard, int n_shards,
                      int batch, int *tokens, int *targets) {
    int first = (int)((long)shard * batch / n_shards);
    int end = (int)((long)(shard + 1) * batch / n_shards);
    data_train_batch(d, seed, step, first, end - first, tokens, targets);
}

/* ---- held-out windows ---- */

/* Windows of T+1 bytes at stride T in bytes [start, n). */
static long count_windows(size_t start, size_t n, int T) {
    size_t need = (size_t)T + 1;
    if (n < start || n - start < need) return 0;
    return (long)((n - start - need) / (size_t)T + 1);
}

long data_val_windows(const struct dataset *d) {
    long total = 0;
    for (int j = 0; j < d->n_sources; j++)
        total += count_windows(d->sources[j].n_train, d->sources[j].n, d->T);
    return total;
}

/* Held-out window i: its stream and start, or NULL past the last. */
static const struct data_stream *val_window(const struct dataset *d, long i, size_t *off) {
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        long c = count_windows(s->n_train, s->n, d->T);
        if (i < c) {
            *off = s->n_train + (size_t)i * (size_t)d->T;
            return s;
        }
        i -= c;
    }
    return NULL;
}

void data_val_window(const struct dataset *d, long i, int *tokens, int *targets) {
    size_t off;
    const struct data_stream *s = val_window(d, i, &off);
    if (s) write_window(s, off, d->T, tokens, targets);
}

uint64_t data_val_window_bytes(const struct dataset *d, long i) {
    size_t off;
    const struct data_stream *s = val_window(d, i, &off);
    return s ? window_bytes(s, off, d->T) : 0;
}

uint64_t stream_window_bytes(const struct data_stream *s, int T, long i) {
    return window_bytes(s, (size_t)i * (size_t)T, T);
}

long stream_windows(const struct data_stream *s, int T) { return count_windows(0, s->n, T); }

void stream_window(const struct data_stream *s, int T, long i, int *tokens, int *targets) {
    write_window(s, (size_t)i * (size_t)T, T, tokens, targets);
}

/* ---- entropy ---- */

/* With a tokenizer: the entropy of the mixture's token frequencies (bits per token) over its
 * mean bytes per token. */
static double token_unigram_entropy_bits(const struct dataset *d, const double *w) {
    int V = tokenizer_vocab(d->tok);
    double *p = calloc((size_t)V, sizeof *p), bytes_per_token = 0;
    if (!p) return NAN;
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        if (!(w[j] > 0) || s->n_train == 0) continue;
        double share = w[j] / (double)s->n_train;
        uint64_t bytes = 0;
        for (size_t q = 0; q < s->n_train; q++) {
            p[s->ids[q]] += share;
            bytes += (uint64_t)tokenizer_token_bytes(d->tok, (int)s->ids[q]);
        }
        bytes_per_token += share * (double)bytes;
    }
    double h = 0;
    for (int v = 0; v < V; v++)
        if (p[v] > 0) h -= p[v] * log2(p[v]);
    free(p);
    return bytes_per_token > 0 ? h / bytes_per_token : NAN;
}

double data_unigram_entropy_bits(const struct dataset *d) {
    double w[SPEC_MAX_SOURCES], p[256] = {0};
    data_weights_at(d->spec, 0, w);
    if (d->tok) return token_unigram_entropy_bits(d, w);
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        if (!(w[j] > 0) || s->n_train == 0) continue;
        size_t count[256] = {0};
        for (int k = 0; k < s->n_segments && s->segments[k].start < s->n_train; k++) {
            const struct data_segment *g = &s->segments[k];
            size_t m = s->n_train - g->start < g->n ? s->n_train - g->start : g->n;
            /* One pass from front to back: let the kernel read ahead (under MADV_RANDOM a
             * cold 512 MB file took 11 s page by page instead of 0.5 s), then restore the
             * random-access advice the batches want. */
            if (g->mapped) (void)madvise((void *)g->bytes, m, MADV_SEQUENTIAL);
            for (size_t q = 0; q < m; q++) count[g->bytes[q]]++;
            if (g->mapped) (void)madvise((void *)g->bytes, m, MADV_RANDOM);
        }
        for (int b = 0; b < 256; b++) p[b] += w[j] * (double)count[b] / (double)s->n_train;
    }
    double h = 0;
    for (int b = 0; b < 256; b++)
        if (p[b] > 0) h -= p[b] * log2(p[b]);
    return h;
}
