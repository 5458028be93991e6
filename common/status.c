#include "status.h"
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char errmsg[1024];

const char *moe_status_str(moe_status s) {
    switch (s) {
    case MOE_OK: return "ok";
    case MOE_EINVAL: return "invalid argument";
    case MOE_ENOMEM: return "out of memory";
    case MOE_EIO: return "i/o error";
    case MOE_EFORMAT: return "malformed data";
    case MOE_ENOTFOUND: return "not found";
    case MOE_EINTERNAL: return "internal error";
    case MOE_EAUTH: return "unauthenticated";
    case MOE_EUNAVAILABLE: return "unavailable";
    case MOE_ECANCELED: return "canceled";
    }
    return "unknown status";
}

moe_status moe_fail(moe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return s;
}

const char *moe_errmsg(void) { return errmsg; }

void moe_trace(const char *file, int line, moe_status s) {
    LOG_DEBUG("%s:%d: %s: %s", file, line, moe_status_str(s), errmsg);
}
