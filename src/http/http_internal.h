/*
 * http_internal.h - what the files of the http service share.
 *
 * http_server.c   the loop: connections, the request parser, routing,
 *                 responses; /health and /metrics run on worker threads;
 * http_probe.c    talking to the rest of the node: the master's, the
 *                 queue's and repl's control sockets, greetings on the
 *                 service ports; /health;
 * http_metrics.c  /metrics: the Prometheus text built from those sources;
 * http_moves.c    reading DATA/moves/ (account moves and evacuations).
 */
#ifndef HV_HTTP_INTERNAL_H
#define HV_HTTP_INTERNAL_H

#include <stdint.h>

#include "http/http.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/err.h"

/* How long one look at another part of the node may take (connect, send,
 * each wait for bytes). A part slower than this is reported, not waited
 * for. */
#define HTTP_PROBE_MS 2000

typedef struct http_ctx {
    const conf *c;
    http_master master;
    char run_dir[4096];
    char data_dir[4096];
    char queue_dir[4096];
} http_ctx;

/* ---- the master's view of its services (http_probe.c) ---- */

#define HTTP_SERVICES_MAX 16

enum http_svc_state { HTTP_SVC_OFF, HTTP_SVC_STOPPED, HTTP_SVC_RUNNING };

typedef struct http_master_status {
    struct {
        char name[16];
        int state; /* enum http_svc_state */
    } svc[HTTP_SERVICES_MAX];
    int n;
    long long reloads; /* -1: not said */
} http_master_status;

/* Asks the master's admin socket for "status" and reads the service
 * lines ("service NAME: running|stopped|off pid=N"). */
int http_master_ask(const http_ctx *h, http_master_status *out, hv_err *err);

/* Sends line (LF added) to the UNIX socket at path and reads the reply:
 * up to a line holding "." when dot_end (removed), else up to EOF. At
 * most max_bytes are kept; a longer reply is an error. */
int http_ask_unix(const char *path, const char *line, int dot_end, size_t max_bytes, buf *out,
                  hv_err *err);

/* Connects to addr:port (a wildcard listen address means loopback) and
 * checks that the first line starts with want. */
int http_probe_greeting(const char *addr, long port, const char *want, hv_err *err);

/* The queue's numbers, from "stats" on queue.sock ("NAME VALUE" lines). */
typedef struct http_queue_stats {
    char names[40][32];
    double values[40];
    int n;
    char broken_reason[256]; /* non-empty: the queue refuses mail */
} http_queue_stats;
int http_queue_ask(const http_ctx *h, http_queue_stats *out, hv_err *err);
/* The value of name, or -1 when the queue did not say it. */
double http_queue_value(const http_queue_stats *q, const char *name);

/* GET /health: 1 healthy; 0 with one line per reason in reasons. */
int http_health(const http_ctx *h, buf *reasons);

/* ---- /metrics (http_metrics.c) ---- */

/* The whole body, in Prometheus text format 0.0.4. */
void http_metrics(const http_ctx *h, buf *out);

/* ---- DATA/moves/ (http_moves.c) ---- */

/* Bigger files are not what `haven move` writes: skipped. */
#define HTTP_MOVE_FILE_MAX 65536
/* Files looked at in one scrape; the rest are counted as skipped. */
#define HTTP_MOVE_FILES_MAX 2000

/* One DATA/moves/ACCOUNT.move. Numbers not given are -1. */
typedef struct http_move {
    char account[256];
    char from[128], to[128];
    char phase[32];
    double bytes_total, bytes_done, started, updated;
} http_move;

/* One DATA/moves/evacuate-FROM-TO.state. Numbers not given are -1. */
typedef struct http_evac {
    char from[128], to[128];
    double slots, accounts_total, accounts_done, accounts_failed;
    double bytes_total, bytes_done, started, updated, eta_s;
} http_evac;

/* Parse a file's text (key=value lines; unknown keys ignored). 0, or
 * -EINVAL with the reason when it is malformed: a line without '=', a
 * number that is not one, a label value with control characters, a
 * required key missing (account and phase; from and to). */
int http_move_parse(const char *text, size_t len, http_move *m, hv_err *err);
int http_evac_parse(const char *text, size_t len, http_evac *e, hv_err *err);

typedef struct http_moves {
    http_move *moves;
    size_t nmoves;
    http_evac *evacs;
    size_t nevacs;
    size_t skipped; /* malformed, unreadable, too big, or past the cap */
} http_moves;

/* Reads DATA/moves/. A missing folder is no moves (0); an unreadable one
 * is -errno. */
int http_moves_read(const char *data_dir, http_moves *out, hv_err *err);
void http_moves_free(http_moves *m);

#endif
