/*
 * mime_internal.h - what the mime_*.c files share: the part tree's layout,
 * header field iteration, structured-field lexing, decoders and IMAP
 * string output. Not for use outside src/imap/mime_*.c.
 *
 * The tree is one array of parts in document order (pre-order), linked by
 * indices; the root is element 0, so freeing the root frees the tree.
 * Every part has a MIME header [start, hdr_end) and a body [hdr_end, end).
 * A message/rfc822 part has exactly one child, the embedded message, which
 * spans the part's body.
 */
#ifndef HV_MIME_INTERNAL_H
#define HV_MIME_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "imap/mime.h"
#include "lib/buf.h"

#define MIME_NONE UINT32_MAX

/* The header fields the parser remembers (first occurrence). */
enum mime_field_id { MF_CTYPE, MF_CTE, MF_ID, MF_DESC, MF_MD5, MF_DISP, MF_LANG, MF_LOC, MF_COUNT };

/* A field value in the message: off is never 0 for a present value (a
 * value follows "X:"), so off == 0 means absent. */
typedef struct mime_span {
    size_t off, len;
} mime_span;

enum mime_kind { MIME_LEAF, MIME_MULTIPART, MIME_MESSAGE };
/* How a part is shown: as its header says, or replaced because it could
 * not be opened (broken multipart: text/plain; over a limit: opaque). */
enum mime_shape { MIME_AS_DECLARED, MIME_BROKEN_TEXT, MIME_OPAQUE };
enum mime_ct { MIME_CT_TEXT, MIME_CT_MULTIPART, MIME_CT_RFC822, MIME_CT_OTHER };
enum mime_cte { MIME_CTE_7BIT, MIME_CTE_8BIT, MIME_CTE_BINARY, MIME_CTE_BASE64, MIME_CTE_QP,
                MIME_CTE_UNKNOWN };

struct mime_part {
    size_t start;      /* first byte of the MIME header */
    size_t hdr_end;    /* end of the header, blank line included = body start */
    size_t end;        /* end of the body */
    size_t fields_end; /* header fields are read from [start, fields_end) */
    mime_span f[MF_COUNT];
    uint32_t parent, first_child, next, nchildren, depth;
    uint32_t count;      /* root only: parts in the array */
    uint8_t kind;        /* enum mime_kind */
    uint8_t shape;       /* enum mime_shape */
    uint8_t ct;          /* enum mime_ct: the effective media type class */
    uint8_t ct_declared; /* Content-Type was valid: its tokens are the type */
    uint8_t cte;         /* enum mime_cte */
    uint8_t blank;       /* the header ended with a blank line */
};

static inline const mime_part *mime_node(const mime_part *root, uint32_t i) { return root + i; }

/* A part shown as text (BODYSTRUCTURE lines, SEARCH text). */
static inline int mime_is_text_leaf(const mime_part *p)
{
    return p->kind == MIME_LEAF &&
           (p->shape == MIME_BROKEN_TEXT || (p->shape == MIME_AS_DECLARED && p->ct == MIME_CT_TEXT));
}

/* --- header fields (mime_parse.c) --- */

typedef struct mime_field {
    size_t name, name_len;   /* the field name, trailing blanks cut */
    size_t value, value_len; /* after the colon to the end of the last line, EOL excluded */
    size_t end;              /* after the EOL of the field's last line */
} mime_field;

typedef struct mime_hdr_iter {
    const uint8_t *m;
    size_t pos, end;
} mime_hdr_iter;

void mime_hdr_iter_init(mime_hdr_iter *it, const uint8_t *m, const mime_part *p);
int mime_hdr_next(mime_hdr_iter *it, mime_field *f);
/* Length of the field name on a line when it is a header field line
 * (name of printable ASCII, optional blanks, colon), else -1; *colon gets
 * the index of the colon. */
long mime_field_line(const uint8_t *p, size_t n, size_t *colon);
int mime_name_eq(const uint8_t *p, size_t n, const char *name);
/* Finds the first field called name in part p's header. */
int mime_find_field(const uint8_t *m, const mime_part *p, const char *name, mime_span *val);

/* --- structured field values (mime_field.c) --- */

static inline int mime_is_wsp(uint8_t c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }
size_t mime_skip_cfws(const uint8_t *m, size_t i, size_t end);
/* Splits a Content-Type value; returns 1 when type "/" subtype is valid. */
int mime_ctype_split(const uint8_t *m, mime_span v, mime_span *type, mime_span *sub,
                     size_t *params);
/* The first token of a value (Content-Transfer-Encoding, disposition). */
int mime_first_token(const uint8_t *m, mime_span v, mime_span *tok, size_t *after);
int mime_span_eq(const uint8_t *m, mime_span s, const char *lit);
enum mime_cte mime_cte_parse(const uint8_t *m, mime_span v);
/* Parameters of a Content-Type/Disposition value from params to end, RFC
 * 2231 continuations joined and charset'lang'values decoded to UTF-8. The
 * callback gets each parameter once, in order of first appearance. */
typedef void (*mime_param_cb)(void *ctx, const uint8_t *name, size_t nlen, const uint8_t *val,
                              size_t vlen);
void mime_params_each(const uint8_t *m, size_t params, size_t end, mime_param_cb cb, void *ctx);
int mime_param_get(const uint8_t *m, size_t params, size_t end, const char *name, buf *out);
/* Appends p[0..n) unfolded (line breaks removed) and trimmed of blanks. */
void mime_unfold(const uint8_t *p, size_t n, buf *out);

/* --- decoding (mime_decode.c) --- */

void mime_decode_base64(const uint8_t *p, size_t n, buf *out);
void mime_decode_qp(const uint8_t *p, size_t n, buf *out);
/* Decodes RFC 2047 encoded words in already unfolded text. */
void mime_decode_2047(const uint8_t *p, size_t n, buf *out);
void mime_to_utf8(const uint8_t *cs, size_t cslen, const uint8_t *p, size_t n, buf *out);

/* --- IMAP output (mime_envelope.c) --- */

void mime_put_string(buf *out, const uint8_t *p, size_t n);
void mime_put_nstring(buf *out, const uint8_t *p, size_t n); /* NIL when n == 0 */
void mime_put_upper(buf *out, const uint8_t *p, size_t n);  /* a string, upper-cased */
/* The ENVELOPE of the message whose header is part p's. */
void mime_envelope_of(const uint8_t *m, const mime_part *p, buf *out);

/* An empty message's tree, for functions given a NULL root. */
const mime_part *mime_empty_tree(void);

#endif
