/*
 * smtp_parser.h - the server side of SMTP (RFC 5321) and LMTP (RFC 2033):
 * command lines, commands with their paths and ESMTP parameters, message
 * data (DATA with dot-stuffing, BDAT chunks), AUTH payloads.
 *
 * Three pieces, each a bounded state machine fed bytes as they arrive (in
 * chunks of any size down to one byte, with the same result):
 *
 *   smtp_line_*  cuts the input into command lines. Only CRLF ends a good
 *                line; a bare LF also ends one (so the session can answer
 *                and go on) but marks it bad, as do a bare CR, a NUL and a
 *                line over the limit. A bad line is never parsed.
 *   smtp_parse_command
 *                turns one good line into a command: verb, path
 *                (<local@domain>, <> for MAIL, quoted local parts, UTF-8
 *                addresses, source routes dropped), ESMTP parameters. Any
 *                error comes back as the complete reply to send.
 *   smtp_data_*  reads a message: in DATA mode it removes dot-stuffing and
 *                stops after CRLF "." CRLF, and only there (a "." line
 *                after a bare LF ends nothing: that is SMTP smuggling); in
 *                BDAT mode it takes exactly the bytes it is given. Both
 *                note a bare LF, a bare CR, a NUL, a line over 1000 bytes
 *                and a message over the size limit, stop keeping data once
 *                one is seen, and go on reading to the end so the session
 *                stays in step with the client; the caller then refuses the
 *                message with smtp_data_error_reply.
 *
 * SECURITY: every byte comes from an unauthenticated client. Memory is
 * bounded by the limits: a command line by SMTP_LINE_MAX_ANY, a message by
 * max_size (what is over it is counted and dropped).
 */
#ifndef HV_SMTP_PARSER_H
#define HV_SMTP_PARSER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* RFC 5321 4.5.3.1.4: a command line is at most 512 bytes with its CRLF.
 * MAIL and RCPT may carry ESMTP parameters, each of which raises the limit
 * (RFC 1869 4.1.2; DSN's ENVID and ORCPT alone add 600): they get 2048.
 * AUTH lines and SASL responses may be 12288 bytes (RFC 4954 4). The line
 * reader keeps up to the largest; smtp_parse_command applies the rest. */
#define SMTP_LINE_MAX 512
#define SMTP_LINE_MAX_PARAMS 2048
#define SMTP_LINE_MAX_ANY 12288
/* RFC 5321 4.5.3.1.6: a text line of a message, CRLF included. */
#define SMTP_DATA_LINE_MAX 1000
/* RFC 5321 4.5.3.1.3: a path is at most 256 bytes with its brackets. */
#define SMTP_ADDRESS_MAX 254
#define SMTP_LOCAL_MAX 64
#define SMTP_DOMAIN_MAX 255
#define SMTP_ENVID_MAX 100   /* RFC 3461 4.4 */
#define SMTP_ORCPT_MAX 500   /* RFC 3461 4.2 */
#define SMTP_DID_MAX 64      /* XHAVEN-DID: = STORE_DELIVERY_ID_MAX */
#define SMTP_HELO_MAX 255

/* ---- lines ---- */

enum {
    SMTP_LINE_TOO_LONG = 1u << 0,
    SMTP_LINE_BARE_LF = 1u << 1,
    SMTP_LINE_BARE_CR = 1u << 2,
    SMTP_LINE_NUL = 1u << 3,
};

typedef struct smtp_line_reader {
    size_t max;       /* longest line kept, CRLF included */
    buf line;         /* the line so far, without its end */
    int cr;           /* the last byte was a CR */
    unsigned errors;  /* SMTP_LINE_* of the line so far */
    size_t total;     /* bytes of the line so far (with those dropped) */
    int done;         /* a line was returned: the next feed starts afresh */
} smtp_line_reader;

enum smtp_line_result {
    SMTP_LINE_MORE, /* all input consumed, no line end yet */
    SMTP_LINE_OK,   /* a line ended by CRLF: smtp_line_text */
    SMTP_LINE_BAD,  /* a line ended (by LF or CRLF) with errors: smtp_line_errors */
};

/* max 0: SMTP_LINE_MAX_ANY. */
void smtp_line_init(smtp_line_reader *r, size_t max);
void smtp_line_free(smtp_line_reader *r);
/* Feeds up to len bytes; returns at the end of a line (consumed through its
 * LF) with *used the bytes consumed. The next feed starts a new line. */
enum smtp_line_result smtp_line_feed(smtp_line_reader *r, const char *data, size_t len,
                                     size_t *used);
/* After OK: the line without CRLF, NUL-terminated (it holds no NUL). */
const char *smtp_line_text(const smtp_line_reader *r, size_t *len);
/* After BAD: the SMTP_LINE_* errors. */
unsigned smtp_line_errors(const smtp_line_reader *r);
/* The reply for a bad line ("500 5.5.2 ..." without CRLF). */
const char *smtp_line_error_reply(unsigned errors);

/* ---- commands ---- */

enum smtp_verb {
    SMTP_V_UNKNOWN = 0,
    SMTP_V_HELO,
    SMTP_V_EHLO,
    SMTP_V_LHLO,
    SMTP_V_MAIL,
    SMTP_V_RCPT,
    SMTP_V_DATA,
    SMTP_V_BDAT,
    SMTP_V_RSET,
    SMTP_V_NOOP,
    SMTP_V_QUIT,
    SMTP_V_VRFY,
    SMTP_V_EXPN,
    SMTP_V_HELP,
    SMTP_V_STARTTLS,
    SMTP_V_AUTH,
};

/* DSN NOTIFY bits (the same values as QUEUE_NOTIFY_* in queue/queue.h). */
enum {
    SMTP_NOTIFY_NEVER = 1u << 0,
    SMTP_NOTIFY_SUCCESS = 1u << 1,
    SMTP_NOTIFY_FAILURE = 1u << 2,
    SMTP_NOTIFY_DELAY = 1u << 3,
};

enum smtp_body { SMTP_BODY_NONE = 0, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

typedef struct smtp_path {
    /* local@domain without brackets; "" for the null path <>. A quoted
     * local part is given unquoted when it is a plain dot-string anyway
     * ("a.b"@x -> a.b@x), else quoted with minimal escapes. A source route
     * (<@relay:a@b>) is dropped (RFC 5321 4.1.1.3 says ignore it). */
    char addr[SMTP_ADDRESS_MAX + 1];
    size_t at;        /* index of the '@' in addr (0 for <> and <postmaster>) */
    int utf8;         /* addr holds non-ASCII (needs SMTPUTF8) */
    int postmaster;   /* RCPT TO:<Postmaster> without a domain (RFC 5321 4.5.1) */
} smtp_path;

typedef struct smtp_cmd {
    enum smtp_verb verb;
    /* The text after the verb and its spaces: the VRFY/EXPN/HELP/NOOP
     * argument ("" when none). Points into the line given to the parser. */
    const char *arg;
    /* HELO/EHLO/LHLO: the client's name (its first word). */
    char helo[SMTP_HELO_MAX + 1];
    /* MAIL, RCPT */
    smtp_path path;
    /* MAIL parameters */
    int has_size;
    uint64_t size;
    enum smtp_body body;
    int smtputf8;
    enum smtp_ret ret;
    char envid[SMTP_ENVID_MAX + 1];     /* xtext decoded; "" when absent */
    int has_auth;
    char auth[SMTP_ADDRESS_MAX + 1];    /* AUTH=: decoded; "" for AUTH=<> */
    /* RCPT parameters */
    unsigned notify;                    /* SMTP_NOTIFY_*, 0 when absent */
    char orcpt[SMTP_ORCPT_MAX + 1];     /* "rfc822;xtext" as given; "" when absent */
    char did[SMTP_DID_MAX + 1];         /* XHAVEN-DID (LMTP only); "" when absent */
    /* BDAT */
    uint64_t bdat_size;
    int bdat_last;
    /* AUTH */
    char mech[21];                      /* upper-cased */
    const char *initial;                /* initial response, or NULL (points into the line) */
} smtp_cmd;

enum {
    SMTP_PARSE_LMTP = 1u << 0, /* LHLO and XHAVEN-DID are known, HELO/EHLO are not */
};

/* Parses one line (as from smtp_line_text, without CRLF; line[len] must be
 * NUL). Returns 0 with *out filled, or -1 with the whole reply to send in
 * reply (e.g. "501 5.5.4 Syntax: MAIL FROM:<address>", no CRLF). For BDAT
 * a -1 with out->verb == SMTP_V_BDAT and out->bdat_size set means the
 * size was readable: the session must skip that many bytes before
 * answering; a BDAT whose size cannot be read leaves the stream unusable
 * (bdat_size = UINT64_MAX): answer and close. */
int smtp_parse_command(const char *line, size_t len, unsigned flags, smtp_cmd *out,
                       char *reply, size_t replylen);

/* Parses "<path>" alone, as MAIL (allow_null) or RCPT takes it. 0 or -1
 * with reply. s points at the '<'; *end gets the byte after the '>'. */
int smtp_parse_path(const char *s, int allow_null, int allow_postmaster, smtp_path *out,
                    const char **end, char *reply, size_t replylen);

/* ---- message data ---- */

enum {
    SMTP_DATA_BARE_LF = 1u << 0,
    SMTP_DATA_BARE_CR = 1u << 1,
    SMTP_DATA_NUL = 1u << 2,
    SMTP_DATA_LONG_LINE = 1u << 3,
    SMTP_DATA_TOO_BIG = 1u << 4,
};

typedef struct smtp_data_reader {
    int dot_mode;      /* DATA (1) or BDAT (0) */
    uint64_t max_size; /* the message (unstuffed) may be this big; 0: no limit */
    uint64_t size;     /* message bytes so far, counted past the limit too */
    size_t line_len;   /* bytes of the current line on the wire */
    int state;
    unsigned errors;   /* SMTP_DATA_* */
    buf *out;          /* where the message goes while there is no error */
} smtp_data_reader;

enum smtp_data_result {
    SMTP_DATA_MORE, /* all input consumed */
    SMTP_DATA_END,  /* DATA mode: the final "." line was consumed */
};

/* out receives the message (CRLF lines, dot-stuffing removed, without the
 * final "." line). The reader is kept across BDAT chunks of one message. */
void smtp_data_init(smtp_data_reader *r, int dot_mode, uint64_t max_size, buf *out);
enum smtp_data_result smtp_data_feed(smtp_data_reader *r, const char *data, size_t len,
                                     size_t *used);
/* BDAT LAST: the message ends here; a CR left at its very end is bare. */
void smtp_data_finish(smtp_data_reader *r);
/* The reply refusing a message with these errors (no CRLF); the first of
 * smuggling, NUL, size, line length decides. */
const char *smtp_data_error_reply(unsigned errors);

/* ---- AUTH ---- */

/* Strict base64 (RFC 4648, padding optional, no spaces). out must have
 * room for len / 4 * 3 + 3 bytes. Returns the decoded length, or -1. "="
 * alone decodes to nothing (RFC 4954: an empty initial response). */
long smtp_b64_decode(const char *in, size_t len, char *out);
/* RFC 4616 PLAIN: [authzid] NUL authcid NUL passwd, none holding NUL.
 * Splits raw (n bytes, which must have raw[n] writable) in place into
 * three NUL-terminated strings. 0 or -1. */
int smtp_sasl_plain(char *raw, size_t n, const char **authz, const char **authc,
                    const char **pass);

#endif
