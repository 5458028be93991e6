/*
 * log.h — leveled logging for every moed process.
 *
 * Owns: the active level, the process role tag, and the line format
 *   2026-11-23T16:40:01.123Z 12345 worker INFO message
 * A call below the active level does no formatting at all. Lines go to stderr so that stdout
 * stays clean for results (--json output, printed ids).
 * Never: exits or aborts; logging a failure is not handling it.
 */
#ifndef MOE_LOG_H
#define MOE_LOG_H

#include "clock.h"

enum moe_log_level { MOE_LOG_DEBUG = 0, MOE_LOG_INFO, MOE_LOG_WARN, MOE_LOG_ERROR, MOE_LOG_OFF };

extern enum moe_log_level moe_log_active;

/* role: "coordinator", "worker", "cli", "test". Reads MOE_LOG_LEVEL (debug|info|warn|error|off). */
void moe_log_init(const char *role);
void moe_log_set_level(enum moe_log_level level);
void moe_log_write(enum moe_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define MOE_LOG(level, ...)                                                                       \
    do {                                                                                          \
        if ((level) >= moe_log_active) moe_log_write((level), __VA_ARGS__);                       \
    } while (0)
#define LOG_DEBUG(...) MOE_LOG(MOE_LOG_DEBUG, __VA_ARGS__)
#define LOG_INFO(...) MOE_LOG(MOE_LOG_INFO, __VA_ARGS__)
#define LOG_WARN(...) MOE_LOG(MOE_LOG_WARN, __VA_ARGS__)
#define LOG_ERROR(...) MOE_LOG(MOE_LOG_ERROR, __VA_ARGS__)

/* A rate limit for one kind of line (a token bucket refilled once per interval): the first
 * `burst` lines of each interval are written in full, the rest only counted, and the count
 * comes out as one line "N more <what> in the last S s" before the next line of that kind is
 * written (or from moe_log_limit_flush). Not locked: one thread uses a limit. */
struct moe_log_limit {
    const char *what;          // "refused calls like this"
    int burst;                 // full lines per interval
    double interval_s;
    double window_start;       // moe_clock_s() of the current interval; 0: none yet
    int written;               // full lines in the current interval
    long suppressed;           // lines counted, not written, in the current interval
};
#define MOE_LOG_LIMIT_BURST 5
#define MOE_LOG_LIMIT_INTERVAL_S 10.0
#define MOE_LOG_LIMIT_INIT(what) {(what), MOE_LOG_LIMIT_BURST, MOE_LOG_LIMIT_INTERVAL_S, 0, 0, 0}

/* 1 when a line of this kind may be written now (an earlier interval's count is written
 * first, at `level`); 0 when it is only counted. Call it only when `level` is active. */
int moe_log_limit_pass(struct moe_log_limit *l, enum moe_log_level level, double now);
/* Writes the count of an interval that is over, if any (a periodic timer may call it so that
 * the count does not wait for the next line). */
void moe_log_limit_flush(struct moe_log_limit *l, enum moe_log_level level, double now);
/* Writes the count of the current interval too (the limit's owner is going away). */
void moe_log_limit_end(struct moe_log_limit *l, enum moe_log_level level, double now);

#define MOE_LOG_LIMITED(limit, level, ...)                                                       \
    do {                                                                                          \
        if ((level) >= moe_log_active && moe_log_limit_pass((limit), (level), moe_clock_s()))    \
            moe_log_write((level), __VA_ARGS__);                                                  \
    } while (0)
#define LOG_WARN_LIMITED(limit, ...) MOE_LOG_LIMITED(limit, MOE_LOG_WARN, __VA_ARGS__)

#endif
