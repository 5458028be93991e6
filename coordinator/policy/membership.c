/*
 * membership.c — who is in the cluster and what each worker should be doing.
 *
 * Owns: registration (a new worker gets "w-N" and its credential; a known one — re-registering
 * with its own credential because a restarted coordinator asked — keeps its id; a worker
 * process that restarted lost its credential and joins as a new worker), reattaching a worker that still runs
 * the slot it is bound to (after a coordinator restart: principle 5, a restart loses nothing),
 * what a heartbeat means (alive; back from the dead; idle again so schedulable; told to stop a
 * job it no longer plays), and liveness: a worker silent past the heartbeat timeout is dead,
 * as is one whose address another worker registered at.
 * A worker's slot that is lost on the way (it restarted, it went silent) goes to faults.c; a
 * recoverable mesh's worker between its fence and its new epoch is recovery.c's to judge.
 * Never: decides recover-or-fail (faults.c), or places a job (schedule.c, after each change
 * that may free a worker: a registration's handler runs it once the worker has its answer).
 */
#include "membership.h"

#include "../../common/clock.h"
#include "../../common/log.h"
#include "../state/events.h"
#include "export.h"
#include "faults.h"
#include "reachability.h"
#include "recovery.h"
#include "schedule.h"

#include <stdio.h>
#include <string.h>

/* The registration's description of the worker into its record. */
static void update_record(struct worker *w, const Moed__V1__RegisterRequest *req) {
    snprintf(w->address, sizeof w->address, "%s", req->address);
    w->pod = req->pod;
    snprintf(w->version, sizeof w->version, "%s", req->version);
    snprintf(w->host, sizeof w->host, "%s", req->host);
    w->pid = req->pid;
    w->cpus = req->cpus;
    snprintf(w->data_address, sizeof w->data_address, "%s", req->data_address);
    w->extra_data_address[0] = 0;
    if (req->n_extra_data_addresses && strchr(req->extra_data_addresses[0], ':'))
        snprintf(w->extra_data_address, sizeof w->extra_data_address, "%s",
                 req->extra_data_addresses[0]);
    w->mpi_rank = req->mpi_rank;
    w->mpi_size = req->mpi_size;
    snprintf(w->mpi_job, sizeof w->mpi_job, "%s", req->mpi_job);
    w->last_heartbeat_ms = moe_wall_ms();
    w->idle_heartbeats = req->idle_heartbeats;
    w->beats_idle = w->idle_heartbeats && !req->job_id[0] && !req->holding;
}

/* w still runs slot k of j (the same epoch, or, in a recoverable mesh, an older one whose
 * frozen state it holds): it keeps the slot. */
static void reattach(struct coordinator *co, struct worker *w, struct job *j, int k,
                     const Moed__V1__RegisterRequest *req, int same_epoch) {
    snprintf(w->job_id, sizeof w->job_id, "%s", j->id);
    w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
    w->slot = k % j->slots;
    w->epoch = j->epoch;
    if (same_epoch && req->step > j->bindings[k].step) j->bindings[k].step = (long)req->step;
    if (same_epoch && k == 0 && req->step > j->step) j->step = req->step;
    char held[96] = "";
    if (!same_epoch || req->holding)
        snprintf(held, sizeof held, ", %s epoch %llu", req->holding ? "holding its state of"
                 : "still in", (unsigned long long)req->epoch);
    /* not synced, like the worker's record (membership_register), and the job's record
     * deferred to the next flush: a lost one is told again, and after a restart every slot
     * reattaches at once (writing the record, every slot in it, per reattachment made
     * reattaching N slots cost O(N^2) bytes) */
    if (job_n_slots(j) == 1)
        job_event_deferred(co, j, "reattached", "%s reattached at step %ld%s", w->id,
                           (long)req->step, held);
    else
        job_event_deferred(co, j, "reattached", "%s reattached to slot (%d, %d) at step %ld%s",
                           w->id, k / j->slots, k % j->slots, (long)req->step, held);
    if (j->recoverable)
        recovery_worker_state(co, j, k, w, req->epoch, req->holding, "re-registered and");
}

/* Re-registration after our restart: a worker still running a slot we think it runs (the
 * same job, slot and epoch) is reattached; anything else it runs will be told to stop by its
 * next heartbeat, and the slot we had bound it to, if it no longer plays it, is lost. */
static void bind_registered(struct coordinator *co, struct worker *w,
                            const Moed__V1__RegisterRequest *req) {
    struct job *bound = w->job_id[0] ? jobs_find(co, w->job_id) : NULL;
    int bound_slot = bound ? job_slot_of(bound, w->id) : -1;
    struct job *j = req->job_id[0] ? jobs_find(co, req->job_id) : NULL;
    int k = j ? job_slot_of(j, w->id) : -1;
    int same_epoch = j && (!req->epoch || req->epoch == j->epoch);
    /* A recoverable mesh's worker may hold a frozen state of an older epoch, waiting for the
     * RunSlot of the one it is bound in: it keeps its slot (recovery_worker_state decides). */
    int behind = j && j->recoverable && req->epoch && req->epoch < j->epoch;
    if (j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING && k >= 0 && (same_epoch || behind) &&
        !recovery_dropped(j, w)) {
        reattach(co, w, j, k, req, same_epoch);
        return;
    }
    if (req->job_id[0]) {
        snprintf(w->job_id, sizeof w->job_id, "%s", req->job_id); // busy until it stops
        w->state = MOED__V1__WORKER_STATE__WORKER_BUSY;
        w->epoch = req->epoch;
    } else {
        w->job_id[0] = 0;
        w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
    }
    if (bound) fault_slot_abandoned(co, bound, bound_slot, w, j);
}

/* Another live worker at w's address is a process that is gone (its port was free to take):
 * DEAD now, so that neither a job nor a recovery waits a heartbeat timeout for it or sends
 * it calls that reach w. `o` had the address before w took it in the index: each registration
 * takes its address from the one before, so no two live workers share one, and none is
 * searched for. */
static void supersede(struct coordinator *co, struct worker *w, struct worker *o) {
    if (o && worker_alive(o) && strcmp(o->address, w->address) == 0)
        fault_worker_superseded(co, o, w);
}

moe_status membership_register(struct coordinator *co, const Moed__V1__RegisterRequest *req,
                               struct worker *known, const char *peer, struct worker **out) {
    struct worker *w = known;
    if (!w) {
        CHECK(workers_add_new(co, &w)); // the id counter too
        w->registered_ms = moe_wall_ms();
    }
    workers_unindex_address(co, w); // keyed by the address update_record may change
    update_record(w, req);
    struct worker *before = workers_index_address(co, w); // who had the address
    /* The channel first, and kept when the address did not change: a recovery fences the
     * worker on it (one its registration starts, or one resumed at our start), and replacing
     * the channel would cancel that call and lose the worker. */
    if (!w->channel || strcmp(rpc_channel_target(w->channel), w->address) != 0)
        CHECK(worker_connect(co, w));
    bind_registered(co, w, req);
    w->confirmed = 1;
    w->awaiting_idle = 0;
    /* A known worker's record is written, not synced: should the machine lose it, the worker
     * registers again and says it all again; after a coordinator restart thousands re-register
     * at once, and an fsync each (~5 ms here) made reattaching them take a minute. */
    CHECK(known ? worker_save_unsynced(co, w) : worker_save(co, w));
    supersede(co, w, before);
    reach_registered(co, w, peer);
    char mpi[320] = "";
    if (w->mpi_size)
        snprintf(mpi, sizeof mpi, ", MPI rank %d of %d in %s", w->mpi_rank, w->mpi_size,
                 w->mpi_job);
    LOG_INFO("%s %s: %s pod %d pid %d (%s, %d cpus), data plane %s%s", w->id,
             known ? "re-registered" : "registered", w->address, w->pod, w->pid, w->host, w->cpus,
             w->data_address[0] ? w->data_address : "-", mpi);
    *out = w;
    return MOE_OK;
}

/* A heartbeat of a worker that says it runs a slot of j: keep it (1) or tell it to stop (0). */
static int keeps_slot(struct coordinator *co, struct worker *w, struct job *j,
                      const Moed__V1__HeartbeatRequest *req) {
    int k = j ? job_slot_of(j, w->id) : -1;
    int keep = j && j->state == MOED__V1__JOB_STATE__JOB_RUNNING &&
               strcmp(w->job_id, j->id) == 0 && k >= 0;
    int same_epoch = j && (!req->epoch || req->epoch == j->epoch);
    /* a recoverable mesh's worker between its fence and its new epoch keeps its slot */
    if (keep && j->recoverable && (!same_epoch || req->holding))
        keep = recovery_worker_state(co, j, k, w, req->epoch, req->holding, "heartbeats and");
    else if (keep)
        keep = same_epoch && !(j->recoverable && recovery_dropped(j, w));
    if (keep && same_epoch) {
        j->bindings[k].idle_beats = 0;
        if (req->step > j->bindings[k].step) j->bindings[k].step = (long)req->step;
        if (k == 0 && req->step > j->step) j->step = req->step;
    }
    return keep;
}

/* An idle worker may be the spare a recovery picks: it is told the first running recoverable
 * job (its spec once), and prepares that job's slot arenas before any fault (worker/daemon/
 * spare.c); told none, it lets them go. */
static void spare_hint(struct coordinator *co, const struct worker *w,
                       const Moed__V1__HeartbeatRequest *req, Moed__V1__HeartbeatResponse *resp) {
    if (req->job_id[0] || req->holding || w->refused[0] ||
        w->state != MOED__V1__WORKER_STATE__WORKER_IDLE)
        return;
    for (int i = 0; i < co->n_jobs; i++) {
        struct job *j = co->jobs[i];
        if (j->state != MOED__V1__JOB_STATE__JOB_RUNNING || !j->recoverable ||
            job_n_slots(j) < 2 || !j->spec_json)
            continue;
        resp->prepare_job_id = j->id;
        if (strcmp(req->prepared_job_id, j->id) != 0) resp->prepare_spec_json = j->spec_json;
        return;
    }
}

void membership_heartbeat(struct coordinator *co, struct worker *w,
                          const Moed__V1__HeartbeatRequest *req, Moed__V1__HeartbeatResponse *resp) {
    if (w->state == MOED__V1__WORKER_STATE__WORKER_LEFT) {
        resp->reregister = 1;
        return;
    }
    w->last_heartbeat_ms = moe_wall_ms();
    w->beats_idle = w->idle_heartbeats && !req->job_id[0] && !req->holding;
    reach_heartbeat(co, w, w->last_heartbeat_ms);
    resp->refused = w->refused;
    if (!w->confirmed) {
        /* Known from the store, not yet seen by this process: have it register again, with
         * the job and step it is running, so the coordinator reattaches it knowingly. */
        resp->reregister = 1;
        return;
    }
    if (w->state == MOED__V1__WORKER_STATE__WORKER_DEAD) {
        /* Back from the dead (a pause, a partition). Its old job already failed, or a
         * recovery replaced it: told to stop below, it becomes a spare. */
        LOG_WARN("%s at %s is heartbeating again", w->id, w->address);
        w->state = req->job_id[0] ? MOED__V1__WORKER_STATE__WORKER_BUSY
                                  : MOED__V1__WORKER_STATE__WORKER_IDLE;
        snprintf(w->job_id, sizeof w->job_id, "%s", req->job_id);
        w->epoch = req->epoch;
        worker_save(co, w);
    }
    if (!req->job_id[0] && w->awaiting_idle) {
        w->awaiting_idle = 0; // idle now: schedulable again
        schedule_pass(co);
    }
    if (req->job_id[0]) {
        struct job *j = jobs_find(co, req->job_id);
        /* a job that ended early keeps its workers until they exported its state */
        if (!keeps_slot(co, w, j, req) && !export_holds(j, w)) resp->stop_job = 1;
    } else if (w->job_id[0]) {
        /* It runs nothing: a job we thought it was finishing is over for it, or it no longer
         * plays a slot of it (a recovery fenced it out, the job went back to the queue). A
         * worker still in the job's binding waits for its RunSlot, unless it took it. */
        struct job *mine = jobs_find(co, w->job_id);
        int k = mine ? job_slot_of(mine, w->id) : -1;
        if (!mine || job_is_final(mine) || k < 0 || recovery_dropped(mine, w)) {
            w->job_id[0] = 0;
            w->state = MOED__V1__WORKER_STATE__WORKER_IDLE;
            worker_save(co, w);
            schedule_pass(co);
        } else if (mine->bindings[k].running && ++mine->bindings[k].idle_beats >= 2) {
            /* It accepted the slot, yet runs nothing. One such heartbeat may have left before
             * the RunSlot came; the next one left after its answer to that one, so after the
             * RunSlot: the slot is gone from the worker. */
            fault_slot_forgotten(co, mine, k, w);
        }
    }
    spare_hint(co, w, req, resp);
    resp->idle_heartbeat_interval_ms = membership_idle_told(co, w);
}

/* The idle interval for n idle workers: the configured one, or longer, so that n of them
 * heartbeat at most idle_heartbeats_per_s times a second together (a lease that grows with
 * the idle part of the cluster: at 10,000 idle workers and 200 a second, every 50 s). An idle
 * worker is probed before it is given a slot (reachability.c), so its longer silence delays
 * no job; only its death is noticed later. 0: idle heartbeats are off. O(1). */
static long idle_interval(const struct coordinator *co, long n_idle) {
    long fixed = co->cfg.idle_heartbeat_interval_ms, budget = co->cfg.idle_heartbeats_per_s;
    if (fixed <= co->cfg.heartbeat_interval_ms) return 0;
    long ms = budget > 0 ? (n_idle * 1000 + budget - 1) / budget : 0;
    long cap = fixed > COORD_IDLE_HEARTBEAT_MAX_MS ? fixed : COORD_IDLE_HEARTBEAT_MAX_MS;
    return ms < fixed ? fixed : ms > cap ? cap : ms;
}

long membership_idle_told(struct coordinator *co, struct worker *w) {
    long ms = co->idle_interval_ms ? co->idle_interval_ms : idle_interval(co, 0);
    /* one the coordinator cannot reach yet is probed again at a heartbeat (reachability.c):
     * it keeps the configured interval until a probe answered */
    if (!w->reachable && ms) ms = idle_interval(co, 0);
    /* it may not have heard the last answer: either interval may be the one it keeps */
    w->idle_allowance_ms = w->idle_told_ms > ms ? w->idle_told_ms : ms;
    w->idle_told_ms = ms;
    return ms;
}

void membership_loaded(struct coordinator *co) {
    long n_idle = 0;
    for (int i = 0; i < co->n_workers; i++)
        n_idle += worker_alive(co->workers[i]) && co->workers[i]->beats_idle;
    long ms = idle_interval(co, n_idle);
    for (int i = 0; i < co->n_workers; i++) {
        /* not stored whether it heartbeats seldom when idle: as if it did, until it says */
        co->workers[i]->idle_heartbeats = 1;
        co->workers[i]->idle_allowance_ms = ms;
    }
}

/* The step report interval for n busy workers (a lease like the idle one, for those that
 * train: their reports stand for their heartbeats): once a second, or less often so that n
 * of them report at most step_reports_per_s times a second together, up to the heartbeat
 * interval, so that a hung worker is still dead after the timeout. O(1). */
static long report_interval(const struct coordinator *co, long n_busy) {
    long budget = co->cfg.step_reports_per_s, lo = COORD_REPORT_INTERVAL_MIN_MS;
    long hi = co->cfg.heartbeat_interval_ms > lo ? co->cfg.heartbeat_interval_ms : lo;
    long ms = budget > 0 ? (n_busy * 1000 + budget - 1) / budget : lo;
    return ms < lo ? lo : ms > hi ? hi : ms;
}

long membership_report_interval(const struct coordinator *co) {
    return co->report_interval_ms ? co->report_interval_ms : report_interval(co, 0);
}

/* How much longer than the timeout w may be silent: an idle worker's interval less the busy
 * one (the longest it may still be using). */
static long idle_slack(const struct coordinator *co, const struct worker *w) {
    long told = w->idle_allowance_ms ? w->idle_allowance_ms : co->cfg.idle_heartbeat_interval_ms;
    long slack = told - co->cfg.heartbeat_interval_ms;
    return w->beats_idle && slack > 0 ? slack : 0;
}

/* O(workers) per monitor tick: a compare each, and the idle ones counted for the next
 * tick's interval. A worker whose last heartbeat named no job may be that much slower (the
 * idle interval it was told); one that runs a slot heartbeats at the full rate from its next
 * tick on. */
void membership_check(struct coordinator *co, int64_t now) {
    int64_t gap = co->checked_ms ? now - co->checked_ms : 0;
    co->checked_ms = now;
    if (gap >= co->cfg.heartbeat_timeout_ms / 2) {
        /* libuv runs timers before the calls that queued meanwhile: without this, a stall
         * longer than the timeout would declare every worker dead before its heartbeat is read */
        LOG_WARN("the coordinator stood still for %.1f s: every worker's silence is counted "
                 "from now", (double)gap / 1e3);
        for (int i = 0; i < co->n_workers; i++)
            if (worker_alive(co->workers[i]) && co->workers[i]->last_heartbeat_ms < now)
                co->workers[i]->last_heartbeat_ms = now;
        return;
    }
    long n_idle = 0, n_busy = 0;
    for (int i = 0; i < co->n_workers; i++) {
        struct worker *w = co->workers[i];
        if (!worker_alive(w)) continue;
        n_idle += w->beats_idle;
        n_busy += !w->beats_idle && w->job_id[0];
        int64_t silent = now - w->last_heartbeat_ms;
        if (silent > co->cfg.heartbeat_timeout_ms + idle_slack(co, w))
            fault_worker_dead(co, w, silent);
    }
    co->idle_interval_ms = idle_interval(co, n_idle);
    co->report_interval_ms = report_interval(co, n_busy);
}
