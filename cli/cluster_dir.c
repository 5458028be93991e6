/*
 * cluster_dir.c — a local cluster's directory and its processes (see cluster_dir.h).
 */
#include "../proto/rpc.h" // first: gRPC's headers choose the feature macros (pipe2, nftw, memmem)
#include "cluster_dir.h"

#include "../common/fileio.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- files ---- */

/* Directory paths are shorter than PATH_MAX, file names short: these never truncate. */
char *in_dir(char *out, const char *dir, const char *name) {
    int n = snprintf(out, PATH_CAP, "%s/%s", dir, name);
    if (n < 0 || n >= PATH_CAP) out[0] = 0;
    return out;
}

char *worker_file(char *out, const char *dir, int i, const char *suffix) {
    int n = snprintf(out, PATH_CAP, "%s/worker-%d%s", dir, i, suffix);
    if (n < 0 || n >= PATH_CAP) out[0] = 0;
    return out;
}

/* Up to cap - 1 bytes of a file, NUL-terminated: how many, or -1 with errno set when it
 * cannot be opened. */
static int read_head(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

int read_small_file(const char *path, char *out, size_t cap) {
    int got = read_head(path, out, cap);
    if (got < 0) return -1;
    if (got == 0) {
        errno = ENODATA;
        return -1;
    }
    static const char space[] = " \t\r\n";
    size_t n = (size_t)got;
    while (n && out[n - 1] && strchr(space, out[n - 1])) out[--n] = 0;
    size_t lead = strspn(out, space);
    memmove(out, out + lead, n - lead + 1);
    return 0;
}

int read_first_line(const char *path, char *out, size_t cap) {
    if (read_small_file(path, out, cap) != 0) return -1;
    out[strcspn(out, "\r\n")] = 0;
    size_t n = strlen(out);
    while (n && strchr(" \t", out[n - 1])) out[--n] = 0;
    return 0;
}

pid_t read_pid(const char *path) {
    char text[32];
    if (read_first_line(path, text, sizeof text) != 0) return 0;
    long v = strtol(text, NULL, 10);
    return v > 1 ? (pid_t)v : 0;
}

moe_status write_pid(const char *path, pid_t pid) {
    char text[32];
    snprintf(text, sizeof text, "%d\n", (int)pid);
    return moe_write_file_atomic(path, text, strlen(text), 0600);
}

/* Workers with a pid file: one past the highest index found. */
int worker_files(const char *dir) {
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

void rm_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the recorded shape ---- */

/* The "data_roots" array of cluster.json into the shape's list (entries that do not fit are
 * dropped: a root list never grows past what cluster up accepts). */
static void read_roots(const cJSON *a, struct shape *sh) {
    size_t used = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, a) {
        if (!cJSON_IsString(v) || !v->valuestring[0]) continue;
        size_t len = strlen(v->valuestring);
        if (used + len + 2 > sizeof sh->data_roots) break;
        memcpy(sh->data_roots + used, v->valuestring, len + 1);
        used += len + 1;
        sh->data_roots[used] = 0;
    }
}

int read_shape(const char *dir, struct shape *sh) {
    char path[PATH_CAP], text[16384];
    if (read_small_file(in_dir(path, dir, "cluster.json"), text, sizeof text) != 0) return 0;
    cJSON *j = cJSON_Parse(text);
    if (!j) return 0;
    memset(sh, 0, sizeof *sh);
    const cJSON *v;
    if ((v = cJSON_GetObjectItem(j, "workers")) && cJSON_IsNumber(v)) sh->workers = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "pods")) && cJSON_IsNumber(v)) sh->pods = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "threads")) && cJSON_IsNumber(v)) sh->threads = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "slots")) && cJSON_IsNumber(v)) sh->slots = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "spares")) && cJSON_IsNumber(v)) sh->spares = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "backend")) && cJSON_IsString(v))
        sh->mpi = strcmp(v->valuestring, "mpi") == 0;
    if ((v = cJSON_GetObjectItem(j, "port")) && cJSON_IsNumber(v)) sh->port = v->valueint;
    if ((v = cJSON_GetObjectItem(j, "heartbeat_timeout_ms")) && cJSON_IsNumber(v))
        sh->heartbeat_timeout_ms = (long)v->valuedouble;
    sh->tls = cJSON_IsTrue(cJSON_GetObjectItem(j, "tls"));
    sh->http = cJSON_IsTrue(cJSON_GetObjectItem(j, "http"));
    if ((v = cJSON_GetObjectItem(j, "address")) && cJSON_IsString(v))
        snprintf(sh->address, sizeof sh->address, "%s", v->valuestring);
    if ((v = cJSON_GetObjectItem(j, "data_roots")) && cJSON_IsArray(v)) read_roots(v, sh);
    cJSON_Delete(j);
    return sh->workers >= 1 && sh->workers <= MAX_WORKERS && sh->pods >= 1 && sh->threads >= 1;
}

moe_status write_shape(const char *dir, const struct shape *sh) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "workers", sh->workers);
    cJSON_AddNumberToObject(j, "pods", sh->pods);
    cJSON_AddNumberToObject(j, "threads", sh->threads);
    cJSON_AddNumberToObject(j, "slots", sh->slots);
    cJSON_AddNumberToObject(j, "spares", sh->spares);
    cJSON_AddStringToObject(j, "backend", sh->mpi ? "mpi" : "tcp");
    cJSON_AddBoolToObject(j, "tls", sh->tls);
    cJSON_AddBoolToObject(j, "http", sh->http);
    cJSON_AddNumberToObject(j, "port", sh->port);
    cJSON_AddNumberToObject(j, "heartbeat_timeout_ms", (double)sh->heartbeat_timeout_ms);
    cJSON_AddStringToObject(j, "address", sh->address);
    cJSON *roots = cJSON_AddArrayToObject(j, "data_roots");
    for (const char *r = sh->data_roots; roots && *r; r += strlen(r) + 1)
        cJSON_AddItemToArray(roots, cJSON_CreateString(r));
    char *text = cJSON_Print(j);
    cJSON_Delete(j);
    if (!text) return moe_fail(MOE_ENOMEM, "out of memory");
    char path[PATH_CAP];
    struct moe_atomic_file f;
    moe_status s = moe_atomic_begin(&f, in_dir(path, dir, "cluster.json"), 0600);
    if (s == MOE_OK) s = moe_atomic_write(&f, text, strlen(text));
    if (s == MOE_OK) s = moe_atomic_write(&f, "\n", 1);
    if (s == MOE_OK) s = moe_atomic_commit(&f); // each step cleans up after its own failure
    cJSON_free(text);
    return s;
}

/* Which pod worker i belongs to (see the header: --workers round-robin, --slots in blocks). */
int worker_pod(const struct shape *sh, int i) {
    if (sh->slots <= 0) return i % sh->pods;
    if (i < sh->pods * sh->slots) return i / sh->slots;
    return (i - sh->pods * sh->slots) % sh->pods;
}

/* Worker i is rank i % S of its pod's mpirun. */
int worker_by_mpirun(const struct shape *sh, int i) {
    return sh->mpi && sh->slots > 0 && i < sh->pods * sh->slots;
}

char *mpirun_file(char *out, const char *dir, int pod, const char *suffix) {
    int n = snprintf(out, PATH_CAP, "%s/mpirun-%d%s", dir, pod, suffix);
    if (n < 0 || n >= PATH_CAP) out[0] = 0;
    return out;
}

/* ---- processes ---- */

/* The state letter of a stat line "pid (comm) S ppid ..." (0 when malformed); comm may hold
 * spaces and parentheses, so the last ')' ends it. */
static char stat_state(const char *buf) {
    const char *rp = strrchr(buf, ')');
    return rp && rp[1] == ' ' ? rp[2] : 0;
}

/* A process whose main thread is a zombie has ended only once its other threads have too:
 * after a kill -9, the leader can read Z while the rest are still torn down, holding the
 * process's files and locks (the coordinator's RocksDB LOCK). 1 while any task is not Z or X. */
static int threads_left(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return 0;
    int left = 0;
    struct dirent *e;
    while (!left && (e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char stat_path[64 + 256 + 8], buf[512];
        snprintf(stat_path, sizeof stat_path, "%s/%s/stat", path, e->d_name);
        char state = read_head(stat_path, buf, sizeof buf) < 0 ? 0 : stat_state(buf);
        if (state && state != 'Z' && state != 'X') left = 1;
    }
    closedir(d);
    return left;
}

/* Alive and still a moed daemon (a pid file can outlive its process and the pid be reused).
 * Zombies count as gone, once all their threads are: nobody may reap the daemons of an earlier
 * `cluster up`. */
int daemon_alive(pid_t pid) {
    if (pid <= 1) return 0;
    /* Our own child: waitpid knows, whatever it is doing (the worker re-executes itself to
     * choose its BLAS kernels, and /proc shows an empty command line meanwhile). */
    pid_t r = waitpid(pid, NULL, WNOHANG);
    if (r == 0) return 1;
    if (r == pid) return 0;
    if (kill(pid, 0) != 0 && errno != EPERM) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_head(path, buf, sizeof buf) < 0)
        return access("/proc/self/stat", R_OK) != 0; // no /proc: trust kill()
    char state = stat_state(buf);
    if (state == 'Z' || state == 'X') return threads_left(pid);
    char comm[32] = "";
    const char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
    if (lp && rp && rp > lp) snprintf(comm, sizeof comm, "%.*s", (int)(rp - lp - 1), lp + 1);
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    int got = read_head(path, buf, sizeof buf); // argv[0], NUL-terminated, then the others
    if (got < 0) return 0;
    size_t n = (size_t)got;
    /* an mpirun counts when it is one of ours: moed-worker among its arguments */
    if (n && strstr(buf, "mpirun")) return memmem(buf, n, "moed-worker", 11) != NULL;
    if (n) return strstr(buf, "moed-") != NULL;
    /* Mid-exec the command line reads empty; the worker re-executes /proc/self/exe, which
     * names it "exe" until it is done. */
    return strncmp(comm, "moed-", 5) == 0 || strcmp(comm, "exe") == 0;
}

/* Reaps children of this process that exited, so that they stop looking alive. */
void reap(void) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}


/* Starts argv[0] in its own session (a Ctrl-C in the shell that ran `cluster up` must not
 * reach it), stdin from /dev/null, stdout and stderr appended to `log`. Returns once the
 * child has exec'd (so that /proc already names the daemon) or failed to. Runs before this
 * process has any thread, so the child may do what it likes before exec. */
moe_status spawn(const char *const argv[], const char *log, pid_t *out) {
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
void show_log_tail(const char *log, int lines) {
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

moe_status find_daemon(const char *name, char *out) {
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
moe_status ensure_token(const char *path) {
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
    return moe_write_file_atomic(path, hex, strlen(hex), 0600);
}

/* A self-signed certificate for 127.0.0.1 (the coordinator's; clients trust it as their CA). */
moe_status ensure_tls(const char *dir) {
    char tls[PATH_CAP], cert[PATH_CAP], key[PATH_CAP], log[PATH_CAP];
    in_dir(tls, dir, "tls");
    CHECK(moe_mkdir_p(tls, 0700));
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

/* ---- mpirun pods ---- */

/* The parent of a process, from /proc (0 when unknown). */
pid_t parent_of(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    if (read_head(path, buf, sizeof buf) < 0) return 0;
    const char *rp = strrchr(buf, ')'); // "pid (comm) S ppid ..."
    int ppid = 0;
    if (!rp || sscanf(rp + 1, " %*c %d", &ppid) != 1) return 0;
    return (pid_t)ppid;
}

/* mpirun, found on $PATH (spawn needs a path). */
moe_status find_mpirun(char *out) {
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path && path[0] ? path : "/usr/bin:/bin");
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(out, PATH_CAP, "%s/mpirun", d);
        if (access(out, X_OK) == 0) return MOE_OK;
    }
    return moe_fail(MOE_EIO, "--backend mpi: no mpirun on $PATH (Debian: apt-get install "
                             "openmpi-bin)");
}

/* Starts pod p's S workers as one `mpirun -np S`. Each rank runs a shell that names its own
 * log and scratch directory from its MPI rank (worker p * S + rank) and then becomes the
 * worker, so the worker's pid is the rank's and its parent is mpirun. */
moe_status spawn_mpi_pod(const char *dir, const char *mpirun, const struct shape *sh,
                                int p, const char *const *worker_args, pid_t *launcher) {
    char base[16], np[16], log[PATH_CAP];
    snprintf(base, sizeof base, "%d", p * sh->slots);
    snprintf(np, sizeof np, "%d", sh->slots);
    /* Inherited by mpirun and, on this host, by the ranks it starts. moectl has no thread
     * yet, so setenv is safe here. */
    setenv("MOED_POD_DIR", dir, 1);
    setenv("MOED_POD_BASE", base, 1);
    if (geteuid() == 0) { // Open MPI refuses root unless told twice
        setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
        setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    }
    static const char script[] =
        "i=$((MOED_POD_BASE + OMPI_COMM_WORLD_RANK)); "
        "exec \"$0\" \"$@\" --dir \"$MOED_POD_DIR/worker-$i\" >>\"$MOED_POD_DIR/worker-$i.log\" 2>&1";
    const char *args[64];
    int n = 0;
    args[n++] = mpirun;
    args[n++] = "-np", args[n++] = np;
    /* every rank on this host, none pinned to a core (the pods share the cores), the
     * loopback interface only (this may be a machine without a network) */
    args[n++] = "--oversubscribe", args[n++] = "--bind-to", args[n++] = "none";
    args[n++] = "--mca", args[n++] = "btl", args[n++] = "self,vader,tcp";
    args[n++] = "--mca", args[n++] = "btl_tcp_if_include", args[n++] = "lo";
    args[n++] = "--mca", args[n++] = "oob_tcp_if_include", args[n++] = "lo";
    args[n++] = "/bin/sh", args[n++] = "-c", args[n++] = script;
    for (int i = 0; worker_args[i] && n < 63; i++) args[n++] = worker_args[i];
    args[n] = NULL;
    CHECK(spawn(args, mpirun_file(log, dir, p, ".log"), launcher));
    return write_pid(mpirun_file(log, dir, p, ".pid"), *launcher);
}

