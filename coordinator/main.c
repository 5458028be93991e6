/*
 * moed-coordinator — the single controller's process: flags, the loop, and nothing else.
 *
 *   moed-coordinator --dir DIR [--listen HOST:PORT] [--advertise HOST[:PORT]]
 *                    [--addr-file FILE] ...
 *
 * Every flag is a row of coordinator_knobs (coordinator.c), from which --help is printed.
 * Heartbeats: every 500 ms by default (told to the workers); a worker silent for 2000 ms is
 * dead, which starts a recovery of a recoverable mesh (docs/recovery.md).
 * --http-listen HOST:PORT adds the HTTP port: /metrics and the live page (handlers/http.h).
 * Exit codes: 0 after SIGTERM/SIGINT (or --help); 1 when it cannot start (store locked or
 * unreadable, address in use, unreadable token or TLS file); 2 bad flags.
 */
#include "../common/log.h"
#include "../common/netaddr.h"
#include "../common/sdnotify.h"
#include "coordinator.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *to) {
    fprintf(to, "usage: moed-coordinator --dir DIR [options]\n\n"
                "The moed cluster's single controller: schedules jobs on the workers that "
                "register,\nrecords every decision in RocksDB, recovers jobs from lost "
                "workers.\n\n");
    knobs_print(to, coordinator_knobs, coordinator_n_knobs, 0);
}

/* What the flags alone cannot say: they must fit together. NULL when they do. */
static const char *bad_combination(const struct coordinator_config *cfg, char *why, size_t cap) {
    if (!cfg->dir[0])
        snprintf(why, cap, "--dir is required (where jobs are stored)");
    else if (!!cfg->tls_cert[0] != !!cfg->tls_key[0])
        snprintf(why, cap, "--tls-cert and --tls-key go together");
    else if (!cfg->http_listen[0] && (cfg->http_addr_file[0] || cfg->http_open))
        snprintf(why, cap, "--http-addr-file and --http-open go with --http-listen");
    else if (cfg->heartbeat_timeout_ms < 2 * cfg->heartbeat_interval_ms)
        snprintf(why, cap, "--heartbeat-timeout-ms (%ld) must be at least twice "
                 "--heartbeat-interval-ms (%ld)", cfg->heartbeat_timeout_ms,
                 cfg->heartbeat_interval_ms);
    else if (cfg->advertise[0] &&
             net_advertise_parse("--advertise", cfg->advertise, 1, why, cap) != MOE_OK)
        snprintf(why, cap, "%s", moe_errmsg());
    else
        return NULL;
    return why;
}

static moe_status read_tokens(struct coordinator_config *cfg) {
    if (cfg->client_token_file[0])
        CHECK(rpc_read_token(cfg->client_token_file, cfg->client_token, sizeof cfg->client_token));
    if (cfg->cluster_token_file[0])
        CHECK(rpc_read_token(cfg->cluster_token_file, cfg->cluster_token,
                             sizeof cfg->cluster_token));
    return MOE_OK;
}

int main(int argc, char **argv) {
    moe_log_init("coordinator");
    struct coordinator_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int help;
    if (knobs_parse(coordinator_knobs, coordinator_n_knobs, &cfg, argc, argv, &help) != MOE_OK) {
        fprintf(stderr, "moed-coordinator: %s\n", moe_errmsg());
        usage(stderr);
        return 2;
    }
    if (help) {
        usage(stdout);
        return 0;
    }
    char why[256];
    if (bad_combination(&cfg, why, sizeof why)) {
        fprintf(stderr, "moed-coordinator: %s\n", why);
        return 2;
    }
    moe_log_set_level((enum moe_log_level)cfg.log_level);
    if (read_tokens(&cfg) != MOE_OK) {
        fprintf(stderr, "moed-coordinator: %s\n", moe_errmsg());
        return 1;
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
    moe_notify_ready("serving"); // Type=notify (deploy/systemd): serving from here on
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(co);
    rpc_shutdown_library();
    return 0;
}
