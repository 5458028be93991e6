/*
 * model_io.h — the model's safetensors layout: tensor names, shapes and metadata.
 *
 * Owns: the mapping between struct model's arenas and named tensors
 * (blocks.{l}.attn.qkv.weight, ...; docs/model.md lists them all), the model config stored in
 * the file's metadata, and loading a file back with every shape checked.
 * Never: trains, or decides where files go.
 */
#ifndef MOE_MODEL_IO_H
#define MOE_MODEL_IO_H

#include "../../common/status.h"
#include "../../kernels/model.h"

/* Writes parameters and expert biases. extra_meta (may be NULL/0) adds key/value strings. */
moe_status model_save(const struct model *m, const char *path, const char *const *extra_meta,
                      int n_extra);

/* Reads a file written by model_save: allocates `m` for batches up to B_max from the config in
 * its metadata and fills parameters and biases. Wrong shapes, missing tensors or a missing or
 * malformed config fail with MOE_EFORMAT naming the file and tensor. */
moe_status model_load(struct model *m, const char *path, int B_max);

/* The model config as a JSON object string (caller frees), and back. */
char *model_config_json(const struct model_config *c);
moe_status model_config_from_json(struct model_config *c, const char *json, const char *origin);

#endif
