/*
 * bench_proc.c — the daemons a benchmark starts (see bench_proc.h).
 */
#include "bench_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

pid_t bench_fork_child(void) {
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127); // the benchmark already died
    return 0;
}

int bench_stop(pid_t pid) {
    if (pid <= 0) return 0;
    kill(pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 3000; i++) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0) return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    return -1;
}

int bench_write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) return -1;
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n;
    close(fd);
    return ok ? 0 : -1;
}

int bench_random_token(char *out, size_t cap) {
    unsigned char raw[24];
    FILE *f = fopen("/dev/urandom", "rb");
    int ok = f && fread(raw, 1, sizeof raw, f) == sizeof raw;
    if (f) fclose(f);
    for (size_t i = 0; ok && i < sizeof raw && 2 * i + 2 < cap; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
    return ok ? 0 : -1;
}

static void find_bin(struct bench_daemon *d) {
    const char *build = getenv("MOE_BUILD_DIR");
    if (build && build[0]) {
        snprintf(d->bin, sizeof d->bin, "%s/bin", build);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    self[n > 0 ? n : 0] = 0;
    snprintf(d->bin, sizeof d->bin, "%s", n > 0 ? dirname(self) : ".");
}

static pid_t spawn(struct bench_daemon *d, const char *listen) {
    char ct[PATH_MAX + 32], kt[PATH_MAX + 32], state[PATH_MAX + 32], af[PATH_MAX + 32];
    snprintf(ct, sizeof ct, "%s/client.token", d->dir);
    snprintf(kt, sizeof kt, "%s/cluster.token", d->dir);
    snprintf(state, sizeof state, "%s/state", d->dir);
    snprintf(af, sizeof af, "%s/addr", d->dir);
    unlink(af);
    char *argv[12 + BENCH_EXTRA_MAX] = {d->exe, "--dir", state, "--listen", (char *)listen, "--addr-file", af,
                      "--client-token-file", ct, "--cluster-token-file", kt};
    for (int i = 0; i < d->n_extra; i++) argv[11 + i] = d->extra[i];
    pid_t pid = bench_fork_child();
    if (pid != 0) return pid;
    int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd >= 0) {
        dup2(fd, 2);
        dup2(fd, 1);
        close(fd);
    }
    execv(argv[0], argv);
    fprintf(stderr, "bench: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* Waits for the address file of the daemon just spawned. */
static int wait_serving(struct bench_daemon *d) {
    char af[PATH_MAX + 32];
    snprintf(af, sizeof af, "%s/addr", d->dir);
    for (int i = 0; i < 6000; i++) { // 60 s
        FILE *f = fopen(af, "r");
        if (f) {
            int got = fscanf(f, "%159s", d->addr) == 1;
            fclose(f);
            const char *colon = strrchr(d->addr, ':');
            if (got && colon) {
                d->port = atoi(colon + 1);
                return 0;
            }
        }
        if (waitpid(d->pid, NULL, WNOHANG) == d->pid) break;
        usleep(10000);
    }
    fprintf(stderr, "bench: %s did not start; see %s\n", d->exe, d->log);
    d->pid = 0;
    return -1;
}

int bench_daemon_start(struct bench_daemon *d, const char *name, char *const *extra,
                       int n_extra) {
    memset(d, 0, sizeof *d);
    if (n_extra > BENCH_EXTRA_MAX) { // dropping some would measure another configuration
        fprintf(stderr, "bench: %d flags for %s, at most %d\n", n_extra, name, BENCH_EXTRA_MAX);
        return -1;
    }
    for (int i = 0; i < n_extra; i++) d->extra[d->n_extra++] = extra[i];
    find_bin(d);
    snprintf(d->dir, sizeof d->dir, "/tmp/moe-bench-XXXXXX");
    if (!mkdtemp(d->dir)) return -1;
    snprintf(d->exe, sizeof d->exe, "%s/%s", d->bin, name);
    snprintf(d->log, sizeof d->log, "%s/%s.log", d->dir, name);
    char ct[PATH_MAX + 32], kt[PATH_MAX + 32];
    snprintf(ct, sizeof ct, "%s/client.token", d->dir);
    snprintf(kt, sizeof kt, "%s/cluster.token", d->dir);
    if (bench_random_token(d->client_token, sizeof d->client_token) ||
        bench_random_token(d->cluster_token, sizeof d->cluster_token) ||
        bench_write_file(ct, d->client_token) || bench_write_file(kt, d->cluster_token))
        return -1;
    d->pid = spawn(d, "127.0.0.1:0");
    return d->pid > 0 ? wait_serving(d) : -1;
}

int bench_daemon_restart(struct bench_daemon *d, int sig) {
    kill(d->pid, sig);
    waitpid(d->pid, NULL, 0);
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", d->port);
    d->pid = spawn(d, listen);
    return d->pid > 0 ? wait_serving(d) : -1;
}

void bench_daemon_stop(struct bench_daemon *d) {
    bench_stop(d->pid);
    d->pid = 0;
    if (d->dir[0] && !getenv("MOE_BENCH_KEEP")) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
        if (system(cmd) != 0) fprintf(stderr, "bench: could not remove %s\n", d->dir);
    }
}

double bench_cpu_seconds(pid_t pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); // the command name may hold spaces
    unsigned long utime = 0, stime = 0;
    if (!p ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return NAN;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

double bench_rss_mib(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    double mib = NAN;
    long kib;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1) mib = (double)kib / 1024.0;
    if (f) fclose(f);
    return mib;
}
