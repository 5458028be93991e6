// absl_mutex.cc — Abseil's deadlock detection switched off for gRPC's locks (absl_mutex.h).
#include "absl_mutex.h"

#include <absl/synchronization/mutex.h>

#include <cstdlib>
#include <cstring>

extern "C" int rpc_absl_mutex_fast(void) {
    const char *keep = std::getenv("MOED_ABSL_DEADLOCK_DETECTION");
    if (keep && std::strcmp(keep, "1") == 0) return 0;
    absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
    return 1;
}
