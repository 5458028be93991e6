/*
 * moed-coordinator — the single controller's process: flags, the loop, and nothing else.
 *
 *   moed-coordinator --dir DIR [--listen HOST:PORT] [--addr-file FILE]
 *                    [--client-token-file FILE] [--cluster-token-file FILE]
 *                    [--tls-cert FILE --tls-key FILE] [--worker-tls-ca FILE]
 *                    [--heartbeat-interval-ms N] [--heartbeat-timeout-ms N]
 *
 * Heartbeats: every 500 ms by default (told to the workers); a worker silent for 2000 ms is
 * dead, which starts a recovery of a recoverable mesh (docs/recovery.md). The timeout must be
 * at least twice the interval.
 *
 * Exit codes: 0 after SIGTERM/SIGINT; 1 when it cannot start (store locked or unreadable,
 * address in use, unreadable token file); 2 bad flags.
 */
#include "../common/log.h"
#include "coordinator.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *to) {
    fprintf(to,
            "usage: moed-coordinator --dir DIR [--listen HOST:PORT] [--addr-file FILE]\n"
            "         [--client-token-file FILE] [--cluster-token-file FILE]\n"
            "         [--tls-cert FILE --tls-key FILE] [--worker-tls-ca FILE]\n"
            "         [--heartbeat-interval-ms N] [--heartbeat-timeout-ms N]\n"
            "  --heartbeat-interval-ms N  how often workers heartbeat (default %d)\n"
            "  --heartbeat-timeout-ms N   a worker silent this long is dead (default %d; at\n"
            "                             least twice the interval)\n",
            COORD_HEARTBEAT_INTERVAL_MS, COORD_HEARTBEAT_TIMEOUT_MS);
}

static int copy_arg(char *dst, size_t cap, const char *flag, const char *v) {
    if (strlen(v) >= cap) {
        fprintf(stderr, "moed-coordinator: %s is longer than %zu bytes\n", flag, cap - 1);
        return -1;
    }
    snprintf(dst, cap, "%s", v);
    return 0;
}

static int parse_ms(long *out, const char *flag, const char *v) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*end || x < 10 || x > 3600000) {
        fprintf(stderr, "moed-coordinator: %s must be a number of milliseconds in 10..3600000, not \"%s\"\n",
                flag, v);
        return -1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv) {
    moe_log_init("coordinator");
    struct coordinator_config cfg;
    coordinator_config_defaults(&cfg);
    static const struct option opts[] = {
        {"dir", required_argument, 0, 'd'},          {"listen", required_argument, 0, 'l'},
        {"addr-file", required_argument, 0, 'a'},    {"client-token-file", required_argument, 0, 'c'},
        {"cluster-token-file", required_argument, 0, 'k'}, {"tls-cert", required_argument, 0, 'C'},
        {"tls-key", required_argument, 0, 'K'},      {"worker-tls-ca", required_argument, 0, 'W'},
        {"heartbeat-interval-ms", required_argument, 0, 'i'},
        {"heartbeat-timeout-ms", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'd': bad = copy_arg(cfg.dir, sizeof cfg.dir, "--dir", optarg); break;
        case 'l': bad = copy_arg(cfg.listen, sizeof cfg.listen, "--listen", optarg); break;
        case 'a': bad = copy_arg(cfg.addr_file, sizeof cfg.addr_file, "--addr-file", optarg); break;
        case 'c':
        case 'k': {
            char *dst = c == 'c' ? cfg.client_token : cfg.cluster_token;
            if (rpc_read_token(optarg, dst, sizeof cfg.client_token) != MOE_OK) {
                fprintf(stderr, "moed-coordinator: %s\n", moe_errmsg());
                return 1;
            }
            break;
        }
        case 'C': bad = copy_arg(cfg.tls_cert, sizeof cfg.tls_cert, "--tls-cert", optarg); break;
        case 'K': bad = copy_arg(cfg.tls_key, sizeof cfg.tls_key, "--tls-key", optarg); break;
        case 'W': bad = copy_arg(cfg.worker_tls_ca, sizeof cfg.worker_tls_ca, "--worker-tls-ca", optarg); break;
        case 'i': bad = parse_ms(&cfg.heartbeat_interval_ms, "--heartbeat-interval-ms", optarg); break;
        case 't': bad = parse_ms(&cfg.heartbeat_timeout_ms, "--heartbeat-timeout-ms", optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc || !cfg.dir[0]) {
        fprintf(stderr, "moed-coordinator: %s\n",
                optind < argc ? "unexpected argument" : "--dir is required (where jobs are stored)");
        usage(stderr);
        return 2;
    }
    if (!!cfg.tls_cert[0] != !!cfg.tls_key[0]) {
        fprintf(stderr, "moed-coordinator: --tls-cert and --tls-key go together\n");
        return 2;
    }
    if (cfg.heartbeat_timeout_ms < 2 * cfg.heartbeat_interval_ms) {
        fprintf(stderr, "moed-coordinator: --heartbeat-timeout-ms (%ld) must be at least twice "
                "--heartbeat-interval-ms (%ld)\n", cfg.heartbeat_timeout_ms, cfg.heartbeat_interval_ms);
        return 2;
    }
    if (!cfg.client_token[0] || !cfg.cluster_token[0])
        LOG_WARN("no %s token configured: those calls are not authenticated",
                 !cfg.client_token[0] ? "client" : "cluster");

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct coordinator *co = calloc(1, sizeof *co);
    if (!co || coordinator_start(co, &loop, &cfg) != MOE_OK) {
        LOG_ERROR("cannot start: %s", co ? moe_errmsg() : "out of memory");
        return 1; /* the process ends; the OS reclaims what a half start held */
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(co);
    rpc_shutdown_library();
    return 0;
}
