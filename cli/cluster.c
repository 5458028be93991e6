/*
 * cluster.c — `moectl cluster up | down | status`: a local moed cluster of real processes on
 * 127.0.0.1, the embedded default a user tries first and the tests run against.
 *
 * Owns: the layout of a cluster directory, starting the daemons (own session, output to a
 * log, pid files) and stopping them, the credentials and TLS material of a local cluster, and
 * the cluster status table. A cluster directory holds:
 *   client.token, cluster.token   credentials (0600), kept across restarts
 *   cluster.json                  the shape it was started with and the coordinator's address
 *   coordinator/                  the coordinator's RocksDB: jobs survive `cluster down`
 *   coordinator.{addr,pid,log}    where it listens ("host:port", written by the coordinator
 *                                 once it serves), its pid, its output
 *   worker-<i>.{pid,log}          worker i's pid and output; worker-<i>/ its scratch directory
 *   tls/{cert,key}.pem            with --tls: a self-signed certificate for 127.0.0.1, which
 *                                 clients use as their CA
 * `cluster up` on a directory where some of these processes died restarts only those, with
 * the recorded shape, and the coordinator on its recorded port so that live workers find it.
 * Where none runs, it starts the shape recorded last time, changed by the flags given.
 * Never: touches a job's state (the coordinator's) or talks to workers directly.
 */
#include "client.h"
#include "moectl.h"

#include "proto/moed.pb-c.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define UP_TIMEOUT_S 30.0   // for the coordinator's address, then for every worker to register
#define DOWN_TIMEOUT_S 10.0 // SIGTERM, then SIGKILL whatever is left after this long
#define MAX_WORKERS 1024
#define PATH_CAP (PATH_MAX + 64)

/* What a cluster was started with: recorded in cluster.json so that a partial restart
 * brings back the same cluster whatever flags it is given. */
struct shape {
    int workers, pods, threads, tls;
    int port;                 // asked for (0: pick)
    long heartbeat_timeout_ms; // 0: the coordinator's default
    char address[256];        // where the coordinator listened last
};

/* ---- files ---- */

/* Directory paths are shorter than PATH_MAX, file names short: these never truncate. */
static char *in_dir(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_CAP, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_CAP) out[0] = 0;
    return out;
}

static char *worker_file(char *out, const char *dir, int i, const char *suffix) {
    int n = snprintf(out, PATH_CAP, "%s/worker-%d%s", dir, i, suffix);
    if (n < 0 || n >= PATH_CAP) out[0] = 0;
    return out;
}

static moe_status mkdir_p(const char *path, mode_t mode) {
    char buf[PATH_CAP];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != 0) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return moe_fail(MOE_EIO, "cannot create %s: %s", buf, strerror(errno));
        *p = c;
        if (!c) break;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return moe_fail(MOE_EIO, "%s: not a directory", path);
    return MOE_OK;
}

/* Writes `text` to path.tmp and renames it over `path`: readers see all of it or none. */
static moe_status write_file_atomic(const char *path, const char *text, mode_t mode) {
    char tmp[PATH_CAP + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot write %s: %s", tmp, strerror(errno));
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n && fchmod(fd, mode) == 0;
    ok &= close(fd) == 0;
    if (!ok || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return moe_fail(MOE_EIO, "cannot write %s: %s", path, strerror(err));
    }
    return MOE_OK;
}

static int read_small_file(const char *path, char *out, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(out, 1, cap - 1, f);
    fclose(f);
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == ' ' || out[n - 1] == '\r')) out[--n] = 0;
    return 0;
}

static pid_t read_pid(const char *path) {
    char text[32];
    if (read_small_file(path, text, sizeof text) != 0) return 0;
    long v = strtol(text, NULL, 10);
    return v > 1 ? (pid_t)v : 0;
}

static moe_status write_pid(const char *path, pid_t pid) {
    char text[32];
    snprintf(text, sizeof text, "%d\n", (int)pid);
    return write_file_atomic(path, text, 0600);
}

/* Workers with a pid file: one past the highest index found. */
static int worker_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int i;
        char tail[8];
        if (sscanf(e->d_name, "worker-%d%7s", &i, tail) == 2 && strcmp(tail, ".pid") == 0 &&
            i >= 0 && i < MAX_WORKERS && i + 1 > n)
            n = i + 1;
    }
    closedir(d);
    return n;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    if (remove(path) != 0 && errno != ENOENT)
        fprintf(stderr, "moectl: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

static void rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the recorded shape ---- */

static int read_shape(const char *dir, struct shape *sh) {
    char path[PATH_CAP], text[4096];
    if (read_small_file(in_dir(path, dir, "cluster.json"), text, sizeof text) != 0) return 0;
    cJSON *j = cJSON_Parse(text);
    if (!j) return 0;
    memset(sh, 0, sizeof *sh);
    const cJSON *v;
    if ((v = cJSON_GetObjectItem(j, "workers")) && cJSON_IsNumber(v)) sh->workers = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "pods")) && cJSON_IsNumber(v)) sh->pods = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "threads")) && cJSON_IsNumber(v)) sh->threads = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "port")) && cJSON_IsNumber(v)) sh->port = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "heartbeat_timeout_ms")) && cJSON_IsNumber(v))
        sh->heartbeat_timeout_ms = (long)v->valuedouble;
    sh->tls = cJSON_IsTrue(cJSON_GetObjectItem(j, "tls"));
    if ((v = cJSON_GetObjectItem(j, "address")) && cJSON_IsString(v))
        snprintf(sh->address, sizeof sh->address, "%s", v->valuestring);
    cJSON_Delete(j);
    return sh->workers >= 1 && sh->workers <= MAX_WORKERS && sh->pods >= 1 && sh->threads >= 1;
}

static moe_status write_shape(const char *dir, const struct shape *sh) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "workers", sh->workers);
    cJSON_AddNumberToObject(j, "pods", sh->pods);
    cJSON_AddNumberToObject(j, "threads", sh->threads);
    cJSON_AddBoolToObject(j, "tls", sh->tls);
    cJSON_AddNumberToObject(j, "port", sh->port);
    cJSON_AddNumberToObject(j, "heartbeat_timeout_ms", (double)sh->heartbeat_timeout_ms);
    cJSON_AddStringToObject(j, "address", sh->address);
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return moe_fail(MOE_ENOMEM, "out of memory");
    char path[PATH_CAP];
    size_t n = strlen(text);
    char *line = malloc(n + 2);
    moe_status s = MOE_ENOMEM;
    if (line) {
        memcpy(line, text, n);
        memcpy(line + n, "\n", 2);
        s = write_file_atomic(in_dir(path, dir, "cluster.json"), line, 0600);
        free(line);
    }
    cJSON_free(text);
    return s;
}

/* ---- processes ---- */

/* Alive and still a moed daemon (a pid file can outlive its process and the pid be reused).
 * Zombies count as gone: nobody may reap the daemons of an earlier `cluster up`. */
static int daemon_alive(pid_t pid) {
    if (pid <= 1) return 0;
    /* Our own child: waitpid knows, whatever it is doing (the worker re-executes itself to
     * choose its BLAS kernels, and /proc shows an empty command line meanwhile). */
    pid_t r = waitpid(pid, NULL, WNOHANG);
    if (r == 0) return 1;
    if (r == pid) return 0;
    if (kill(pid, 0) != 0 && errno != EPERM) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return access("/proc/self/stat", R_OK) != 0; // no /proc: trust kill()
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *rp = strrchr(buf, ')');
    if (rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X')) return 0;
    char comm[32] = "";
    const char *lp = strchr(buf, '(');
    if (lp && rp && rp > lp) snprintf(comm, sizeof comm, "%.*s", (int)(rp - lp - 1), lp + 1);
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    if (!(f = fopen(path, "r"))) return 0;
    n = fread(buf, 1, sizeof buf - 1, f); // argv[0], NUL-terminated
    fclose(f);
    buf[n] = 0;
    if (n) return strstr(buf, "moed-") != NULL;
    /* Mid-exec the command line reads empty; the worker re-executes /proc/self/exe, which
     * names it "exe" until it is done. */
    return strncmp(comm, "moed-", 5) == 0 || strcmp(comm, "exe") == 0;
}

/* Reaps children of this process that exited, so that they stop looking alive. */
static void reap(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* Starts argv[0] in its own session (a Ctrl-C in the shell that ran `cluster up` must not
 * reach it), stdin from /dev/null, stdout and stderr appended to `log`. Returns once the
 * child has exec'd (so that /proc already names the daemon) or failed to. Runs before this
 * process has any thread, so the child may do what it likes before exec. */
static moe_status spawn(const char *const argv[], const char *log, pid_t *out) {
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot open %s: %s", log, strerror(errno));
    char when[32];
    time_t now = time(NULL);
    struct tm tm;
    strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", localtime_r(&now, &tm));
    dprintf(fd, "---- %s moectl cluster up:", when);
    for (int i = 0; argv[i]; i++) dprintf(fd, " %s", argv[i]);
    dprintf(fd, "\n");
    int sync[2]; // closed by a successful exec; carries errno when it fails
    if (pipe2(sync, O_CLOEXEC) != 0) {
        close(fd);
        return moe_fail(MOE_EIO, "cannot start %s: pipe: %s", argv[0], strerror(errno));
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fd);
        close(sync[0]);
        close(sync[1]);
        return moe_fail(MOE_EIO, "cannot start %s: fork: %s", argv[0], strerror(errno));
    }
    if (pid == 0) {
        setsid();
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        for (int f = 3; f < sync[1]; f++) close(f); // all but the exec pipe
        closefrom(sync[1] + 1);
        execv(argv[0], (char *const *)argv);
        int err = errno;
        if (write(sync[1], &err, sizeof err) < 0) _exit(126);
        _exit(127);
    }
    close(fd);
    close(sync[1]);
    int err = 0;
    ssize_t n;
    while ((n = read(sync[0], &err, sizeof err)) < 0 && errno == EINTR) {
    }
    close(sync[0]);
    if (n > 0) {
        waitpid(pid, NULL, 0);
        return moe_fail(MOE_EIO, "cannot run %s: %s", argv[0], strerror(err));
    }
    *out = pid;
    return MOE_OK;
}

/* The last few lines of a log, indented, so that a failed start says why without a hunt. */
static void show_log_tail(const char *log, int lines) {
    FILE *f = fopen(log, "r");
    if (!f) return;
    char ring[8][512];
    int n = 0;
    if (lines > 8) lines = 8;
    while (fgets(ring[n % lines], sizeof ring[0], f)) n++;
    fclose(f);
    fprintf(stderr, "moectl: the last lines of %s:\n", log);
    for (int i = n > lines ? n - lines : 0; i < n; i++) fprintf(stderr, "    %s", ring[i % lines]);
}

static moe_status find_daemon(const char *name, char *out) {
    char dir[PATH_MAX];
    const char *env = getenv("MOED_BIN_DIR");
    if (env && env[0]) {
        snprintf(dir, sizeof dir, "%s", env);
    } else {
        ssize_t n = readlink("/proc/self/exe", dir, sizeof dir - 1);
        if (n <= 0) return moe_fail(MOE_EIO, "cannot find my own executable: %s", strerror(errno));
        dir[n] = 0;
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
    }
    snprintf(out, PATH_CAP, "%s/%s", dir, name);
    if (access(out, X_OK) != 0)
        return moe_fail(MOE_EIO, "%s: %s (build it, or set MOED_BIN_DIR to the directory holding "
                                 "moed-coordinator and moed-worker)", out, strerror(errno));
    return MOE_OK;
}

/* ---- credentials ---- */

/* Reuses an existing token file (a restarted cluster keeps its credentials), else writes 32
 * random bytes as hex. */
static moe_status ensure_token(const char *path) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if ((st.st_mode & 077) && chmod(path, 0600) != 0)
            return moe_fail(MOE_EIO, "%s: readable by others and cannot chmod: %s", path,
                            strerror(errno));
        char token[256];
        return rpc_read_token(path, token, sizeof token);
    }
    unsigned char raw[32];
    for (size_t got = 0; got < sizeof raw;) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0 && errno != EINTR) return moe_fail(MOE_EIO, "getrandom: %s", strerror(errno));
        if (n > 0) got += (size_t)n;
    }
    char hex[2 * sizeof raw + 2];
    for (size_t i = 0; i < sizeof raw; i++) snprintf(hex + 2 * i, 3, "%02x", raw[i]);
    strcat(hex, "\n");
    return write_file_atomic(path, hex, 0600);
}

/* A self-signed certificate for 127.0.0.1 (the coordinator's; clients trust it as their CA). */
static moe_status ensure_tls(const char *dir) {
    char tls[PATH_CAP], cert[PATH_CAP], key[PATH_CAP], log[PATH_CAP];
    in_dir(tls, dir, "tls");
    CHECK(mkdir_p(tls, 0700));
    in_dir(cert, tls, "cert.pem");
    in_dir(key, tls, "key.pem");
    in_dir(log, tls, "openssl.log");
    if (access(cert, R_OK) == 0 && access(key, R_OK) == 0) return MOE_OK;
    const char *argv[] = {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650", "-subj",
                          "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                          "-keyout", key, "-out", cert, NULL};
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return moe_fail(MOE_EIO, "cannot open %s: %s", log, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "cannot run openssl: %s\n", strerror(errno));
        _exit(127);
    }
    close(fd);
    int status = 0;
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        unlink(cert);
        unlink(key);
        return moe_fail(MOE_EIO, "--tls: making a certificate with the openssl command failed "
                                 "(%s): see %s", pid < 0 ? strerror(errno) :
                                 WIFEXITED(status) && WEXITSTATUS(status) == 127
                                     ? "openssl not found" : "openssl exited with an error",
                        log);
    }
    if (chmod(key, 0600) != 0) return moe_fail(MOE_EIO, "chmod %s: %s", key, strerror(errno));
    return MOE_OK;
}

/* ---- cluster up ---- */

static int cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static int parse_int_flag(const char *s, const char *flag, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || errno || v < lo || v > hi) {
        moectl_fail(EXIT_BAD_INPUT, "%s: expected an integer in [%ld, %ld], got '%s'", flag, lo,
                    hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* The port of "host:port", or -1. */
static int port_of(const char *address) {
    const char *colon = strrchr(address, ':');
    if (!colon) return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    return *end == 0 && p > 0 && p < 65536 ? (int)p : -1;
}

/* Waits for the coordinator to write its address file, as long as it lives. */
static int wait_for_address(const char *dir, pid_t pid, char *address, size_t cap) {
    char path[PATH_CAP], log[PATH_CAP];
    in_dir(path, dir, "coordinator.addr");
    in_dir(log, dir, "coordinator.log");
    double deadline = client_now() + UP_TIMEOUT_S;
    for (;;) {
        if (read_small_file(path, address, cap) == 0 && port_of(address) > 0) return EXIT_OK;
        reap();
        if (!daemon_alive(pid)) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) exited while starting",
                        (int)pid);
            show_log_tail(log, 6);
            return EXIT_RUN_FAILED;
        }
        if (client_now() > deadline) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) did not write %s within %.0f s",
                        (int)pid, path, UP_TIMEOUT_S);
            show_log_tail(log, 6);
            return EXIT_RUN_FAILED;
        }
        sleep_s(0.02);
    }
}

/* Polls GetCluster until every worker we run is registered and alive. */
static int wait_for_workers(struct client *c, const char *dir, pid_t coord, const pid_t *pids,
                            int n) {
    double deadline = client_now() + UP_TIMEOUT_S;
    char log[PATH_CAP];
    int alive = 0;
    char last_error[600] = "";
    for (;;) {
        Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
        ProtobufCMessage *reply = NULL;
        struct rpc_result res;
        if (rpc_call_sync(c->ch, "/moed.v1.Status/GetCluster", &req.base,
                          &moed__v1__cluster_status__descriptor, &reply, 5.0, &res) == MOE_OK) {
            const Moed__V1__ClusterStatus *cs = (const Moed__V1__ClusterStatus *)reply;
            alive = 0;
            for (int i = 0; i < n; i++)
                for (size_t k = 0; k < cs->n_workers; k++) {
                    const Moed__V1__WorkerInfo *w = cs->workers[k];
                    int up = w->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                             w->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
                    if (up && w->pid == pids[i]) {
                        alive++;
                        break;
                    }
                }
            protobuf_c_message_free_unpacked(reply, NULL);
            if (alive == n) return EXIT_OK;
        } else if (res.code == GRPC_STATUS_UNAUTHENTICATED ||
                   res.code == GRPC_STATUS_PERMISSION_DENIED) {
            return moectl_fail(EXIT_UNREACHABLE, "%s", moe_errmsg());
        } else {
            snprintf(last_error, sizeof last_error, "%s", moe_errmsg());
        }
        reap();
        if (!daemon_alive(coord)) {
            moectl_fail(EXIT_RUN_FAILED, "the coordinator (pid %d) exited", (int)coord);
            show_log_tail(in_dir(log, dir, "coordinator.log"), 6);
            return EXIT_RUN_FAILED;
        }
        for (int i = 0; i < n; i++)
            if (!daemon_alive(pids[i])) {
                moectl_fail(EXIT_RUN_FAILED, "worker %d (pid %d) exited while starting", i,
                            (int)pids[i]);
                show_log_tail(worker_file(log, dir, i, ".log"), 6);
                return EXIT_RUN_FAILED;
            }
        if (client_now() > deadline) {
            moectl_fail(EXIT_RUN_FAILED,
                        "only %d of %d workers registered with the coordinator within %.0f s%s%s; "
                        "logs are in %s (`moectl cluster down --dir %s` stops what runs)",
                        alive, n, UP_TIMEOUT_S, last_error[0] ? ": " : "", last_error, dir, dir);
            return EXIT_RUN_FAILED;
        }
        sleep_s(0.1);
    }
}

static void cluster_usage(FILE *to) {
    fprintf(to,
            "usage: moectl cluster up [--workers N] [--pods P] [--threads N] [--port P]\n"
            "                         [--tls|--no-tls] [--heartbeat-timeout-ms N] [--dir DIR]\n"
            "                         [--json]\n"
            "       moectl cluster down [--dir DIR] [--purge]\n"
            "       moectl cluster status [--json]\n"
            "                         " CLIENT_OPTIONS_USAGE "\n"
            "DIR defaults to $MOED_CLUSTER_DIR, else $HOME/.moed/cluster.\n");
}

enum { UP_WORKERS = 1, UP_PODS = 2, UP_THREADS = 4, UP_PORT = 8, UP_TLS = 16, UP_HEARTBEAT = 32 };

static int cluster_up(int argc, char **argv) {
    static const struct option opts[] = {{"workers", required_argument, 0, 'w'},
                                         {"pods", required_argument, 0, 'p'},
                                         {"threads", required_argument, 0, 't'},
                                         {"port", required_argument, 0, 'P'},
                                         {"tls", no_argument, 0, 'T'},
                                         {"no-tls", no_argument, 0, 'N'},
                                         {"heartbeat-timeout-ms", required_argument, 0, 'H'},
                                         {"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct shape want = {0}; // what the flags ask for; `given` says which were given
    const char *dir_flag = NULL;
    int json = 0, given = 0, c;
    long v;
    while ((c = getopt_long(argc, argv, "w:p:t:P:Td:jh", opts, NULL)) != -1) {
        switch (c) {
        case 'w':
            if (parse_int_flag(optarg, "--workers", 1, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.workers = (int)v, given |= UP_WORKERS;
            break;
        case 'p':
            if (parse_int_flag(optarg, "--pods", 1, MAX_WORKERS, &v)) return EXIT_BAD_INPUT;
            want.pods = (int)v, given |= UP_PODS;
            break;
        case 't':
            if (parse_int_flag(optarg, "--threads", 1, 4096, &v)) return EXIT_BAD_INPUT;
            want.threads = (int)v, given |= UP_THREADS;
            break;
        case 'P':
            if (parse_int_flag(optarg, "--port", 0, 65535, &v)) return EXIT_BAD_INPUT;
            want.port = (int)v, given |= UP_PORT;
            break;
        case 'H':
            if (parse_int_flag(optarg, "--heartbeat-timeout-ms", 1, 86400000, &v))
                return EXIT_BAD_INPUT;
            want.heartbeat_timeout_ms = v, given |= UP_HEARTBEAT;
            break;
        case 'T': want.tls = 1, given |= UP_TLS; break;
        case 'N': want.tls = 0, given |= UP_TLS; break;
        case 'd': dir_flag = optarg; break;
        case 'j': json = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }

    char dir[PATH_MAX], path[PATH_CAP], coord_exe[PATH_CAP], worker_exe[PATH_CAP];
    if (client_cluster_dir(dir_flag, dir, sizeof dir) != MOE_OK ||
        find_daemon("moed-coordinator", coord_exe) != MOE_OK ||
        find_daemon("moed-worker", worker_exe) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    if (dir[0] != '/') { // the daemons and the hints we print need it absolute
        char cwd[PATH_MAX], abs[PATH_CAP];
        if (!getcwd(cwd, sizeof cwd)) return moectl_fail(EXIT_RUN_FAILED, "getcwd: %s", strerror(errno));
        int n = snprintf(abs, sizeof abs, "%s/%s", cwd, dir);
        if (n < 0 || (size_t)n >= sizeof dir) return moectl_fail(EXIT_BAD_INPUT, "%s: path too long", abs);
        memcpy(dir, abs, (size_t)n + 1);
    }
    if (mkdir_p(dir, 0700) != MOE_OK) return moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());

    /* What runs already? */
    struct shape sh, old;
    int have_old = read_shape(dir, &old);
    pid_t coord = read_pid(in_dir(path, dir, "coordinator.pid"));
    if (!daemon_alive(coord)) coord = 0;
    int n_files = worker_files(dir);
    int n_alive = 0;
    pid_t *pids = calloc(MAX_WORKERS, sizeof *pids);
    int *started = calloc(MAX_WORKERS, sizeof *started);
    int code = EXIT_OK;
    struct client cl = {0};
    if (!pids || !started) {
        code = moectl_fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    for (int i = 0; i < n_files; i++) {
        pids[i] = read_pid(worker_file(path, dir, i, ".pid"));
        if (!daemon_alive(pids[i])) pids[i] = 0;
        else n_alive++;
    }
    if (coord || n_alive) {
        if (!have_old) {
            code = moectl_fail(EXIT_BAD_INPUT, "moed processes are running from %s but its "
                               "cluster.json is missing; `moectl cluster down --dir %s` first",
                               dir, dir);
            goto exit;
        }
        sh = old;
        int all = coord != 0 && n_alive == sh.workers;
        for (int i = 0; i < sh.workers; i++) all &= pids[i] != 0;
        if (all) {
            code = moectl_fail(EXIT_BAD_INPUT, "a cluster is already running in %s (coordinator "
                               "pid %d at %s, %d workers); `moectl cluster down --dir %s` stops it",
                               dir, (int)coord, sh.address, sh.workers, dir);
            goto exit;
        }
        const char *conflict = (given & UP_WORKERS) && want.workers != sh.workers ? "--workers"
                               : (given & UP_PODS) && want.pods != sh.pods        ? "--pods"
                               : (given & UP_THREADS) && want.threads != sh.threads ? "--threads"
                               : (given & UP_TLS) && want.tls != sh.tls           ? "--tls"
                               : (given & UP_HEARTBEAT) &&
                                       want.heartbeat_timeout_ms != sh.heartbeat_timeout_ms
                                   ? "--heartbeat-timeout-ms"
                                   : NULL;
        if (conflict) {
            code = moectl_fail(EXIT_BAD_INPUT, "%s: the cluster in %s is partly running with "
                               "another shape (--workers %d --pods %d --threads %d%s); `moectl "
                               "cluster down --dir %s` first to change it",
                               conflict, dir, sh.workers, sh.pods, sh.threads,
                               sh.tls ? " --tls" : "", dir);
            goto exit;
        }
    } else {
        /* A fresh start: the flags given, over the shape it last ran with, over defaults. */
        sh = have_old ? old : (struct shape){.workers = 2, .pods = 1};
        if (given & UP_WORKERS) sh.workers = want.workers;
        if (given & UP_PODS) sh.pods = want.pods;
        if (given & UP_PORT) sh.port = want.port;
        if (given & UP_TLS) sh.tls = want.tls;
        if (given & UP_HEARTBEAT) sh.heartbeat_timeout_ms = want.heartbeat_timeout_ms;
        if (given & UP_THREADS) {
            sh.threads = want.threads;
        } else if (!have_old || (given & UP_WORKERS)) {
            sh.threads = cpu_count() / sh.workers; // the machine shared out
            if (sh.threads < 1) sh.threads = 1;
        }
        if (sh.pods > sh.workers) {
            code = moectl_fail(EXIT_BAD_INPUT, "--pods %d: more pods than workers (%d)", sh.pods,
                               sh.workers);
            goto exit;
        }
        /* Nothing runs: whatever pid and address files remain are stale. */
        for (int i = 0; i < n_files; i++) unlink(worker_file(path, dir, i, ".pid"));
        unlink(in_dir(path, dir, "coordinator.pid"));
        unlink(in_dir(path, dir, "coordinator.addr"));
        if (!sh.tls) rm_tree(in_dir(path, dir, "tls")); // clients would take its cert as a CA
    }

    char client_token[PATH_CAP], cluster_token[PATH_CAP], cert[PATH_CAP], key[PATH_CAP];
    in_dir(client_token, dir, "client.token");
    in_dir(cluster_token, dir, "cluster.token");
    in_dir(cert, dir, "tls/cert.pem");
    in_dir(key, dir, "tls/key.pem");
    if (ensure_token(client_token) != MOE_OK || ensure_token(cluster_token) != MOE_OK ||
        (sh.tls && ensure_tls(dir) != MOE_OK)) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }

    /* The coordinator: on its old port while workers that know that port still live. */
    char address[256] = "";
    int coord_started = 0;
    if (!coord) {
        int port = sh.port;
        if (n_alive) {
            char recorded[256] = "";
            if (read_small_file(in_dir(path, dir, "coordinator.addr"), recorded,
                                sizeof recorded) != 0 || port_of(recorded) < 0)
                snprintf(recorded, sizeof recorded, "%s", sh.address);
            port = port_of(recorded);
            if (port < 0) {
                code = moectl_fail(EXIT_RUN_FAILED, "cannot restart the coordinator where its "
                                   "workers look for it: no address in %s/coordinator.addr or "
                                   "cluster.json; `moectl cluster down --dir %s` and up again",
                                   dir, dir);
                goto exit;
            }
        }
        char listen[64], store[PATH_CAP], addr_file[PATH_CAP], log[PATH_CAP], hb[32];
        snprintf(listen, sizeof listen, "127.0.0.1:%d", port);
        snprintf(hb, sizeof hb, "%ld", sh.heartbeat_timeout_ms);
        in_dir(store, dir, "coordinator");
        in_dir(addr_file, dir, "coordinator.addr");
        in_dir(log, dir, "coordinator.log");
        unlink(addr_file);
        const char *args[32];
        int n = 0;
        args[n++] = coord_exe;
        args[n++] = "--listen", args[n++] = listen;
        args[n++] = "--dir", args[n++] = store;
        args[n++] = "--client-token-file", args[n++] = client_token;
        args[n++] = "--cluster-token-file", args[n++] = cluster_token;
        args[n++] = "--addr-file", args[n++] = addr_file;
        if (sh.tls) args[n++] = "--tls-cert", args[n++] = cert, args[n++] = "--tls-key", args[n++] = key;
        /* the workers serve the same 127.0.0.1 certificate: the coordinator verifies it */
        if (sh.tls) args[n++] = "--worker-tls-ca", args[n++] = cert;
        if (sh.heartbeat_timeout_ms) args[n++] = "--heartbeat-timeout-ms", args[n++] = hb;
        args[n] = NULL;
        if (spawn(args, log, &coord) != MOE_OK ||
            write_pid(in_dir(path, dir, "coordinator.pid"), coord) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        coord_started = 1;
        if ((code = wait_for_address(dir, coord, address, sizeof address))) goto exit;
    } else if (read_small_file(in_dir(path, dir, "coordinator.addr"), address, sizeof address) != 0 ||
               port_of(address) < 0) {
        snprintf(address, sizeof address, "%s", sh.address);
    }
    snprintf(sh.address, sizeof sh.address, "%s", address);

    /* The workers that are missing, spread round-robin over the pods. */
    for (int i = 0; i < sh.workers; i++) {
        if (pids[i]) continue;
        char pod[16], threads[16], scratch[PATH_CAP], log[PATH_CAP];
        snprintf(pod, sizeof pod, "%d", i % sh.pods);
        snprintf(threads, sizeof threads, "%d", sh.threads);
        worker_file(scratch, dir, i, "");
        worker_file(log, dir, i, ".log");
        if (mkdir_p(scratch, 0700) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        const char *args[32];
        int n = 0;
        args[n++] = worker_exe;
        args[n++] = "--coordinator", args[n++] = address;
        args[n++] = "--cluster-token-file", args[n++] = cluster_token;
        args[n++] = "--listen", args[n++] = "127.0.0.1:0";
        args[n++] = "--pod", args[n++] = pod;
        args[n++] = "--threads", args[n++] = threads;
        args[n++] = "--dir", args[n++] = scratch;
        if (sh.tls) {
            args[n++] = "--tls-ca", args[n++] = cert;
            args[n++] = "--tls-cert", args[n++] = cert, args[n++] = "--tls-key", args[n++] = key;
        }
        args[n] = NULL;
        if (spawn(args, log, &pids[i]) != MOE_OK ||
            write_pid(worker_file(path, dir, i, ".pid"), pids[i]) != MOE_OK) {
            code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
            goto exit;
        }
        started[i] = 1;
    }
    if (write_shape(dir, &sh) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }

    /* Ready when the coordinator counts every one of our workers alive. */
    char token[256];
    if (rpc_read_token(client_token, token, sizeof token) != MOE_OK) {
        code = moectl_fail(EXIT_RUN_FAILED, "%s", moe_errmsg());
        goto exit;
    }
    if ((code = client_open_at(&cl, address, token, sh.tls ? cert : NULL))) goto exit;
    if ((code = wait_for_workers(&cl, dir, coord, pids, sh.workers))) goto exit;

    char log[PATH_CAP];
    if (json) {
        cJSON *j = cJSON_CreateObject(), *ws = cJSON_CreateArray(), *co = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "dir", dir);
        cJSON_AddStringToObject(j, "address", address);
        cJSON_AddStringToObject(j, "client_token_file", client_token);
        if (sh.tls) cJSON_AddStringToObject(j, "tls_ca", cert);
        else cJSON_AddNullToObject(j, "tls_ca");
        cJSON_AddNumberToObject(co, "pid", coord);
        cJSON_AddStringToObject(co, "log", in_dir(log, dir, "coordinator.log"));
        cJSON_AddBoolToObject(co, "started", coord_started);
        cJSON_AddItemToObject(j, "coordinator", co);
        for (int i = 0; i < sh.workers; i++) {
            cJSON *w = cJSON_CreateObject();
            cJSON_AddNumberToObject(w, "index", i);
            cJSON_AddNumberToObject(w, "pod", i % sh.pods);
            cJSON_AddNumberToObject(w, "pid", pids[i]);
            cJSON_AddStringToObject(w, "log", worker_file(log, dir, i, ".log"));
            cJSON_AddBoolToObject(w, "started", started[i]);
            cJSON_AddItemToArray(ws, w);
        }
        cJSON_AddItemToObject(j, "workers", ws);
        cJSON_AddNumberToObject(j, "pods", sh.pods);
        cJSON_AddNumberToObject(j, "threads_per_worker", sh.threads);
        char *text = cJSON_PrintUnformatted(j);
        if (text) printf("%s\n", text);
        cJSON_free(text);
        cJSON_Delete(j);
    } else {
        int n_started = 0;
        for (int i = 0; i < sh.workers; i++) n_started += started[i];
        const char *how = coord_started && n_started == sh.workers ? "started"
                          : coord_started || n_started             ? "restarted what had stopped"
                                                                   : "running";
        printf("moectl: cluster up (%s): coordinator at %s, %d worker%s in %d pod%s, %d thread%s "
               "each%s\n",
               how, address, sh.workers, sh.workers == 1 ? "" : "s", sh.pods,
               sh.pods == 1 ? "" : "s", sh.threads, sh.threads == 1 ? "" : "s",
               sh.tls ? ", TLS" : "");
        printf("  directory    %s (state, logs, pids; jobs survive `moectl cluster down`)\n", dir);
        printf("  coordinator  pid %-7d %s%s\n", (int)coord, in_dir(log, dir, "coordinator.log"),
               coord_started ? "" : " (was running)");
        for (int i = 0; i < sh.workers; i++)
            printf("  worker %-4d  pid %-7d %s (pod %d)%s\n", i, (int)pids[i],
                   worker_file(log, dir, i, ".log"), i % sh.pods, started[i] ? "" : " (was running)");
        printf("  credentials  %s (client), %s (workers)\n", client_token, cluster_token);
        if (sh.tls) printf("  TLS          the coordinator's certificate, clients' CA: %s\n", cert);
        char def[PATH_MAX];
        int is_default = client_cluster_dir(NULL, def, sizeof def) == MOE_OK && strcmp(def, dir) == 0;
        if (is_default)
            printf("use it:   moectl submit SPEC; moectl jobs; moectl watch JOB\n"
                   "stop it:  moectl cluster down\n");
        else
            printf("use it:   export MOED_CLUSTER_DIR=%s (or --cluster-dir %s); then\n"
                   "          moectl submit SPEC; moectl jobs; moectl watch JOB\n"
                   "stop it:  moectl cluster down --dir %s\n",
                   dir, dir, dir);
    }
    fflush(stdout);

exit:
    if (cl.ch) client_close(&cl);
    free(pids);
    free(started);
    return code;
}

/* ---- cluster down ---- */

static int cluster_down(int argc, char **argv) {
    static const struct option opts[] = {{"dir", required_argument, 0, 'd'},
                                         {"cluster-dir", required_argument, 0, 'd'},
                                         {"purge", no_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *dir_flag = NULL;
    int purge = 0, c;
    while ((c = getopt_long(argc, argv, "d:ph", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir_flag = optarg; break;
        case 'p': purge = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    char dir[PATH_MAX], path[PATH_CAP];
    if (client_cluster_dir(dir_flag, dir, sizeof dir) != MOE_OK)
        return moectl_fail(EXIT_BAD_INPUT, "%s", moe_errmsg());
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("moectl: no cluster in %s: nothing to stop\n", dir);
        return EXIT_OK;
    }

    /* Workers first, so that the coordinator sees them leave; then the coordinator. */
    int n = worker_files(dir);
    pid_t coord = read_pid(in_dir(path, dir, "coordinator.pid"));
    pid_t *pids = calloc((size_t)n + 1, sizeof *pids);
    if (!pids) return moectl_fail(EXIT_RUN_FAILED, "out of memory");
    int n_running = 0, killed = 0;
    for (int i = 0; i < n; i++) {
        pids[i] = read_pid(worker_file(path, dir, i, ".pid"));
        if (daemon_alive(pids[i]) && kill(pids[i], SIGTERM) == 0) n_running++;
        else pids[i] = 0;
    }
    double t0 = client_now();
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) left += daemon_alive(pids[i]);
        if (!left || client_now() - t0 > DOWN_TIMEOUT_S * 0.6) break;
        sleep_s(0.02);
    }
    int coord_ran = daemon_alive(coord) && kill(coord, SIGTERM) == 0;
    for (;;) {
        int left = coord_ran && daemon_alive(coord);
        for (int i = 0; i < n; i++) left += daemon_alive(pids[i]);
        if (!left) break;
        if (client_now() - t0 > DOWN_TIMEOUT_S) {
            for (int i = 0; i < n; i++)
                if (daemon_alive(pids[i])) {
                    fprintf(stderr, "moectl: worker %d (pid %d) ignored SIGTERM for %.0f s: "
                            "killed\n", i, (int)pids[i], DOWN_TIMEOUT_S);
                    kill(pids[i], SIGKILL), killed++;
                }
            if (coord_ran && daemon_alive(coord)) {
                fprintf(stderr, "moectl: the coordinator (pid %d) ignored SIGTERM for %.0f s: "
                        "killed\n", (int)coord, DOWN_TIMEOUT_S);
                kill(coord, SIGKILL), killed++;
            }
            for (int k = 0; k < 100; k++) { // SIGKILL is quick, but not instantaneous
                int any = coord_ran && daemon_alive(coord);
                for (int i = 0; i < n; i++) any += daemon_alive(pids[i]);
                if (!any) break;
                sleep_s(0.02);
            }
            break;
        }
        sleep_s(0.02);
    }
    for (int i = 0; i < n; i++) unlink(worker_file(path, dir, i, ".pid"));
    unlink(in_dir(path, dir, "coordinator.pid"));
    unlink(in_dir(path, dir, "coordinator.addr"));
    free(pids);

    if (purge) {
        static const char *const names[] = {"coordinator", "coordinator.log", "client.token",
                                            "cluster.token", "cluster.json", "tls",
                                            "coordinator.addr.tmp", "cluster.json.tmp"};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) rm_tree(in_dir(path, dir, names[i]));
        for (int i = 0; i < MAX_WORKERS; i++) {
            struct stat ws;
            int any = 0;
            if (lstat(worker_file(path, dir, i, ""), &ws) == 0) rm_tree(path), any = 1;
            if (lstat(worker_file(path, dir, i, ".log"), &ws) == 0) unlink(path), any = 1;
            if (!any && i >= n) break;
        }
        rmdir(dir); // only if nothing else was in it
    }
    const char *what = coord_ran || n_running ? "stopped" : "nothing was running";
    if (coord_ran || n_running)
        printf("moectl: cluster down: stopped %s and %d worker%s%s in %s; %s\n",
               coord_ran ? "the coordinator" : "no coordinator", n_running,
               n_running == 1 ? "" : "s", killed ? " (some with SIGKILL)" : "", dir,
               purge ? "its state is removed"
                     : "its state is kept (`moectl cluster up` on it brings the jobs back)");
    else
        printf("moectl: cluster down: %s in %s%s\n", what, dir,
               purge ? "; its state is removed" : "");
    return EXIT_OK;
}

/* ---- cluster status ---- */

static int cluster_status(int argc, char **argv) {
    static const struct option opts[] = {CLIENT_LONG_OPTIONS,
                                         {"dir", required_argument, 0, OPT_CLUSTER_DIR},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct client_options o = {0};
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        if (client_option(&o, c, optarg)) continue;
        switch (c) {
        case 'j': json = 1; break;
        case 'h': cluster_usage(stdout); return EXIT_OK;
        default: cluster_usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    struct client cl;
    int code = client_open(&cl, &o);
    if (code) return code;
    Moed__V1__GetClusterRequest req = MOED__V1__GET_CLUSTER_REQUEST__INIT;
    ProtobufCMessage *reply = NULL;
    code = client_call(&cl, "/moed.v1.Status/GetCluster", &req.base,
                       &moed__v1__cluster_status__descriptor, &reply, NULL);
    if (code) goto exit;
    const Moed__V1__ClusterStatus *cs = (const Moed__V1__ClusterStatus *)reply;
    if (json) {
        client_print_json(reply);
        goto exit;
    }
    char up[32], age[32];
    client_age(up, sizeof up, (long long)(cs->uptime_seconds * 1000));
    int alive = 0;
    for (size_t i = 0; i < cs->n_workers; i++)
        alive += cs->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_IDLE ||
                 cs->workers[i]->state == MOED__V1__WORKER_STATE__WORKER_BUSY;
    printf("coordinator %s (version %s, up %s, heartbeat timeout %.1f s)\n",
           cs->coordinator_address[0] ? cs->coordinator_address : cl.target,
           cs->coordinator_version, up, cs->heartbeat_timeout_ms / 1000.0);
    printf("workers: %d alive of %zu registered; jobs: %d running, %d queued, %d in all\n", alive,
           cs->n_workers, cs->jobs_running, cs->jobs_queued, cs->jobs_total);
    if (cs->n_workers) {
        printf("\n%-8s %-4s %-6s %-22s %-10s %-12s %-8s %s\n", "WORKER", "POD", "STATE",
               "ADDRESS", "HEARTBEAT", "JOB", "PID", "CPUS");
        for (size_t i = 0; i < cs->n_workers; i++) {
            const Moed__V1__WorkerInfo *w = cs->workers[i];
            char job[80] = "-";
            if (w->job_id[0]) snprintf(job, sizeof job, "%s/%d", w->job_id, w->slot);
            client_age(age, sizeof age, w->ms_since_heartbeat);
            printf("%-8s %-4d %-6s %-22s %-10s %-12s %-8d %d\n", w->worker_id, w->pod,
                   client_enum_name(&moed__v1__worker_state__descriptor, w->state), w->address,
                   strcat(age, " ago"), job, w->pid, w->cpus);
        }
    }
    if (cs->n_pods) {
        printf("\n%-4s %-8s %-6s %s\n", "POD", "WORKERS", "ALIVE", "HEALTH");
        for (size_t i = 0; i < cs->n_pods; i++) {
            const Moed__V1__PodInfo *p = cs->pods[i];
            printf("%-4d %-8d %-6d %s\n", p->pod, p->workers, p->alive,
                   p->healthy ? "healthy" : "DEGRADED");
        }
    }
exit:
    if (reply) protobuf_c_message_free_unpacked(reply, NULL);
    client_close(&cl);
    return code;
}

int cmd_cluster(int argc, char **argv) {
    if (argc < 2) {
        cluster_usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "up") == 0) return cluster_up(argc - 1, argv + 1);
    if (strcmp(sub, "down") == 0) return cluster_down(argc - 1, argv + 1);
    if (strcmp(sub, "status") == 0) return cluster_status(argc - 1, argv + 1);
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0) {
        cluster_usage(stdout);
        return EXIT_OK;
    }
    fprintf(stderr, "moectl: cluster %s: unknown subcommand (up, down or status)\n", sub);
    return EXIT_BAD_INPUT;
}
