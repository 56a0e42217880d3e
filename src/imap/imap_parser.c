/*
 * imap_parser.c - the resumable IMAP command parser; see imap_parser.h for
 * the API and docs/imap-parser.md for the accepted syntax.
 *
 * Every byte of command text goes through one state machine step, so a
 * command split anywhere (down to single bytes) walks the same states as
 * the whole command; only literal data and skipped data are taken in
 * spans. A token is gathered in a scratch buffer (bounded by max_line, as
 * every byte of it is command text) and copied into the command's arena
 * when it ends. Arguments wait on one stack: an open list is a placeholder
 * element, and when its ')' comes the elements above it move into the
 * arena as one array. So nothing grows beyond what the limits allow, and
 * reset frees a command in one go.
 *
 * Resynchronising after an error is the delicate part: the rest of the
 * bad line is discarded, but if that line ends with a non-synchronizing
 * literal "{n+}" the client sends n bytes of data next, which must be
 * skipped rather than read as commands. A small recognizer therefore
 * watches the tail of every line, whatever state the parser is in.
 */
#include "imap/imap_parser.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

enum pstate {
    PS_TAG,        /* reading the tag */
    PS_NAME,       /* reading the command name */
    PS_UID_SUB,    /* reading the atom after "UID" */
    PS_ARG,        /* between arguments */
    PS_ATOM,       /* inside an atom */
    PS_BRACKET,    /* inside the [...] of an atom */
    PS_QUOTED,     /* inside a quoted string */
    PS_QUOTED_ESC, /* after a backslash in a quoted string */
    PS_LIT_OPEN,   /* after "{" (or "~{") */
    PS_LIT_DIGITS, /* in the literal's size */
    PS_LIT_PLUS,   /* after "{n+" */
    PS_LIT_CLOSED, /* after "}": only the line end may follow */
    PS_CR,         /* after the CR of a good line end */
    PS_LITERAL,    /* reading literal data */
    PS_SKIP,       /* discarding {n+} data announced on a bad line */
    PS_DISCARD,    /* discarding the rest of a bad line */
    PS_DONE,
    PS_ERROR,
    PS_FATAL,      /* lost track of the stream for good */
};

/* What the LF after PS_CR completes. */
enum eol_action { EOL_COMMAND, EOL_LITERAL };

/* The tail recognizer: does the line so far end in "{digits[+]}" [CR]? */
enum tail_state { TAIL_NONE, TAIL_OPEN, TAIL_DIGITS, TAIL_PLUS, TAIL_SYNC, TAIL_NONSYNC };

/* RFC 9051 number64: sizes above this cannot be a real literal. */
#define LITERAL_SIZE_MAX ((uint64_t)INT64_MAX)

/* Most commands fit in the one chunk kept across commands; big arrays and
 * literals get a chunk of their own, freed at reset. Small sizes also let
 * the fuzz target's short inputs reach every path. */
#define ARENA_CHUNK 1024
/* Scratch memory above this is given back at reset instead of kept. */
#define KEEP_SCRATCH 1024

struct chunk {
    struct chunk *next;
    size_t cap, used;
    max_align_t data[];
};

struct imap_parser {
    imap_parser_limits lim;
    enum pstate state;
    enum eol_action eol;
    int need_sep; /* an argument just ended: SP, ')' or the line end must follow */

    struct chunk *chunks; /* the current chunk first */
    struct chunk *base;   /* the chunk kept across commands */
    imap_command cmd;
    const char *tag, *name;
    size_t text_len;     /* command text so far, checked against max_line */
    uint64_t lit_total;  /* literal data announced so far, against max_total */

    buf tok;
    int tok_tilde;       /* tok is the "~" that may start a literal8 */
    unsigned bracket_depth;
    int bracket_quote, bracket_esc;
    int bracket_plain;   /* the [ was followed by atom characters only, so far */
    unsigned utf8_need;  /* continuation bytes still due in a quoted string */
    unsigned char utf8_lo, utf8_hi;

    imap_arg *stk;       /* finished arguments and open-list placeholders */
    size_t nstk, capstk;
    size_t open;         /* index + 1 of the innermost open list, 0 if none */
    unsigned depth;
    size_t nargs;        /* arguments begun, lists and elements included */

    uint64_t lit_size;
    int lit_kind;        /* 1 {n}, 2 ~{n} */
    int lit_nonsync;
    int lit_overflow;
    char *lit_data;
    size_t lit_got;
    struct chunk *lit_chunk; /* a big literal's storage, joins the arena when whole */

    enum tail_state tail;
    uint64_t tail_size;
    int tail_overflow, tail_cr;
    uint64_t skip_left;

    char err[200];
    const char *err_tag;
    int err_set, too_big, fatal;
};

/* ---- memory ---- */

static struct chunk *chunk_new(size_t cap)
{
    struct chunk *c = malloc(sizeof(*c) + cap);
    if (!c)
        abort();
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    return c;
}

/* align is a power of two no larger than max_align_t's. */
static void *arena_alloc(imap_parser *p, size_t n, size_t align)
{
    if (n > SIZE_MAX / 2)
        abort();
    struct chunk *c = p->chunks;
    size_t at = (c->used + align - 1) & ~(align - 1);
    if (at <= c->cap && c->cap - at >= n) {
        c->used = at + n;
        return (char *)c->data + at;
    }
    if (n > ARENA_CHUNK / 4) {
        /* Behind the current chunk, so that chunk's free room stays in use. */
        struct chunk *big = chunk_new(n);
        big->used = n;
        big->next = c->next;
        c->next = big;
        return big->data;
    }
    struct chunk *fresh = chunk_new(ARENA_CHUNK);
    fresh->next = c;
    p->chunks = fresh;
    fresh->used = n;
    return fresh->data;
}

static char *arena_str(imap_parser *p, const void *s, size_t n)
{
    char *r = arena_alloc(p, n + 1, 1);
    if (n)
        memcpy(r, s, n);
    r[n] = 0;
    return r;
}

static void arena_reset(imap_parser *p)
{
    for (struct chunk *c = p->chunks, *next; c; c = next) {
        next = c->next;
        if (c != p->base)
            free(c);
    }
    p->base->next = NULL;
    p->base->used = 0;
    p->chunks = p->base;
}

static void push_arg(imap_parser *p, const imap_arg *a)
{
    if (p->nstk == p->capstk) {
        size_t cap = p->capstk ? p->capstk * 2 : 16;
        imap_arg *s = realloc(p->stk, cap * sizeof(*s));
        if (!s)
            abort();
        p->stk = s;
        p->capstk = cap;
    }
    p->stk[p->nstk++] = *a;
}

/* ---- errors ---- */

static void fail(imap_parser *p, int too_big, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the error and discards the rest of the line; the error event
 * comes when the line (and any {n+} data ending it) has been consumed. */
static void fail(imap_parser *p, int too_big, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof(p->err), fmt, ap);
    va_end(ap);
    p->err_set = 1;
    p->err_tag = p->tag;
    p->too_big = too_big;
    p->state = PS_DISCARD;
}

/* A bad line has ended (its LF consumed): skip announced {n+} data, else
 * report. */
static enum imap_parse_result line_failed(imap_parser *p)
{
    if (p->tail == TAIL_NONSYNC) {
        if (p->tail_overflow) {
            p->fatal = 1;
            p->too_big = 1;
            p->state = PS_FATAL;
            return IMAP_PARSE_ERROR;
        }
        p->skip_left = p->tail_size;
        p->state = PS_SKIP;
        return IMAP_PARSE_MORE;
    }
    p->state = PS_ERROR;
    return IMAP_PARSE_ERROR;
}

/* ---- character classes ---- */

/* RFC 3501 ATOM-CHAR: CHAR except atom-specials "(" ")" "{" SP CTL
 * list-wildcards quoted-specials resp-specials. */
static int is_atom_char(unsigned char c)
{
    if (c <= 0x20 || c >= 0x7f)
        return 0;
    return !strchr("(){%*\"\\]", c);
}

/* Arguments also take list-wildcards (LIST patterns, "1:*") and "]" (as
 * ASTRING-CHAR does). */
static int is_arg_atom_char(unsigned char c)
{
    return is_atom_char(c) || c == '%' || c == '*' || c == ']';
}

/* tag = 1*<any ASTRING-CHAR except "+"> */
static int is_tag_char(unsigned char c)
{
    return (is_atom_char(c) || c == ']') && c != '+';
}

static void tail_feed(imap_parser *p, unsigned char c)
{
    if (c == '\r') {
        if ((p->tail == TAIL_SYNC || p->tail == TAIL_NONSYNC) && !p->tail_cr)
            p->tail_cr = 1;
        else
            p->tail = TAIL_NONE;
        return;
    }
    p->tail_cr = 0;
    if (c == '{') {
        p->tail = TAIL_OPEN;
        p->tail_size = 0;
        p->tail_overflow = 0;
    } else if (c >= '0' && c <= '9' && (p->tail == TAIL_OPEN || p->tail == TAIL_DIGITS)) {
        unsigned d = c - '0';
        if (p->tail_size > (LITERAL_SIZE_MAX - d) / 10)
            p->tail_overflow = 1;
        else
            p->tail_size = p->tail_size * 10 + d;
        p->tail = TAIL_DIGITS;
    } else if (c == '+' && p->tail == TAIL_DIGITS) {
        p->tail = TAIL_PLUS;
    } else if (c == '}' && p->tail == TAIL_DIGITS) {
        p->tail = TAIL_SYNC;
    } else if (c == '}' && p->tail == TAIL_PLUS) {
        p->tail = TAIL_NONSYNC;
    } else {
        p->tail = TAIL_NONE;
    }
}

/* ---- arguments ---- */

/* Counts an argument before any of it is kept. */
static int begin_arg(imap_parser *p)
{
    if (p->need_sep) {
        fail(p, 0, "expected a space between arguments");
        return -1;
    }
    if (p->nargs >= p->lim.max_args) {
        fail(p, 1, "too many arguments (the limit is %u)", p->lim.max_args);
        return -1;
    }
    p->nargs++;
    return 0;
}

static void end_arg(imap_parser *p, imap_arg_type type, const char *s, size_t len, int literal)
{
    imap_arg a = {.type = type, .str = s, .len = len, .literal = literal};
    push_arg(p, &a);
    p->need_sep = 1;
    p->state = PS_ARG;
}

static void finish_atom(imap_parser *p)
{
    const char *t = (const char *)p->tok.data;
    size_t n = p->tok.len;
    int nil = n == 3 && (t[0] | 0x20) == 'n' && (t[1] | 0x20) == 'i' && (t[2] | 0x20) == 'l';
    end_arg(p, nil ? IMAP_ARG_NIL : IMAP_ARG_ATOM, arena_str(p, t, n), n, 0);
    buf_reset(&p->tok);
    p->tok_tilde = 0;
}

static void open_list(imap_parser *p)
{
    if (begin_arg(p) < 0)
        return;
    if (p->depth >= p->lim.max_depth) {
        fail(p, 1, "lists nested too deeply (the limit is %u)", p->lim.max_depth);
        return;
    }
    /* The placeholder remembers the enclosing list in nlist until it closes. */
    imap_arg a = {.type = IMAP_ARG_LIST, .nlist = p->open};
    push_arg(p, &a);
    p->open = p->nstk;
    p->depth++;
    p->state = PS_ARG;
}

static void close_list(imap_parser *p)
{
    if (!p->depth) {
        fail(p, 0, "unexpected )");
        return;
    }
    size_t k = p->open - 1;
    size_t n = p->nstk - p->open;
    imap_arg *elems = NULL;
    if (n) {
        elems = arena_alloc(p, n * sizeof(*elems), _Alignof(imap_arg));
        memcpy(elems, p->stk + p->open, n * sizeof(*elems));
    }
    p->open = p->stk[k].nlist;
    p->stk[k].list = elems;
    p->stk[k].nlist = n;
    p->nstk = k + 1;
    p->depth--;
    p->need_sep = 1;
    p->state = PS_ARG;
}

static void upcase(buf *b)
{
    for (size_t i = 0; i < b->len; i++)
        if (b->data[i] >= 'a' && b->data[i] <= 'z')
            b->data[i] -= 'a' - 'A';
}

static void finish_name(imap_parser *p)
{
    upcase(&p->tok);
    p->name = arena_str(p, p->tok.data, p->tok.len);
    p->state = strcmp(p->name, "UID") == 0 ? PS_UID_SUB : PS_ARG;
    buf_reset(&p->tok);
}

static void finish_uid_sub(imap_parser *p)
{
    upcase(&p->tok);
    char *n = arena_alloc(p, 4 + p->tok.len + 1, 1);
    memcpy(n, "UID ", 4);
    memcpy(n + 4, p->tok.data, p->tok.len);
    n[4 + p->tok.len] = 0;
    p->name = n;
    p->state = PS_ARG;
    buf_reset(&p->tok);
}

static void start_literal(imap_parser *p, int kind)
{
    p->lit_kind = kind;
    p->lit_size = 0;
    p->lit_nonsync = 0;
    p->lit_overflow = 0;
    p->state = PS_LIT_OPEN;
}

/* Room for the next n bytes of the literal. A big literal grows with the
 * data that has arrived, so an announced 64 MiB costs nothing until it is
 * actually sent. */
static char *literal_room(imap_parser *p, size_t n)
{
    size_t total = (size_t)p->lit_size + 1;
    if (total <= ARENA_CHUNK / 4) {
        if (!p->lit_data)
            p->lit_data = arena_alloc(p, total, 1);
        return p->lit_data + p->lit_got;
    }
    size_t need = p->lit_got + n + 1;
    struct chunk *c = p->lit_chunk;
    if (!c || c->cap < need) {
        size_t cap = !c ? 0 : c->cap;
        cap = cap < 65536 ? 65536 : cap * 2;
        if (cap < need)
            cap = need;
        if (cap > total)
            cap = total;
        c = realloc(c, sizeof(*c) + cap);
        if (!c)
            abort();
        c->next = NULL;
        c->cap = c->used = cap;
        p->lit_chunk = c;
        p->lit_data = (char *)c->data;
    }
    return p->lit_data + p->lit_got;
}

static void literal_done(imap_parser *p)
{
    if (p->lit_chunk) {
        p->lit_chunk->next = p->chunks->next;
        p->chunks->next = p->lit_chunk;
        p->lit_chunk = NULL;
    }
    if (!p->lit_data)
        p->lit_data = arena_alloc(p, 1, 1);
    p->lit_data[p->lit_size] = 0;
    end_arg(p, IMAP_ARG_STRING, p->lit_data, (size_t)p->lit_size, p->lit_kind);
    p->lit_data = NULL;
    p->lit_got = 0;
}

/* ---- the state machine ---- */

static void quoted_byte(imap_parser *p, unsigned char c)
{
    if (p->utf8_need) {
        if (c < p->utf8_lo || c > p->utf8_hi) {
            fail(p, 0, "invalid UTF-8 in quoted string");
            return;
        }
        p->utf8_need--;
        p->utf8_lo = 0x80;
        p->utf8_hi = 0xbf;
        buf_put_u8(&p->tok, c);
        return;
    }
    if (c == '"') {
        end_arg(p, IMAP_ARG_STRING, arena_str(p, p->tok.data, p->tok.len), p->tok.len, 0);
        buf_reset(&p->tok);
        return;
    }
    if (c == '\\') {
        p->state = PS_QUOTED_ESC;
        return;
    }
    if (c == 0) {
        fail(p, 0, "NUL in quoted string");
        return;
    }
    if (c >= 0x80) {
        /* UTF-8 (RFC 3629 well-formed: no overlongs, no surrogates) for
         * IMAP4rev2 and UTF8=ACCEPT; whether 8-bit is welcome in this
         * argument is the command's business. */
        p->utf8_lo = 0x80;
        p->utf8_hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            p->utf8_need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            p->utf8_need = 2;
            if (c == 0xe0)
                p->utf8_lo = 0xa0;
            else if (c == 0xed)
                p->utf8_hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            p->utf8_need = 3;
            if (c == 0xf0)
                p->utf8_lo = 0x90;
            else if (c == 0xf4)
                p->utf8_hi = 0x8f;
        } else {
            fail(p, 0, "invalid UTF-8 in quoted string");
            return;
        }
    }
    buf_put_u8(&p->tok, c);
}

static void bracket_byte(imap_parser *p, unsigned char c)
{
    if (c < 0x20 || c >= 0x7f) {
        fail(p, 0, "invalid character inside [ ] of an atom");
        return;
    }
    buf_put_u8(&p->tok, c);
    p->bracket_plain = p->bracket_plain && is_arg_atom_char(c);
    if (p->bracket_quote) {
        if (p->bracket_esc)
            p->bracket_esc = 0;
        else if (c == '\\')
            p->bracket_esc = 1;
        else if (c == '"')
            p->bracket_quote = 0;
    } else if (c == '"') {
        p->bracket_quote = 1;
    } else if (c == '[') {
        p->bracket_depth++;
    } else if (c == ']' && --p->bracket_depth == 0) {
        p->state = PS_ATOM;
    }
}

/* The first byte of an argument (after any spaces). */
static void arg_byte(imap_parser *p, unsigned char c)
{
    if (c == ' ') {
        p->need_sep = 0;
        return;
    }
    if (c == ')') {
        close_list(p);
        return;
    }
    if (c == '(') {
        open_list(p);
        return;
    }
    if (c != '"' && c != '{' && c != '\\' && !is_arg_atom_char(c)) {
        fail(p, 0, "invalid character 0x%02x", c);
        return;
    }
    if (begin_arg(p) < 0)
        return;
    if (c == '"') {
        p->utf8_need = 0;
        p->state = PS_QUOTED;
    } else if (c == '{') {
        start_literal(p, 1);
    } else {
        /* An atom; a leading backslash makes a flag (\Seen, \*), a
         * leading ~ may still turn out to start a literal8. */
        buf_put_u8(&p->tok, c);
        p->tok_tilde = c == '~';
        if (c == '[') {
            p->bracket_depth = 1;
            p->bracket_quote = p->bracket_esc = 0;
            p->bracket_plain = 1;
            p->state = PS_BRACKET;
        } else {
            p->state = PS_ATOM;
        }
    }
}

static void atom_byte(imap_parser *p, unsigned char c)
{
    if (c == ' ') {
        finish_atom(p);
        p->need_sep = 0;
        return;
    }
    if (c == ')') {
        finish_atom(p);
        close_list(p);
        return;
    }
    if (c == '{' && p->tok_tilde) {
        buf_reset(&p->tok);
        p->tok_tilde = 0;
        start_literal(p, 2);
        return;
    }
    p->tok_tilde = 0;
    if (c == '[') {
        buf_put_u8(&p->tok, c);
        p->bracket_depth = 1;
        p->bracket_quote = p->bracket_esc = 0;
        p->bracket_plain = 1;
        p->state = PS_BRACKET;
        return;
    }
    if (!is_arg_atom_char(c)) {
        fail(p, 0, "invalid character 0x%02x in atom", c);
        return;
    }
    buf_put_u8(&p->tok, c);
}

static void literal_size_byte(imap_parser *p, unsigned char c)
{
    if (c >= '0' && c <= '9' && (p->state == PS_LIT_OPEN || p->state == PS_LIT_DIGITS)) {
        unsigned d = c - '0';
        if (p->lit_size > (LITERAL_SIZE_MAX - d) / 10)
            p->lit_overflow = 1;
        else
            p->lit_size = p->lit_size * 10 + d;
        p->state = PS_LIT_DIGITS;
    } else if (c == '+' && p->state == PS_LIT_DIGITS) {
        p->lit_nonsync = 1;
        p->state = PS_LIT_PLUS;
    } else if (c == '}' && (p->state == PS_LIT_DIGITS || p->state == PS_LIT_PLUS)) {
        p->state = PS_LIT_CLOSED;
    } else if (p->state == PS_LIT_CLOSED) {
        fail(p, 0, "a literal's size must end its line");
    } else {
        fail(p, 0, "bad literal syntax");
    }
}

/* One byte of command text that is neither CR nor LF. */
static void step(imap_parser *p, unsigned char c)
{
    switch (p->state) {
    case PS_TAG:
        if (c == ' ') {
            if (!p->tok.len) {
                fail(p, 0, "missing tag");
                return;
            }
            p->tag = arena_str(p, p->tok.data, p->tok.len);
            buf_reset(&p->tok);
            p->state = PS_NAME;
        } else if (is_tag_char(c)) {
            buf_put_u8(&p->tok, c);
        } else {
            fail(p, 0, "invalid character 0x%02x in tag", c);
        }
        return;
    case PS_NAME:
    case PS_UID_SUB:
        if (c == ' ') {
            if (!p->tok.len)
                return; /* extra spaces are forgiven, as between arguments */
            if (p->state == PS_NAME)
                finish_name(p);
            else
                finish_uid_sub(p);
        } else if (is_atom_char(c)) {
            buf_put_u8(&p->tok, c);
        } else {
            fail(p, 0, "invalid character 0x%02x in command name", c);
        }
        return;
    case PS_ARG:
        arg_byte(p, c);
        return;
    case PS_ATOM:
        atom_byte(p, c);
        return;
    case PS_BRACKET:
        bracket_byte(p, c);
        return;
    case PS_QUOTED:
        quoted_byte(p, c);
        return;
    case PS_QUOTED_ESC:
        if (c == '"' || c == '\\') {
            buf_put_u8(&p->tok, c);
            p->state = PS_QUOTED;
        } else {
            fail(p, 0, "invalid escape \\%c in quoted string", c >= 0x21 && c < 0x7f ? c : '?');
        }
        return;
    case PS_LIT_OPEN:
    case PS_LIT_DIGITS:
    case PS_LIT_PLUS:
    case PS_LIT_CLOSED:
        literal_size_byte(p, c);
        return;
    case PS_CR:
        fail(p, 0, "CR not followed by LF");
        return;
    default:
        return; /* PS_DISCARD */
    }
}

/* A CR or LF: the line ends here (PS_CR), or it is an error. */
static void eol_begin(imap_parser *p)
{
    switch (p->state) {
    case PS_TAG:
        if (!p->tok.len) {
            fail(p, 0, "empty command line");
        } else {
            p->tag = arena_str(p, p->tok.data, p->tok.len);
            fail(p, 0, "missing command name");
        }
        return;
    case PS_NAME:
        if (!p->tok.len) {
            fail(p, 0, "missing command name");
            return;
        }
        finish_name(p);
        break;
    case PS_UID_SUB:
        if (p->tok.len)
            finish_uid_sub(p);
        break;
    case PS_ARG:
        break;
    case PS_ATOM:
        finish_atom(p);
        break;
    case PS_BRACKET:
        /* "[" is an ATOM-CHAR: an atom like "foo[bar" is plain RFC syntax,
         * not an unfinished BODY[...]. */
        if (!p->bracket_plain) {
            fail(p, 0, "unterminated [ in atom");
            return;
        }
        finish_atom(p);
        break;
    case PS_QUOTED:
    case PS_QUOTED_ESC:
        fail(p, 0, "unterminated quoted string");
        return;
    case PS_LIT_CLOSED:
        p->eol = EOL_LITERAL;
        p->state = PS_CR;
        return;
    case PS_CR:
        fail(p, 0, "CR not followed by LF");
        return;
    default: /* PS_LIT_OPEN, PS_LIT_DIGITS, PS_LIT_PLUS */
        fail(p, 0, "bad literal syntax");
        return;
    }
    if (p->depth) {
        fail(p, 0, "unclosed ( at the end of the line");
        return;
    }
    p->eol = EOL_COMMAND;
    p->state = PS_CR;
}

/* The LF of a good line end. */
static enum imap_parse_result eol_finish(imap_parser *p)
{
    if (p->eol == EOL_COMMAND) {
        p->cmd.tag = p->tag;
        p->cmd.name = p->name;
        p->cmd.nargs = p->nstk;
        p->cmd.args = NULL;
        if (p->nstk) {
            p->cmd.args = arena_alloc(p, p->nstk * sizeof(imap_arg), _Alignof(imap_arg));
            memcpy(p->cmd.args, p->stk, p->nstk * sizeof(imap_arg));
        }
        p->nstk = 0;
        p->state = PS_DONE;
        return IMAP_PARSE_DONE;
    }
    size_t limit = p->lim.max_literal;
    if (p->lit_nonsync && p->lim.max_literal_nonsync < limit)
        limit = p->lim.max_literal_nonsync;
    if (p->lit_overflow || p->lit_size > limit) {
        if (p->lit_overflow)
            fail(p, 1, "literal size out of range");
        else
            fail(p, 1, "literal of %llu bytes is over the limit of %zu",
                 (unsigned long long)p->lit_size, limit);
        return line_failed(p);
    }
    if (p->lit_total > p->lim.max_total || p->lit_size > p->lim.max_total - p->lit_total) {
        fail(p, 1, "the command's literals are over the limit of %zu bytes", p->lim.max_total);
        return line_failed(p);
    }
    p->lit_total += p->lit_size;
    p->lit_data = NULL;
    p->lit_got = 0;
    p->state = PS_LITERAL;
    return p->lit_nonsync ? IMAP_PARSE_MORE : IMAP_PARSE_CONTINUE;
}

/* One byte of command text, CR and LF included. */
static enum imap_parse_result text_byte(imap_parser *p, unsigned char c)
{
    if (c == '\n') {
        if (p->state != PS_CR && p->state != PS_DISCARD)
            eol_begin(p);
        enum imap_parse_result r = p->state == PS_CR ? eol_finish(p) : line_failed(p);
        p->tail = TAIL_NONE;
        p->tail_cr = 0;
        return r;
    }
    tail_feed(p, c);
    if (p->state == PS_DISCARD)
        return IMAP_PARSE_MORE;
    if (c == '\r') {
        eol_begin(p);
        return IMAP_PARSE_MORE;
    }
    if (++p->text_len > p->lim.max_line) {
        fail(p, 1, "command line too long (the limit is %zu bytes)", p->lim.max_line);
        return IMAP_PARSE_MORE;
    }
    step(p, c);
    return IMAP_PARSE_MORE;
}

enum imap_parse_result imap_parser_feed(imap_parser *p, const char *data, size_t len, size_t *used)
{
    size_t i = 0;
    enum imap_parse_result r = IMAP_PARSE_MORE;
    for (;;) {
        if (p->state == PS_DONE) {
            r = IMAP_PARSE_DONE;
            break;
        }
        if (p->state == PS_ERROR) {
            r = IMAP_PARSE_ERROR;
            break;
        }
        if (p->state == PS_FATAL) {
            i = len;
            r = IMAP_PARSE_ERROR;
            break;
        }
        if (p->state == PS_LITERAL) {
            size_t want = (size_t)p->lit_size - p->lit_got;
            size_t n = len - i < want ? len - i : want;
            if (n)
                memcpy(literal_room(p, n), data + i, n);
            p->lit_got += n;
            i += n;
            if (p->lit_got < p->lit_size)
                break;
            literal_done(p);
            continue;
        }
        if (p->state == PS_SKIP) {
            uint64_t n = len - i < p->skip_left ? len - i : p->skip_left;
            i += (size_t)n;
            p->skip_left -= n;
            if (p->skip_left)
                break;
            p->state = PS_DISCARD; /* the rest of the line after the data */
            continue;
        }
        if (i == len)
            break;
        r = text_byte(p, (unsigned char)data[i++]);
        if (r != IMAP_PARSE_MORE)
            break;
    }
    *used = i;
    return r;
}

/* ---- the rest of the API ---- */

void imap_parser_limits_default(imap_parser_limits *lim)
{
    if (!lim->max_line)
        lim->max_line = IMAP_PARSER_DEFAULT_MAX_LINE;
    if (!lim->max_literal)
        lim->max_literal = IMAP_PARSER_DEFAULT_MAX_LITERAL;
    if (!lim->max_total)
        lim->max_total = IMAP_PARSER_DEFAULT_MAX_TOTAL;
    if (!lim->max_depth)
        lim->max_depth = IMAP_PARSER_DEFAULT_MAX_DEPTH;
    if (!lim->max_args)
        lim->max_args = IMAP_PARSER_DEFAULT_MAX_ARGS;
    if (!lim->max_literal_nonsync || lim->max_literal_nonsync > lim->max_literal)
        lim->max_literal_nonsync = lim->max_literal;
}

void imap_parser_set_limits(imap_parser *p, const imap_parser_limits *lim)
{
    imap_parser_limits l = {0};
    if (lim)
        l = *lim;
    imap_parser_limits_default(&l);
    p->lim = l;
}

imap_parser *imap_parser_new(const imap_parser_limits *lim)
{
    imap_parser *p = calloc(1, sizeof(*p));
    if (!p)
        abort();
    imap_parser_set_limits(p, lim);
    p->chunks = p->base = chunk_new(ARENA_CHUNK);
    buf_init(&p->tok);
    p->state = PS_TAG;
    return p;
}

void imap_parser_free(imap_parser *p)
{
    if (!p)
        return;
    arena_reset(p);
    free(p->base);
    free(p->lit_chunk);
    buf_free(&p->tok);
    free(p->stk);
    free(p);
}

void imap_parser_reset(imap_parser *p)
{
    arena_reset(p);
    if (p->tok.cap > KEEP_SCRATCH)
        buf_free(&p->tok);
    buf_reset(&p->tok);
    if (p->capstk * sizeof(imap_arg) > KEEP_SCRATCH) {
        free(p->stk);
        p->stk = NULL;
        p->capstk = 0;
    }
    p->nstk = 0;
    p->open = 0;
    p->depth = 0;
    p->nargs = 0;
    p->need_sep = 0;
    memset(&p->cmd, 0, sizeof(p->cmd));
    p->tag = p->name = NULL;
    p->text_len = 0;
    p->lit_total = 0;
    p->tok_tilde = 0;
    free(p->lit_chunk);
    p->lit_chunk = NULL;
    p->lit_data = NULL;
    p->lit_got = 0;
    p->lit_size = 0;
    p->tail = TAIL_NONE;
    p->tail_cr = 0;
    p->skip_left = 0;
    if (p->fatal) {
        /* The stream position is unknown: stay failed, keep the reason. */
        p->err_tag = NULL;
        p->state = PS_FATAL;
        return;
    }
    p->err[0] = 0;
    p->err_tag = NULL;
    p->err_set = p->too_big = 0;
    p->state = PS_TAG;
}

const imap_command *imap_parser_command(imap_parser *p)
{
    return p->state == PS_DONE ? &p->cmd : NULL;
}

const char *imap_parser_tag(imap_parser *p) { return p->tag; }
const char *imap_parser_name(imap_parser *p) { return p->name; }

const char *imap_parser_error(imap_parser *p, const char **tag_out)
{
    if (tag_out)
        *tag_out = p->err_set ? p->err_tag : NULL;
    return p->err_set ? p->err : NULL;
}

int imap_parser_error_too_big(imap_parser *p) { return p->err_set && p->too_big; }
int imap_parser_error_fatal(imap_parser *p) { return p->fatal; }

static int at_continue(const imap_parser *p)
{
    return p->state == PS_LITERAL && !p->lit_nonsync && p->lit_got == 0;
}

size_t imap_parser_pending_literal(imap_parser *p)
{
    return at_continue(p) ? (size_t)p->lit_size : 0;
}

void imap_parser_refuse_literal(imap_parser *p)
{
    if (!at_continue(p))
        return;
    snprintf(p->err, sizeof(p->err), "literal refused");
    p->err_set = 1;
    p->err_tag = p->tag;
    p->too_big = 1;
    p->state = PS_ERROR;
}
