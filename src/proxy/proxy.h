/*
 * proxy.h - the proxy service of havend: front-end IMAP that routes each
 * login to the store holding the account (DESIGN.md, Flow 2).
 *
 * Before login the proxy speaks IMAP itself (greeting, CAPABILITY, ID,
 * NOOP, LOGOUT, STARTTLS, LOGIN, AUTHENTICATE PLAIN). A login is checked
 * against the directory, the account's store is looked up, the proxy logs
 * in on that store's IMAP with the same credentials (after STARTTLS with a
 * verified certificate unless the store is on loopback: proxy_backend_tls)
 * and from then on only relays bytes. When the directory moves the account (another store, or
 * its store gets another address or epoch) the session is ended with
 * "* BYE [UNAVAILABLE]" so the client reconnects to the new place.
 * See docs/proxy.md.
 *
 * SECURITY: everything read from a client before login is parsed by the
 * bounded IMAP parser with pre-login limits; after login the bytes go to
 * the store unread, and the store's own parser judges them.
 */
#ifndef HV_PROXY_H
#define HV_PROXY_H

#include <stddef.h>

#include "dir/dir.h"
#include "lib/conf.h"
#include "lib/err.h"

/* Runs the service until SIGTERM/SIGINT. fd_plain (proxy_port, STARTTLS)
 * and fd_tls (proxy_imaps_port, implicit TLS) are listening sockets;
 * either may be -1. */
int proxy_service_run(const conf *c, int fd_plain, int fd_tls, hv_err *err);

/* Where an account is served: its store's name, the IMAP host:port of
 * that store and the store's epoch. The address is the store's `address`
 * in the directory; a store without a directory row that is this node's
 * own store (store_name) is reached at listen:imap_port. The same lookup
 * serves LMTP routing (the queue) once stores publish an LMTP address.
 * -ENOENT (unknown account or store without address), -EIO (directory). */
typedef struct proxy_route {
    char store[DIR_STORE_NAME_MAX + 1];
    char address[DIR_STORE_ADDRESS_MAX + 1];
    unsigned long long epoch;
} proxy_route;

int proxy_route_lookup(dir *d, const conf *c, const dir_account *a, proxy_route *out,
                       hv_err *err);

#endif
