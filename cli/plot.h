/*
 * plot.h — `moectl plot`: a job's training run as one picture, SVG or PNG.
 *
 * Owns: the plot's data (struct plot_data: the job's title facts, every stored step's loss,
 * held-out loss, tokens/s and expert load, and the events worth a marker on the step axis)
 * and the two halves that meet in it:
 *   plot.c       the command: its options, gathering a plot_data from a coordinator (GetJob
 *                for the job, ListEvents and ListSteps page after page for every event and
 *                step) or
 *                from a `moectl steps JOB --json` dump, placing each event on the step axis,
 *                and writing the file whole or not at all;
 *   plot_draw.c  drawing a plot_data with cairo (Debian's libcairo2): the title, the loss
 *                and tokens/s curves, the expert-load heatmap, the event markers, the axes.
 * Never: plot_draw.c talks to a coordinator or reads files; plot.c draws.
 */
#ifndef MOECTL_PLOT_H
#define MOECTL_PLOT_H

#include "../common/status.h"

#include <stddef.h>
#include <stdint.h>

/* One stored step (slot (0, 0)'s metrics, which speak for the job). */
struct plot_step {
    long step;
    double loss;         // training loss, nats per byte
    double val_loss;     // held-out loss when this step evaluated, else NAN
    double tokens_per_s;
    int64_t unix_ms;     // when it was reported (0: unknown)
};

/* What an event marks, which sets its colour (plot_draw.c) and its legend entry. */
enum plot_mark { MARK_FAILURE, MARK_RECOVERING, MARK_RECOVERED, MARK_MOVE, MARK_OTHER, N_MARKS };

/* An event of the job that gets a marker. */
struct plot_event {
    int64_t unix_ms;
    char kind[24];      // the coordinator's event kind: "worker_dead", "recovered", ...
    enum plot_mark mark;
    int stage;          // a step on the way (recovering, moving): drawn dashed
    long step;          // where it falls: the last step reported before it
    double seconds;     // recovered, moved: since the signal that began it (< 0: unknown)
};

struct plot_data {
    char job_id[64], name[128], state[48], backend[16];
    char source[256];   // "" from a coordinator, else the file the steps came from
    int pods, slots;    // 0 when unknown
    int recoveries, moves;
    long total_steps;   // 0 when unknown
    struct plot_step *steps; // ascending by step
    size_t n_steps, cap_steps;
    int n_experts;      // columns of load (0: no step reported an expert load)
    float *load;        // (n_steps, n_experts) share of assignments per expert; NAN: none
    struct plot_event *events; // oldest first
    size_t n_events;
    int events_partial; // offline, a STATUS with only the latest events: older ones lack a mark
};

/* Appends a step (steps come in ascending order) with its per-expert load (n_load 0: none).
 * MOE_ENOMEM. */
moe_status plot_add_step(struct plot_data *d, const struct plot_step *s, const float *load,
                         size_t n_load);
void plot_data_free(struct plot_data *d);

/* The colour and dash of each mark, and its name in the legend. */
const char *plot_mark_name(enum plot_mark m);

enum plot_format { PLOT_SVG, PLOT_PNG };
/* The format `path`'s suffix names (".svg" or ".png", any case): 0, else -1. */
int plot_format_of(const char *path, enum plot_format *out);

#define PLOT_MIN_WIDTH 480
#define PLOT_MIN_HEIGHT 360
#define PLOT_MAX_SIDE 8000

/* Where plot_draw puts things, for --json and for tests that check the pixels. */
struct plot_layout {
    double s0, s1;      // the step axis runs from step s0 at x0 to step s1 at x1 (pixels)
    double x0, x1;
    double top, bottom; // the panels' span: markers run from top to bottom
    double *marker_x;   // out: each event's marker (n_events of them; the caller frees)
};

/* Draws d as a width x height picture in format f, handing the bytes to write(closure, ...)
 * (0 on success) as they come; *layout (optional) says where the axis and markers went.
 * MOE_EIO when a write fails or cairo cannot draw (the message says which). */
moe_status plot_draw(const struct plot_data *d, enum plot_format f, int width, int height,
                     int (*write)(void *closure, const unsigned char *data, unsigned n),
                     void *closure, struct plot_layout *layout);

/* moectl plot JOB -o FILE.svg|.png [--width W] [--height H] [--json]
 *        | moectl plot --from-steps FILE -o ...   (plot.c) */
int cmd_plot(int argc, char **argv);

#endif
