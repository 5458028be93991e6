/*
 * status.h — the project's one result type and its check macros.
 *
 * Owns: the moe_status codes, the per-thread "what went wrong" message, and CHECK macros that
 * carry __FILE__/__LINE__. Every fallible function in moed returns a moe_status and, on failure,
 * leaves a one-line message naming the field, file or value at fault (moe_errmsg()). Callers
 * print that line; they never have to guess.
 * Never: prints, exits or aborts. Deciding what a failure means is the caller's job.
 */
#ifndef MOE_STATUS_H
#define MOE_STATUS_H

typedef enum moe_status {
    MOE_OK = 0,
    MOE_EINVAL,    /* bad input: a spec field, an argument, a value out of range */
    MOE_ENOMEM,    /* allocation failed */
    MOE_EIO,       /* a file could not be opened, read or written */
    MOE_EFORMAT,   /* a file or message is malformed (safetensors, JSON, YAML) */
    MOE_ENOTFOUND, /* a named thing does not exist */
    MOE_EINTERNAL, /* a broken invariant inside moed: a bug */
    MOE_EAUTH,     /* a peer refused our credentials (or we refused theirs) */
    MOE_EUNAVAILABLE, /* a peer cannot be reached now, or the call timed out: retry later */
    MOE_ECANCELED, /* the caller asked the work to stop before it was done */
} moe_status;

const char *moe_status_str(moe_status s);

/* Sets this thread's error message (printf-style) and returns `s`, so that a failure reads
 * `return moe_fail(MOE_EINVAL, "spec: router.top_k = %d exceeds model.experts = %d", k, e);` */
moe_status moe_fail(moe_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The last message set by moe_fail on this thread ("" if none). */
const char *moe_errmsg(void);

/* Propagate a failure unchanged. The message already names what is wrong; the location goes to
 * the debug log only, so user-facing errors stay one line. */
void moe_trace(const char *file, int line, moe_status s);

#define CHECK(call)                                                                               \
    do {                                                                                          \
        moe_status check_s_ = (call);                                                             \
        if (check_s_ != MOE_OK) {                                                                 \
            moe_trace(__FILE__, __LINE__, check_s_);                                              \
            return check_s_;                                                                      \
        }                                                                                         \
    } while (0)

#define CHECK_GOTO(call, res, label)                                                              \
    do {                                                                                          \
        (res) = (call);                                                                           \
        if ((res) != MOE_OK) {                                                                    \
            moe_trace(__FILE__, __LINE__, (res));                                                 \
            goto label;                                                                           \
        }                                                                                         \
    } while (0)

#endif
