/* tls.c - the shared TLS server context; see tls.h. */
#include "lib/tls.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <openssl/err.h>

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

size_t tls_bev_unsent(struct bufferevent *bev)
{
    size_t n = evbuffer_get_length(bufferevent_get_output(bev));
    struct bufferevent *under = bufferevent_get_underlying(bev);
    if (under)
        n += evbuffer_get_length(bufferevent_get_output(under));
    return n;
}
