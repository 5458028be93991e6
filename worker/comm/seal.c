/*
 * seal.c — the tcp byte stream, encrypted: one AES-256-GCM frame (OpenSSL EVP) per piece of a
 * message, for links that cross networks nobody vouches for (MOE_COMM_ENCRYPT, mesh.encrypt).
 *
 * Owns: the frame — a 4-byte little-endian plaintext length (the additional data), the
 * ciphertext, a 16-byte tag — and its nonce: per direction a 64-bit counter of frames
 * (4 zero bytes, then the counter), never reused, because each direction has its own key
 * (handshake.c derives both from the link key and the two handshake nonces) and a link whose
 * counter would wrap fails instead.
 * Never: reports plaintext as sent before its whole frame is on the wire (the caller presents
 * the same bytes again until it is, as stream.c does: a frame is made of one call's bytes,
 * so frames never span two messages), reports bytes as received before their tag verified,
 * or blocks (it moves what the socket takes, through tcp.c).
 */
#include "transport.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEAL_FRAME ((size_t)64 << 10) // plaintext bytes per frame at most
#define SEAL_LEN 4
#define SEAL_TAG 16
#define SEAL_BUF (SEAL_LEN + SEAL_FRAME + SEAL_TAG)

struct seal_dir {
    EVP_CIPHER_CTX *ctx;
    uint64_t counter; // frames sealed (tx) or opened (rx): the next nonce
    uint8_t *buf;     // one frame, allocated at first use
    size_t have;      // tx: bytes of the sealed frame in buf; rx: bytes of it received
    size_t off;       // tx: bytes of it sent; rx: plaintext handed out of an opened frame
    size_t plain;     // the frame's plaintext bytes
    bool opened;      // rx: buf holds plaintext that has not all been handed out
};

struct seal {
    struct seal_dir tx, rx;
};

static bool dir_init(struct seal_dir *d, const uint8_t key[32], bool enc) {
    d->ctx = EVP_CIPHER_CTX_new();
    return d->ctx && EVP_CipherInit_ex(d->ctx, EVP_aes_256_gcm(), NULL, key, NULL, enc) == 1;
}

struct seal *seal_new(const uint8_t tx_key[32], const uint8_t rx_key[32]) {
    struct seal *s = calloc(1, sizeof *s);
    if (!s) {
        moe_fail(MOE_ENOMEM, "comm: out of memory for a link's cipher");
        return NULL;
    }
    if (!dir_init(&s->tx, tx_key, true) || !dir_init(&s->rx, rx_key, false)) {
        seal_free(s);
        moe_fail(MOE_EINTERNAL, "comm: AES-256-GCM is not available from OpenSSL");
        return NULL;
    }
    return s;
}

void seal_free(struct seal *s) {
    if (!s) return;
    EVP_CIPHER_CTX_free(s->tx.ctx);
    EVP_CIPHER_CTX_free(s->rx.ctx);
    free(s->tx.buf);
    free(s->rx.buf);
    free(s);
}

/* The frame's nonce, and the counter moved on; false once the counter is spent. */
static bool next_nonce(struct seal_dir *d, int peer, uint8_t iv[12]) {
    if (d->counter == UINT64_MAX) {
        moe_fail(MOE_EUNAVAILABLE, "comm: the link with rank %d has sealed 2^64 frames: its "
                 "nonces are spent", peer);
        return false;
    }
    memset(iv, 0, 4);
    for (int i = 0; i < 8; i++) iv[4 + i] = (uint8_t)(d->counter >> (8 * i));
    d->counter++;
    return true;
}

static bool ensure_buf(struct seal_dir *d) {
    if (!d->buf) d->buf = malloc(SEAL_BUF);
    if (!d->buf) moe_fail(MOE_ENOMEM, "comm: out of memory for an encrypted frame");
    return d->buf != NULL;
}

/* Seals n (1..SEAL_FRAME) bytes of p into the tx frame. */
static bool seal_frame(struct seal_dir *d, int peer, const uint8_t *p, size_t n) {
    uint8_t iv[12];
    if (!ensure_buf(d) || !next_nonce(d, peer, iv)) return false;
    uint8_t *b = d->buf;
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(n >> (8 * i));
    int ol = 0, fl = 0;
    if (EVP_EncryptInit_ex(d->ctx, NULL, NULL, NULL, iv) != 1 ||
        EVP_EncryptUpdate(d->ctx, NULL, &ol, b, SEAL_LEN) != 1 ||
        EVP_EncryptUpdate(d->ctx, b + SEAL_LEN, &ol, p, (int)n) != 1 ||
        EVP_EncryptFinal_ex(d->ctx, b + SEAL_LEN + ol, &fl) != 1 ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_GET_TAG, SEAL_TAG, b + SEAL_LEN + n) != 1) {
        moe_fail(MOE_EINTERNAL, "comm: sealing a frame for rank %d failed", peer);
        return false;
    }
    d->have = SEAL_LEN + n + SEAL_TAG;
    d->off = 0;
    d->plain = n;
    return true;
}

long seal_send_some(struct seal *s, int fd, int peer, const void *p, size_t n) {
    struct seal_dir *d = &s->tx;
    if (n == 0) return 0;
    if (d->have == 0) {
        if (!seal_frame(d, peer, p, n < SEAL_FRAME ? n : SEAL_FRAME)) return -1;
    } else if (n < d->plain) {
        moe_fail(MOE_EINTERNAL, "comm: a sealed frame for rank %d was abandoned half sent", peer);
        return -1;
    }
    while (d->off < d->have) {
        long k = tcp_send_some(fd, peer, d->buf + d->off, d->have - d->off);
        if (k <= 0) return k;
        d->off += (size_t)k;
    }
    d->have = 0;
    return (long)d->plain;
}

/* Receives toward `want` bytes of the rx frame: 1 when they are in, else tcp's 0 or -1. */
static long fill(struct seal_dir *d, int fd, int peer, size_t want) {
    while (d->have < want) {
        long k = tcp_recv_some(fd, peer, d->buf + d->have, want - d->have);
        if (k <= 0) return k;
        d->have += (size_t)k;
    }
    return 1;
}

/* Opens the complete rx frame (plaintext length len) into out; SEAL_EAUTH when its tag
 * does not verify. */
static long open_frame(struct seal_dir *d, int peer, size_t len, uint8_t *out) {
    uint8_t iv[12];
    if (!next_nonce(d, peer, iv)) return -1;
    uint8_t *b = d->buf;
    int ol = 0, fl = 0;
    if (EVP_DecryptInit_ex(d->ctx, NULL, NULL, NULL, iv) != 1 ||
        EVP_DecryptUpdate(d->ctx, NULL, &ol, b, SEAL_LEN) != 1 ||
        EVP_DecryptUpdate(d->ctx, out, &ol, b + SEAL_LEN, (int)len) != 1 ||
        EVP_CIPHER_CTX_ctrl(d->ctx, EVP_CTRL_AEAD_SET_TAG, SEAL_TAG, b + SEAL_LEN + len) != 1 ||
        EVP_DecryptFinal_ex(d->ctx, out + ol, &fl) != 1) {
        moe_fail(MOE_EAUTH, "comm: an encrypted frame from rank %d failed authentication "
                 "(frame %llu: tampered with or corrupted on the way); the link is not trusted "
                 "any more", peer, (unsigned long long)(d->counter - 1));
        return SEAL_EAUTH;
    }
    return 1;
}

long seal_recv_some(struct seal *s, int fd, int peer, void *p, size_t n) {
    struct seal_dir *d = &s->rx;
    if (n == 0) return 0;
    if (!d->opened) {
        if (!ensure_buf(d)) return -1;
        long k = fill(d, fd, peer, SEAL_LEN);
        if (k <= 0) return k;
        const uint8_t *b = d->buf;
        size_t len = (size_t)b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16 | (size_t)b[3] << 24;
        if (len == 0 || len > SEAL_FRAME) {
            moe_fail(MOE_EAUTH, "comm: an encrypted frame from rank %d failed authentication "
                     "(its length, %zu bytes, is not 1 to %zu); the link is not trusted any more",
                     peer, len, SEAL_FRAME);
            return SEAL_EAUTH;
        }
        if ((k = fill(d, fd, peer, SEAL_LEN + len + SEAL_TAG)) <= 0) return k;
        /* Straight into the caller's buffer when the frame fits: no copy. */
        bool direct = n >= len;
        if ((k = open_frame(d, peer, len, direct ? p : d->buf + SEAL_LEN)) < 0) return k;
        d->have = 0;
        if (direct) return (long)len;
        d->opened = true, d->off = 0, d->plain = len;
    }
    size_t left = d->plain - d->off, take = n < left ? n : left;
    memcpy(p, d->buf + SEAL_LEN + d->off, take);
    d->off += take;
    if (d->off == d->plain) d->opened = false;
    return (long)take;
}
