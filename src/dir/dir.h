/*
 * dir.h - the directory: which domains Haven hosts, which accounts exist,
 * where each one lives and whether it may be served.
 *
 * The directory is the one truth that SMTP recipient checks, LMTP, IMAP
 * login, the proxy and the operator command consult (docs/directory.md).
 * It holds domains, accounts (password hash, state, store, slot, quota),
 * aliases and stores (the addresses of their IMAP, LMTP and replication
 * services, role, epoch), plus a version counter that every change bumps,
 * so a front end can cache answers and drop its cache when the version
 * moves.
 *
 * This header is backend-neutral. A backend is chosen by the spec given to
 * dir_open ("sqlite:PATH" for one node, dir_sqlite.c; "pg:CONNINFO" for
 * several nodes sharing one PostgreSQL database, dir_pg.c) and plugs in
 * through the dir_backend table at the end; dir.c holds the shared part. Every address, domain and store name is
 * validated and lowercased here, before a backend sees it, so the rules
 * below hold whichever backend is in use.
 *
 * Each change is one transaction: it happens entirely or not at all, and
 * it is durable when the call returns 0. A dir handle is not thread-safe;
 * open one per thread (the backend lets handles in several processes share
 * one directory). List callbacks must not call back into the same handle.
 */
#ifndef HV_DIR_H
#define HV_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "lib/conf.h"
#include "lib/err.h"

/* Address limits (RFC 5321 4.5.3.1). The store uses the address as a
 * folder name (DATA/accounts/DOMAIN/LOCAL), so the character rules of
 * dir_address_normalize are also what keeps those paths inside DATA. */
#define DIR_LOCAL_MAX 64
#define DIR_DOMAIN_MAX 253
#define DIR_ADDRESS_MAX 254
#define DIR_STORE_NAME_MAX 64
#define DIR_STORE_ADDRESS_MAX 255
#define DIR_HASH_MAX 255

typedef struct dir dir;

/* What an account may do now. Only ACTIVE is served; the others refuse
 * IMAP login (NO [UNAVAILABLE] with the reason) and send mail to hold. */
enum dir_state {
    DIR_STATE_ACTIVE = 0,
    DIR_STATE_HELD = 1,      /* stopped by an operator */
    DIR_STATE_MOVING = 2,    /* being moved to another store */
    DIR_STATE_RESTORING = 3, /* being restored from backup */
};

enum dir_store_role {
    DIR_ROLE_PRIMARY = 0,
    DIR_ROLE_REPLICA = 1,
};

typedef struct dir_account {
    char address[DIR_ADDRESS_MAX + 1];  /* lowercase local@domain */
    char password_hash[DIR_HASH_MAX + 1]; /* "" when the account has none */
    enum dir_state state;
    char store[DIR_STORE_NAME_MAX + 1]; /* name of the store holding it */
    /* The store's "virtual server" the account belongs to: long operations
     * (restore, move) run one account at a time per slot. */
    uint32_t slot;
    uint64_t quota_bytes;       /* 0: no quota */
    int64_t last_login_attempt; /* seconds since the epoch, 0: never */
    int64_t created;            /* seconds since the epoch */
} dir_account;

typedef struct dir_store {
    char name[DIR_STORE_NAME_MAX + 1];
    char address[DIR_STORE_ADDRESS_MAX + 1]; /* its IMAP service, host:port (the proxy) */
    /* Its lmtp service, host:port: where the queues of every node deliver
     * mail for the store's accounts. "" when unset (the mail then goes to
     * the delivering node's own lmtp service, as on a single node). */
    char lmtp_address[DIR_STORE_ADDRESS_MAX + 1];
    /* Its repl service, host:port: where `haven move` streams accounts
     * to it. "" when unset. */
    char repl_address[DIR_STORE_ADDRESS_MAX + 1];
    enum dir_store_role role;
    /* Raised on every promotion; a primary whose epoch is older than the
     * directory's refuses writes (fencing). Never goes down. */
    uint64_t epoch;
} dir_store;

/* --- opening --- */

/* spec is "sqlite:PATH" or "pg:CONNINFO" (a libpq connection string, e.g.
 * "pg:host=10.0.0.5 port=5432 dbname=haven user=haven"). The directory's
 * schema is created when missing. -EINVAL for an unknown backend, with the
 * reason. */
int dir_open(const char *spec, dir **out, hv_err *err);
/* Opens the config's `directory`; a relative PATH is relative to the
 * folder holding the config file, like every path in haven.conf. c may be
 * NULL (the default, relative to the current folder). */
int dir_open_conf(const conf *c, dir **out, hv_err *err);
void dir_close(dir *d);
/* The calling thread's own handle on spec (a handle is not thread-safe),
 * opened at the first call and closed when the thread ends: what the
 * services' worker threads use. One spec per process. NULL with err when
 * it cannot be opened (the next call tries again). */
dir *dir_thread(const char *spec, hv_err *err);

/* --- names --- */

/* Validates an address and writes it lowercased to out. The local part is
 * 1..64 of letters, digits and . _ + - (no leading '.' or '-', no trailing
 * '.', no ".."); the domain as for dir_domain_normalize; at most 254 in
 * all. -EINVAL with the reason otherwise. */
int dir_address_normalize(const char *in, char out[DIR_ADDRESS_MAX + 1], hv_err *err);
/* Validates a domain and writes it lowercased: dot-separated labels of
 * 1..63 letters, digits and hyphens, not starting or ending with a hyphen;
 * at most 253 in all; no trailing dot. */
int dir_domain_normalize(const char *in, char out[DIR_DOMAIN_MAX + 1], hv_err *err);
/* A store name: 1..64 of letters, digits and . _ -, lowercased, not
 * starting with '.' or '-'. */
int dir_store_name_normalize(const char *in, char out[DIR_STORE_NAME_MAX + 1], hv_err *err);

const char *dir_state_name(enum dir_state s);   /* "active", ... */
int dir_state_parse(const char *s, enum dir_state *out, hv_err *err);
const char *dir_store_role_name(enum dir_store_role r); /* "primary", "replica" */
int dir_store_role_parse(const char *s, enum dir_store_role *out, hv_err *err);

/* --- domains --- */

/* -EEXIST when already there. */
int dir_domain_add(dir *d, const char *domain, hv_err *err);
/* -ENOENT when unknown; -ENOTEMPTY while accounts or aliases are in it. */
int dir_domain_del(dir *d, const char *domain, hv_err *err);
/* 0 when hosted, -ENOENT when not. */
int dir_domain_exists(dir *d, const char *domain, hv_err *err);
typedef int (*dir_domain_cb)(void *ctx, const char *domain);
/* In name order; a non-zero return from cb stops and is returned. */
int dir_domain_list(dir *d, dir_domain_cb cb, void *ctx, hv_err *err);

/* --- accounts --- */

/* Adds an active account on store, adding its domain when new.
 * password_hash NULL (or "") means no password: login is impossible until
 * one is set. -EEXIST when the address is taken by an account or alias. */
int dir_account_add(dir *d, const char *address, const char *password_hash,
                    const char *store, uint64_t quota_bytes, hv_err *err);
/* Removes the entry (not the mail). -ENOENT when unknown. */
int dir_account_del(dir *d, const char *address, hv_err *err);
/* -ENOENT when unknown; -EINVAL when address is malformed. */
int dir_account_get(dir *d, const char *address, dir_account *out, hv_err *err);
typedef int (*dir_account_cb)(void *ctx, const dir_account *a);
/* Accounts in address order, of one domain or (domain NULL) of all.
 * -ENOENT when domain is given and not hosted. */
int dir_account_list(dir *d, const char *domain, dir_account_cb cb, void *ctx, hv_err *err);
/* NULL or "" removes the password. */
int dir_account_set_password(dir *d, const char *address, const char *password_hash,
                             hv_err *err);
int dir_account_set_state(dir *d, const char *address, enum dir_state state, hv_err *err);
int dir_account_set_quota(dir *d, const char *address, uint64_t quota_bytes, hv_err *err);
/* Moves the account to another store and slot in one step (move, restore). */
int dir_account_set_store(dir *d, const char *address, const char *store, uint32_t slot,
                          hv_err *err);
/* The end of an account move: store, slot and state in one transaction
 * (one version bump), so no reader ever sees the account on its new store
 * in its old state or the other way round (the flip that releases held
 * mail and lets logins in, DESIGN.md Flow 4). -ENOENT for an unknown
 * account. */
int dir_account_move_commit(dir *d, const char *address, const char *store, uint32_t slot,
                            enum dir_state state, hv_err *err);
/* Remembers a login attempt (the restore scheduler puts accounts whose
 * users are trying to log in first). A statistic, not a change to what is
 * served, so it does not bump the version (front ends keep their caches). */
int dir_account_login_attempt(dir *d, const char *address, int64_t when, hv_err *err);

/* --- aliases --- */

/* address -> target. The address must not be an account; its domain is
 * added when new. target is any valid address (checked at resolve). */
int dir_alias_add(dir *d, const char *address, const char *target, hv_err *err);
int dir_alias_del(dir *d, const char *address, hv_err *err);
/* One step: the target of the alias address; -ENOENT when it is none. */
int dir_alias_get(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1], hv_err *err);
/* The account that mail for address goes to: address itself when it is an
 * account, else its alias target, followed through up to 8 aliases.
 * -ENOENT when it ends nowhere, -ELOOP when the chain is too long. */
int dir_alias_resolve(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1], hv_err *err);
typedef int (*dir_alias_cb)(void *ctx, const char *address, const char *target);
int dir_alias_list(dir *d, dir_alias_cb cb, void *ctx, hv_err *err);

/* --- stores --- */

/* A new store with epoch 0. -EEXIST when the name is taken. */
int dir_store_add(dir *d, const char *name, const char *address, enum dir_store_role role,
                  hv_err *err);
int dir_store_get(dir *d, const char *name, dir_store *out, hv_err *err);
typedef int (*dir_store_cb)(void *ctx, const dir_store *s);
int dir_store_list(dir *d, dir_store_cb cb, void *ctx, hv_err *err);
/* Raises the epoch; -ESTALE when epoch is not above the current one, so
 * two racing promotions cannot both win. */
int dir_store_set_epoch(dir *d, const char *name, uint64_t epoch, hv_err *err);
int dir_store_set_role(dir *d, const char *name, enum dir_store_role role, hv_err *err);
/* Where the store's IMAP service listens (host:port): the proxy relays
 * logins of the store's accounts there. */
int dir_store_set_address(dir *d, const char *name, const char *address, hv_err *err);
/* Where the store's lmtp service listens: the queue delivers mail for the
 * store's accounts there. address must be host:port ([v6addr]:port for
 * an IPv6 literal, see dir_hostport_split); NULL or "" unsets it. */
int dir_store_set_lmtp_address(dir *d, const char *name, const char *address, hv_err *err);
/* Where the store's repl service listens (host:port, NULL or "" unsets):
 * `haven move` streams accounts to it there. */
int dir_store_set_repl_address(dir *d, const char *name, const char *address, hv_err *err);

/* Splits "host:port" or "[v6addr]:port" into host (without brackets) and
 * port 1..65535; the one parser for the addresses above. -EINVAL with the
 * reason when address is not of that form. */
int dir_hostport_split(const char *address, char *host, size_t hostcap, int *port, hv_err *err);

/* --- change tracking --- */

/* The counter every change bumps (starts at 0 in a new directory). */
int dir_version(dir *d, uint64_t *out, hv_err *err);

/* Change notification, for front ends that cache lookups. Use a handle
 * of its own for watching (or drain after every other call on it: a
 * notification that arrives during a lookup is read off the socket then,
 * and the fd will not wake for it). The loop is:
 *
 *     for (;;) {
 *         uint64_t v;
 *         int rc = dir_watch_drain(d, &v, &err);
 *         if (rc != 0) drop the cache (rc < 0: cannot tell, so assume so);
 *         int fd = dir_watch_fd(d);
 *         fd >= 0 ? poll fd for POLLIN : sleep a little;
 *     }
 *
 * dir_watch_fd starts watching (PostgreSQL: LISTEN haven_directory) and
 * returns the descriptor that becomes readable when a change may have
 * been committed, or -1 when there is none (SQLite: a single node, where
 * drain compares dir_version itself; also PostgreSQL while disconnected).
 * The descriptor can change after a drain (a reconnect): ask each time.
 *
 * dir_watch_drain never blocks. It returns 1 when the directory may have
 * changed since the previous drain, 0 when it has not, -errno when it
 * cannot tell; *version_out is the newest version known. The first drain
 * returns 1 (nothing cached before it can be trusted), and so does the
 * first after a reconnect (notifications may have been missed). */
int dir_watch_fd(dir *d);
int dir_watch_drain(dir *d, uint64_t *version_out, hv_err *err);

/* The services a store publishes an address for (the stores table's
 * address, lmtp_address and repl_address columns). */
enum dir_store_service {
    DIR_SERVICE_IMAP = 0,
    DIR_SERVICE_LMTP = 1,
    DIR_SERVICE_REPL = 2,
};

/* --- for backends only ---
 *
 * A backend embeds struct dir as the first member of its handle and fills
 * a dir_backend table. The functions above validate and normalise every
 * name, then call the table, so a backend receives only lowercase, valid
 * names and a quota or epoch that fits in an int64_t. */
typedef struct dir_backend {
    const char *scheme; /* the spec prefix before ':' */
    /* The rest of the spec is a file path, which dir_open_conf resolves
     * against the config folder (not so for a connection string). */
    int where_is_path;
    int (*open)(const char *where, dir **out, hv_err *err);
    void (*close)(dir *d);
    int (*domain_add)(dir *d, const char *domain, hv_err *err);
    int (*domain_del)(dir *d, const char *domain, hv_err *err);
    int (*domain_exists)(dir *d, const char *domain, hv_err *err);
    int (*domain_list)(dir *d, dir_domain_cb cb, void *ctx, hv_err *err);
    int (*account_add)(dir *d, const char *address, const char *domain, const char *hash,
                       const char *store, uint64_t quota_bytes, hv_err *err);
    int (*account_del)(dir *d, const char *address, hv_err *err);
    int (*account_get)(dir *d, const char *address, dir_account *out, hv_err *err);
    int (*account_list)(dir *d, const char *domain, dir_account_cb cb, void *ctx, hv_err *err);
    int (*account_set_password)(dir *d, const char *address, const char *hash, hv_err *err);
    int (*account_set_state)(dir *d, const char *address, enum dir_state state, hv_err *err);
    int (*account_set_quota)(dir *d, const char *address, uint64_t quota_bytes, hv_err *err);
    int (*account_set_store)(dir *d, const char *address, const char *store, uint32_t slot,
                             hv_err *err);
    int (*account_move_commit)(dir *d, const char *address, const char *store, uint32_t slot,
                               enum dir_state state, hv_err *err);
    int (*account_login_attempt)(dir *d, const char *address, int64_t when, hv_err *err);
    int (*alias_add)(dir *d, const char *address, const char *domain, const char *target,
                     hv_err *err);
    int (*alias_del)(dir *d, const char *address, hv_err *err);
    /* One step: -ENOENT when address is no alias, else its target. */
    int (*alias_get)(dir *d, const char *address, char out[DIR_ADDRESS_MAX + 1], hv_err *err);
    int (*alias_list)(dir *d, dir_alias_cb cb, void *ctx, hv_err *err);
    int (*store_add)(dir *d, const char *name, const char *address, enum dir_store_role role,
                     hv_err *err);
    int (*store_get)(dir *d, const char *name, dir_store *out, hv_err *err);
    int (*store_list)(dir *d, dir_store_cb cb, void *ctx, hv_err *err);
    int (*store_set_epoch)(dir *d, const char *name, uint64_t epoch, hv_err *err);
    int (*store_set_role)(dir *d, const char *name, enum dir_store_role role, hv_err *err);
    /* address is "" to unset (never for DIR_SERVICE_IMAP). */
    int (*store_set_address)(dir *d, const char *name, enum dir_store_service service,
                             const char *address, hv_err *err);
    int (*version)(dir *d, uint64_t *out, hv_err *err);
    int (*watch_fd)(dir *d);
    int (*watch_drain)(dir *d, uint64_t *version_out, hv_err *err);
} dir_backend;

struct dir {
    const dir_backend *be;
};

extern const dir_backend dir_sqlite_backend; /* dir_sqlite.c */
extern const dir_backend dir_pg_backend;     /* dir_pg.c */

#endif
