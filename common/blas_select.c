#include "blas_select.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

char *openblas_get_corename(void);

struct blas_tunables {
    char coretype[32];
};

const struct knob blas_knobs[] = {
    {NULL, "MOE_BLAS_CORETYPE", KNOB_STR, KNOB_AT(struct blas_tunables, coretype), "auto", 0, 0,
     NULL, "auto|keep|NAME",
     "OpenBLAS's kernels: auto, the fastest this CPU supports; keep, OpenBLAS's own choice; or "
     "a core type such as SkylakeX or Haswell"},
};
const int blas_n_knobs = (int)(sizeof blas_knobs / sizeof blas_knobs[0]);

const char *blas_preferred_coretype(void) {
    static struct blas_tunables t;
    if (knobs_load_env(blas_knobs, blas_n_knobs, &t) != MOE_OK) {
        LOG_WARN("%s; choosing the kernels as for auto", moe_errmsg());
        snprintf(t.coretype, sizeof t.coretype, "auto");
    }
    if (strcasecmp(t.coretype, "auto") != 0)
        return strcasecmp(t.coretype, "keep") == 0 ? NULL : t.coretype;
#if defined(__x86_64__)
    __builtin_cpu_init();
    /* SkylakeX kernels need AVX-512 F, BW, VL and DQ; Haswell kernels AVX2 and FMA */
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

const char *blas_loaded_coretype(void) { return openblas_get_corename(); }

void blas_select_kernels(char **argv) {
    const char *want = blas_preferred_coretype();
    if (!want || getenv("MOE_BLAS_REEXEC")) return;
    const char *have = getenv("OPENBLAS_CORETYPE");
    if (have && strcasecmp(have, want) == 0) return;
    if (!have && strcasecmp(blas_loaded_coretype(), want) == 0) return;
    if (have)
        LOG_INFO("OPENBLAS_CORETYPE=%s in the environment; using %s, the fastest kernels this "
                 "CPU supports (MOE_BLAS_CORETYPE=keep to keep yours)", have, want);
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv("MOE_BLAS_REEXEC", "1", 1);
    /* Exec the binary by its real path: exec'ing "/proc/self/exe" would rename the process
     * "exe" in /proc/<pid>/stat, and tools (moectl cluster down, ps -C) find daemons by name. */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        execv(self, argv);
    } else {
        execv("/proc/self/exe", argv);
    }
    LOG_WARN("could not re-execute to select %s kernels; continuing with %s", want,
             blas_loaded_coretype());
}
