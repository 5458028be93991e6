/*
 * data.h — text corpora to token streams, and replayable batches.
 *
 * Owns: loading each data source (a text file, or a directory of text files read recursively
 * in byte-wise sorted path order, skipping symlinks and files that are not text) as one byte
 * stream per source, as a data_access allows: a worker reads only beneath its data roots
 * (data_roots.h opens every file) and stops loading when its job is stopped; the split of each stream into a training part and a held-out tail; and
 * the batch function. Tokens are bytes (vocabulary 256), or, when the spec names a tokenizer
 * (data.tokenizer), the ids of each file's text as common/tokenizer.h encodes it, either
 * encoded as the source loads or read from a prepared directory (data.prepared, tokens.h).
 * Either way a stream is then a sequence of token ids, and every count below (n, n_train,
 * windows, offsets) is in tokens; the bytes of text each target token stands for are counted
 * for bits per byte (data_*_bytes).
 *
 * A stream is not copied into memory: each file is memory-mapped read-only, and the stream is
 * the concatenation of those mappings. Every process that loads a corpus on one host shares
 * its pages through the page cache, so a corpus costs address space, not private memory, and
 * may be larger than RAM. (Files that cannot be mapped are read into the heap instead; see
 * add_file in data.c.) Files must not be truncated while a job reads them: a mapped page past
 * the new end of the file raises SIGBUS.
 *
 * The batch of step n is a pure function of (seed, n) and the loaded sources: sequence i of
 * step n draws its source from the mixture weights in force at step n and its start offset
 * from a counter-based hash of (seed, n, i) — no state carries between steps, so any step can
 * be replayed exactly, and a data shard is just a range of sequence indices.
 * Never: trains, keeps a cursor, or writes to a file it reads.
 */
#ifndef MOE_DATA_H
#define MOE_DATA_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "dataset.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Loads every source of the spec. Fails (MOE_EIO / MOE_EINVAL naming the path) when a source
 * is missing, unreadable, holds no text, or its training part is shorter than T + 1 bytes or
 * (when val_fraction > 0) its held-out part is shorter than T + 1 bytes. data_open reads any
 * path (a = NULL); with roots, errors name the field: "data.sources[1].path '/x' is outside
 * the worker's data roots" (and say nothing of a file outside them). */
moe_status data_open(struct dataset *d, const struct data_spec *spec, int T);
moe_status data_open_access(struct dataset *d, const struct data_spec *spec, int T,
                            const struct data_access *a);

/* Checks, without reading, that every source path opens for reading beneath the roots as a
 * non-empty regular file or a directory with an entry (a worker's RunSlot: the job fails at
 * once, MOE_EINVAL or MOE_EIO naming the field and the path), and that data.tokenizer opens
 * as a file and data.prepared as a directory. Cheap: no directory walk. */
moe_status data_check_sources(const struct data_roots *roots, const struct data_spec *spec);
void data_close(struct dataset *d);

/* Loads one path (file or directory) as a single stream with no held-out part, for `eval`. */
moe_status data_load_stream(struct data_stream *s, const char *path);
void data_stream_free(struct data_stream *s);

/* Reads the tokenizer file `path` (field names it in errors: "data.tokenizer") beneath the
 * roots (NULL: anywhere) and loads it: *bytes (malloc'd) and *tok. */
moe_status data_tokenizer_open(const struct data_roots *roots, const char *field,
                               const char *path, uint8_t **bytes, size_t *n,
                               struct tokenizer **tok);

/* Replaces a loaded stream's bytes by their tokens (each segment, i.e. file, encoded on its
 * own), for `eval` and for sources loaded without a prepared directory. */
moe_status data_tokenize_stream(struct data_stream *s, const struct tokenizer *tok);

/* Bytes of text of the targets of a batch's sequences [first, first + count), of held-out
 * window i, of a stream's window i: what bits per byte divides by. Byte streams: count * T. */
uint64_t data_train_batch_bytes(const struct dataset *d, uint64_t seed, long step, int first,
                                int count);
uint64_t data_val_window_bytes(const struct dataset *d, long i);
uint64_t stream_window_bytes(const struct data_stream *s, int T, long i);

/* Mixture weights (normalised to sum 1) in force at `step`. */
void data_weights_at(const struct data_spec *spec, long step, double *weights);

/* Sequences [first, first + count) of the global training batch of `step`:
 * tokens[j*T + t] = the byte at offset+t, targets[j*T + t] = the byte at offset+t+1. */
void data_train_batch(const struct dataset *d, uint64_t seed, long step, int first, int count,
                      int *tokens, int *targets);

/* The same batch for data shard `shard` of `n_shards` when the global batch is `batch`
 * sequences: sequences [shard*batch/n_shards, (shard+1)*batch/n_shards). */
void data_shard_batch(const struct dataset *d, uint64_t seed, long step, int shard, int n_shards,
                      int batch, int *tokens, int *targets);

/* Held-out evaluation: the held-out parts of all sources cut into consecutive non-overlapping
 * windows of T+1 bytes (stride T), enumerated source by source. Returns the number of windows;
 * data_val_window(d, i, ...) writes window i. */
long data_val_windows(const struct dataset *d);
void data_val_window(const struct dataset *d, long i, int *tokens, int *targets);

/* The same windowing over an arbitrary stream (for eval of a model on a file). */
long stream_windows(const struct data_stream *s, int T);
void stream_window(const struct data_stream *s, int T, long i, int *tokens, int *targets);

/* Unigram (byte- or token-frequency) entropy, in bits per byte of the training parts,
 * mixture-weighted by the step-0 weights: the loss a model that ignores context cannot beat. */
double data_unigram_entropy_bits(const struct dataset *d);

#endif
