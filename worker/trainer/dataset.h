/*
 * dataset.h — the in-memory form of a loaded dataset: its streams and their segments, and how a
 * load may read. Types only, shared by the loader (data.c), prepared token directories
 * (tokens.c) and their callers, so that neither of those two depends on the other's code.
 * Never: declares a function (data.h, tokens.h do).
 */
#ifndef MOE_DATASET_H
#define MOE_DATASET_H

#include "../../common/spec.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct data_roots;
struct tokenizer;

/* How a load may read. */
struct data_access {
    const struct data_roots *roots; // NULL: any path this process can read (`moectl train`:
                                    //   the user's own files); else only beneath these roots
    const atomic_int *cancel;       // non-zero: stop loading now (MOE_ECANCELED); NULL: never.
                                    //   Files are opened without blocking and read in bounded
                                    //   chunks, so a stop is seen promptly
};

/* One non-empty file of a stream: stream bytes [start, start + n). */
struct data_segment {
    const uint8_t *bytes; // (n) a read-only mapping of the file, or a heap copy if !mapped
    size_t start;
    size_t n;
    int mapped; // 1: munmap to release; 0: read into the heap (see data.c for when)
};

struct data_stream {
    char path[SPEC_PATH_MAX];
    struct data_segment *segments; // (n_segments) in stream order; empty files have none
    int n_segments;
    size_t n;       // all bytes of the source
    size_t n_train; // bytes [0, n_train) train, [n_train, n) held out
    int n_files;    // text files read, empty ones included (1 for a plain file)
    /* With a tokenizer (segments are then released): */
    const uint32_t *ids;         // (n) the tokens: each file's encoding, in file order
    size_t ids_mapped;           // bytes mapped at ids (a prepared file); 0: heap
    size_t n_bytes;              // bytes of text the tokens stand for (n when ids is NULL)
    const struct tokenizer *tok; // borrowed from the dataset (or the caller, for eval)
};

struct dataset {
    int n_sources;
    struct data_stream *sources;
    const struct data_spec *spec; // weights and schedule (borrowed; must outlive the dataset)
    int T;                        // sequence length
    struct tokenizer *tok;        // data.tokenizer loaded; NULL: tokens are bytes
    uint8_t *tok_model;           // (tok_model_len) the tokenizer file's bytes, for the model
    size_t tok_model_len;
};

#endif
