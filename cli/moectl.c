/*
 * moectl — the command line of moed.
 *
 * Owns: argument parsing, human and --json output, progress display, exit codes.
 *   moectl train SPEC [--set key.path=value ...] [--json] [--quiet]
 *                [--resume STATE] [--state-out STATE] [--stop-at STEP]
 *   moectl eval MODEL DATA [--batch N] [--max-windows N] [--json]
 *   moectl generate MODEL [--prompt TEXT] [--bytes N] [--temperature T] [--seed S]
 *   moectl spec            print a complete default job spec (YAML, one comment per field)
 * and, talking to a coordinator (client.c says how it is found):
 *   moectl cluster up|down|status      a local cluster of real processes (cluster.c)
 *   moectl submit|jobs|status|watch|cancel|fetch|steps   jobs on a cluster (jobs.c)
 *   moectl chaos JOB                   faults injected into a job on a local cluster (chaos.c)
 * Exit codes: 0 success (watch: the job succeeded); 1 the run, the job or the operation failed;
 * 2 bad input: usage, a malformed or inconsistent spec, a missing or malformed data or model
 * file, an unknown job (NOT_FOUND); 3 watch: the job was cancelled; 4 the coordinator cannot be
 * reached or refused the credentials (UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED).
 * Errors are one line on stderr: "moectl: <what is wrong>".
 * Never: does the math itself; the trainer library and the kernels do.
 */
#include "../common/blas_select.h"
#include "../common/clock.h"
#include "../common/log.h"
#include "../common/spec.h"
#include "../kernels/model.h"
#include "../worker/trainer/data.h"
#include "../worker/trainer/generate.h"
#include "../worker/trainer/model_io.h"
#include "../worker/trainer/trainer.h"
#include "../proto/rpc.h"
#include "moectl.h"

#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static int fail(int code, const char *what) {
    fprintf(stderr, "moectl: %s\n", what);
    return code;
}

static void usage(FILE *to) {
    fprintf(to,
            "usage: moectl <command> [options]\n"
            "\n"
            "in this process:\n"
            "  train SPEC [--set key.path=value ...] [--json] [--quiet]\n"
            "            [--resume STATE] [--state-out STATE] [--stop-at STEP]\n"
            "        train a model in this process; SPEC is YAML or JSON (see `moectl spec`).\n"
            "        --state-out writes the full training state (parameters, optimizer moments,\n"
            "        step) when the run ends, stops at --stop-at, or is interrupted; --resume\n"
            "        continues from one, reaching the same model bit for bit\n"
            "  eval MODEL DATA [--batch N] [--max-windows N] [--json]\n"
            "        mean loss of a .safetensors model on a text file or directory\n"
            "  generate MODEL [--prompt TEXT] [--bytes N] [--temperature T] [--seed S]\n"
            "        sample text from a model (temperature 0: always the likeliest byte)\n"
            "  spec  print a complete default job spec to edit\n"
            "  help  this text\n"
            "\n"
            "a local cluster (coordinator + workers on 127.0.0.1; DIR defaults to\n"
            "$MOED_CLUSTER_DIR, else $HOME/.moed/cluster):\n"
            "  cluster up [--workers N | --slots S [--spares N]] [--pods P] [--backend tcp|mpi]\n"
            "             [--threads N] [--port P] [--tls|--no-tls] [--heartbeat-timeout-ms N]\n"
            "             [--dir DIR] [--json]\n"
            "        start it, or restart what of it has stopped; state and logs in DIR.\n"
            "        --slots S: P pods of S workers each (plus N spares); --backend mpi\n"
            "        launches each pod's workers with one `mpirun -np S`.\n"
            "        Defaults: 2 workers, 1 pod, the cores shared out, any free port, or what\n"
            "        the cluster in DIR last ran with\n"
            "  cluster down [--dir DIR] [--purge]\n"
            "        stop it; its jobs stay in DIR for the next `cluster up` unless --purge\n"
            "  cluster status [--json]     workers, pods, health\n"
            "\n"
            "jobs on a cluster:\n"
            "  submit SPEC [--set key.path=value ...] [--json]\n"
            "        prints the new job's id (JOB=$(moectl submit job.yaml))\n"
            "  jobs [--active] [--json]    every job and its state\n"
            "  status JOB [--json]         step, loss, speed, expert load, the mesh's slots\n"
            "                              (worker, step, step/comm ms, bytes moved), the\n"
            "                              committed step and recoveries, events\n"
            "  watch JOB [--json]          live progress until the job ends; exit code from it\n"
            "  cancel JOB [--json]\n"
            "  fetch JOB -o FILE [--json]  the trained model (.safetensors)\n"
            "  steps JOB [--from STEP] [--json]  every stored step's metrics: the loss curve\n"
            "  chaos JOB [--seed N] [--faults K] [--kinds kill,kill2,stop,coordinator,cut,flip]\n"
            "            [--gap-steps G] [--timeout S] [--dir DIR] [--json] [--dry-run]\n"
            "        a schedule of K faults drawn from the seed against a job on a local cluster\n"
            "        (kill -9 workers, SIGSTOP one, kill and restart the coordinator, cut a\n"
            "        data-plane connection), each waited for until the job has recovered\n"
            "  they take [--coordinator HOST:PORT] [--token-file F] [--ca F] [--cluster-dir DIR]\n"
            "  (or $MOED_COORDINATOR, $MOED_TOKEN or $MOED_TOKEN_FILE, $MOED_TLS_CA,\n"
            "  $MOED_CLUSTER_DIR); by default the local cluster's coordinator.addr, client.token\n"
            "  and tls/cert.pem. --json prints the reply messages of proto/moed.proto, one a line\n"
            "\n"
            "exit codes: 0 ok (watch: the job succeeded); 1 the run, the job or the operation\n"
            "failed; 2 bad input (usage, spec, data or model file, unknown job); 3 watch: the job\n"
            "was cancelled; 4 the coordinator cannot be reached or refused the credentials\n");
}

static double bits(double nats) { return nats / log(2.0); }

/* ---- train ---- */

struct progress {
    int tty;       // stdout is a terminal: draw a bar with an ETA
    int json;
    int quiet;
    long total;
    double started;
    long tokens;
};

static void format_eta(char *out, size_t len, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, len, "%ld:%02ld", s / 60, s % 60);
}

static void draw_bar(const struct progress *p, const struct step_report *r) {
    double elapsed = moe_clock_s() - p->started;
    double frac = (double)r->step / p->total;
    char eta[32];
    format_eta(eta, sizeof eta, elapsed / frac * (1 - frac));
    int width = 30, filled = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[width] = 0;
    printf("\r\033[K[%s] %3.0f%% step %ld/%ld loss %.4f %.0f tok/s ETA %s", bar, frac * 100,
           r->step, p->total, r->loss, p->tokens / elapsed, eta);
    fflush(stdout);
}

static void print_step(const struct progress *p, const struct step_report *r) {
    double elapsed = moe_clock_s() - p->started;
    double tps = p->tokens / elapsed;
    if (p->json) {
        /* the loss with every digit: a distributed run must match it exactly */
        printf("{\"event\":\"step\",\"step\":%ld,\"loss\":%.17g,\"ce\":%.6f,\"aux\":%.6f,"
               "\"z\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tokens_per_s\":%.1f,"
               "\"load_max_over_mean\":%.4f,\"dropped\":%ld,\"step_ms\":%.2f,"
               "\"forward_ms\":%.2f,\"backward_ms\":%.2f,\"optimizer_ms\":%.2f}\n",
               r->step, r->loss, r->ce, r->aux, r->z, r->lr, r->grad_norm, tps,
               r->load_max_over_mean, r->dropped, 1e3 * r->seconds, 1e3 * r->t_forward,
               1e3 * r->t_backward, 1e3 * r->t_update);
        return;
    }
    if (p->tty) printf("\r\033[K");
    printf("step %5ld/%ld | loss %.4f (ce %.4f aux %.4f z %.3f) | lr %.2e | %6.0f tok/s | "
           "load max/mean %.2f | dropped %.1f%%\n",
           r->step, p->total, r->loss, r->ce, r->aux, r->z, r->lr, tps, r->load_max_over_mean,
           100.0 * r->dropped / (double)r->assignments);
    fflush(stdout);
}

static void print_eval(const struct progress *p, long step, double loss, long windows,
                       double unigram) {
    if (p->json) {
        printf("{\"event\":\"eval\",\"step\":%ld,\"val_loss\":%.6f,\"val_bits_per_byte\":%.6f,"
               "\"unigram_bits_per_byte\":%.6f,\"windows\":%ld}\n",
               step, loss, bits(loss), unigram, windows);
    } else {
        if (p->tty) printf("\r\033[K");
        printf("eval step %ld: held-out loss %.4f nats = %.4f bits/byte over %ld windows "
               "(unigram entropy %.4f bits/byte)\n",
               step, loss, bits(loss), windows, unigram);
    }
    fflush(stdout);
}

/* Writes the full training state; says where it went and how to go on. 0 on success. */
static int save_state(const struct trainer *t, const char *path, const struct progress *p,
                      const char *why) {
    if (trainer_save_state(t, path) != MOE_OK) return fail(EXIT_RUN_FAILED, moe_errmsg());
    if (p->json)
        printf("{\"event\":\"state\",\"reason\":\"%s\",\"step\":%ld,\"state\":\"%s\"}\n", why,
               t->model.step, path);
    else {
        if (p->tty) printf("\r\033[K");
        printf("moectl: %s at step %ld; training state written to %s (continue with "
               "--resume %s)\n", why, t->model.step, path, path);
    }
    fflush(stdout);
    return 0;
}

static int parse_positive(const char *s, const char *flag, long *out);

static int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"set", required_argument, 0, 's'},
                                         {"json", no_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"resume", required_argument, 0, 'r'},
                                         {"state-out", required_argument, 0, 'o'},
                                         {"stop-at", required_argument, 0, 'S'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    struct progress p = {0};
    char **sets = calloc((size_t)argc, sizeof *sets);
    const char *resume = NULL, *state_out = NULL;
    long stop_at = 0;
    int n_sets = 0, c;
    while ((c = getopt_long(argc, argv, "s:jqh", opts, NULL)) != -1) {
        switch (c) {
        case 's': sets[n_sets++] = optarg; break;
        case 'j': p.json = 1; break;
        case 'q': p.quiet = 1; break;
        case 'r': resume = optarg; break;
        case 'o': state_out = optarg; break;
        case 'S':
            if (parse_positive(optarg, "--stop-at", &stop_at)) {
                free(sets);
                return EXIT_BAD_INPUT;
            }
            break;
        case 'h': usage(stdout); free(sets); return 0;
        default: usage(stderr); free(sets); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc - 1) {
        free(sets);
        usage(stderr);
        return EXIT_BAD_INPUT;
    }
    if (stop_at && !state_out) {
        free(sets);
        return fail(EXIT_BAD_INPUT, "--stop-at needs --state-out: the stopped run's state "
                                    "would be lost");
    }
    struct job_spec spec;
    spec_defaults(&spec);
    moe_status s = spec_load_file(&spec, argv[optind]);
    for (int i = 0; s == MOE_OK && i < n_sets; i++) s = spec_set(&spec, sets[i]);
    free(sets);
    if (s != MOE_OK) return fail(EXIT_BAD_INPUT, moe_errmsg());

    struct trainer t;
    if (trainer_open(&t, &spec) != MOE_OK) return fail(EXIT_BAD_INPUT, moe_errmsg());
    if (resume && trainer_load_state(&t, resume) != MOE_OK) {
        trainer_close(&t);
        return fail(EXIT_BAD_INPUT, moe_errmsg());
    }
    if (stop_at > t.spec.run.steps) {
        trainer_close(&t);
        fprintf(stderr, "moectl: --stop-at %ld is past run.steps = %ld\n", stop_at,
                t.spec.run.steps);
        return EXIT_BAD_INPUT;
    }
    const struct model *m = &t.model;
    p.tty = !p.json && isatty(STDOUT_FILENO);
    p.total = t.spec.run.steps;
    long last = stop_at ? stop_at : p.total;
    if (!p.json && !p.quiet)
        printf("moectl: training '%s': %zu parameters (%d layers, d_model %d, %d experts, "
               "top-%d), batch %d x %d, steps %ld..%ld of %ld\n",
               t.spec.name, m->n_params, m->cfg.n_layers, m->cfg.d_model, m->cfg.n_experts,
               m->cfg.top_k, t.B, t.T, t.model.step + 1, last, p.total);
    if (!p.json && !p.quiet && t.mesh.shards > 1)
        printf("moectl: playing the %d data shards of the %d x %d mesh in turn: the model a "
               "%d x %d job writes, byte for byte\n", t.mesh.shards, t.mesh.pods, t.mesh.slots,
               t.mesh.pods, t.mesh.slots);

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int code = 0;
    double val = NAN;
    long windows = 0;
    p.started = moe_clock_s();
    while (t.model.step < last) {
        if (interrupted) {
            code = EXIT_RUN_FAILED;
            if (state_out && save_state(&t, state_out, &p, "interrupted") == 0) goto exit;
            fail(EXIT_RUN_FAILED, "interrupted: no model written");
            goto exit;
        }
        struct step_report r;
        if (trainer_step(&t, &r) != MOE_OK) {
            code = fail(EXIT_RUN_FAILED, moe_errmsg());
            goto exit;
        }
        p.tokens += r.tokens;
        if (!p.quiet && (r.step % t.spec.run.log_every == 0 || r.step == 1 || r.step == p.total))
            print_step(&p, &r);
        else if (!p.quiet && p.tty)
            draw_bar(&p, &r);
        int eval_now = r.step == p.total ||
                       (t.spec.run.eval_every > 0 && r.step % t.spec.run.eval_every == 0);
        if (eval_now && t.spec.data.val_fraction > 0) {
            if (trainer_eval(&t, &val, &windows) != MOE_OK) {
                code = fail(EXIT_RUN_FAILED, moe_errmsg());
                goto exit;
            }
            if (!p.quiet) print_eval(&p, r.step, val, windows, t.unigram_bits);
        }
    }
    if (state_out && save_state(&t, state_out, &p, t.model.step < p.total ? "stopped" : "done")) {
        code = EXIT_RUN_FAILED;
        goto exit;
    }
    if (t.model.step < p.total) goto exit; /* --stop-at: the model is not finished */
    if (trainer_save_model(&t, t.spec.run.output) != MOE_OK) {
        code = fail(EXIT_RUN_FAILED, moe_errmsg());
        goto exit;
    }
    double secs = moe_clock_s() - p.started;
    if (p.json)
        printf("{\"event\":\"done\",\"steps\":%ld,\"seconds\":%.3f,\"tokens_per_s\":%.1f,"
               "\"val_bits_per_byte\":%.6f,\"unigram_bits_per_byte\":%.6f,\"model\":\"%s\"}\n",
               t.model.step, secs, p.tokens / secs, isnan(val) ? -1.0 : bits(val),
               t.unigram_bits, t.spec.run.output);
    else if (!p.quiet)
        printf("moectl: trained %ld steps in %.1f s (%.0f tok/s); wrote %s and its config "
               "beside it\n",
               t.model.step, secs, p.tokens / secs, t.spec.run.output);
exit:
    trainer_close(&t);
    return code;
}

/* ---- eval ---- */

static int parse_positive(const char *s, const char *flag, long *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == 0 || *end != 0 || v <= 0) {
        fprintf(stderr, "moectl: %s: expected a positive integer, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"batch", required_argument, 0, 'b'},
                                         {"max-windows", required_argument, 0, 'w'},
                                         {"json", no_argument, 0, 'j'},
                                         {0, 0, 0, 0}};
    long batch = 8, max_windows = 0;
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "b:w:j", opts, NULL)) != -1) {
        switch (c) {
        case 'b': if (parse_positive(optarg, "--batch", &batch)) return EXIT_BAD_INPUT; break;
        case 'w': if (parse_positive(optarg, "--max-windows", &max_windows)) return EXIT_BAD_INPUT; break;
        case 'j': json = 1; break;
        default: usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc - 2) {
        usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *model_path = argv[optind], *data_path = argv[optind + 1];
    struct model m;
    if (model_load(&m, model_path, (int)batch) != MOE_OK) return fail(EXIT_BAD_INPUT, moe_errmsg());
    struct data_stream st;
    if (data_load_stream(&st, data_path) != MOE_OK) {
        model_free(&m);
        return fail(EXIT_BAD_INPUT, moe_errmsg());
    }
    int T = m.cfg.seq_len, code = 0;
    long total = stream_windows(&st, T);
    if (total == 0) {
        fprintf(stderr, "moectl: %s: %zu bytes, fewer than one window of seq_len+1 = %d\n",
                data_path, st.n, T + 1);
        code = EXIT_BAD_INPUT;
        goto exit;
    }
    long want = max_windows && max_windows < total ? max_windows : total;
    int *tok = malloc(sizeof(int) * (size_t)batch * T), *tgt = malloc(sizeof(int) * (size_t)batch * T);
    double sum = 0;
    long done = 0;
    while (tok && tgt && done < want) {
        int b = 0;
        for (; b < batch && done + b < want; b++) {
            long w = (long)((double)(done + b) * total / want);
            stream_window(&st, T, w, tok + (size_t)b * T, tgt + (size_t)b * T);
        }
        model_forward(&m, tok, tgt, b, T);
        sum += m.stats.ce * b;
        done += b;
    }
    free(tok);
    free(tgt);
    if (done < want) {
        code = fail(EXIT_RUN_FAILED, "out of memory");
        goto exit;
    }
    double loss = sum / done;
    if (json)
        printf("{\"model\":\"%s\",\"data\":\"%s\",\"windows\":%ld,\"seq_len\":%d,"
               "\"loss\":%.6f,\"bits_per_byte\":%.6f}\n",
               model_path, data_path, done, T, loss, bits(loss));
    else
        printf("eval %s on %s: %ld windows of %d bytes: loss %.4f nats/byte = %.4f bits/byte\n",
               model_path, data_path, done, T, loss, bits(loss));
exit:
    data_stream_free(&st);
    model_free(&m);
    return code;
}

/* ---- generate ---- */

static int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {{"prompt", required_argument, 0, 'p'},
                                         {"bytes", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"seed", required_argument, 0, 's'},
                                         {0, 0, 0, 0}};
    const char *prompt = "";
    long n_new = 200, seed = 1;
    double temperature = 0.8;
    int c;
    while ((c = getopt_long(argc, argv, "p:n:t:s:", opts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'n': if (parse_positive(optarg, "--bytes", &n_new)) return EXIT_BAD_INPUT; break;
        case 's': if (parse_positive(optarg, "--seed", &seed)) return EXIT_BAD_INPUT; break;
        case 't':
            temperature = strtod(optarg, &end);
            if (*optarg == 0 || *end != 0 || !(temperature >= 0) || temperature > 100) {
                fprintf(stderr, "moectl: --temperature: expected a number in [0, 100], got '%s'\n",
                        optarg);
                return EXIT_BAD_INPUT;
            }
            break;
        default: usage(stderr); return EXIT_BAD_INPUT;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EXIT_BAD_INPUT;
    }
    if (n_new > (1L << 20)) return fail(EXIT_BAD_INPUT, "--bytes: at most 1048576");
    struct model m;
    if (model_load(&m, argv[optind], 1) != MOE_OK) return fail(EXIT_BAD_INPUT, moe_errmsg());
    size_t n_prompt = strlen(prompt);
    uint8_t *text = malloc(n_prompt + (size_t)n_new);
    int code = 0;
    if (!text) {
        code = fail(EXIT_RUN_FAILED, "out of memory");
    } else {
        memcpy(text, prompt, n_prompt);
        if (generate_bytes(&m, text, n_prompt, (size_t)n_new, (float)temperature, (uint64_t)seed) != MOE_OK)
            code = fail(EXIT_RUN_FAILED, moe_errmsg());
        else {
            fwrite(text, 1, n_prompt + (size_t)n_new, stdout);
            fputc('\n', stdout);
        }
    }
    free(text);
    model_free(&m);
    return code;
}

/* ---- spec ---- */

static int cmd_spec(void) {
    struct job_spec s;
    spec_defaults(&s);
    char *yaml = spec_to_yaml(&s);
    if (!yaml) return fail(EXIT_RUN_FAILED, "out of memory");
    fputs(yaml, stdout);
    free(yaml);
    return 0;
}

int main(int argc, char **argv) {
    moe_log_init("cli");
    if (argc < 2) {
        usage(stderr);
        return EXIT_BAD_INPUT;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0 || strcmp(cmd, "eval") == 0 || strcmp(cmd, "generate") == 0)
        blas_select_kernels(argv);
    if (strcmp(cmd, "train") == 0) return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0) return cmd_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0) return cmd_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "spec") == 0) return cmd_spec();
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } client_cmds[] = {{"cluster", cmd_cluster}, {"submit", cmd_submit}, {"jobs", cmd_jobs},
                       {"status", cmd_status},   {"watch", cmd_watch},   {"cancel", cmd_cancel},
                       {"fetch", cmd_fetch},     {"steps", cmd_steps},   {"chaos", cmd_chaos}};
    for (size_t i = 0; i < sizeof client_cmds / sizeof client_cmds[0]; i++) {
        if (strcmp(cmd, client_cmds[i].name) != 0) continue;
        int code = client_cmds[i].run(argc - 1, argv + 1);
        /* gRPC is started by the first channel (never before `cluster up` has forked its
         * daemons); stop it cleanly, whether or not this command got that far. */
        rpc_init();
        rpc_shutdown_library();
        return code;
    }
    fprintf(stderr, "moectl: unknown command '%s' (moectl help lists them)\n", cmd);
    return EXIT_BAD_INPUT;
}
