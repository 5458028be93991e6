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

#endif
