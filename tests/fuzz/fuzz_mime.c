/*
 * fuzz_mime.c - libFuzzer target for the MIME parser and everything built
 * on it (src/imap/mime.h).
 *
 * The whole input is the message (so the seeds are plain .eml files),
 * copied to a buffer of exactly its size so that any read past the end is
 * caught. Its first byte also picks a section spec from the list below
 * and, with its top bit, tiny limits (so the depth/part/header caps are
 * reached often). Besides "no crash, no leak, no
 * UB" the target checks invariants: BODY[] is the message, HEADER + TEXT
 * is the message, and ENVELOPE/BODY/BODYSTRUCTURE are well-formed IMAP
 * (balanced lists of atoms, quoted strings and exact-length literals).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imap/mime.h"

static const char *const specs[] = {
    "",
    "HEADER",
    "TEXT",
    "1",
    "2",
    "1.1",
    "1.2",
    "2.1",
    "2.2.1",
    "1.MIME",
    "2.MIME",
    "1.1.MIME",
    "1.HEADER",
    "2.TEXT",
    "2.HEADER",
    "1.2.3",
    "3",
    "HEADER.FIELDS (SUBJECT FROM)",
    "HEADER.FIELDS.NOT (X-A CONTENT-TYPE)",
    "1.HEADER.FIELDS (TO \"Cc\")",
    "2.HEADER.FIELDS.NOT (DATE)",
    "header.fields ({4}\r\nDATE)",
    "MIME",
    "1.",
    "0",
    "01",
    "HEADER.FIELDS ()",
    "1..2",
    "TEXT.MIME",
    "4294967296",
    "4294967295",
    "1.2.1.2.1.2",
};
#define NSPECS (sizeof(specs) / sizeof(specs[0]))

/* Checks that s is one IMAP parenthesized list (or NIL); traps if not. */
static void check_imap(const uint8_t *s, size_t n)
{
    size_t i = 0;
    long depth = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == '(') {
            depth++;
            i++;
        } else if (c == ')') {
            if (--depth < 0)
                __builtin_trap();
            i++;
        } else if (c == ' ') {
            i++;
        } else if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                if (s[i] == '\r' || s[i] == '\n' || s[i] == 0 || s[i] >= 0x80)
                    __builtin_trap();
                if (s[i] == '\\')
                    i++;
            }
            if (i >= n)
                __builtin_trap();
            i++;
        } else if (c == '{') {
            size_t len = 0;
            for (i++; i < n && s[i] >= '0' && s[i] <= '9'; i++)
                len = len * 10 + (size_t)(s[i] - '0');
            if (i + 3 > n || s[i] != '}' || s[i + 1] != '\r' || s[i + 2] != '\n')
                __builtin_trap();
            i += 3;
            if (n - i < len || memchr(s + i, 0, len))
                __builtin_trap();
            i += len;
        } else if ((c >= '0' && c <= '9') || c == 'N') {
            while (i < n && s[i] != ' ' && s[i] != ')' && s[i] != '(')
                i++;
        } else {
            __builtin_trap();
        }
        if (depth == 0 && i < n)
            __builtin_trap(); /* one list only */
    }
    if (depth != 0)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t sel = size ? data[0] : 0;
    size_t len = size;
    char *msg = malloc(len ? len : 1);
    if (len)
        memcpy(msg, data, len);
    mime_limits tiny = {3, 6, 64};
    mime_part *root = mime_parse(msg, len, (sel & 0x80) ? &tiny : NULL);
    const char *spec = specs[(sel & 0x7f) % NSPECS];

    buf b, c;
    buf_init(&b);
    buf_init(&c);
    mime_envelope(root, msg, &b);
    check_imap(b.data, b.len);
    buf_reset(&b);
    mime_bodystructure(root, msg, 1, &b);
    check_imap(b.data, b.len);
    buf_reset(&b);
    mime_bodystructure(root, msg, 0, &b);
    check_imap(b.data, b.len);

    buf_reset(&b);
    if (mime_section(root, msg, len, "", &b) != 0 || b.len != len || (len && memcmp(b.data, msg, len)))
        __builtin_trap();
    buf_reset(&b);
    mime_section(root, msg, len, "HEADER", &b);
    mime_section(root, msg, len, "TEXT", &b);
    if (b.len != len || (len && memcmp(b.data, msg, len)))
        __builtin_trap();

    buf_reset(&b);
    int rc = mime_section(root, msg, len, spec, &b);
    buf_reset(&c);
    int rc2 = mime_section(NULL, msg, len, spec, &c); /* parses by itself */
    if (rc != rc2 || ((sel & 0x80) == 0 && (b.len != c.len || (b.len && memcmp(b.data, c.data, b.len)))))
        __builtin_trap();
    /* Undoing base64 or quoted-printable never makes a part longer. */
    size_t section_len = b.len;
    buf_reset(&b);
    rc2 = mime_binary(root, msg, len, spec, &b);
    if (rc == 0 && rc2 == 0 && spec[0] && strspn(spec, "0123456789.") == strlen(spec) &&
        b.len > section_len)
        __builtin_trap();

    buf_reset(&b);
    mime_header_value(root, msg, (sel & 1) ? "subject" : "from", &b);
    buf_reset(&c);
    mime_base_subject((const char *)b.data, &c);
    buf_reset(&b);
    mime_body_text(root, msg, &b);
    buf_reset(&b);
    buf_reset(&c);
    mime_first_address(root, msg, (sel & 2) ? "to" : "from", &b, &c);
    mime_date(root, msg);
    (void)mime_part_count(root);

    buf_free(&b);
    buf_free(&c);
    mime_free(root);
    free(msg);
    return 0;
}
