/*
 * sdnotify.h — telling a service manager how a daemon is doing (systemd's Type=notify units,
 * deploy/systemd): READY=1 once it serves, STOPPING=1 as it goes down, and the watchdog's
 * keep-alive when the unit asks for one (WatchdogSec=).
 *
 * Owns: the notify messages, through libsystemd's sd_notify. Built without libsystemd (no
 * libsystemd-dev: MOE_HAVE_SYSTEMD unset) every call does nothing; so does every call of a
 * process that no service manager started (no NOTIFY_SOCKET).
 * Never: decides when a daemon is ready (each daemon says so: the coordinator once it serves,
 * a worker once it has registered).
 */
#ifndef MOE_SDNOTIFY_H
#define MOE_SDNOTIFY_H

/* READY=1 with a STATUS= line (what `systemctl status` shows). */
void moe_notify_ready(const char *status);
/* STOPPING=1 with a STATUS= line. */
void moe_notify_stopping(const char *status);
/* WATCHDOG=1 when the unit set WatchdogSec= and half its interval has passed since the last
 * one: cheap enough to call from any periodic timer of the loop, whose stall it then exposes. */
void moe_notify_watchdog(void);

#endif
