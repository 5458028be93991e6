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
