/* teacher.c — the teacher and the init_from model (see teacher.h). */
#include "teacher.h"

#include "../../common/safetensors.h"
#include "data_roots.h"
#include "model_io.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Opens `path` (spec field `field`) as a data path and reads it; errors start with the field. */
static moe_status read_model_file(const struct data_roots *roots, const char *field,
                                  const char *path, struct st_file *f) {
    const struct data_name name = {field, path};
    int fd, is_dir;
    moe_status s = data_path_open(roots, &name, &fd, &is_dir);
    if (s == MOE_OK && is_dir) {
        close(fd);
        s = moe_fail(MOE_EINVAL, "%s '%s' is a directory, not a model file", field, path);
    }
    if (s == MOE_OK) s = st_read_fd(f, fd, path);
    if (s != MOE_OK && strncmp(moe_errmsg(), field, strlen(field)) != 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        return moe_fail(s, "%s: %s", field, msg);
    }
    return s;
}

static moe_status check_fit(const struct model_config *tc, const struct model_config *st,
                            const char *path) {
    if (tc->vocab != st->vocab)
        return moe_fail(MOE_EINVAL, "distill.teacher '%s': the teacher's vocabulary is %d tokens, "
                        "the student's (model.vocab) %d: a teacher must share the student's "
                        "tokens", path, tc->vocab, st->vocab);
    if (tc->seq_len < st->seq_len)
        return moe_fail(MOE_EINVAL, "distill.teacher '%s': the teacher's seq_len %d is shorter "
                        "than the student's (model.seq_len) %d", path, tc->seq_len, st->seq_len);
    return MOE_OK;
}

moe_status teacher_open(struct teacher *tc, const struct job_spec *spec, int B_max,
                        const struct data_roots *roots) {
    memset(tc, 0, sizeof *tc);
    const char *path = spec->distill.teacher;
    if (!path[0]) return MOE_OK;
    struct st_file f;
    CHECK(read_model_file(roots, "distill.teacher", path, &f));
    moe_status s = model_load_st(&tc->model, &f, path, B_max);
    st_close(&f);
    if (s != MOE_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        return moe_fail(s, "distill.teacher: %s", msg);
    }
    tc->on = 1;
    model_forward_only(&tc->model);
    if ((s = check_fit(&tc->model.cfg, &spec->model, path)) != MOE_OK) teacher_close(tc);
    return s;
}

void teacher_close(struct teacher *tc) {
    if (tc->on) model_free(&tc->model);
    tc->on = 0;
}

void teacher_forward(struct teacher *tc, struct model *student, const struct distill_spec *d,
                     const int *tokens, int B, int T) {
    if (!tc->on) return;
    model_forward(&tc->model, tokens, NULL, B, T);
    student->distill = (struct model_distill){model_logits(&tc->model), d->alpha,
                                              d->temperature};
}

void teacher_detach(struct model *student) {
    memset(&student->distill, 0, sizeof student->distill);
}

moe_status model_init_from(struct model *m, const struct job_spec *spec,
                           const struct data_roots *roots) {
    const char *path = spec->run.init_from;
    if (!path[0]) return MOE_OK;
    struct st_file f;
    CHECK(read_model_file(roots, "run.init_from", path, &f));
    moe_status s = model_params_from(m, &f);
    st_close(&f);
    if (s != MOE_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", moe_errmsg());
        return moe_fail(s, "run.init_from: %s", msg);
    }
    return MOE_OK;
}

moe_status model_files_check(const struct data_roots *roots, const struct job_spec *spec) {
    const char *field[2] = {"distill.teacher", "run.init_from"};
    const char *path[2] = {spec->distill.teacher, spec->run.init_from};
    for (int i = 0; i < 2; i++) {
        if (!path[i][0]) continue;
        const struct data_name name = {field[i], path[i]};
        int fd, is_dir;
        CHECK(data_path_open(roots, &name, &fd, &is_dir));
        close(fd);
        if (is_dir)
            return moe_fail(MOE_EINVAL, "%s '%s' is a directory, not a model file", field[i],
                            path[i]);
    }
    return MOE_OK;
}
