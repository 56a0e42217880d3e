/* tls.c - the shared TLS server and client contexts; see tls.h. */
#include "lib/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <string.h>

SSL_CTX *tls_server_context(const conf *c, hv_err *err)
{
    char cert[4096], key[4096];
    conf_path(c, "tls_cert", cert, sizeof(cert));
    conf_path(c, "tls_key", key, sizeof(key));
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        hv_err_set(err, -ENOMEM, "TLS: cannot create context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    /* Idle connections are most connections: give their record buffers
     * (some 34 KiB each) back while they have nothing to read or write. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        hv_err_set(err, -EINVAL, "TLS: cannot load %s / %s: %s", cert, key, e);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

SSL_CTX *tls_client_context(const char *ca_file, hv_err *err)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        hv_err_set(err, -ENOMEM, "TLS: cannot create a client context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca_file && *ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        ERR_clear_error();
        hv_err_set(err, -EINVAL, "TLS: cannot load the trusted certificates %s: %s",
                   ca_file && *ca_file ? ca_file : "(system default)", e);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_client_expect(SSL *ssl, const char *name, hv_err *err)
{
    unsigned char a[16];
    int literal = inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1;
    int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
                     : SSL_set_tlsext_host_name(ssl, name) == 1 && SSL_set1_host(ssl, name) == 1;
    if (ok != 1) {
        ERR_clear_error();
        return hv_err_set(err, -EINVAL, "TLS: cannot expect the name '%s'", name);
    }
    /* No "*.example.org" matching "a.b.example.org" or "x*.example.org". */
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return 0;
}

size_t tls_bev_unsent(struct bufferevent *bev)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(bev));
    struct bufferevent *under = bufferevent_get_underlying(bev);
    if (under)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}
