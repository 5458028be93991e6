/*
 * moectl.h — what moectl's command files share: the exit codes and the commands' entry points.
 *
 * Every command is `int cmd_x(int argc, char **argv)` with argv[0] the command's name, and
 * returns the process's exit code. moectl.c dispatches; cluster.c and jobs.c are the commands
 * that talk to a coordinator; client.c is how they reach it; cluster_dir.c holds a local
 * cluster's files and processes; chaos.c injects faults into a job on a local cluster.
 */
#ifndef MOECTL_H
#define MOECTL_H

/* The exit codes, the same for every command (moectl help lists them). */
enum moectl_exit {
    EXIT_OK = 0,          // success; watch: the job succeeded
    EXIT_RUN_FAILED = 1,  // the job, the run or the operation failed
    EXIT_BAD_INPUT = 2,   // usage, spec, data or model file, unknown job (NOT_FOUND)
    EXIT_CANCELLED = 3,   // watch: the job was cancelled
    EXIT_UNREACHABLE = 4, // no coordinator to talk to, or it refused our credentials
};

/* Prints "moectl: <message>" on stderr and returns `code`. */
int moectl_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int cmd_cluster(int argc, char **argv); // cluster up | down | status
int cmd_submit(int argc, char **argv);
int cmd_jobs(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_watch(int argc, char **argv);
int cmd_cancel(int argc, char **argv);
int cmd_fetch(int argc, char **argv);
int cmd_steps(int argc, char **argv); // a job's stored per-step metrics (its loss curve)
int cmd_chaos(int argc, char **argv); // a reproducible schedule of faults against a job

/* Restarts what has stopped of the local cluster in `dir` the way `moectl cluster up` does:
 * the coordinator on its recorded port, each dead worker, an mpirun pod that lost any rank as a
 * new mpirun; the shape recorded in cluster.json. Waits until the coordinator serves and every
 * restarted worker has registered; prints nothing but errors. A cluster that runs whole is
 * left alone (EXIT_OK); none running at all is EXIT_BAD_INPUT. (cluster.c) */
int cluster_restart(const char *dir);

#endif
