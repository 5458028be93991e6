#include "store.h"
#include "../../common/clock.h"
#include "../../common/fileio.h"

#include <rocksdb/c.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Long enough for the longest key, "s/<20 digits>/<20 digits>". */
#define KEY_MAX 64
#define ID_DIGITS_MAX 18 // keeps N below 10^18, well inside int64_t

struct store {
    rocksdb_t *db;
    rocksdb_options_t *options;
    rocksdb_readoptions_t *read;
    rocksdb_writeoptions_t *write_sync;   // decisions: on disk before the commit returns
    rocksdb_writeoptions_t *write_nosync; // metrics: a lost tail after a machine crash is fine
    char *dir;
};

struct store_batch {
    rocksdb_writebatch_t *wb;
    moe_status err;       // the first failure while adding; the commit then writes nothing
    char errmsg[256];
};

/* ---------------------------------------------------------------------------------------------
 * Keys */

/* "job-17" with prefix "job-" -> 17; -1 for anything else. Leading zeros are refused so that
 * two spellings never map to one key. */
static int64_t id_number(const char *id, const char *prefix) {
    size_t plen = strlen(prefix);
    if (!id || strncmp(id, prefix, plen) != 0) return -1;
    const char *d = id + plen;
    size_t n = strlen(d);
    if (n == 0 || n > ID_DIGITS_MAX || (d[0] == '0' && n > 1)) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i] < '0' || d[i] > '9') return -1;
        v = v * 10 + (d[i] - '0');
    }
    return v;
}

static moe_status parse_id(const char *id, const char *prefix, int64_t *num) {
    *num = id_number(id, prefix);
    if (*num < 0)
        return moe_fail(MOE_EINVAL, "store: bad id \"%s\" (want %sN)", id ? id : "(null)", prefix);
    return MOE_OK;
}

static size_t key1(char *key, char tag, int64_t a) {
    return (size_t)snprintf(key, KEY_MAX, "%c/%020" PRId64, tag, a);
}

static size_t key2(char *key, char tag, int64_t a, int64_t b) {
    return (size_t)snprintf(key, KEY_MAX, "%c/%020" PRId64 "/%020" PRId64, tag, a, b);
}

/* "e/<job>/": everything of one job under one tag. */
static size_t key_prefix(char *key, char tag, int64_t a) {
    return (size_t)snprintf(key, KEY_MAX, "%c/%020" PRId64 "/", tag, a);
}

/* A key as text for messages; keys are ASCII, but a stranger's key might not be. */
static const char *key_text(char *buf, size_t cap, const char *key, size_t klen) {
    size_t o = 0;
    for (size_t i = 0; i < klen && o + 5 < cap; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c >= 0x20 && c < 0x7f) buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
    }
    buf[o] = '\0';
    return buf;
}

/* ---------------------------------------------------------------------------------------------
 * Values */

/* Unpacks a value into a message the caller frees with protobuf_c_message_free_unpacked. */
static moe_status decode(const ProtobufCMessageDescriptor *desc, const char *key, size_t klen,
                         const char *val, size_t vlen, ProtobufCMessage **out) {
    char kt[2 * KEY_MAX];
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, vlen, (const uint8_t *)val);
    if (!m)
        return moe_fail(MOE_EFORMAT, "store: value of key %s (%zu bytes) is not a valid %s",
                        key_text(kt, sizeof kt, key, klen), vlen, desc->short_name);
    /* Callers read j->job->job_id without checking: a job record always carries its JobInfo. */
    if (desc == &moed__store__job_record__descriptor && !((Moed__Store__JobRecord *)m)->job) {
        protobuf_c_message_free_unpacked(m, NULL);
        return moe_fail(MOE_EFORMAT, "store: value of key %s is a JobRecord without its job",
                        key_text(kt, sizeof kt, key, klen));
    }
    *out = m;
    return MOE_OK;
}

/* Takes RocksDB's error string (if any), frees it, and turns it into a MOE_EIO message. */
static moe_status rocks_fail(char **err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static moe_status rocks_fail(char **err, const char *fmt, ...) {
    char what[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    moe_status s = moe_fail(MOE_EIO, "%s: %s", what, *err ? *err : "unknown RocksDB error");
    rocksdb_free(*err);
    *err = NULL;
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Open and close */

moe_status store_open(struct store **out, const char *dir, double lock_wait_s) {
    *out = NULL;
    if (!dir) return moe_fail(MOE_EINVAL, "store: no directory");
    CHECK(moe_mkdir_p(dir, 0755));
    struct store *st = calloc(1, sizeof *st);
    if (!st || !(st->dir = strdup(dir))) {
        free(st);
        return moe_fail(MOE_ENOMEM, "store: out of memory opening %s", dir);
    }
    st->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(st->options, 1);
    /* The coordinator writes a few records per step: small memtables, few files, short logs. */
    rocksdb_options_set_write_buffer_size(st->options, 4 << 20);
    rocksdb_options_set_max_write_buffer_number(st->options, 2);
    rocksdb_options_set_keep_log_file_num(st->options, 4);
    rocksdb_options_set_max_log_file_size(st->options, 1 << 20);
    st->read = rocksdb_readoptions_create();
    st->write_sync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->write_sync, 1);
    st->write_nosync = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(st->write_nosync, 0);

    /* RocksDB holds its LOCK file with a POSIX lock, released only once the holder has fully
     * exited: a coordinator restarted right after a kill -9 can see its predecessor's lock for
     * a moment (its threads are still being torn down). */
    double t0 = moe_clock_s();
    char *err = NULL;
    for (;;) {
        st->db = rocksdb_open(st->options, dir, &err);
        if (!err || !strstr(err, "lock")) break;
        if (moe_clock_s() - t0 >= lock_wait_s) break;
        rocksdb_free(err);
        err = NULL;
        moe_sleep_s(0.05);
    }
    if (err || !st->db) {
        moe_status s = rocks_fail(&err, "store: cannot open %s", dir);
        store_close(st);
        return s;
    }
    *out = st;
    return MOE_OK;
}

void store_close(struct store *st) {
    if (!st) return;
    if (st->db) rocksdb_close(st->db);
    if (st->write_nosync) rocksdb_writeoptions_destroy(st->write_nosync);
    if (st->write_sync) rocksdb_writeoptions_destroy(st->write_sync);
    if (st->read) rocksdb_readoptions_destroy(st->read);
    if (st->options) rocksdb_options_destroy(st->options);
    free(st->dir);
    free(st);
}

/* ---------------------------------------------------------------------------------------------
 * Point reads */

/* The value of `key` decoded as `desc`; *out = NULL when the key is absent. */
static moe_status get_msg(struct store *st, const char *key, size_t klen,
                          const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out) {
    char *err = NULL, kt[2 * KEY_MAX];
    size_t vlen = 0;
    *out = NULL;
    char *val = rocksdb_get(st->db, st->read, key, klen, &vlen, &err);
    if (err)
        return rocks_fail(&err, "store: cannot read key %s in %s",
                          key_text(kt, sizeof kt, key, klen), st->dir);
    if (!val) return MOE_OK;
    moe_status s = decode(desc, key, klen, val, vlen, out);
    rocksdb_free(val);
    return s;
}

moe_status store_meta_get(struct store *st, Moed__Store__MetaRecord **out) {
    ProtobufCMessage *m;
    *out = NULL;
    CHECK(get_msg(st, "m", 1, &moed__store__meta_record__descriptor, &m));
    if (!m) {
        /* Built by unpacking the defaults, so that the caller's free_unpacked is always right. */
        Moed__Store__MetaRecord fresh = MOED__STORE__META_RECORD__INIT;
        fresh.next_job = 1;
        fresh.next_worker = 1;
        uint8_t buf[64];
        size_t n = protobuf_c_message_pack(&fresh.base, buf);
        m = protobuf_c_message_unpack(&moed__store__meta_record__descriptor, NULL, n, buf);
        if (!m) return moe_fail(MOE_ENOMEM, "store: out of memory for the meta record");
    }
    *out = (Moed__Store__MetaRecord *)m;
    return MOE_OK;
}

moe_status store_job_get(struct store *st, const char *job_id, Moed__Store__JobRecord **out) {
    int64_t num;
    char key[KEY_MAX];
    ProtobufCMessage *m;
    *out = NULL;
    CHECK(parse_id(job_id, "job-", &num));
    CHECK(get_msg(st, key, key1(key, 'j', num), &moed__store__job_record__descriptor, &m));
    if (!m) return moe_fail(MOE_ENOTFOUND, "store: no job %s", job_id);
    *out = (Moed__Store__JobRecord *)m;
    return MOE_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Write batches */

static void batch_fail(struct store_batch *b, moe_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void batch_fail(struct store_batch *b, moe_status s, const char *fmt, ...) {
    if (b->err != MOE_OK) return; // the first failure is the one worth reporting
    b->err = s;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->errmsg, sizeof b->errmsg, fmt, ap);
    va_end(ap);
}

/* Adding after a failure is pointless: the batch will not be written. */
static int batch_usable(const struct store_batch *b) { return b && b->err == MOE_OK; }

/* The id's number, or -1 after recording the failure in the batch. */
static int64_t batch_id(struct store_batch *b, const char *id, const char *prefix) {
    int64_t num = id_number(id, prefix);
    if (num < 0)
        batch_fail(b, MOE_EINVAL, "store: bad id \"%s\" (want %sN)", id ? id : "(null)", prefix);
    return num;
}

static void batch_put(struct store_batch *b, const char *key, size_t klen,
                      const ProtobufCMessage *m) {
    uint8_t small[512];
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = n <= sizeof small ? small : malloc(n);
    if (!buf) {
        batch_fail(b, MOE_ENOMEM, "store: out of memory packing a %zu-byte %s",
                   n, m->descriptor->short_name);
        return;
    }
    protobuf_c_message_pack(m, buf);
    rocksdb_writebatch_put(b->wb, key, klen, (const char *)buf, n);
    if (buf != small) free(buf);
}

struct store_batch *store_batch_new(void) {
    struct store_batch *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->wb = rocksdb_writebatch_create();
    if (!b->wb) {
        free(b);
        return NULL;
    }
    return b;
}

void store_batch_free(struct store_batch *b) {
    if (!b) return;
    rocksdb_writebatch_destroy(b->wb);
    free(b);
}

void store_batch_meta(struct store_batch *b, const Moed__Store__MetaRecord *m) {
    if (!batch_usable(b)) return;
    if (!m) {
        batch_fail(b, MOE_EINVAL, "store: no meta record to write");
        return;
    }
    batch_put(b, "m", 1, &m->base);
}

void store_batch_job(struct store_batch *b, const Moed__Store__JobRecord *j) {
    if (!batch_usable(b)) return;
    if (!j || !j->job) {
        batch_fail(b, MOE_EINVAL, "store: job record without its job");
        return;
    }
    int64_t num = batch_id(b, j->job->job_id, "job-");
    if (num < 0) return;
    char key[KEY_MAX];
    batch_put(b, key, key1(key, 'j', num), &j->base);
}

void store_batch_event(struct store_batch *b, const char *job_id, int64_t seq,
                       const Moed__V1__Event *e) {
    if (!batch_usable(b)) return;
    int64_t num = batch_id(b, job_id, "job-");
    if (num < 0) return;
    if (!e) {
        batch_fail(b, MOE_EINVAL, "store: no event to write for %s", job_id);
        return;
    }
    if (seq < 0) {
        batch_fail(b, MOE_EINVAL, "store: event seq %" PRId64 " of %s is negative", seq,
                   job_id);
        return;
    }
    char key[KEY_MAX];
    batch_put(b, key, key2(key, 'e', num, seq), &e->base);
}

void store_batch_step(struct store_batch *b, const char *job_id, const Moed__V1__StepMetrics *m) {
    if (!batch_usable(b)) return;
    int64_t num = batch_id(b, job_id, "job-");
    if (num < 0) return;
    if (!m) {
        batch_fail(b, MOE_EINVAL, "store: no step metrics to write for %s", job_id);
        return;
    }
    if (m->step < 0) {
        batch_fail(b, MOE_EINVAL, "store: step %" PRId64 " of %s is negative", m->step,
                   job_id);
        return;
    }
    char key[KEY_MAX];
    batch_put(b, key, key2(key, 's', num, m->step), &m->base);
}

void store_batch_worker(struct store_batch *b, const Moed__V1__WorkerInfo *w) {
    if (!batch_usable(b)) return;
    if (!w) {
        batch_fail(b, MOE_EINVAL, "store: no worker record to write");
        return;
    }
    int64_t num = batch_id(b, w->worker_id, "w-");
    if (num < 0) return;
    char key[KEY_MAX];
    batch_put(b, key, key1(key, 'w', num), &w->base);
}

/* [prefix, prefix with its last '/' made '0'): everything under "s/<job>/" or "e/<job>/"
 * ('0' is the byte after '/'). */
static void batch_delete_under(struct store_batch *b, char tag, int64_t num) {
    char from[KEY_MAX], to[KEY_MAX];
    size_t n = key_prefix(from, tag, num);
    memcpy(to, from, n);
    to[n - 1] = '0';
    rocksdb_writebatch_delete_range(b->wb, from, n, to, n);
}

void store_batch_delete_job(struct store_batch *b, const char *job_id) {
    if (!batch_usable(b)) return;
    int64_t num = batch_id(b, job_id, "job-");
    if (num < 0) return;
    char key[KEY_MAX];
    rocksdb_writebatch_delete(b->wb, key, key1(key, 'j', num));
    batch_delete_under(b, 's', num);
    batch_delete_under(b, 'e', num);
}

/* [<tag>/<job>/0, <tag>/<job>/below): a job's events or steps numbered below `below`. */
static void batch_trim(struct store_batch *b, char tag, const char *job_id, int64_t below) {
    if (!batch_usable(b) || below <= 0) return;
    int64_t num = batch_id(b, job_id, "job-");
    if (num < 0) return;
    char from[KEY_MAX], to[KEY_MAX];
    size_t n = key2(from, tag, num, 0), m = key2(to, tag, num, below);
    rocksdb_writebatch_delete_range(b->wb, from, n, to, m);
}

void store_batch_trim_events(struct store_batch *b, const char *job_id, int64_t below) {
    batch_trim(b, 'e', job_id, below);
}

void store_batch_trim_steps(struct store_batch *b, const char *job_id, int64_t below) {
    batch_trim(b, 's', job_id, below);
}

void store_batch_worker_record(struct store_batch *b, const Moed__Store__WorkerRecord *r) {
    if (!batch_usable(b)) return;
    if (!r) {
        batch_fail(b, MOE_EINVAL, "store: no worker identity to write");
        return;
    }
    int64_t num = batch_id(b, r->worker_id, "w-");
    if (num < 0) return;
    char key[KEY_MAX];
    batch_put(b, key, key1(key, 'i', num), &r->base);
}

moe_status store_batch_commit(struct store *st, struct store_batch *b, int sync) {
    if (!b) return moe_fail(MOE_ENOMEM, "store: out of memory for a write batch");
    moe_status s = MOE_OK;
    if (b->err != MOE_OK) {
        s = moe_fail(b->err, "%s", b->errmsg);
    } else {
        char *err = NULL;
        rocksdb_write(st->db, sync ? st->write_sync : st->write_nosync, b->wb, &err);
        if (err) s = rocks_fail(&err, "store: cannot write to %s", st->dir);
    }
    store_batch_free(b);
    return s;
}

/* ---------------------------------------------------------------------------------------------
 * Scans */

/* Decoded records go through `visit`, which calls the caller's typed callback. */
typedef int (*visit_fn)(const ProtobufCMessage *m, void *ctx);

static int has_prefix(rocksdb_iterator_t *it, const char *prefix, size_t plen) {
    size_t klen;
    const char *k = rocksdb_iter_key(it, &klen);
    return klen >= plen && memcmp(k, prefix, plen) == 0;
}

static moe_status iter_status(struct store *st, rocksdb_iterator_t *it) {
    char *err = NULL;
    rocksdb_iter_get_error(it, &err);
    if (err) return rocks_fail(&err, "store: cannot scan %s", st->dir);
    return MOE_OK;
}

/* From where `it` stands, every record under `prefix`; checks the iterator's error at the end
 * (an I/O error ends the scan by making the iterator invalid). */
static moe_status scan_forward(struct store *st, rocksdb_iterator_t *it, const char *prefix,
                               size_t plen, const ProtobufCMessageDescriptor *desc,
                               visit_fn visit, void *ctx) {
    for (; rocksdb_iter_valid(it) && has_prefix(it, prefix, plen); rocksdb_iter_next(it)) {
        size_t klen, vlen;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *v = rocksdb_iter_value(it, &vlen);
        ProtobufCMessage *m;
        CHECK(decode(desc, k, klen, v, vlen, &m));
        int stop = visit(m, ctx);
        protobuf_c_message_free_unpacked(m, NULL);
        if (stop) break;
    }
    return iter_status(st, it);
}

/* Every record under `prefix` whose key is >= `from`. */
static moe_status scan(struct store *st, const char *prefix, size_t plen, const char *from,
                       size_t flen, const ProtobufCMessageDescriptor *desc, visit_fn visit,
                       void *ctx) {
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->read);
    rocksdb_iter_seek(it, from, flen);
    moe_status s = scan_forward(st, it, prefix, plen, desc, visit, ctx);
    rocksdb_iter_destroy(it);
    return s;
}

struct job_visit { int (*cb)(const Moed__Store__JobRecord *, void *); void *arg; };
struct worker_visit { int (*cb)(const Moed__V1__WorkerInfo *, void *); void *arg; };
struct record_visit { int (*cb)(const Moed__Store__WorkerRecord *, void *); void *arg; };
struct step_visit { int (*cb)(const Moed__V1__StepMetrics *, void *); void *arg; };
struct event_visit { int (*cb)(const Moed__V1__Event *, void *); void *arg; };

static int visit_job(const ProtobufCMessage *m, void *ctx) {
    struct job_visit *v = ctx;
    return v->cb((const Moed__Store__JobRecord *)m, v->arg);
}
static int visit_worker(const ProtobufCMessage *m, void *ctx) {
    struct worker_visit *v = ctx;
    return v->cb((const Moed__V1__WorkerInfo *)m, v->arg);
}
static int visit_record(const ProtobufCMessage *m, void *ctx) {
    struct record_visit *v = ctx;
    return v->cb((const Moed__Store__WorkerRecord *)m, v->arg);
}
static int visit_step(const ProtobufCMessage *m, void *ctx) {
    struct step_visit *v = ctx;
    return v->cb((const Moed__V1__StepMetrics *)m, v->arg);
}
static int visit_event(const ProtobufCMessage *m, void *ctx) {
    struct event_visit *v = ctx;
    return v->cb((const Moed__V1__Event *)m, v->arg);
}

moe_status store_jobs_scan(struct store *st, int (*cb)(const Moed__Store__JobRecord *j, void *arg),
                           void *arg) {
    struct job_visit v = {cb, arg};
    return scan(st, "j/", 2, "j/", 2, &moed__store__job_record__descriptor, visit_job, &v);
}

moe_status store_workers_scan(struct store *st,
                              int (*cb)(const Moed__V1__WorkerInfo *w, void *arg), void *arg) {
    struct worker_visit v = {cb, arg};
    return scan(st, "w/", 2, "w/", 2, &moed__v1__worker_info__descriptor, visit_worker, &v);
}

moe_status store_worker_records_scan(struct store *st,
                                     int (*cb)(const Moed__Store__WorkerRecord *r, void *arg),
                                     void *arg) {
    struct record_visit v = {cb, arg};
    return scan(st, "i/", 2, "i/", 2, &moed__store__worker_record__descriptor, visit_record, &v);
}

moe_status store_steps_scan(struct store *st, const char *job_id, int64_t from_step,
                            int (*cb)(const Moed__V1__StepMetrics *m, void *arg), void *arg) {
    int64_t num;
    char prefix[KEY_MAX], from[KEY_MAX];
    CHECK(parse_id(job_id, "job-", &num));
    size_t plen = key_prefix(prefix, 's', num);
    size_t flen = key2(from, 's', num, from_step > 0 ? from_step : 0);
    struct step_visit v = {cb, arg};
    return scan(st, prefix, plen, from, flen, &moed__v1__step_metrics__descriptor, visit_step, &v);
}

moe_status store_events_tail(struct store *st, const char *job_id, int max,
                             int (*cb)(const Moed__V1__Event *e, void *arg), void *arg) {
    int64_t num;
    char prefix[KEY_MAX];
    CHECK(parse_id(job_id, "job-", &num));
    size_t plen = key_prefix(prefix, 'e', num);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->read);
    moe_status s = MOE_OK;
    if (max > 0) {
        /* Walk back from the job's last event to the max-th last, then read forward from there.
         * "e/<job>0" sorts just after every "e/<job>/..." key ('0' follows '/'). */
        char end[KEY_MAX];
        memcpy(end, prefix, plen);
        end[plen - 1] = '0';
        rocksdb_iter_seek_for_prev(it, end, plen);
        for (int n = 1; rocksdb_iter_valid(it) && has_prefix(it, prefix, plen) && n < max; n++)
            rocksdb_iter_prev(it);
        CHECK_GOTO(iter_status(st, it), s, exit);
        if (!rocksdb_iter_valid(it) || !has_prefix(it, prefix, plen))
            rocksdb_iter_seek(it, prefix, plen); // fewer than max: all of them
    } else {
        rocksdb_iter_seek(it, prefix, plen);
    }
    struct event_visit v = {cb, arg};
    s = scan_forward(st, it, prefix, plen, &moed__v1__event__descriptor, visit_event, &v);
exit:
    rocksdb_iter_destroy(it);
    return s;
}

/* The seq of an event's key "e/<job>/<seq>", which `it` stands on; -1 when it does not end in
 * exactly 20 digits after the prefix. */
static int64_t event_seq(rocksdb_iterator_t *it, size_t plen) {
    size_t klen;
    const char *k = rocksdb_iter_key(it, &klen);
    if (klen != plen + 20) return -1;
    int64_t v = 0;
    for (size_t i = plen; i < klen; i++) {
        if (k[i] < '0' || k[i] > '9' || v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (k[i] - '0');
    }
    return v;
}

struct event_range_visit {
    int (*cb)(int64_t, const Moed__V1__Event *, void *);
    void *arg;
    rocksdb_iterator_t *it; // on the key of the event being visited
    size_t plen;
    moe_status err;         // a key without a seq: MOE_EFORMAT, and the scan stops
};

static int visit_event_seq(const ProtobufCMessage *m, void *ctx) {
    struct event_range_visit *v = ctx;
    int64_t seq = event_seq(v->it, v->plen);
    if (seq < 0) {
        size_t klen;
        const char *k = rocksdb_iter_key(v->it, &klen);
        char kt[2 * KEY_MAX];
        v->err = moe_fail(MOE_EFORMAT, "store: key %s is not an event's (e/<job>/<seq>)",
                          key_text(kt, sizeof kt, k, klen));
        return 1;
    }
    return v->cb(seq, (const Moed__V1__Event *)m, v->arg);
}

moe_status store_events_range(struct store *st, const char *job_id, int64_t from_seq,
                              int (*cb)(int64_t seq, const Moed__V1__Event *e, void *arg),
                              void *arg) {
    int64_t num;
    char prefix[KEY_MAX], from[KEY_MAX];
    CHECK(parse_id(job_id, "job-", &num));
    size_t plen = key_prefix(prefix, 'e', num);
    size_t flen = key2(from, 'e', num, from_seq > 0 ? from_seq : 0);
    rocksdb_iterator_t *it = rocksdb_create_iterator(st->db, st->read);
    rocksdb_iter_seek(it, from, flen);
    struct event_range_visit v = {cb, arg, it, plen, MOE_OK};
    moe_status s = scan_forward(st, it, prefix, plen, &moed__v1__event__descriptor,
                                visit_event_seq, &v);
    rocksdb_iter_destroy(it);
    return s != MOE_OK ? s : v.err;
}
