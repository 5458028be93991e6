/*
 * blas_select.h — run the matrix products on the fastest kernels the CPU supports.
 *
 * Owns: the choice of OpenBLAS core type. OpenBLAS picks its kernels once, when it is loaded,
 * from OPENBLAS_CORETYPE or its own CPU detection, and either can land on kernels several
 * times slower than the CPU supports (a virtual machine hiding CPUID bits, or an environment
 * that pins an older core type). moed decides from the CPU's own feature flags and, when that
 * differs from what OpenBLAS would load, re-executes the process once with OPENBLAS_CORETYPE
 * set. MOE_BLAS_CORETYPE=keep leaves OpenBLAS alone; MOE_BLAS_CORETYPE=<name> forces a type.
 * Never: changes results' meaning (every core type computes the same products), or loops:
 * the re-exec happens at most once per process chain.
 */
#ifndef MOE_BLAS_SELECT_H
#define MOE_BLAS_SELECT_H

#include "knobs.h"

/* MOE_BLAS_CORETYPE, as a knob table (a daemon's --help lists it). */
extern const struct knob blas_knobs[];
extern const int blas_n_knobs;

/* The core type moed would choose for this CPU ("SkylakeX", "Haswell", ...), or NULL to leave
 * OpenBLAS's own choice. */
const char *blas_preferred_coretype(void);

/* Call first thing in main() of a process that does matrix math. May not return (re-exec). */
void blas_select_kernels(char **argv);

/* OpenBLAS's name for the kernels loaded in this process. */
const char *blas_loaded_coretype(void);

#endif
