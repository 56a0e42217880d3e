/*
 * dir_pg.c - the directory on PostgreSQL, for several nodes sharing one
 * directory; see dir.h and docs/directory.md. Spec: "pg:CONNINFO", a
 * libpq connection string.
 *
 * The schema is the SQLite backend's, with text columns in the "C"
 * collation so that lists come out in the same byte order on both.
 *
 * Every change is one transaction whose first statement bumps the version
 * row. That row lock serialises writers the way SQLite's BEGIN IMMEDIATE
 * does, so check-then-write steps (an address is free, an epoch only goes
 * up, a domain is empty) cannot interleave between nodes; a failed change
 * rolls its bump back. Before COMMIT the transaction sends NOTIFY
 * haven_directory with the new version as payload; PostgreSQL delivers it
 * to every listener at commit, in commit order, and never for a rollback.
 *
 * Reads are single autocommitted statements, so they see every committed
 * change. A statement that finds the connection broken outside a
 * transaction (a restarted server, a failover behind a proxy) reconnects
 * once and runs again; inside a transaction nothing is retried, because
 * whether a half-sent change committed cannot be known, and the caller
 * gets the error. Every value travels as a query parameter, never in SQL.
 * Error reasons name the database as dbname@host:port, never the
 * connection string, which may hold a password.
 */
#include "dir/dir.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 2: stores gained lmtp_address and repl_address (a version 1 database
 * is upgraded in place when opened: upgrade_sql). */
#define SCHEMA_VERSION 2

/* The channel every change notifies on (and watchers listen to). */
#define CHANNEL "haven_directory"

/* Any fixed number: the advisory lock that makes two nodes starting on
 * an empty database create the schema once ("have" in ASCII). */
#define SCHEMA_LOCK_KEY "1751610981"

#define MAX_PARAMS 8

typedef struct pg_dir {
    struct dir base;
    PGconn *conn;
    char desc[160];      /* dbname@host:port, for reasons */
    int in_tx;           /* between BEGIN and COMMIT/ROLLBACK: no retries */
    uint64_t tx_version; /* the version this transaction bumped to */
    int watching;        /* dir_watch_* was called: LISTEN after reconnects */
    int listening;       /* LISTEN is in effect on this connection */
    int primed;          /* a drain ran since the last (re)connect */
    uint64_t watch_version;
} pg_dir;

static const char schema_sql[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE version (id INTEGER PRIMARY KEY CHECK (id = 1), counter BIGINT NOT NULL);"
    "INSERT INTO version (id, counter) VALUES (1, 0);"
    "CREATE TABLE domains ("
    "  name TEXT COLLATE \"C\" PRIMARY KEY,"
    "  created BIGINT NOT NULL);"
    "CREATE TABLE accounts ("
    "  address TEXT COLLATE \"C\" PRIMARY KEY,"
    "  domain TEXT COLLATE \"C\" NOT NULL REFERENCES domains (name),"
    "  password_hash TEXT COLLATE \"C\","
    "  state TEXT NOT NULL DEFAULT 'active'"
    "    CHECK (state IN ('active', 'held', 'moving', 'restoring')),"
    "  store TEXT COLLATE \"C\" NOT NULL,"
    "  slot BIGINT NOT NULL DEFAULT 0,"
    "  quota_bytes BIGINT NOT NULL DEFAULT 0,"
    "  last_login_attempt BIGINT NOT NULL DEFAULT 0,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX accounts_domain ON accounts (domain, address);"
    "CREATE INDEX accounts_store ON accounts (store);"
    "CREATE TABLE aliases ("
    "  address TEXT COLLATE \"C\" PRIMARY KEY,"
    "  domain TEXT COLLATE \"C\" NOT NULL REFERENCES domains (name),"
    "  target TEXT COLLATE \"C\" NOT NULL,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX aliases_domain ON aliases (domain);"
    "CREATE TABLE stores ("
    "  name TEXT COLLATE \"C\" PRIMARY KEY,"
    "  address TEXT COLLATE \"C\" NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('primary', 'replica')),"
    "  epoch BIGINT NOT NULL DEFAULT 0,"
    "  lmtp_address TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
    "  repl_address TEXT COLLATE \"C\" NOT NULL DEFAULT '');";

/* From any older version to this one: columns are only ever added (with
 * defaults), and IF NOT EXISTS finishes a database that is half-way. */
static const char upgrade_sql[] =
    "ALTER TABLE stores"
    "  ADD COLUMN IF NOT EXISTS lmtp_address TEXT COLLATE \"C\" NOT NULL DEFAULT '',"
    "  ADD COLUMN IF NOT EXISTS repl_address TEXT COLLATE \"C\" NOT NULL DEFAULT '';";

static pg_dir *pd_of(dir *d) { return (pg_dir *)d; }

/* Maps a failed result to an errno-style code, by SQLSTATE class. */
static int pg_code(pg_dir *p, const PGresult *r)
{
    if (PQstatus(p->conn) == CONNECTION_BAD)
        return -ECONNRESET;
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    if (!st)
        return -EIO;
    if (strncmp(st, "23", 2) == 0) /* integrity constraint, as SQLite's CONSTRAINT */
        return -EEXIST;
    if (strcmp(st, "40001") == 0 || strcmp(st, "40P01") == 0 || strncmp(st, "55P03", 5) == 0)
        return -EBUSY;
    if (strcmp(st, "25006") == 0) /* a hot standby: writes go to the primary */
        return -EROFS;
    if (strcmp(st, "53100") == 0)
        return -ENOSPC;
    if (strcmp(st, "53200") == 0)
        return -ENOMEM;
    if (strncmp(st, "28", 2) == 0 || strcmp(st, "42501") == 0)
        return -EACCES;
    if (strncmp(st, "08", 2) == 0 || strncmp(st, "57P", 3) == 0)
        return -ECONNRESET;
    if (strcmp(st, "3D000") == 0)
        return -ENOENT;
    return -EIO;
}

/* The first line of libpq's message (they end in newlines and may carry
 * DETAIL lines), so a reason stays one line. */
static const char *one_line(const char *msg, char *buf, size_t n)
{
    if (!msg || !*msg)
        msg = "unknown error";
    if (strncmp(msg, "ERROR:  ", 8) == 0 || strncmp(msg, "FATAL:  ", 8) == 0)
        msg += 8;
    size_t len = strcspn(msg, "\r\n");
    if (len >= n)
        len = n - 1;
    memcpy(buf, msg, len);
    buf[len] = 0;
    return buf;
}

static int db_fail(pg_dir *p, const PGresult *r, const char *what, hv_err *err)
{
    char line[256];
    const char *msg = r ? PQresultErrorMessage(r) : NULL;
    if (!msg || !*msg)
        msg = PQerrorMessage(p->conn);
    return hv_err_set(err, pg_code(p, r), "directory pg:%s: %s: %s", p->desc, what,
                      one_line(msg, line, sizeof(line)));
}

/* libpq prints server notices on stderr by default; a library must not
 * write there, and nothing Haven sends draws a notice worth keeping. */
static void ignore_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

static void describe(pg_dir *p)
{
    const char *db = PQdb(p->conn), *host = PQhost(p->conn), *port = PQport(p->conn);
    snprintf(p->desc, sizeof(p->desc), "%s@%s:%s", db ? db : "?", host && *host ? host : "?",
             port && *port ? port : "5432");
}

/* Reconnects a broken connection. LISTEN is renewed when watching, and
 * the next drain reports a change: notifications sent while the
 * connection was down are lost. */
static void reconnect(pg_dir *p)
{
    PQreset(p->conn);
    p->listening = 0;
    p->primed = 0;
    if (PQstatus(p->conn) == CONNECTION_OK && p->watching) {
        PGresult *r = PQexec(p->conn, "LISTEN " CHANNEL);
        p->listening = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
    }
}

/* Runs one statement with arguments described by types: 's' text (NULL
 * sends NULL), 'i' an int64_t. On success *out holds the result (the
 * caller PQclears it). Outside a transaction a broken connection is
 * reconnected once and the statement run again. */
static int run_va(pg_dir *p, PGresult **out, hv_err *err, const char *what, const char *sql,
                  const char *types, va_list ap)
{
    const char *vals[MAX_PARAMS];
    char nums[MAX_PARAMS][24];
    int n = 0;
    for (; types[n]; n++) {
        if (n == MAX_PARAMS)
            return hv_err_set(err, -EINVAL, "directory: too many query parameters");
        if (types[n] == 's') {
            vals[n] = va_arg(ap, const char *);
        } else {
            snprintf(nums[n], sizeof(nums[n]), "%" PRId64, va_arg(ap, int64_t));
            vals[n] = nums[n];
        }
    }
    int retried = 0;
    if (!p->in_tx && PQstatus(p->conn) == CONNECTION_BAD) {
        reconnect(p);
        retried = 1;
    }
    for (;;) {
        PGresult *r = PQexecParams(p->conn, sql, n, NULL, vals, NULL, NULL, 0);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            *out = r;
            return 0;
        }
        if (!p->in_tx && !retried && PQstatus(p->conn) == CONNECTION_BAD) {
            PQclear(r);
            reconnect(p);
            retried = 1;
            continue;
        }
        int rc = db_fail(p, r, what, err);
        PQclear(r);
        *out = NULL;
        return rc;
    }
}

static int run(pg_dir *p, PGresult **out, hv_err *err, const char *what, const char *sql,
               const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    int rc = run_va(p, out, err, what, sql, types, ap);
    va_end(ap);
    return rc;
}

/* Runs a statement that returns no rows; returns the rows it changed. */
static int exec_va(pg_dir *p, hv_err *err, const char *sql, const char *types, va_list ap)
{
    PGresult *r;
    int rc = run_va(p, &r, err, "write", sql, types, ap);
    if (rc < 0)
        return rc;
    rc = atoi(PQcmdTuples(r));
    PQclear(r);
    return rc;
}

static int exec(pg_dir *p, hv_err *err, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    int rc = exec_va(p, err, sql, types, ap);
    va_end(ap);
    return rc;
}

static int64_t int_at(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* Runs a query for one integer: 1 with *out set when there is a row, 0
 * when there is none. */
static int query_int(pg_dir *p, int64_t *out, hv_err *err, const char *sql, const char *types,
                     ...)
{
    va_list ap;
    va_start(ap, types);
    PGresult *r;
    int rc = run_va(p, &r, err, "read", sql, types, ap);
    va_end(ap);
    if (rc < 0)
        return rc;
    rc = PQntuples(r) > 0;
    if (rc)
        *out = int_at(r, 0, 0);
    PQclear(r);
    return rc;
}

/* Starts a change: BEGIN, then the version bump, which also takes the
 * lock that serialises writers. */
static int tx_begin(pg_dir *p, hv_err *err)
{
    PGresult *r;
    int rc = run(p, &r, err, "begin", "BEGIN", "");
    if (rc < 0)
        return rc;
    PQclear(r);
    p->in_tx = 1;
    rc = run(p, &r, err, "version",
             "UPDATE version SET counter = counter + 1 WHERE id = 1 RETURNING counter", "");
    if (rc == 0) {
        if (PQntuples(r) != 1)
            rc = hv_err_set(err, -EUCLEAN, "directory pg:%s: version row missing", p->desc);
        else
            p->tx_version = (uint64_t)int_at(r, 0, 0);
        PQclear(r);
    }
    if (rc < 0) {
        PQclear(PQexec(p->conn, "ROLLBACK"));
        p->in_tx = 0;
    }
    return rc;
}

/* Ends a change: when rc >= 0 notifies and commits (returning 0, or the
 * commit's error), else rolls back and returns rc. */
static int tx_finish(pg_dir *p, int rc, hv_err *err)
{
    PGresult *r;
    if (rc >= 0) {
        rc = run(p, &r, err, "notify", "SELECT pg_notify('" CHANNEL "', $1)", "i",
                 (int64_t)p->tx_version);
        if (rc == 0)
            PQclear(r);
    }
    if (rc >= 0) {
        rc = run(p, &r, err, "commit", "COMMIT", "");
        if (rc == 0)
            PQclear(r);
        p->in_tx = 0;
        return rc < 0 ? rc : 0;
    }
    if (PQstatus(p->conn) == CONNECTION_OK)
        PQclear(PQexec(p->conn, "ROLLBACK"));
    p->in_tx = 0;
    return rc;
}

/* Creates the schema when the database has none, under an advisory lock
 * so that nodes starting together create it once; else checks that it is
 * a version this code knows. */
static int create_schema(pg_dir *p, hv_err *err)
{
    PGresult *r;
    int rc = run(p, &r, err, "begin", "BEGIN", "");
    if (rc < 0)
        return rc;
    PQclear(r);
    p->in_tx = 1;
    rc = run(p, &r, err, "schema lock", "SELECT pg_advisory_xact_lock(" SCHEMA_LOCK_KEY ")", "");
    if (rc == 0)
        PQclear(r);
    int64_t exists = 0;
    if (rc == 0)
        rc = query_int(p, &exists, err, "SELECT (to_regclass('schema_version') IS NOT NULL)::int",
                       "");
    /* query_int answers 1 for a row; the value is what matters here. */
    if (rc >= 0 && !exists) {
        /* A fixed script without any value in it: the one place that
         * runs several statements in one call. */
        r = PQexec(p->conn, schema_sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            rc = db_fail(p, r, "creating the schema", err);
        PQclear(r);
        if (rc >= 0)
            rc = exec(p, err, "INSERT INTO schema_version (version) VALUES ($1)", "i",
                      (int64_t)SCHEMA_VERSION);
    } else if (rc >= 0) {
        int64_t v = 0;
        rc = query_int(p, &v, err, "SELECT max(version) FROM schema_version", "");
        if (rc >= 0 && (v > SCHEMA_VERSION || v < 1)) {
            rc = hv_err_set(err, -EPROTO,
                            "directory pg:%s: schema version %lld, this haven knows versions 1 "
                            "to %d", p->desc, (long long)v, SCHEMA_VERSION);
        } else if (rc >= 0 && v < SCHEMA_VERSION) {
            /* Under the advisory lock, in this transaction: nodes opening
             * an old database together upgrade it once, and entirely. */
            r = PQexec(p->conn, upgrade_sql);
            if (PQresultStatus(r) != PGRES_COMMAND_OK)
                rc = db_fail(p, r, "upgrading the schema", err);
            PQclear(r);
            if (rc >= 0)
                rc = exec(p, err, "UPDATE schema_version SET version = $1", "i",
                          (int64_t)SCHEMA_VERSION);
        }
    }
    if (rc >= 0) {
        rc = run(p, &r, err, "commit", "COMMIT", "");
        if (rc == 0)
            PQclear(r);
        p->in_tx = 0;
        return rc;
    }
    if (PQstatus(p->conn) == CONNECTION_OK)
        PQclear(PQexec(p->conn, "ROLLBACK"));
    p->in_tx = 0;
    return rc;
}

static void pg_close(dir *d)
{
    pg_dir *p = pd_of(d);
    if (p->conn)
        PQfinish(p->conn);
    free(p);
}

static int pg_open(const char *where, dir **out, hv_err *err)
{
    pg_dir *p = calloc(1, sizeof(*p));
    if (!p)
        return hv_err_set(err, -ENOMEM, "out of memory");
    p->base.be = &dir_pg_backend;
    /* Our defaults come first: a key the operator's string repeats wins.
     * A bounded connect_timeout keeps a dead server from hanging a login. */
    const char *keys[] = {"application_name", "connect_timeout", "dbname", NULL};
    const char *vals[] = {"haven", "10", where, NULL};
    p->conn = PQconnectdbParams(keys, vals, 1);
    if (!p->conn) {
        free(p);
        return hv_err_set(err, -ENOMEM, "out of memory");
    }
    describe(p);
    int rc;
    if (PQstatus(p->conn) != CONNECTION_OK) {
        char line[256];
        const char *msg = PQerrorMessage(p->conn);
        /* libpq says "connection to server at ... failed: REASON". */
        rc = hv_err_set(err, strstr(msg, "does not exist") ? -ENOENT
                             : strstr(msg, "authentication") || strstr(msg, "password")
                                 ? -EACCES
                                 : -ECONNREFUSED,
                        "directory pg:%s: cannot connect: %s", p->desc,
                        one_line(msg, line, sizeof(line)));
        pg_close(&p->base);
        return rc;
    }
    describe(p);
    PQsetNoticeProcessor(p->conn, ignore_notice, NULL);
    rc = create_schema(p, err);
    if (rc < 0) {
        pg_close(&p->base);
        return rc;
    }
    *out = &p->base;
    return 0;
}

/* --- domains --- */

static int pg_domain_exists(dir *d, const char *domain, hv_err *err)
{
    int64_t one;
    int rc = query_int(pd_of(d), &one, err, "SELECT 1 FROM domains WHERE name = $1", "s", domain);
    if (rc == 0)
        return hv_err_set(err, -ENOENT, "no domain %s", domain);
    return rc < 0 ? rc : 0;
}

static int pg_domain_add(dir *d, const char *domain, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err,
              "INSERT INTO domains (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING", "si",
              domain, (int64_t)time(NULL));
    if (rc == 0)
        rc = hv_err_set(err, -EEXIST, "domain %s already exists", domain);
    return tx_finish(p, rc, err);
}

static int pg_domain_del(dir *d, const char *domain, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    int64_t accounts = 0, aliases = 0;
    rc = pg_domain_exists(d, domain, err);
    if (rc >= 0)
        rc = query_int(p, &accounts, err, "SELECT count(*) FROM accounts WHERE domain = $1", "s",
                       domain);
    if (rc >= 0)
        rc = query_int(p, &aliases, err, "SELECT count(*) FROM aliases WHERE domain = $1", "s",
                       domain);
    if (rc >= 0 && accounts > 0)
        rc = hv_err_set(err, -ENOTEMPTY, "domain %s still has %lld account%s; delete them first",
                        domain, (long long)accounts, accounts == 1 ? "" : "s");
    else if (rc >= 0 && aliases > 0)
        rc = hv_err_set(err, -ENOTEMPTY, "domain %s still has %lld alias%s; delete them first",
                        domain, (long long)aliases, aliases == 1 ? "" : "es");
    if (rc >= 0)
        rc = exec(p, err, "DELETE FROM domains WHERE name = $1", "s", domain);
    return tx_finish(p, rc, err);
}

static int pg_domain_list(dir *d, dir_domain_cb cb, void *ctx, hv_err *err)
{
    PGresult *r;
    int rc = run(pd_of(d), &r, err, "read", "SELECT name FROM domains ORDER BY name", "");
    if (rc < 0)
        return rc;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++)
        rc = cb(ctx, PQgetvalue(r, i, 0));
    PQclear(r);
    return rc;
}

/* --- accounts --- */

#define ACCOUNT_COLUMNS                                                                      \
    "address, password_hash, state, store, slot, quota_bytes, last_login_attempt, created"

/* Copies a text column into a fixed field, refusing what does not fit:
 * a truncated hash or address would be a wrong answer, not a short one. */
static int column_copy(pg_dir *p, const PGresult *r, int row, int col, char *out,
                       size_t outlen, hv_err *err)
{
    const char *v = PQgetvalue(r, row, col);
    size_t n = strlen(v);
    if (n >= outlen)
        return hv_err_set(err, -EUCLEAN, "directory pg:%s: %s too long in the database",
                          p->desc, PQfname(r, col));
    memcpy(out, v, n + 1);
    return 0;
}

static int account_row(pg_dir *p, const PGresult *r, int row, dir_account *a, hv_err *err)
{
    memset(a, 0, sizeof(*a));
    int rc = column_copy(p, r, row, 0, a->address, sizeof(a->address), err);
    if (rc == 0)
        rc = column_copy(p, r, row, 1, a->password_hash, sizeof(a->password_hash), err);
    if (rc == 0)
        rc = column_copy(p, r, row, 3, a->store, sizeof(a->store), err);
    if (rc < 0)
        return rc;
    if (dir_state_parse(PQgetvalue(r, row, 2), &a->state, NULL) < 0)
        return hv_err_set(err, -EUCLEAN, "directory pg:%s: account %s has an unknown state",
                          p->desc, a->address);
    a->slot = (uint32_t)int_at(r, row, 4);
    a->quota_bytes = (uint64_t)int_at(r, row, 5);
    a->last_login_attempt = int_at(r, row, 6);
    a->created = int_at(r, row, 7);
    return 0;
}

static int pg_account_get(dir *d, const char *address, dir_account *out, hv_err *err)
{
    pg_dir *p = pd_of(d);
    PGresult *r;
    int rc = run(p, &r, err, "read",
                 "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE address = $1", "s", address);
    if (rc < 0)
        return rc;
    if (PQntuples(r) > 0)
        rc = account_row(p, r, 0, out, err);
    else
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    PQclear(r);
    return rc;
}

static int pg_account_list(dir *d, const char *domain, dir_account_cb cb, void *ctx,
                           hv_err *err)
{
    pg_dir *p = pd_of(d);
    PGresult *r;
    int rc;
    if (domain) {
        rc = pg_domain_exists(d, domain, err);
        if (rc < 0)
            return rc;
        rc = run(p, &r, err, "read",
                 "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE domain = $1 ORDER BY address",
                 "s", domain);
    } else {
        rc = run(p, &r, err, "read", "SELECT " ACCOUNT_COLUMNS " FROM accounts ORDER BY address",
                 "");
    }
    if (rc < 0)
        return rc;
    dir_account a;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = account_row(p, r, i, &a, err);
        if (rc == 0)
            rc = cb(ctx, &a);
    }
    PQclear(r);
    return rc;
}

/* -EEXIST when address is taken by an account or an alias. */
static int address_free(pg_dir *p, const char *address, hv_err *err)
{
    int64_t one;
    int rc = query_int(p, &one, err, "SELECT 1 FROM accounts WHERE address = $1", "s", address);
    if (rc > 0)
        return hv_err_set(err, -EEXIST, "account %s already exists", address);
    if (rc == 0)
        rc = query_int(p, &one, err, "SELECT 1 FROM aliases WHERE address = $1", "s", address);
    if (rc > 0)
        return hv_err_set(err, -EEXIST, "%s is already an alias", address);
    return rc;
}

static int pg_account_add(dir *d, const char *address, const char *domain, const char *hash,
                          const char *store, uint64_t quota_bytes, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int64_t now = (int64_t)time(NULL);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = address_free(p, address, err);
    if (rc >= 0)
        rc = exec(p, err,
                  "INSERT INTO domains (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                  "si", domain, now);
    if (rc >= 0)
        rc = exec(p, err,
                  "INSERT INTO accounts (address, domain, password_hash, state, store, "
                  "quota_bytes, created) VALUES ($1, $2, $3, 'active', $4, $5, $6)",
                  "ssssii", address, domain, hash, store, (int64_t)quota_bytes, now);
    return tx_finish(p, rc, err);
}

static int pg_account_del(dir *d, const char *address, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err, "DELETE FROM accounts WHERE address = $1", "s", address);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    return tx_finish(p, rc, err);
}

/* The shape of every single-account change: one UPDATE whose last
 * parameter is the address; -ENOENT when it touched no row. */
static int account_update(dir *d, const char *address, hv_err *err, const char *sql,
                          const char *types, ...)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    va_list ap;
    va_start(ap, types);
    rc = exec_va(p, err, sql, types, ap);
    va_end(ap);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    return tx_finish(p, rc, err);
}

static int pg_account_set_password(dir *d, const char *address, const char *hash, hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET password_hash = $1 WHERE address = $2", "ss", hash,
                          address);
}

static int pg_account_set_state(dir *d, const char *address, enum dir_state state,
                                hv_err *err)
{
    return account_update(d, address, err, "UPDATE accounts SET state = $1 WHERE address = $2",
                          "ss", dir_state_name(state), address);
}

static int pg_account_set_quota(dir *d, const char *address, uint64_t quota_bytes,
                                hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET quota_bytes = $1 WHERE address = $2", "is",
                          (int64_t)quota_bytes, address);
}

static int pg_account_set_store(dir *d, const char *address, const char *store, uint32_t slot,
                                hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET store = $1, slot = $2 WHERE address = $3", "sis",
                          store, (int64_t)slot, address);
}

static int pg_account_move_commit(dir *d, const char *address, const char *store,
                                  uint32_t slot, enum dir_state state, hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET store = $1, slot = $2, state = $3 "
                          "WHERE address = $4",
                          "siss", store, (int64_t)slot, dir_state_name(state), address);
}

static int pg_account_login_attempt(dir *d, const char *address, int64_t when, hv_err *err)
{
    /* One autocommitted statement, no version bump and no NOTIFY: see
     * dir.h. GREATEST keeps the newest when attempts arrive out of order. */
    int rc = exec(pd_of(d), err,
                  "UPDATE accounts SET last_login_attempt = GREATEST(last_login_attempt, $1) "
                  "WHERE address = $2",
                  "is", when, address);
    if (rc == 0)
        return hv_err_set(err, -ENOENT, "no account %s", address);
    return rc < 0 ? rc : 0;
}

/* --- aliases --- */

static int pg_alias_add(dir *d, const char *address, const char *domain, const char *target,
                        hv_err *err)
{
    pg_dir *p = pd_of(d);
    int64_t now = (int64_t)time(NULL);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = address_free(p, address, err);
    if (rc >= 0)
        rc = exec(p, err,
                  "INSERT INTO domains (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                  "si", domain, now);
    if (rc >= 0)
        rc = exec(p, err,
                  "INSERT INTO aliases (address, domain, target, created) VALUES ($1, $2, $3, $4)",
                  "sssi", address, domain, target, now);
    return tx_finish(p, rc, err);
}

static int pg_alias_del(dir *d, const char *address, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err, "DELETE FROM aliases WHERE address = $1", "s", address);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no alias %s", address);
    return tx_finish(p, rc, err);
}

static int pg_alias_get(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1],
                        hv_err *err)
{
    pg_dir *p = pd_of(d);
    PGresult *r;
    int rc = run(p, &r, err, "read", "SELECT target FROM aliases WHERE address = $1", "s",
                 address);
    if (rc < 0)
        return rc;
    if (PQntuples(r) > 0)
        rc = column_copy(p, r, 0, 0, out, DIR_ADDRESS_MAX + 1, err);
    else
        rc = hv_err_set(err, -ENOENT, "no alias %s", address);
    PQclear(r);
    return rc;
}

static int pg_alias_list(dir *d, dir_alias_cb cb, void *ctx, hv_err *err)
{
    PGresult *r;
    int rc = run(pd_of(d), &r, err, "read",
                 "SELECT address, target FROM aliases ORDER BY address", "");
    if (rc < 0)
        return rc;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++)
        rc = cb(ctx, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
    PQclear(r);
    return rc;
}

/* --- stores --- */

#define STORE_COLUMNS "name, address, role, epoch, lmtp_address, repl_address"

/* The column of each service's address; a fixed name, never input. */
static const char *const service_set_sql[] = {
    [DIR_SERVICE_IMAP] = "UPDATE stores SET address = $1 WHERE name = $2",
    [DIR_SERVICE_LMTP] = "UPDATE stores SET lmtp_address = $1 WHERE name = $2",
    [DIR_SERVICE_REPL] = "UPDATE stores SET repl_address = $1 WHERE name = $2",
};

static int store_row(pg_dir *p, const PGresult *r, int row, dir_store *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    int rc = column_copy(p, r, row, 0, out->name, sizeof(out->name), err);
    if (rc == 0)
        rc = column_copy(p, r, row, 1, out->address, sizeof(out->address), err);
    if (rc == 0)
        rc = column_copy(p, r, row, 4, out->lmtp_address, sizeof(out->lmtp_address), err);
    if (rc == 0)
        rc = column_copy(p, r, row, 5, out->repl_address, sizeof(out->repl_address), err);
    if (rc < 0)
        return rc;
    if (dir_store_role_parse(PQgetvalue(r, row, 2), &out->role, NULL) < 0)
        return hv_err_set(err, -EUCLEAN, "directory pg:%s: store %s has an unknown role",
                          p->desc, out->name);
    out->epoch = (uint64_t)int_at(r, row, 3);
    return 0;
}

static int pg_store_add(dir *d, const char *name, const char *address,
                        enum dir_store_role role, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err,
              "INSERT INTO stores (name, address, role, epoch) VALUES ($1, $2, $3, 0) "
              "ON CONFLICT DO NOTHING",
              "sss", name, address, dir_store_role_name(role));
    if (rc == 0)
        rc = hv_err_set(err, -EEXIST, "store %s already exists", name);
    return tx_finish(p, rc, err);
}

static int pg_store_get(dir *d, const char *name, dir_store *out, hv_err *err)
{
    pg_dir *p = pd_of(d);
    PGresult *r;
    int rc = run(p, &r, err, "read",
                 "SELECT " STORE_COLUMNS " FROM stores WHERE name = $1", "s", name);
    if (rc < 0)
        return rc;
    if (PQntuples(r) > 0)
        rc = store_row(p, r, 0, out, err);
    else
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    PQclear(r);
    return rc;
}

static int pg_store_list(dir *d, dir_store_cb cb, void *ctx, hv_err *err)
{
    pg_dir *p = pd_of(d);
    PGresult *r;
    int rc = run(p, &r, err, "read", "SELECT " STORE_COLUMNS " FROM stores ORDER BY name",
                 "");
    if (rc < 0)
        return rc;
    dir_store one;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        rc = store_row(p, r, i, &one, err);
        if (rc == 0)
            rc = cb(ctx, &one);
    }
    PQclear(r);
    return rc;
}

static int pg_store_set_epoch(dir *d, const char *name, uint64_t epoch, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    /* The version lock taken by tx_begin makes read-compare-write one
     * step: of two racing promotions, the second sees the first's epoch. */
    int64_t cur = 0;
    rc = query_int(p, &cur, err, "SELECT epoch FROM stores WHERE name = $1", "s", name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    else if (rc > 0 && (int64_t)epoch <= cur)
        rc = hv_err_set(err, -ESTALE, "store %s is at epoch %lld; a new epoch must be higher",
                        name, (long long)cur);
    if (rc > 0)
        rc = exec(p, err, "UPDATE stores SET epoch = $1 WHERE name = $2", "is", (int64_t)epoch,
                  name);
    return tx_finish(p, rc, err);
}

static int pg_store_set_role(dir *d, const char *name, enum dir_store_role role, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err, "UPDATE stores SET role = $1 WHERE name = $2", "ss",
              dir_store_role_name(role), name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    return tx_finish(p, rc, err);
}

static int pg_store_set_address(dir *d, const char *name, enum dir_store_service service,
                                const char *address, hv_err *err)
{
    pg_dir *p = pd_of(d);
    if ((unsigned)service > DIR_SERVICE_REPL)
        return hv_err_set(err, -EINVAL, "unknown store service %d", (int)service);
    int rc = tx_begin(p, err);
    if (rc < 0)
        return rc;
    rc = exec(p, err, service_set_sql[service], "ss", address, name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    return tx_finish(p, rc, err);
}

static int pg_version(dir *d, uint64_t *out, hv_err *err)
{
    int64_t v = 0;
    int rc = query_int(pd_of(d), &v, err, "SELECT counter FROM version WHERE id = 1", "");
    if (rc == 0)
        return hv_err_set(err, -EUCLEAN, "directory pg:%s: version row missing", pd_of(d)->desc);
    if (rc < 0)
        return rc;
    *out = (uint64_t)v;
    return 0;
}

/* --- change notification --- */

static int pg_listen(pg_dir *p, hv_err *err)
{
    p->watching = 1;
    if (p->listening && PQstatus(p->conn) == CONNECTION_OK)
        return 0;
    PGresult *r;
    int rc = run(p, &r, err, "listen", "LISTEN " CHANNEL, "");
    if (rc < 0)
        return rc;
    PQclear(r);
    p->listening = 1;
    return 0;
}

static int pg_watch_fd(dir *d)
{
    pg_dir *p = pd_of(d);
    if (pg_listen(p, NULL) < 0)
        return -1;
    return PQsocket(p->conn);
}

static int pg_watch_drain(dir *d, uint64_t *version_out, hv_err *err)
{
    pg_dir *p = pd_of(d);
    int rc = pg_listen(p, err);
    if (rc < 0)
        return rc;
    if (!PQconsumeInput(p->conn)) {
        /* The server went away; what it sent meanwhile is lost, so the
         * reconnect leaves primed at 0 and this drain reports a change. */
        reconnect(p);
        if (PQstatus(p->conn) != CONNECTION_OK || !p->listening)
            return db_fail(p, NULL, "listen", err);
    }
    int got = 0;
    uint64_t newest = p->watch_version;
    PGnotify *n;
    while ((n = PQnotifies(p->conn)) != NULL) {
        if (strcmp(n->relname, CHANNEL) == 0) {
            uint64_t v = strtoull(n->extra, NULL, 10);
            got = 1;
            if (v > newest)
                newest = v;
        }
        PQfreemem(n);
    }
    if (!p->primed) {
        /* LISTEN is in effect: every change after this read is notified. */
        rc = pg_version(d, &newest, err);
        if (rc < 0)
            return rc;
        p->primed = 1;
        got = 1;
    }
    p->watch_version = newest;
    *version_out = newest;
    return got;
}

const dir_backend dir_pg_backend = {
    .scheme = "pg",
    .where_is_path = 0,
    .open = pg_open,
    .close = pg_close,
    .domain_add = pg_domain_add,
    .domain_del = pg_domain_del,
    .domain_exists = pg_domain_exists,
    .domain_list = pg_domain_list,
    .account_add = pg_account_add,
    .account_del = pg_account_del,
    .account_get = pg_account_get,
    .account_list = pg_account_list,
    .account_set_password = pg_account_set_password,
    .account_set_state = pg_account_set_state,
    .account_set_quota = pg_account_set_quota,
    .account_set_store = pg_account_set_store,
    .account_move_commit = pg_account_move_commit,
    .account_login_attempt = pg_account_login_attempt,
    .alias_add = pg_alias_add,
    .alias_del = pg_alias_del,
    .alias_get = pg_alias_get,
    .alias_list = pg_alias_list,
    .store_add = pg_store_add,
    .store_get = pg_store_get,
    .store_list = pg_store_list,
    .store_set_epoch = pg_store_set_epoch,
    .store_set_role = pg_store_set_role,
    .store_set_address = pg_store_set_address,
    .version = pg_version,
    .watch_fd = pg_watch_fd,
    .watch_drain = pg_watch_drain,
};
