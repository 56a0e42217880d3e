/*
 * havend.h - what the files of the havend master share.
 *
 * havend.c owns the process: options, config, the pid lock, privileges,
 * signals and the poll loop. havend_admin.c owns the admin socket.
 * havend_services.c binds the services' ports and supervises them (smtp,
 * lmtp, imap, proxy, repl, http), each a child process running its part
 * of src/.
 */
#ifndef HV_HAVEND_H
#define HV_HAVEND_H

#include <poll.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "lib/conf.h"
#include "lib/err.h"

typedef struct havend {
    char conf_path[4096];    /* absolute: a daemon runs from "/" */
    conf *conf;              /* replaced as a whole on SIGHUP */
    int foreground;
    pid_t pid;
    struct timespec started; /* CLOCK_MONOTONIC, for uptime */
    time_t started_wall;
    unsigned reloads;
} havend;

/* --- the admin socket (havend_admin.c) ---
 *
 * A UNIX stream socket, mode 0600, answering one command per line. Each
 * reply is lines ended by a line holding a single "."; a failed command's
 * first line starts with "error:". Commands: ping, status, help, quit.
 * Clients are few and local, but still bounded: a line limit, a client
 * limit and an idle timeout, so one stuck client cannot hold the others
 * off or grow memory. */
typedef struct havend_admin havend_admin;

/* Most pollfds the admin socket asks for (listener + clients). */
#define HAVEND_ADMIN_MAX_FDS 17

/* Binds path (removing a stale socket: the caller holds the pid lock, so
 * no live havend owns it). */
int havend_admin_open(const char *path, havend_admin **out, hv_err *err);
/* Fills fds with what the admin socket waits for; returns how many. */
size_t havend_admin_pollfds(havend_admin *a, struct pollfd *fds, size_t max);
/* Milliseconds until the next idle client is due to be dropped; -1: none. */
int havend_admin_timeout(const havend_admin *a);
/* Serves whatever poll reported in fds (as filled by havend_admin_pollfds). */
void havend_admin_handle(havend_admin *a, const struct pollfd *fds, size_t n, const havend *d);
/* Closes every client and the listener, and removes the socket file. */
void havend_admin_close(havend_admin *a);

/* --- the services (havend_services.c) --- */
#include "lib/buf.h"
/* Binds every service's ports (before privileges are dropped). */
int havend_services_bind(havend *d, hv_err *err);
void havend_services_start(havend *d);
/* Reaps exited children and restarts due ones (unless stopping). */
void havend_services_reap(havend *d, int stopping);
/* Milliseconds until a restart is due; -1: none. */
int havend_services_timeout(void);
void havend_services_stop(void);
void havend_services_status(buf *out);

#endif
