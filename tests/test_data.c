/*
 * test_data.c — corpus loading (order, skips, errors), the held-out split, and the batch
 * function checked against an independent re-derivation of the documented hash and against
 * the files read back with stdio — across file boundaries too — and that a loaded corpus is
 * mapped, not copied. Data roots: what a worker may read ("..", symlinks in and out, /proc,
 * FIFOs, its own secrets), that a refusal says nothing of the file, and that a stop ends a
 * load.
 */
#include "../common/log.h"
#include "../worker/trainer/data.h"
#include "../worker/trainer/data_roots.h"
#include "check.h"
#include "temp_tree.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void spec_init(struct data_spec *s, int n, const char *const *paths, const double *w,
                      double val_fraction) {
    memset(s, 0, sizeof *s);
    s->n_sources = n;
    for (int j = 0; j < n; j++) {
        snprintf(s->sources[j].path, sizeof s->sources[j].path, "%s", at(paths[j]));
        s->sources[j].weight = w[j];
    }
    s->val_fraction = val_fraction;
}

/* The documented hash, written out again so the test does not trust the implementation. */
static uint64_t ref_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void ref_hash(uint64_t seed, long step, int i, uint64_t *h1, uint64_t *h2) {
    *h1 = ref_mix(ref_mix(ref_mix(seed) ^ (uint64_t)step) ^ (uint64_t)i);
    *h2 = ref_mix(*h1);
}

/* The bytes of the files `rels` (under root), concatenated in the order given, read with stdio:
 * the reference a loaded stream is held to. */
static uint8_t *slurp(const char *const *rels, int n_rels, size_t *n) {
    size_t len = 0, cap = 1 << 16;
    uint8_t *buf = malloc(cap);
    for (int f = 0; buf && f < n_rels; f++) {
        FILE *fp = fopen(at(rels[f]), "rb");
        if (!fp) {
            fprintf(stderr, "cannot read %s: %s\n", at(rels[f]), strerror(errno));
            exit(2);
        }
        for (;;) {
            if (cap - len < 4096) buf = realloc(buf, cap *= 2);
            if (!buf) break;
            size_t r = fread(buf + len, 1, cap - len, fp);
            len += r;
            if (r == 0) break;
        }
        fclose(fp);
    }
    if (!buf) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    *n = len;
    return buf;
}

/* Whether stream bytes [off, off + len) equal `want`, read through the public window function
 * (one window of T = n - 1 covers the whole stream). */
static int stream_equals(const struct data_stream *s, size_t off, const void *want, size_t len) {
    if (s->n < 2 || off > s->n || len > s->n - off) return 0;
    int T = (int)(s->n - 1);
    int *tok = malloc(sizeof(int) * (size_t)T), *tgt = malloc(sizeof(int) * (size_t)T);
    int ok = tok && tgt && stream_windows(s, T) == 1;
    if (ok) stream_window(s, T, 0, tok, tgt);
    for (size_t k = 0; ok && k < len; k++) {
        size_t p = off + k;
        int got = p < (size_t)T ? tok[p] : tgt[p - 1];
        ok = got == ((const uint8_t *)want)[k];
    }
    free(tok);
    free(tgt);
    return ok;
}

static void test_loading(void) {
    make_dir("corpus");
    make_dir("corpus/sub");
    make_dir("corpus/.hiddendir");
    put_str("corpus/b.txt", "B-text\n");
    put_str("corpus/a.txt", "a-text\n");
    put_str("corpus/A_upper.txt", "A-upper\n"); // 'A' < 'a' byte-wise
    put_str("corpus/sub.txt", "sub.txt\n");     // '.' < '/': before everything in sub/
    put_str("corpus/sub-x.txt", "sub-x\n");     // '-' < '.'
    put_str("corpus/sub/c.txt", "c-text\n");
    put_str("corpus/.hidden.txt", "hidden\n");
    put_str("corpus/.hiddendir/d.txt", "hidden dir\n");
    uint8_t bin[64] = "looks like text at first";
    bin[40] = 0;
    put("corpus/sub/index.dat", bin, sizeof bin);
    uint8_t late_nul[5000];
    memset(late_nul, 'z', sizeof late_nul);
    late_nul[4500] = 0; // past the 4096-byte probe: still text
    put("corpus/sub/zlate.txt", late_nul, sizeof late_nul);
    if (symlink(at("corpus/a.txt"), at("corpus/link.txt")) != 0) perror("symlink");

    struct data_stream s;
    EXPECT(data_load_stream(&s, at("corpus")) == MOE_OK);
    const char *want = "A-upper\na-text\nB-text\nsub-x\nsub.txt\nc-text\n";
    size_t wlen = strlen(want);
    EXPECT(s.n == wlen + sizeof late_nul);
    EXPECT(s.n_train == s.n);
    EXPECT(s.n_files == 7);
    EXPECT(s.n >= wlen && stream_equals(&s, 0, want, wlen));
    EXPECT(s.n == wlen + sizeof late_nul && stream_equals(&s, wlen, late_nul, sizeof late_nul));
    EXPECT(strcmp(s.path, at("corpus")) == 0);
    data_stream_free(&s);

    /* A trailing slash changes nothing. */
    EXPECT(data_load_stream(&s, at("corpus/")) == MOE_OK);
    EXPECT(s.n == wlen + sizeof late_nul && stream_equals(&s, 0, want, wlen));
    data_stream_free(&s);

    /* A plain file is read as it is, and a symlink given directly is followed. */
    EXPECT(data_load_stream(&s, at("corpus/b.txt")) == MOE_OK);
    EXPECT(s.n == 7 && stream_equals(&s, 0, "B-text\n", 7) && s.n_files == 1);
    data_stream_free(&s);
    EXPECT(data_load_stream(&s, at("corpus/link.txt")) == MOE_OK);
    EXPECT(s.n == 7 && stream_equals(&s, 0, "a-text\n", 7));
    data_stream_free(&s);

    /* Errors name the path. */
    char msg[800];
    snprintf(msg, sizeof msg, "data: %s: No such file or directory", at("missing.txt"));
    EXPECT_FAIL(data_load_stream(&s, at("missing.txt")), MOE_EIO, msg);
    EXPECT(s.segments == NULL && s.n_segments == 0 && s.n == 0);
    put_str("empty.txt", "");
    snprintf(msg, sizeof msg, "data: %s: empty", at("empty.txt"));
    EXPECT_FAIL(data_load_stream(&s, at("empty.txt")), MOE_EINVAL, msg);
    make_dir("bindir");
    put("bindir/x.dat", bin, sizeof bin);
    snprintf(msg, sizeof msg, "data: %s: no text files", at("bindir"));
    EXPECT_FAIL(data_load_stream(&s, at("bindir")), MOE_EINVAL, msg);
    make_dir("emptydir");
    snprintf(msg, sizeof msg, "data: %s: no text files", at("emptydir"));
    EXPECT_FAIL(data_load_stream(&s, at("emptydir")), MOE_EINVAL, msg);

    /* data_open: too short for the sequence length, in training or held out. */
    struct data_spec spec;
    struct dataset d;
    const char *paths[] = {"corpus/b.txt"};
    double w1[] = {1};
    spec_init(&spec, 1, paths, w1, 0);
    EXPECT(data_open(&d, &spec, 6) == MOE_OK && d.sources[0].n_train == 7);
    data_close(&d);
    snprintf(msg, sizeof msg, "data: %s: training part has 7 bytes, fewer than seq_len+1 = 8",
             at("corpus/b.txt"));
    EXPECT_FAIL(data_open(&d, &spec, 7), MOE_EINVAL, msg);
    EXPECT(d.sources == NULL);
    spec.val_fraction = 0.5; // 4 bytes train, 3 held out
    EXPECT(data_open(&d, &spec, 2) == MOE_OK && d.sources[0].n_train == 4);
    data_close(&d);
    snprintf(msg, sizeof msg,
             "data: %s: held-out part (data.val_fraction = 0.5) has 3 bytes, fewer than "
             "seq_len+1 = 4",
             at("corpus/b.txt"));
    EXPECT_FAIL(data_open(&d, &spec, 3), MOE_EINVAL, msg);
    const char *two[] = {"corpus", "missing.txt"};
    double w2[] = {1, 1};
    spec_init(&spec, 2, two, w2, 0);
    EXPECT_FAIL(data_open(&d, &spec, 4), MOE_EIO, "missing.txt: No such file or directory");
}

/* Source 0 holds only lowercase letters, source 1 only digits: a window names its source. */
static void make_mixture(void) {
    static uint8_t letters[20000], digits[12345];
    uint64_t x = 42;
    for (size_t k = 0; k < sizeof letters; k++) {
        x = ref_mix(x);
        letters[k] = (uint8_t)('a' + x % 26);
    }
    for (size_t k = 0; k < sizeof digits; k++) {
        x = ref_mix(x);
        digits[k] = (uint8_t)('0' + x % 10);
    }
    put("letters.txt", letters, sizeof letters);
    put("digits.txt", digits, sizeof digits);
}

static void test_batches(void) {
    make_mixture();
    const char *paths[] = {"letters.txt", "digits.txt"};
    double w[] = {3, 1};
    struct data_spec spec;
    spec_init(&spec, 2, paths, w, 0.1);
    spec.n_schedule = 2;
    spec.schedule[0].step = 100;
    spec.schedule[0].weights[0] = 0;
    spec.schedule[0].weights[1] = 5;
    spec.schedule[1].step = 200;
    spec.schedule[1].weights[0] = 2;
    spec.schedule[1].weights[1] = 2;

    const int T = 16, B = 10;
    struct dataset d;
    EXPECT(data_open(&d, &spec, T) == MOE_OK);
    if (failures) return;
    size_t n_ref[2];
    uint8_t *ref[2] = {slurp(&paths[0], 1, &n_ref[0]), slurp(&paths[1], 1, &n_ref[1])};
    EXPECT(d.sources[0].n == 20000 && d.sources[0].n_train == 18000);
    EXPECT(d.sources[1].n == 12345 && d.sources[1].n_train == 12345 - 1234);

    double wt[2];
    data_weights_at(&spec, 0, wt);
    EXPECT(fabs(wt[0] - 0.75) < 1e-12 && fabs(wt[1] - 0.25) < 1e-12);
    data_weights_at(&spec, 99, wt);
    EXPECT(fabs(wt[0] - 0.75) < 1e-12);
    data_weights_at(&spec, 100, wt);
    EXPECT(wt[0] == 0 && wt[1] == 1);
    data_weights_at(&spec, 5000, wt);
    EXPECT(fabs(wt[0] - 0.5) < 1e-12 && fabs(wt[1] - 0.5) < 1e-12);

    int tok[B * T], tgt[B * T], tok2[B * T], tgt2[B * T];
    data_train_batch(&d, 7, 3, 0, B, tok, tgt);
    data_train_batch(&d, 7, 3, 0, B, tok2, tgt2);
    EXPECT(memcmp(tok, tok2, sizeof tok) == 0 && memcmp(tgt, tgt2, sizeof tgt) == 0);
    data_train_batch(&d, 7, 4, 0, B, tok2, tgt2);
    EXPECT(memcmp(tok, tok2, sizeof tok) != 0);
    data_train_batch(&d, 8, 3, 0, B, tok2, tgt2);
    EXPECT(memcmp(tok, tok2, sizeof tok) != 0);
    /* Sequence i does not depend on which others are asked for with it. */
    data_train_batch(&d, 7, 3, 4, 3, tok2, tgt2);
    EXPECT(memcmp(tok + 4 * T, tok2, 3 * T * sizeof *tok) == 0);

    /* Shards concatenate to the global batch, for shard counts that do and don't divide it. */
    for (int n_shards = 1; n_shards <= 4; n_shards++) {
        int cat[B * T], cat_t[B * T], used = 0;
        for (int sh = 0; sh < n_shards; sh++) {
            int len = (sh + 1) * B / n_shards - sh * B / n_shards;
            data_shard_batch(&d, 7, 3, sh, n_shards, B, cat + used * T, cat_t + used * T);
            used += len;
        }
        EXPECT(used == B);
        EXPECT(memcmp(cat, tok, sizeof tok) == 0 && memcmp(cat_t, tgt, sizeof tgt) == 0);
    }

    /* Every sequence matches the documented hash exactly, lies in the training part, and
     * its sources follow the schedule in force. */
    long steps[] = {0, 150, 250};
    double want0[] = {0.75, 0.0, 0.5};
    const int N = 4000;
    int *seq_t = malloc(sizeof(int) * T), *seq_g = malloc(sizeof(int) * T);
    for (int c = 0; c < 3; c++) {
        int picks0 = 0;
        data_weights_at(&spec, steps[c], wt);
        for (int i = 0; i < N; i++) {
            long step = steps[c] + i / 100;
            int idx = i % 100;
            data_train_batch(&d, 99, step, idx, 1, seq_t, seq_g);
            uint64_t h1, h2;
            ref_hash(99, step, idx, &h1, &h2);
            double u = (double)(h1 >> 11) / 9007199254740992.0;
            int src = u < wt[0] ? 0 : 1;
            if (wt[0] == 0) src = 1;
            const struct data_stream *s = &d.sources[src];
            const uint8_t *bytes = ref[src];
            size_t off = (size_t)(h2 % (s->n_train - (size_t)T));
            EXPECT(off + T + 1 <= s->n_train && s->n == n_ref[src]);
            int ok = 1;
            for (int t = 0; t < T; t++)
                ok &= seq_t[t] == bytes[off + t] && seq_g[t] == bytes[off + t + 1];
            EXPECT(ok);
            if (!ok) break;
            picks0 += seq_t[0] >= 'a';
        }
        double frac = (double)picks0 / N;
        if (fabs(frac - want0[c]) > 0.05) {
            fprintf(stderr, "step %ld: source 0 picked %.3f of the time, want %.2f\n", steps[c],
                    frac, want0[c]);
            failures++;
        }
    }
    free(seq_t);
    free(seq_g);

    /* Held-out windows: consecutive, stride T, entirely past the training part. */
    long nv = data_val_windows(&d);
    long n0 = (long)((2000 - 17) / 16 + 1), n1 = (long)((1234 - 17) / 16 + 1);
    EXPECT(nv == n0 + n1);
    int vt[T], vg[T];
    for (long i = 0; i < nv; i++) {
        data_val_window(&d, i, vt, vg);
        const struct data_stream *s = &d.sources[i < n0 ? 0 : 1];
        const uint8_t *bytes = ref[i < n0 ? 0 : 1];
        size_t start = s->n_train + (size_t)(i < n0 ? i : i - n0) * T;
        EXPECT(start >= s->n_train && start + T + 1 <= s->n);
        int ok = 1;
        for (int t = 0; t < T; t++)
            ok &= vt[t] == bytes[start + t] && vg[t] == bytes[start + t + 1];
        EXPECT(ok);
        if (!ok) break;
    }
    data_close(&d);
    EXPECT(d.sources == NULL && d.n_sources == 0);

    /* The same windowing over a whole stream, for eval. */
    struct data_stream s;
    EXPECT(data_load_stream(&s, at("digits.txt")) == MOE_OK);
    EXPECT(stream_windows(&s, T) == (12345 - 17) / 16 + 1);
    EXPECT(stream_windows(&s, 20000) == 0);
    long last = stream_windows(&s, T) - 1;
    stream_window(&s, T, last, vt, vg);
    EXPECT(vt[0] == ref[1][last * T] && vg[T - 1] == ref[1][last * T + T]);
    data_stream_free(&s);
    free(ref[0]);
    free(ref[1]);
}

static void test_entropy(void) {
    uint8_t buf[256 * 40];
    memset(buf, 'q', sizeof buf);
    put("same.txt", buf, sizeof buf);
    for (size_t k = 0; k < sizeof buf; k++) buf[k] = (uint8_t)(k % 256);
    buf[0] = 0; // a NUL at the start of a file given directly is fine: only directories filter
    put("cycle.bin", buf, sizeof buf);
    memset(buf, 'r', sizeof buf);
    put("other.txt", buf, sizeof buf);

    struct data_spec spec;
    struct dataset d;
    double w1[] = {1}, w2[] = {1, 1}, w3[] = {1, 3};
    spec_init(&spec, 1, (const char *const[]){"same.txt"}, w1, 0);
    EXPECT(data_open(&d, &spec, 8) == MOE_OK);
    EXPECT(fabs(data_unigram_entropy_bits(&d)) < 1e-12);
    data_close(&d);

    spec_init(&spec, 1, (const char *const[]){"cycle.bin"}, w1, 0);
    EXPECT(data_open(&d, &spec, 8) == MOE_OK);
    EXPECT(fabs(data_unigram_entropy_bits(&d) - 8) < 1e-9);
    data_close(&d);

    /* Two one-symbol sources mixed 1:1 are one bit; 1:3 is H(0.25). */
    spec_init(&spec, 2, (const char *const[]){"same.txt", "other.txt"}, w2, 0);
    EXPECT(data_open(&d, &spec, 8) == MOE_OK);
    EXPECT(fabs(data_unigram_entropy_bits(&d) - 1) < 1e-12);
    data_close(&d);
    spec_init(&spec, 2, (const char *const[]){"same.txt", "other.txt"}, w3, 0);
    EXPECT(data_open(&d, &spec, 8) == MOE_OK);
    double h = -(0.25 * log2(0.25) + 0.75 * log2(0.75));
    EXPECT(fabs(data_unigram_entropy_bits(&d) - h) < 1e-12);
    data_close(&d);
}

/* Whether a window holds ref[0 .. T]: tokens ref[0 .. T-1], targets ref[1 .. T]. */
static int window_is(const uint8_t *ref, int T, const int *tok, const int *tgt) {
    for (int t = 0; t < T; t++)
        if (tok[t] != ref[t] || tgt[t] != ref[t + 1]) return 0;
    return 1;
}

/* Whether the window [off, off + T] spans the start of a file: some file starts at b with
 * off < b <= off + T. */
static int crosses(const size_t *starts, int n_starts, size_t off, int T) {
    for (int k = 0; k < n_starts; k++)
        if (off < starts[k] && starts[k] <= off + (size_t)T) return 1;
    return 0;
}

/* Listed in the documented order (byte-wise over full paths; '/' < '0'). A .dat file holds a
 * NUL and is skipped; a size of 0 is an empty text file. */
static const char *const multi_files[] = {
    "multi/a0.txt", "multi/a1.txt", "multi/a2.txt", "multi/a3.dat", "multi/a4.txt",
    "multi/b/c0.txt", "multi/b/c1.txt", "multi/b0.txt", "multi/b1.txt", "multi/b2.txt",
    "multi/c.txt", "multi/d.txt", "multi/e.txt", "multi/y.txt", "multi/z.txt"};
static const size_t multi_sizes[] = {1, 2, 0, 10, 3, 5, 0, 8, 13, 1, 300, 21, 34, 5000, 0};
#define N_MULTI (int)(sizeof multi_files / sizeof multi_files[0])

/* A directory of many small files, empty and binary ones among them: every window function
 * held to the files concatenated with stdio, with windows that cross file boundaries. */
static void test_boundaries(void) {
    make_dir("multi");
    make_dir("multi/b");
    uint64_t x = 7;
    const char *text[N_MULTI];
    size_t starts[N_MULTI], acc = 0;
    int n_text = 0, n_starts = 0;
    for (int f = 0; f < N_MULTI; f++) {
        uint8_t buf[5000];
        for (size_t k = 0; k < multi_sizes[f]; k++) {
            x = ref_mix(x);
            buf[k] = (uint8_t)(33 + x % 94); // printable, so a misplaced byte shows
        }
        int binary = strstr(multi_files[f], ".dat") != NULL;
        if (binary) buf[3] = 0;
        put(multi_files[f], buf, multi_sizes[f]);
        if (f > 0) EXPECT(strcmp(multi_files[f - 1], multi_files[f]) < 0);
        if (binary) continue;
        text[n_text++] = multi_files[f];
        if (multi_sizes[f] > 0 && acc > 0) starts[n_starts++] = acc;
        acc += multi_sizes[f];
    }
    size_t n;
    uint8_t *ref = slurp(text, n_text, &n);
    EXPECT(n == acc && n == 5388);

    struct data_stream s;
    EXPECT(data_load_stream(&s, at("multi")) == MOE_OK);
    EXPECT(s.n == n && s.n_train == n && s.n_files == n_text);
    EXPECT(s.n_segments == n_starts + 1); // empty files have no segment
    int *tok = malloc(sizeof(int) * n), *tgt = malloc(sizeof(int) * n);
    const int Ts[] = {1, 2, 3, 4, 7, 16, 50, 333, (int)n - 1};
    long crossed = 0;
    for (size_t c = 0; c < sizeof Ts / sizeof Ts[0]; c++) {
        int T = Ts[c];
        long nw = stream_windows(&s, T);
        EXPECT(nw == (long)((n - (size_t)T - 1) / (size_t)T + 1));
        for (long i = 0; i < nw; i++) {
            size_t off = (size_t)i * (size_t)T;
            stream_window(&s, T, i, tok, tgt);
            int ok = window_is(ref + off, T, tok, tgt);
            EXPECT(ok);
            if (!ok) break;
            crossed += crosses(starts, n_starts, off, T);
        }
    }
    EXPECT(crossed >= n_starts); // T = 1 alone spans each file start once
    data_stream_free(&s);

    /* Beside a one-file source, for every (val_fraction, T): the training batch re-derived
     * from the documented hash, every held-out window, and the entropy. */
    const char *const paths[] = {"multi", "digits.txt"};
    size_t ns[2] = {n, 0};
    const uint8_t *refs[2] = {ref, slurp(&paths[1], 1, &ns[1])};
    const double w[] = {1, 1};
    const struct {
        double val_fraction;
        int T;
    } cfg[] = {{0.95, 6}, {0.5, 16}, {0, 3}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        int T = cfg[c].T;
        struct data_spec spec;
        struct dataset d;
        spec_init(&spec, 2, paths, w, cfg[c].val_fraction);
        EXPECT(data_open(&d, &spec, T) == MOE_OK);
        if (d.n_sources != 2) continue;
        size_t n_train[2];
        for (int j = 0; j < 2; j++) {
            n_train[j] = ns[j] - (size_t)floor((double)ns[j] * cfg[c].val_fraction);
            EXPECT(d.sources[j].n == ns[j] && d.sources[j].n_train == n_train[j]);
        }

        long train_crossed = 0;
        for (int i = 0; i < 3000; i++) {
            long step = i / 100;
            int idx = i % 100;
            data_train_batch(&d, 5, step, idx, 1, tok, tgt);
            uint64_t h1, h2;
            ref_hash(5, step, idx, &h1, &h2);
            int src = (double)(h1 >> 11) / 9007199254740992.0 < 0.5 ? 0 : 1;
            size_t off = (size_t)(h2 % (n_train[src] - (size_t)T));
            int ok = window_is(refs[src] + off, T, tok, tgt);
            EXPECT(ok);
            if (!ok) break;
            if (src == 0) train_crossed += crosses(starts, n_starts, off, T);
        }
        EXPECT(train_crossed > 0);

        long i = 0, val_crossed = 0;
        for (int j = 0; j < 2; j++)
            for (size_t off = n_train[j]; off + (size_t)T + 1 <= ns[j]; off += (size_t)T, i++) {
                data_val_window(&d, i, tok, tgt);
                EXPECT(window_is(refs[j] + off, T, tok, tgt));
                if (j == 0) val_crossed += crosses(starts, n_starts, off, T);
            }
        EXPECT(i == data_val_windows(&d));
        if (cfg[c].val_fraction > 0.9) EXPECT(val_crossed > 0);

        double p[256] = {0}, h = 0;
        for (int j = 0; j < 2; j++) {
            size_t count[256] = {0};
            for (size_t k = 0; k < n_train[j]; k++) count[refs[j][k]]++;
            for (int b = 0; b < 256; b++) p[b] += 0.5 * (double)count[b] / (double)n_train[j];
        }
        for (int b = 0; b < 256; b++)
            if (p[b] > 0) h -= p[b] * log2(p[b]);
        EXPECT(fabs(data_unigram_entropy_bits(&d) - h) < 1e-12);
        data_close(&d);
    }
    free(tok);
    free(tgt);
    free(ref);
    free((void *)refs[1]);
}

/* Empty files contribute nothing, wherever they sit, yet count as text files; a directory of
 * only empty files is empty. */
static void test_empty_files(void) {
    make_dir("gaps");
    put_str("gaps/0.txt", "");
    put_str("gaps/1.txt", "abc");
    put_str("gaps/2.txt", "");
    put_str("gaps/3.txt", "def");
    put_str("gaps/4.txt", "");
    struct data_stream s;
    EXPECT(data_load_stream(&s, at("gaps")) == MOE_OK);
    EXPECT(s.n == 6 && s.n_files == 5 && s.n_segments == 2 && stream_equals(&s, 0, "abcdef", 6));
    int tok[2], tgt[2];
    EXPECT(stream_windows(&s, 2) == 2);
    stream_window(&s, 2, 1, tok, tgt); // "cde": across the empty file
    EXPECT(window_is((const uint8_t *)"cde", 2, tok, tgt));
    data_stream_free(&s);

    make_dir("allempty");
    put_str("allempty/a.txt", "");
    put_str("allempty/b.txt", "");
    char msg[800];
    snprintf(msg, sizeof msg, "data: %s: empty", at("allempty"));
    EXPECT_FAIL(data_load_stream(&s, at("allempty")), MOE_EINVAL, msg);
    EXPECT(s.segments == NULL && s.n == 0);

    /* A file that reports size 0 yet holds bytes cannot be mapped by its size: it is read. */
    if (access("/proc/self/status", R_OK) == 0) {
        EXPECT(data_load_stream(&s, "/proc/self/status") == MOE_OK);
        EXPECT(s.n > 5 && s.n_segments == 1 && !s.segments[0].mapped &&
               stream_equals(&s, 0, "Name:", 5));
        data_stream_free(&s);
    }
}

/* A field of /proc/self/status in kB, or -1. */
static long status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t len = strlen(field);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, len) == 0 && line[len] == ':') {
            v = strtol(line + len + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Loading and reading a source maps its file: private (anonymous) memory does not grow with
 * the corpus; the pages are the page cache's, counted in RssFile and shared between processes. */
static void test_no_copy(void) {
    const size_t size = (size_t)32 << 20;
    FILE *f = fopen(at("big.txt"), "wb");
    static uint8_t chunk[1 << 16];
    for (size_t done = 0; f && done < size; done += sizeof chunk) {
        for (size_t k = 0; k < sizeof chunk; k++) chunk[k] = (uint8_t)('a' + (done + k) % 26);
        if (fwrite(chunk, 1, sizeof chunk, f) != sizeof chunk) break;
    }
    if (!f || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", at("big.txt"));
        exit(2);
    }
    const int T = 256, B = 64;
    int *tok = calloc((size_t)B * T, sizeof *tok), *tgt = calloc((size_t)B * T, sizeof *tgt);
    struct data_spec spec;
    struct dataset d;
    spec_init(&spec, 1, (const char *const[]){"big.txt"}, (const double[]){1}, 0.01);

    long anon0 = status_kb("RssAnon"), file0 = status_kb("RssFile");
    if (anon0 < 0 || file0 < 0) {
        fprintf(stderr, "test_data: no RssAnon in /proc/self/status, not measuring\n");
        free(tok);
        free(tgt);
        return;
    }
    EXPECT(data_open(&d, &spec, T) == MOE_OK);
    long anon1 = status_kb("RssAnon");
    /* Read every training byte, a batch and every held-out window. */
    double h = data_unigram_entropy_bits(&d);
    data_train_batch(&d, 1, 0, 0, B, tok, tgt);
    for (long i = 0; i < data_val_windows(&d); i++) data_val_window(&d, i, tok, tgt);
    long anon2 = status_kb("RssAnon"), file2 = status_kb("RssFile");

    long limit_kb = (long)(size / 4 / 1024);
    EXPECT(anon1 - anon0 < limit_kb);
    EXPECT(anon2 - anon0 < limit_kb);
    size_t n_train = size - (size_t)floor((double)size * 0.01);
    double want = 0;
    for (int c = 0; c < 26; c++) {
        size_t count = n_train / 26 + ((size_t)c < n_train % 26);
        double p = (double)count / (double)n_train;
        want -= p * log2(p);
    }
    EXPECT(fabs(h - want) < 1e-12);
    printf("test_data: a %zu MiB source: RssAnon +%ld kB after loading, +%ld kB after reading "
           "it all; RssFile +%ld kB\n",
           size >> 20, anon1 - anon0, anon2 - anon0, file2 - file0);
    data_close(&d);
    free(tok);
    free(tgt);
}

/* ---- data roots ---- */

/* The message of the last failure with every `path` in it written as "P". */
static const char *masked(const char *msg, const char *path, char *out, size_t cap) {
    size_t n = strlen(path), o = 0;
    for (const char *p = msg; *p && o + 2 < cap;) {
        if (n && strncmp(p, path, n) == 0) {
            out[o++] = 'P';
            p += n;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = 0;
    return out;
}

/* Opens `path` as source 0 of a one-source spec with `roots`: the status, and the message. */
static moe_status open_one(const struct data_roots *roots, const char *path, int T, char *msg,
                           size_t cap) {
    struct data_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.n_sources = 1;
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", path);
    spec.sources[0].weight = 1;
    struct data_access a = {roots, NULL};
    struct dataset d;
    moe_status s = data_open_access(&d, &spec, T, &a);
    snprintf(msg, cap, "%s", moe_errmsg());
    if (s == MOE_OK) data_close(&d);
    return s;
}

/* The refusal of a path outside the roots is one text whatever the file is. */
static void test_roots_reveal_nothing(const struct data_roots *r) {
    char m1[800], m2[800], a[800], b[800];
    const char *cases[][2] = {
        {"secret.txt", "absent.txt"},         // there or not
        {"secret.txt", "locked.txt"},         // readable or not
        {"secret.txt", "outdir"},             // a file or a directory
        {"in/../secret.txt", "in/../absent.txt"}, // ".." out of the root
        {"in/link_out", "in/link_nowhere"},   // a symlink out, to a file there or not
        {"in/abs_out", "in/link_out"},        // absolute or relative
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char p1[600], p2[600];
        snprintf(p1, sizeof p1, "%s", at(cases[i][0]));
        snprintf(p2, sizeof p2, "%s", at(cases[i][1]));
        EXPECT(open_one(r, p1, 4, m1, sizeof m1) == MOE_EINVAL);
        EXPECT(open_one(r, p2, 4, m2, sizeof m2) == MOE_EINVAL);
        EXPECT_MSG(strstr(m1, "is outside the worker's data roots") &&
                       strstr(m1, "data.sources[0].path"), "%s", m1);
        EXPECT_MSG(!strcmp(masked(m1, p1, a, sizeof a), masked(m2, p2, b, sizeof b)),
                   "'%s' and '%s' differ", m1, m2);
    }
    /* the size of a file outside is never told, even with a seq_len it is too short for */
    EXPECT(open_one(r, at("secret.txt"), 1 << 20, m1, sizeof m1) == MOE_EINVAL);
    EXPECT_MSG(!strstr(m1, "7777") && !strstr(m1, "bytes"), "%s", m1);
}

static void make_roots_tree(void) {
    make_dir("in");
    make_dir("in/sub");
    make_dir("outdir");
    put_str("in/ok.txt", "inside the root, readable\n");
    put_str("in/sub/x.txt", "a file in a directory of the root\n");
    static char secret[7777];
    memset(secret, 's', sizeof secret);
    put("secret.txt", secret, sizeof secret);
    put_str("locked.txt", "nobody may read this\n");
    chmod(at("locked.txt"), 0);
    if (symlink("../secret.txt", at("in/link_out")) != 0) perror("symlink");
    if (symlink("../absent.txt", at("in/link_nowhere")) != 0) perror("symlink");
    if (symlink(at("secret.txt"), at("in/abs_out")) != 0) perror("symlink");
    if (symlink("ok.txt", at("in/link_in")) != 0) perror("symlink");
    if (symlink("../../secret.txt", at("in/sub/up.txt")) != 0) perror("symlink");
    if (mkfifo(at("in/fifo"), 0600) != 0) perror("mkfifo");
    if (link(at("secret.txt"), at("in/hard.txt")) != 0) perror("link");
}

static void test_roots(void) {
    make_roots_tree();
    const char *dirs[] = {at("in")};
    struct data_roots *r = NULL;
    EXPECT(data_roots_open(&r, dirs, 1) == MOE_OK && data_roots_count(r) == 1);
    if (!r) return;
    char msg[800];

    /* inside: a file, a directory (its symlinks and FIFO skipped), a symlink that stays */
    EXPECT_MSG(open_one(r, at("in/ok.txt"), 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    EXPECT_MSG(open_one(r, at("in/link_in"), 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    EXPECT_MSG(open_one(r, at("in/sub"), 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    char with_dots[600];
    snprintf(with_dots, sizeof with_dots, "%s/./sub//x.txt", at("in"));
    EXPECT_MSG(open_one(r, with_dots, 4, msg, sizeof msg) == MOE_OK, "%s", msg);
    /* inside, errors may say what is wrong */
    EXPECT(open_one(r, at("in/missing.txt"), 4, msg, sizeof msg) == MOE_EIO &&
           strstr(msg, "No such file or directory") && strstr(msg, "data.sources[0].path"));
    EXPECT(open_one(r, at("in/ok.txt"), 1000, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "training part has 26 bytes"));

    /* a FIFO is never opened for reading (that would wait for a writer forever): a hang
     * here is killed by the alarm and fails the test */
    alarm(20);
    EXPECT(open_one(r, at("in/fifo"), 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "not a regular file or directory"));
    EXPECT(open_one(NULL, at("in/fifo"), 4, msg, sizeof msg) == MOE_EINVAL);
    alarm(0);

    test_roots_reveal_nothing(r);
    EXPECT(open_one(r, "/etc/shadow", 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "is outside the worker's data roots"));
    EXPECT(open_one(r, "/proc/self/environ", 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "is outside the worker's data roots"));
    EXPECT(open_one(r, "in/ok.txt", 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "must be an absolute path"));
    /* a directory's symlink that leaves the root is skipped, as every symlink in a walk */
    EXPECT_MSG(open_one(r, at("in/sub"), 4, msg, sizeof msg) == MOE_OK, "%s", msg);

    /* the daemon's secret, even through a hard link inside the root */
    EXPECT(data_roots_guard(r, at("secret.txt"), "--cluster-token-file") == MOE_OK);
    EXPECT(open_one(r, at("in/hard.txt"), 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "is outside the worker's data roots"));
    EXPECT_FAIL(data_roots_guard(r, at("in/ok.txt"), "--tls-key"), MOE_EINVAL,
                "holds");
    data_roots_close(r);

    /* RunSlot's check names the field of the source at fault */
    const char *two[] = {at("in")};
    EXPECT(data_roots_open(&r, two, 1) == MOE_OK);
    struct data_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.n_sources = 2;
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", at("in/ok.txt"));
    snprintf(spec.sources[1].path, sizeof spec.sources[1].path, "%s", "/proc/kmsg");
    EXPECT_FAIL(data_check_sources(r, &spec), MOE_EINVAL,
                "data.sources[1].path '/proc/kmsg' is outside the worker's data roots");
    spec.n_sources = 1;
    EXPECT(data_check_sources(r, &spec) == MOE_OK);
    /* inside the roots, what would fail the slot's loading at once fails RunSlot instead:
     * missing, an empty file, an empty directory (dot-files do not count) */
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", at("in/missing.txt"));
    EXPECT_FAIL(data_check_sources(r, &spec), MOE_EIO, "No such file or directory");
    put_str("in/empty.txt", "");
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", at("in/empty.txt"));
    EXPECT_FAIL(data_check_sources(r, &spec), MOE_EINVAL, "in/empty.txt': empty");
    make_dir("in/void");
    put_str("in/void/.hidden", "not data\n");
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", at("in/void"));
    EXPECT_FAIL(data_check_sources(r, &spec), MOE_EINVAL,
                "data.sources[0].path '");
    EXPECT_FAIL(data_check_sources(r, &spec), MOE_EINVAL, "in/void': an empty directory");
    put_str("in/void/a.txt", "x");
    EXPECT(data_check_sources(r, &spec) == MOE_OK);
    data_roots_close(r);

    /* a root of "/" still never reads a kernel filesystem; none is a root itself */
    const char *slash[] = {"/"}, *proc[] = {"/proc"};
    EXPECT(data_roots_open(&r, slash, 1) == MOE_OK);
    if (access("/proc/self/status", R_OK) == 0)
        EXPECT(open_one(r, "/proc/self/status", 4, msg, sizeof msg) == MOE_EINVAL &&
               strstr(msg, "kernel filesystem"));
    data_roots_close(r);
    EXPECT_FAIL(data_roots_open(&r, proc, 1), MOE_EINVAL, "kernel filesystem");
    /* no roots: nothing at all */
    EXPECT(data_roots_open(&r, NULL, 0) == MOE_OK);
    EXPECT(open_one(r, at("in/ok.txt"), 4, msg, sizeof msg) == MOE_EINVAL &&
           strstr(msg, "without --data-root"));
    data_roots_close(r);
}

/* A stop before or during a load ends it with MOE_ECANCELED. */
static void test_cancel(void) {
    struct data_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.n_sources = 1;
    snprintf(spec.sources[0].path, sizeof spec.sources[0].path, "%s", at("in"));
    spec.sources[0].weight = 1;
    atomic_int stop;
    atomic_init(&stop, 1);
    struct data_access a = {NULL, &stop};
    struct dataset d;
    EXPECT_FAIL(data_open_access(&d, &spec, 4, &a), MOE_ECANCELED, "stopped");
    EXPECT(d.sources == NULL);
    atomic_store(&stop, 0);
    EXPECT(data_open_access(&d, &spec, 4, &a) == MOE_OK);
    data_close(&d);
}

static void cleanup_roots(void) {
    static const char *files[] = {"in/ok.txt", "in/sub/x.txt", "secret.txt", "locked.txt",
                                  "in/link_out", "in/link_nowhere", "in/abs_out", "in/link_in",
                                  "in/sub/up.txt", "in/fifo", "in/hard.txt", "in/empty.txt",
                                  "in/void/.hidden", "in/void/a.txt"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(at(files[i]));
    rmdir(at("in/void"));
    rmdir(at("in/sub"));
    rmdir(at("in"));
    rmdir(at("outdir"));
}

static void cleanup(void) {
    static const char *files[] = {
        "corpus/b.txt", "corpus/a.txt", "corpus/A_upper.txt", "corpus/sub.txt",
        "corpus/sub-x.txt", "corpus/sub/c.txt", "corpus/.hidden.txt", "corpus/.hiddendir/d.txt",
        "corpus/sub/index.dat", "corpus/sub/zlate.txt", "corpus/link.txt", "empty.txt",
        "bindir/x.dat", "letters.txt", "digits.txt", "same.txt", "cycle.bin", "other.txt"};
    static const char *dirs[] = {"corpus/sub", "corpus/.hiddendir", "corpus", "bindir",
                                 "emptydir"};
    static const char *more_files[] = {"gaps/0.txt",     "gaps/1.txt",     "gaps/2.txt",
                                       "gaps/3.txt",     "gaps/4.txt",     "allempty/a.txt",
                                       "allempty/b.txt", "big.txt"};
    static const char *more_dirs[] = {"multi/b", "multi", "gaps", "allempty"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(at(files[i]));
    for (size_t i = 0; i < sizeof more_files / sizeof more_files[0]; i++) unlink(at(more_files[i]));
    for (int i = 0; i < N_MULTI; i++) unlink(at(multi_files[i]));
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) rmdir(at(dirs[i]));
    for (size_t i = 0; i < sizeof more_dirs / sizeof more_dirs[0]; i++) rmdir(at(more_dirs[i]));
    if (rmdir(root) != 0) {
        fprintf(stderr, "%s not empty after the tests: %s\n", root, strerror(errno));
        failures++;
    }
}

int main(void) {
    moe_log_init("test");
    if (!getenv("MOE_LOG_LEVEL")) moe_log_set_level(MOE_LOG_WARN);
    tree_make("test_data");
    test_loading();
    test_batches();
    test_entropy();
    test_boundaries();
    test_empty_files();
    test_no_copy();
    test_roots();
    test_cancel();
    cleanup_roots();
    cleanup();
    if (failures) {
        fprintf(stderr, "test_data: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_data: ok\n");
    return 0;
}
