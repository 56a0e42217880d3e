/*
 * repl_proto.h - the replication wire protocol: messages, their bounded
 * parser, and the shared-secret handshake.
 *
 * docs/replication.md is the reference for the bytes. Every message is a
 * 12-byte header (payload length, type, version, CRC32C over the header's
 * first 8 bytes and the payload) and a payload of typed fields. The parser
 * is fed bytes as they arrive, in any split, and never holds more than one
 * message; a payload longer than the current limit, a bad CRC, an unknown
 * type or a malformed field ends the stream with a one-line reason. The
 * limit is small until the peer has authenticated.
 *
 * SECURITY: everything here comes from the network. Account names are
 * checked to be address-shaped (they become folder names on a replica);
 * lengths are checked before use.
 */
#ifndef HV_REPL_PROTO_H
#define HV_REPL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

#define REPL_PROTO_VERSION 1
#define REPL_HDR 12
/* Before authentication: HELLO and AUTH only. */
#define REPL_MAX_PAYLOAD_PREAUTH 512
/* A log frame may hold a 64 MiB record body; FRAMES adds its fields. */
#define REPL_MAX_PAYLOAD ((64u << 20) + 4096)
/* Blobs travel in chunks of at most this many bytes. */
#define REPL_BLOB_CHUNK (1u << 20)
#define REPL_ACCOUNT_MAX 254
#define REPL_STORE_NAME_MAX 64
#define REPL_TEXT_MAX 400
#define REPL_CRCS_MAX 65536

enum repl_msg_type {
    REPL_HELLO = 1,      /* both: version, role, nonce, store name */
    REPL_AUTH = 2,       /* both: HMAC proving the shared secret */
    REPL_ACCOUNT = 3,    /* primary: "where are you with this account?" */
    REPL_POSITION = 4,   /* replica: durable modseq and its record's CRC */
    REPL_BLOB = 5,       /* primary: a chunk of a blob an APPEND names */
    REPL_FRAMES = 6,     /* primary: log frames first..last, as on disk */
    REPL_ACK = 7,        /* replica: everything up to modseq is durable */
    REPL_ERROR = 8,      /* both: an account (or the link) failed */
    REPL_PING = 9,       /* both: keepalive */
    REPL_PONG = 10,
    REPL_DIGEST_REQ = 11, /* primary: replcheck asks for a digest */
    REPL_DIGEST = 12,
    REPL_CRCS_REQ = 13,  /* primary: replcheck asks for record CRCs */
    REPL_CRCS = 14,
    REPL_EPOCH = 15,     /* both, in the handshake: the sender's epoch */
    REPL_SWITCHOVER = 16, /* replica: "fence, drain, hand over at epoch a" */
    REPL_SWITCHED = 17,  /* primary: fenced and drained; the replica may take epoch a */
    REPL_REJOIN = 18,    /* primary: "you diverged after modseq a: salvage your tail" */
    REPL_SALVAGE = 19,   /* replica: (a chunk of) one message of its divergent tail */
    REPL_SALVAGE_END = 20, /* replica: the whole tail was sent */
    REPL_SALVAGE_OK = 21,  /* primary: stored; set your copy aside and resync */
    /* Account moves (docs/move.md): a mover streams one account to the
     * target store's repl service with ACCOUNT/BLOB/FRAMES/DIGEST_REQ. */
    REPL_MOVE_RESET = 22,  /* mover: "your copy is not a prefix of mine: set it aside" */
    REPL_MOVE_COMMIT = 23, /* mover: "the account ends at modseq a: make it yours" */
    REPL_MOVE_DONE = 24,   /* target: committed at modseq a */
};
#define REPL_MSG_TYPE_MAX 24
/* SALVAGE: a mailbox name and the keyword names (space-separated). */
#define REPL_MAILBOX_MAX 1000
#define REPL_KEYWORDS_MAX 12000

enum repl_role { REPL_ROLE_PRIMARY = 0, REPL_ROLE_REPLICA = 1, REPL_ROLE_MOVER = 2 };

/* A decoded message. Pointers point into the parser's buffer and are
 * valid until the next repl_parser_feed. */
typedef struct repl_msg {
    enum repl_msg_type type;
    const char *account;   /* not NUL-terminated; account_len 0 when absent */
    size_t account_len;
    uint64_t a, b, c, d, e; /* numbers, by type (see repl_proto.c: decode) */
    uint32_t u32;          /* POSITION: CRC of the record at a; CRCS: count */
    int32_t code;          /* ERROR: negative errno */
    uint16_t version;      /* HELLO */
    uint8_t role;          /* HELLO */
    const uint8_t *bytes32; /* HELLO nonce, AUTH mac, BLOB id, DIGEST digest */
    const char *text;      /* HELLO store name, ERROR reason, SALVAGE mailbox */
    size_t text_len;
    const char *text2;     /* SALVAGE keywords */
    size_t text2_len;
    const uint8_t *data;   /* BLOB chunk, FRAMES frames, CRCS array */
    size_t data_len;
} repl_msg;

/* Field meanings per type (a, b, c):
 *   ACCOUNT    a = primary's highest modseq (for progress)
 *   POSITION   a = durable modseq, u32 = CRC of that record (0 when a = 0)
 *   BLOB       a = blob size, b = offset of this chunk; bytes32 = blob id
 *   FRAMES     a = first modseq, b = last modseq
 *   ACK        a = durable modseq
 *   PING/PONG  a = sender's cookie (echoed)
 *   DIGEST_REQ a = cookie
 *   DIGEST     a = cookie, b = modseq, c = 1 when the account exists;
 *              bytes32 = store_digest
 *   CRCS_REQ   a = cookie, b = first modseq, u32 = most CRCs wanted
 *   CRCS       a = cookie, b = first modseq, u32 = count; data = count x u32
 *   EPOCH, SWITCHOVER, SWITCHED   a = epoch
 *   REJOIN     a = common modseq (the last both logs share), b = primary's epoch
 *   SALVAGE    a = the message's modseq on the sender, b = body size, c = offset
 *              of this chunk, d = system flags, e = internal date (int64);
 *              text = mailbox name, text2 = keywords; data = the chunk
 *   SALVAGE_END  a = common modseq, b = messages sent, c = other records
 *   SALVAGE_OK   a = messages stored, b = of them already there (a repeat)
 *   MOVE_RESET   (account only)
 *   MOVE_COMMIT, MOVE_DONE   a = the account's last modseq */

typedef struct repl_parser {
    uint8_t hdr[REPL_HDR];
    size_t hlen;
    buf payload;
    size_t need;         /* payload bytes still missing */
    uint32_t limit;      /* largest payload accepted now */
    int in_payload;
    int failed;
} repl_parser;

void repl_parser_init(repl_parser *p, uint32_t limit);
void repl_parser_free(repl_parser *p);
void repl_parser_set_limit(repl_parser *p, uint32_t limit);
/* Consumes bytes from data[0..len) (*used says how many). Returns 1 when
 * out holds a complete, valid message (call again with the rest), 0 when
 * all bytes were consumed without completing one, or a negative error
 * with the reason: the stream is then unusable. */
int repl_parser_feed(repl_parser *p, const uint8_t *data, size_t len, size_t *used,
                     repl_msg *out, hv_err *err);

/* Decodes a payload of the given type (used by the parser; public for the
 * fuzz target and tests). */
int repl_msg_decode(uint8_t type, const uint8_t *p, size_t len, repl_msg *out, hv_err *err);

/* --- building messages: begin, put fields, end --- */
size_t repl_msg_begin(buf *b, enum repl_msg_type type); /* returns the start offset */
void repl_msg_end(buf *b, size_t start);                /* fills length and CRC */
void repl_put_name(buf *b, const char *s, size_t len);  /* u16 length + bytes */

void repl_build_hello(buf *b, enum repl_role role, const uint8_t nonce[32], const char *store);
void repl_build_auth(buf *b, const uint8_t mac[32]);
void repl_build_account(buf *b, const char *acct, uint64_t highest);
void repl_build_position(buf *b, const char *acct, uint64_t modseq, uint32_t crc);
void repl_build_blob(buf *b, const char *acct, const uint8_t id[32], uint64_t size,
                     uint64_t offset, const void *data, size_t len);
void repl_build_frames(buf *b, const char *acct, uint64_t first, uint64_t last,
                       const void *frames, size_t len);
void repl_build_ack(buf *b, const char *acct, uint64_t modseq);
void repl_build_error(buf *b, const char *acct, int32_t code, const char *reason);
void repl_build_ping(buf *b, enum repl_msg_type type, uint64_t cookie);
void repl_build_digest_req(buf *b, const char *acct, uint64_t cookie);
void repl_build_digest(buf *b, const char *acct, uint64_t cookie, uint64_t modseq, int exists,
                       const uint8_t digest[32]);
void repl_build_crcs_req(buf *b, const char *acct, uint64_t cookie, uint64_t first,
                         uint32_t max);
void repl_build_crcs(buf *b, const char *acct, uint64_t cookie, uint64_t first,
                     const uint32_t *crcs, uint32_t n);
/* Rejoining (docs/replication.md, "Rejoining with a divergent tail"). */
void repl_build_rejoin(buf *b, const char *acct, uint64_t common, uint64_t epoch);
void repl_build_salvage(buf *b, const char *acct, uint64_t modseq, uint64_t size,
                        uint64_t offset, uint64_t flags, int64_t internal_date,
                        const char *mailbox, size_t mailbox_len, const char *keywords,
                        size_t keywords_len, const void *chunk, size_t len);
/* SALVAGE_END (n1 = common, n2 = messages, n3 = other records) and
 * SALVAGE_OK (n1 = stored, n2 = duplicates; n3 unused, 0). */
void repl_build_salvage_end(buf *b, const char *acct, uint64_t common, uint64_t messages,
                            uint64_t others);
void repl_build_salvage_ok(buf *b, const char *acct, uint64_t stored, uint64_t dups);
/* MOVE_RESET (modseq ignored), MOVE_COMMIT and MOVE_DONE. */
void repl_build_move(buf *b, enum repl_msg_type type, const char *acct, uint64_t modseq);

/* Copies m's account into out (NUL-terminated; out has REPL_ACCOUNT_MAX+1). */
void repl_msg_account(const repl_msg *m, char *out);
const char *repl_msg_type_name(int type);

/* The handshake proof: HMAC-SHA256 under the shared secret over a label,
 * the sender's role, both nonces (sender's first) and a value exported
 * from the TLS session, so a proof cannot be replayed on another
 * connection or relayed through a man in the middle. */
void repl_auth_mac(const uint8_t *secret, size_t secret_len, enum repl_role sender,
                   const uint8_t nonce_sender[32], const uint8_t nonce_receiver[32],
                   const uint8_t exporter[32], uint8_t out[32]);

#endif
