/*
 * mbox_parser.h - reading and writing mbox files (mboxrd, mboxo).
 *
 * The reader is an incremental state machine for `haven import`: it is fed
 * bytes in chunks of any size, down to one byte, and calls back once per
 * message with the message as RFC 5322 bytes with CRLF line ends, which is
 * what the store keeps and IMAP serves (so RFC822.SIZE is the stored size).
 * Its memory is bounded by max_message_size: a larger message is counted,
 * reported with its place in the file and not kept.
 *
 * What the reader accepts:
 *   - the first line must start with "From " (else: not an mbox); an empty
 *     input is an mbox with no messages;
 *   - a "From " line starts a message only at the start of the input or
 *     after a blank line; that blank line belongs to the separator, not to
 *     the message before it (nor does one blank line at the end of input);
 *   - lines matching ^>+From  lose one '>' (mboxrd; for mboxo files this
 *     is the usual ">From " unquoting);
 *   - LF or CRLF line ends, mixed: a bare LF becomes CRLF, a CRLF stays;
 *     a CR not followed by LF is kept as a byte of its line;
 *   - NUL bytes and lines of any length in bodies (kept as they are);
 *   - a last line without a newline (it gets CRLF, as mbox cannot
 *     represent a message that does not end in a line end).
 *
 * Internal dates: the asctime date of the From line ("From sender Tue Jan
 * 2 15:04:05 2024", read as UTC unless a numeric zone follows), else the
 * message's Date: header, else opt->now.
 *
 * The writer (mbox_write_message) produces mboxrd that this reader turns
 * back into the same bytes: import, export, import gives identical bodies.
 */
#ifndef HV_MBOX_PARSER_H
#define HV_MBOX_PARSER_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/err.h"

/* The default cap on one message (stored size, CRLF line ends). */
#define MBOX_DEFAULT_MAX_MESSAGE (100ull * 1024 * 1024)
/* The part of a From line kept for its date; the rest is ignored. */
#define MBOX_FROM_LINE_MAX 1000

typedef struct mbox_parser_options {
    uint64_t max_message_size; /* 0: MBOX_DEFAULT_MAX_MESSAGE */
    int64_t now;               /* internal date when no date is found; 0: time(NULL) */
} mbox_parser_options;

enum mbox_date_source { MBOX_DATE_FROM_LINE, MBOX_DATE_HEADER, MBOX_DATE_NOW };

typedef struct mbox_message {
    const uint8_t *data;   /* CRLF bytes, valid during the callback; NULL when too big */
    uint64_t size;         /* stored size (also when too big: the size it would have) */
    int too_big;           /* size > max_message_size: data is NULL, nothing kept */
    int64_t internal_date; /* seconds since the epoch (0 when too_big) */
    enum mbox_date_source date_source;
    uint64_t number;       /* 1-based position of the message in the input */
    uint64_t offset;       /* byte offset of its From line in the input */
} mbox_message;

/* Called for each message, in order. A non-zero return (a negative errno
 * with err filled) stops the parser; feed/finish then return it. */
typedef int (*mbox_message_cb)(void *ctx, const mbox_message *m, hv_err *err);

typedef struct mbox_parser mbox_parser;

mbox_parser *mbox_parser_new(const mbox_parser_options *opt, mbox_message_cb cb, void *ctx);
void mbox_parser_free(mbox_parser *p);

/* Feeds the next len bytes. Returns 0, -EINVAL when the input is not an
 * mbox (err says why), or the callback's error. After an error the parser
 * only returns errors. */
int mbox_parser_feed(mbox_parser *p, const void *data, size_t len, hv_err *err);
/* Ends the input: emits the last message. Same returns as feed. */
int mbox_parser_finish(mbox_parser *p, hv_err *err);

/* Bytes fed so far and messages emitted so far (for progress). */
uint64_t mbox_parser_offset(const mbox_parser *p);
uint64_t mbox_parser_messages(const mbox_parser *p);

/* The date of a From line (with or without the "From " and line end).
 * Returns 0 and sets *out, or -EINVAL when it has no asctime date. */
int mbox_date_from_line(const char *line, size_t len, int64_t *out);
/* The date of the first Date: header in msg's header section (unfolded,
 * RFC 5322 and the common obsolete forms). 0 or -ENOENT / -EINVAL. */
int mbox_date_from_header(const uint8_t *msg, size_t len, int64_t *out);
/* An RFC 5322 date-time string ("Tue, 2 Jan 2024 15:04:05 +0100"). */
int mbox_date_parse_rfc5322(const char *s, size_t len, int64_t *out);

/* Formats t (UTC) as asctime without the newline: "Tue Jan  2 15:04:05 2024".
 * out must hold 25 bytes. */
void mbox_format_asctime(int64_t t, char out[25]);

/* Appends one message in mboxrd to out: "From SENDER DATE" (sender from the
 * Return-Path header when it is a plain address, else MAILER-DAEMON), the
 * body with CRLF turned into LF and ^>*From  lines given one more '>', a
 * final LF if the body lacks one, and the blank separator line. */
void mbox_write_message(buf *out, const uint8_t *msg, size_t len, int64_t internal_date);

/* Appends msg with CRLF line ends turned into LF (except where the line
 * itself ends in CR, so that a reader turning LF back into CRLF restores
 * the same bytes); with quote_from, lines matching ^>*From  get one more
 * '>' (mboxrd). A last line without a line end stays without one. */
void mbox_crlf_to_lf(buf *out, const uint8_t *msg, size_t len, int quote_from);

#endif
