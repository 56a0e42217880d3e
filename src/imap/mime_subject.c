/*
 * mime_subject.c - the base subject of RFC 5256 section 2.1, for SORT
 * SUBJECT and THREAD ORDEREDSUBJECT/REFERENCES.
 *
 * The steps are followed in the RFC's order on a normalized copy (blanks
 * collapsed); each step only moves the two ends of the text inward, so
 * the whole extraction is linear in the subject's length.
 */
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

/* subj-blob = "[" *BLOBCHAR "]" *WSP; returns i when there is none. */
static size_t blob_end(const char *p, size_t i, size_t e)
{
    if (i >= e || p[i] != '[')
        return i;
    size_t j = i + 1;
    while (j < e && p[j] != '[' && p[j] != ']')
        j++;
    if (j >= e || p[j] != ']')
        return i;
    for (j++; j < e && p[j] == ' '; j++)
        ;
    return j;
}

/* The rest of subj-refwd after "re"/"fw"/"fwd": *WSP [subj-blob] ":" */
static size_t refwd_tail(const char *p, size_t j, size_t e)
{
    while (j < e && p[j] == ' ')
        j++;
    j = blob_end(p, j, e);
    return j < e && p[j] == ':' ? j + 1 : 0;
}

/* subj-leader without its WSP alternative: *subj-blob subj-refwd */
static size_t leader_end(const char *p, size_t i, size_t e)
{
    size_t j = i, k;
    while ((k = blob_end(p, j, e)) > j)
        j = k;
    if (e - j >= 2 && strncasecmp(p + j, "re", 2) == 0 && (k = refwd_tail(p, j + 2, e)))
        return k;
    if (e - j >= 3 && strncasecmp(p + j, "fwd", 3) == 0 && (k = refwd_tail(p, j + 3, e)))
        return k;
    if (e - j >= 2 && strncasecmp(p + j, "fw", 2) == 0 && (k = refwd_tail(p, j + 2, e)))
        return k;
    return i;
}

int mime_base_subject(const char *subject, buf *out)
{
    buf s;
    buf_init(&s);
    /* (1) tabs and line breaks to spaces, runs of spaces to one */
    for (const char *c = subject ? subject : ""; *c; c++) {
        char ch = *c == '\t' || *c == '\r' || *c == '\n' ? ' ' : *c;
        if (ch == ' ' && s.len && s.data[s.len - 1] == ' ')
            continue;
        buf_append(&s, &ch, 1);
    }
    const char *p = (const char *)(s.data ? s.data : (const uint8_t *)"");
    size_t b = 0, e = s.len;
    int reply = 0;
    for (;;) {
        /* (2) trailers: WSP and "(fwd)" */
        for (;;) {
            if (e > b && p[e - 1] == ' ') {
                e--;
            } else if (e - b >= 5 && strncasecmp(p + e - 5, "(fwd)", 5) == 0) {
                e -= 5;
                reply = 1;
            } else {
                break;
            }
        }
        /* (5) repeat (3) and (4) until nothing changes */
        for (;;) {
            size_t before = b, k;
            /* (3) leaders */
            for (;;) {
                if (b < e && p[b] == ' ') {
                    b++;
                } else if ((k = leader_end(p, b, e)) > b) {
                    b = k;
                    reply = 1;
                } else {
                    break;
                }
            }
            /* (4) a blob, when something is left after it */
            k = blob_end(p, b, e);
            if (k > b && k < e)
                b = k;
            if (b == before)
                break;
        }
        /* (6) "[fwd: subject]" */
        if (e - b >= 6 && strncasecmp(p + b, "[fwd:", 5) == 0 && p[e - 1] == ']') {
            b += 5;
            e--;
            reply = 1;
            continue;
        }
        break;
    }
    buf_append(out, p + b, e - b);
    buf_free(&s);
    return reply;
}
