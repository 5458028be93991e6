/*
 * test_data.c — corpus loading (order, skips, errors), the held-out split, and the batch
 * function checked against an independent re-derivation of the documented hash.
 */
#include "../common/log.h"
#include "../worker/data.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

#define EXPECT(cond)                                                                              \
    do {                                                                                          \
        if (!(cond)) {                                                                            \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);              \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

#define EXPECT_FAIL(call, want, needle)                                                           \
    do {                                                                                          \
        moe_status s_ = (call);                                                                   \
        if (s_ != (want) || !strstr(moe_errmsg(), (needle))) {                                    \
            fprintf(stderr, "%s:%d: %s: got %s \"%s\", wanted %s containing \"%s\"\n", __FILE__,  \
                    __LINE__, #call, moe_status_str(s_), moe_errmsg(), moe_status_str(want),      \
                    (needle));                                                                    \
            failures++;                                                                           \
        }                                                                                         \
    } while (0)

static char root[] = "/tmp/test_data.XXXXXX";

static const char *at(const char *rel) {
    static char buf[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", root, rel);
    return buf[k];
}

static void put(const char *rel, const void *p, size_t n) {
    FILE *f = fopen(at(rel), "wb");
    if (!f || fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "cannot write %s: %s\n", at(rel), strerror(errno));
        exit(2);
    }
    fclose(f);
}

static void put_str(const char *rel, const char *s) { put(rel, s, strlen(s)); }

static void make_dir(const char *rel) {
    if (mkdir(at(rel), 0755) != 0) {
        fprintf(stderr, "mkdir %s: %s\n", at(rel), strerror(errno));
        exit(2);
    }
}

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
    EXPECT(s.n >= wlen && memcmp(s.bytes, want, wlen) == 0);
    EXPECT(s.n == wlen + sizeof late_nul && memcmp(s.bytes + wlen, late_nul, sizeof late_nul) == 0);
    EXPECT(strcmp(s.path, at("corpus")) == 0);
    data_stream_free(&s);

    /* A trailing slash changes nothing. */
    EXPECT(data_load_stream(&s, at("corpus/")) == MOE_OK);
    EXPECT(s.n == wlen + sizeof late_nul && memcmp(s.bytes, want, wlen) == 0);
    data_stream_free(&s);

    /* A plain file is read as it is, and a symlink given directly is followed. */
    EXPECT(data_load_stream(&s, at("corpus/b.txt")) == MOE_OK);
    EXPECT(s.n == 7 && memcmp(s.bytes, "B-text\n", 7) == 0 && s.n_files == 1);
    data_stream_free(&s);
    EXPECT(data_load_stream(&s, at("corpus/link.txt")) == MOE_OK);
    EXPECT(s.n == 7 && memcmp(s.bytes, "a-text\n", 7) == 0);
    data_stream_free(&s);

    /* Errors name the path. */
    char msg[800];
    snprintf(msg, sizeof msg, "data: %s: No such file or directory", at("missing.txt"));
    EXPECT_FAIL(data_load_stream(&s, at("missing.txt")), MOE_EIO, msg);
    EXPECT(s.bytes == NULL);
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
            size_t off = (size_t)(h2 % (s->n_train - (size_t)T));
            EXPECT(off + T + 1 <= s->n_train);
            int ok = 1;
            for (int t = 0; t < T; t++)
                ok &= seq_t[t] == s->bytes[off + t] && seq_g[t] == s->bytes[off + t + 1];
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
        size_t start = s->n_train + (size_t)(i < n0 ? i : i - n0) * T;
        EXPECT(start >= s->n_train && start + T + 1 <= s->n);
        int ok = 1;
        for (int t = 0; t < T; t++)
            ok &= vt[t] == s->bytes[start + t] && vg[t] == s->bytes[start + t + 1];
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
    EXPECT(vt[0] == s.bytes[last * T] && vg[T - 1] == s.bytes[last * T + T]);
    data_stream_free(&s);
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

static void cleanup(void) {
    static const char *files[] = {
        "corpus/b.txt", "corpus/a.txt", "corpus/A_upper.txt", "corpus/sub.txt",
        "corpus/sub-x.txt", "corpus/sub/c.txt", "corpus/.hidden.txt", "corpus/.hiddendir/d.txt",
        "corpus/sub/index.dat", "corpus/sub/zlate.txt", "corpus/link.txt", "empty.txt",
        "bindir/x.dat", "letters.txt", "digits.txt", "same.txt", "cycle.bin", "other.txt"};
    static const char *dirs[] = {"corpus/sub", "corpus/.hiddendir", "corpus", "bindir",
                                 "emptydir"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) unlink(at(files[i]));
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) rmdir(at(dirs[i]));
    if (rmdir(root) != 0) {
        fprintf(stderr, "%s not empty after the tests: %s\n", root, strerror(errno));
        failures++;
    }
}

int main(void) {
    moe_log_init("test");
    if (!getenv("MOE_LOG_LEVEL")) moe_log_set_level(MOE_LOG_WARN);
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 2;
    }
    test_loading();
    test_batches();
    test_entropy();
    cleanup();
    if (failures) {
        fprintf(stderr, "test_data: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_data: ok\n");
    return 0;
}
