/*
 * smtp_reply.h - the bounded reader of SMTP/LMTP server replies (RFC 5321
 * 4.2), used by the client (smtp_client.c) on bytes from remote servers.
 *
 * SECURITY: its input is whatever a remote server sends. It keeps at most
 * one line (SMTP_REPLY_MAX_LINE bytes) and counts lines: a reply of more
 * than SMTP_REPLY_MAX_LINES lines, a longer line, a line that is not
 * "ddd", "ddd text" or "ddd-text", a continuation with another code, or a
 * NUL byte is a protocol error, and the caller drops the connection.
 * Lines end in CRLF; a bare LF is tolerated as an end of line too (the
 * client is liberal in what it reads, never in what it sends).
 */
#ifndef HV_SMTP_REPLY_H
#define HV_SMTP_REPLY_H

#include <stddef.h>

#include "lib/err.h"
#include "smtp/smtp_client.h"

#define SMTP_REPLY_MAX_LINES 100
#define SMTP_REPLY_MAX_LINE 2048 /* bytes of one line, its CRLF not counted */

/* Called once per line with the text after "ddd-" / "ddd " (not
 * NUL-terminated, may be empty); the EHLO reader collects extensions so. */
typedef void (*smtp_reply_line_fn)(void *arg, int index, const char *text, size_t len);

typedef struct smtp_reply_parser {
    int code;          /* code of the reply's first line; 0 before it */
    int nlines;        /* lines of this reply so far */
    size_t len;        /* bytes in line */
    smtp_reply_line_fn on_line;
    void *arg;
    char line[SMTP_REPLY_MAX_LINE + 2];
} smtp_reply_parser;

void smtp_reply_parser_init(smtp_reply_parser *p, smtp_reply_line_fn on_line, void *arg);

/* Feeds n bytes. Consumes bytes up to the end of the first complete reply
 * (*used tells how many) and returns 1 with that reply in *out (the parser
 * is then ready for the next one); returns 0 when all n bytes were taken
 * and the reply is not complete yet; returns -EPROTO with a reason in err
 * on malformed input (the parser must then be re-initialised).
 * out->text is the last line's text without its enhanced status code
 * (RFC 3463 "x.y.z", which goes to out->enhanced when its class matches
 * the reply code's first digit); control bytes in it become '?'. */
int smtp_reply_feed(smtp_reply_parser *p, const char *data, size_t n, size_t *used,
                    smtp_reply *out, hv_err *err);

/* "250 2.0.0 text" for logs and error reasons. */
void smtp_reply_format(const smtp_reply *r, char *out, size_t outlen);

#endif
