/*
 * http_metrics.c - GET /metrics: the node's numbers in the Prometheus text
 * exposition format, version 0.0.4.
 *
 * Sources, each read fresh for every scrape (nothing is cached, so a
 * number is never older than the scrape):
 *   - the master (admin.sock "status"): which services run, reloads;
 *   - the queue (queue.sock "stats", while the smtp service runs);
 *   - replication (repl.sock "metrics", when replication is configured):
 *     one line per node, link and lagging account, "KIND key=value ...";
 *   - DATA/moves/ (http_moves.c);
 *   - the stores' folder, the file systems, the TLS certificate.
 * A source that cannot be read leaves its metrics out and says so in
 * haven_metrics_source_up{source=...} = 0, so a missing queue is never
 * read as an empty one.
 *
 * Every metric family is declared once in the table below (name, type,
 * help); samples are collected per family and written family by family,
 * so each family's samples stand together under its HELP and TYPE lines
 * whatever order the sources come in. docs/http.md lists the same names
 * (tests/integration/test_http_metrics.py checks that).
 */
#include <errno.h>
#include <math.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "cmd/version.h"
#include "http/http_internal.h"
#include "repl/repl.h"
#include "store/store.h"

#define FAMILIES(X)                                                                            \
    X(BUILD_INFO, "haven_build_info", "gauge",                                                 \
      "Always 1; the version label names the Haven that runs")                                 \
    X(START_TIME, "haven_start_time_seconds", "gauge",                                         \
      "When havend (the master process) started, in seconds since the Unix epoch")             \
    X(UPTIME, "haven_uptime_seconds", "gauge", "Seconds since havend (the master) started")    \
    X(RELOADS, "haven_config_reloads_total", "counter",                                        \
      "Configuration reloads (SIGHUP) since havend started")                                   \
    X(SERVICE_UP, "haven_service_up", "gauge",                                                 \
      "1 while the master has the service running, 0 while it is down or waiting to be "       \
      "restarted; services this node does not run are not listed")                             \
    X(SOURCE_UP, "haven_metrics_source_up", "gauge",                                           \
      "1 when this scrape could read the source, 0 when not (its metrics are left out)")       \
    X(ACCOUNTS, "haven_accounts", "gauge", "Accounts with a store on this node")               \
    X(FS_SIZE, "haven_filesystem_size_bytes", "gauge",                                         \
      "Size of the file system holding the folder (dir: data or queue)")                       \
    X(FS_FREE, "haven_filesystem_free_bytes", "gauge",                                         \
      "Bytes of the file system holding the folder that an unprivileged user may still fill")  \
    X(TLS_EXPIRY, "haven_tls_certificate_expiry_timestamp_seconds", "gauge",                   \
      "When the certificate in tls_cert stops being valid, in seconds since the Unix epoch")   \
    X(Q_ACCEPTING, "haven_queue_accepting", "gauge",                                           \
      "1 while the queue takes new mail, 0 once a write or sync failed and it refuses mail")   \
    X(Q_MESSAGES, "haven_queue_messages", "gauge",                                             \
      "Messages in the queue (some recipient not yet delivered, bounced or deleted)")          \
    X(Q_MSG_STATE, "haven_queue_messages_with_state", "gauge",                                 \
      "Messages with at least one recipient in the state; a message may count in several")     \
    X(Q_RCPTS, "haven_queue_recipients", "gauge",                                              \
      "Recipients of the queued messages by state; delivering: being delivered now")           \
    X(Q_HELD, "haven_queue_held_recipients", "gauge",                                          \
      "Held recipients by what holds them: account (not active), store (not answering), "      \
      "operator")                                                                              \
    X(Q_BYTES, "haven_queue_message_bytes", "gauge", "Bytes of the queued messages")           \
    X(Q_OLDEST, "haven_queue_oldest_message_age_seconds", "gauge",                             \
      "Age of the oldest queued message (0 when the queue is empty)")                          \
    X(Q_SUBMITTED, "haven_queue_submitted_total", "counter",                                   \
      "Messages the queue took since the smtp service started")                                \
    X(Q_SYNCS, "haven_queue_syncs_total", "counter",                                           \
      "Disk syncs of the queue's log since the smtp service started (shared by messages)")     \
    X(Q_LOG_BYTES, "haven_queue_log_bytes", "gauge", "Bytes of the queue's log segments")      \
    X(Q_LOG_SEGMENTS, "haven_queue_log_segments", "gauge", "Segment files of the queue's log") \
    X(R_ROLE, "haven_repl_role", "gauge",                                                      \
      "1 for the replication role this node plays now (role: primary or replica)")             \
    X(R_EPOCH, "haven_repl_epoch", "gauge", "The store's epoch (raised by each promotion)")     \
    X(R_SYNC_MODE, "haven_repl_sync_mode", "gauge", "1 for the configured repl_mode")          \
    X(R_SYNC_DEGRADED, "haven_repl_sync_degraded", "gauge",                                    \
      "Sync mode only: 1 while too few replicas keep up (writes go on async, or are refused "  \
      "by repl_sync_on_timeout = refuse)")                                                     \
    X(R_SYNC_WAITS, "haven_repl_sync_waits_total", "counter",                                  \
      "Sync mode only: writes that waited for replicas")                                       \
    X(R_SYNC_TIMEOUTS, "haven_repl_sync_timeouts_total", "counter",                            \
      "Sync mode only: waits that ran out of repl_sync_timeout_ms")                            \
    X(R_LINK_UP, "haven_repl_link_up", "gauge",                                                \
      "Primary: 1 while the link to the replica is up")                                        \
    X(R_LINK_ACCTS, "haven_repl_link_accounts", "gauge",                                       \
      "Primary: accounts on the link by state (in_sync, syncing, diverged, failed)")           \
    X(R_LINK_BEHIND, "haven_repl_link_records_behind", "gauge",                                \
      "Primary: log records the replica has not acknowledged yet, all accounts together")      \
    X(R_LINK_LAG, "haven_repl_link_max_lag_seconds", "gauge",                                  \
      "Primary: age of the oldest record sent to the replica and not yet acknowledged")        \
    X(R_LINK_UNACKED, "haven_repl_link_unacked_bytes", "gauge",                                \
      "Primary: bytes sent to the replica and not yet acknowledged")                           \
    X(R_LINK_SENT, "haven_repl_link_sent_bytes_total", "counter",                              \
      "Primary: bytes sent on the link since it came up")                                      \
    X(R_LINK_RECV, "haven_repl_link_received_bytes_total", "counter",                          \
      "Primary: bytes received on the link since it came up")                                  \
    X(R_LINK_RATE, "haven_repl_link_send_bytes_per_second", "gauge",                           \
      "Primary: recent sending rate on the link")                                              \
    X(R_LINK_ACK_LAT, "haven_repl_link_ack_latency_seconds", "gauge",                          \
      "Primary: time from sending records to their acknowledgement, by quantile (0.5, 0.99)")  \
    X(R_LINK_ACKS, "haven_repl_link_acks_total", "counter",                                    \
      "Primary: acknowledgements received on the link since it came up")                       \
    X(R_LINK_NOT_LISTED, "haven_repl_link_accounts_not_listed", "gauge",                       \
      "Primary: accounts not in sync beyond the first 500, left out of the per-account "       \
      "metrics (the link totals count them)")                                                  \
    X(R_ACCT_STATE, "haven_repl_account_state", "gauge",                                       \
      "Primary: 1 for the state of an account that is not in sync with the replica")           \
    X(R_ACCT_BEHIND, "haven_repl_account_records_behind", "gauge",                             \
      "Primary: log records of an account not in sync that the replica has not acknowledged")  \
    X(R_ACCT_LAG, "haven_repl_account_lag_seconds", "gauge",                                   \
      "Primary: age of the oldest unacknowledged record sent for an account not in sync")      \
    X(RR_LINK_UP, "haven_repl_replica_link_up", "gauge",                                       \
      "Replica: 1 while the link to the primary is up")                                        \
    X(RR_RECV, "haven_repl_replica_received_bytes_total", "counter",                           \
      "Replica: bytes received from the primary on the current link")                          \
    X(RR_RATE, "haven_repl_replica_receive_bytes_per_second", "gauge",                         \
      "Replica: recent receiving rate")                                                        \
    X(RR_ACCTS, "haven_repl_replica_accounts", "gauge",                                        \
      "Replica: accounts the primary has streamed here since the service started")             \
    X(RR_FAILED, "haven_repl_replica_failed_accounts", "gauge",                                \
      "Replica: accounts whose replication stopped on an error (until the primary retries)")   \
    X(RR_APPLIED, "haven_repl_replica_records_applied_total", "counter",                       \
      "Replica: log records applied since the service started")                                \
    X(RR_BLOBS, "haven_repl_replica_blobs_imported_total", "counter",                          \
      "Replica: message bodies imported since the service started")                            \
    X(RR_ACKS, "haven_repl_replica_acks_total", "counter",                                     \
      "Replica: acknowledgements sent since the service started")                              \
    X(RR_PENDING, "haven_repl_replica_pending_bytes", "gauge",                                 \
      "Replica: bytes received and not yet applied")                                           \
    X(M_COUNT, "haven_moves", "gauge", "Account moves by phase (files in DATA/moves/)")        \
    X(M_PHASE, "haven_move_phase", "gauge",                                                    \
      "1 for the phase an account's move is in (with its source and target stores)")          \
    X(M_SIZE, "haven_move_size_bytes", "gauge", "Bytes the account's move has to copy")       \
    X(M_COPIED, "haven_move_copied_bytes", "gauge", "Bytes the account's move has copied")     \
    X(M_STARTED, "haven_move_started_timestamp_seconds", "gauge",                              \
      "When the account's move started, in seconds since the Unix epoch")                      \
    X(M_UPDATED, "haven_move_updated_timestamp_seconds", "gauge",                              \
      "When the account's move last wrote its progress, in seconds since the Unix epoch")      \
    X(M_SKIPPED, "haven_move_files_skipped", "gauge",                                          \
      "Files in DATA/moves/ left out: malformed, unreadable, too big, or past 2000 files")     \
    X(E_SLOTS, "haven_evacuation_slots", "gauge",                                              \
      "Accounts an evacuation of a store moves at once")                                       \
    X(E_ACCTS, "haven_evacuation_accounts", "gauge",                                           \
      "Accounts of an evacuation: total, done, failed")                                        \
    X(E_SIZE, "haven_evacuation_size_bytes", "gauge", "Bytes an evacuation has to copy")      \
    X(E_COPIED, "haven_evacuation_copied_bytes", "gauge", "Bytes an evacuation has copied")    \
    X(E_STARTED, "haven_evacuation_started_timestamp_seconds", "gauge",                        \
      "When the evacuation started, in seconds since the Unix epoch")                          \
    X(E_UPDATED, "haven_evacuation_updated_timestamp_seconds", "gauge",                        \
      "When the evacuation last wrote its progress, in seconds since the Unix epoch")          \
    X(E_ETA, "haven_evacuation_eta_seconds", "gauge",                                          \
      "Seconds the evacuation expects to still need, as it last said")

#define ENUM_ITEM(id, name, type, help) F_##id,
enum family { FAMILIES(ENUM_ITEM) F_COUNT };
#define DEF_ITEM(id, name, type, help) {name, type, help},
static const struct {
    const char *name, *type, *help;
} fams[] = {FAMILIES(DEF_ITEM)};

typedef struct prom {
    buf fam[F_COUNT];
} prom;

static void put_value(buf *b, double v)
{
    if (isnan(v))
        buf_append_str(b, "NaN");
    else if (isinf(v))
        buf_append_str(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9e15)
        buf_printf(b, "%.0f", v);
    else
        buf_printf(b, "%.17g", v);
}

/* A label value as the format wants it: backslash, quote and newline
 * escaped. */
static void put_label_value(buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            buf_append_str(b, "\\n");
        else
            buf_put_u8(b, (uint8_t)*s);
    }
}

/* One sample: the labels are name, value pairs ended by NULL. */
static void sample(prom *p, enum family f, double v, ...)
{
    buf *b = &p->fam[f];
    buf_append_str(b, fams[f].name);
    va_list ap;
    va_start(ap, v);
    const char *k;
    int n = 0;
    while ((k = va_arg(ap, const char *))) {
        const char *val = va_arg(ap, const char *);
        buf_printf(b, "%s%s=\"", n++ ? "," : "{", k);
        put_label_value(b, val ? val : "");
        buf_append_str(b, "\"");
    }
    va_end(ap);
    buf_append_str(b, n ? "} " : " ");
    put_value(b, v);
    buf_append_str(b, "\n");
}

/* ---- sources ---- */

static void add_process(const http_ctx *h, prom *p)
{
    sample(p, F_BUILD_INFO, 1, "version", HAVEN_VERSION, NULL);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    sample(p, F_START_TIME, (double)h->master.started_wall, NULL);
    sample(p, F_UPTIME, (double)(now_ms - h->master.started_mono_ms) / 1000.0, NULL);
    long accounts = store_account_count(h->data_dir);
    if (accounts >= 0)
        sample(p, F_ACCOUNTS, (double)accounts, NULL);
    static const struct {
        const char *label;
        size_t off;
    } dirs[] = {{"data", offsetof(http_ctx, data_dir)}, {"queue", offsetof(http_ctx, queue_dir)}};
    for (size_t i = 0; i < 2; i++) {
        struct statvfs sv;
        if (statvfs((const char *)h + dirs[i].off, &sv) == 0) {
            sample(p, F_FS_SIZE, (double)sv.f_blocks * (double)sv.f_frsize, "dir", dirs[i].label,
                   NULL);
            sample(p, F_FS_FREE, (double)sv.f_bavail * (double)sv.f_frsize, "dir", dirs[i].label,
                   NULL);
        }
    }
    char cert[4200];
    conf_path(h->c, "tls_cert", cert, sizeof(cert));
    FILE *f = fopen(cert, "re");
    if (f) {
        X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
        struct tm tm;
        if (x && ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) == 1)
            sample(p, F_TLS_EXPIRY, (double)timegm(&tm), NULL);
        X509_free(x);
        fclose(f);
    }
}

static void add_master(const http_ctx *h, prom *p)
{
    http_master_status ms;
    hv_err err = {0};
    int ok = http_master_ask(h, &ms, &err) == 0;
    sample(p, F_SOURCE_UP, ok, "source", "master", NULL);
    if (!ok)
        return;
    if (ms.reloads >= 0)
        sample(p, F_RELOADS, (double)ms.reloads, NULL);
    for (int i = 0; i < ms.n; i++)
        if (ms.svc[i].state != HTTP_SVC_OFF)
            sample(p, F_SERVICE_UP, ms.svc[i].state == HTTP_SVC_RUNNING, "service",
                   ms.svc[i].name, NULL);
}

static void add_queue(const http_ctx *h, prom *p)
{
    /* The queue is the smtp service's: no smtp port, no queue to ask. */
    if (conf_get_int(h->c, "smtp_port") <= 0 && conf_get_int(h->c, "submission_port") <= 0 &&
        conf_get_int(h->c, "submissions_port") <= 0)
        return;
    http_queue_stats q;
    hv_err err = {0};
    int ok = http_queue_ask(h, &q, &err) == 0;
    sample(p, F_SOURCE_UP, ok, "source", "queue", NULL);
    if (!ok)
        return;
    static const struct {
        const char *key;
        enum family f;
        const char *label, *value;
    } map[] = {
        {"messages", F_Q_MESSAGES, NULL, NULL},
        {"messages_ready", F_Q_MSG_STATE, "state", "ready"},
        {"messages_deferred", F_Q_MSG_STATE, "state", "deferred"},
        {"messages_held", F_Q_MSG_STATE, "state", "held"},
        {"recipients_ready", F_Q_RCPTS, "state", "ready"},
        {"recipients_deferred", F_Q_RCPTS, "state", "deferred"},
        {"recipients_held", F_Q_RCPTS, "state", "held"},
        {"recipients_delivering", F_Q_RCPTS, "state", "delivering"},
        {"recipients_delivered", F_Q_RCPTS, "state", "delivered"},
        {"recipients_bounced", F_Q_RCPTS, "state", "bounced"},
        {"held_account", F_Q_HELD, "reason", "account"},
        {"held_store", F_Q_HELD, "reason", "store"},
        {"held_operator", F_Q_HELD, "reason", "operator"},
        {"bytes", F_Q_BYTES, NULL, NULL},
        {"submitted", F_Q_SUBMITTED, NULL, NULL},
        {"syncs", F_Q_SYNCS, NULL, NULL},
        {"log_bytes", F_Q_LOG_BYTES, NULL, NULL},
        {"log_segments", F_Q_LOG_SEGMENTS, NULL, NULL},
        {"accepting", F_Q_ACCEPTING, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        double v = http_queue_value(&q, map[i].key);
        if (v < 0)
            continue;
        if (map[i].label)
            sample(p, map[i].f, v, map[i].label, map[i].value, NULL);
        else
            sample(p, map[i].f, v, NULL);
    }
    double oldest = http_queue_value(&q, "oldest_arrival_ms");
    if (oldest >= 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        double age = oldest == 0 ? 0 : (double)now.tv_sec - oldest / 1000.0;
        sample(p, F_Q_OLDEST, age > 0 ? age : 0, NULL);
    }
}

/* One "KIND key=value ..." line of repl's "metrics" answer. */
#define KV_MAX 32
typedef struct kv_line {
    const char *kind;
    const char *k[KV_MAX], *v[KV_MAX];
    int n;
} kv_line;

static void kv_split(char *l, kv_line *out)
{
    out->n = 0;
    char *save = NULL;
    out->kind = strtok_r(l, " ", &save);
    char *t;
    while ((t = strtok_r(NULL, " ", &save)) && out->n < KV_MAX) {
        char *eq = strchr(t, '=');
        if (!eq)
            continue;
        *eq = 0;
        out->k[out->n] = t;
        out->v[out->n++] = eq + 1;
    }
}

static const char *kv_str(const kv_line *l, const char *key)
{
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->k[i], key) == 0)
            return l->v[i];
    return NULL;
}

/* The number under key, or NAN when it is missing or not a number. */
static double kv_num(const kv_line *l, const char *key)
{
    const char *s = kv_str(l, key);
    if (!s || !*s)
        return NAN;
    char *end;
    double v = strtod(s, &end);
    return *end ? NAN : v;
}

/* A sample from key when the line has it (scale: 0.001 turns ms into s). */
static void kv_sample(prom *p, enum family f, const kv_line *l, const char *key, double scale,
                      const char *k1, const char *v1, const char *k2, const char *v2)
{
    double v = kv_num(l, key);
    if (isnan(v))
        return;
    v *= scale;
    if (k2)
        sample(p, f, v, k1, v1, k2, v2, NULL);
    else if (k1)
        sample(p, f, v, k1, v1, NULL);
    else
        sample(p, f, v, NULL);
}

static void add_repl_line(prom *p, kv_line *l)
{
    const char *kind = l->kind;
    if (strcmp(kind, "node") == 0) {
        const char *role = kv_str(l, "role"), *store = kv_str(l, "store");
        if (role)
            sample(p, F_R_ROLE, 1, "role", role, "store", store ? store : "", NULL);
        kv_sample(p, F_R_EPOCH, l, "epoch", 1, NULL, NULL, NULL, NULL);
    } else if (strcmp(kind, "sync") == 0) {
        const char *mode = kv_str(l, "mode"), *state = kv_str(l, "state");
        if (mode)
            sample(p, F_R_SYNC_MODE, 1, "mode", mode, NULL);
        if (state)
            sample(p, F_R_SYNC_DEGRADED, strcmp(state, "sync") != 0, NULL);
        kv_sample(p, F_R_SYNC_WAITS, l, "waits", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_R_SYNC_TIMEOUTS, l, "timeouts", 1, NULL, NULL, NULL, NULL);
    } else if (strcmp(kind, "link") == 0) {
        /* By the replica's store name only: its address and port change
         * with every reconnection. */
        const char *r = kv_str(l, "replica");
        if (!r)
            return;
        kv_sample(p, F_R_LINK_UP, l, "up", 1, "replica", r, NULL, NULL);
        static const char *const states[] = {"in_sync", "syncing", "diverged", "failed"};
        for (size_t i = 0; i < 4; i++)
            kv_sample(p, F_R_LINK_ACCTS, l, states[i], 1, "replica", r, "state", states[i]);
        kv_sample(p, F_R_LINK_BEHIND, l, "records_behind", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_LAG, l, "max_lag_ms", 0.001, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_UNACKED, l, "unacked_bytes", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_SENT, l, "bytes_sent", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_RECV, l, "bytes_received", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_RATE, l, "send_bps", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_ACK_LAT, l, "ack_p50_ms", 0.001, "replica", r, "quantile", "0.5");
        kv_sample(p, F_R_LINK_ACK_LAT, l, "ack_p99_ms", 0.001, "replica", r, "quantile", "0.99");
        kv_sample(p, F_R_LINK_ACKS, l, "acks", 1, "replica", r, NULL, NULL);
        kv_sample(p, F_R_LINK_NOT_LISTED, l, "accounts_not_listed", 1, "replica", r, NULL, NULL);
    } else if (strcmp(kind, "account") == 0) {
        const char *r = kv_str(l, "replica"), *a = kv_str(l, "account"), *st = kv_str(l, "state");
        if (!r || !a)
            return;
        if (st)
            sample(p, F_R_ACCT_STATE, 1, "replica", r, "account", a, "state", st, NULL);
        kv_sample(p, F_R_ACCT_BEHIND, l, "records_behind", 1, "replica", r, "account", a);
        kv_sample(p, F_R_ACCT_LAG, l, "lag_ms", 0.001, "replica", r, "account", a);
    } else if (strcmp(kind, "upstream") == 0) {
        const char *pri = kv_str(l, "primary");
        if (!pri)
            return;
        kv_sample(p, F_RR_LINK_UP, l, "up", 1, "primary", pri, NULL, NULL);
        kv_sample(p, F_RR_RECV, l, "bytes_received", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_RATE, l, "receive_bps", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_ACCTS, l, "accounts", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_FAILED, l, "failed_accounts", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_APPLIED, l, "records_applied", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_BLOBS, l, "blobs_imported", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_ACKS, l, "acks", 1, NULL, NULL, NULL, NULL);
        kv_sample(p, F_RR_PENDING, l, "pending_bytes", 1, NULL, NULL, NULL, NULL);
    }
    /* other kinds: a newer repl service; what we do not know we leave out */
}

static void add_repl(const http_ctx *h, prom *p)
{
    if (!repl_configured(h->c))
        return;
    buf b;
    buf_init(&b);
    hv_err err = {0};
    int ok = repl_ctl_ask(h->c, "metrics", &b, HTTP_PROBE_MS, &err) == 0 && b.data &&
             strncmp((char *)b.data, "error", 5) != 0;
    sample(p, F_SOURCE_UP, ok, "source", "repl", NULL);
    if (ok) {
        char *save = NULL;
        for (char *l = strtok_r((char *)b.data, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
            kv_line kl;
            kv_split(l, &kl);
            if (kl.kind)
                add_repl_line(p, &kl);
        }
    }
    buf_free(&b);
}

static void opt_sample(prom *p, enum family f, double v, const char *k1, const char *v1,
                       const char *k2, const char *v2, const char *k3, const char *v3)
{
    if (v < 0)
        return; /* the file did not say */
    if (k3)
        sample(p, f, v, k1, v1, k2, v2, k3, v3, NULL);
    else if (k2)
        sample(p, f, v, k1, v1, k2, v2, NULL);
    else
        sample(p, f, v, k1, v1, NULL);
}

static void add_moves(const http_ctx *h, prom *p)
{
    http_moves m;
    hv_err err = {0};
    int ok = http_moves_read(h->data_dir, &m, &err) == 0;
    sample(p, F_SOURCE_UP, ok, "source", "moves", NULL);
    if (!ok)
        return;
    /* Every phase `haven move` knows, 0 when none is in it, so an alert on
     * failed moves has a series to look at before the first failure. */
    static const char *const phases[] = {"copying",    "freezing", "final",      "committing",
                                         "done",       "failed",   "rolled-back"};
    size_t nph = sizeof(phases) / sizeof(phases[0]);
    for (size_t i = 0; i < nph; i++) {
        size_t n = 0;
        for (size_t k = 0; k < m.nmoves; k++)
            n += strcmp(m.moves[k].phase, phases[i]) == 0;
        sample(p, F_M_COUNT, (double)n, "phase", phases[i], NULL);
    }
    /* A phase this build does not know yet still counts. */
    for (size_t k = 0; k < m.nmoves; k++) {
        int known = 0, first = 1;
        for (size_t i = 0; i < nph && !known; i++)
            known = strcmp(m.moves[k].phase, phases[i]) == 0;
        for (size_t j = 0; j < k && first; j++)
            first = strcmp(m.moves[j].phase, m.moves[k].phase) != 0;
        if (known || !first)
            continue;
        size_t n = 0;
        for (size_t j = k; j < m.nmoves; j++)
            n += strcmp(m.moves[j].phase, m.moves[k].phase) == 0;
        sample(p, F_M_COUNT, (double)n, "phase", m.moves[k].phase, NULL);
    }
    for (size_t k = 0; k < m.nmoves; k++) {
        const http_move *mv = &m.moves[k];
        const char *a = mv->account;
        sample(p, F_M_PHASE, 1, "account", a, "from", mv->from, "to", mv->to, "phase", mv->phase,
               NULL);
        opt_sample(p, F_M_SIZE, mv->bytes_total, "account", a, NULL, NULL, NULL, NULL);
        opt_sample(p, F_M_COPIED, mv->bytes_done, "account", a, NULL, NULL, NULL, NULL);
        opt_sample(p, F_M_STARTED, mv->started, "account", a, NULL, NULL, NULL, NULL);
        opt_sample(p, F_M_UPDATED, mv->updated, "account", a, NULL, NULL, NULL, NULL);
    }
    sample(p, F_M_SKIPPED, (double)m.skipped, NULL);
    for (size_t k = 0; k < m.nevacs; k++) {
        const http_evac *e = &m.evacs[k];
        const char *f = e->from, *t = e->to;
        opt_sample(p, F_E_SLOTS, e->slots, "from", f, "to", t, NULL, NULL);
        opt_sample(p, F_E_ACCTS, e->accounts_total, "from", f, "to", t, "state", "total");
        opt_sample(p, F_E_ACCTS, e->accounts_done, "from", f, "to", t, "state", "done");
        opt_sample(p, F_E_ACCTS, e->accounts_failed, "from", f, "to", t, "state", "failed");
        opt_sample(p, F_E_SIZE, e->bytes_total, "from", f, "to", t, NULL, NULL);
        opt_sample(p, F_E_COPIED, e->bytes_done, "from", f, "to", t, NULL, NULL);
        opt_sample(p, F_E_STARTED, e->started, "from", f, "to", t, NULL, NULL);
        opt_sample(p, F_E_UPDATED, e->updated, "from", f, "to", t, NULL, NULL);
        opt_sample(p, F_E_ETA, e->eta_s, "from", f, "to", t, NULL, NULL);
    }
    http_moves_free(&m);
}

void http_metrics(const http_ctx *h, buf *out)
{
    prom p;
    for (int i = 0; i < F_COUNT; i++)
        buf_init(&p.fam[i]);
    add_process(h, &p);
    add_master(h, &p);
    add_queue(h, &p);
    add_repl(h, &p);
    add_moves(h, &p);
    for (int i = 0; i < F_COUNT; i++) {
        if (p.fam[i].len)
            buf_printf(out, "# HELP %s %s.\n# TYPE %s %s\n%.*s", fams[i].name, fams[i].help,
                       fams[i].name, fams[i].type, (int)p.fam[i].len, (char *)p.fam[i].data);
        buf_free(&p.fam[i]);
    }
}
