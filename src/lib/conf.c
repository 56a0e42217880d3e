/* conf.c - loading haven.conf; see conf.h. The key table is the reference. */
#include "lib/conf.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/fsutil.h"

const conf_key conf_keys[] = {
    {"hostname", "localhost", "name this node gives in greetings and Received headers"},
    {"listen", "127.0.0.1", "address the services listen on"},
    {"data_dir", "data", "folder holding the account stores (one folder per account)"},
    {"directory", "sqlite:directory.sqlite", "directory backend: sqlite:PATH (one node) or pg:CONNINFO (several nodes)"},
    {"store_name", "local", "name of the store this node serves"},
    {"imap_port", "143", "IMAP port (STARTTLS)"},
    {"imaps_port", "993", "IMAP port with implicit TLS (0 disables)"},
    {"smtp_port", "25", "SMTP MX port"},
    {"submission_port", "587", "submission port (STARTTLS then AUTH)"},
    {"submissions_port", "465", "submission port with implicit TLS (0 disables)"},
    {"lmtp_port", "24", "LMTP port"},
    {"http_port", "8080", "port of the http service: /health and /metrics (0: not started)"},
    {"http_listen", "127.0.0.1", "address the http service listens on (apart from listen, so it can stay on loopback)"},
    {"tls_cert", "tls/cert.pem", "TLS certificate chain (PEM)"},
    {"tls_key", "tls/key.pem", "TLS private key (PEM)"},
    {"plaintext_loopback", "yes", "allow LOGIN without TLS from loopback addresses"},
    {"run_dir", "run", "folder for the admin socket and pid file"},
    {"queue_dir", "queue", "folder of the durable SMTP queue"},
    {"user", "", "user to drop privileges to after binding ports (empty: stay)"},
    {"log_level", "info", "debug, info, warn or error"},
    {"store_segment_size", "67108864", "bytes after which an account log starts a new segment"},
    {"store_checkpoint_records", "4096", "log records after which the index is checkpointed"},
    {"store_max_message_size", "104857600", "largest message the store accepts, in bytes"},
    {"imap_workers", "4", "worker threads running IMAP commands (disk and password work)"},
    {"imap_max_line", "65536", "longest IMAP command line after login, in bytes (literals apart)"},
    {"imap_max_sessions", "20000", "IMAP connections served at once by one process"},
    {"imap_auth_fail_delay_ms", "2000", "delay before answering a failed login (grows per address)"},
    {"proxy_port", "0", "IMAP proxy port (STARTTLS) routing logins to their store (0: no proxy)"},
    {"proxy_imaps_port", "0", "IMAP proxy port with implicit TLS (0 disables)"},
    {"proxy_workers", "4", "worker threads of the proxy (directory, passwords, store logins)"},
    {"proxy_pool_size", "2", "ready connections the proxy keeps open to each store in use"},
    {"proxy_backend_tls", "auto", "TLS from the proxy to stores: auto (STARTTLS unless the store is on loopback), always or never"},
    {"proxy_backend_ca", "", "CA file (or the stores' own certificates) the proxy checks stores' certificates against (empty: the system's CAs)"},
    {"proxy_backend_verify_name", "", "name stores' certificates must carry (empty: the host of each store's address)"},
    {"smtp_max_message_size", "52428800", "largest message SMTP and LMTP accept, in bytes (SIZE)"},
    {"smtp_max_recipients", "1000", "recipients one SMTP transaction may name"},
    {"smtp_max_sessions", "2000", "SMTP and LMTP connections served at once by one process"},
    {"smtp_client_max_sessions", "50", "SMTP connections at once from one client address"},
    {"smtp_client_max_messages_per_minute", "60000", "messages one client address may send per minute (0: no limit)"},
    {"smtp_auth_fail_delay_ms", "2000", "delay before answering a failed SMTP AUTH (grows per address)"},
    {"smtp_workers", "16", "worker threads of the smtp service (directory, passwords, queue syncs)"},
    {"lmtp_workers", "24", "worker threads of the lmtp service (store writes)"},
    {"queue_lifetime", "432000", "seconds a deferred recipient is retried before a DSN goes to the sender"},
    {"queue_retry_min", "60", "first retry delay of a deferred recipient, in seconds (doubles each try)"},
    {"queue_retry_max", "3600", "longest retry delay, in seconds"},
    {"queue_delivery_threads", "16", "deliveries in progress at once (LMTP and relay)"},
    {"queue_account_concurrency", "8", "deliveries in progress at once to one account"},
    {"queue_domain_concurrency", "10", "relay connections at once to one remote domain"},
    {"relay_routes", "", "static routes for outbound mail: domain=host:port, comma-separated; * matches any domain"},
    {"relay_tls", "opportunistic", "TLS for outbound relay: none, opportunistic (STARTTLS when offered) or required"},
    {"repl_port", "0", "port the repl service listens on for replicas (0: this node serves none)"},
    {"repl_primary", "", "HOST:PORT of the primary's repl_port; set on a replica (empty: not a replica)"},
    {"repl_secret_file", "", "file (mode 0600) with the secret a primary and its replicas share (16-256 bytes)"},
    {"repl_tls_ca", "", "CA file: when set, both ends of a replication link must also show a certificate it signed"},
    {"repl_workers", "4", "worker threads of the repl service (log reads on a primary, applies on a replica)"},
    {"repl_max_bytes_per_second", "0", "bandwidth limit of each replication link, bytes per second (0: none)"},
    {"repl_window", "67108864", "bytes a primary sends one replica ahead of its acknowledgements"},
    {"repl_mode", "async", "async, or sync: a write's OK waits until repl_sync_replicas replicas hold it"},
    {"repl_sync_replicas", "1", "replicas that must acknowledge a write in sync mode"},
    {"repl_sync_timeout_ms", "5000", "how long a write waits for replicas in sync mode before repl_sync_on_timeout applies"},
    {"repl_sync_on_timeout", "async", "after a sync timeout: async (degrade, raise an alarm, writes go on) or refuse (writes fail until replicas are back)"},
    {NULL, NULL, NULL},
};

struct conf {
    char *dir;
    char **vals; /* parallel to conf_keys; NULL = default */
    size_t nkeys;
};

static int key_index(const char *key)
{
    for (int i = 0; conf_keys[i].name; i++)
        if (strcmp(conf_keys[i].name, key) == 0)
            return i;
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    return s;
}

int conf_load(const char *path, conf **out, hv_err *err)
{
    char *text;
    int rc = fs_read_file(path, &text, NULL, err);
    if (rc < 0)
        return rc;
    conf *c = calloc(1, sizeof(*c));
    for (c->nkeys = 0; conf_keys[c->nkeys].name; c->nkeys++)
        ;
    c->vals = calloc(c->nkeys, sizeof(char *));
    const char *slash = strrchr(path, '/');
    c->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    int lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            rc = hv_err_set(err, -EINVAL, "%s:%d: expected 'key = value'", path, lineno);
            goto fail;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        int k = key_index(key);
        if (k < 0) {
            rc = hv_err_set(err, -EINVAL, "%s:%d: unknown key '%s' (see docs/config.md)", path,
                            lineno, key);
            goto fail;
        }
        free(c->vals[k]);
        c->vals[k] = strdup(val);
    }
    free(text);
    *out = c;
    return 0;
fail:
    free(text);
    conf_free(c);
    return rc;
}

void conf_free(conf *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nkeys; i++)
        free(c->vals[i]);
    free(c->vals);
    free(c->dir);
    free(c);
}

const char *conf_get(const conf *c, const char *key)
{
    int k = key_index(key);
    if (k < 0)
        abort(); /* a programming error: every key must be declared */
    return c && c->vals[k] ? c->vals[k] : conf_keys[k].def;
}

long long conf_get_int(const conf *c, const char *key) { return atoll(conf_get(c, key)); }

int conf_get_bool(const conf *c, const char *key)
{
    const char *v = conf_get(c, key);
    return strcmp(v, "yes") == 0 || strcmp(v, "true") == 0 || strcmp(v, "1") == 0 ||
           strcmp(v, "on") == 0;
}

void conf_path(const conf *c, const char *key, char *out, size_t outlen)
{
    const char *v = conf_get(c, key);
    if (v[0] == '/' || !c)
        snprintf(out, outlen, "%s", v);
    else
        snprintf(out, outlen, "%s/%s", c->dir, v);
}

const char *conf_dir(const conf *c) { return c ? c->dir : "."; }
