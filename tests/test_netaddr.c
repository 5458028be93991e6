/*
 * test_netaddr.c — addresses as text (common/netaddr.h): splitting, wildcard and loopback
 * hosts, checking --advertise / --data-advertise, gRPC peer strings, and the coordinator's
 * rule for a worker that advertises a loopback address.
 * Exits non-zero on any failed check.
 */
#include "../common/netaddr.h"
#include "check.h"

static void test_split(void) {
    char h[NET_HOST_MAX];
    int port;
    EXPECT(net_split("10.0.0.7:7070", h, sizeof h, &port) == 0 && !strcmp(h, "10.0.0.7") &&
           port == 7070);
    EXPECT(net_split("node-3", h, sizeof h, &port) == 0 && !strcmp(h, "node-3") && port == -1);
    EXPECT(net_split("[::1]:5", h, sizeof h, &port) == 0 && !strcmp(h, "::1") && port == 5);
    EXPECT(net_split("[fe80::1]", h, sizeof h, &port) == 0 && !strcmp(h, "fe80::1") && port == -1);
    EXPECT(net_split(":7070", h, sizeof h, &port) == 0 && !h[0] && port == 7070);
    EXPECT(net_split("::1", h, sizeof h, &port) == -1);       // IPv6 needs brackets
    EXPECT(net_split("host:99999", h, sizeof h, &port) == -1);
    EXPECT(net_split("host:x", h, sizeof h, &port) == -1);
    EXPECT(net_split("[::1", h, sizeof h, &port) == -1);
}

static void test_kinds(void) {
    EXPECT(net_host_is_wildcard("") && net_host_is_wildcard("0.0.0.0") &&
           net_host_is_wildcard("::") && net_host_is_wildcard("[::]"));
    EXPECT(!net_host_is_wildcard("10.0.0.1") && !net_host_is_wildcard("node"));
    EXPECT(net_host_is_loopback("127.0.0.1") && net_host_is_loopback("127.0.1.1") &&
           net_host_is_loopback("::1") && net_host_is_loopback("LocalHost"));
    EXPECT(!net_host_is_loopback("10.0.0.1") && !net_host_is_loopback("127.example.com") &&
           !net_host_is_loopback("node"));
    EXPECT(net_addr_is_loopback("127.0.0.1:5") && !net_addr_is_loopback("node:5"));
}

static void test_advertise(void) {
    char out[300];
    EXPECT(net_advertise_parse("--advertise", "node-3", 7070, out, sizeof out) == MOE_OK &&
           !strcmp(out, "node-3:7070"));
    EXPECT(net_advertise_parse("--advertise", "node-3:9000", 7070, out, sizeof out) == MOE_OK &&
           !strcmp(out, "node-3:9000"));
    EXPECT(net_advertise_parse("--advertise", "[fe80::1]", 7070, out, sizeof out) == MOE_OK &&
           !strcmp(out, "[fe80::1]:7070"));
    EXPECT(net_advertise_parse("--data-advertise", "10.1.0.3", -1, out, sizeof out) == MOE_OK &&
           !strcmp(out, "10.1.0.3"));
    EXPECT_FAIL(net_advertise_parse("--advertise", "0.0.0.0", 7070, out, sizeof out), MOE_EINVAL,
                "--advertise '0.0.0.0' is a wildcard");
    EXPECT_FAIL(net_advertise_parse("--advertise", "[::]:80", 7070, out, sizeof out), MOE_EINVAL,
                "is a wildcard");
    EXPECT_FAIL(net_advertise_parse("--advertise", ":80", 7070, out, sizeof out), MOE_EINVAL,
                "is a wildcard");
    EXPECT_FAIL(net_advertise_parse("--advertise", "host:0", 7070, out, sizeof out), MOE_EINVAL,
                "is not HOST[:PORT]");
    EXPECT_FAIL(net_advertise_parse("--advertise", "a b:1", 7070, out, sizeof out), MOE_EINVAL,
                "is not HOST[:PORT]");
    EXPECT_FAIL(net_advertise_parse("--advertise", "h:1:2", 7070, out, sizeof out), MOE_EINVAL,
                "is not HOST[:PORT]");
    EXPECT_FAIL(net_advertise_parse("--data-advertise", "h:1", -1, out, sizeof out), MOE_EINVAL,
                "--data-advertise 'h:1' is not HOST");
}

static void test_peer(void) {
    char h[NET_HOST_MAX];
    net_peer_host("ipv4:10.0.0.7:5012", h, sizeof h);
    EXPECT(!strcmp(h, "10.0.0.7"));
    net_peer_host("ipv6:[::1]:5012", h, sizeof h);
    EXPECT(!strcmp(h, "::1"));
    net_peer_host("unix:/run/x.sock", h, sizeof h);
    EXPECT(!strcmp(h, "localhost"));
    net_peer_host("garbage", h, sizeof h);
    EXPECT(!h[0]);
}

static void test_refusal(void) {
    char why[512];
    /* the local cluster: everything on loopback */
    EXPECT(!net_loopback_refusal("127.0.0.1:5", "127.0.0.1:6", "ipv4:127.0.0.1:9", "127.0.0.1:7",
                                 why, sizeof why));
    /* across hosts: nothing loopback */
    EXPECT(!net_loopback_refusal("node-2:5", "node-2:6", "ipv4:10.0.0.2:9", "node-1:7", why,
                                 sizeof why));
    /* a worker on another host that advertises 127.0.0.1 */
    EXPECT(net_loopback_refusal("127.0.0.1:5", "10.0.0.2:6", "ipv4:10.0.0.2:9", "127.0.0.1:7",
                                why, sizeof why) &&
           strstr(why, "its address 127.0.0.1:5 is loopback but it connected from 10.0.0.2"));
    /* a coordinator that is not on loopback */
    EXPECT(net_loopback_refusal("127.0.0.1:5", "127.0.0.1:6", "ipv4:127.0.0.1:9", "node-1:7",
                                why, sizeof why) &&
           strstr(why, "is loopback while the coordinator is at node-1:7"));
    /* only the data plane on loopback */
    EXPECT(net_loopback_refusal("node-2:5", "127.0.0.1:6", "ipv4:10.0.0.2:9", "node-1:7", why,
                                sizeof why) &&
           strstr(why, "its data-plane address 127.0.0.1:6") && strstr(why, "--advertise HOST"));
    /* an unknown peer judges by the coordinator alone */
    EXPECT(!net_loopback_refusal("127.0.0.1:5", "", NULL, "127.0.0.1:7", why, sizeof why));
}

int main(void) {
    test_split();
    test_kinds();
    test_advertise();
    test_peer();
    test_refusal();
    if (failures) printf("%d checks failed\n", failures);
    return failures ? 1 : 0;
}
