/*
 * dir_sqlite.c - the directory on SQLite, for a single node; see dir.h and
 * docs/directory.md. The backend-neutral part (dir_open, the name rules,
 * the dir_* entry points) is in dir.c.
 *
 * SQLite runs in WAL mode with synchronous=FULL: readers (IMAP logins, LMTP
 * lookups) never wait for a writer, and a change is on disk when the call
 * returns. Every change is one BEGIN IMMEDIATE transaction that also bumps
 * the version counter, so a change and its version are never seen apart;
 * IMMEDIATE takes the write lock up front, which is what lets busy_timeout
 * wait instead of failing when two processes write at once. The file is
 * created 0600 because it holds password hashes.
 */
#include "dir/dir.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* 2: stores gained lmtp_address and repl_address (a version 1 file is
 * upgraded in place when opened: upgrade_schema). */
#define SCHEMA_VERSION 2

/* How long a writer waits for another process's transaction to end. */
#define BUSY_TIMEOUT_MS 10000

typedef struct sqlite_dir {
    struct dir base;
    sqlite3 *db;
    char *path;
    int watching;           /* a drain has run: watch_version is set */
    uint64_t watch_version; /* the version the last drain saw */
} sqlite_dir;

static const char schema_sql[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE version (id INTEGER PRIMARY KEY CHECK (id = 1), counter BIGINT NOT NULL);"
    "INSERT INTO version (id, counter) VALUES (1, 0);"
    "CREATE TABLE domains ("
    "  name TEXT PRIMARY KEY,"
    "  created BIGINT NOT NULL);"
    "CREATE TABLE accounts ("
    "  address TEXT PRIMARY KEY,"
    "  domain TEXT NOT NULL REFERENCES domains (name),"
    "  password_hash TEXT,"
    "  state TEXT NOT NULL DEFAULT 'active'"
    "    CHECK (state IN ('active', 'held', 'moving', 'restoring')),"
    "  store TEXT NOT NULL,"
    "  slot BIGINT NOT NULL DEFAULT 0,"
    "  quota_bytes BIGINT NOT NULL DEFAULT 0,"
    "  last_login_attempt BIGINT NOT NULL DEFAULT 0,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX accounts_domain ON accounts (domain, address);"
    "CREATE INDEX accounts_store ON accounts (store);"
    "CREATE TABLE aliases ("
    "  address TEXT PRIMARY KEY,"
    "  domain TEXT NOT NULL REFERENCES domains (name),"
    "  target TEXT NOT NULL,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX aliases_domain ON aliases (domain);"
    "CREATE TABLE stores ("
    "  name TEXT PRIMARY KEY,"
    "  address TEXT NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('primary', 'replica')),"
    "  epoch BIGINT NOT NULL DEFAULT 0,"
    "  lmtp_address TEXT NOT NULL DEFAULT '',"
    "  repl_address TEXT NOT NULL DEFAULT '');";

/* Columns added since version 1, each with what ALTER TABLE adds. */
static const struct {
    const char *table, *column, *add_sql;
} added_columns[] = {
    {"stores", "lmtp_address", "ALTER TABLE stores ADD COLUMN lmtp_address TEXT NOT NULL DEFAULT ''"},
    {"stores", "repl_address", "ALTER TABLE stores ADD COLUMN repl_address TEXT NOT NULL DEFAULT ''"},
};

static sqlite_dir *sd_of(dir *d) { return (sqlite_dir *)d; }

/* Maps an SQLite result to an errno-style code and fills err. */
static int db_fail(sqlite_dir *s, int rc, const char *what, hv_err *err)
{
    int code;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: code = -EBUSY; break;
    case SQLITE_FULL: code = -ENOSPC; break;
    case SQLITE_READONLY: code = -EROFS; break;
    case SQLITE_PERM:
    case SQLITE_AUTH: code = -EACCES; break;
    case SQLITE_CANTOPEN: code = -ENOENT; break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: code = -EUCLEAN; break;
    case SQLITE_CONSTRAINT: code = -EEXIST; break;
    case SQLITE_NOMEM: code = -ENOMEM; break;
    default: code = -EIO; break;
    }
    return hv_err_set(err, code, "directory %s: %s: %s", s->path, what,
                      s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
}

/* Binds arguments described by types: 's' text (NULL binds NULL), 'i' an
 * int64_t. */
static int bind_va(sqlite3_stmt *st, const char *types, va_list ap)
{
    for (int i = 0; types[i]; i++) {
        int rc;
        if (types[i] == 's') {
            const char *v = va_arg(ap, const char *);
            rc = v ? sqlite3_bind_text(st, i + 1, v, -1, SQLITE_TRANSIENT)
                   : sqlite3_bind_null(st, i + 1);
        } else {
            rc = sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
        }
        if (rc != SQLITE_OK)
            return rc;
    }
    return SQLITE_OK;
}

/* Prepares sql and binds its arguments; the caller steps and finalizes. */
static int query(sqlite_dir *s, sqlite3_stmt **st, hv_err *err, const char *sql,
                 const char *types, ...)
{
    int rc = sqlite3_prepare_v2(s->db, sql, -1, st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "prepare", err);
    va_list ap;
    va_start(ap, types);
    rc = bind_va(*st, types, ap);
    va_end(ap);
    if (rc != SQLITE_OK) {
        int r = db_fail(s, rc, "bind", err);
        sqlite3_finalize(*st);
        *st = NULL;
        return r;
    }
    return 0;
}

/* Runs a statement that returns no rows; returns the rows it changed. */
static int exec_va(sqlite_dir *s, hv_err *err, const char *sql, const char *types, va_list ap)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "prepare", err);
    rc = bind_va(st, types, ap);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW || rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    int r = rc == SQLITE_OK ? sqlite3_changes(s->db) : db_fail(s, rc, "write", err);
    sqlite3_finalize(st);
    return r;
}

static int exec(sqlite_dir *s, hv_err *err, const char *sql, const char *types, ...)
{
    va_list ap;
    va_start(ap, types);
    int rc = exec_va(s, err, sql, types, ap);
    va_end(ap);
    return rc;
}

/* Runs a query for one integer: 1 with *out set when there is a row, 0
 * when there is none. */
static int query_int(sqlite_dir *s, int64_t *out, hv_err *err, const char *sql,
                     const char *types, ...)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return db_fail(s, rc, "prepare", err);
    va_list ap;
    va_start(ap, types);
    rc = bind_va(st, types, ap);
    va_end(ap);
    int r;
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        r = 1;
    } else if (rc == SQLITE_DONE) {
        r = 0;
    } else {
        r = db_fail(s, rc, "read", err);
    }
    sqlite3_finalize(st);
    return r;
}

static int tx_begin(sqlite_dir *s, hv_err *err)
{
    int rc = sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : db_fail(s, rc, "begin", err);
}

/* Ends a transaction: commits when rc >= 0 (returning 0, or the commit's
 * error), rolls back otherwise (returning rc, err left as the caller set). */
static int tx_end(sqlite_dir *s, int rc, hv_err *err)
{
    if (rc >= 0) {
        int r = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
        if (r == SQLITE_OK)
            return 0;
        rc = db_fail(s, r, "commit", err);
    }
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Every change goes through here, inside its transaction. */
static int bump_version(sqlite_dir *s, hv_err *err)
{
    int rc = exec(s, err, "UPDATE version SET counter = counter + 1 WHERE id = 1", "");
    return rc < 0 ? rc : 0;
}

/* Ends a change: bumps the version when all went well, then commits. */
static int tx_finish(sqlite_dir *s, int rc, hv_err *err)
{
    if (rc >= 0)
        rc = bump_version(s, err);
    return tx_end(s, rc, err);
}

/* Brings a directory written by an older Haven to this version, inside
 * create_schema's transaction: columns are only ever added (with
 * defaults), so nothing in it is lost or changed, and a file that is
 * half-way (a column already there) is finished, not refused. */
static int upgrade_schema(sqlite_dir *s, int64_t from, hv_err *err)
{
    int rc = 0;
    for (size_t i = 0; rc >= 0 && i < sizeof(added_columns) / sizeof(added_columns[0]); i++) {
        int64_t have = 0;
        rc = query_int(s, &have, err, "SELECT count(*) FROM pragma_table_info(?) WHERE name = ?",
                       "ss", added_columns[i].table, added_columns[i].column);
        if (rc >= 0 && have == 0) {
            char *msg = NULL;
            int r = sqlite3_exec(s->db, added_columns[i].add_sql, NULL, NULL, &msg);
            if (r != SQLITE_OK)
                rc = hv_err_set(err, -EIO, "directory %s: upgrading the schema from version "
                                "%lld: %s", s->path, (long long)from,
                                msg ? msg : sqlite3_errstr(r));
            sqlite3_free(msg);
        }
    }
    if (rc >= 0)
        rc = exec(s, err, "UPDATE schema_version SET version = ?", "i", (int64_t)SCHEMA_VERSION);
    return rc < 0 ? rc : 0;
}

static int create_schema(sqlite_dir *s, hv_err *err)
{
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    int64_t n = 0;
    rc = query_int(s, &n, err,
                   "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                   "name = 'schema_version'", "");
    if (rc >= 0 && n == 0) {
        char *msg = NULL;
        int r = sqlite3_exec(s->db, schema_sql, NULL, NULL, &msg);
        if (r == SQLITE_OK)
            rc = exec(s, err, "INSERT INTO schema_version (version) VALUES (?)", "i",
                      (int64_t)SCHEMA_VERSION);
        else
            rc = hv_err_set(err, -EIO, "directory %s: creating the schema: %s", s->path,
                            msg ? msg : sqlite3_errstr(r));
        sqlite3_free(msg);
    } else if (rc >= 0) {
        int64_t v = 0;
        rc = query_int(s, &v, err, "SELECT max(version) FROM schema_version", "");
        if (rc >= 0 && (v > SCHEMA_VERSION || v < 1))
            rc = hv_err_set(err, -EPROTO,
                            "directory %s: schema version %lld, this haven knows versions 1 "
                            "to %d", s->path, (long long)v, SCHEMA_VERSION);
        else if (rc >= 0 && v < SCHEMA_VERSION)
            rc = upgrade_schema(s, v, err);
    }
    return tx_end(s, rc, err);
}

static void sqlite_close(dir *d)
{
    sqlite_dir *s = sd_of(d);
    if (s->db)
        sqlite3_close_v2(s->db);
    free(s->path);
    free(s);
}

static int sqlite_open(const char *where, dir **out, hv_err *err)
{
    /* Create the file ourselves first: sqlite3_open would use 0644, and
     * its -wal and -shm files copy the database file's mode. Only when it
     * is new: closing any descriptor of a file drops every POSIX lock this
     * process holds on it, including those of connections already open
     * here, and another process would then think itself the last user and
     * remove the -wal and -shm files under them. */
    int fd = open(where, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST)
        return hv_err_sys(err, "directory %s", where);
    if (fd >= 0)
        close(fd);

    sqlite_dir *s = calloc(1, sizeof(*s));
    if (!s)
        return hv_err_set(err, -ENOMEM, "out of memory");
    s->base.be = &dir_sqlite_backend;
    s->path = strdup(where);
    int rc = sqlite3_open_v2(where, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = db_fail(s, rc, "open", err);
        goto fail;
    }
    sqlite3_busy_timeout(s->db, BUSY_TIMEOUT_MS);
    sqlite3_extended_result_codes(s->db, 1);
    /* journal_mode answers with the mode in effect; anything but "wal"
     * (a file system without shared memory, say) would make readers and the
     * writer block each other, so refuse rather than run slow. */
    sqlite3_stmt *st;
    rc = query(s, &st, err, "PRAGMA journal_mode = WAL", "");
    if (rc < 0)
        goto fail;
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = db_fail(s, rc, "setting WAL mode", err);
        sqlite3_finalize(st);
        goto fail;
    }
    const char *mode = (const char *)sqlite3_column_text(st, 0);
    if (!mode || strcmp(mode, "wal") != 0) {
        rc = hv_err_set(err, -EIO, "directory %s: cannot use WAL mode (got '%s')", where,
                        mode ? mode : "");
        sqlite3_finalize(st);
        goto fail;
    }
    sqlite3_finalize(st);
    rc = sqlite3_exec(s->db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON", NULL, NULL,
                      NULL);
    if (rc != SQLITE_OK) {
        rc = db_fail(s, rc, "pragma", err);
        goto fail;
    }
    rc = create_schema(s, err);
    if (rc < 0)
        goto fail;
    *out = &s->base;
    return 0;
fail:
    sqlite_close(&s->base);
    return rc;
}

/* --- domains --- */

static int sqlite_domain_exists(dir *d, const char *domain, hv_err *err)
{
    int64_t one;
    int rc = query_int(sd_of(d), &one, err, "SELECT 1 FROM domains WHERE name = ?", "s", domain);
    if (rc == 0)
        return hv_err_set(err, -ENOENT, "no domain %s", domain);
    return rc < 0 ? rc : 0;
}

static int sqlite_domain_add(dir *d, const char *domain, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err, "INSERT INTO domains (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
              "si", domain, (int64_t)time(NULL));
    if (rc == 0)
        rc = hv_err_set(err, -EEXIST, "domain %s already exists", domain);
    return tx_finish(s, rc, err);
}

static int sqlite_domain_del(dir *d, const char *domain, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    int64_t accounts = 0, aliases = 0;
    rc = sqlite_domain_exists(d, domain, err);
    if (rc >= 0)
        rc = query_int(s, &accounts, err, "SELECT count(*) FROM accounts WHERE domain = ?", "s",
                       domain);
    if (rc >= 0)
        rc = query_int(s, &aliases, err, "SELECT count(*) FROM aliases WHERE domain = ?", "s",
                       domain);
    if (rc >= 0 && accounts > 0)
        rc = hv_err_set(err, -ENOTEMPTY, "domain %s still has %lld account%s; delete them first",
                        domain, (long long)accounts, accounts == 1 ? "" : "s");
    else if (rc >= 0 && aliases > 0)
        rc = hv_err_set(err, -ENOTEMPTY, "domain %s still has %lld alias%s; delete them first",
                        domain, (long long)aliases, aliases == 1 ? "" : "es");
    if (rc >= 0)
        rc = exec(s, err, "DELETE FROM domains WHERE name = ?", "s", domain);
    return tx_finish(s, rc, err);
}

static int sqlite_domain_list(dir *d, dir_domain_cb cb, void *ctx, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT name FROM domains ORDER BY name", "");
    if (rc < 0)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = cb(ctx, (const char *)sqlite3_column_text(st, 0));
        if (r) {
            sqlite3_finalize(st);
            return r;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

/* --- accounts --- */

#define ACCOUNT_COLUMNS                                                                      \
    "address, password_hash, state, store, slot, quota_bytes, last_login_attempt, created"

/* Copies a text column into a fixed field, refusing what does not fit:
 * a truncated hash or address would be a wrong answer, not a short one. */
static int column_copy(sqlite_dir *s, sqlite3_stmt *st, int col, char *out, size_t outlen,
                       hv_err *err)
{
    const char *v = (const char *)sqlite3_column_text(st, col);
    size_t n = v ? strlen(v) : 0;
    if (n >= outlen)
        return hv_err_set(err, -EUCLEAN, "directory %s: %s too long in the database", s->path,
                          sqlite3_column_name(st, col));
    memcpy(out, v ? v : "", n + 1);
    return 0;
}

static int account_row(sqlite_dir *s, sqlite3_stmt *st, dir_account *a, hv_err *err)
{
    memset(a, 0, sizeof(*a));
    int rc = column_copy(s, st, 0, a->address, sizeof(a->address), err);
    if (rc == 0)
        rc = column_copy(s, st, 1, a->password_hash, sizeof(a->password_hash), err);
    if (rc == 0)
        rc = column_copy(s, st, 3, a->store, sizeof(a->store), err);
    if (rc < 0)
        return rc;
    if (dir_state_parse((const char *)sqlite3_column_text(st, 2), &a->state, NULL) < 0)
        return hv_err_set(err, -EUCLEAN, "directory %s: account %s has an unknown state",
                          s->path, a->address);
    a->slot = (uint32_t)sqlite3_column_int64(st, 4);
    a->quota_bytes = (uint64_t)sqlite3_column_int64(st, 5);
    a->last_login_attempt = sqlite3_column_int64(st, 6);
    a->created = sqlite3_column_int64(st, 7);
    return 0;
}

static int sqlite_account_get(dir *d, const char *address, dir_account *out, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE address = ?",
                   "s", address);
    if (rc < 0)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = account_row(s, st, out, err);
    else if (rc == SQLITE_DONE)
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    else
        rc = db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

static int sqlite_account_list(dir *d, const char *domain, dir_account_cb cb, void *ctx,
                               hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc;
    if (domain) {
        rc = sqlite_domain_exists(d, domain, err);
        if (rc < 0)
            return rc;
        rc = query(s, &st, err,
                   "SELECT " ACCOUNT_COLUMNS " FROM accounts WHERE domain = ? ORDER BY address",
                   "s", domain);
    } else {
        rc = query(s, &st, err, "SELECT " ACCOUNT_COLUMNS " FROM accounts ORDER BY address", "");
    }
    if (rc < 0)
        return rc;
    dir_account a;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = account_row(s, st, &a, err);
        if (r == 0)
            r = cb(ctx, &a);
        if (r) {
            sqlite3_finalize(st);
            return r;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

/* -EEXIST when address is taken by an account or an alias. */
static int address_free(sqlite_dir *s, const char *address, hv_err *err)
{
    int64_t one;
    int rc = query_int(s, &one, err, "SELECT 1 FROM accounts WHERE address = ?", "s", address);
    if (rc > 0)
        return hv_err_set(err, -EEXIST, "account %s already exists", address);
    if (rc == 0)
        rc = query_int(s, &one, err, "SELECT 1 FROM aliases WHERE address = ?", "s", address);
    if (rc > 0)
        return hv_err_set(err, -EEXIST, "%s is already an alias", address);
    return rc;
}

static int sqlite_account_add(dir *d, const char *address, const char *domain,
                              const char *hash, const char *store, uint64_t quota_bytes,
                              hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int64_t now = (int64_t)time(NULL);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = address_free(s, address, err);
    if (rc >= 0)
        rc = exec(s, err,
                  "INSERT INTO domains (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
                  "si", domain, now);
    if (rc >= 0)
        rc = exec(s, err,
                  "INSERT INTO accounts (address, domain, password_hash, state, store, "
                  "quota_bytes, created) VALUES (?, ?, ?, 'active', ?, ?, ?)",
                  "ssssii", address, domain, hash, store, (int64_t)quota_bytes, now);
    return tx_finish(s, rc, err);
}

static int sqlite_account_del(dir *d, const char *address, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err, "DELETE FROM accounts WHERE address = ?", "s", address);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    return tx_finish(s, rc, err);
}

/* The shape of every single-account change: one UPDATE whose last
 * parameter is the address; -ENOENT when it touched no row. */
static int account_update(dir *d, const char *address, hv_err *err, const char *sql,
                          const char *types, ...)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    va_list ap;
    va_start(ap, types);
    rc = exec_va(s, err, sql, types, ap);
    va_end(ap);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no account %s", address);
    return tx_finish(s, rc, err);
}

static int sqlite_account_set_password(dir *d, const char *address, const char *hash,
                                       hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET password_hash = ? WHERE address = ?", "ss", hash,
                          address);
}

static int sqlite_account_set_state(dir *d, const char *address, enum dir_state state,
                                    hv_err *err)
{
    return account_update(d, address, err, "UPDATE accounts SET state = ? WHERE address = ?",
                          "ss", dir_state_name(state), address);
}

static int sqlite_account_set_quota(dir *d, const char *address, uint64_t quota_bytes,
                                    hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET quota_bytes = ? WHERE address = ?", "is",
                          (int64_t)quota_bytes, address);
}

static int sqlite_account_set_store(dir *d, const char *address, const char *store,
                                    uint32_t slot, hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET store = ?, slot = ? WHERE address = ?", "sis",
                          store, (int64_t)slot, address);
}

static int sqlite_account_move_commit(dir *d, const char *address, const char *store,
                                      uint32_t slot, enum dir_state state, hv_err *err)
{
    return account_update(d, address, err,
                          "UPDATE accounts SET store = ?, slot = ?, state = ? WHERE address = ?",
                          "siss", store, (int64_t)slot, dir_state_name(state), address);
}

static int sqlite_account_login_attempt(dir *d, const char *address, int64_t when,
                                        hv_err *err)
{
    /* One autocommitted statement, no version bump: see dir.h. max()
     * keeps the newest when attempts are recorded out of order. */
    int rc = exec(sd_of(d), err,
                  "UPDATE accounts SET last_login_attempt = max(last_login_attempt, ?) "
                  "WHERE address = ?",
                  "is", when, address);
    if (rc == 0)
        return hv_err_set(err, -ENOENT, "no account %s", address);
    return rc < 0 ? rc : 0;
}

/* --- aliases --- */

static int sqlite_alias_add(dir *d, const char *address, const char *domain,
                            const char *target, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int64_t now = (int64_t)time(NULL);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = address_free(s, address, err);
    if (rc >= 0)
        rc = exec(s, err,
                  "INSERT INTO domains (name, created) VALUES (?, ?) ON CONFLICT DO NOTHING",
                  "si", domain, now);
    if (rc >= 0)
        rc = exec(s, err,
                  "INSERT INTO aliases (address, domain, target, created) VALUES (?, ?, ?, ?)",
                  "sssi", address, domain, target, now);
    return tx_finish(s, rc, err);
}

static int sqlite_alias_del(dir *d, const char *address, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err, "DELETE FROM aliases WHERE address = ?", "s", address);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no alias %s", address);
    return tx_finish(s, rc, err);
}

static int sqlite_alias_get(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1],
                            hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT target FROM aliases WHERE address = ?", "s", address);
    if (rc < 0)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = column_copy(s, st, 0, out, DIR_ADDRESS_MAX + 1, err);
    else if (rc == SQLITE_DONE)
        rc = hv_err_set(err, -ENOENT, "no alias %s", address);
    else
        rc = db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

static int sqlite_alias_list(dir *d, dir_alias_cb cb, void *ctx, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT address, target FROM aliases ORDER BY address", "");
    if (rc < 0)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = cb(ctx, (const char *)sqlite3_column_text(st, 0),
                   (const char *)sqlite3_column_text(st, 1));
        if (r) {
            sqlite3_finalize(st);
            return r;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

/* --- stores --- */

#define STORE_COLUMNS "name, address, role, epoch, lmtp_address, repl_address"

/* The column of each service's address; a fixed name, never input. */
static const char *const service_set_sql[] = {
    [DIR_SERVICE_IMAP] = "UPDATE stores SET address = ? WHERE name = ?",
    [DIR_SERVICE_LMTP] = "UPDATE stores SET lmtp_address = ? WHERE name = ?",
    [DIR_SERVICE_REPL] = "UPDATE stores SET repl_address = ? WHERE name = ?",
};

static int store_row(sqlite_dir *s, sqlite3_stmt *st, dir_store *out, hv_err *err)
{
    memset(out, 0, sizeof(*out));
    int rc = column_copy(s, st, 0, out->name, sizeof(out->name), err);
    if (rc == 0)
        rc = column_copy(s, st, 1, out->address, sizeof(out->address), err);
    if (rc == 0)
        rc = column_copy(s, st, 4, out->lmtp_address, sizeof(out->lmtp_address), err);
    if (rc == 0)
        rc = column_copy(s, st, 5, out->repl_address, sizeof(out->repl_address), err);
    if (rc < 0)
        return rc;
    if (dir_store_role_parse((const char *)sqlite3_column_text(st, 2), &out->role, NULL) < 0)
        return hv_err_set(err, -EUCLEAN, "directory %s: store %s has an unknown role", s->path,
                          out->name);
    out->epoch = (uint64_t)sqlite3_column_int64(st, 3);
    return 0;
}

static int sqlite_store_add(dir *d, const char *name, const char *address,
                            enum dir_store_role role, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err,
              "INSERT INTO stores (name, address, role, epoch) VALUES (?, ?, ?, 0) "
              "ON CONFLICT DO NOTHING",
              "sss", name, address, dir_store_role_name(role));
    if (rc == 0)
        rc = hv_err_set(err, -EEXIST, "store %s already exists", name);
    return tx_finish(s, rc, err);
}

static int sqlite_store_get(dir *d, const char *name, dir_store *out, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT " STORE_COLUMNS " FROM stores WHERE name = ?",
                   "s", name);
    if (rc < 0)
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        rc = store_row(s, st, out, err);
    else if (rc == SQLITE_DONE)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    else
        rc = db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

static int sqlite_store_list(dir *d, dir_store_cb cb, void *ctx, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    sqlite3_stmt *st;
    int rc = query(s, &st, err, "SELECT " STORE_COLUMNS " FROM stores ORDER BY name",
                   "");
    if (rc < 0)
        return rc;
    dir_store one;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        int r = store_row(s, st, &one, err);
        if (r == 0)
            r = cb(ctx, &one);
        if (r) {
            sqlite3_finalize(st);
            return r;
        }
    }
    rc = rc == SQLITE_DONE ? 0 : db_fail(s, rc, "read", err);
    sqlite3_finalize(st);
    return rc;
}

static int sqlite_store_set_epoch(dir *d, const char *name, uint64_t epoch, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    int64_t cur = 0;
    rc = query_int(s, &cur, err, "SELECT epoch FROM stores WHERE name = ?", "s", name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    else if (rc > 0 && (int64_t)epoch <= cur)
        rc = hv_err_set(err, -ESTALE, "store %s is at epoch %lld; a new epoch must be higher",
                        name, (long long)cur);
    if (rc > 0)
        rc = exec(s, err, "UPDATE stores SET epoch = ? WHERE name = ?", "is", (int64_t)epoch,
                  name);
    return tx_finish(s, rc, err);
}

static int sqlite_store_set_role(dir *d, const char *name, enum dir_store_role role,
                                 hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err, "UPDATE stores SET role = ? WHERE name = ?", "ss",
              dir_store_role_name(role), name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    return tx_finish(s, rc, err);
}

static int sqlite_store_set_address(dir *d, const char *name, enum dir_store_service service,
                                    const char *address, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    if ((unsigned)service > DIR_SERVICE_REPL)
        return hv_err_set(err, -EINVAL, "unknown store service %d", (int)service);
    int rc = tx_begin(s, err);
    if (rc < 0)
        return rc;
    rc = exec(s, err, service_set_sql[service], "ss", address, name);
    if (rc == 0)
        rc = hv_err_set(err, -ENOENT, "no store %s", name);
    return tx_finish(s, rc, err);
}

static int sqlite_version(dir *d, uint64_t *out, hv_err *err)
{
    int64_t v = 0;
    int rc = query_int(sd_of(d), &v, err, "SELECT counter FROM version WHERE id = 1", "");
    if (rc == 0)
        return hv_err_set(err, -EUCLEAN, "directory %s: version row missing", sd_of(d)->path);
    if (rc < 0)
        return rc;
    *out = (uint64_t)v;
    return 0;
}

/* One node has no notification channel to listen on: every process that
 * writes shares the file, so the version counter is the signal, and a
 * drain is one read of it. */
static int sqlite_watch_fd(dir *d)
{
    (void)d;
    return -1;
}

static int sqlite_watch_drain(dir *d, uint64_t *version_out, hv_err *err)
{
    sqlite_dir *s = sd_of(d);
    uint64_t v = 0;
    int rc = sqlite_version(d, &v, err);
    if (rc < 0)
        return rc;
    int changed = !s->watching || v != s->watch_version;
    s->watching = 1;
    s->watch_version = v;
    *version_out = v;
    return changed;
}

const dir_backend dir_sqlite_backend = {
    .scheme = "sqlite",
    .where_is_path = 1,
    .open = sqlite_open,
    .close = sqlite_close,
    .domain_add = sqlite_domain_add,
    .domain_del = sqlite_domain_del,
    .domain_exists = sqlite_domain_exists,
    .domain_list = sqlite_domain_list,
    .account_add = sqlite_account_add,
    .account_del = sqlite_account_del,
    .account_get = sqlite_account_get,
    .account_list = sqlite_account_list,
    .account_set_password = sqlite_account_set_password,
    .account_set_state = sqlite_account_set_state,
    .account_set_quota = sqlite_account_set_quota,
    .account_set_store = sqlite_account_set_store,
    .account_move_commit = sqlite_account_move_commit,
    .account_login_attempt = sqlite_account_login_attempt,
    .alias_add = sqlite_alias_add,
    .alias_del = sqlite_alias_del,
    .alias_get = sqlite_alias_get,
    .alias_list = sqlite_alias_list,
    .store_add = sqlite_store_add,
    .store_get = sqlite_store_get,
    .store_list = sqlite_store_list,
    .store_set_epoch = sqlite_store_set_epoch,
    .store_set_role = sqlite_store_set_role,
    .store_set_address = sqlite_store_set_address,
    .version = sqlite_version,
    .watch_fd = sqlite_watch_fd,
    .watch_drain = sqlite_watch_drain,
};
