/*
 * smtp_client.h - a blocking SMTP and LMTP client: the queue's LMTP
 * deliveries into the stores and its relay to other mail servers.
 *
 * It runs on the queue's delivery threads, never on an event loop, so it
 * may block (with timeouts on every step). It pipelines when the server
 * offers PIPELINING, speaks STARTTLS (opportunistic or required), AUTH
 * PLAIN for smart hosts, and gives one result per recipient: the RCPT
 * reply when a recipient was refused, else the reply to the data (SMTP:
 * one for all; LMTP: one per accepted recipient, RFC 2033).
 *
 * Replies are parsed by a bounded reader (at most 100 continuation lines
 * of at most 2048 bytes each); anything else is a protocol error and the
 * connection is dropped.
 */
#ifndef HV_SMTP_CLIENT_H
#define HV_SMTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/err.h"

typedef struct smtp_client smtp_client;

enum smtp_client_tls {
    SMTP_TLS_NONE = 0,
    SMTP_TLS_OPPORTUNISTIC = 1, /* STARTTLS when offered; certificate not checked */
    SMTP_TLS_REQUIRED = 2,      /* STARTTLS and a certificate valid for host, else fail */
    SMTP_TLS_IMPLICIT = 3,      /* TLS from the first byte (port 465); checked */
};

typedef struct smtp_client_opts {
    int lmtp;                  /* LHLO instead of EHLO, per-recipient data replies */
    enum smtp_client_tls tls;
    const char *helo;          /* our name */
    int timeout_ms;            /* per read/write; 0: 300000 (RFC 5321 4.5.3.2) */
    const char *auth_user;     /* AUTH PLAIN after TLS when set */
    const char *auth_pass;
    const char *tls_ca_file;   /* for REQUIRED/IMPLICIT; NULL: system store */
} smtp_client_opts;

/* One server reply. */
typedef struct smtp_reply {
    int code;            /* 250, 451, ...; 0 when no reply came (connection lost) */
    char enhanced[16];   /* "2.0.0", or "" when the server gave none */
    char text[512];      /* the text of the last line, truncated */
} smtp_reply;

/* Connects to host:port (a name or literal address), reads the greeting,
 * says EHLO/LHLO, STARTTLS as asked. */
int smtp_client_connect(const char *host, int port, const smtp_client_opts *o,
                        smtp_client **out, hv_err *err);

typedef struct smtp_tx {
    const char *mail_from;           /* "" for <> */
    const char *mail_params;         /* e.g. "BODY=8BITMIME SMTPUTF8", or NULL */
    const char *const *rcpts;
    const char *const *rcpt_params;  /* per recipient, or NULL */
    size_t nrcpts;
    const void *data;                /* CRLF lines, not dot-stuffed */
    size_t len;
} smtp_tx;

/* Runs one transaction. results[i] is recipient i's outcome. Returns 0
 * when the connection may carry another transaction, < 0 when it is dead
 * (recipients without a reply then have code 0 and count as temporary
 * failures). */
int smtp_client_send(smtp_client *c, const smtp_tx *tx, smtp_reply *results, hv_err *err);
/* What the server offered: "PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8"...
 * (case-insensitive); 1 when it did. */
int smtp_client_has(const smtp_client *c, const char *extension);
int smtp_client_is_tls(const smtp_client *c);
/* The SIZE the server announced (bytes), 0 when none or no limit. */
uint64_t smtp_client_size_limit(const smtp_client *c);
void smtp_client_close(smtp_client *c); /* QUIT when still connected, then frees */

/* --- where mail for a domain goes --- */

typedef struct smtp_hop {
    char host[256];
    int port;
    int preference;
} smtp_hop;

/* The hosts to try for domain, best first: its static route from routes
 * ("domain=host:port,...", "*" for any other domain), else its MX records
 * (or the domain itself when it has none, RFC 5321 5.1). Returns the count
 * (>= 1), -ENOENT when the domain does not exist (permanent), -EAGAIN when
 * DNS failed (temporary). */
int smtp_route_lookup(const char *domain, const char *routes, smtp_hop *out, size_t max,
                      hv_err *err);

/* For tests: ask the DNS server at ipv4:port instead of resolv.conf's
 * (NULL: back to resolv.conf). Not thread-safe; set it before lookups. */
void smtp_route_set_dns_server(const char *ipv4, int port);

#endif
