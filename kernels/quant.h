/*
 * quant.h — int8 block quantisation of what a diloco outer step sends across pods
 * (mesh.outer_quant: int8; docs/model.md "Quantised outer steps").
 *
 * Owns: the wire form of a quantised vector of n reals — first one scale per block of
 * QUANT_BLOCK values (the block's largest magnitude / 127), then one int8 per value
 * (round to nearest, ties to even) — and the sum of several such vectors in the order given,
 * accumulated in `real` (float32 in training). The bits are a pure function of the inputs:
 * no threads, no dependence on timing.
 * Never: sends anything (worker/trainer/outer.c does) or knows whose vectors it adds.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include "model.h"

#include <stddef.h>

#define QUANT_BLOCK 256

/* Bytes of the wire form of n values. */
size_t quant_bytes(size_t n);
/* x (n) into out (quant_bytes(n) bytes). */
void quant_encode(void *out, const real *x, size_t n);
/* sum (n) = the decoded vectors in[0], in[1], … in[count - 1] (each quant_bytes(n) bytes,
 * back to back) added in that order. */
void quant_sum(real *sum, const void *in, int count, size_t n);

#endif
