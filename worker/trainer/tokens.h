/*
 * tokens.h — prepared token datasets: a spec's sources tokenized once, mapped by every job.
 *
 * Owns: the layout of a prepared directory (written by `moectl data prepare`, read when a spec
 * names it as data.prepared) and its checks. DIR holds
 *   index.json  {"format": "moed-tokens/1", "tokenizer_sha256": HEX, "vocab": V,
 *                "sources": [{"path": P, "file": "0.tok", "tokens": N, "bytes": B,
 *                             "files": F}, ...]}     one entry per data.sources entry, in order
 *   J.tok       source J's tokens: N little-endian uint32 ids, exactly what data.c's
 *               data_tokenize_stream makes of the source (each file encoded on its own, in
 *               the source's sorted file order), so a prepared job draws the same batches as
 *               one that tokenizes as it loads.
 * A job maps J.tok read-only (shared through the page cache like the text sources) after
 * checking that the index names the same sources and the same tokenizer (by SHA-256 of its
 * file) and that every id is below V.
 * Never: tokenizes (data.c does) or draws batches.
 */
#ifndef MOE_TOKENS_H
#define MOE_TOKENS_H

#include "../../common/status.h"
#include "dataset.h"

/* Writes DIR for the loaded dataset d (opened with a tokenizer and no data.prepared). On
 * failure nothing usable is left: the files written so far are removed. */
moe_status tokens_prepare(const struct dataset *d, const char *dir);

/* Loads source j of d->spec from d->spec->prepared beneath the roots (NULL: anywhere) into s.
 * d->tok must be loaded. Errors name data.prepared and the file at fault. */
moe_status tokens_load_source(struct data_stream *s, const struct dataset *d, int j,
                              const struct data_roots *roots);

/* Lower-case hex SHA-256 of n bytes into hex[65]. */
void tokens_sha256_hex(const void *bytes, size_t n, char hex[65]);

#endif
