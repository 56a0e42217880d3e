/*
 * tls.h - the TLS server context every service uses (imap, smtp), and
 * the client context for connections between Haven's own services.
 *
 * One place decides protocol versions and options and loads the
 * certificate chain and key named by tls_cert / tls_key in haven.conf, so
 * the services cannot drift apart (and reloading on change, coming later,
 * has one place to live).
 */
#ifndef HV_TLS_H
#define HV_TLS_H

#include <openssl/ssl.h>

#include "lib/conf.h"
#include "lib/err.h"

/* A server context: TLS 1.2 and later, no compression or renegotiation,
 * record buffers released while idle. NULL with the reason in err when the
 * certificate or key cannot be loaded or do not match. */
SSL_CTX *tls_server_context(const conf *c, hv_err *err);

/* A client context for this node's own connections to another Haven
 * service (the proxy to a store): TLS 1.2 and later, no compression or
 * renegotiation, record buffers released while idle, and the peer's
 * certificate always verified: against ca_file (PEM, one certificate or
 * several: a CA, or the peer's own self-signed certificate) or, when
 * ca_file is empty, the system's trusted CAs. Each connection names the
 * peer it expects with tls_client_expect. NULL with the reason in err. */
SSL_CTX *tls_client_context(const char *ca_file, hv_err *err);

/* Sets on ssl the name its peer's certificate must carry (a DNS name, or
 * an IP address when name is a literal; SNI for a DNS name). */
int tls_client_expect(SSL *ssl, const char *name, hv_err *err);

struct bufferevent;
/* Bytes still to be sent on a connection: its own output, plus the output
 * of the socket under a TLS filter (which its write callback never sees
 * drain). Sessions wait for 0 before closing after their last words. */
size_t tls_bev_unsent(struct bufferevent *bev);

#endif
