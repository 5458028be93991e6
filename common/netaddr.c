/*
 * netaddr.c — addresses as text (see netaddr.h).
 */
#include "netaddr.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int copy_host(char *host, size_t cap, const char *p, size_t len) {
    if (len >= cap) return -1;
    memcpy(host, p, len);
    host[len] = 0;
    return 0;
}

/* "5012" -> 5012; -1 when it is not a port (1..65535; 0 allowed: "pick one"). */
static int parse_port(const char *p) {
    if (!*p || strlen(p) > 5) return -1;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q)) return -1;
    int v = atoi(p);
    return v <= 65535 ? v : -1;
}

int net_split(const char *addr, char *host, size_t cap, int *port) {
    *port = -1;
    if (!addr) return -1;
    const char *rest;
    if (addr[0] == '[') { // [v6] or [v6]:port
        const char *close = strchr(addr, ']');
        if (!close || copy_host(host, cap, addr + 1, (size_t)(close - addr - 1))) return -1;
        rest = close + 1;
        if (!*rest) return 0;
        if (*rest != ':') return -1;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon && strchr(addr, ':') != colon) return -1; // bare IPv6 needs brackets
        size_t len = colon ? (size_t)(colon - addr) : strlen(addr);
        if (copy_host(host, cap, addr, len)) return -1;
        if (!colon) return 0;
        rest = colon;
    }
    *port = parse_port(rest + 1);
    return *port < 0 ? -1 : 0;
}

int net_host_is_wildcard(const char *host) {
    return !host[0] || !strcmp(host, "0.0.0.0") || !strcmp(host, "::") ||
           !strcmp(host, "[::]") || !strcmp(host, "*");
}

int net_host_is_loopback(const char *host) {
    if (!strcasecmp(host, "localhost") || !strcmp(host, "::1") || !strcmp(host, "[::1]"))
        return 1;
    int a, b, c, d;
    char tail;
    return sscanf(host, "%d.%d.%d.%d%c", &a, &b, &c, &d, &tail) == 4 && a == 127;
}

int net_addr_is_loopback(const char *addr) {
    char host[NET_HOST_MAX];
    int port;
    return net_split(addr, host, sizeof host, &port) == 0 && net_host_is_loopback(host);
}

/* A host name or IP as it may be dialled: letters, digits, '.', '-', '_' (names), ':' (IPv6). */
static int dialable_host(const char *host) {
    if (!host[0]) return 0;
    for (const char *p = host; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr(".-_:%", *p)) return 0;
    return 1;
}

moe_status net_advertise_parse(const char *flag, const char *value, int default_port, char *out,
                               size_t cap) {
    char host[NET_HOST_MAX];
    int port;
    if (net_split(value, host, sizeof host, &port) != 0 || (port == 0))
        return moe_fail(MOE_EINVAL, "%s '%s' is not HOST%s (a name or an IP%s)", flag, value,
                        default_port >= 0 ? "[:PORT]" : "",
                        default_port >= 0 ? ", a port 1..65535, IPv6 in brackets" : "");
    if (net_host_is_wildcard(host))
        return moe_fail(MOE_EINVAL, "%s '%s' is a wildcard, an address to listen on, not one to "
                        "dial: give this host's name or IP as the others reach it", flag, value);
    if (!dialable_host(host) || (default_port < 0 && port >= 0))
        return moe_fail(MOE_EINVAL, "%s '%s' is not HOST%s (a name or an IP)", flag, value,
                        default_port >= 0 ? "[:PORT]" : "");
    int v6 = strchr(host, ':') != NULL;
    int n = default_port < 0 ? snprintf(out, cap, v6 ? "[%s]" : "%s", host)
                             : snprintf(out, cap, v6 ? "[%s]:%d" : "%s:%d", host,
                                        port >= 0 ? port : default_port);
    if (n < 0 || (size_t)n >= cap)
        return moe_fail(MOE_EINVAL, "%s '%s' is too long", flag, value);
    return MOE_OK;
}

void net_peer_host(const char *peer, char *host, size_t cap) {
    host[0] = 0;
    if (!peer || !cap) return;
    if (!strncmp(peer, "unix:", 5) || !strncmp(peer, "unix-abstract:", 14)) {
        snprintf(host, cap, "localhost");
        return;
    }
    const char *p = strchr(peer, ':'); // past "ipv4:" / "ipv6:"
    int port;
    if (!p || net_split(p + 1, host, cap, &port) != 0) host[0] = 0;
}

int net_loopback_refusal(const char *worker_addr, const char *data_addr, const char *peer,
                         const char *coordinator_addr, char *why, size_t cap) {
    const char *which = net_addr_is_loopback(worker_addr) ? "address"
                        : data_addr && net_addr_is_loopback(data_addr) ? "data-plane address"
                                                                       : NULL;
    if (!which) return 0;
    char peer_host[NET_HOST_MAX];
    net_peer_host(peer, peer_host, sizeof peer_host);
    int remote_peer = peer_host[0] && !net_host_is_loopback(peer_host);
    int remote_coordinator = coordinator_addr && !net_addr_is_loopback(coordinator_addr);
    if (!remote_peer && !remote_coordinator) return 0;
    const char *addr = which[0] == 'a' ? worker_addr : data_addr;
    if (remote_peer)
        snprintf(why, cap, "its %s %s is loopback but it connected from %s: start it with "
                 "--advertise HOST (and --data-advertise HOST) naming an address the others "
                 "can dial", which, addr, peer_host);
    else
        snprintf(why, cap, "its %s %s is loopback while the coordinator is at %s: start it "
                 "with --advertise HOST (and --data-advertise HOST) naming an address the "
                 "others can dial", which, addr, coordinator_addr);
    return 1;
}
