/*
 * state.c — the coordinator's meta record (the id counters and the cluster id) and the
 * protobuf copy that the tables keep of messages they outlive (see state.h).
 */
#include "state.h"

#include <stdlib.h>

void coordinator_batch_meta(struct store_batch *b, const struct coordinator *co) {
    Moed__Store__MetaRecord m = MOED__STORE__META_RECORD__INIT;
    m.next_job = co->next_job;
    m.next_worker = co->next_worker;
    m.cluster_id = (char *)co->cluster_id;
    store_batch_meta(b, &m);
}

moe_status coordinator_save_meta(struct coordinator *co) {
    struct store_batch *b = store_batch_new();
    coordinator_batch_meta(b, co);
    return store_batch_commit(co->store, b, 1);
}

ProtobufCMessage *pb_clone(const ProtobufCMessage *m) {
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return NULL;
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(m->descriptor, NULL, n, buf);
    free(buf);
    return copy;
}
