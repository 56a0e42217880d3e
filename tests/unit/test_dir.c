/*
 * test_dir.c - the directory: its name rules, the password hashes, and
 * every operation against each backend.
 *
 * The backend tests run against SQLite, and again against PostgreSQL when
 * HAVEN_TEST_PG holds a libpq connection string (tests/integration/
 * test_dir_pg.sh starts a throwaway server and sets it). The same tests
 * are the spec for both: same answers, same error codes, same versions.
 * On PostgreSQL each test starts from an empty database: the tables are
 * dropped and the backend creates them again.
 *
 * The address rules get the most cases: the store turns an address into
 * DATA/accounts/DOMAIN/LOCAL, so anything that slips through here is a
 * path outside DATA.
 */
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dir/dir.h"
#include "dir/password.h"
#include "lib/buf.h"
#include "testlib.h"

/* The backend under test: NULL for SQLite, else PostgreSQL's conninfo. */
static const char *pg_conninfo;

/* The folder of the last fresh_spec (SQLite). */
static char cur_dir[4096];

/* Runs one SQL script on the test database with a connection of its own,
 * behind the backend's back. */
static int pg_raw(const char *sql)
{
    PGconn *c = PQconnectdb(pg_conninfo);
    int ok = PQstatus(c) == CONNECTION_OK;
    if (ok) {
        PGresult *r = PQexec(c, sql);
        ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
        if (!ok)
            fprintf(stderr, "  pg: %s", PQresultErrorMessage(r));
        PQclear(r);
    } else {
        fprintf(stderr, "  pg: %s", PQerrorMessage(c));
    }
    PQfinish(c);
    return ok ? 0 : -1;
}

static int raw_sql(const char *sql)
{
    if (pg_conninfo)
        return pg_raw(sql);
    char path[4200];
    snprintf(path, sizeof(path), "%s/directory.sqlite", cur_dir);
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return -1;
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    sqlite3_close(db);
    return rc == SQLITE_OK ? 0 : -1;
}

/* One integer from the test database, behind the backend's back; -1 on
 * any failure. */
static long long raw_int(const char *sql)
{
    long long v = -1;
    if (pg_conninfo) {
        PGconn *c = PQconnectdb(pg_conninfo);
        if (PQstatus(c) == CONNECTION_OK) {
            PGresult *r = PQexec(c, sql);
            if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
                v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            PQclear(r);
        }
        PQfinish(c);
        return v;
    }
    char path[4200];
    snprintf(path, sizeof(path), "%s/directory.sqlite", cur_dir);
    sqlite3 *db;
    if (sqlite3_open(path, &db) == SQLITE_OK) {
        sqlite3_stmt *st;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
            if (sqlite3_step(st) == SQLITE_ROW)
                v = sqlite3_column_int64(st, 0);
            sqlite3_finalize(st);
        }
    }
    sqlite3_close(db);
    return v;
}

/* The spec of an empty directory of the backend under test. */
static const char *fresh_spec(void)
{
    static char spec[4200];
    if (pg_conninfo) {
        if (pg_raw("SET client_min_messages = warning; DROP TABLE IF EXISTS accounts, aliases, domains, stores, version, "
                   "schema_version CASCADE") < 0)
            return NULL;
        snprintf(spec, sizeof(spec), "pg:%s", pg_conninfo);
    } else {
        snprintf(cur_dir, sizeof(cur_dir), "%s", t_tmpdir());
        snprintf(spec, sizeof(spec), "sqlite:%s/directory.sqlite", cur_dir);
    }
    return spec;
}

static dir *open_fresh(void)
{
    const char *spec = fresh_spec();
    dir *d = NULL;
    hv_err err = {0};
    if (!spec)
        return NULL;
    if (dir_open(spec, &d, &err) < 0) {
        fprintf(stderr, "  dir_open: %s\n", err.msg);
        return NULL;
    }
    return d;
}

static uint64_t version_of(dir *d)
{
    uint64_t v = 0;
    hv_err err;
    if (dir_version(d, &v, &err) < 0)
        return UINT64_MAX;
    return v;
}

/* --- names --- */

static int addr_ok(const char *in, const char *want)
{
    char out[DIR_ADDRESS_MAX + 1];
    hv_err err = {0};
    if (dir_address_normalize(in, out, &err) < 0) {
        fprintf(stderr, "  unexpected rejection of '%s': %s\n", in, err.msg);
        return 0;
    }
    if (strcmp(out, want) != 0) {
        fprintf(stderr, "  '%s' normalised to '%s', want '%s'\n", in, out, want);
        return 0;
    }
    return 1;
}

static int addr_bad(const char *in)
{
    char out[DIR_ADDRESS_MAX + 1];
    hv_err err = {0};
    int rc = dir_address_normalize(in, out, &err);
    if (rc != -EINVAL) {
        fprintf(stderr, "  '%s' accepted (rc %d)\n", in, rc);
        return 0;
    }
    /* The reason goes to an operator's terminal or a log line. */
    if (!err.msg[0] || strchr(err.msg, '\n') || strlen(err.msg) > 300) {
        fprintf(stderr, "  bad reason for '%s': '%s'\n", in, err.msg);
        return 0;
    }
    return 1;
}

static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    memset(s, ch, n);
    s[n] = 0;
    return s;
}

TEST(test_address_valid)
{
    CHECK(addr_ok("alice@example.com", "alice@example.com"));
    CHECK(addr_ok("Alice.Smith+Tag@Example.COM", "alice.smith+tag@example.com"));
    CHECK(addr_ok("a_b-c@x-y.z0", "a_b-c@x-y.z0"));
    CHECK(addr_ok("a@localhost", "a@localhost"));
    CHECK(addr_ok("1@2.3", "1@2.3"));
}

TEST(test_address_traversal)
{
    CHECK(addr_bad("../x@y"));
    CHECK(addr_bad("..@y"));
    CHECK(addr_bad(".@y"));
    CHECK(addr_bad("a/b@c"));
    CHECK(addr_bad("a\\b@c"));
    CHECK(addr_bad("a@.."));
    CHECK(addr_bad("a@."));
    CHECK(addr_bad("a@../x"));
    CHECK(addr_bad("a@b/c"));
    CHECK(addr_bad("a@b/../c"));
    CHECK(addr_bad("x@y/.."));
    CHECK(addr_bad("a@b\\c"));
    CHECK(addr_bad("%2e%2e@y"));
    CHECK(addr_bad("~root@y"));
}

TEST(test_address_malformed)
{
    const char *bad[] = {
        "", "a", "@b", "a@", "a@b@c", "a b@c", "a@b c", "a\n@b", "a@b\n", "a\r@b", "\"a\"@b",
        "a..b@c", ".a@b", "a.@b", "-a@b", "a@.b", "a@b.", "a@b..c", "a@-b.c", "a@b-.c",
        "a@b_c.d", "a@[127.0.0.1]", "a:b@c", "a;b@c", "a*@b", "a%b@c", "a!b@c",
        "\xc3\xa9t\xc3\xa9@example.com", "a@\xc3\xa9.com", "a\t@b", "a@b\x7f",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CHECK(addr_bad(bad[i]));
    char out[DIR_ADDRESS_MAX + 1];
    CHECK(dir_address_normalize(NULL, out, NULL) == -EINVAL);
}

TEST(test_address_lengths)
{
    char addr[2048];
    char *l64 = repeat('a', 64), *l65 = repeat('a', 65), *lab63 = repeat('b', 63),
         *lab64 = repeat('b', 64), *huge = repeat('x', 100000);
    snprintf(addr, sizeof(addr), "%s@example.com", l64);
    int ok64 = addr_ok(addr, addr);
    snprintf(addr, sizeof(addr), "%s@example.com", l65);
    int bad65 = addr_bad(addr);
    snprintf(addr, sizeof(addr), "a@%s.com", lab63);
    int oklab = addr_ok(addr, addr);
    snprintf(addr, sizeof(addr), "a@%s.com", lab64);
    int badlab = addr_bad(addr);
    /* Domain of 253 (four labels: 63+1+63+1+63+1+61) and total of 254... */
    char dom253[300], dom254[300];
    snprintf(dom253, sizeof(dom253), "%s.%s.%s.%.*s", lab63, lab63, lab63, 61, lab63);
    snprintf(dom254, sizeof(dom254), "%s.%s.%s.%.*s", lab63, lab63, lab63, 62, lab63);
    hv_err err;
    char dout[DIR_DOMAIN_MAX + 1];
    int okdom = strlen(dom253) == 253 && dir_domain_normalize(dom253, dout, &err) == 0;
    int baddom = dir_domain_normalize(dom254, dout, &err) == -EINVAL;
    /* ...but a 253-character domain leaves only "a@" room: 255 is too long. */
    snprintf(addr, sizeof(addr), "a@%s", dom253);
    int badtotal = addr_bad(addr);
    char dom251[300];
    snprintf(dom251, sizeof(dom251), "%s.%s.%s.%.*s", lab63, lab63, lab63, 59, lab63);
    snprintf(addr, sizeof(addr), "a@%s", dom251);
    int oktotal = strlen(addr) == 253 && addr_ok(addr, addr);
    snprintf(addr, sizeof(addr), "ab@%s", dom251);
    int oktotal254 = strlen(addr) == 254 && addr_ok(addr, addr);
    snprintf(addr, sizeof(addr), "abc@%s", dom251);
    int badtotal255 = addr_bad(addr);
    int badhuge = addr_bad(huge);
    huge[50000] = '@';
    int badhuge2 = addr_bad(huge);
    free(l64), free(l65), free(lab63), free(lab64), free(huge);
    CHECK(ok64);
    CHECK(bad65);
    CHECK(oklab);
    CHECK(badlab);
    CHECK(okdom);
    CHECK(baddom);
    CHECK(badtotal);
    CHECK(oktotal);
    CHECK(oktotal254);
    CHECK(badtotal255);
    CHECK(badhuge);
    CHECK(badhuge2);
}

TEST(test_domain_and_store_names)
{
    char out[DIR_DOMAIN_MAX + 1];
    hv_err err;
    CHECK(dir_domain_normalize("Example.ORG", out, &err) == 0 && strcmp(out, "example.org") == 0);
    CHECK(dir_domain_normalize("..", out, &err) == -EINVAL);
    CHECK(dir_domain_normalize("a/b", out, &err) == -EINVAL);
    CHECK(dir_domain_normalize("", out, &err) == -EINVAL);
    CHECK(dir_domain_normalize("a@b", out, &err) == -EINVAL);
    char st[DIR_STORE_NAME_MAX + 1];
    CHECK(dir_store_name_normalize("Store-1.a_b", st, &err) == 0 && strcmp(st, "store-1.a_b") == 0);
    CHECK(dir_store_name_normalize("..", st, &err) == -EINVAL);
    CHECK(dir_store_name_normalize("a/b", st, &err) == -EINVAL);
    CHECK(dir_store_name_normalize("-x", st, &err) == -EINVAL);
    CHECK(dir_store_name_normalize("", st, &err) == -EINVAL);
}

TEST(test_hostport_split)
{
    char host[DIR_STORE_ADDRESS_MAX + 1];
    int port = 0;
    hv_err err;
    CHECK(dir_hostport_split("127.0.0.1:24", host, sizeof(host), &port, &err) == 0);
    CHECK(strcmp(host, "127.0.0.1") == 0 && port == 24);
    CHECK(dir_hostport_split("mx.example:65535", host, sizeof(host), &port, &err) == 0);
    CHECK(strcmp(host, "mx.example") == 0 && port == 65535);
    CHECK(dir_hostport_split("[::1]:2424", host, sizeof(host), &port, &err) == 0);
    CHECK(strcmp(host, "::1") == 0 && port == 2424);
    const char *bad[] = {NULL, "", "host", "host:", ":1", "host:0", "host:65536", "host:-1",
                         "host:+1", "host:1 ", "host:123456", "::1:24", "[::1]", "[::1]x24",
                         "[]:24", "h st:1", "a[b:1", "a/b:1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECKM(dir_hostport_split(bad[i], host, sizeof(host), &port, &err) == -EINVAL, "%s",
               bad[i] ? bad[i] : "(null)");
        CHECK(strstr(err.msg, "host:port") != NULL && strchr(err.msg, '\n') == NULL);
    }
    char small[4];
    CHECK(dir_hostport_split("longhost:1", small, sizeof(small), &port, &err) == -EINVAL);
}

TEST(test_state_names)
{
    enum dir_state s;
    hv_err err;
    const char *names[] = {"active", "held", "moving", "restoring"};
    for (int i = 0; i < 4; i++) {
        CHECK(dir_state_parse(names[i], &s, &err) == 0);
        CHECK(strcmp(dir_state_name(s), names[i]) == 0);
    }
    CHECK(dir_state_parse("Active", &s, &err) == -EINVAL);
    CHECK(dir_state_parse("frozen", &s, &err) == -EINVAL);
    CHECK(strstr(err.msg, "frozen") != NULL);
    CHECK(dir_state_parse(NULL, &s, &err) == -EINVAL);
}

/* --- opening --- */

TEST(test_open_specs)
{
    dir *d = NULL;
    hv_err err;
    CHECK(dir_open("", &d, &err) == -EINVAL);
    CHECK(dir_open("mysql:x", &d, &err) == -EINVAL);
    CHECK(strstr(err.msg, "unknown backend") != NULL);
    CHECK(dir_open("sqlite:", &d, &err) == -EINVAL);
    CHECK(dir_open("pg:", &d, &err) == -EINVAL);
    CHECK(dir_open("directory.sqlite", &d, &err) == -EINVAL);
    char spec[4200];
    snprintf(spec, sizeof(spec), "sqlite:%s/no/such/folder/d.sqlite", t_tmpdir());
    CHECK(dir_open(spec, &d, &err) == -ENOENT);
    CHECK(d == NULL);
}

TEST(test_open_creates_schema_and_reopens)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    int rc = dir_account_add(d, "a@example.com", NULL, "local", 0, &err);
    dir_close(d);
    CHECKM(rc == 0, "%s", err.msg);
    char spec[4300];
    if (pg_conninfo) {
        snprintf(spec, sizeof(spec), "pg:%s", pg_conninfo);
    } else {
        /* The file holds password hashes: only its owner may read it. */
        char path[4200];
        snprintf(path, sizeof(path), "%s/directory.sqlite", cur_dir);
        struct stat sb;
        CHECK(stat(path, &sb) == 0);
        CHECK((sb.st_mode & 0777) == 0600);
        snprintf(spec, sizeof(spec), "sqlite:%s", path);
    }
    CHECKM(dir_open(spec, &d, &err) == 0, "%s", err.msg);
    dir_account a;
    rc = dir_account_get(d, "a@example.com", &a, &err);
    uint64_t v = version_of(d);
    dir_close(d);
    CHECKM(rc == 0, "%s", err.msg);
    CHECK(v == 1);
}

TEST(test_open_refuses_newer_schema)
{
    dir *d = open_fresh();
    CHECK(d);
    dir_close(d);
    CHECK(raw_sql("UPDATE schema_version SET version = 99") == 0);
    char spec[4300];
    if (pg_conninfo)
        snprintf(spec, sizeof(spec), "pg:%s", pg_conninfo);
    else
        snprintf(spec, sizeof(spec), "sqlite:%s/directory.sqlite", cur_dir);
    hv_err err;
    d = NULL;
    CHECK(dir_open(spec, &d, &err) == -EPROTO);
    CHECK(d == NULL);
    CHECK(strstr(err.msg, "99") != NULL);
}

/* The schema Haven wrote before stores had LMTP and repl addresses
 * (version 1), word for word; %s is the collation clause PostgreSQL's
 * backend put on text columns. */
static const char v1_schema_fmt[] =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "CREATE TABLE version (id INTEGER PRIMARY KEY CHECK (id = 1), counter BIGINT NOT NULL);"
    "INSERT INTO version (id, counter) VALUES (1, 0);"
    "CREATE TABLE domains ("
    "  name TEXT%1$s PRIMARY KEY,"
    "  created BIGINT NOT NULL);"
    "CREATE TABLE accounts ("
    "  address TEXT%1$s PRIMARY KEY,"
    "  domain TEXT%1$s NOT NULL REFERENCES domains (name),"
    "  password_hash TEXT%1$s,"
    "  state TEXT NOT NULL DEFAULT 'active'"
    "    CHECK (state IN ('active', 'held', 'moving', 'restoring')),"
    "  store TEXT%1$s NOT NULL,"
    "  slot BIGINT NOT NULL DEFAULT 0,"
    "  quota_bytes BIGINT NOT NULL DEFAULT 0,"
    "  last_login_attempt BIGINT NOT NULL DEFAULT 0,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX accounts_domain ON accounts (domain, address);"
    "CREATE INDEX accounts_store ON accounts (store);"
    "CREATE TABLE aliases ("
    "  address TEXT%1$s PRIMARY KEY,"
    "  domain TEXT%1$s NOT NULL REFERENCES domains (name),"
    "  target TEXT%1$s NOT NULL,"
    "  created BIGINT NOT NULL);"
    "CREATE INDEX aliases_domain ON aliases (domain);"
    "CREATE TABLE stores ("
    "  name TEXT%1$s PRIMARY KEY,"
    "  address TEXT%1$s NOT NULL,"
    "  role TEXT NOT NULL CHECK (role IN ('primary', 'replica')),"
    "  epoch BIGINT NOT NULL DEFAULT 0);"
    "INSERT INTO schema_version (version) VALUES (1);"
    /* What an old node had written into it. */
    "INSERT INTO domains (name, created) VALUES ('x.org', 1700000000);"
    "INSERT INTO accounts (address, domain, password_hash, state, store, slot, quota_bytes, "
    "  last_login_attempt, created) VALUES "
    "  ('a@x.org', 'x.org', '$y$old', 'held', 'east', 3, 4096, 1700000100, 1700000000);"
    "INSERT INTO aliases (address, domain, target, created) VALUES "
    "  ('al@x.org', 'x.org', 'a@x.org', 1700000000);"
    "INSERT INTO stores (name, address, role, epoch) VALUES ('east', '10.0.0.1:143', "
    "  'primary', 4);"
    "UPDATE version SET counter = 17 WHERE id = 1;";

/* A directory written by the version 1 code is upgraded in place when
 * opened: every row kept as it was, the new columns unset, the version
 * counter untouched; it then works like a new one, and opens again. */
TEST(test_open_upgrades_v1_schema)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    char sql[8192];
    snprintf(sql, sizeof(sql), v1_schema_fmt, pg_conninfo ? " COLLATE \"C\"" : "");
    CHECK(raw_sql(sql) == 0);
    dir *d = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d, &err) == 0, "%s", err.msg);
    uint64_t v = version_of(d);
    dir_account a;
    int acct = dir_account_get(d, "a@x.org", &a, &err) == 0 &&
               strcmp(a.password_hash, "$y$old") == 0 && a.state == DIR_STATE_HELD &&
               strcmp(a.store, "east") == 0 && a.slot == 3 && a.quota_bytes == 4096 &&
               a.last_login_attempt == 1700000100 && a.created == 1700000000;
    char out[DIR_ADDRESS_MAX + 1];
    int alias = dir_alias_resolve(d, "al@x.org", out, &err) == 0 && strcmp(out, "a@x.org") == 0;
    dir_store s;
    int store = dir_store_get(d, "east", &s, &err) == 0 && strcmp(s.address, "10.0.0.1:143") == 0 &&
                s.role == DIR_ROLE_PRIMARY && s.epoch == 4 && s.lmtp_address[0] == 0 &&
                s.repl_address[0] == 0;
    int set = dir_store_set_lmtp_address(d, "east", "10.0.0.1:24", &err) == 0 &&
              dir_store_set_repl_address(d, "east", "10.0.0.1:7000", &err) == 0 &&
              dir_store_add(d, "west", "10.0.0.2:143", DIR_ROLE_REPLICA, &err) == 0;
    int v_after = version_of(d) == 20;
    dir_close(d);
    /* Opened again (now version 2), nothing changes. */
    d = NULL;
    int reopen = dir_open(spec, &d, &err) == 0;
    int kept = reopen && dir_store_get(d, "east", &s, &err) == 0 &&
               strcmp(s.lmtp_address, "10.0.0.1:24") == 0 &&
               strcmp(s.repl_address, "10.0.0.1:7000") == 0 && s.epoch == 4 &&
               dir_account_get(d, "a@x.org", &a, &err) == 0 && strcmp(a.store, "east") == 0;
    int v_reopen = reopen && version_of(d) == 20;
    if (reopen)
        dir_close(d);
    /* The database now says version 2, so an older Haven refuses it
     * rather than work on without knowing what the new columns mean. */
    long long sv = raw_int("SELECT max(version) FROM schema_version");
    CHECK(v == 17);
    CHECKM(acct, "%s", err.msg);
    CHECKM(alias, "%s", err.msg);
    CHECKM(store, "%s", err.msg);
    CHECKM(set, "%s", err.msg);
    CHECK(v_after);
    CHECKM(reopen, "%s", err.msg);
    CHECKM(kept, "%s", err.msg);
    CHECK(v_reopen);
    CHECKM(sv == 2, "schema_version %lld", sv);
}

/* A version 1 file with one of the new columns already there (an upgrade
 * that got half-way by other means) is finished, not refused. */
TEST(test_open_upgrade_half_done)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    char sql[8192];
    snprintf(sql, sizeof(sql), v1_schema_fmt, pg_conninfo ? " COLLATE \"C\"" : "");
    CHECK(raw_sql(sql) == 0);
    CHECK(raw_sql("ALTER TABLE stores ADD COLUMN lmtp_address TEXT NOT NULL DEFAULT ''") == 0);
    CHECK(raw_sql("UPDATE stores SET lmtp_address = '10.0.0.1:2424'") == 0);
    dir *d = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d, &err) == 0, "%s", err.msg);
    dir_store s;
    int got = dir_store_get(d, "east", &s, &err) == 0 &&
              strcmp(s.lmtp_address, "10.0.0.1:2424") == 0 && s.repl_address[0] == 0;
    dir_close(d);
    CHECKM(got, "%s", err.msg);
}

TEST(test_open_conf_relative_path)
{
    const char *tmp = t_tmpdir();
    char cpath[4200];
    snprintf(cpath, sizeof(cpath), "%s/haven.conf", tmp);
    FILE *f = fopen(cpath, "w");
    CHECK(f);
    fputs("directory = sqlite:dir.sqlite\n", f);
    fclose(f);
    conf *c = NULL;
    hv_err err;
    CHECKM(conf_load(cpath, &c, &err) == 0, "%s", err.msg);
    dir *d = NULL;
    int rc = dir_open_conf(c, &d, &err);
    conf_free(c);
    CHECKM(rc == 0, "%s", err.msg);
    dir_close(d);
    char dpath[4200];
    snprintf(dpath, sizeof(dpath), "%s/dir.sqlite", tmp);
    struct stat sb;
    CHECK(stat(dpath, &sb) == 0);
}

/* --- domains --- */

static int collect(void *ctx, const char *s)
{
    buf *b = ctx;
    buf_printf(b, "%s;", s);
    return 0;
}

TEST(test_domains)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    buf b;
    buf_init(&b);
    int ok = dir_domain_add(d, "Example.com", &err) == 0 &&
             dir_domain_add(d, "b.org", &err) == 0 &&
             dir_domain_add(d, "example.COM", &err) == -EEXIST &&
             strstr(err.msg, "already exists") != NULL &&
             dir_domain_add(d, "bad/domain", &err) == -EINVAL &&
             dir_domain_exists(d, "EXAMPLE.com", &err) == 0 &&
             dir_domain_exists(d, "nope.com", &err) == -ENOENT &&
             dir_domain_list(d, collect, &b, &err) == 0;
    int listed = ok && strcmp((char *)b.data, "b.org;example.com;") == 0;
    int del = dir_domain_del(d, "b.org", &err) == 0 && dir_domain_del(d, "b.org", &err) == -ENOENT;
    buf_reset(&b);
    dir_domain_list(d, collect, &b, &err);
    int after = strcmp((char *)b.data, "example.com;") == 0;
    buf_free(&b);
    dir_close(d);
    CHECKM(ok, "%s", err.msg);
    CHECK(listed);
    CHECK(del);
    CHECK(after);
}

TEST(test_domain_del_refused_while_in_use)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    int add = dir_account_add(d, "a@x.org", NULL, "local", 0, &err) == 0 &&
              dir_account_add(d, "b@x.org", NULL, "local", 0, &err) == 0;
    uint64_t v = version_of(d);
    int refused = dir_domain_del(d, "x.org", &err) == -ENOTEMPTY;
    int reason = strstr(err.msg, "2 accounts") != NULL;
    int unchanged = version_of(d) == v && dir_domain_exists(d, "x.org", NULL) == 0;
    dir_account_del(d, "a@x.org", &err);
    dir_account_del(d, "b@x.org", &err);
    int alias = dir_alias_add(d, "c@x.org", "a@y.org", &err) == 0;
    int refused2 = dir_domain_del(d, "x.org", &err) == -ENOTEMPTY && strstr(err.msg, "alias");
    dir_alias_del(d, "c@x.org", &err);
    int gone = dir_domain_del(d, "x.org", &err) == 0;
    dir_close(d);
    CHECK(add);
    CHECK(refused);
    CHECKM(reason, "%s", err.msg);
    CHECK(unchanged);
    CHECK(alias);
    CHECK(refused2);
    CHECK(gone);
}

/* --- accounts --- */

TEST(test_account_add_get)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    int rc = dir_account_add(d, "Alice@Example.COM", "$y$j9T$abc$def", "Local", 1000, &err);
    dir_account a;
    int got = rc == 0 && dir_account_get(d, "alice@EXAMPLE.com", &a, &err) == 0;
    int domain_auto = dir_domain_exists(d, "example.com", &err) == 0;
    int dup = dir_account_add(d, "alice@example.com", NULL, "local", 0, &err) == -EEXIST &&
              strstr(err.msg, "already exists") != NULL;
    int dup_upper = dir_account_add(d, "ALICE@example.com", NULL, "local", 0, &err) == -EEXIST;
    int unknown = dir_account_get(d, "bob@example.com", &a, &err) == -ENOENT &&
                  strstr(err.msg, "bob@example.com") != NULL;
    int malformed = dir_account_get(d, "../x@y", &a, &err) == -EINVAL &&
                    dir_account_add(d, "a/b@c", NULL, "local", 0, &err) == -EINVAL &&
                    dir_account_add(d, "a@b", NULL, "../x", 0, &err) == -EINVAL;
    dir_account a2;
    int fields = got && dir_account_get(d, "alice@example.com", &a2, &err) == 0;
    dir_close(d);
    CHECKM(rc == 0, "%s", err.msg);
    CHECK(got);
    CHECK(strcmp(a.address, "alice@example.com") == 0);
    CHECK(strcmp(a.password_hash, "$y$j9T$abc$def") == 0);
    CHECK(strcmp(a.store, "local") == 0);
    CHECK(a.state == DIR_STATE_ACTIVE);
    CHECK(a.quota_bytes == 1000);
    CHECK(a.slot == 0);
    CHECK(a.last_login_attempt == 0);
    CHECK(a.created > 0);
    CHECK(domain_auto);
    CHECK(dup);
    CHECK(dup_upper);
    CHECK(unknown);
    CHECK(malformed);
    CHECK(fields);
}

TEST(test_account_changes)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    dir_account a;
    CHECKM(dir_account_add(d, "u@x.org", NULL, "local", 0, &err) == 0, "%s", err.msg);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && a.password_hash[0] == 0);

    enum dir_state states[] = {DIR_STATE_HELD, DIR_STATE_MOVING, DIR_STATE_RESTORING,
                               DIR_STATE_ACTIVE};
    for (int i = 0; i < 4; i++) {
        CHECKM(dir_account_set_state(d, "U@X.org", states[i], &err) == 0, "%s", err.msg);
        CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && a.state == states[i]);
    }
    CHECK(dir_account_set_state(d, "nobody@x.org", DIR_STATE_HELD, &err) == -ENOENT);
    CHECK(dir_account_set_state(d, "u@x.org", (enum dir_state)7, &err) == -EINVAL);

    CHECK(dir_account_set_password(d, "u@x.org", "$y$h", &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && strcmp(a.password_hash, "$y$h") == 0);
    CHECK(dir_account_set_password(d, "u@x.org", "bad hash", &err) == -EINVAL);
    CHECK(dir_account_set_password(d, "u@x.org", NULL, &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && a.password_hash[0] == 0);
    CHECK(dir_account_set_password(d, "nobody@x.org", "$y$h", &err) == -ENOENT);

    CHECK(dir_account_set_quota(d, "u@x.org", 5u << 20, &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && a.quota_bytes == 5u << 20);
    CHECK(dir_account_set_quota(d, "u@x.org", UINT64_MAX, &err) == -EINVAL);
    CHECK(dir_account_set_quota(d, "nobody@x.org", 1, &err) == -ENOENT);

    CHECK(dir_account_set_store(d, "u@x.org", "store2", 3, &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && strcmp(a.store, "store2") == 0 &&
          a.slot == 3);

    CHECK(dir_account_login_attempt(d, "u@x.org", 1700000000, &err) == 0);
    CHECK(dir_account_login_attempt(d, "u@x.org", 1600000000, &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == 0 && a.last_login_attempt == 1700000000);
    CHECK(dir_account_login_attempt(d, "nobody@x.org", 1, &err) == -ENOENT);

    CHECK(dir_account_del(d, "U@x.org", &err) == 0);
    CHECK(dir_account_get(d, "u@x.org", &a, &err) == -ENOENT);
    CHECK(dir_account_del(d, "u@x.org", &err) == -ENOENT);
    CHECK(dir_domain_exists(d, "x.org", &err) == 0); /* domains stay until deleted */
    dir_close(d);
}

/* The end of a move: store, slot and state change together, in one
 * transaction that another handle sees whole. */
TEST(test_account_move_commit)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    dir *d = NULL, *d2 = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d, &err) == 0, "%s", err.msg);
    if (dir_open(spec, &d2, &err) < 0) {
        dir_close(d);
        CHECKM(0, "%s", err.msg);
    }
    int add = dir_account_add(d, "m@x.org", NULL, "s1", 0, &err) == 0 &&
              dir_account_set_state(d, "m@x.org", DIR_STATE_MOVING, &err) == 0;
    uint64_t v = version_of(d);
    int moved = dir_account_move_commit(d, "M@X.org", "S2", 7, DIR_STATE_ACTIVE, &err) == 0;
    dir_account a;
    int seen = dir_account_get(d2, "m@x.org", &a, &err) == 0 && strcmp(a.store, "s2") == 0 &&
               a.slot == 7 && a.state == DIR_STATE_ACTIVE;
    int one_bump = version_of(d2) == v + 1;
    /* Into another state too (a move that leaves the account held). */
    int held = dir_account_move_commit(d, "m@x.org", "s1", 0, DIR_STATE_HELD, &err) == 0 &&
               dir_account_get(d2, "m@x.org", &a, &err) == 0 && strcmp(a.store, "s1") == 0 &&
               a.slot == 0 && a.state == DIR_STATE_HELD;
    int unknown = dir_account_move_commit(d, "nobody@x.org", "s2", 1, DIR_STATE_ACTIVE, &err) ==
                      -ENOENT &&
                  strstr(err.msg, "nobody@x.org") != NULL;
    int bad = dir_account_move_commit(d, "m@x.org", "s 2", 1, DIR_STATE_ACTIVE, &err) == -EINVAL &&
              dir_account_move_commit(d, "m@x.org", "s2", 1, (enum dir_state)9, &err) == -EINVAL &&
              dir_account_move_commit(d, "../m@x.org", "s2", 1, DIR_STATE_ACTIVE, &err) ==
                  -EINVAL;
    int unchanged = dir_account_get(d, "m@x.org", &a, &err) == 0 &&
                    strcmp(a.store, "s1") == 0 && a.state == DIR_STATE_HELD;
    dir_close(d);
    dir_close(d2);
    CHECKM(add, "%s", err.msg);
    CHECKM(moved, "%s", err.msg);
    CHECK(seen);
    CHECK(one_bump);
    CHECK(held);
    CHECK(unknown);
    CHECK(bad);
    CHECK(unchanged);
}

typedef struct list_ctx {
    buf b;
    int stop_after;
    int seen;
} list_ctx;

static int list_cb(void *ctx, const dir_account *a)
{
    list_ctx *l = ctx;
    buf_printf(&l->b, "%s:%s;", a->address, dir_state_name(a->state));
    return ++l->seen == l->stop_after ? 42 : 0;
}

TEST(test_account_list)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    const char *addrs[] = {"c@b.org", "a@a.org", "b@b.org", "a@b.org"};
    for (int i = 0; i < 4; i++)
        CHECK(dir_account_add(d, addrs[i], NULL, "local", 0, &err) == 0);
    CHECK(dir_account_set_state(d, "b@b.org", DIR_STATE_HELD, &err) == 0);
    list_ctx l = {.stop_after = -1};
    buf_init(&l.b);
    int all = dir_account_list(d, NULL, list_cb, &l, &err) == 0 &&
              strcmp((char *)l.b.data, "a@a.org:active;a@b.org:active;b@b.org:held;c@b.org:active;") == 0;
    buf_reset(&l.b);
    int one = dir_account_list(d, "B.ORG", list_cb, &l, &err) == 0 &&
              strcmp((char *)l.b.data, "a@b.org:active;b@b.org:held;c@b.org:active;") == 0;
    int unknown = dir_account_list(d, "c.org", list_cb, &l, &err) == -ENOENT;
    int bad = dir_account_list(d, "../x", list_cb, &l, &err) == -EINVAL;
    l.seen = 0;
    l.stop_after = 2;
    int stopped = dir_account_list(d, NULL, list_cb, &l, &err) == 42 && l.seen == 2;
    CHECK(dir_domain_add(d, "empty.org", &err) == 0);
    l.seen = 0;
    int empty = dir_account_list(d, "empty.org", list_cb, &l, &err) == 0 && l.seen == 0;
    buf_free(&l.b);
    dir_close(d);
    CHECK(all);
    CHECK(one);
    CHECK(unknown);
    CHECK(bad);
    CHECK(stopped);
    CHECK(empty);
}

TEST(test_version_bumps_on_each_change)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    uint64_t v = version_of(d);
    CHECK(v == 0);
#define BUMPS(call)                                                                        \
    do {                                                                                   \
        CHECKM((call) >= 0, "%s: %s", #call, err.msg);                                     \
        uint64_t nv_ = version_of(d);                                                      \
        CHECKM(nv_ == v + 1, "%s: version %llu -> %llu", #call, (unsigned long long)v,     \
               (unsigned long long)nv_);                                                   \
        v = nv_;                                                                           \
    } while (0)
#define KEEPS(call)                                                                        \
    do {                                                                                   \
        (void)(call);                                                                      \
        CHECKM(version_of(d) == v, "%s changed the version", #call);                       \
    } while (0)
    BUMPS(dir_domain_add(d, "x.org", &err));
    BUMPS(dir_account_add(d, "a@x.org", NULL, "local", 0, &err));
    BUMPS(dir_account_add(d, "b@new.org", NULL, "local", 0, &err)); /* domain too: one bump */
    BUMPS(dir_account_set_password(d, "a@x.org", "$y$x", &err));
    BUMPS(dir_account_set_state(d, "a@x.org", DIR_STATE_HELD, &err));
    BUMPS(dir_account_set_quota(d, "a@x.org", 10, &err));
    BUMPS(dir_account_set_store(d, "a@x.org", "s2", 1, &err));
    BUMPS(dir_alias_add(d, "al@x.org", "a@x.org", &err));
    BUMPS(dir_alias_del(d, "al@x.org", &err));
    BUMPS(dir_store_add(d, "s2", "10.0.0.2:24", DIR_ROLE_PRIMARY, &err));
    BUMPS(dir_store_set_epoch(d, "s2", 1, &err));
    BUMPS(dir_store_set_role(d, "s2", DIR_ROLE_REPLICA, &err));
    BUMPS(dir_store_set_address(d, "s2", "10.0.0.3:143", &err));
    BUMPS(dir_store_set_lmtp_address(d, "s2", "10.0.0.3:24", &err));
    BUMPS(dir_store_set_repl_address(d, "s2", "10.0.0.3:7000", &err));
    BUMPS(dir_store_set_lmtp_address(d, "s2", "", &err));
    BUMPS(dir_account_move_commit(d, "a@x.org", "local", 2, DIR_STATE_ACTIVE, &err));
    BUMPS(dir_account_del(d, "b@new.org", &err));
    BUMPS(dir_domain_del(d, "new.org", &err));
    /* Failed changes and reads leave it alone; so do login attempts. */
    KEEPS(dir_domain_add(d, "x.org", &err));
    KEEPS(dir_account_add(d, "a@x.org", NULL, "local", 0, &err));
    KEEPS(dir_account_add(d, "../a@x.org", NULL, "local", 0, &err));
    KEEPS(dir_account_set_state(d, "zz@x.org", DIR_STATE_HELD, &err));
    KEEPS(dir_domain_del(d, "x.org", &err));
    KEEPS(dir_store_set_epoch(d, "s2", 1, &err));
    KEEPS(dir_store_set_lmtp_address(d, "s2", "no-port", &err));
    KEEPS(dir_store_set_lmtp_address(d, "zz", "10.0.0.3:24", &err));
    KEEPS(dir_store_set_repl_address(d, "zz", "10.0.0.3:7000", &err));
    KEEPS(dir_account_move_commit(d, "zz@x.org", "s2", 1, DIR_STATE_ACTIVE, &err));
    KEEPS(dir_account_move_commit(d, "a@x.org", "../s2", 1, DIR_STATE_ACTIVE, &err));
    KEEPS(dir_account_login_attempt(d, "a@x.org", 12345, &err));
    dir_account a;
    KEEPS(dir_account_get(d, "a@x.org", &a, &err));
#undef BUMPS
#undef KEEPS
    dir_close(d);
}

TEST(test_two_handles_see_each_other)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    dir *d1 = NULL, *d2 = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d1, &err) == 0, "%s", err.msg);
    if (dir_open(spec, &d2, &err) < 0) {
        dir_close(d1);
        CHECKM(0, "%s", err.msg);
    }
    int add = dir_account_add(d1, "a@x.org", NULL, "local", 0, &err) == 0;
    dir_account a;
    int seen = dir_account_get(d2, "a@x.org", &a, &err) == 0;
    int set = dir_account_set_state(d2, "a@x.org", DIR_STATE_MOVING, &err) == 0;
    int seen1 = dir_account_get(d1, "a@x.org", &a, &err) == 0 && a.state == DIR_STATE_MOVING;
    uint64_t v1 = version_of(d1), v2 = version_of(d2);
    dir_close(d1);
    dir_close(d2);
    CHECK(add);
    CHECK(seen);
    CHECK(set);
    CHECK(seen1);
    CHECK(v1 == 2 && v2 == 2);
}

/* --- aliases --- */

TEST(test_aliases)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    char out[DIR_ADDRESS_MAX + 1];
    CHECK(dir_account_add(d, "real@x.org", NULL, "local", 0, &err) == 0);
    CHECKM(dir_alias_add(d, "Info@Y.org", "REAL@x.org", &err) == 0, "%s", err.msg);
    CHECK(dir_domain_exists(d, "y.org", &err) == 0); /* added with the alias */
    CHECK(dir_alias_add(d, "sales@y.org", "info@y.org", &err) == 0);
    CHECK(dir_alias_resolve(d, "SALES@y.org", out, &err) == 0 && strcmp(out, "real@x.org") == 0);
    CHECK(dir_alias_resolve(d, "info@y.org", out, &err) == 0 && strcmp(out, "real@x.org") == 0);
    CHECK(dir_alias_resolve(d, "real@x.org", out, &err) == 0 && strcmp(out, "real@x.org") == 0);
    CHECK(dir_alias_resolve(d, "none@x.org", out, &err) == -ENOENT);
    CHECK(dir_alias_resolve(d, "../x@y", out, &err) == -EINVAL);

    /* An address is an account or an alias, never both. */
    CHECK(dir_alias_add(d, "real@x.org", "other@x.org", &err) == -EEXIST);
    CHECK(dir_account_add(d, "info@y.org", NULL, "local", 0, &err) == -EEXIST);
    CHECK(strstr(err.msg, "alias") != NULL);
    CHECK(dir_alias_add(d, "info@y.org", "other@x.org", &err) == -EEXIST);
    CHECK(dir_alias_add(d, "me@y.org", "ME@y.org", &err) == -ELOOP);
    CHECK(dir_alias_add(d, "x@y.org", "a/b@c", &err) == -EINVAL);

    /* Dangling and looping chains end with a reason, not a hang. */
    CHECK(dir_alias_add(d, "dangle@y.org", "gone@x.org", &err) == 0);
    CHECK(dir_alias_resolve(d, "dangle@y.org", out, &err) == -ENOENT);
    CHECK(strstr(err.msg, "gone@x.org") != NULL);
    CHECK(dir_alias_add(d, "l1@y.org", "l2@y.org", &err) == 0);
    CHECK(dir_alias_add(d, "l2@y.org", "l1@y.org", &err) == 0);
    CHECK(dir_alias_resolve(d, "l1@y.org", out, &err) == -ELOOP);

    CHECK(dir_alias_del(d, "sales@y.org", &err) == 0);
    CHECK(dir_alias_del(d, "sales@y.org", &err) == -ENOENT);
    CHECK(dir_alias_resolve(d, "sales@y.org", out, &err) == -ENOENT);
    dir_close(d);
}

static int alias_collect(void *ctx, const char *address, const char *target)
{
    buf_printf(ctx, "%s>%s;", address, target);
    return 0;
}

TEST(test_alias_list)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    CHECK(dir_alias_add(d, "b@x.org", "t@x.org", &err) == 0);
    CHECK(dir_alias_add(d, "a@x.org", "t@x.org", &err) == 0);
    buf b;
    buf_init(&b);
    int rc = dir_alias_list(d, alias_collect, &b, &err);
    int ok = rc == 0 && strcmp((char *)b.data, "a@x.org>t@x.org;b@x.org>t@x.org;") == 0;
    buf_free(&b);
    dir_close(d);
    CHECK(ok);
}

/* --- stores --- */

static int store_count(void *ctx, const dir_store *s)
{
    (void)s;
    ++*(int *)ctx;
    return 0;
}

static int store_collect(void *ctx, const dir_store *s)
{
    buf_printf(ctx, "%s|%s|%s|%s;", s->name, s->address, s->lmtp_address, s->repl_address);
    return 0;
}

TEST(test_stores)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    dir_store s;
    CHECKM(dir_store_add(d, "Store1", "10.0.0.1:24", DIR_ROLE_PRIMARY, &err) == 0, "%s", err.msg);
    CHECK(dir_store_add(d, "store1", "10.0.0.9:24", DIR_ROLE_PRIMARY, &err) == -EEXIST);
    CHECK(dir_store_add(d, "store2", "10.0.0.2:24", DIR_ROLE_REPLICA, &err) == 0);
    CHECK(dir_store_add(d, "store3", "has space", DIR_ROLE_REPLICA, &err) == -EINVAL);
    CHECK(dir_store_add(d, "../s", "x:1", DIR_ROLE_REPLICA, &err) == -EINVAL);
    CHECK(dir_store_get(d, "store1", &s, &err) == 0);
    CHECK(strcmp(s.name, "store1") == 0 && strcmp(s.address, "10.0.0.1:24") == 0);
    CHECK(s.role == DIR_ROLE_PRIMARY && s.epoch == 0);
    CHECK(dir_store_get(d, "nope", &s, &err) == -ENOENT);

    CHECK(dir_store_set_epoch(d, "store1", 5, &err) == 0);
    CHECK(dir_store_set_epoch(d, "store1", 5, &err) == -ESTALE);
    CHECK(dir_store_set_epoch(d, "store1", 4, &err) == -ESTALE);
    CHECK(strstr(err.msg, "epoch 5") != NULL);
    CHECK(dir_store_set_epoch(d, "nope", 9, &err) == -ENOENT);
    CHECK(dir_store_set_epoch(d, "store1", UINT64_MAX, &err) == -EINVAL);
    CHECK(dir_store_get(d, "store1", &s, &err) == 0 && s.epoch == 5);

    CHECK(dir_store_set_role(d, "store2", DIR_ROLE_PRIMARY, &err) == 0);
    CHECK(dir_store_get(d, "store2", &s, &err) == 0 && s.role == DIR_ROLE_PRIMARY);
    CHECK(dir_store_set_role(d, "nope", DIR_ROLE_PRIMARY, &err) == -ENOENT);
    CHECK(dir_store_set_address(d, "store2", "10.0.0.9:1143", &err) == 0);
    CHECK(dir_store_get(d, "store2", &s, &err) == 0 && strcmp(s.address, "10.0.0.9:1143") == 0);
    CHECK(dir_store_set_address(d, "nope", "10.0.0.9:1143", &err) == -ENOENT);
    CHECK(dir_store_set_address(d, "store2", "bad\naddress", &err) == -EINVAL);
    int n = 0;
    CHECK(dir_store_list(d, store_count, &n, &err) == 0 && n == 2);
    dir_close(d);
}

/* The LMTP and repl addresses: unset ("") on a new store, set and unset
 * one at a time without touching the others, refused unless host:port. */
TEST(test_store_service_addresses)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    dir_store s;
    CHECKM(dir_store_add(d, "s1", "10.0.0.1:143", DIR_ROLE_PRIMARY, &err) == 0, "%s", err.msg);
    CHECK(dir_store_get(d, "s1", &s, &err) == 0);
    CHECK(s.lmtp_address[0] == 0 && s.repl_address[0] == 0);

    CHECKM(dir_store_set_lmtp_address(d, "S1", "10.0.0.1:24", &err) == 0, "%s", err.msg);
    CHECK(dir_store_get(d, "s1", &s, &err) == 0);
    CHECK(strcmp(s.lmtp_address, "10.0.0.1:24") == 0 && s.repl_address[0] == 0);
    CHECK(strcmp(s.address, "10.0.0.1:143") == 0);
    CHECKM(dir_store_set_repl_address(d, "s1", "[2001:db8::1]:7000", &err) == 0, "%s", err.msg);
    CHECK(dir_store_set_address(d, "s1", "10.0.0.2:143", &err) == 0);
    CHECK(dir_store_get(d, "s1", &s, &err) == 0);
    CHECK(strcmp(s.lmtp_address, "10.0.0.1:24") == 0);
    CHECK(strcmp(s.repl_address, "[2001:db8::1]:7000") == 0);
    CHECK(strcmp(s.address, "10.0.0.2:143") == 0);
    CHECK(s.role == DIR_ROLE_PRIMARY && s.epoch == 0);

    const char *bad[] = {"10.0.0.1", "10.0.0.1:", ":24", "host:0", "host:65536", "host:24x",
                         "2001:db8::1:24", "[2001:db8::1]24", "[::1", "has space:24",
                         "a/b:24", "x\n:24", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (!bad[i][0])
            continue; /* "" unsets: below */
        CHECKM(dir_store_set_lmtp_address(d, "s1", bad[i], &err) == -EINVAL, "%s", bad[i]);
        CHECKM(strchr(err.msg, '\n') == NULL, "%s", err.msg);
        CHECKM(dir_store_set_repl_address(d, "s1", bad[i], &err) == -EINVAL, "%s", bad[i]);
    }
    CHECK(dir_store_set_lmtp_address(d, "nope", "10.0.0.1:24", &err) == -ENOENT);
    CHECK(dir_store_set_repl_address(d, "nope", "10.0.0.1:24", &err) == -ENOENT);
    CHECK(dir_store_set_lmtp_address(d, "../s", "10.0.0.1:24", &err) == -EINVAL);
    CHECK(dir_store_get(d, "s1", &s, &err) == 0 && strcmp(s.lmtp_address, "10.0.0.1:24") == 0);

    /* Unset: "" and NULL. */
    CHECK(dir_store_set_lmtp_address(d, "s1", "", &err) == 0);
    CHECK(dir_store_set_repl_address(d, "s1", NULL, &err) == 0);
    CHECK(dir_store_get(d, "s1", &s, &err) == 0);
    CHECK(s.lmtp_address[0] == 0 && s.repl_address[0] == 0);
    CHECK(strcmp(s.address, "10.0.0.2:143") == 0);

    /* Lists carry them too. */
    CHECK(dir_store_add(d, "s2", "10.0.0.3:143", DIR_ROLE_REPLICA, &err) == 0);
    CHECK(dir_store_set_lmtp_address(d, "s2", "mail-s2.example:2424", &err) == 0);
    CHECK(dir_store_set_repl_address(d, "s2", "mail-s2.example:7001", &err) == 0);
    buf b;
    buf_init(&b);
    int listed = dir_store_list(d, store_collect, &b, &err) == 0;
    int want = listed && strcmp((char *)b.data, "s1|10.0.0.2:143||;"
                                                "s2|10.0.0.3:143|mail-s2.example:2424|"
                                                "mail-s2.example:7001;") == 0;
    if (!want)
        fprintf(stderr, "  listed: %s\n", b.data ? (char *)b.data : "(nothing)");
    buf_free(&b);
    dir_close(d);
    CHECKM(listed, "%s", err.msg);
    CHECK(want);
}

/* --- change notification --- */

/* Waits for the watch fd to become readable; the timeout only bounds a
 * failing test, it is not a measurement. */
static int readable(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 10000) == 1 && (p.revents & POLLIN);
}

/* Drains until the watcher has seen version want, waiting on its fd in
 * between: a NOTIFY reaches a listener shortly after the commit, not at
 * it, and each commit sends its own. 1 when it got there with every drain
 * on the way saying "changed", else 0. */
static int drain_until(dir *d, uint64_t want, uint64_t *v)
{
    hv_err err;
    for (;;) {
        int rc = dir_watch_drain(d, v, &err);
        if (rc != 1)
            return 0;
        if (*v >= want)
            return *v == want;
        int fd = dir_watch_fd(d);
        if (fd < 0 || !readable(fd))
            return 0;
    }
}

/* Works the same on both backends: the first drain reports a change (no
 * cache is trusted before it), then only real changes do. */
TEST(test_watch_drain)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    dir *d1 = NULL, *d2 = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d1, &err) == 0, "%s", err.msg);
    if (dir_open(spec, &d2, &err) < 0) {
        dir_close(d1);
        CHECKM(0, "%s", err.msg);
    }
    uint64_t v = 99;
    int first = dir_watch_drain(d2, &v, &err) == 1 && v == 0;
    int quiet = dir_watch_drain(d2, &v, &err) == 0 && v == 0;
    int fd = dir_watch_fd(d2);
    int add = dir_account_add(d1, "a@x.org", NULL, "local", 0, &err) == 0;
    int woke = fd < 0 || readable(fd);
    int seen = drain_until(d2, 1, &v);
    int quiet2 = dir_watch_drain(d2, &v, &err) == 0 && v == 1;
    /* A failed change and a login attempt change nothing that is served. */
    int dup = dir_account_add(d1, "a@x.org", NULL, "local", 0, &err) == -EEXIST;
    int login = dir_account_login_attempt(d1, "a@x.org", 5, &err) == 0;
    int v3 = dir_account_set_state(d1, "a@x.org", DIR_STATE_HELD, &err) == 0 &&
             dir_account_set_state(d1, "a@x.org", DIR_STATE_ACTIVE, &err) == 0;
    int seen3 = drain_until(d2, 3, &v);
    int quiet3 = dir_watch_drain(d2, &v, &err) == 0;
    dir_close(d1);
    dir_close(d2);
    CHECKM(first, "%s", err.msg);
    CHECK(quiet);
    CHECK(pg_conninfo ? fd >= 0 : fd == -1);
    CHECK(add);
    CHECK(woke);
    CHECKM(seen, "version %llu", (unsigned long long)v);
    CHECK(quiet2);
    CHECK(dup);
    CHECK(login);
    CHECK(v3);
    CHECKM(seen3, "version %llu", (unsigned long long)v);
    CHECK(quiet3);
}

/* PostgreSQL: a second handle learns of a change through its fd alone
 * (NOTIFY), with the new version; a failed change sends nothing. */
TEST(test_pg_notify)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    dir *w = NULL, *d = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &w, &err) == 0, "%s", err.msg);
    if (dir_open(spec, &d, &err) < 0) {
        dir_close(w);
        CHECKM(0, "%s", err.msg);
    }
    int fd = dir_watch_fd(w);
    uint64_t v = 0;
    int primed = dir_watch_drain(w, &v, &err) == 1;
    int add = dir_domain_add(d, "x.org", &err) == 0;
    int woke = fd >= 0 && readable(fd);
    int got = drain_until(w, 1, &v);
    /* A refused change rolls back its bump and its NOTIFY; the next good
     * one is the very next version. */
    int dup = dir_domain_add(d, "x.org", &err) == -EEXIST;
    int del = dir_domain_del(d, "x.org", &err) == 0;
    int woke2 = readable(dir_watch_fd(w));
    int got2 = drain_until(w, 2, &v);
    dir_close(w);
    dir_close(d);
    CHECK(primed);
    CHECK(add);
    CHECK(woke);
    CHECKM(got, "version %llu", (unsigned long long)v);
    CHECK(dup);
    CHECK(del);
    CHECK(woke2);
    CHECKM(got2, "version %llu", (unsigned long long)v);
}

/* PostgreSQL: a connection the server dropped (a restart, a failover) is
 * reconnected by the next call, which succeeds; a watcher is told it may
 * have missed changes. */
TEST(test_pg_reconnect)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    dir *d = NULL;
    hv_err err;
    CHECKM(dir_open(spec, &d, &err) == 0, "%s", err.msg);
    uint64_t v = 0;
    int fd = dir_watch_fd(d);
    int primed = fd >= 0 && dir_watch_drain(d, &v, &err) == 1;
    int add = dir_account_add(d, "a@x.org", NULL, "local", 0, &err) == 0;
    int drained = drain_until(d, 1, &v);
    /* Every other session of this database: the handle's own one. */
    int killed = pg_raw("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()") == 0;
    dir_account a;
    int read = dir_account_get(d, "a@x.org", &a, &err) == 0;
    int missed = dir_watch_drain(d, &v, &err) == 1 && v == 1;
    /* And the renewed LISTEN works. */
    dir *d2 = NULL;
    int open2 = dir_open(spec, &d2, &err) == 0;
    int set = open2 && dir_account_set_state(d2, "a@x.org", DIR_STATE_HELD, &err) == 0;
    fd = dir_watch_fd(d);
    int woke = fd >= 0 && readable(fd);
    int got = drain_until(d, 2, &v);
    /* A write on a dropped connection reconnects too (BEGIN is safe to
     * send again: nothing of the change was sent before it). */
    killed = killed && pg_raw("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND "
                              "pid <> pg_backend_pid()") == 0;
    int write = dir_account_set_state(d, "a@x.org", DIR_STATE_ACTIVE, &err) == 0;
    dir_close(d);
    if (open2)
        dir_close(d2);
    CHECK(primed);
    CHECK(add);
    CHECK(drained);
    CHECK(killed);
    CHECKM(read, "%s", err.msg);
    CHECKM(missed, "%s", err.msg);
    CHECKM(open2, "%s", err.msg);
    CHECK(set);
    CHECK(woke);
    CHECKM(got, "version %llu", (unsigned long long)v);
    CHECKM(write, "%s", err.msg);
}

/* PostgreSQL: nodes that start together on an empty database all open it
 * (the schema is created once, under a lock) and agree on version 0. */
TEST(test_pg_schema_race)
{
    const char *spec = fresh_spec();
    CHECK(spec);
    enum { N = 4 };
    pid_t kids[N];
    int pipes[N][2];
    for (int i = 0; i < N; i++) {
        CHECK(pipe(pipes[i]) == 0);
        kids[i] = fork();
        CHECK(kids[i] >= 0);
        if (kids[i] == 0) {
            /* Wait for the go so the opens overlap as much as they can. */
            char go;
            close(pipes[i][1]);
            if (read(pipes[i][0], &go, 1) != 1)
                _exit(3);
            dir *d = NULL;
            hv_err err;
            if (dir_open(spec, &d, &err) < 0) {
                fprintf(stderr, "  child: %s\n", err.msg);
                _exit(1);
            }
            uint64_t v = 1;
            int ok = dir_version(d, &v, &err) == 0 && v == 0;
            dir_close(d);
            _exit(ok ? 0 : 2);
        }
        close(pipes[i][0]);
    }
    for (int i = 0; i < N; i++) {
        if (write(pipes[i][1], "g", 1) != 1)
            kill(kids[i], SIGKILL);
        close(pipes[i][1]);
    }
    int all_ok = 1;
    for (int i = 0; i < N; i++) {
        int st = 0;
        waitpid(kids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            all_ok = 0;
    }
    CHECK(all_ok);
}

/* PostgreSQL: a server that is not there is a clear error that does not
 * repeat the connection string (it may hold a password). */
TEST(test_pg_open_errors)
{
    dir *d = NULL;
    hv_err err;
    /* Port 1 on loopback: nothing listens there, the refusal is at once. */
    int rc = dir_open("pg:host=127.0.0.1 port=1 dbname=x user=x password=s3cret-pw "
                      "connect_timeout=5",
                      &d, &err);
    CHECK(rc < 0);
    CHECK(d == NULL);
    CHECKM(strstr(err.msg, "s3cret-pw") == NULL, "%s", err.msg);
    CHECKM(strstr(err.msg, "127.0.0.1") != NULL, "%s", err.msg);
    CHECK(strchr(err.msg, '\n') == NULL);
    CHECK(dir_open("pg:this is = not a conninfo", &d, &err) < 0);
    CHECK(d == NULL);
}

/* PostgreSQL: the config's `directory = pg:CONNINFO` is used as it is, not
 * taken for a path relative to the config's folder. */
TEST(test_pg_open_conf)
{
    CHECK(fresh_spec());
    char cpath[4200];
    snprintf(cpath, sizeof(cpath), "%s/haven.conf", t_tmpdir());
    FILE *f = fopen(cpath, "w");
    CHECK(f);
    fprintf(f, "directory = pg:%s\n", pg_conninfo);
    fclose(f);
    conf *c = NULL;
    hv_err err;
    CHECKM(conf_load(cpath, &c, &err) == 0, "%s", err.msg);
    dir *d = NULL;
    int rc = dir_open_conf(c, &d, &err);
    conf_free(c);
    CHECKM(rc == 0, "%s", err.msg);
    int add = dir_domain_add(d, "conf.org", &err) == 0;
    dir_close(d);
    CHECK(add);
}

/* --- passwords --- */

TEST(test_password_hash_verify)
{
    char h[PASSWORD_HASH_MAX];
    hv_err err;
    CHECKM(password_hash("correct horse", h, sizeof(h), &err) == 0, "%s", err.msg);
    CHECK(strncmp(h, "$y$", 3) == 0);
    CHECK(password_verify("correct horse", h) == 0);
    CHECK(password_verify("correct horsE", h) == -EACCES);
    CHECK(password_verify("correct hors", h) == -EACCES);
    CHECK(password_verify("", h) == -EACCES);
    CHECK(password_verify(NULL, h) == -EACCES);
    char h2[PASSWORD_HASH_MAX];
    CHECK(password_hash("correct horse", h2, sizeof(h2), &err) == 0);
    CHECK(strcmp(h, h2) != 0); /* a new salt each time */
    CHECK(password_verify("correct horse", h2) == 0);
    /* No password, a damaged one, or one of an unknown scheme: no login. */
    CHECK(password_verify("x", NULL) == -EACCES);
    CHECK(password_verify("x", "") == -EACCES);
    CHECK(password_verify("x", "*") == -EACCES);
    CHECK(password_verify("x", "$unknown$abc") == -EACCES);
    h[strlen(h) - 1] ^= 1;
    CHECK(password_verify("correct horse", h) == -EACCES);
    char small[10];
    CHECK(password_hash("correct horse", small, sizeof(small), &err) < 0);
}

TEST(test_password_limits)
{
    char h[PASSWORD_HASH_MAX];
    hv_err err;
    CHECK(password_hash("", h, sizeof(h), &err) == -EINVAL);
    CHECK(strstr(err.msg, "empty") != NULL);
    CHECK(password_hash(NULL, h, sizeof(h), &err) == -EINVAL);
    char *p1024 = repeat('p', 1024), *p1025 = repeat('p', 1025), *p600 = repeat('q', 600);
    int ok1024 = password_hash(p1024, h, sizeof(h), &err) == 0 && password_verify(p1024, h) == 0;
    p1024[1023] = 'x'; /* a difference past libcrypt's own limit still counts */
    int diff1024 = password_verify(p1024, h) == -EACCES;
    int bad1025 = password_hash(p1025, h, sizeof(h), &err) == -EINVAL &&
                  strstr(err.msg, "1024") != NULL;
    int no1025 = password_verify(p1025, h) == -EACCES;
    int ok600 = password_hash(p600, h, sizeof(h), &err) == 0 && password_verify(p600, h) == 0;
    p600[599] = 0;
    int short599 = password_verify(p600, h) == -EACCES;
    free(p1024), free(p1025), free(p600);
    CHECK(ok1024);
    CHECK(diff1024);
    CHECK(bad1025);
    CHECK(no1025);
    CHECK(ok600);
    CHECK(short599);
    CHECK(password_check("x", &err) == 0);
}

TEST(test_password_in_directory)
{
    dir *d = open_fresh();
    CHECK(d);
    hv_err err;
    char h[PASSWORD_HASH_MAX];
    CHECK(password_hash("s3cret", h, sizeof(h), &err) == 0);
    CHECK(dir_account_add(d, "p@x.org", h, "local", 0, &err) == 0);
    dir_account a;
    CHECK(dir_account_get(d, "P@X.ORG", &a, &err) == 0);
    int ok = password_verify("s3cret", a.password_hash) == 0 &&
             password_verify("S3cret", a.password_hash) == -EACCES;
    dir_close(d);
    CHECK(ok);
}

/* Every test that talks to a directory, for the backend under test. */
static void run_backend_suite(void)
{
#define RUN_B(name) t_run_one(pg_conninfo ? #name " [pg]" : #name " [sqlite]", name)
    RUN_B(test_open_creates_schema_and_reopens);
    RUN_B(test_open_refuses_newer_schema);
    RUN_B(test_open_upgrades_v1_schema);
    RUN_B(test_open_upgrade_half_done);
    RUN_B(test_domains);
    RUN_B(test_domain_del_refused_while_in_use);
    RUN_B(test_account_add_get);
    RUN_B(test_account_changes);
    RUN_B(test_account_move_commit);
    RUN_B(test_account_list);
    RUN_B(test_version_bumps_on_each_change);
    RUN_B(test_two_handles_see_each_other);
    RUN_B(test_aliases);
    RUN_B(test_alias_list);
    RUN_B(test_stores);
    RUN_B(test_store_service_addresses);
    RUN_B(test_password_in_directory);
    RUN_B(test_watch_drain);
    if (pg_conninfo) {
        RUN_B(test_pg_notify);
        RUN_B(test_pg_reconnect);
        RUN_B(test_pg_schema_race);
        RUN_B(test_pg_open_errors);
        RUN_B(test_pg_open_conf);
    }
#undef RUN_B
}

int main(void)
{
    RUN(test_address_valid);
    RUN(test_address_traversal);
    RUN(test_address_malformed);
    RUN(test_address_lengths);
    RUN(test_domain_and_store_names);
    RUN(test_hostport_split);
    RUN(test_state_names);
    RUN(test_open_specs);
    RUN(test_open_conf_relative_path);
    RUN(test_password_hash_verify);
    RUN(test_password_limits);
    run_backend_suite();
    const char *pg = getenv("HAVEN_TEST_PG");
    if (pg && *pg) {
        pg_conninfo = pg;
        run_backend_suite();
    } else {
        printf("(HAVEN_TEST_PG unset: PostgreSQL backend not tested here; "
               "tests/integration/test_dir_pg.sh runs it)\n");
    }
    return t_done();
}
