/*
 * sdnotify.c — sd_notify for the daemons (see sdnotify.h); no-ops without libsystemd.
 */
#include "sdnotify.h"

#ifdef MOE_HAVE_SYSTEMD
#include "clock.h"
#include "log.h"

#include <systemd/sd-daemon.h>

#include <stdint.h>
#include <string.h>

static void notify(const char *state, const char *status) {
    /* 0: no service manager listens (no NOTIFY_SOCKET); < 0: it could not be told */
    int r = sd_notifyf(0, "%s\nSTATUS=%s", state, status ? status : "");
    if (r < 0) LOG_WARN("sd_notify %s: %s", state, strerror(-r));
}

void moe_notify_ready(const char *status) { notify("READY=1", status); }
void moe_notify_stopping(const char *status) { notify("STOPPING=1", status); }

void moe_notify_watchdog(void) {
    static int asked = -1; // -1 not looked yet, 0 no watchdog, 1 one
    static uint64_t every_us;
    static double last_s;
    if (asked < 0) asked = sd_watchdog_enabled(0, &every_us) > 0;
    if (!asked) return;
    double now = moe_clock_s();
    if (last_s > 0 && now - last_s < (double)every_us / 2e6) return;
    last_s = now;
    sd_notify(0, "WATCHDOG=1");
}
#else
void moe_notify_ready(const char *status) { (void)status; }
void moe_notify_stopping(const char *status) { (void)status; }
void moe_notify_watchdog(void) {}
#endif
