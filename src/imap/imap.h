/*
 * imap.h - the imap service of havend.
 *
 * The master binds the ports and hands the listening sockets over; the
 * service runs an event loop (libevent) that does only network I/O and
 * command parsing, and a small pool of worker threads that run commands
 * against the directory and the account store (password hashing, fsync and
 * blob reads never stall other sessions). See docs/imap.md.
 *
 * SECURITY: everything read from a client is untrusted. Commands are parsed
 * by the bounded parser (imap_parser.c) with tighter limits before login;
 * messages by the bounded MIME parser (mime_*.c). A failing session ends
 * that session, never the process.
 */
#ifndef HV_IMAP_H
#define HV_IMAP_H

#include "lib/conf.h"
#include "lib/err.h"

/* Runs the service until SIGTERM/SIGINT. fd_plain (143, STARTTLS) and
 * fd_tls (993, implicit TLS) are listening sockets; either may be -1. */
int imap_service_run(const conf *c, int fd_plain, int fd_tls, hv_err *err);

#endif
