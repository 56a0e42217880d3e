/*
 * http_parser.h - the http service's request reader: a bounded, resumable
 * state machine over the head of an HTTP/1.x request (request line and
 * header fields, RFC 9112).
 *
 * It is fed bytes as they arrive, in pieces of any size, and keeps only
 * what routing needs: the method, the request target (up to
 * HTTP_TARGET_MAX bytes), the version, whether the connection stays open,
 * and whether a Host field came. Every other field is checked for syntax
 * and forgotten. The whole head may not exceed HTTP_HEAD_MAX bytes.
 *
 * Refused, with the status to answer: bare CR, control bytes, whitespace
 * before a field's colon, obsolete line folding (400); a message body
 * (Content-Length other than 0, any Transfer-Encoding: the service takes
 * none, and a body it did not read would be taken for the next request:
 * 400); HTTP/1.1 without exactly one Host (400); a target longer than
 * HTTP_TARGET_MAX (414); a head longer than HTTP_HEAD_MAX or with more
 * than HTTP_FIELDS_MAX fields (431); a method longer than HTTP_METHOD_MAX
 * (501); a version other than 1.0 and 1.1 (505). A lone LF ends a line as
 * CRLF does (RFC 9112 2.2); empty lines before the request line are
 * skipped.
 *
 * The method is returned as sent (it is case-sensitive); choosing which
 * methods are allowed is the server's business (http_server.c).
 */
#ifndef HV_HTTP_PARSER_H
#define HV_HTTP_PARSER_H

#include <stddef.h>

#define HTTP_HEAD_MAX 8192   /* request line and fields, with their line ends */
#define HTTP_TARGET_MAX 1024 /* request target, as sent */
#define HTTP_METHOD_MAX 16
#define HTTP_FIELDS_MAX 64

enum http_parse_result {
    HTTP_PARSE_ERROR = -1, /* p->status and p->reason say why; sticky */
    HTTP_PARSE_MORE = 0,   /* everything was taken; the head is not complete */
    HTTP_PARSE_DONE = 1,   /* a complete head; bytes after *used are not ours */
};

typedef struct http_request {
    char method[HTTP_METHOD_MAX + 1];
    char target[HTTP_TARGET_MAX + 1]; /* as sent: origin-form or absolute-form */
    size_t path_off, path_len;        /* the path within target: no query, no authority */
    int minor;                        /* HTTP/1.minor: 0 or 1 */
    int keep_alive;                   /* the connection may carry another request */
    unsigned fields;                  /* header fields seen */
} http_request;

typedef struct http_parser {
    int state;
    size_t head_len;  /* bytes of this head taken so far */
    size_t len;       /* of the token being read (method, target, version, name, value) */
    char tok[24];     /* the version, or a field name we may care about */
    char value[64];   /* the start of a field value we care about */
    size_t value_len;
    int field;        /* which field is being read (http_parser.c) */
    int hosts, conn_close, conn_keep;
    http_request req;
    int status;         /* after HTTP_PARSE_ERROR: 400, 414, 431, 501 or 505 */
    const char *reason; /* after HTTP_PARSE_ERROR: a static, one-line reason */
} http_parser;

void http_parser_init(http_parser *p);
/* Takes bytes from data[0..n) and sets *used to how many it took. After
 * HTTP_PARSE_DONE the request is in p->req and the parser takes nothing
 * more until http_parser_init. */
int http_parser_feed(http_parser *p, const char *data, size_t n, size_t *used);

#endif
