/*
 * clock.h — the monotonic clock everything in moed measures durations and deadlines with.
 *
 * Owns: moe_clock_s(), seconds on CLOCK_MONOTONIC (never steps back with the wall clock, so
 * a timeout or a measured duration cannot go negative). Wall-clock times that go on the wire
 * or into the store (unix milliseconds) are not this clock's job.
 */
#ifndef MOE_CLOCK_H
#define MOE_CLOCK_H

#include <time.h>

static inline double moe_clock_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
