#include "blas_select.h"
#include "log.h"

#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

char *openblas_get_corename(void);

const char *blas_preferred_coretype(void) {
    const char *forced = getenv("MOE_BLAS_CORETYPE");
    if (forced && *forced && strcasecmp(forced, "auto") != 0)
        return strcasecmp(forced, "keep") == 0 ? NULL : forced;
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
