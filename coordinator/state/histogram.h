/*
 * histogram.h — a duration histogram the way Prometheus counts one: observations counted in
 * fixed buckets (each bucket counts those at or below its upper bound), their sum and count.
 *
 * Owns: the bucket bounds (seconds) and observing a duration. Used for what the coordinator
 * measures as it goes and /metrics shows (handlers/metrics.c): a job's recovery durations
 * (policy/recovery.c), the RPC handling times. Held in memory only: after a restart the counts
 * start again from zero, which Prometheus reads as a counter reset.
 * Never: formats anything (handlers/metrics.c writes the exposition).
 */
#ifndef MOE_COORD_HISTOGRAM_H
#define MOE_COORD_HISTOGRAM_H

#include <stdint.h>

#define HISTOGRAM_BUCKETS 12 // and +Inf, which is the count

struct histogram {
    uint64_t bucket[HISTOGRAM_BUCKETS]; // observations <= histogram_bounds[i], cumulative
    uint64_t count;
    double sum;
};

/* The upper bounds, ascending: from a fast RPC (1 ms) to a slow recovery (5 min). */
extern const double histogram_bounds[HISTOGRAM_BUCKETS];

void histogram_observe(struct histogram *h, double seconds);

#endif
