/*
 * histogram.c — observing a duration (see histogram.h).
 */
#include "histogram.h"

const double histogram_bounds[HISTOGRAM_BUCKETS] = {0.001, 0.005, 0.025, 0.1, 0.5, 1,
                                                    2.5,   5,     10,    30,  60,  300};

void histogram_observe(struct histogram *h, double seconds) {
    if (!(seconds >= 0)) seconds = 0; // a clock that stepped back, or NaN: counted as 0
    for (int i = 0; i < HISTOGRAM_BUCKETS; i++)
        if (seconds <= histogram_bounds[i]) h->bucket[i]++;
    h->count++;
    h->sum += seconds;
}
