/*
 * test_imap_parser.c - the IMAP command parser: every syntax form, the
 * errors and limits, and resynchronisation after them.
 *
 * Each case is an input and the transcript of events it must produce (one
 * line per event, see transcript()). Every case is fed whole, one byte at
 * a time and in several other chunk sizes, and all must give the same
 * transcript; the inputs are also fed again as one concatenated stream.
 */
#include <stdlib.h>
#include <string.h>

#include "imap/imap_parser.h"
#include "lib/buf.h"
#include "testlib.h"

static void put_bytes(buf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            buf_printf(out, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            buf_put_u8(out, c);
        else
            buf_printf(out, "\\x%02x", c);
    }
}

static void put_args(buf *out, const imap_arg *a, size_t n)
{
    for (size_t i = 0; i < n; i++, a++) {
        if (i)
            buf_put_u8(out, ' ');
        switch (a->type) {
        case IMAP_ARG_ATOM:
            buf_append(out, a->str, a->len);
            break;
        case IMAP_ARG_NIL:
            buf_append_str(out, "NIL");
            break;
        case IMAP_ARG_STRING:
            if (a->literal)
                buf_printf(out, "%s{%zu}", a->literal == 2 ? "~" : "", a->len);
            buf_put_u8(out, '"');
            put_bytes(out, a->str, a->len);
            buf_put_u8(out, '"');
            break;
        case IMAP_ARG_LIST:
            buf_put_u8(out, '(');
            put_args(out, a->list, a->nlist);
            buf_put_u8(out, ')');
            break;
        }
    }
}

/* Feeds in chunks of `chunk` bytes (0: all at once), sending "+" at each
 * CONTINUE unless bit k of `refuse` says to refuse the k-th literal, and
 * writes one line per event:
 *   DONE tag NAME args        CONT n        ERR tag|- [big] [fatal] reason
 * and PARTIAL when input ends inside a command. */
static void transcript(const char *in, size_t len, size_t chunk, unsigned refuse,
                       const imap_parser_limits *lim, buf *out)
{
    imap_parser *p = imap_parser_new(lim);
    size_t pos = 0, since_event = 0;
    unsigned conts = 0;
    buf_reset(out);
    while (pos < len) {
        size_t n = chunk && len - pos > chunk ? chunk : len - pos;
        size_t used = 0;
        enum imap_parse_result r = imap_parser_feed(p, in + pos, n, &used);
        pos += used;
        since_event += used;
        if (r == IMAP_PARSE_MORE)
            continue;
        since_event = 0;
        if (r == IMAP_PARSE_CONTINUE) {
            buf_printf(out, "CONT %zu\n", imap_parser_pending_literal(p));
            if (refuse & (1u << (conts++ & 31)))
                imap_parser_refuse_literal(p);
            else
                continue;
        }
        const imap_command *c = imap_parser_command(p);
        if (c) {
            buf_printf(out, "DONE %s %s", c->tag, c->name);
            if (c->nargs)
                buf_put_u8(out, ' ');
            put_args(out, c->args, c->nargs);
            buf_put_u8(out, '\n');
        } else {
            const char *tag;
            const char *why = imap_parser_error(p, &tag);
            buf_printf(out, "ERR %s %s%s%s\n", tag ? tag : "-",
                       imap_parser_error_too_big(p) ? "big " : "",
                       imap_parser_error_fatal(p) ? "fatal " : "", why ? why : "?");
            if (imap_parser_error_fatal(p))
                break;
        }
        imap_parser_reset(p);
    }
    if (since_event)
        buf_append_str(out, "PARTIAL\n");
    imap_parser_free(p);
}

/* Inputs with default limits and no refusals, for the concatenated run. */
static buf all_inputs;

static const size_t chunks[] = {0, 1, 2, 3, 5, 7, 64};

/* Runs the input at every chunk size; returns NULL or what went wrong. */
static const char *check_case(const imap_parser_limits *lim, unsigned refuse, const char *in,
                              size_t len, const char *want, buf *got)
{
    static char why[160];
    buf first;
    buf_init(&first);
    transcript(in, len, 0, refuse, lim, &first);
    buf_reset(got);
    buf_append(got, first.data, first.len);
    if (strcmp((const char *)first.data, want) != 0) {
        buf_free(&first);
        return "whole input";
    }
    for (size_t i = 1; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
        transcript(in, len, chunks[i], refuse, lim, got);
        if (strcmp((const char *)got->data, (const char *)first.data) != 0) {
            snprintf(why, sizeof(why), "chunks of %zu differ from the whole input", chunks[i]);
            buf_free(&first);
            return why;
        }
    }
    if (!lim && !refuse && !strstr(want, "PARTIAL") && !strstr(want, "fatal"))
        buf_append(&all_inputs, in, len);
    buf_free(&first);
    return NULL;
}

#define EXPECT_LIM(lim, refuse, in, want)                                              \
    do {                                                                               \
        buf got_;                                                                      \
        buf_init(&got_);                                                               \
        const char *why_ = check_case(lim, refuse, in, sizeof(in) - 1, want, &got_);   \
        if (why_) {                                                                    \
            fprintf(stderr, "  input:\n%s\n  want:\n%s  got:\n%s", in, want,           \
                    (const char *)got_.data);                                          \
            buf_free(&got_);                                                           \
        }                                                                              \
        CHECKM(!why_, "%s", why_);                                                     \
        buf_free(&got_);                                                               \
    } while (0)

#define EXPECT(in, want) EXPECT_LIM(NULL, 0, in, want)

TEST(simple_commands)
{
    EXPECT("a NOOP\r\n", "DONE a NOOP\n");
    EXPECT("a1 noop\r\n", "DONE a1 NOOP\n");
    EXPECT("A.7] Select INBOX\r\n", "DONE A.7] SELECT INBOX\n");
    EXPECT("a NOOP\n", "DONE a NOOP\n");                 /* bare LF */
    EXPECT("a  NOOP  x  \r\n", "DONE a NOOP x\n");       /* extra spaces forgiven */
    EXPECT("a NOOP", "PARTIAL\n");
    EXPECT("a NOOP\r", "PARTIAL\n");
}

TEST(uid_joins_the_next_atom)
{
    EXPECT("a uid fetch 1:* FLAGS\r\n", "DONE a UID FETCH 1:* FLAGS\n");
    EXPECT("a UID Store 1 +FLAGS (\\Seen)\r\n", "DONE a UID STORE 1 +FLAGS (\\Seen)\n");
    EXPECT("a UID EXPUNGE\r\n", "DONE a UID EXPUNGE\n");
    EXPECT("a UID\r\n", "DONE a UID\n");
    EXPECT("a UID \r\n", "DONE a UID\n");
}

TEST(atoms_and_sequence_sets)
{
    EXPECT("a FETCH 1:*,5,7:9 FLAGS\r\n", "DONE a FETCH 1:*,5,7:9 FLAGS\n");
    EXPECT("a SEARCH $ UID 1:3 SINCE 1-Feb-2024\r\n",
           "DONE a SEARCH $ UID 1:3 SINCE 1-Feb-2024\n");
    EXPECT("a LIST \"\" *\r\n", "DONE a LIST \"\" *\n");
    EXPECT("a LIST \"\" %/a]b\r\n", "DONE a LIST \"\" %/a]b\n");
    EXPECT("a X ~foo ~\r\n", "DONE a X ~foo ~\n");
    EXPECT("a X +FLAGS.SILENT -x\r\n", "DONE a X +FLAGS.SILENT -x\n");
}

TEST(nil_in_any_case)
{
    EXPECT("a X NIL nil Nil \"NIL\" NILS\r\n", "DONE a X NIL NIL NIL \"NIL\" NILS\n");
    /* NIL keeps its text, for commands that read it as an astring. */
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    CHECK(imap_parser_feed(p, "a SELECT nil\r\n", 14, &used) == IMAP_PARSE_DONE);
    const imap_command *c = imap_parser_command(p);
    CHECK(c->nargs == 1 && c->args[0].type == IMAP_ARG_NIL);
    CHECK(c->args[0].len == 3 && strcmp(c->args[0].str, "nil") == 0);
    imap_parser_free(p);
}

TEST(quoted_strings)
{
    EXPECT("a LOGIN \"us\\\"er\" \"p\\\\w d\"\r\n", "DONE a LOGIN \"us\\\"er\" \"p\\\\w d\"\n");
    EXPECT("a X \"\" \"(){}%*]\"\r\n", "DONE a X \"\" \"(){}%*]\"\n");
    EXPECT("a X \"tab\there\"\r\n", "DONE a X \"tab\\x09here\"\n");
    /* UTF-8 for IMAP4rev2 and UTF8=ACCEPT. */
    EXPECT("a CREATE \"\xc3\x9c" "bung \xe2\x82\xac \xf0\x9f\x93\xa7\"\r\n",
           "DONE a CREATE \"\\xc3\\x9cbung \\xe2\\x82\\xac \\xf0\\x9f\\x93\\xa7\"\n");
    EXPECT("a X \"\xe0\xa0\x80 \xf4\x8f\xbf\xbf\"\r\n",
           "DONE a X \"\\xe0\\xa0\\x80 \\xf4\\x8f\\xbf\\xbf\"\n");
    EXPECT("a X \"\xff\"\r\n", "ERR a invalid UTF-8 in quoted string\n");
    EXPECT("a X \"\xe0\x9f\xbf\"\r\n", "ERR a invalid UTF-8 in quoted string\n"); /* overlong */
    EXPECT("a X \"\xf4\x90\x80\x80\"\r\n", "ERR a invalid UTF-8 in quoted string\n");
    EXPECT("a X \"\xc0\xaf\"\r\n", "ERR a invalid UTF-8 in quoted string\n");  /* overlong */
    EXPECT("a X \"\xed\xa0\x80\"\r\n", "ERR a invalid UTF-8 in quoted string\n"); /* surrogate */
    EXPECT("a X \"\xc3\"\r\n", "ERR a invalid UTF-8 in quoted string\n");     /* cut short */
    EXPECT("a X \"a\\nb\"\r\n", "ERR a invalid escape \\n in quoted string\n");
    EXPECT("a X \"a\0b\"\r\n", "ERR a NUL in quoted string\n");
    EXPECT("a LOGIN \"foo\r\nb NOOP\r\n", "ERR a unterminated quoted string\nDONE b NOOP\n");
    EXPECT("a LOGIN \"foo\\\r\n", "ERR a unterminated quoted string\n");
}

TEST(literals)
{
    EXPECT("a LOGIN {4}\r\nuser {4}\r\npass\r\n",
           "CONT 4\nCONT 4\nDONE a LOGIN {4}\"user\" {4}\"pass\"\n");
    EXPECT("a LOGIN {4+}\r\nuser {4+}\r\npass\r\n",
           "DONE a LOGIN {4}\"user\" {4}\"pass\"\n");
    EXPECT("a LOGIN {4}\nuser {04+}\npass\n", "CONT 4\nDONE a LOGIN {4}\"user\" {4}\"pass\"\n");
    /* Literal data is data: line ends, parentheses, NUL and all. */
    EXPECT("a X {13+}\r\n(\r\nb NOOP\r\n\0) x\r\n",
           "DONE a X {13}\"(\\x0d\\x0ab NOOP\\x0d\\x0a\\x00)\" x\n");
    EXPECT("a X {0}\r\n {0+}\r\n\r\n", "CONT 0\nDONE a X {0}\"\" {0}\"\"\n");
    EXPECT("a X (a {1+}\r\nb c)\r\n", "DONE a X (a {1}\"b\" c)\n");
    EXPECT("a X {3+}\r\nabc\r\n", "DONE a X {3}\"abc\"\n");
    EXPECT("a X {3}\r\nab", "CONT 3\nPARTIAL\n");
}

TEST(literal8_for_binary_append)
{
    EXPECT("a APPEND INBOX (\\Seen) ~{5}\r\nab\0cd\r\n",
           "CONT 5\nDONE a APPEND INBOX (\\Seen) ~{5}\"ab\\x00cd\"\n");
    EXPECT("a APPEND INBOX ~{3+}\r\n\0\0\0\r\n", "DONE a APPEND INBOX ~{3}\"\\x00\\x00\\x00\"\n");
    EXPECT("a APPEND INBOX (~{1+}\r\nx)\r\n", "DONE a APPEND INBOX (~{1}\"x\")\n");
    EXPECT("a X ~{x}\r\n", "ERR a bad literal syntax\n");
}

TEST(literal_syntax_errors)
{
    EXPECT("a LOGIN {12x}\r\nb NOOP\r\n", "ERR a bad literal syntax\nDONE b NOOP\n");
    EXPECT("a LOGIN {}\r\n", "ERR a bad literal syntax\n");
    EXPECT("a LOGIN {+}\r\n", "ERR a bad literal syntax\n");
    EXPECT("a LOGIN {5\r\n", "ERR a bad literal syntax\n");
    EXPECT("a LOGIN {5} x\r\n", "ERR a a literal's size must end its line\n");
    EXPECT("a LOGIN x{5}\r\n", "ERR a invalid character 0x7b in atom\n");
    EXPECT("a {5}\r\nb NOOP\r\n", "ERR a invalid character 0x7b in command name\nDONE b NOOP\n");
    EXPECT("a X {3+}\r\nabc\"x\"\r\n", "ERR a expected a space between arguments\n");
}

TEST(fetch_attributes_with_brackets)
{
    EXPECT("a FETCH 1 (FLAGS BODY[HEADER.FIELDS (SUBJECT FROM)]<0.100> BODY.PEEK[1.2] "
           "BINARY[1] BINARY.SIZE[2] BODY[])\r\n",
           "DONE a FETCH 1 (FLAGS BODY[HEADER.FIELDS (SUBJECT FROM)]<0.100> BODY.PEEK[1.2] "
           "BINARY[1] BINARY.SIZE[2] BODY[])\n");
    EXPECT("a FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (\"X]Y\" A)]\r\n",
           "DONE a FETCH 1 BODY.PEEK[HEADER.FIELDS.NOT (\"X]Y\" A)]\n");
    EXPECT("a FETCH 1 BODY[1.MIME]<5.10>\r\n", "DONE a FETCH 1 BODY[1.MIME]<5.10>\n");
    EXPECT("a X A[(\"]\\\"[\" [b]) c] d\r\n", "DONE a X A[(\"]\\\"[\" [b]) c] d\n");
    /* Gmail's mailbox names; an unmatched "[" is an ATOM-CHAR like any. */
    EXPECT("a SELECT [Gmail]/Spam\r\n", "DONE a SELECT [Gmail]/Spam\n");
    EXPECT("a CREATE foo[bar\r\n", "DONE a CREATE foo[bar\n");
    EXPECT("a FETCH 1 BODY[HEADER.FIELDS (A)\r\nb NOOP\r\n",
           "ERR a unterminated [ in atom\nDONE b NOOP\n");
    EXPECT("a FETCH 1 BODY[\x01]\r\n", "ERR a invalid character inside [ ] of an atom\n");
}

TEST(lists_and_flags)
{
    EXPECT("a X (a (b (c)) ()) ()\r\n", "DONE a X (a (b (c)) ()) ()\n");
    EXPECT("a X ( a  b )\r\n", "DONE a X (a b)\n");
    EXPECT("a APPEND INBOX (\\Seen $Label) \"1-Jan-2024 10:00:00 +0000\" {3+}\r\nabc\r\n",
           "DONE a APPEND INBOX (\\Seen $Label) \"1-Jan-2024 10:00:00 +0000\" {3}\"abc\"\n");
    EXPECT("a X (\\* \\Answered \\)\r\n", "DONE a X (\\* \\Answered \\)\n");
    EXPECT("a X ())\r\n", "ERR a unexpected )\n");
    EXPECT("a X )\r\n", "ERR a unexpected )\n");
    EXPECT("a X (a\r\nb NOOP\r\n", "ERR a unclosed ( at the end of the line\nDONE b NOOP\n");
    EXPECT("a X (a)(b)\r\n", "ERR a expected a space between arguments\n");
    EXPECT("a X \"a\"\"b\"\r\n", "ERR a expected a space between arguments\n");
    EXPECT("a X a\\b\r\n", "ERR a invalid character 0x5c in atom\n");
    EXPECT("a X ab\"c\r\n", "ERR a invalid character 0x22 in atom\n");
    EXPECT("a X a(b\r\n", "ERR a invalid character 0x28 in atom\n");
}

TEST(tag_and_name_errors)
{
    EXPECT("\r\na NOOP\r\n", "ERR - empty command line\nDONE a NOOP\n");
    EXPECT("\n", "ERR - empty command line\n");
    EXPECT(" NOOP\r\n", "ERR - missing tag\n");
    EXPECT("+ NOOP\r\n", "ERR - invalid character 0x2b in tag\n");
    EXPECT("a* NOOP\r\n", "ERR - invalid character 0x2a in tag\n");
    EXPECT("a\r\n", "ERR a missing command name\n");
    EXPECT("a \r\n", "ERR a missing command name\n");
    EXPECT("a NO%OP\r\n", "ERR a invalid character 0x25 in command name\n");
    EXPECT("a X \xc3\xa4\r\n", "ERR a invalid character 0xc3\n");
    EXPECT("a X a\0\r\n", "ERR a invalid character 0x00 in atom\n");
}

TEST(cr_without_lf)
{
    EXPECT("a NOOP\rb NOOP\r\nc NOOP\r\n", "ERR a CR not followed by LF\nDONE c NOOP\n");
    EXPECT("a NOOP\r\r\n", "ERR a CR not followed by LF\n");
    EXPECT("a X \"x\ry\"\r\n", "ERR a unterminated quoted string\n");
}

TEST(pipelined_commands)
{
    EXPECT("a NOOP\r\nb SELECT INBOX\r\nc FETCH 1 (FLAGS)\r\nd LOGOUT\n",
           "DONE a NOOP\nDONE b SELECT INBOX\nDONE c FETCH 1 (FLAGS)\nDONE d LOGOUT\n");

    /* Each event stops the feed, so the rest stays with the caller. */
    static const char in[] = "a NOOP\r\nb CHECK\r\nc";
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    CHECK(imap_parser_feed(p, in, sizeof(in) - 1, &used) == IMAP_PARSE_DONE);
    CHECK(used == 8);
    CHECK(strcmp(imap_parser_command(p)->name, "NOOP") == 0);
    /* Without a reset the parser stays done and takes nothing. */
    CHECK(imap_parser_feed(p, in + 8, sizeof(in) - 9, &used) == IMAP_PARSE_DONE && used == 0);
    imap_parser_reset(p);
    CHECK(imap_parser_feed(p, in + 8, sizeof(in) - 9, &used) == IMAP_PARSE_DONE);
    CHECK(used == 9);
    CHECK(strcmp(imap_parser_command(p)->tag, "b") == 0);
    imap_parser_reset(p);
    CHECK(imap_parser_feed(p, in + 17, 1, &used) == IMAP_PARSE_MORE && used == 1);
    CHECK(imap_parser_command(p) == NULL);
    imap_parser_free(p);
}

static const imap_parser_limits small = {.max_line = 20, .max_literal = 10, .max_total = 15,
                                         .max_depth = 2, .max_args = 4};

TEST(line_limit)
{
    /* 20 bytes of text, line end not counted: fits. */
    EXPECT_LIM(&small, 0, "a X 1234567890123456\r\n", "DONE a X 1234567890123456\n");
    EXPECT_LIM(&small, 0, "a X 12345678901234567\r\nb NOOP\r\n",
               "ERR a big command line too long (the limit is 20 bytes)\nDONE b NOOP\n");
    /* The limit counts every line of a command, not literal data. */
    EXPECT_LIM(&small, 0, "a X {3+}\r\nabc 12345678901\r\n", "DONE a X {3}\"abc\" 12345678901\n");
    EXPECT_LIM(&small, 0, "a X {3+}\r\nabc 123456789012\r\n",
               "ERR a big command line too long (the limit is 20 bytes)\n");
    /* A long line is discarded as it comes, not kept: a megabyte of it. */
    size_t n = 1 << 20;
    char *big = malloc(n + 20);
    memcpy(big, "a X ", 4);
    memset(big + 4, 'x', n);
    memcpy(big + 4 + n, "\r\nb NOOP\r\n", 10);
    buf out;
    buf_init(&out);
    transcript(big, n + 14, 4096, 0, &small, &out);
    free(big);
    int ok = strcmp((const char *)out.data,
                    "ERR a big command line too long (the limit is 20 bytes)\nDONE b NOOP\n") == 0;
    buf_free(&out);
    CHECK(ok);
}

TEST(literal_limits)
{
    /* Synchronizing: refused before the client sends anything. */
    EXPECT_LIM(&small, 0, "a APPEND X {11}\r\nb NOOP\r\n",
               "ERR a big literal of 11 bytes is over the limit of 10\nDONE b NOOP\n");
    EXPECT_LIM(&small, 0, "a APPEND X {10}\r\n0123456789\r\n",
               "CONT 10\nDONE a APPEND X {10}\"0123456789\"\n");
    EXPECT("a X {99999999999999999999}\r\nb NOOP\r\n",
               "ERR a big literal size out of range\nDONE b NOOP\n");
    /* Non-synchronizing: the data comes anyway and must be skipped, never
     * read as commands. */
    EXPECT_LIM(&small, 0, "a APPEND X {14+}\r\nc NOOP\r\nd NOOP\r\nb NOOP\r\n",
               "ERR a big literal of 14 bytes is over the limit of 10\nDONE b NOOP\n");
    EXPECT_LIM(&small, 0, "a X ~{14+}\r\nc NOOP\r\nd NOOP more {3+}\r\n\r\n\r\r\nb NOOP\r\n",
               "ERR a big literal of 14 bytes is over the limit of 10\nDONE b NOOP\n");
    /* All literals of one command together. */
    EXPECT_LIM(&small, 0, "a X {8+}\r\n12345678 {8+}\r\n12345678\r\nb NOOP\r\n",
               "ERR a big the command's literals are over the limit of 15 bytes\nDONE b NOOP\n");
    EXPECT_LIM(&small, 0, "a X {8}\r\n12345678 {8}\r\nb NOOP\r\n",
               "CONT 8\nERR a big the command's literals are over the limit of 15 bytes\n"
               "DONE b NOOP\n");
    /* A size that cannot be skipped loses the stream for good. */
    EXPECT("a X {99999999999999999999+}\r\nb NOOP\r\n",
           "ERR a big fatal literal size out of range\n");
}

TEST(literal_minus)
{
    imap_parser_limits lim = {.max_literal = 10000, .max_literal_nonsync = 4};
    EXPECT_LIM(&lim, 0, "a LOGIN {4+}\r\nuser {5+}\r\npass1\r\nb NOOP\r\n",
               "ERR a big literal of 5 bytes is over the limit of 4\nDONE b NOOP\n");
    EXPECT_LIM(&lim, 0, "a LOGIN {4+}\r\nuser {5}\r\npass1\r\n",
               "CONT 5\nDONE a LOGIN {4}\"user\" {5}\"pass1\"\n");
}

TEST(refused_literal)
{
    EXPECT_LIM(NULL, 1, "a APPEND INBOX {100}\r\nb NOOP\r\n",
               "CONT 100\nERR a big literal refused\nDONE b NOOP\n");
    EXPECT_LIM(NULL, 2, "a APPEND INBOX {1}\r\nx {100}\r\nb NOOP\r\n",
               "CONT 1\nCONT 100\nERR a big literal refused\nDONE b NOOP\n");

    /* What the session sees at CONTINUE. */
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    const char *tag;
    CHECK(imap_parser_feed(p, "t1 append INBOX {2048}\r\n", 24, &used) == IMAP_PARSE_CONTINUE);
    CHECK(used == 24);
    CHECK(imap_parser_pending_literal(p) == 2048);
    CHECK(strcmp(imap_parser_name(p), "APPEND") == 0 && strcmp(imap_parser_tag(p), "t1") == 0);
    CHECK(imap_parser_error(p, &tag) == NULL && tag == NULL);
    imap_parser_refuse_literal(p);
    CHECK(strcmp(imap_parser_error(p, &tag), "literal refused") == 0);
    CHECK(tag && strcmp(tag, "t1") == 0 && imap_parser_error_too_big(p));
    imap_parser_reset(p);
    CHECK(imap_parser_error(p, &tag) == NULL && !imap_parser_error_too_big(p));
    CHECK(imap_parser_feed(p, "t2 NOOP\r\n", 9, &used) == IMAP_PARSE_DONE);
    imap_parser_free(p);
}

TEST(nesting_and_argument_limits)
{
    EXPECT_LIM(&small, 0, "a X ((1))\r\n", "DONE a X ((1))\n");
    EXPECT_LIM(&small, 0, "a X (((1)))\r\nb NOOP\r\n",
               "ERR a big lists nested too deeply (the limit is 2)\nDONE b NOOP\n");
    EXPECT_LIM(&small, 0, "a X 1 2 3 4\r\n", "DONE a X 1 2 3 4\n");
    EXPECT_LIM(&small, 0, "a X 1 2 3 4 5\r\n", "ERR a big too many arguments (the limit is 4)\n");
    EXPECT_LIM(&small, 0, "a X (1 (2)) 3\r\n", "ERR a big too many arguments (the limit is 4)\n");
    /* Checked before a literal is asked for. */
    EXPECT_LIM(&small, 0, "a X 1 2 3 4 {5}\r\n", "ERR a big too many arguments (the limit is 4)\n");

    /* Deep nesting at the default limit, and far past it. */
    imap_parser_limits deep = {.max_depth = 1000};
    buf in, out;
    buf_init(&in);
    buf_init(&out);
    buf_append_str(&in, "a X ");
    for (int i = 0; i < 1000; i++)
        buf_put_u8(&in, '(');
    for (int i = 0; i < 1000; i++)
        buf_put_u8(&in, ')');
    buf_append_str(&in, "\r\n");
    transcript((const char *)in.data, in.len, 0, 0, &deep, &out);
    int ok_deep = strncmp((const char *)out.data, "DONE a X ((((", 13) == 0;
    transcript((const char *)in.data, in.len, 0, 0, NULL, &out);
    int ok_default = strcmp((const char *)out.data,
                            "ERR a big lists nested too deeply (the limit is 16)\n") == 0;
    buf_free(&in);
    buf_free(&out);
    CHECK(ok_deep);
    CHECK(ok_default);
}

TEST(errors_resynchronise)
{
    /* A bad line ending in {n+}: its data is skipped with it. */
    EXPECT("a X ) {6+}\r\nb NOOP\r\nc NOOP\r\n", "ERR a unexpected )\nDONE c NOOP\n");
    EXPECT("a X \"open {6+}\r\nb NOOP\r\nc NOOP\r\n",
           "ERR a unterminated quoted string\nDONE c NOOP\n");
    EXPECT("a X ) {6+}\r\nb NOOP ) {0+}\r\n\r\nc NOOP\r\n", "ERR a unexpected )\nDONE c NOOP\n");
    /* ... but a synchronizing literal got a BAD instead of "+": no data. */
    EXPECT("a X ) {6}\r\nb NOOP\r\n", "ERR a unexpected )\nDONE b NOOP\n");
    /* An error after a literal in the same command. */
    EXPECT("a X {3+}\r\nabc )\r\nb NOOP\r\n", "ERR a unexpected )\nDONE b NOOP\n");
    EXPECT("a X {3}\r\nabc )\r\nb NOOP\r\n", "CONT 3\nERR a unexpected )\nDONE b NOOP\n");
    /* A bad line whose last literal cannot be counted: nothing can follow. */
    EXPECT("a X ) {99999999999999999999+}\r\nb NOOP\r\n",
           "ERR a big fatal unexpected )\n");

    /* ... and the parser stays failed, swallowing whatever comes. */
    static const char in[] = "a X {99999999999999999999+}\r\nb NOOP\r\n";
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    CHECK(imap_parser_feed(p, in, sizeof(in) - 1, &used) == IMAP_PARSE_ERROR);
    CHECK(used == 29 && imap_parser_error_fatal(p));
    imap_parser_reset(p);
    CHECK(imap_parser_feed(p, in + 29, 8, &used) == IMAP_PARSE_ERROR && used == 8);
    CHECK(imap_parser_error_fatal(p) && imap_parser_error(p, NULL) != NULL);
    imap_parser_free(p);
}

TEST(limits_change_after_login)
{
    imap_parser_limits pre = {.max_line = 16};
    imap_parser *p = imap_parser_new(&pre);
    size_t used;
    static const char cmd[] = "a SELECT LongMailboxName\r\n";
    CHECK(imap_parser_feed(p, cmd, sizeof(cmd) - 1, &used) == IMAP_PARSE_ERROR);
    CHECK(imap_parser_error_too_big(p));
    imap_parser_reset(p);
    imap_parser_set_limits(p, NULL);
    CHECK(imap_parser_feed(p, cmd, sizeof(cmd) - 1, &used) == IMAP_PARSE_DONE);
    imap_parser_reset(p);

    imap_parser_limits d = {0};
    imap_parser_limits_default(&d);
    CHECK(d.max_line == 64 * 1024 && d.max_literal == 64u << 20 && d.max_total == 128u << 20);
    CHECK(d.max_depth == 16 && d.max_args == 100000 && d.max_literal_nonsync == d.max_literal);
    imap_parser_free(p);
}

/* Tokens and argument arrays bigger than the arena's chunks. */
TEST(long_tokens_and_many_arguments)
{
    buf in, want;
    buf_init(&in);
    buf_init(&want);
    buf_append_str(&in, "a X \"");
    for (int i = 0; i < 3000; i++)
        buf_put_u8(&in, (uint8_t)('a' + i % 26));
    buf_append_str(&in, "\" (");
    for (int i = 0; i < 300; i++)
        buf_printf(&in, "%s%d", i ? " " : "", i);
    buf_append_str(&in, ")\r\nb NOOP\r\n");
    buf_printf(&want, "DONE a X %.*s\nDONE b NOOP\n", (int)(in.len - 4 - 10), in.data + 4);
    buf got;
    buf_init(&got);
    const char *why = check_case(NULL, 0, (const char *)in.data, in.len,
                                 (const char *)want.data, &got);
    buf_free(&in);
    buf_free(&want);
    buf_free(&got);
    CHECKM(!why, "%s", why);
}

TEST(calls_out_of_turn)
{
    imap_parser_free(NULL);
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    /* Refusing when no literal waits does nothing. */
    imap_parser_refuse_literal(p);
    CHECK(imap_parser_error(p, NULL) == NULL && imap_parser_pending_literal(p) == 0);
    /* An error stays until reset, taking no input. */
    CHECK(imap_parser_feed(p, ")\r\n", 3, &used) == IMAP_PARSE_ERROR && used == 3);
    CHECK(imap_parser_feed(p, "a NOOP\r\n", 8, &used) == IMAP_PARSE_ERROR && used == 0);
    CHECK(imap_parser_command(p) == NULL);
    imap_parser_reset(p);
    CHECK(imap_parser_feed(p, "a NOOP\r\n", 8, &used) == IMAP_PARSE_DONE && used == 8);
    imap_parser_free(p);
}

TEST(literal_with_nul_keeps_its_length)
{
    imap_parser *p = imap_parser_new(NULL);
    size_t used;
    static const char in[] = "a LOGIN {3+}\r\na\0b x\r\n";
    CHECK(imap_parser_feed(p, in, sizeof(in) - 1, &used) == IMAP_PARSE_DONE);
    const imap_command *c = imap_parser_command(p);
    CHECK(c->nargs == 2 && c->args[0].type == IMAP_ARG_STRING && c->args[0].literal == 1);
    CHECK(c->args[0].len == 3 && memcmp(c->args[0].str, "a\0b", 4) == 0);
    CHECK(c->args[1].type == IMAP_ARG_ATOM && strcmp(c->args[1].str, "x") == 0);
    imap_parser_free(p);
}

TEST(big_literal_in_pieces)
{
    size_t n = 3 << 20;
    char *in = malloc(n + 64);
    int k = snprintf(in, 64, "a APPEND INBOX {%zu}\r\n", n);
    for (size_t i = 0; i < n; i++)
        in[k + i] = (char)(i * 7);
    memcpy(in + k + n, "\r\n", 2);
    imap_parser *p = imap_parser_new(NULL);
    size_t pos = 0, used;
    enum imap_parse_result r;
    int conts = 0;
    while ((r = imap_parser_feed(p, in + pos, k + n + 2 - pos > 1000 ? 1000 : k + n + 2 - pos,
                                 &used)) != IMAP_PARSE_DONE) {
        pos += used;
        conts += r == IMAP_PARSE_CONTINUE;
        if (r == IMAP_PARSE_ERROR || pos >= k + n + 2)
            break;
    }
    pos += used;
    const imap_command *c = imap_parser_command(p);
    int ok = c && conts == 1 && pos == k + n + 2 && c->nargs == 2 && c->args[1].len == n &&
             memcmp(c->args[1].str, in + k, n) == 0;
    free(in);
    imap_parser_free(p);
    CHECK(ok);
}

/* Every input above (default limits) as one stream: the parser carries no
 * state from one command into the next, whatever the chunking. */
TEST(all_inputs_as_one_stream)
{
    CHECK(all_inputs.len > 1000);
    buf whole, piece;
    buf_init(&whole);
    buf_init(&piece);
    const char *in = (const char *)all_inputs.data;
    transcript(in, all_inputs.len, 0, 0, NULL, &whole);
    int same = 1;
    for (size_t i = 1; i < sizeof(chunks) / sizeof(chunks[0]) && same; i++) {
        transcript(in, all_inputs.len, chunks[i], 0, NULL, &piece);
        same = strcmp((const char *)whole.data, (const char *)piece.data) == 0;
    }
    int partial = strstr((const char *)whole.data, "PARTIAL") != NULL;
    buf_free(&whole);
    buf_free(&piece);
    CHECK(same);
    CHECK(!partial);
}

int main(void)
{
    buf_init(&all_inputs);
    RUN(simple_commands);
    RUN(uid_joins_the_next_atom);
    RUN(atoms_and_sequence_sets);
    RUN(nil_in_any_case);
    RUN(quoted_strings);
    RUN(literals);
    RUN(literal8_for_binary_append);
    RUN(literal_syntax_errors);
    RUN(fetch_attributes_with_brackets);
    RUN(lists_and_flags);
    RUN(tag_and_name_errors);
    RUN(cr_without_lf);
    RUN(pipelined_commands);
    RUN(line_limit);
    RUN(literal_limits);
    RUN(literal_minus);
    RUN(refused_literal);
    RUN(nesting_and_argument_limits);
    RUN(errors_resynchronise);
    RUN(limits_change_after_login);
    RUN(long_tokens_and_many_arguments);
    RUN(calls_out_of_turn);
    RUN(literal_with_nul_keeps_its_length);
    RUN(big_literal_in_pieces);
    RUN(all_inputs_as_one_stream);
    buf_free(&all_inputs);
    return t_done();
}
