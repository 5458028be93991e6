/*
 * links_text.h — one slot's data-plane links (SlotStatus.links) as `moectl status` shows
 * them: "shm within pod 0, tcp to pod 1".
 *
 * Owns: grouping a slot's peers by pod, in pod order; the slot's own pod reads "within pod P",
 * the others "to pod P", and consecutive other pods that look the same are joined ("tcp to
 * pods 1-3"); a pod whose peers use different transports counts them ("shm x1 + tcp x2").
 * Never: prints, or asks the coordinator anything.
 */
#ifndef MOECTL_LINKS_TEXT_H
#define MOECTL_LINKS_TEXT_H

#include "../proto/rpc.h"
#include "proto/moed.pb-c.h"

#include <stddef.h>

/* Writes the summary of s's links into out (always terminated; cut to cap); "not reported
 * yet" when it has none. Returns out. */
const char *links_text(const Moed__V1__SlotStatus *s, char *out, size_t cap);

#endif
