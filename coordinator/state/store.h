/*
 * store.h — the coordinator's durable record: jobs, workers, step metrics, events, and the meta
 * counters that hand out job and worker numbers, kept in one RocksDB directory.
 *
 * Owns: the RocksDB handle and its options, the key layout below, and turning protobuf-c
 * messages (proto/store.proto, proto/moed.proto) into values and back. Every coordinator
 * decision reaches disk as one atomic write batch (a job's new state + its event + the meta
 * counter), synced; step metrics may go unsynced. A restarted coordinator rebuilds its view
 * from these scans.
 * Never: decides anything. It records what the coordinator decided and reads it back; it does
 * not assign ids, check state transitions or fill in fields. It never keeps records in memory
 * between calls, and never logs on its own: failures come back as a moe_status whose message
 * names the directory or key.
 *
 * Keys (ASCII; numbers are zero-padded to 20 decimal digits so that byte order is numeric
 * order: job-2 sorts before job-10, step 9 before step 10):
 *   m                    MetaRecord
 *   j/<job>              JobRecord             job-17 -> j/00000000000000000017
 *   w/<worker>           WorkerInfo            w-3    -> w/00000000000000000003
 *   i/<worker>           WorkerRecord          the worker's credential (written once, with the
 *                                              worker's first WorkerInfo; never shown)
 *   s/<job>/<step>       StepMetrics of one step of a job
 *   e/<job>/<seq>        Event number seq of a job (JobRecord.next_event is the next seq)
 * Ids must read "job-N" / "w-N" with N a decimal number without leading zeros (N < 10^18);
 * anything else is MOE_EINVAL. Steps and sequence numbers must be >= 0.
 *
 * Records handed out by store_*_get are the caller's, freed with the generated
 * *__free_unpacked(rec, NULL). Records passed to scan callbacks are the store's, freed when the
 * callback returns: copy what must outlive it. A value that does not unpack (or a JobRecord
 * without its JobInfo) is MOE_EFORMAT naming the key. Not thread-safe: one thread (the
 * coordinator's loop) uses a store.
 */
#ifndef MOE_COORDINATOR_STORE_H
#define MOE_COORDINATOR_STORE_H

#include "../../common/status.h"
#include "proto/moed.pb-c.h"
#include "proto/store.pb-c.h"

#include <stdint.h>

struct store;

/* Opens (creating `dir` and the database if missing). MOE_EIO naming dir and RocksDB's reason,
 * e.g. the lock another coordinator holds on the same directory. A lock held by someone else is
 * tried again every 50 ms for up to `lock_wait_s` seconds (0: refused at once), for a restart
 * that races its predecessor's exit. */
moe_status store_open(struct store **out, const char *dir, double lock_wait_s);
void store_close(struct store *st);

/* The meta record. *out is never NULL on success: when none was stored yet it is a fresh
 * record with next_job = 1, next_worker = 1, cluster_id = "". Free with
 * moed__store__meta_record__free_unpacked(*out, NULL). */
moe_status store_meta_get(struct store *st, Moed__Store__MetaRecord **out);

/* Write batches: collect puts, then commit them all or none. The store_batch_* adders cannot
 * fail on their own: a bad id or a missing record is remembered, and store_batch_commit then
 * writes nothing and returns that first failure. sync = 1 for decisions (the write reaches the
 * disk before commit returns), 0 for metrics. A NULL batch (store_batch_new out of memory) is
 * accepted everywhere and fails the commit with MOE_ENOMEM. */
struct store_batch;
struct store_batch *store_batch_new(void);
void store_batch_meta(struct store_batch *b, const Moed__Store__MetaRecord *m);
void store_batch_job(struct store_batch *b, const Moed__Store__JobRecord *j); // key: j->job->job_id
void store_batch_event(struct store_batch *b, const char *job_id, int64_t seq,
                       const Moed__V1__Event *e);
void store_batch_step(struct store_batch *b, const char *job_id,
                      const Moed__V1__StepMetrics *m); // key: m->step
void store_batch_worker(struct store_batch *b, const Moed__V1__WorkerInfo *w); // key: w->worker_id
/* Removes a job: its record, every step and every event (range deletions: one job's
 * thousands of steps cost the batch three entries). The meta counter is not touched: a job
 * number is never handed out again. */
void store_batch_delete_job(struct store_batch *b, const char *job_id);
/* Removes a job's events with seq < below, or its steps with step < below (one range
 * deletion each): what retention keeps of a long history. */
void store_batch_trim_events(struct store_batch *b, const char *job_id, int64_t below);
void store_batch_trim_steps(struct store_batch *b, const char *job_id, int64_t below);
void store_batch_worker_record(struct store_batch *b, const Moed__Store__WorkerRecord *r);
moe_status store_batch_commit(struct store *st, struct store_batch *b, int sync); // frees b
void store_batch_free(struct store_batch *b); // drops an uncommitted batch

/* One job. MOE_ENOTFOUND "store: no job job-9". Free with
 * moed__store__job_record__free_unpacked(*out, NULL). */
moe_status store_job_get(struct store *st, const char *job_id, Moed__Store__JobRecord **out);

/* Scans call cb once per record in key order; cb returns 0 to go on, nonzero to stop early
 * (still MOE_OK). */
/* Every job, in submission order (job-2 before job-10). */
moe_status store_jobs_scan(struct store *st, int (*cb)(const Moed__Store__JobRecord *j, void *arg),
                           void *arg);
/* Every worker's identity record, in id order. */
moe_status store_worker_records_scan(struct store *st,
                                     int (*cb)(const Moed__Store__WorkerRecord *r, void *arg),
                                     void *arg);
/* Every worker, in id order (w-2 before w-10). */
moe_status store_workers_scan(struct store *st,
                              int (*cb)(const Moed__V1__WorkerInfo *w, void *arg), void *arg);
/* A job's steps with step >= from_step, ascending. */
moe_status store_steps_scan(struct store *st, const char *job_id, int64_t from_step,
                            int (*cb)(const Moed__V1__StepMetrics *m, void *arg), void *arg);
/* A job's last `max` events (all of them if max <= 0), oldest first. */
moe_status store_events_tail(struct store *st, const char *job_id, int max,
                             int (*cb)(const Moed__V1__Event *e, void *arg), void *arg);
/* A job's events with seq >= from_seq (< 0: from the first), ascending by seq: the whole
 * history, read a page at a time (ListEvents). cb gets each event's seq as its key holds it. */
moe_status store_events_range(struct store *st, const char *job_id, int64_t from_seq,
                              int (*cb)(int64_t seq, const Moed__V1__Event *e, void *arg),
                              void *arg);

#endif
