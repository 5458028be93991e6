/*
 * netaddr.h — "host:port" addresses as the daemons listen on, advertise and judge them.
 *
 * Owns: splitting an address into host and port (IPv6 in brackets), telling a wildcard host
 * (one to listen on everywhere, never one to dial) and a loopback host (reachable from this
 * machine only) from the rest, checking an --advertise / --data-advertise value, the host of a
 * gRPC peer string ("ipv4:10.0.0.7:5012"), and the coordinator's rule for a worker whose
 * advertised addresses are loopback (docs/operations.md, "Addresses").
 * Never: resolves a name or opens a socket: every answer comes from the text alone (a name such
 * as "localhost" is judged by its spelling; whether another name reaches the worker is the
 * coordinator's reachability probe's to find out).
 */
#ifndef MOE_NETADDR_H
#define MOE_NETADDR_H

#include "status.h"

#include <stddef.h>

#define NET_HOST_MAX 256

/* Splits "host:port", "[v6]:port" or a bare host ("host", "[v6]"): host without brackets,
 * port -1 when none is given. 0 on success, -1 when the text is not an address (empty host
 * part allowed: ":7070" is the wildcard). */
int net_split(const char *addr, char *host, size_t cap, int *port);

/* "", "0.0.0.0", "::", "[::]", "*": listen everywhere. */
int net_host_is_wildcard(const char *host);
/* 127.0.0.0/8, ::1, "localhost" (any case): reachable from this machine only. */
int net_host_is_loopback(const char *host);
/* Whether the host of "host:port" is loopback (0 when the text is not an address). */
int net_addr_is_loopback(const char *addr);

/* Checks an advertised address given as `flag` ("--advertise"): HOST[:PORT], HOST a name or an
 * IP (IPv6 in brackets when a port follows), never a wildcard; PORT 1..65535, else
 * `default_port`. Writes "host:port" (brackets kept for IPv6) to out. With default_port < 0,
 * only a host is accepted (--data-advertise) and out gets the host alone. MOE_EINVAL names the
 * flag, the value and what is wrong, in one line. */
moe_status net_advertise_parse(const char *flag, const char *value, int default_port, char *out,
                               size_t cap);

/* The host of a gRPC peer ("ipv4:10.0.0.7:5012" -> "10.0.0.7", "ipv6:[::1]:5" -> "::1";
 * "unix:..." -> "localhost"); "" when it cannot tell. */
void net_peer_host(const char *peer, char *host, size_t cap);

/* The coordinator's rule: a worker whose Worker service or data-plane address is loopback
 * can be dialled from its own machine only, so it is refused when the coordinator advertises
 * a non-loopback address or the worker's connection came from another host (`peer`, as
 * rpc_call_peer gives it; NULL or "": unknown). Returns 1 and one sentence in `why` when it is
 * refused, 0 when not. */
int net_loopback_refusal(const char *worker_addr, const char *data_addr, const char *peer,
                         const char *coordinator_addr, char *why, size_t cap);

#endif
