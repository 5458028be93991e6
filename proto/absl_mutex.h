/*
 * absl_mutex.h — how gRPC's locks behave in moed's processes.
 *
 * Owns: switching off Abseil's mutex deadlock detection before gRPC starts. Debian's Abseil
 * (20220623) is built with it on: every lock of every absl::Mutex — gRPC core takes them on
 * each call, completion and timer — records the lock order in a global graph (GraphCycles)
 * under a global lock, and a coordinator serving thousands of workers spent ~12% of its samples
 * there (issue 17's profile). moed's own locks are pthread's; gRPC's ordering is gRPC's to keep.
 * MOED_ABSL_DEADLOCK_DETECTION=1 in the environment leaves it on (to debug a hang inside gRPC).
 * Never: touches any other Abseil setting.
 */
#ifndef MOE_ABSL_MUTEX_H
#define MOE_ABSL_MUTEX_H

#ifdef __cplusplus
extern "C" {
#endif

/* Before grpc_init (rpc_init calls it). 1: detection switched off; 0: left as it was. */
int rpc_absl_mutex_fast(void);

#ifdef __cplusplus
}
#endif

#endif
