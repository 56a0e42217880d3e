/*
 * mime.h - the MIME structure of a stored message, for IMAP FETCH, SEARCH
 * and SORT/THREAD.
 *
 * mime_parse() reads a message (RFC 5322 with MIME, RFC 2045-2049) in one
 * linear pass into a tree of parts that holds offsets into the caller's
 * buffer only: no header or body is copied. The functions below turn that
 * tree into the strings IMAP wants (ENVELOPE, BODY, BODYSTRUCTURE,
 * BODY[section], BINARY[section], RFC 3501 / RFC 9051 / RFC 3516) and into
 * the decoded text SEARCH and SORT compare against. The message buffer must
 * stay unchanged while the tree is in use; every function takes it again
 * as msg.
 *
 * SECURITY: the message is untrusted input from anywhere on the Internet.
 * Parsing never fails and never recurses: broken structure is read best
 * effort (see docs/mime.md), and the work is bounded by mime_limits and
 * linear in the size of the message. Output strings are always valid IMAP
 * syntax whatever the bytes (NULs, 8-bit, bare CR/LF).
 *
 * A NULL tree is accepted everywhere: the function parses msg itself
 * (mime_section/mime_binary, which know the length) or answers as for an
 * empty message.
 */
#ifndef HV_MIME_H
#define HV_MIME_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Bounds on the work one message can cause. A zero field (or NULL) takes
 * the default. Beyond max_depth / max_parts a multipart or message/rfc822
 * part is not opened: it becomes one opaque application/octet-stream part;
 * once max_parts parts exist, further delimiters are content of the last
 * part. Header fields past max_header_bytes of a header are ignored (the
 * header still ends at its blank line). */
typedef struct mime_limits {
    unsigned max_depth;        /* default 100 nested multipart/message levels */
    unsigned max_parts;        /* default 10000 parts in the whole tree */
    unsigned max_header_bytes; /* default 1 MiB per header */
} mime_limits;

#define MIME_DEFAULT_MAX_DEPTH 100u
#define MIME_DEFAULT_MAX_PARTS 10000u
#define MIME_DEFAULT_MAX_HEADER (1024u * 1024u)

typedef struct mime_part mime_part;

/* Parses msg[0..len). Never fails on content; aborts on out-of-memory
 * like buf does, so the result is never NULL. msg may be NULL when len
 * is 0. Free with mime_free. */
mime_part *mime_parse(const char *msg, size_t len, const mime_limits *lim);
void mime_free(mime_part *root);

/* Number of parts in the tree (the message itself counts as one). */
unsigned mime_part_count(const mime_part *root);

/* The IMAP strings, appended to out exactly as they follow "ENVELOPE ",
 * "BODY " or "BODYSTRUCTURE ". Header values in ENVELOPE are raw (encoded
 * words stay encoded, as IMAP requires), unfolded and trimmed; strings
 * that cannot be quoted (8-bit, CR, LF, long) are literals; NUL bytes,
 * which IMAP cannot carry in a string, are dropped. */
void mime_envelope(const mime_part *root, const char *msg, buf *out);
void mime_bodystructure(const mime_part *root, const char *msg, int extended, buf *out);

/* BODY[section]: section is the text between the brackets ("", "HEADER",
 * "TEXT", "1", "1.2.MIME", "2.HEADER.FIELDS (SUBJECT FROM)",
 * "HEADER.FIELDS.NOT (X-A)"; keywords and field names case-insensitive).
 * Appends the section's bytes (before any <partial> slicing) and returns
 * 0; -EINVAL when the spec is not valid RFC 3501 syntax (answer BAD). A
 * part that does not exist, or HEADER/TEXT on a part that is not a
 * message/rfc822, gives empty content and 0. HEADER.FIELDS[.NOT] ends
 * with the header's blank line when the header has one. */
int mime_section(const mime_part *root, const char *msg, size_t len, const char *section,
                 buf *out);

/* BINARY[section] and BINARY.SIZE[section] (RFC 3516): section is "" or
 * part numbers only. Appends the part's body with its
 * Content-Transfer-Encoding (base64, quoted-printable) undone; "" is the
 * whole message as stored. Returns 0, -EINVAL for a bad spec, -EILSEQ
 * when the part's encoding is unknown (answer NO [UNKNOWN-CTE]). */
int mime_binary(const mime_part *root, const char *msg, size_t len, const char *section,
                buf *out);

/* SEARCH HEADER/SUBJECT/FROM...: the values of header field name of the
 * top-level message, unfolded, trimmed and RFC 2047-decoded to UTF-8, all
 * occurrences joined with "\n". Returns 1 when the field is present (even
 * empty), 0 when not. */
int mime_header_value(const mime_part *root, const char *msg, const char *name, buf *out);

/* SEARCH TEXT: every header field of the top-level message as
 * "Name: decoded value\n", a "\n", then what mime_text_parts gives. */
void mime_body_text(const mime_part *root, const char *msg, buf *out);
/* SEARCH BODY: the text of every text/ part (and the decoded header of
 * every embedded message), transfer encoding undone and converted from
 * its charset to UTF-8 (glibc iconv; a charset iconv does not know is
 * passed through as bytes), each followed by "\n". */
void mime_text_parts(const mime_part *root, const char *msg, buf *out);

/* SORT/THREAD (RFC 5256). The base subject of a UTF-8 subject (as
 * mime_header_value gives it); returns 1 when a reply/forward marker was
 * removed ("Re:", "Fwd:", "(fwd)", "[fwd: ...]"), else 0. */
int mime_base_subject(const char *subject, buf *out);

/* The first mailbox (groups skipped) of header ("From", "To", "Cc"):
 * mailbox gets its addr-mailbox (the local part, unquoted; RFC 5256 SORT
 * FROM/TO/CC), display_name the RFC 5957 DISPLAY key: the display name
 * RFC 2047-decoded to UTF-8, or "local@domain" when it has none. Either
 * buf may be NULL. Returns 1 when there is such a mailbox, else 0. */
int mime_first_address(const mime_part *root, const char *msg, const char *header, buf *mailbox,
                       buf *display_name);

/* The Date: field as seconds since the epoch (RFC 5322 and its obsolete
 * forms: two-digit years, zone names, no seconds, no zone = UTC), -1 when
 * absent or unparseable. */
int64_t mime_date(const mime_part *root, const char *msg);

#endif
