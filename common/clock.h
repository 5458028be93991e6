/*
 * clock.h — the two clocks of moed.
 *
 * Owns: moe_clock_s(), seconds on CLOCK_MONOTONIC, for durations and deadlines (it never steps
 * back with the wall clock, so a timeout or a measured duration cannot go negative); and
 * moe_wall_ms(), unix milliseconds on CLOCK_REALTIME, for times that go on the wire, into the
 * store or in front of a person (created_unix_ms, event times, "3 s ago"); and moe_sleep_s(),
 * the pause between two polls.
 * Never: measures a duration with the wall clock, or stamps a record with the monotonic one.
 */
#ifndef MOE_CLOCK_H
#define MOE_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline double moe_clock_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Sleeps s seconds (a pause between polls: a signal may cut it short). */
static inline void moe_sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static inline int64_t moe_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
