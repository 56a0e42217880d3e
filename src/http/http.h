/*
 * http.h - the http service of havend: health and metrics over HTTP/1.1
 * (docs/http.md).
 *
 *   GET /health    200 "ok" when every service this node runs answers,
 *                  else 503 and one line per reason;
 *   GET /metrics   Prometheus text format 0.0.4: the queue, replication,
 *                  account moves, the processes;
 *   anything else  404 (405 for methods other than GET and HEAD).
 *
 * It listens on http_port at http_listen (loopback by default: the
 * numbers name accounts and nothing asks who is reading). The answers are
 * gathered on worker threads from the other services' local control
 * sockets (admin.sock, queue.sock, repl.sock), from DATA/moves/ and from
 * the stores' folder, so a slow source never holds up the loop.
 *
 * SECURITY: what arrives on http_port is untrusted: request heads go
 * through the bounded parser (http_parser.h, 8 KiB), bodies are refused,
 * connections are few (HTTP_MAX_CONNS) and timed out, and nothing a
 * request says reaches a file name or another service. The control
 * sockets and DATA/moves/ are trusted as much as the daemon's own user,
 * yet what they hold is still parsed with bounds.
 */
#ifndef HV_HTTP_H
#define HV_HTTP_H

#include <stdint.h>
#include <time.h>

#include "lib/conf.h"
#include "lib/err.h"

/* When the master started: its uptime is a metric, and it outlives any
 * restart of this service. */
typedef struct http_master {
    time_t started_wall;
    int64_t started_mono_ms; /* CLOCK_MONOTONIC */
} http_master;

/* fd: the bound http_port socket. Returns when SIGTERM/SIGINT arrive (0)
 * or when it cannot run (-errno, reason). */
int http_service_run(const conf *c, int fd, const http_master *m, hv_err *err);

#endif
