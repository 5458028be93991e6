/*
 * bench.h — the shared benchmark harness (warm-up, timed runs, one table format).
 *
 * Owns: timing, the sgemm probe that finds the machine's best single-precision GEMM rate
 * across every OpenBLAS core type the CPU can run (OpenBLAS picks one at load time from
 * OPENBLAS_CORETYPE, so each candidate runs in a child process), and re-running the calling
 * benchmark under the best core type so what it measures uses the fastest kernels.
 * Never: asserts performance. Benchmarks report; they do not pass or fail on speed.
 */
#ifndef MOE_BENCH_H
#define MOE_BENCH_H

double bench_now(void);

/* GFLOP/s of C(M,N) = A(M,K) B(K,N) in this process, timed for at least min_seconds. */
double bench_sgemm_gflops(int M, int N, int K, double min_seconds);

/* Best sgemm rate over core types (children re-run argv0 with "--sgemm-child"), at a
 * square size; each core type's rate is the median of five samples. Writes the winning core
 * type name ("" = OpenBLAS's own pick). */
double bench_best_sgemm(const char *argv0, int size, char *best_core, int best_len, int verbose);

/* If argv holds "--sgemm-child", runs the probe and exits. Call first thing in main. */
void bench_child_hook(int argc, char **argv);

/* OpenBLAS's name for the kernels it is using in this process. */
const char *bench_corename(void);

#endif
