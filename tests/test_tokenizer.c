/* The tokenizer's C interface (common/tokenizer.h): training is deterministic, any bytes
 * (invalid UTF-8, NULs, U+2581, newlines) round-trip exactly, each token's byte count adds up
 * to the text's length, learned pieces do compress, and a file that is not a model fails with
 * one line. */
#include "../common/tokenizer.h"
#include "../kernels/mix64.h"
#include "check.h"

#include <stdlib.h>

static const char *words[] = {"the", "model", "learns", "a ", "vocabulary", "of", "pieces",
                              "café", "naïve", "中文", "🙂", "tokens", "and", "bytes", "\t"};

/* n bytes of word salad over a few lines, fixed by `seed`. */
static uint8_t *salad(uint64_t seed, size_t n) {
    uint8_t *b = malloc(n);
    size_t k = 0;
    for (uint64_t i = 0; k < n; i++) {
        uint64_t h = mix64(seed ^ i);
        const char *w = h % 17 == 0 ? "\n" : words[h % (sizeof words / sizeof *words)];
        for (const char *p = w; *p && k < n; p++) b[k++] = (uint8_t)*p;
        if (k < n && h % 3) b[k++] = ' ';
    }
    return b;
}

static size_t encode_len(const struct tokenizer *t, const uint8_t *x, size_t n, int roundtrip) {
    uint32_t *ids = NULL;
    size_t n_ids = 0, cap = 0, bytes = 0;
    EXPECT(tokenizer_encode(t, x, n, &ids, &n_ids, &cap) == MOE_OK);
    uint8_t *back = malloc(n + 64);
    for (size_t i = 0; i < n_ids; i++) {
        EXPECT((int)ids[i] < tokenizer_vocab(t));
        int nb = tokenizer_token_bytes(t, (int)ids[i]);
        EXPECT(nb > 0 && bytes + (size_t)nb <= n);
        if (nb <= 0 || bytes + (size_t)nb > n) break;
        bytes += tokenizer_decode_token(t, (int)ids[i], back + bytes);
    }
    if (roundtrip) EXPECT_MSG(bytes == n && memcmp(back, x, n) == 0, "round trip of %zu bytes", n);
    free(back);
    free(ids);
    return n_ids;
}

int main(void) {
    size_t n = 200000;
    uint8_t *text = salad(1, n);
    const uint8_t *bytes[] = {text};
    struct tokenizer_texts texts = {bytes, &n, 1};
    uint8_t *m1, *m2;
    size_t l1, l2;
    EXPECT(tokenizer_train(&texts, 400, "bpe", &m1, &l1) == MOE_OK);
    EXPECT(tokenizer_train(&texts, 400, "bpe", &m2, &l2) == MOE_OK);
    EXPECT_MSG(l1 == l2 && memcmp(m1, m2, l1) == 0, "training twice gives the same model");
    free(m2);
    struct tokenizer *t = NULL;
    EXPECT(tokenizer_load(m1, l1, "tok.model", &t) == MOE_OK);
    if (!t) return 1;
    EXPECT(tokenizer_vocab(t) == 400);

    /* Learned pieces: held-out salad takes well under one token per byte. */
    uint8_t *other = salad(2, 20000);
    size_t nt = encode_len(t, other, 20000, 1);
    EXPECT_MSG(nt < 20000 / 2, "%zu tokens for 20000 bytes", nt);

    /* Arbitrary bytes: random ones (mostly invalid UTF-8), every byte value, the marker. */
    uint8_t junk[4096];
    for (size_t i = 0; i < sizeof junk; i++) junk[i] = (uint8_t)mix64(i + 7);
    encode_len(t, junk, sizeof junk, 1);
    for (int i = 0; i < 256; i++) junk[i] = (uint8_t)i;
    encode_len(t, junk, 256, 1);
    static const char odd[] =
        "a\xE2\x96\x81" "b \xC0\xAF\xED\xA0\x80 caf\xC3 \xF4\x90\x80\x80\n\n x\0y";
    encode_len(t, (const uint8_t *)odd, sizeof odd - 1, 1);
    EXPECT(encode_len(t, (const uint8_t *)"", 0, 1) == 0);

    /* A unigram model trains too, and round-trips the same way. */
    struct tokenizer *u = NULL;
    uint8_t *m3;
    size_t l3;
    EXPECT(tokenizer_train(&texts, 400, "unigram", &m3, &l3) == MOE_OK);
    EXPECT(tokenizer_load(m3, l3, "u.model", &u) == MOE_OK);
    if (u) encode_len(u, junk, 256, 1);

    /* Bad input: one clear line. */
    struct tokenizer *bad = NULL;
    EXPECT_FAIL(tokenizer_load((const uint8_t *)"not a model", 11, "x.model", &bad), MOE_EFORMAT,
                "x.model: not a SentencePiece tokenizer");
    EXPECT_FAIL(tokenizer_load(m1, l1 / 2, "half.model", &bad), MOE_EFORMAT, "half.model");
    EXPECT(bad == NULL);
    EXPECT_FAIL(tokenizer_train(&texts, 100, "bpe", &m2, &l2), MOE_EINVAL, "--vocab 100");
    EXPECT_FAIL(tokenizer_train(&texts, 400, "wordpiece", &m2, &l2), MOE_EINVAL, "--type");
    size_t tiny = 50;
    struct tokenizer_texts few = {bytes, &tiny, 1};
    EXPECT_FAIL(tokenizer_train(&few, 5000, "bpe", &m2, &l2), MOE_EINVAL, "tokenizer: ");
    printf("%s: %s\n", __FILE__, failures ? "FAILED" : "ok");
    tokenizer_free(t);
    tokenizer_free(u);
    free(m1);
    free(m3);
    free(text);
    free(other);
    return failures ? 1 : 0;
}
