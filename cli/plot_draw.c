/*
 * plot_draw.c — a plot_data drawn with cairo (see plot.h).
 *
 * The picture, top to bottom: a title (job, name, state) and a line of facts (mesh, steps,
 * final losses, recoveries); a band for the markers' labels; three panels over one step axis:
 * the training and held-out loss, tokens/s, and the expert load as a heatmap (one row per
 * expert, one column per step or group of steps, colour = share of assignments, with its
 * colour bar). Each marked event is a vertical line through the three panels, solid for an
 * outcome (failure, recovered, moved), dashed for a stage (recovering, moving), in its mark's
 * colour. Text uses cairo's toy font API with DejaVu Sans (fontconfig falls back to any sans).
 */
#include "plot.h"

#include <cairo-svg.h>
#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FONT "DejaVu Sans"
#define LABEL_ROWS 3       // rows of marker labels in the band above the panels
#define ROW_H 14.0
#define MARKER_GAP 3.0     // markers at one step are drawn this many pixels apart
#define MAX_POINTS_PER_PX 4 // curves keep at most this many points per pixel of width

struct rgb {
    double r, g, b;
};
static const struct rgb WHITE = {1, 1, 1}, INK = {0.13, 0.13, 0.13}, AXIS = {0.4, 0.4, 0.4},
                        GRID = {0.9, 0.9, 0.9}, MUTED = {0.45, 0.45, 0.45};
static const struct rgb LOSS = {0.122, 0.467, 0.706};  // #1f77b4
static const struct rgb VAL = {1.0, 0.498, 0.055};     // #ff7f0e
static const struct rgb SPEED = {0.090, 0.745, 0.812}; // #17becf

static const struct {
    struct rgb colour;
    const char *name;
} marks[N_MARKS] = {
    [MARK_FAILURE] = {{0.839, 0.153, 0.157}, "failure"},      // #d62728
    [MARK_RECOVERING] = {{0.902, 0.624, 0.0}, "recovering"},  // #e69f00
    [MARK_RECOVERED] = {{0.173, 0.627, 0.173}, "recovered"},  // #2ca02c
    [MARK_MOVE] = {{0.580, 0.404, 0.741}, "move"},            // #9467bd
    [MARK_OTHER] = {{0.5, 0.5, 0.5}, "other"},
};

const char *plot_mark_name(enum plot_mark m) { return m < N_MARKS ? marks[m].name : "?"; }

struct panel {
    double x, y, w, h;
};
struct range {
    double lo, hi;
};

/* The picture being drawn. */
struct frame {
    cairo_t *cr;
    const struct plot_data *d;
    double width, height;
    double band_y; // top of the marker-label band
    struct panel loss, speed, load;
    double s_lo, s_hi; // the step axis
};

/* ---- small drawing helpers ---- */

static void colour(cairo_t *cr, struct rgb c) { cairo_set_source_rgb(cr, c.r, c.g, c.b); }

/* Text with its baseline at y; align 0 left, 0.5 centred, 1 right of x. Returns its width. */
static double text(cairo_t *cr, double x, double y, const char *s, double size, int bold,
                   double align, struct rgb c) {
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL,
                           bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    colour(cr, c);
    cairo_move_to(cr, x - align * e.x_advance, y);
    cairo_show_text(cr, s);
    return e.x_advance;
}

static double text_width(cairo_t *cr, const char *s, double size) {
    cairo_select_font_face(cr, FONT, CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, s, &e);
    return e.x_advance;
}

static void line(cairo_t *cr, double x0, double y0, double x1, double y1, double w,
                 struct rgb c) {
    colour(cr, c);
    cairo_set_line_width(cr, w);
    cairo_move_to(cr, x0, y0);
    cairo_line_to(cr, x1, y1);
    cairo_stroke(cr);
}

/* A step between ticks of 1, 2 or 5 times a power of ten, about `target` of them in range. */
static double nice_step(double range, int target) {
    double raw = range / target, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

/* A tick's label with as many decimals as its step needs; thousands as "12k". */
static void tick_text(char *out, size_t cap, double v, double step) {
    if (step >= 1000) {
        snprintf(out, cap, v == 0 ? "0" : "%gk", v / 1000);
        return;
    }
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(out, cap, "%.*f", dec, fabs(v) < step * 1e-6 ? 0.0 : v);
}

static double x_of(const struct frame *f, const struct panel *p, double step) {
    return p->x + (step - f->s_lo) / (f->s_hi - f->s_lo) * p->w;
}

static double y_of(const struct panel *p, struct range r, double v) {
    return p->y + p->h - (v - r.lo) / (r.hi - r.lo) * p->h;
}

/* ---- layout ---- */

static void layout(struct frame *f) {
    const double left = 78, right = 122, top = 104, bottom = 44, gap = 30;
    double h = f->height - top - bottom - 2 * gap, w = f->width - left - right;
    f->band_y = top - LABEL_ROWS * ROW_H - 6;
    f->loss = (struct panel){left, top, w, 0.45 * h};
    f->speed = (struct panel){left, f->loss.y + f->loss.h + gap, w, 0.22 * h};
    f->load = (struct panel){left, f->speed.y + f->speed.h + gap, w, 0.33 * h};
    const struct plot_data *d = f->d;
    f->s_lo = 0;
    f->s_hi = d->n_steps ? (double)d->steps[d->n_steps - 1].step : 1;
    if (d->total_steps > f->s_hi) f->s_hi = (double)d->total_steps;
}

/* ---- axes ---- */

/* The grid, frame and ticks of a panel: y ticks on the left with yr's values (none when yr is
 * NULL), x ticks (steps) below; the axis name rotated along the left edge. */
static void draw_axes(const struct frame *f, const struct panel *p, const struct range *values,
                      const char *name) {
    cairo_t *cr = f->cr;
    char t[32];
    struct range yr = values ? *values : (struct range){0, 1};
    double ys = nice_step(yr.hi - yr.lo, (int)fmax(2, p->h / 40));
    for (double v = ceil(yr.lo / ys) * ys; values && v <= yr.hi + ys * 1e-9; v += ys) {
        double y = round(y_of(p, yr, v)) + 0.5;
        line(cr, p->x, y, p->x + p->w, y, 1, GRID);
        tick_text(t, sizeof t, v, ys);
        text(cr, p->x - 6, y + 4, t, 11, 0, 1, INK);
    }
    double xs = nice_step(f->s_hi - f->s_lo, (int)fmax(2, p->w / 90));
    for (double s = ceil(f->s_lo / xs) * xs; s <= f->s_hi + xs * 1e-9; s += xs) {
        double x = round(x_of(f, p, s)) + 0.5;
        line(cr, x, p->y, x, p->y + p->h, 1, GRID);
        line(cr, x, p->y + p->h, x, p->y + p->h + 4, 1, AXIS);
        tick_text(t, sizeof t, s, xs);
        text(cr, x, p->y + p->h + 16, t, 11, 0, 0.5, INK);
    }
    colour(cr, AXIS);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, round(p->x) + 0.5, round(p->y) + 0.5, round(p->w), round(p->h));
    cairo_stroke(cr);
    cairo_save(cr);
    cairo_translate(cr, 18, p->y + p->h / 2);
    cairo_rotate(cr, -M_PI / 2);
    text(cr, 0, 0, name, 12, 0, 0.5, INK);
    cairo_restore(cr);
}

/* The range of one value of the steps (get returns NAN for none), padded; `zero`: from 0. */
static struct range data_range(const struct plot_data *d, double (*get)(const struct plot_step *),
                               double (*get2)(const struct plot_step *), int zero) {
    struct range r = {INFINITY, -INFINITY};
    for (size_t i = 0; i < d->n_steps; i++) {
        double v[2] = {get(&d->steps[i]), get2 ? get2(&d->steps[i]) : NAN};
        for (int k = 0; k < 2; k++)
            if (isfinite(v[k])) {
                r.lo = fmin(r.lo, v[k]);
                r.hi = fmax(r.hi, v[k]);
            }
    }
    if (!isfinite(r.lo)) return (struct range){0, 1};
    if (zero) r.lo = fmin(0, r.lo);
    double pad = r.hi > r.lo ? 0.05 * (r.hi - r.lo) : fmax(fabs(r.hi) * 0.1, 0.5);
    if (!zero || r.lo < 0) r.lo -= pad;
    r.hi += pad;
    return r;
}

static double get_loss(const struct plot_step *s) { return s->loss; }
static double get_val(const struct plot_step *s) { return s->val_loss; }
static double get_speed(const struct plot_step *s) { return s->tokens_per_s; }

/* ---- curves ---- */

/* One value of every step (NAN: skipped) as a line clipped to the panel; `dots`: a dot at
 * each point too. Returns how many points it has. */
static size_t curve(const struct frame *f, const struct panel *p, struct range yr,
                    double (*get)(const struct plot_step *), struct rgb c, double width,
                    int dots) {
    cairo_t *cr = f->cr;
    const struct plot_data *d = f->d;
    size_t stride = d->n_steps / (size_t)(MAX_POINTS_PER_PX * p->w) + 1, n = 0;
    cairo_save(cr);
    cairo_rectangle(cr, p->x, p->y, p->w, p->h);
    cairo_clip(cr);
    cairo_new_path(cr);
    for (size_t i = 0; i < d->n_steps; i++) {
        double v = get(&d->steps[i]);
        if (!isfinite(v) || (i % stride && i + 1 != d->n_steps && !dots)) continue;
        double x = x_of(f, p, (double)d->steps[i].step), y = y_of(p, yr, v);
        if (n++) cairo_line_to(cr, x, y);
        else cairo_move_to(cr, x, y);
    }
    colour(cr, c);
    cairo_set_line_width(cr, width);
    cairo_set_line_join(cr, CAIRO_LINE_JOIN_ROUND);
    cairo_stroke(cr);
    for (size_t i = 0; dots && n <= 200 && i < d->n_steps; i++) {
        double v = get(&d->steps[i]);
        if (!isfinite(v)) continue;
        cairo_arc(cr, x_of(f, p, (double)d->steps[i].step), y_of(p, yr, v), 2.5, 0, 2 * M_PI);
        cairo_fill(cr);
    }
    cairo_restore(cr);
    return n;
}

static void no_data(const struct frame *f, const struct panel *p, const char *what) {
    text(f->cr, p->x + p->w / 2, p->y + p->h / 2, what, 12, 0, 0.5, MUTED);
}

static void draw_loss(const struct frame *f) {
    struct range r = data_range(f->d, get_loss, get_val, 0);
    draw_axes(f, &f->loss, &r, "loss (nats per byte)");
    if (!curve(f, &f->loss, r, get_loss, LOSS, 1.6, 0)) no_data(f, &f->loss, "no steps stored yet");
    curve(f, &f->loss, r, get_val, VAL, 1.6, 1);
}

static void draw_speed(const struct frame *f) {
    struct range r = data_range(f->d, get_speed, NULL, 1);
    draw_axes(f, &f->speed, &r, "tokens/s");
    if (!curve(f, &f->speed, r, get_speed, SPEED, 1.2, 0)) no_data(f, &f->speed, "no steps");
}

/* ---- the expert-load heatmap ---- */

/* Viridis (matplotlib's default colour map) at t in [0, 1], from nine of its colours. */
static struct rgb viridis(double t) {
    static const unsigned char v[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},
                                          {44, 113, 142}, {33, 144, 141}, {39, 173, 129},
                                          {92, 200, 99},  {170, 220, 50}, {253, 231, 37}};
    t = fmin(1, fmax(0, t)) * 8;
    int i = (int)fmin(7, floor(t));
    double u = t - i;
    return (struct rgb){((1 - u) * v[i][0] + u * v[i + 1][0]) / 255,
                        ((1 - u) * v[i][1] + u * v[i + 1][1]) / 255,
                        ((1 - u) * v[i][2] + u * v[i + 1][2]) / 255};
}

/* The load averaged into `cols` columns of steps: cell (c, e) in mean[c * E + e], NAN where
 * no step of the column reported one; *r the range of the means. 0, or -1 out of memory. */
static int load_columns(const struct frame *f, const struct panel *p, int cols, double *mean,
                        struct range *r) {
    const struct plot_data *d = f->d;
    int E = d->n_experts;
    int *count = calloc((size_t)cols * (size_t)E, sizeof *count);
    if (!count) return -1;
    double x_first = x_of(f, p, (double)d->steps[0].step);
    double span = x_of(f, p, (double)d->steps[d->n_steps - 1].step) - x_first + 1e-9;
    *r = (struct range){INFINITY, -INFINITY};
    for (size_t k = 0; k < (size_t)cols * (size_t)E; k++) mean[k] = 0;
    for (size_t i = 0; i < d->n_steps; i++) {
        int c = (int)fmin(cols - 1, (x_of(f, p, (double)d->steps[i].step) - x_first) / span * cols);
        for (int e = 0; e < E; e++) {
            float v = d->load[i * (size_t)E + (size_t)e];
            if (!isfinite(v)) continue;
            mean[c * E + e] += v;
            count[c * E + e]++;
        }
    }
    for (size_t k = 0; k < (size_t)cols * (size_t)E; k++) {
        mean[k] = count[k] ? mean[k] / count[k] : NAN;
        if (count[k]) *r = (struct range){fmin(r->lo, mean[k]), fmax(r->hi, mean[k])};
    }
    free(count);
    return 0;
}

/* The colour bar right of the heatmap, r (shares) as percentages from bottom to top. */
static void colour_bar(const struct frame *f, const struct panel *p, struct range share) {
    cairo_t *cr = f->cr;
    double x = p->x + p->w + 14, w = 12;
    for (int i = 0; i < (int)p->h; i++) {
        colour(cr, viridis(1 - (double)i / p->h));
        cairo_rectangle(cr, x, p->y + i, w, 1.5);
        cairo_fill(cr);
    }
    struct range r = {100 * share.lo, 100 * share.hi};
    double s = nice_step(r.hi - r.lo, (int)fmax(2, p->h / 35));
    char t[32];
    for (double v = ceil(r.lo / s) * s; v <= r.hi + s * 1e-9; v += s) {
        double y = y_of(p, r, v);
        line(cr, x + w, y, x + w + 3, y, 1, AXIS);
        tick_text(t, sizeof t, v, s);
        strncat(t, "%", sizeof t - strlen(t) - 1);
        text(cr, x + w + 6, y + 4, t, 10, 0, 0, INK);
    }
}

/* Expert names on the y axis: every one while they fit, else every k-th. */
static void expert_ticks(const struct frame *f, const struct panel *p) {
    int E = f->d->n_experts, every = 1;
    while (p->h / E * every < 13) every++;
    char t[16];
    for (int e = 0; e < E; e += every) {
        snprintf(t, sizeof t, "e%d", e);
        text(f->cr, p->x - 6, p->y + (e + 0.5) * p->h / E + 4, t, 10, 0, 1, INK);
    }
}

static void draw_load(const struct frame *f) {
    const struct panel *p = &f->load;
    const struct plot_data *d = f->d;
    draw_axes(f, p, NULL, "expert load");
    if (!d->n_experts || !d->n_steps) {
        no_data(f, p, "no expert load reported");
        return;
    }
    cairo_t *cr = f->cr;
    int E = d->n_experts;
    double x_first = x_of(f, p, (double)d->steps[0].step);
    double span = fmax(1, x_of(f, p, (double)d->steps[d->n_steps - 1].step) - x_first);
    int cols = (int)fmin((double)d->n_steps, fmax(1, span / 2));
    double *mean = malloc((size_t)cols * (size_t)E * sizeof *mean);
    struct range r;
    if (!mean || load_columns(f, p, cols, mean, &r) != 0 || !isfinite(r.lo)) {
        no_data(f, p, mean ? "no expert load reported" : "out of memory");
        free(mean);
        return;
    }
    if (r.hi - r.lo < 1e-3) r = (struct range){r.lo - 5e-4, r.hi + 5e-4}; // balanced throughout
    double cw = span / cols, rh = p->h / E;
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_NONE); // no seams between cells
    for (int c = 0; c < cols; c++)
        for (int e = 0; e < E; e++) {
            if (!isfinite(mean[c * E + e])) continue;
            colour(cr, viridis((mean[c * E + e] - r.lo) / (r.hi - r.lo)));
            cairo_rectangle(cr, x_first + c * cw - 0.5, p->y + e * rh, cw + 1, rh);
            cairo_fill(cr);
        }
    cairo_set_antialias(cr, CAIRO_ANTIALIAS_DEFAULT);
    free(mean);
    expert_ticks(f, p);
    colour_bar(f, p, r);
}

/* ---- markers ---- */

/* A marker's label: its kind, and how long the recovery or move took. */
static void marker_label(char *out, size_t cap, const struct plot_event *e) {
    if (e->seconds >= 1)
        snprintf(out, cap, "%s %.1fs", e->kind, e->seconds);
    else if (e->seconds >= 0)
        snprintf(out, cap, "%s %.0fms", e->kind, e->seconds * 1e3);
    else
        snprintf(out, cap, "%s", e->kind);
}

/* Each event's x: at its step, but never within MARKER_GAP of the one before it, so that a
 * failure, its recovering and recovered (often at one step) show as three lines. */
static void marker_positions(const struct frame *f, double *x) {
    double prev = -INFINITY;
    for (size_t i = 0; i < f->d->n_events; i++) {
        x[i] = round(x_of(f, &f->loss, (double)f->d->events[i].step));
        if (x[i] < prev + MARKER_GAP) x[i] = prev + MARKER_GAP;
        prev = x[i];
    }
}

/* A marker's line through every panel, from its label's row down. */
static void marker_line(const struct frame *f, const struct plot_event *e, double x,
                        double label_y) {
    cairo_t *cr = f->cr;
    static const double dash[] = {5, 3};
    cairo_set_dash(cr, dash, e->stage ? 2 : 0, 0);
    const struct panel *ps[] = {&f->loss, &f->speed, &f->load};
    for (int k = 0; k < 3; k++) {
        double y0 = k == 0 && label_y > 0 ? label_y : ps[k]->y, y1 = ps[k]->y + ps[k]->h;
        if (k == 2) line(cr, x, y0, x, y1, 4, WHITE); // a halo, to stand out on the heatmap
        line(cr, x, y0, x, y1, 2, marks[e->mark].colour);
    }
    cairo_set_dash(cr, NULL, 0, 0);
}

/* The markers and their labels, each label in the first row of the band where it does not
 * run into the label before it (none when every row is taken there). */
static void draw_markers(const struct frame *f, double *x) {
    double row_end[LABEL_ROWS];
    for (int r = 0; r < LABEL_ROWS; r++) row_end[r] = -INFINITY;
    marker_positions(f, x);
    for (size_t i = 0; i < f->d->n_events; i++) {
        const struct plot_event *e = &f->d->events[i];
        char label[64];
        marker_label(label, sizeof label, e);
        double w = text_width(f->cr, label, 10), label_y = -1;
        for (int r = 0; r < LABEL_ROWS && label_y < 0; r++) {
            if (row_end[r] > x[i] - 2 || x[i] + 4 + w > f->width - 2) continue;
            label_y = f->band_y + r * ROW_H;
            text(f->cr, x[i] + 4, label_y + 10, label, 10, 0, 0, marks[e->mark].colour);
            row_end[r] = x[i] + 4 + w + 6;
        }
        marker_line(f, e, x[i], label_y);
    }
}

/* ---- title and legend ---- */

static void draw_title(const struct frame *f) {
    const struct plot_data *d = f->d;
    char t[512], facts[640];
    snprintf(t, sizeof t, "%s%s%s%s  %s", d->job_id, d->name[0] ? " '" : "", d->name,
             d->name[0] ? "'" : "", d->state);
    text(f->cr, f->loss.x, 26, t, 16, 1, 0, INK);
    int n = 0;
    if (d->pods > 0)
        n += snprintf(facts + n, sizeof facts - (size_t)n, "mesh %d x %d%s%s  |  ", d->pods,
                      d->slots, d->backend[0] ? ", " : "", d->backend);
    const struct plot_step *last = d->n_steps ? &d->steps[d->n_steps - 1] : NULL;
    double val = NAN;
    for (size_t i = 0; i < d->n_steps; i++)
        if (isfinite(d->steps[i].val_loss)) val = d->steps[i].val_loss;
    if (last) {
        n += snprintf(facts + n, sizeof facts - (size_t)n, "step %ld", last->step);
        if (d->total_steps > 0)
            n += snprintf(facts + n, sizeof facts - (size_t)n, " of %ld", d->total_steps);
        n += snprintf(facts + n, sizeof facts - (size_t)n, "  |  final loss %.4f", last->loss);
        if (isfinite(val))
            n += snprintf(facts + n, sizeof facts - (size_t)n, ", held-out %.4f", val);
    } else {
        n += snprintf(facts + n, sizeof facts - (size_t)n, "no steps stored");
    }
    n += snprintf(facts + n, sizeof facts - (size_t)n, "  |  %d recover%s, %d move%s",
                  d->recoveries, d->recoveries == 1 ? "y" : "ies", d->moves,
                  d->moves == 1 ? "" : "s");
    if (d->events_partial)
        snprintf(facts + n, sizeof facts - (size_t)n, "  |  only the latest events are marked");
    else if (d->source[0])
        snprintf(facts + n, sizeof facts - (size_t)n, "  |  steps from %s", d->source);
    text(f->cr, f->loss.x, 46, facts, 12, 0, 0, MUTED);
}

/* One entry of the legend: a short line (dashed for a stage) and its name. */
static void legend_entry(cairo_t *cr, double x, double y, struct rgb c, int dashed,
                         const char *name) {
    static const double dash[] = {4, 2};
    cairo_set_dash(cr, dash, dashed ? 2 : 0, 0);
    line(cr, x, y - 4, x + 18, y - 4, 2, c);
    cairo_set_dash(cr, NULL, 0, 0);
    text(cr, x + 24, y, name, 11, 0, 0, INK);
}

/* Top right of the loss panel: the curves, then each mark the events use. */
static void draw_legend(const struct frame *f) {
    const struct plot_data *d = f->d;
    int used[N_MARKS] = {0}, solid[N_MARKS] = {0}, rows = 2;
    for (size_t i = 0; i < d->n_events; i++) {
        rows += !used[d->events[i].mark];
        used[d->events[i].mark] = 1;
        solid[d->events[i].mark] |= !d->events[i].stage; // dashed only when every one is a stage
    }
    cairo_t *cr = f->cr;
    double w = 128, h = rows * 16 + 8, x = f->loss.x + f->loss.w - w - 8, y = f->loss.y + 8;
    cairo_set_source_rgba(cr, 1, 1, 1, 0.85);
    cairo_rectangle(cr, x, y, w, h);
    cairo_fill_preserve(cr);
    colour(cr, GRID);
    cairo_set_line_width(cr, 1);
    cairo_stroke(cr);
    legend_entry(cr, x + 8, y + 18, LOSS, 0, "training loss");
    legend_entry(cr, x + 8, y + 34, VAL, 0, "held-out loss");
    double ey = y + 50;
    for (int m = 0; m < N_MARKS; m++) {
        if (!used[m]) continue;
        legend_entry(cr, x + 8, ey, marks[m].colour, !solid[m], marks[m].name);
        ey += 16;
    }
}

/* ---- the picture ---- */

static void draw(struct frame *f, struct plot_layout *out) {
    cairo_t *cr = f->cr;
    colour(cr, WHITE);
    cairo_paint(cr);
    layout(f);
    draw_title(f);
    draw_loss(f);
    draw_speed(f);
    draw_load(f);
    text(cr, f->load.x + f->load.w / 2, f->height - 8, "step", 12, 0, 0.5, INK);
    double *x = calloc(f->d->n_events + 1, sizeof *x);
    if (x) draw_markers(f, x);
    draw_legend(f);
    if (out) {
        out->s0 = f->s_lo;
        out->s1 = f->s_hi;
        out->x0 = x_of(f, &f->loss, f->s_lo);
        out->x1 = x_of(f, &f->loss, f->s_hi);
        out->top = f->loss.y;
        out->bottom = f->load.y + f->load.h;
        out->marker_x = x;
    } else {
        free(x);
    }
}

struct sink {
    int (*write)(void *closure, const unsigned char *data, unsigned n);
    void *closure;
};

static cairo_status_t to_sink(void *closure, const unsigned char *data, unsigned n) {
    const struct sink *s = closure;
    return s->write(s->closure, data, n) == 0 ? CAIRO_STATUS_SUCCESS : CAIRO_STATUS_WRITE_ERROR;
}

moe_status plot_draw(const struct plot_data *d, enum plot_format fmt, int width, int height,
                     int (*write)(void *closure, const unsigned char *data, unsigned n),
                     void *closure, struct plot_layout *layout_out) {
    struct sink sink = {write, closure};
    cairo_surface_t *s =
        fmt == PLOT_SVG ? cairo_svg_surface_create_for_stream(to_sink, &sink, width, height)
                        : cairo_image_surface_create(CAIRO_FORMAT_ARGB32, width, height);
    if (fmt == PLOT_SVG) cairo_svg_surface_set_document_unit(s, CAIRO_SVG_UNIT_PX);
    cairo_t *cr = cairo_create(s);
    struct frame f = {.cr = cr, .d = d, .width = width, .height = height};
    draw(&f, layout_out);
    cairo_status_t st = cairo_status(cr);
    cairo_destroy(cr);
    if (st == CAIRO_STATUS_SUCCESS && fmt == PLOT_PNG)
        st = cairo_surface_write_to_png_stream(s, to_sink, &sink);
    cairo_surface_finish(s); // the SVG's last bytes go out here
    if (st == CAIRO_STATUS_SUCCESS) st = cairo_surface_status(s);
    cairo_surface_destroy(s);
    /* cairo's font caches and fontconfig's configuration live until the process ends; moectl
     * draws one picture, so they go now (and the sanitizer build sees no leak) */
    cairo_debug_reset_static_data();
    FcFini();
    if (st != CAIRO_STATUS_SUCCESS)
        return moe_fail(MOE_EIO, "cannot draw the plot: %s", cairo_status_to_string(st));
    return MOE_OK;
}
