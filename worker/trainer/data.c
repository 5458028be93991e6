#include "data.h"
#include "../../kernels/mix64.h"

#include "../../common/log.h"

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

/* ---- loading ---- */

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

/* Reads fd from its current offset to EOF into b; `hint` is the size fstat reported. */
static moe_status read_to_end(int fd, const char *path, size_t hint, struct bytebuf *b) {
    /* Room for the whole file and one more byte, so that the read seeing EOF needs no growth. */
    size_t want = hint > 0 && hint < SIZE_MAX ? hint + 1 : 4096;
    for (;;) {
        /* Grows again only when the file grew under us (or stat gave no size). */
        if ((want > 0 || b->n == b->cap) && bytebuf_reserve(b, want > 0 ? want : 4096) != 0)
            return moe_fail(MOE_ENOMEM, "data: %s: out of memory", path);
        want = 0;
        ssize_t r = read(fd, b->p + b->n, b->cap - b->n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return moe_fail(MOE_EIO, "data: %s: %s", path, strerror(errno));
        }
        if (r == 0) return MOE_OK;
        b->n += (size_t)r;
    }
}

static void segment_release(struct data_segment *g) {
    if (g->mapped) munmap((void *)g->bytes, g->n);
    else free((void *)g->bytes);
}

static moe_status push_segment(struct data_stream *s, int *cap, struct data_segment g,
                               const char *path) {
    if (s->n_segments == *cap) {
        int c = *cap ? *cap * 2 : 16;
        struct data_segment *p = realloc(s->segments, (size_t)c * sizeof *p);
        if (!p) return moe_fail(MOE_ENOMEM, "data: %s: out of memory", path);
        s->segments = p;
        *cap = c;
    }
    g.start = s->n;
    s->segments[s->n_segments++] = g;
    s->n += g.n;
    return MOE_OK;
}

/* Appends the file at `path` to s as one segment, or none when it is empty (an empty file
 * still counts in n_files). With `text_only`, a file whose first BINARY_PROBE bytes hold a
 * NUL is left out and not counted.
 *
 * The file is mapped, not read: only the pages a batch touches are ever read, and they live
 * in the page cache, shared with every other process that maps the file. The mapping stays
 * valid after close(). A file that shrinks while mapped makes the pages past its new end raise
 * SIGBUS when read — corpora must not be truncated while a job reads them.
 * Two kinds of file are read into the heap instead, so that they load as they always have:
 * files that report size 0 yet hold bytes (procfs, sysfs), and files that cannot be mapped
 * (a filesystem without mmap, or more files than vm.max_map_count allows mappings). */
static moe_status add_file(struct data_stream *s, int *cap, const char *path, int text_only,
                           int *n_copied) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_fail(MOE_EIO, "data: %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return moe_fail(MOE_EIO, "data: %s: %s", path, strerror(e));
    }
    size_t size = st.st_size > 0 ? (size_t)st.st_size : 0;
    if (st.st_size > 0 && (off_t)size != st.st_size) {
        close(fd);
        return moe_fail(MOE_EINVAL, "data: %s: too large to map", path);
    }
    struct data_segment g = {0};
    if (size > 0) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p != MAP_FAILED) {
            g.bytes = p;
            g.n = size;
            g.mapped = 1;
        } else {
            LOG_DEBUG("data: %s: cannot map (%s), reading it into memory", path, strerror(errno));
            (*n_copied)++;
        }
    }
    if (!g.mapped) {
        struct bytebuf b = {0};
        moe_status res = read_to_end(fd, path, size, &b);
        if (res != MOE_OK) {
            free(b.p);
            close(fd);
            return res;
        }
        g.bytes = b.p;
        g.n = b.n;
    }
    close(fd);

    if (g.n == 0) {
        segment_release(&g);
        s->n_files++;
        return MOE_OK;
    }
    if (text_only && memchr(g.bytes, '\0', g.n < BINARY_PROBE ? g.n : BINARY_PROBE)) {
        LOG_DEBUG("data: skipping %s (binary)", path);
        segment_release(&g);
        return MOE_OK;
    }
    /* Batches read short windows at random offsets: readahead would only evict useful pages. */
    if (g.mapped) (void)madvise((void *)g.bytes, g.n, MADV_RANDOM);
    moe_status res = push_segment(s, cap, g, path);
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

static int path_cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Collects the regular files under dir (recursively), skipping dot-entries and symlinks. */
static moe_status walk_dir(const char *dir, struct pathlist *out) {
    DIR *d = opendir(dir);
    if (!d) return moe_fail(MOE_EIO, "data: %s: %s", dir, strerror(errno));
    moe_status res = MOE_OK;
    size_t dlen = strlen(dir);
    const char *sep = dlen > 0 && dir[dlen - 1] == '/' ? "" : "/";
    struct dirent *ent;
    for (;;) {
        errno = 0;
        ent = readdir(d);
        if (!ent) {
            if (errno != 0) res = moe_fail(MOE_EIO, "data: %s: %s", dir, strerror(errno));
            break;
        }
        if (ent->d_name[0] == '.') continue;
        size_t len = dlen + strlen(sep) + strlen(ent->d_name) + 1;
        char *full = malloc(len);
        if (!full) {
            res = moe_fail(MOE_ENOMEM, "data: %s: out of memory", dir);
            break;
        }
        snprintf(full, len, "%s%s%s", dir, sep, ent->d_name);
        struct stat st;
        if (lstat(full, &st) != 0) {
            res = moe_fail(MOE_EIO, "data: %s: %s", full, strerror(errno));
            free(full);
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            res = walk_dir(full, out);
            free(full);
            if (res != MOE_OK) break;
        } else if (S_ISREG(st.st_mode)) {
            if (out->n == out->cap) {
                int cap = out->cap ? out->cap * 2 : 64;
                char **p = realloc(out->p, (size_t)cap * sizeof *p);
                if (!p) {
                    free(full);
                    res = moe_fail(MOE_ENOMEM, "data: %s: out of memory", dir);
                    break;
                }
                out->p = p;
                out->cap = cap;
            }
            out->p[out->n++] = full;
        } else {
            LOG_DEBUG("data: skipping %s (%s)", full,
                      S_ISLNK(st.st_mode) ? "symlink" : "not a regular file");
            free(full);
        }
    }
    closedir(d);
    return res;
}

static moe_status load_dir(struct data_stream *s, int *cap, const char *path, int *n_copied) {
    struct pathlist files = {0};
    moe_status res;
    CHECK_GOTO(walk_dir(path, &files), res, exit);
    /* One global byte-wise order over full paths, so "a.txt" < "a/b.txt" never depends on
     * the order readdir happens to return. */
    if (files.n > 1) qsort(files.p, (size_t)files.n, sizeof *files.p, path_cmp);
    for (int i = 0; i < files.n; i++)
        CHECK_GOTO(add_file(s, cap, files.p[i], 1, n_copied), res, exit);
    if (s->n_files == 0) res = moe_fail(MOE_EINVAL, "data: %s: no text files", path);
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

static moe_status load_path(struct data_stream *s, const char *path) {
    memset(s, 0, sizeof *s);
    if (strlen(path) >= sizeof s->path)
        return moe_fail(MOE_EINVAL, "data: %.64s...: path longer than %d bytes", path,
                        SPEC_PATH_MAX - 1);
    strcpy(s->path, path);

    struct stat st;
    if (stat(path, &st) != 0) return moe_fail(MOE_EIO, "data: %s: %s", path, strerror(errno));
    moe_status res = MOE_OK;
    int cap = 0, n_copied = 0;
    if (S_ISDIR(st.st_mode)) {
        res = load_dir(s, &cap, path, &n_copied);
    } else if (S_ISREG(st.st_mode)) {
        res = add_file(s, &cap, path, 0, &n_copied);
    } else {
        res = moe_fail(MOE_EINVAL, "data: %s: not a regular file or directory", path);
    }
    if (res == MOE_OK && s->n == 0) res = moe_fail(MOE_EINVAL, "data: %s: empty", path);
    if (res != MOE_OK) {
        release_segments(s);
        s->n = 0;
        s->n_files = 0;
        return res;
    }
    if (n_copied > 0)
        LOG_WARN("data: %s: %d file(s) could not be memory-mapped and were read into private "
                 "memory instead (MOE_LOG_LEVEL=debug names them)",
                 path, n_copied);
    s->n_train = s->n;
    return MOE_OK;
}

moe_status data_load_stream(struct data_stream *s, const char *path) {
    CHECK(load_path(s, path));
    LOG_DEBUG("data: %s: %zu bytes from %d file(s)", s->path, s->n, s->n_files);
    return MOE_OK;
}

void data_stream_free(struct data_stream *s) {
    release_segments(s);
    memset(s, 0, sizeof *s);
}

moe_status data_open(struct dataset *d, const struct data_spec *spec, int T) {
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
    size_t need = (size_t)T + 1;
    for (int j = 0; j < spec->n_sources; j++) {
        struct data_stream *s = &d->sources[j];
        CHECK_GOTO(load_path(s, spec->sources[j].path), res, fail);
        d->n_sources = j + 1; // so that data_close frees it
        size_t held = (size_t)floor((double)s->n * spec->val_fraction);
        s->n_train = s->n - held;
        if (s->n_train < need) {
            res = moe_fail(MOE_EINVAL,
                           "data: %s: training part has %zu bytes, fewer than seq_len+1 = %zu",
                           s->path, s->n_train, need);
            goto fail;
        }
        if (spec->val_fraction > 0 && held < need) {
            res = moe_fail(MOE_EINVAL,
                           "data: %s: held-out part (data.val_fraction = %g) has %zu bytes, fewer "
                           "than seq_len+1 = %zu",
                           s->path, spec->val_fraction, held, need);
            goto fail;
        }
        LOG_INFO("data: %s: %zu bytes from %d file(s), %zu for training, %zu held out", s->path,
                 s->n, s->n_files, s->n_train, held);
    }
    return MOE_OK;

fail:
    data_close(d);
    return res;
}

void data_close(struct dataset *d) {
    for (int j = 0; j < d->n_sources; j++) data_stream_free(&d->sources[j]);
    free(d->sources);
    memset(d, 0, sizeof *d);
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

void data_train_batch(const struct dataset *d, uint64_t seed, long step, int first, int count,
                      int *tokens, int *targets) {
    int T = d->T;
    double w[SPEC_MAX_SOURCES];
    data_weights_at(d->spec, step, w);
    uint64_t step_key = mix64(mix64(seed) ^ (uint64_t)step);
    for (int j = 0; j < count; j++) {
        int i = first + j;
        uint64_t h1 = mix64(step_key ^ (uint64_t)i);
        uint64_t h2 = mix64(h1);
        double u = (double)(h1 >> 11) * 0x1.0p-53;
        const struct data_stream *s = &d->sources[pick_source(w, d->n_sources, u)];
        size_t off = (size_t)(h2 % (uint64_t)(s->n_train - (size_t)T));
        write_window(s, off, T, tokens + (size_t)j * T, targets + (size_t)j * T);
    }
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

void data_val_window(const struct dataset *d, long i, int *tokens, int *targets) {
    for (int j = 0; j < d->n_sources; j++) {
        const struct data_stream *s = &d->sources[j];
        long c = count_windows(s->n_train, s->n, d->T);
        if (i < c) {
            write_window(s, s->n_train + (size_t)i * (size_t)d->T, d->T, tokens, targets);
            return;
        }
        i -= c;
    }
}

long stream_windows(const struct data_stream *s, int T) { return count_windows(0, s->n, T); }

void stream_window(const struct data_stream *s, int T, long i, int *tokens, int *targets) {
    write_window(s, (size_t)i * (size_t)T, T, tokens, targets);
}

/* ---- entropy ---- */

double data_unigram_entropy_bits(const struct dataset *d) {
    double w[SPEC_MAX_SOURCES], p[256] = {0};
    data_weights_at(d->spec, 0, w);
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
