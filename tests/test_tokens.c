/*
 * test_tokens.c — token streams (data.tokenizer) and prepared token datasets (tokens.h): a
 * source's tokens are its files encoded one by one in sorted order (re-derived here through
 * tokenizer.h); a prepared directory gives exactly the batches, held-out windows, byte counts
 * and entropy of tokenizing as the source loads; the byte count of a batch is the length of
 * its decoded targets; and bad input (no tokenizer, another tokenizer, a missing, short or
 * corrupt token file, a corrupt tokenizer) fails with one line naming it.
 */
#include "../common/tokenizer.h"
#include "../kernels/mix64.h"
#include "../worker/trainer/data.h"
#include "../worker/trainer/tokens.h"
#include "check.h"
#include "temp_tree.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* n bytes of text, mostly words, some invalid UTF-8 and control bytes. */
static uint8_t *text(uint64_t seed, size_t n) {
    static const char *w[] = {"alpha ", "beta ", "gamma\n", "déjà ", "vu ", "\xff\xfe", "\t"};
    uint8_t *b = malloc(n);
    for (size_t k = 0, i = 0; k < n; i++) {
        const char *s = w[mix64(seed ^ i) % 7];
        for (; *s && k < n; s++) b[k++] = (uint8_t)*s;
    }
    return b;
}

static struct tokenizer *train(const uint8_t *b, size_t n, int vocab, const char *file) {
    const uint8_t *bytes[] = {b};
    struct tokenizer_texts texts = {bytes, &n, 1};
    uint8_t *model;
    size_t len;
    struct tokenizer *t = NULL;
    if (tokenizer_train(&texts, vocab, "bpe", &model, &len) != MOE_OK) {
        printf("%s\n", moe_errmsg());
        exit(2);
    }
    put(file, model, len);
    if (tokenizer_load(model, len, file, &t) != MOE_OK) exit(2);
    free(model);
    return t;
}

static const size_t sizes[3] = {30000, 7000, 20000}; // d/a.txt, d/b.txt, c.txt
static uint8_t *files[3];

static void make_corpus(void) {
    tree_make("test_tokens");
    make_dir("d");
    const char *names[3] = {"d/b.txt", "d/a.txt", "c.txt"}; // d/a.txt sorts first
    for (int i = 0; i < 3; i++) {
        files[i] = text((uint64_t)i + 1, sizes[i]);
        put(names[i == 0 ? 1 : i == 1 ? 0 : 2], files[i], sizes[i]);
    }
}

/* Source 0 (directory d) is d/a.txt then d/b.txt, each encoded on its own. */
static void check_stream(const struct dataset *d, const struct tokenizer *t) {
    uint32_t *ids = NULL;
    size_t n = 0, cap = 0;
    EXPECT(tokenizer_encode(t, files[0], sizes[0], &ids, &n, &cap) == MOE_OK);
    EXPECT(tokenizer_encode(t, files[1], sizes[1], &ids, &n, &cap) == MOE_OK);
    const struct data_stream *s = &d->sources[0];
    EXPECT(s->ids && s->n == n && memcmp(s->ids, ids, n * sizeof *ids) == 0);
    EXPECT(s->n_bytes == sizes[0] + sizes[1] && s->n < s->n_bytes / 2);
    free(ids);
}

static void spec_init(struct data_spec *s, const char *prepared) {
    memset(s, 0, sizeof *s);
    s->n_sources = 2;
    snprintf(s->sources[0].path, SPEC_PATH_MAX, "%s", at("d"));
    snprintf(s->sources[1].path, SPEC_PATH_MAX, "%s", at("c.txt"));
    s->sources[0].weight = 1;
    s->sources[1].weight = 2;
    s->n_schedule = 1;
    s->schedule[0].step = 5;
    s->schedule[0].weights[0] = 3;
    s->schedule[0].weights[1] = 1;
    s->val_fraction = 0.1;
    snprintf(s->tokenizer, SPEC_PATH_MAX, "%s", at("tok.model"));
    if (prepared) snprintf(s->prepared, SPEC_PATH_MAX, "%s", at(prepared));
}

#define B 12
#define T 32

/* The same batches, bytes, windows and entropy from both datasets; bytes re-derived. */
static void compare(const struct dataset *a, const struct dataset *b, const struct tokenizer *t) {
    int ta[B * T], ga[B * T], tb[B * T], gb[B * T];
    for (long step = 0; step < 12; step++) {
        data_train_batch(a, 9, step, 0, B, ta, ga);
        data_train_batch(b, 9, step, 0, B, tb, gb);
        EXPECT_MSG(!memcmp(ta, tb, sizeof ta) && !memcmp(ga, gb, sizeof ga), "step %ld", step);
        uint64_t bytes = 0;
        for (int q = 0; q < B * T; q++) bytes += (uint64_t)tokenizer_token_bytes(t, ga[q]);
        EXPECT(data_train_batch_bytes(a, 9, step, 0, B) == bytes);
        EXPECT(data_train_batch_bytes(b, 9, step, 0, B) == bytes);
        EXPECT(data_train_batch_bytes(a, 9, step, 3, 4) < bytes);
    }
    long nv = data_val_windows(a);
    EXPECT(nv > 0 && nv == data_val_windows(b));
    for (long i = 0; i < nv; i++) {
        data_val_window(a, i, ta, ga);
        data_val_window(b, i, tb, gb);
        EXPECT(!memcmp(ta, tb, T * sizeof *ta) && !memcmp(ga, gb, T * sizeof *ga));
        EXPECT(data_val_window_bytes(a, i) == data_val_window_bytes(b, i));
    }
    EXPECT(data_unigram_entropy_bits(a) == data_unigram_entropy_bits(b));
}

static void bad_input(struct data_spec *spec) {
    struct dataset d;
    char keep[SPEC_PATH_MAX];
    memcpy(keep, spec->tokenizer, sizeof keep);
    spec->tokenizer[0] = 0;
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EINVAL, "data.prepared needs data.tokenizer");
    memcpy(spec->tokenizer, keep, sizeof keep);
    put("bad.model", "\x0a\x05garbage", 9);
    snprintf(spec->tokenizer, SPEC_PATH_MAX, "%s", at("bad.model"));
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EFORMAT, "bad.model': not a SentencePiece");
    snprintf(spec->tokenizer, SPEC_PATH_MAX, "%s", at("other.model"));
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EINVAL, "prepared with another tokenizer");
    memcpy(spec->tokenizer, keep, sizeof keep);
    /* a token id past the vocabulary, a short file, a missing file */
    uint32_t big = 0xffffffffu;
    FILE *f = fopen(at("prep/1.tok"), "r+b");
    if (!f || fwrite(&big, 4, 1, f) != 1) exit(2);
    fclose(f);
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EFORMAT, "1.tok': token 0 is id 4294967295");
    if (truncate(at("prep/1.tok"), 40) != 0) exit(2);
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EFORMAT, "1.tok': expected");
    unlink(at("prep/1.tok"));
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EIO, "1.tok");
    snprintf(spec->sources[1].path, SPEC_PATH_MAX, "%s", at("d"));
    EXPECT_FAIL(data_open(&d, spec, T), MOE_EINVAL, "prepared for other sources");
}

int main(void) {
    make_corpus();
    struct tokenizer *t = train(files[0], sizes[0], 300, "tok.model");
    struct tokenizer *other = train(files[2], sizes[2], 290, "other.model");
    struct data_spec fly, prep;
    struct dataset a, b;
    spec_init(&fly, NULL);
    EXPECT(data_open(&a, &fly, T) == MOE_OK);
    check_stream(&a, t);
    EXPECT(tokens_prepare(&a, at("prep")) == MOE_OK);
    spec_init(&prep, "prep");
    EXPECT(data_open(&b, &prep, T) == MOE_OK);
    EXPECT(b.sources[0].ids_mapped > 0 && a.sources[0].ids_mapped == 0);
    compare(&a, &b, t);
    data_close(&b);

    /* Byte tokens keep their meaning: a batch's bytes are its tokens. */
    struct data_spec bytes_spec;
    struct dataset c;
    spec_init(&bytes_spec, NULL);
    bytes_spec.tokenizer[0] = 0;
    EXPECT(data_open(&c, &bytes_spec, T) == MOE_OK);
    EXPECT(!c.sources[0].ids && data_train_batch_bytes(&c, 9, 3, 0, B) == (uint64_t)B * T);
    EXPECT(c.sources[0].n == sizes[0] + sizes[1]);
    data_close(&c);

    bad_input(&prep);
    data_close(&a);
    tokenizer_free(t);
    tokenizer_free(other);
    tree_remove();
    for (int i = 0; i < 3; i++) free(files[i]);
    printf("%s: %s\n", __FILE__, failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
