/*
 * model_io.h — the model's safetensors layout: tensor names, shapes and metadata.
 *
 * Owns: the mapping between struct model's arenas and named tensors
 * (blocks.{l}.attn.qkv.weight, ...; docs/model.md lists them all), the model config stored in
 * the file's metadata, loading a file back with every shape checked, and a trained job's pair
 * of files (the model, and its spec and step as JSON beside it).
 * Never: trains, or decides which directory files go to (callers give the path).
 */
#ifndef MOE_MODEL_IO_H
#define MOE_MODEL_IO_H

#include "../../common/spec.h"
#include "../../common/status.h"
#include "../../kernels/model.h"

/* Writes parameters and expert biases. extra_meta (may be NULL/0) adds key/value strings. */
moe_status model_save(const struct model *m, const char *path, const char *const *extra_meta,
                      int n_extra);

/* A job's trained model: `path` (.safetensors, with the step and the job's name in its
 * metadata) plus `path` with .json for .safetensors ({"step": N, "spec": {...}}). Both are
 * written atomically, and a failure leaves neither. A job with a tokenizer (tokenizer_len > 0)
 * stores the tokenizer file's bytes in the model as the U8 tensor "tokenizer.model" and its
 * SHA-256 (hex) as metadata "moed.tokenizer_sha256": the model file is all that eval and
 * generate need, and nothing can pair it with another tokenizer. */
moe_status model_save_job(const struct model *m, const struct job_spec *spec,
                          const uint8_t *tokenizer, size_t tokenizer_len, const char *path);

/* The tokenizer stored in a model file: *bytes (malloc'd) and its SHA-256 in hex, or *bytes
 * NULL and sha "" for a byte-level model. MOE_EFORMAT when the stored bytes do not match the
 * stored SHA-256. */
moe_status model_load_tokenizer(const char *path, uint8_t **bytes, size_t *n, char sha[65]);

/* Reads a file written by model_save: allocates `m` for batches up to B_max from the config in
 * its metadata and fills parameters and biases. Wrong shapes, missing tensors or a missing or
 * malformed config fail with MOE_EFORMAT naming the file and tensor. */
moe_status model_load(struct model *m, const char *path, int B_max);
/* The same from a file already read (`path` names it in errors). */
struct st_file;
moe_status model_load_st(struct model *m, const struct st_file *f, const char *path, int B_max);

/* Starts m (allocated for its spec; it may hold experts [expert_lo, expert_lo + n_local)
 * only) from a whole model file: parameters and expert biases. Every tensor of m's config
 * must be in f with its whole shape: the first that is missing or shaped otherwise fails
 * (MOE_ENOTFOUND / MOE_EFORMAT) naming it, with the expected and the found shape; a tensor
 * the config does not have fails too. The moments and the step are not touched. */
moe_status model_params_from(struct model *m, const struct st_file *f);

/* The model config as a JSON object string (caller frees), and back. */
char *model_config_json(const struct model_config *c);
moe_status model_config_from_json(struct model_config *c, const char *json, const char *origin);

#endif
