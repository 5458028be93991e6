/*
 * generate.h — sampling text from a trained model, one token (a byte, or a piece of a
 * learned vocabulary) at a time.
 *
 * Owns: the decoding loop. The context is the last seq_len bytes; the next byte is drawn from
 * softmax(logits / temperature) with a uniform from the counter-based hash of (seed, position),
 * so a seed always gives the same text; temperature 0 takes the most likely byte (lowest on
 * ties). No KV cache: each byte re-runs the forward over the context, which is plenty for the
 * model sizes a CPU trains.
 * Never: changes the model.
 */
#ifndef MOE_GENERATE_H
#define MOE_GENERATE_H

#include "../../common/status.h"
#include "../../kernels/model.h"

#include <stddef.h>
#include <stdint.h>

/* Appends n_new sampled bytes to out (which holds n_prompt prompt bytes first and has room for
 * n_prompt + n_new). An empty prompt starts from a newline. The model must have B_max >= 1. */
moe_status generate_bytes(struct model *m, uint8_t *out, size_t n_prompt, size_t n_new,
                          float temperature, uint64_t seed);

/* The same over token ids: appends n_new ids to ids (n_prompt first, room for both); an empty
 * prompt starts from the token `start`. */
moe_status generate_tokens(struct model *m, int *ids, size_t n_prompt, size_t n_new, int start,
                           float temperature, uint64_t seed);

#endif
