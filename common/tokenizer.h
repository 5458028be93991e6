/*
 * tokenizer.h — a learned subword vocabulary (SentencePiece) behind a small C interface.
 *
 * Owns: training a SentencePiece model (BPE or unigram, byte fallback on) from text held in
 * memory, loading one from its serialized bytes, and the exact mapping between text and token
 * ids that docs/model.md ("Tokenization") specifies: which bytes SentencePiece sees (maximal
 * runs of valid UTF-8 holding no NUL, newline or U+2581), which it never sees (those go
 * straight to byte tokens <0xXX>), and how many bytes of original text each token stands for.
 * Every input round-trips exactly: decode(encode(x)) == x for any bytes x, invalid UTF-8
 * included. The implementation is the one C++ file of moed (tokenizer.cc); this header is C.
 * Never: reads or writes files (callers pass bytes), or logs.
 */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include "status.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tokenizer;

/* Training input: n texts (e.g. one per file), each split into lines by the trainer. */
struct tokenizer_texts {
    const uint8_t *const *bytes; // (n)
    const size_t *lens;          // (n)
    int n;
};

/* Trains a model of exactly `vocab` pieces ("bpe" or "unigram"); one thread, fixed seed, so
 * the same texts always give the same bytes. *model (malloc'd, caller frees) is the serialized
 * SentencePiece ModelProto. MOE_EINVAL with SentencePiece's reason when it cannot (e.g. a
 * vocabulary larger than the text supports). */
moe_status tokenizer_train(const struct tokenizer_texts *texts, int vocab, const char *type,
                           uint8_t **model, size_t *model_len);

/* Loads a serialized model; MOE_EFORMAT (naming `origin`) when it is not one, or has no byte
 * fallback pieces. */
moe_status tokenizer_load(const uint8_t *model, size_t len, const char *origin,
                          struct tokenizer **out);
void tokenizer_free(struct tokenizer *t);

/* Number of pieces: the model's vocabulary V. */
int tokenizer_vocab(const struct tokenizer *t);

/* Bytes of original text token `id` decodes to (0 for control and unknown pieces). */
int tokenizer_token_bytes(const struct tokenizer *t, int id);

/* Appends the ids of `n` bytes of text to *ids (realloc'd; *n_ids and *cap updated). */
moe_status tokenizer_encode(const struct tokenizer *t, const uint8_t *text, size_t n,
                            uint32_t **ids, size_t *n_ids, size_t *cap);

/* Writes the text of one token into out (room for at least tokenizer_token_bytes(t, id)
 * bytes); returns the number of bytes written. An id out of range writes nothing. */
size_t tokenizer_decode_token(const struct tokenizer *t, int id, uint8_t *out);

#ifdef __cplusplus
}
#endif

#endif
