/*
 * test_mime.c - the MIME parser and the IMAP strings built on it.
 *
 * Golden tests compare exact ENVELOPE and BODY/BODYSTRUCTURE strings, so
 * any change of output is a visible, reviewed change. The rest covers the
 * section rules of RFC 3501 6.4.5, BINARY (RFC 3516), the decoders, the
 * SORT helpers, and the inputs that break parsers: no header, no body,
 * one byte, nothing, bare LF, NULs, deep nesting, many parts, broken
 * boundaries.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "imap/mime.h"
#include "lib/buf.h"
#include "testlib.h"

/* Compares out with want (length n); on mismatch prints both. */
static int same(const buf *out, const char *want, size_t n)
{
    if (out->len == n && (n == 0 || memcmp(out->data, want, n) == 0))
        return 1;
    fprintf(stderr, "  got  (%zu): %.*s\n  want (%zu): %.*s\n", out->len, (int)out->len,
            out->data ? (const char *)out->data : "", n, (int)n, want);
    return 0;
}
#define SAME(b, lit) same(&(b), (lit), sizeof(lit) - 1)

/* Runs f(root, msg, out) for a message given as a string literal. */
static void envelope_of(const char *m, size_t n, buf *out)
{
    mime_part *r = mime_parse(m, n, NULL);
    buf_reset(out);
    mime_envelope(r, m, out);
    mime_free(r);
}

static void structure_of(const char *m, size_t n, int ext, buf *out)
{
    mime_part *r = mime_parse(m, n, NULL);
    buf_reset(out);
    mime_bodystructure(r, m, ext, out);
    mime_free(r);
}

static int section_of(const char *m, size_t n, const char *spec, buf *out)
{
    mime_part *r = mime_parse(m, n, NULL);
    buf_reset(out);
    int rc = mime_section(r, m, n, spec, out);
    mime_free(r);
    return rc;
}

static int binary_of(const char *m, size_t n, const char *spec, buf *out)
{
    mime_part *r = mime_parse(m, n, NULL);
    buf_reset(out);
    int rc = mime_binary(r, m, n, spec, out);
    mime_free(r);
    return rc;
}

static int header_of(const char *m, size_t n, const char *name, buf *out)
{
    mime_part *r = mime_parse(m, n, NULL);
    buf_reset(out);
    int rc = mime_header_value(r, m, name, out);
    mime_free(r);
    return rc;
}

#define L(lit) lit, sizeof(lit) - 1

/* --- golden ENVELOPE / BODYSTRUCTURE --- */

/* The example of RFC 3501 7.4.2 (plus a body). */
static const char simple[] =
    "Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\r\n"
    "From: Terry Gray <gray@cac.washington.edu>\r\n"
    "Subject: IMAP4rev1 WG mtg summary and minutes\r\n"
    "To: imap@cac.washington.edu\r\n"
    "cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>\r\n"
    "Message-Id: <B27397-0100000@cac.washington.edu>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    "\r\n"
    "Hello\r\n"
    "World\r\n";

TEST(simple_text_message)
{
    buf b;
    buf_init(&b);
    envelope_of(L(simple), &b);
    CHECK(SAME(b, "(\"Wed, 17 Jul 1996 02:23:25 -0700 (PDT)\" "
                  "\"IMAP4rev1 WG mtg summary and minutes\" "
                  "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
                  "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
                  "((\"Terry Gray\" NIL \"gray\" \"cac.washington.edu\")) "
                  "((NIL NIL \"imap\" \"cac.washington.edu\")) "
                  "((NIL NIL \"minutes\" \"CNRI.Reston.VA.US\")"
                  "(\"John Klensin\" NIL \"KLENSIN\" \"MIT.EDU\")) NIL NIL "
                  "\"<B27397-0100000@cac.washington.edu>\")"));
    structure_of(L(simple), 1, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 14 2 "
                  "NIL NIL NIL NIL)"));
    structure_of(L(simple), 0, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" 14 2)"));
    /* A non-multipart message: part 1 is its body. */
    CHECK(section_of(L(simple), "1", &b) == 0 && SAME(b, "Hello\r\nWorld\r\n"));
    CHECK(section_of(L(simple), "TEXT", &b) == 0 && SAME(b, "Hello\r\nWorld\r\n"));
    CHECK(section_of(L(simple), "2", &b) == 0 && b.len == 0);
    CHECK(section_of(L(simple), "1.1", &b) == 0 && b.len == 0);
    CHECK(section_of(L(simple), "", &b) == 0 && same(&b, simple, sizeof(simple) - 1));
    CHECK(section_of(L(simple), "HEADER", &b) == 0 && b.len == sizeof(simple) - 1 - 14);
    buf_free(&b);
}

static const char alternative[] =
    "From: a@example.com\r\n"
    "Subject: alt\r\n"
    "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
    "\r\n"
    "--b1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "plain\r\n"
    "--b1\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "<p>html=3D</p>\r\n"
    "--b1--\r\n";

TEST(multipart_alternative)
{
    buf b;
    buf_init(&b);
    structure_of(L(alternative), 1, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 1 NIL NIL NIL NIL)"
                  "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 14 1 "
                  "NIL NIL NIL NIL) \"ALTERNATIVE\" (\"BOUNDARY\" \"b1\") NIL NIL NIL)"));
    structure_of(L(alternative), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"utf-8\") NIL NIL \"7BIT\" 5 1)"
                  "(\"TEXT\" \"HTML\" (\"CHARSET\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 14 1) "
                  "\"ALTERNATIVE\")"));
    envelope_of(L(alternative), &b);
    CHECK(SAME(b, "(NIL \"alt\" ((NIL NIL \"a\" \"example.com\")) ((NIL NIL \"a\" \"example.com\")) "
                  "((NIL NIL \"a\" \"example.com\")) NIL NIL NIL NIL NIL)"));
    CHECK(section_of(L(alternative), "1", &b) == 0 && SAME(b, "plain"));
    CHECK(section_of(L(alternative), "2", &b) == 0 && SAME(b, "<p>html=3D</p>"));
    CHECK(binary_of(L(alternative), "2", &b) == 0 && SAME(b, "<p>html=</p>"));
    CHECK(section_of(L(alternative), "3", &b) == 0 && b.len == 0);
    CHECK(section_of(L(alternative), "1.MIME", &b) == 0 &&
          SAME(b, "Content-Type: text/plain; charset=utf-8\r\n\r\n"));
    buf_free(&b);
}

static const char mixed[] =
    "From: a@example.com\r\n"
    "Content-Type: multipart/mixed; boundary=XYZ\r\n"
    "\r\n"
    "preamble\r\n"
    "--XYZ\r\n"
    "\r\n"
    "implicit text\r\n"
    "--XYZ\r\n"
    "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "Content-Disposition: attachment;\r\n"
    " filename=\"a.bin\"\r\n"
    "\r\n"
    "AAECAwQ=\r\n"
    "--XYZ--\r\n"
    "epilogue\r\n";

TEST(multipart_mixed_with_base64_attachment)
{
    buf b;
    buf_init(&b);
    structure_of(L(mixed), 1, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 1 "
                  "NIL NIL NIL NIL)"
                  "(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"a.bin\") NIL NIL \"BASE64\" 8 NIL "
                  "(\"ATTACHMENT\" (\"FILENAME\" \"a.bin\")) NIL NIL) "
                  "\"MIXED\" (\"BOUNDARY\" \"XYZ\") NIL NIL NIL)"));
    structure_of(L(mixed), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 1)"
                  "(\"APPLICATION\" \"OCTET-STREAM\" (\"NAME\" \"a.bin\") NIL NIL \"BASE64\" 8) "
                  "\"MIXED\")"));
    CHECK(section_of(L(mixed), "1", &b) == 0 && SAME(b, "implicit text"));
    CHECK(section_of(L(mixed), "1.MIME", &b) == 0 && SAME(b, "\r\n"));
    CHECK(section_of(L(mixed), "2", &b) == 0 && SAME(b, "AAECAwQ="));
    CHECK(binary_of(L(mixed), "2", &b) == 0 && SAME(b, "\x00\x01\x02\x03\x04"));
    CHECK(section_of(L(mixed), "2.MIME", &b) == 0 &&
          SAME(b, "Content-Type: application/octet-stream; name=\"a.bin\"\r\n"
                  "Content-Transfer-Encoding: base64\r\n"
                  "Content-Disposition: attachment;\r\n"
                  " filename=\"a.bin\"\r\n\r\n"));
    /* HEADER and TEXT of a part that is not a message/rfc822: nothing. */
    CHECK(section_of(L(mixed), "2.HEADER", &b) == 0 && b.len == 0);
    CHECK(section_of(L(mixed), "2.TEXT", &b) == 0 && b.len == 0);
    buf_free(&b);
}

static const char rfc822[] =
    "From: outer@x.test\r\n"
    "Subject: fwd\r\n"
    "Content-Type: multipart/mixed; boundary=\"o\"\r\n"
    "\r\n"
    "--o\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "see attached\r\n"
    "--o\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "From: Inner <inner@y.test>\r\n"
    "Subject: inner\r\n"
    "Date: 1 Jan 2020 00:00:00 +0000\r\n"
    "\r\n"
    "inner body\r\n"
    "line 2\r\n"
    "--o--\r\n";

TEST(message_rfc822_part)
{
    buf b;
    buf_init(&b);
    structure_of(L(rfc822), 1, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 12 1 "
                  "NIL NIL NIL NIL)"
                  "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 97 "
                  "(\"1 Jan 2020 00:00:00 +0000\" \"inner\" ((\"Inner\" NIL \"inner\" \"y.test\")) "
                  "((\"Inner\" NIL \"inner\" \"y.test\")) ((\"Inner\" NIL \"inner\" \"y.test\")) "
                  "NIL NIL NIL NIL NIL) "
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 18 2 NIL NIL NIL NIL) "
                  "6 NIL NIL NIL NIL) \"MIXED\" (\"BOUNDARY\" \"o\") NIL NIL NIL)"));
    structure_of(L(rfc822), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 12 1)"
                  "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 97 "
                  "(\"1 Jan 2020 00:00:00 +0000\" \"inner\" ((\"Inner\" NIL \"inner\" \"y.test\")) "
                  "((\"Inner\" NIL \"inner\" \"y.test\")) ((\"Inner\" NIL \"inner\" \"y.test\")) "
                  "NIL NIL NIL NIL NIL) "
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 18 2) 6) \"MIXED\")"));
    static const char inner_header[] = "From: Inner <inner@y.test>\r\n"
                                       "Subject: inner\r\n"
                                       "Date: 1 Jan 2020 00:00:00 +0000\r\n\r\n";
    CHECK(section_of(L(rfc822), "2.HEADER", &b) == 0 && SAME(b, inner_header));
    CHECK(section_of(L(rfc822), "2.TEXT", &b) == 0 && SAME(b, "inner body\r\nline 2"));
    CHECK(section_of(L(rfc822), "2.1", &b) == 0 && SAME(b, "inner body\r\nline 2"));
    CHECK(section_of(L(rfc822), "2.1.MIME", &b) == 0 && SAME(b, inner_header));
    CHECK(section_of(L(rfc822), "2", &b) == 0 && b.len == 97 && memcmp(b.data, "From: Inner", 11) == 0);
    CHECK(section_of(L(rfc822), "2.MIME", &b) == 0 && SAME(b, "Content-Type: message/rfc822\r\n\r\n"));
    CHECK(section_of(L(rfc822), "2.HEADER.FIELDS (SUBJECT)", &b) == 0 &&
          SAME(b, "Subject: inner\r\n\r\n"));
    CHECK(section_of(L(rfc822), "2.2", &b) == 0 && b.len == 0);
    CHECK(section_of(L(rfc822), "1.HEADER", &b) == 0 && b.len == 0);
    CHECK(binary_of(L(rfc822), "2.1", &b) == 0 && SAME(b, "inner body\r\nline 2"));
    buf_free(&b);
}

/* A message whose own type is message/rfc822: its body is part 1 and
 * 1.HEADER is the embedded header. */
TEST(top_level_message_rfc822)
{
    static const char m[] = "Content-Type: message/rfc822\r\n\r\n"
                            "Subject: in\r\n\r\nbody";
    buf b;
    buf_init(&b);
    CHECK(section_of(L(m), "1", &b) == 0 && SAME(b, "Subject: in\r\n\r\nbody"));
    CHECK(section_of(L(m), "1.HEADER", &b) == 0 && SAME(b, "Subject: in\r\n\r\n"));
    CHECK(section_of(L(m), "1.TEXT", &b) == 0 && SAME(b, "body"));
    CHECK(section_of(L(m), "1.1", &b) == 0 && SAME(b, "body"));
    structure_of(L(m), 0, &b);
    CHECK(SAME(b, "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 19 "
                  "(NIL \"in\" NIL NIL NIL NIL NIL NIL NIL NIL) "
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 4 1) 3)"));
    buf_free(&b);
}

/* Messages inside messages: every level's size and line count. */
TEST(nested_messages)
{
    static const char m[] = "Content-Type: message/rfc822\r\n\r\n"
                            "Subject: a\r\nContent-Type: message/rfc822\r\n\r\n"
                            "Subject: b\r\n\r\nx\r\ny\r\n";
    buf b;
    buf_init(&b);
    structure_of(L(m), 0, &b);
    CHECK(SAME(b, "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 64 "
                  "(NIL \"a\" NIL NIL NIL NIL NIL NIL NIL NIL) "
                  "(\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 20 "
                  "(NIL \"b\" NIL NIL NIL NIL NIL NIL NIL NIL) "
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 6 2) 4) 7)"));
    CHECK(section_of(L(m), "1.1.HEADER", &b) == 0 && SAME(b, "Subject: b\r\n\r\n"));
    CHECK(section_of(L(m), "1.1.1", &b) == 0 && SAME(b, "x\r\ny\r\n"));
    buf_free(&b);
}

/* RFC 5322 A.1.3 and friends. */
TEST(group_and_obsolete_addresses)
{
    static const char m[] =
        "From: Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>\r\n"
        "To: A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>;\r\n"
        "Cc: Undisclosed recipients:;\r\n"
        "Bcc: john@x.test (John Doe), <@r1.test,@r2.test:joe@x.test>, \"a b\"@c.test,\r\n"
        "  Mary . Smith@d . test, , broken\r\n"
        "Reply-To:\r\n"
        "Sender: \"Q. \\\"Boss\\\"\" <boss@x.test>\r\n"
        "\r\n";
    buf b;
    buf_init(&b);
    envelope_of(L(m), &b);
    CHECK(SAME(b, "(NIL NIL "
                  "((\"Pete\" NIL \"pete\" \"silly.test\")) "
                  "((\"Q. \\\"Boss\\\"\" NIL \"boss\" \"x.test\")) "
                  "((\"Pete\" NIL \"pete\" \"silly.test\")) "
                  "((NIL NIL \"A Group\" NIL)(\"Ed Jones\" NIL \"c\" \"a.test\")"
                  "(NIL NIL \"joe\" \"where.test\")(\"John\" NIL \"jdoe\" \"one.test\")"
                  "(NIL NIL NIL NIL)) "
                  "((NIL NIL \"Undisclosed recipients\" NIL)(NIL NIL NIL NIL)) "
                  "((\"John Doe\" NIL \"john\" \"x.test\")(NIL \"@r1.test,@r2.test\" \"joe\" \"x.test\")"
                  "(NIL NIL \"a b\" \"c.test\")(NIL NIL \"Mary.Smith\" \"d.test\")"
                  "(NIL NIL \"broken\" \"MISSING_DOMAIN\")) "
                  "NIL NIL)"));
    /* A group never closed is closed; 8-bit names become literals. */
    static const char m2[] = "To: g: a@b.test\r\nFrom: J\xc3\xb6rg <j@x.test>\r\n\r\n";
    envelope_of(L(m2), &b);
    CHECK(SAME(b, "(NIL NIL (({5}\r\nJ\xc3\xb6rg NIL \"j\" \"x.test\")) "
                  "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"x.test\")) "
                  "(({5}\r\nJ\xc3\xb6rg NIL \"j\" \"x.test\")) "
                  "((NIL NIL \"g\" NIL)(NIL NIL \"a\" \"b.test\")(NIL NIL NIL NIL)) "
                  "NIL NIL NIL NIL)"));
    buf_free(&b);
}

/* Strings IMAP cannot quote: NUL dropped, 8-bit / CR / long as literals,
 * quotes and backslashes escaped, encoded words left alone. */
TEST(envelope_string_forms)
{
    static const char m[] = "Subject: a\0b \"q\" \\ =?utf-8?q?x?=\r\n"
                            "Message-ID: \r\n"
                            "In-Reply-To: <x\xff@y>\r\n\r\n";
    buf b;
    buf_init(&b);
    envelope_of(L(m), &b);
    CHECK(SAME(b, "(NIL \"ab \\\"q\\\" \\\\ =?utf-8?q?x?=\" NIL NIL NIL NIL NIL NIL "
                  "{6}\r\n<x\xff@y> \"\")"));
    buf long_subject;
    buf_init(&long_subject);
    buf_append_str(&long_subject, "Subject: ");
    for (int i = 0; i < 1200; i++)
        buf_append_str(&long_subject, "x");
    buf_append_str(&long_subject, "\r\n\r\n");
    envelope_of((const char *)long_subject.data, long_subject.len, &b);
    CHECK(b.len > 20 && memcmp(b.data, "(NIL {1200}\r\nxxx", 16) == 0);
    buf_free(&long_subject);
    buf_free(&b);
}

/* --- sections --- */

static const char fields_msg[] =
    "Subject: hello\r\n"
    "X-A: 1\r\n"
    "From: a@b.test\r\n"
    "x-a: 2\r\n"
    " folded\r\n"
    "To: c@d.test\r\n"
    "\r\n"
    "body\r\n";

TEST(header_fields_sections)
{
    buf b;
    buf_init(&b);
    CHECK(section_of(L(fields_msg), "HEADER.FIELDS (x-a FROM)", &b) == 0 &&
          SAME(b, "X-A: 1\r\nFrom: a@b.test\r\nx-a: 2\r\n folded\r\n\r\n"));
    CHECK(section_of(L(fields_msg), "header.fields.not (X-A \"subject\")", &b) == 0 &&
          SAME(b, "From: a@b.test\r\nTo: c@d.test\r\n\r\n"));
    CHECK(section_of(L(fields_msg), "HEADER.FIELDS (NOPE)", &b) == 0 && SAME(b, "\r\n"));
    CHECK(section_of(L(fields_msg), "HEADER.FIELDS ({2}\r\nTo)", &b) == 0 &&
          SAME(b, "To: c@d.test\r\n\r\n"));
    /* No blank line in the message: none in the answer (RFC 3501). */
    static const char only[] = "Subject: x\r\nFrom: y@z.test\r\n";
    CHECK(section_of(L(only), "HEADER.FIELDS (SUBJECT)", &b) == 0 && SAME(b, "Subject: x\r\n"));
    buf_free(&b);
}

TEST(section_spec_syntax)
{
    static const char *const bad[] = {
        "MIME", "0", "01", "1.", ".1", "1..2", "HEADER.FIELDS", "HEADER.FIELDS ()",
        "HEADER.FIELDS (A", "HEADER.FIELDS A", "HEADER.FIELDS (A  B)", "TEXT.MIME", "1.TEXT.MIME",
        "HEADER ", " HEADER", "4294967296", "1.0", "BODY", "1.HEADER.FIELDS", "1.2.X", "1 ",
        "HEADER.FIELDS (\"a)", "HEADER.FIELDS ({5}\r\nab)",
    };
    static const char *const good[] = {
        "", "HEADER", "TEXT", "text", "1", "1.2.3", "1.MIME", "2.header", "3.TEXT",
        "HEADER.FIELDS (A)", "HEADER.FIELDS (A B \"C D\")", "1.HEADER.FIELDS.NOT (A)",
        "4294967295",
    };
    buf b;
    buf_init(&b);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECKM(section_of(L(mixed), bad[i], &b) == -EINVAL, "spec '%s'", bad[i]);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        CHECKM(section_of(L(mixed), good[i], &b) == 0, "spec '%s'", good[i]);
    /* BINARY takes part numbers only. */
    CHECK(binary_of(L(mixed), "HEADER", &b) == -EINVAL);
    CHECK(binary_of(L(mixed), "1.MIME", &b) == -EINVAL);
    CHECK(binary_of(L(mixed), "1.", &b) == -EINVAL);
    CHECK(binary_of(L(mixed), "", &b) == 0 && same(&b, mixed, sizeof(mixed) - 1));
    CHECK(binary_of(L(mixed), "7", &b) == 0 && b.len == 0);
    buf_free(&b);
}

TEST(binary_decoding)
{
    static const char m[] =
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        "caf=C3=A9 =\r\nsoft  \r\nhard=0D=0A=\r\n=3d=XY=\r\n"
        "--b\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
        "--b\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xe9t\xe9\r\n"
        "--b\r\nContent-Transfer-Encoding: BASE64\r\n\r\naGVs\r\nbG8=\r\nIQ==\r\n"
        "--b\r\nContent-Transfer-Encoding: base64\r\n\r\n!!aG*Vs\r\nbG8\r\n"
        "--b--\r\n";
    buf b;
    buf_init(&b);
    CHECK(binary_of(L(m), "1", &b) == 0 && SAME(b, "caf\xc3\xa9 soft\r\nhard\r\n==XY"));
    CHECK(binary_of(L(m), "2", &b) == -EILSEQ);
    CHECK(binary_of(L(m), "3", &b) == 0 && SAME(b, "\xe9t\xe9"));
    /* Padding ends a chunk, another may follow; junk is skipped. */
    CHECK(binary_of(L(m), "4", &b) == 0 && SAME(b, "hello!"));
    CHECK(binary_of(L(m), "5", &b) == 0 && SAME(b, "hello"));
    /* BODY[] sections are never decoded. */
    CHECK(section_of(L(m), "4", &b) == 0 && SAME(b, "aGVs\r\nbG8=\r\nIQ=="));
    buf_free(&b);
}

/* --- decoding --- */

TEST(rfc2047_decoding)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        /* RFC 2047 section 8 */
        {"=?ISO-8859-1?Q?a?=", "a"},
        {"=?ISO-8859-1?Q?a?= b", "a b"},
        {"=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=", "ab"},
        {"=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=", "ab"},
        {"=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=", "ab"},
        {"=?ISO-8859-1?Q?a_b?=", "a b"},
        {"=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=", "a b"},
        /* charsets to UTF-8 */
        {"=?iso-8859-1?q?caf=E9?=", "caf\xc3\xa9"},
        {"=?UTF-8?B?w6k=?= x", "\xc3\xa9 x"},
        {"=?windows-1252?Q?=80?=", "\xe2\x82\xac"},
        {"=?utf-8*en?q?lang?=", "lang"},
        /* mixed charsets, B and Q, text between words kept */
        {"x =?utf-8?B?w6k=?= y =?iso-8859-1?Q?=E9?=z", "x \xc3\xa9 y \xc3\xa9z"},
        /* a UTF-8 character split over two words */
        {"=?utf-8?q?=E2=82?= =?utf-8?b?rA==?=", "\xe2\x82\xac"},
        /* not encoded words: left as they are */
        {"=?utf-8?x?abc?=", "=?utf-8?x?abc?="},
        {"=?utf-8?q?a b?=", "=?utf-8?q?a b?="},
        {"=?utf-8?q?abc", "=?utf-8?q?abc"},
        {"a =? b ?= c", "a =? b ?= c"},
        /* unknown charset: bytes pass through; bad bytes become U+FFFD */
        {"=?x-unknown?q?a=FFb?=", "a\xff" "b"},
        {"=?utf-16be?b?2D0=?=", "\xef\xbf\xbd"},
    };
    buf b;
    buf_init(&b);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf m;
        buf_init(&m);
        buf_printf(&m, "Subject: %s\r\n\r\n", cases[i].in);
        CHECK(header_of((const char *)m.data, m.len, "SUBJECT", &b) == 1);
        buf_free(&m);
        CHECKM(b.len == strlen(cases[i].want) && memcmp(b.data, cases[i].want, b.len) == 0,
               "'%s' gave '%s'", cases[i].in, (const char *)b.data);
    }
    static const char multi[] = "Subject: one\r\nX: y\r\nsubject:  =?utf-8?q?two?= \r\n"
                                "Empty:\r\n\r\nSubject: body\r\n";
    CHECK(header_of(L(multi), "Subject", &b) == 1 && SAME(b, "one\ntwo"));
    CHECK(header_of(L(multi), "empty", &b) == 1 && b.len == 0);
    CHECK(header_of(L(multi), "absent", &b) == 0 && b.len == 0);
    buf_free(&b);
}

TEST(rfc2231_parameters)
{
    static const char m[] =
        "Content-Type: application/x-stuff;\r\n"
        " title*0*=us-ascii'en'This%20is%20even%20more%20;\r\n"
        " title*2=\"isn't it!\";\r\n"
        " title*1*=%2A%2A%2Afun%2A%2A%2A%20;\r\n"
        " name*=iso-8859-1''caf%E9; (comment) plain=\"a\\\"b\"; novalue; =x\r\n"
        "Content-Disposition: INLINE; filename=\"fallback\"; filename*=utf-8''%C3%A9.txt\r\n"
        "\r\n";
    buf b;
    buf_init(&b);
    structure_of(L(m), 1, &b);
    CHECK(SAME(b, "(\"APPLICATION\" \"X-STUFF\" (\"TITLE\" \"This is even more ***fun*** isn't it!\" "
                  "\"NAME\" {5}\r\ncaf\xc3\xa9 \"PLAIN\" \"a\\\"b\") NIL NIL \"7BIT\" 0 NIL "
                  "(\"INLINE\" (\"FILENAME\" {6}\r\n\xc3\xa9.txt)) NIL NIL)"));
    buf_free(&b);
}

TEST(extension_fields)
{
    static const char m[] =
        "Content-Type: image/png\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        "Content-ID: <img1@x>\r\n"
        "Content-Description: a\r\n picture\r\n"
        "Content-Language: en, (comment) fr-CA\r\n"
        "Content-Location: http://x.test/a.png\r\n"
        "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==\r\n"
        "Content-Disposition: inline\r\n"
        "\r\n"
        "iVBORw0KGgo=";
    buf b;
    buf_init(&b);
    structure_of(L(m), 1, &b);
    CHECK(SAME(b, "(\"IMAGE\" \"PNG\" NIL \"<img1@x>\" \"a picture\" \"BASE64\" 12 "
                  "\"Q2hlY2sgSW50ZWdyaXR5IQ==\" (\"INLINE\" NIL) (\"en\" \"fr-CA\") "
                  "\"http://x.test/a.png\")"));
    buf_free(&b);
}

TEST(search_text)
{
    static const char m[] =
        "Subject: =?utf-8?q?S=C3=BC?=\r\n"
        "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n"
        "--b\r\nContent-Type: text/html; charset=windows-1252\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\ngGV1cm8=\r\n"
        "--b\r\nContent-Type: image/png\r\n\r\nnot text\r\n"
        "--b\r\nContent-Type: text/plain; charset=x-martian\r\n\r\n\xff\xfe\r\n"
        "--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: =?utf-8?b?aW5uZXI=?=\r\n\r\ninner\r\n"
        "--b--\r\n";
    buf b;
    buf_init(&b);
    mime_part *r = mime_parse(m, sizeof(m) - 1, NULL);
    mime_text_parts(r, m, &b);
    CHECK(SAME(b, "caf\xc3\xa9\n\xe2\x82\xac" "euro\n\xff\xfe\nSubject: inner\n\ninner\n"));
    buf_reset(&b);
    mime_body_text(r, m, &b);
    CHECK(SAME(b, "Subject: S\xc3\xbc\nContent-Type: multipart/mixed; boundary=b\n\n"
                  "caf\xc3\xa9\n\xe2\x82\xac" "euro\n\xff\xfe\nSubject: inner\n\ninner\n"));
    mime_free(r);
    buf_free(&b);
}

/* --- SORT / THREAD helpers --- */

TEST(base_subject)
{
    static const struct {
        const char *in, *want;
        int reply;
    } cases[] = {
        {"hello", "hello", 0},
        {"  hello \t  world  ", "hello world", 0},
        {"Re: hello", "hello", 1},
        {"RE:re: Fwd:  hello (fwd)", "hello", 1},
        {"[list] Re: hello", "hello", 1},
        {"Re [list]: hello", "hello", 1},
        {"[list] hello", "hello", 0},
        {"[list]", "[list]", 0},
        {"[fwd: Re: hello]", "hello", 1},
        {"Fw: [a][b] x", "x", 1},
        {"Reply: x", "Reply: x", 0},
        {"re:", "", 1},
        {"", "", 0},
    };
    buf b;
    buf_init(&b);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf_reset(&b);
        int r = mime_base_subject(cases[i].in, &b);
        CHECKM(r == cases[i].reply && b.len == strlen(cases[i].want) &&
                   (b.len == 0 || memcmp(b.data, cases[i].want, b.len) == 0),
               "'%s' gave '%.*s' %d", cases[i].in, (int)b.len, b.data ? (char *)b.data : "", r);
    }
    buf_free(&b);
}

TEST(first_address)
{
    static const char m[] = "From: =?utf-8?q?J=C3=B6rg?= <Joerg@x.test>, b@y.test\r\n"
                            "To: group: \"a b\"@c.test;\r\n"
                            "Cc: undisclosed:;\r\n\r\n";
    buf mb, dn;
    buf_init(&mb);
    buf_init(&dn);
    mime_part *r = mime_parse(m, sizeof(m) - 1, NULL);
    CHECK(mime_first_address(r, m, "from", &mb, &dn) == 1);
    CHECK(SAME(mb, "Joerg") && SAME(dn, "J\xc3\xb6rg"));
    buf_reset(&mb);
    buf_reset(&dn);
    CHECK(mime_first_address(r, m, "To", &mb, &dn) == 1);
    CHECK(SAME(mb, "a b") && SAME(dn, "a b@c.test"));
    CHECK(mime_first_address(r, m, "Cc", NULL, NULL) == 0);
    CHECK(mime_first_address(r, m, "Bcc", NULL, NULL) == 0);
    mime_free(r);
    buf_free(&mb);
    buf_free(&dn);
}

static int64_t date_of(const char *d)
{
    buf m;
    buf_init(&m);
    buf_printf(&m, "Date: %s\r\n\r\n", d);
    mime_part *r = mime_parse((const char *)m.data, m.len, NULL);
    int64_t t = mime_date(r, (const char *)m.data);
    mime_free(r);
    buf_free(&m);
    return t;
}

TEST(date_parsing)
{
    CHECK(date_of("Mon, 2 Jan 2006 15:04:05 -0700") == 1136239445);
    CHECK(date_of("2 Jan 2006 22:04:05 +0000") == 1136239445);
    CHECK(date_of("Mon , 02 Jan 2006 22:04:05 GMT (comment)") == 1136239445);
    CHECK(date_of("Mon, 2 Jan 06 17:04:05 EST") == 1136239445);
    CHECK(date_of("2 Jan 2006 22:04 UT") == 1136239440);
    CHECK(date_of("Mon Jan  2 22:04:05 2006") == 1136239445);
    CHECK(date_of("2 jan 2006 23:34:05 +0130") == 1136239445);
    CHECK(date_of("1 Jan 1970 00:00:00 Z") == 0);
    CHECK(date_of("29 Feb 2000 00:00:00 +0000") == 951782400);
    CHECK(date_of("1 Jan 99 00:00:00 +0000") == 915148800);
    CHECK(date_of("30 Feb 2001 00:00:00 +0000") == -1);
    CHECK(date_of("2 Jan 2006") == -1);
    CHECK(date_of("yesterday") == -1);
    CHECK(date_of("") == -1);
    CHECK(date_of("2 Foo 2006 10:00:00") == -1);
    CHECK(date_of("2 Jan 2006 25:00:00") == -1);
    mime_part *r = mime_parse("Subject: x\r\n\r\n", 14, NULL);
    CHECK(mime_date(r, "Subject: x\r\n\r\n") == -1);
    mime_free(r);
}

/* --- what breaks parsers --- */

TEST(degenerate_messages)
{
    buf b;
    buf_init(&b);
    /* only headers, no blank line */
    static const char only[] = "Subject: only\r\nFrom: a@b.test";
    structure_of(L(only), 1, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL NIL NIL NIL)"));
    CHECK(section_of(L(only), "HEADER", &b) == 0 && same(&b, only, sizeof(only) - 1));
    CHECK(section_of(L(only), "TEXT", &b) == 0 && b.len == 0);
    CHECK(section_of(L(only), "1", &b) == 0 && b.len == 0);
    /* no headers: the first line is not a field, so all of it is body */
    static const char nohdr[] = "hello world\r\nsecond: line\r\n";
    structure_of(L(nohdr), 0, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 27 2)"));
    envelope_of(L(nohdr), &b);
    CHECK(SAME(b, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"));
    CHECK(section_of(L(nohdr), "HEADER", &b) == 0 && b.len == 0);
    CHECK(section_of(L(nohdr), "TEXT", &b) == 0 && same(&b, nohdr, sizeof(nohdr) - 1));
    /* a blank first line: an empty header */
    static const char blank[] = "\r\nbody";
    CHECK(section_of(L(blank), "HEADER", &b) == 0 && SAME(b, "\r\n"));
    CHECK(section_of(L(blank), "TEXT", &b) == 0 && SAME(b, "body"));
    /* one byte */
    structure_of(L("x"), 1, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1 NIL NIL NIL NIL)"));
    CHECK(section_of(L("x"), "1", &b) == 0 && SAME(b, "x"));
    /* nothing at all */
    structure_of("", 0, 1, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0 NIL NIL NIL NIL)"));
    envelope_of("", 0, &b);
    CHECK(SAME(b, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"));
    CHECK(section_of("", 0, "", &b) == 0 && b.len == 0);
    CHECK(section_of("", 0, "1", &b) == 0 && b.len == 0);
    CHECK(section_of("", 0, "HEADER.FIELDS (A)", &b) == 0 && b.len == 0);
    CHECK(header_of("", 0, "subject", &b) == 0);
    mime_part *r = mime_parse(NULL, 0, NULL);
    CHECK(mime_part_count(r) == 1);
    mime_free(r);
    buf_free(&b);
}

/* A NULL tree: the functions parse for themselves or answer as for an
 * empty message. */
TEST(null_tree)
{
    buf b;
    buf_init(&b);
    CHECK(mime_section(NULL, mixed, sizeof(mixed) - 1, "2", &b) == 0 && SAME(b, "AAECAwQ="));
    buf_reset(&b);
    CHECK(mime_binary(NULL, mixed, sizeof(mixed) - 1, "2", &b) == 0 && SAME(b, "\x00\x01\x02\x03\x04"));
    buf_reset(&b);
    mime_envelope(NULL, NULL, &b);
    CHECK(SAME(b, "(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"));
    buf_reset(&b);
    mime_bodystructure(NULL, NULL, 0, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)"));
    CHECK(mime_date(NULL, NULL) == -1);
    buf_free(&b);
}

TEST(bare_lf_and_nul_bytes)
{
    static const char m[] = "Subject: lf\nContent-Type: multipart/mixed; boundary=q\n\n"
                            "--q\nContent-Type: text/plain\n\na\0b\nc\n--q\n\nsecond\n--q--\n";
    buf b;
    buf_init(&b);
    structure_of(L(m), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 2)"
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 6 1) \"MIXED\")"));
    CHECK(section_of(L(m), "1", &b) == 0 && SAME(b, "a\0b\nc"));
    CHECK(section_of(L(m), "1.MIME", &b) == 0 && SAME(b, "Content-Type: text/plain\n\n"));
    CHECK(section_of(L(m), "HEADER.FIELDS (SUBJECT)", &b) == 0 && SAME(b, "Subject: lf\n\n"));
    buf_free(&b);
}

TEST(broken_boundaries)
{
    buf b;
    buf_init(&b);
    /* missing final boundary: the last part runs to the end */
    static const char open_end[] = "Content-Type: multipart/mixed; boundary=z\r\n\r\n"
                                   "--z\r\n\r\none\r\n--z\r\n\r\ntwo\r\n";
    structure_of(L(open_end), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 3 1)"
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1) \"MIXED\")"));
    /* boundary never found, or none given: the body is one text part */
    static const char never[] = "Content-Type: multipart/mixed; boundary=z\r\n\r\nno parts\r\n";
    structure_of(L(never), 1, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 1 "
                  "NIL NIL NIL NIL)"));
    CHECK(section_of(L(never), "1", &b) == 0 && SAME(b, "no parts\r\n"));
    static const char none[] = "Content-Type: multipart/mixed\r\n\r\n--z\r\n\r\nx\r\n";
    structure_of(L(none), 0, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 10 3)"));
    /* an inner multipart never closed ends at the outer delimiter; an
     * outer boundary that extends the inner one is still the outer's */
    static const char nested[] = "Content-Type: multipart/mixed; boundary=ab\r\n\r\n"
                                 "--ab\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
                                 "--a\r\n\r\ninner\r\n"
                                 "--ab\r\n\r\nouter\r\n--ab--\r\n";
    structure_of(L(nested), 0, &b);
    CHECK(SAME(b, "(((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1) "
                  "\"ALTERNATIVE\")(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 5 1) "
                  "\"MIXED\")"));
    /* a part header that runs into the next delimiter */
    static const char cut[] = "Content-Type: multipart/mixed; boundary=c\r\n\r\n"
                              "--c\r\nContent-Type: text/html\r\n--c\r\n\r\nx\r\n--c--";
    structure_of(L(cut), 0, &b);
    CHECK(SAME(b, "((\"TEXT\" \"HTML\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 0 0)"
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1) \"MIXED\")"));
    buf_free(&b);
}

TEST(digest_parts_default_to_messages)
{
    static const char m[] = "Content-Type: multipart/digest; boundary=d\r\n\r\n"
                            "--d\r\n\r\nSubject: one\r\n\r\n1\r\n"
                            "--d\r\nContent-Type: text/plain\r\n\r\nnot a message\r\n--d--\r\n";
    buf b;
    buf_init(&b);
    structure_of(L(m), 0, &b);
    CHECK(SAME(b, "((\"MESSAGE\" \"RFC822\" NIL NIL NIL \"7BIT\" 17 "
                  "(NIL \"one\" NIL NIL NIL NIL NIL NIL NIL NIL) "
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1) 3)"
                  "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 13 1) \"DIGEST\")"));
    CHECK(section_of(L(m), "1.HEADER", &b) == 0 && SAME(b, "Subject: one\r\n\r\n"));
    buf_free(&b);
}

/* n nested multiparts around one text part. */
static void nested_message(buf *m, int n)
{
    buf_append_str(m, "Subject: deep\r\n");
    for (int i = 0; i < n; i++)
        buf_printf(m, "Content-Type: multipart/mixed; boundary=\"=_%d_=\"\r\n\r\n--=_%d_=\r\n", i, i);
    buf_append_str(m, "Content-Type: text/plain\r\n\r\nleaf\r\n");
    for (int i = n - 1; i >= 0; i--)
        buf_printf(m, "--=_%d_=--\r\n", i);
}

static size_t count_char(const buf *b, char c)
{
    size_t n = 0;
    for (size_t i = 0; i < b->len; i++)
        n += b->data[i] == (uint8_t)c;
    return n;
}

TEST(deep_nesting)
{
    buf m, b;
    buf_init(&m);
    buf_init(&b);
    nested_message(&m, 1000);
    const char *msg = (const char *)m.data;
    clock_t t0 = clock();

    /* Default limits: 100 levels are opened, the 101st is opaque. */
    mime_part *r = mime_parse(msg, m.len, NULL);
    CHECK(mime_part_count(r) == 101);
    mime_bodystructure(r, msg, 1, &b);
    CHECK(count_char(&b, '(') == count_char(&b, ')'));
    CHECK(memcmp(b.data, "((((", 4) == 0);
    CHECK(strstr((char *)b.data, "\"APPLICATION\" \"OCTET-STREAM\" NIL") != NULL);
    buf_reset(&b);
    buf path;
    buf_init(&path);
    for (int i = 0; i < 100; i++)
        buf_append_str(&path, i ? ".1" : "1");
    CHECK(mime_section(r, msg, m.len, (const char *)path.data, &b) == 0);
    /* the opaque part at depth 100: its body is the rest of the nesting */
    CHECK(b.len > 0 && memcmp(b.data, "--=_100_=\r\nContent-Type: multipart/mixed;", 41) == 0);
    buf_reset(&b);
    buf_append_str(&path, ".MIME");
    CHECK(mime_section(r, msg, m.len, (const char *)path.data, &b) == 0);
    CHECK(SAME(b, "Content-Type: multipart/mixed; boundary=\"=_100_=\"\r\n\r\n"));
    mime_free(r);

    /* Raised limits: all 1000 levels, without recursion. */
    mime_limits lim = {5000, 0, 0};
    r = mime_parse(msg, m.len, &lim);
    CHECK(mime_part_count(r) == 1001);
    buf_reset(&b);
    mime_bodystructure(r, msg, 0, &b);
    CHECK(count_char(&b, '(') == 1002 && count_char(&b, ')') == 1002);
    buf_reset(&b);
    buf_reset(&path);
    for (int i = 0; i < 1000; i++)
        buf_append_str(&path, i ? ".1" : "1");
    CHECK(mime_section(r, msg, m.len, (const char *)path.data, &b) == 0 && SAME(b, "leaf"));
    buf_reset(&b);
    mime_text_parts(r, msg, &b);
    CHECK(SAME(b, "leaf\n"));
    mime_free(r);
    printf("  1000-deep message (%zu bytes): %.1f ms for both parses and outputs\n", m.len,
           (double)(clock() - t0) * 1000.0 / CLOCKS_PER_SEC);
    buf_free(&path);
    buf_free(&m);
    buf_free(&b);
}

TEST(part_and_header_limits)
{
    buf m, b;
    buf_init(&m);
    buf_init(&b);
    buf_append_str(&m, "Content-Type: multipart/mixed; boundary=p\r\n\r\n");
    for (int i = 0; i < 20000; i++)
        buf_printf(&m, "--p\r\n\r\n%d\r\n", i);
    buf_append_str(&m, "--p--\r\n");
    const char *msg = (const char *)m.data;
    mime_part *r = mime_parse(msg, m.len, NULL);
    CHECK(mime_part_count(r) == 10000);
    /* The last part kept takes the rest of the parts as its content. */
    CHECK(mime_section(r, msg, m.len, "9999", &b) == 0);
    CHECK(b.len > 100 && memcmp(b.data, "9998\r\n--p\r\n", 11) == 0);
    mime_free(r);

    mime_limits lim = {0, 3, 0};
    r = mime_parse(msg, m.len, &lim);
    CHECK(mime_part_count(r) == 3);
    mime_free(r);

    /* Fields past max_header_bytes are not read. */
    static const char h[] = "Subject: s\r\nX-Pad: 0123456789\r\nContent-Type: text/html\r\n\r\nb";
    lim = (mime_limits){0, 0, 20};
    r = mime_parse(h, sizeof(h) - 1, &lim);
    buf_reset(&b);
    mime_bodystructure(r, h, 0, &b);
    CHECK(SAME(b, "(\"TEXT\" \"PLAIN\" (\"CHARSET\" \"us-ascii\") NIL NIL \"7BIT\" 1 1)"));
    buf_reset(&b);
    CHECK(mime_header_value(r, h, "x-pad", &b) == 1);
    CHECK(mime_header_value(r, h, "content-type", &b) == 0);
    buf_reset(&b);
    CHECK(mime_section(r, h, sizeof(h) - 1, "TEXT", &b) == 0 && SAME(b, "b"));
    mime_free(r);
    buf_free(&m);
    buf_free(&b);
}

/* Encoded message/rfc822 cannot be entered: it stays one opaque part. */
TEST(encoded_rfc822_is_opaque)
{
    static const char m[] = "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                            "U3ViamVjdDogeA0KDQpi\r\n";
    buf b;
    buf_init(&b);
    structure_of(L(m), 0, &b);
    CHECK(SAME(b, "(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"BASE64\" 22)"));
    CHECK(binary_of(L(m), "1", &b) == 0 && SAME(b, "Subject: x\r\n\r\nb"));
    buf_free(&b);
}

int main(void)
{
    RUN(simple_text_message);
    RUN(multipart_alternative);
    RUN(multipart_mixed_with_base64_attachment);
    RUN(message_rfc822_part);
    RUN(top_level_message_rfc822);
    RUN(nested_messages);
    RUN(group_and_obsolete_addresses);
    RUN(envelope_string_forms);
    RUN(header_fields_sections);
    RUN(section_spec_syntax);
    RUN(binary_decoding);
    RUN(rfc2047_decoding);
    RUN(rfc2231_parameters);
    RUN(extension_fields);
    RUN(search_text);
    RUN(base_subject);
    RUN(first_address);
    RUN(date_parsing);
    RUN(degenerate_messages);
    RUN(null_tree);
    RUN(bare_lf_and_nul_bytes);
    RUN(broken_boundaries);
    RUN(digest_parts_default_to_messages);
    RUN(deep_nesting);
    RUN(part_and_header_limits);
    RUN(encoded_rfc822_is_opaque);
    return t_done();
}
