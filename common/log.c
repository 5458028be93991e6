#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum moe_log_level moe_log_active = MOE_LOG_INFO;
static const char *log_role = "moed";

void moe_log_init(const char *role) {
    log_role = role;
    const char *env = getenv("MOE_LOG_LEVEL");
    if (!env) return;
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i <= MOE_LOG_OFF; i++)
        if (strcmp(env, names[i]) == 0) moe_log_active = (enum moe_log_level)i;
}

void moe_log_set_level(enum moe_log_level level) { moe_log_active = level; }

void moe_log_write(enum moe_log_level level, const char *fmt, ...) {
    static const char *tags[] = {"DEBUG", "INFO", "WARN", "ERROR", "OFF"};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    /* One fprintf per line so concurrent threads do not interleave inside a line. */
    fprintf(stderr, "%s.%03ldZ %d %s %s %s\n", when, ts.tv_nsec / 1000000L, (int)getpid(),
            log_role, tags[level], msg);
}

void moe_log_limit_end(struct moe_log_limit *l, enum moe_log_level level, double now) {
    if (l->window_start <= 0) return;
    if (l->suppressed > 0 && level >= moe_log_active)
        moe_log_write(level, "%ld more %s in the last %.0f s", l->suppressed, l->what,
                      now - l->window_start);
    l->window_start = 0;
    l->written = 0;
    l->suppressed = 0;
}

void moe_log_limit_flush(struct moe_log_limit *l, enum moe_log_level level, double now) {
    if (l->window_start > 0 && now - l->window_start >= l->interval_s)
        moe_log_limit_end(l, level, now);
}

int moe_log_limit_pass(struct moe_log_limit *l, enum moe_log_level level, double now) {
    moe_log_limit_flush(l, level, now);
    if (l->window_start <= 0) l->window_start = now;
    if (l->written < l->burst) {
        l->written++;
        return 1;
    }
    l->suppressed++;
    return 0;
}
