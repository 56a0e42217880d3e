/*
 * haven_init.c - `haven init DIR`: a ready single-node instance in one step.
 *
 * Writes DIR/haven.conf (every key, commented, relative paths so the
 * folder can be moved as a whole), the folders the config names, a
 * self-signed certificate and the directory database. haven.conf is
 * written last: an instance is complete exactly when its config exists, so
 * an init that failed halfway can simply be run again, while a finished
 * one is never overwritten.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "cmd/haven_cmd.h"
#include "dir/dir.h"
#include "lib/buf.h"
#include "lib/conf.h"
#include "lib/fsutil.h"

#define CERT_DAYS 365
#define DIRECTORY_FILE "directory.sqlite"

/* A key that init writes with its own value; the others stay commented
 * out at their defaults, so a later release's better default still
 * reaches instances that never chose otherwise. */
typedef struct init_setting {
    const char *key;
    char value[256];
} init_setting;

typedef struct init_opts {
    const char *dir;
    const char *hostname;
    long port[6]; /* -1: not given */
} init_opts;

/* Order matches init_opts.port. */
static const struct {
    const char *opt, *key;
    long std;
} port_opts[6] = {
    {"--imap-port", "imap_port", 143},
    {"--smtp-port", "smtp_port", 25},
    {"--submission-port", "submission_port", 587},
    {"--lmtp-port", "lmtp_port", 24},
    {"--http-port", "http_port", 8080},
    {"--imaps-port", "imaps_port", 993},
};
enum { P_IMAP, P_SMTP, P_SUBMISSION, P_LMTP, P_HTTP, P_IMAPS };

static int init_usage(const char *fmt, const char *arg)
{
    fputs("haven: init: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see 'haven help init')\n", stderr);
    return 2;
}

static int parse_port(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > 65535)
        return -1;
    *out = v;
    return 0;
}

/* The name goes into the config file and the certificate, so it is held
 * to what a DNS name may be: no spaces, '#' or newlines to break either. */
static int valid_hostname(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 253 || h[0] == '-' || h[0] == '.' || h[n - 1] == '.')
        return 0;
    for (const char *p = h; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
              (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
            return 0;
    return 1;
}

static int parse_args(int argc, char **argv, init_opts *o, long *submissions_port)
{
    *submissions_port = -1;
    for (int j = 0; j < 6; j++)
        o->port[j] = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == 0) {
            if (o->dir)
                return init_usage("more than one DIR given ('%s')", a);
            o->dir = a;
            continue;
        }
        /* Both "--opt VALUE" and "--opt=VALUE". */
        char name[64];
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        if (nlen >= sizeof(name))
            return init_usage("unknown option '%s'", a);
        memcpy(name, a, nlen);
        name[nlen] = 0;
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        if (!val)
            return init_usage("%s needs a value", name);

        if (strcmp(name, "--hostname") == 0) {
            if (!valid_hostname(val))
                return init_usage("'%s' is not a valid host name", val);
            o->hostname = val;
            continue;
        }
        long *slot = NULL;
        for (int j = 0; j < 6; j++)
            if (strcmp(name, port_opts[j].opt) == 0)
                slot = &o->port[j];
        if (strcmp(name, "--submissions-port") == 0)
            slot = submissions_port;
        if (!slot)
            return init_usage("unknown option '%s'", name);
        if (parse_port(val, slot) < 0)
            return init_usage("'%s' is not a port number (0-65535)", val);
    }
    if (!o->dir)
        return init_usage("%s", "missing DIR");
    return 0;
}

static int ssl_fail(hv_err *err, const char *what)
{
    unsigned long e = ERR_get_error();
    char reason[256] = "unknown OpenSSL error";
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    ERR_clear_error();
    return hv_err_set(err, -EIO, "certificate: %s: %s", what, reason);
}

static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value, hv_err *err)
{
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (!ex)
        return ssl_fail(err, value);
    int ok = X509_add_ext(x, ex, -1);
    X509_EXTENSION_free(ex);
    return ok ? 0 : ssl_fail(err, value);
}

static int write_bio(BIO *bio, const char *path, int mode, hv_err *err)
{
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    return fs_write_file_atomic(path, p, (size_t)n, mode, err);
}

/* A self-signed server certificate so TLS works from the first start; an
 * operator replaces the two files with real ones (docs/operations.md). */
static int make_cert(const char *host, const char *cert_path, const char *key_path,
                     hv_err *err)
{
    int rc = -EIO;
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIGNUM *serial = BN_new();
    BIO *kbio = BIO_new(BIO_s_mem()), *cbio = BIO_new(BIO_s_mem());
    if (!pkey || !x || !serial || !kbio || !cbio) {
        rc = ssl_fail(err, "out of memory or no P-256 support");
        goto out;
    }
    /* Random, positive, 127 bits: unique enough that clients which cached
     * an earlier self-signed certificate never confuse the two. */
    if (!X509_set_version(x, 2) || !BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
        !BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) ||
        !X509_gmtime_adj(X509_getm_notBefore(x), 0) ||
        !X509_gmtime_adj(X509_getm_notAfter(x), (long)CERT_DAYS * 24 * 3600) ||
        !X509_set_pubkey(x, pkey)) {
        rc = ssl_fail(err, "fields");
        goto out;
    }
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)host, -1,
                                    -1, 0) ||
        !X509_set_issuer_name(x, name)) {
        rc = ssl_fail(err, "subject");
        goto out;
    }
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    char san[600];
    snprintf(san, sizeof(san), "DNS:%s,%sIP:127.0.0.1", host,
             strcmp(host, "localhost") == 0 ? "" : "DNS:localhost,");
    /* A plain server certificate (CA:FALSE): clients told to trust this
     * file take it as its own anchor, and none will accept it as a CA for
     * anything else. The key identifiers keep strict verifiers content. */
    if ((rc = add_ext(x, &v3, NID_basic_constraints, "critical,CA:FALSE", err)) < 0 ||
        (rc = add_ext(x, &v3, NID_key_usage, "critical,digitalSignature", err)) < 0 ||
        (rc = add_ext(x, &v3, NID_ext_key_usage, "serverAuth", err)) < 0 ||
        (rc = add_ext(x, &v3, NID_subject_key_identifier, "hash", err)) < 0 ||
        (rc = add_ext(x, &v3, NID_authority_key_identifier, "keyid:always", err)) < 0 ||
        (rc = add_ext(x, &v3, NID_subject_alt_name, san, err)) < 0)
        goto out;
    if (!X509_sign(x, pkey, EVP_sha256())) {
        rc = ssl_fail(err, "sign");
        goto out;
    }
    if (!PEM_write_bio_PrivateKey(kbio, pkey, NULL, NULL, 0, NULL, NULL) ||
        !PEM_write_bio_X509(cbio, x)) {
        rc = ssl_fail(err, "PEM");
        goto out;
    }
    /* The key is created 0600 from its first byte (the temp file too). */
    if ((rc = write_bio(kbio, key_path, 0600, err)) < 0 ||
        (rc = write_bio(cbio, cert_path, 0644, err)) < 0)
        goto out;
    rc = 0;
out:
    BIO_free(kbio);
    BIO_free(cbio);
    BN_free(serial);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

static const char *setting(const init_setting *s, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s[i].key, key) == 0)
            return s[i].value;
    return NULL;
}

/* Generated from conf_keys so that every key is in the file with its
 * explanation, including keys added after this code was written. */
static void render_conf(buf *b, const init_setting *s, size_t n, const char *host)
{
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y-%m-%d", &tm);
    buf_printf(b,
               "# haven.conf - a single-node Haven instance for %s,\n"
               "# written by `haven init` on %s.\n"
               "#\n"
               "# One \"key = value\" per line; '#' starts a comment. Relative paths are\n"
               "# relative to the folder holding this file, so the instance can be moved\n"
               "# as a whole. Keys commented out are at their defaults. Every key and\n"
               "# what it does: docs/config.md. havend re-reads this file on SIGHUP.\n",
               host, date);
    for (int i = 0; conf_keys[i].name; i++) {
        const conf_key *k = &conf_keys[i];
        const char *v = setting(s, n, k->name);
        buf_printf(b, "\n# %s\n", k->help);
        if (v)
            buf_printf(b, "%s = %s\n", k->name, v);
        else if (*k->def)
            buf_printf(b, "# %s = %s\n", k->name, k->def);
        else
            buf_printf(b, "# %s =\n", k->name);
    }
}

static int make_dir(const char *base, const char *rel, int mode, char *out, size_t outlen,
                    hv_err *err)
{
    if (rel[0] == '/')
        snprintf(out, outlen, "%s", rel);
    else
        snprintf(out, outlen, "%s/%s", base, rel);
    return fs_mkdir_p(out, mode, err);
}

int cmd_init(haven_ctx *ctx, int argc, char **argv)
{
    (void)ctx;
    init_opts o = {0};
    long submissions_port;
    int rc = parse_args(argc, argv, &o, &submissions_port);
    if (rc)
        return rc;
    const char *host = o.hostname ? o.hostname : "localhost";

    /* Moving a plain port off its standard number says "no privileged
     * ports here"; keeping the implicit-TLS twin on 993/465 would break
     * that promise, so it is disabled unless asked for. */
    long imaps = o.port[P_IMAPS];
    if (imaps < 0)
        imaps = o.port[P_IMAP] < 0 ? 993 : 0;
    long submissions = submissions_port;
    if (submissions < 0)
        submissions = o.port[P_SUBMISSION] < 0 ? 465 : 0;
    long ports[7];
    const char *port_keys[7];
    for (int j = 0; j < 5; j++) {
        ports[j] = o.port[j] < 0 ? port_opts[j].std : o.port[j];
        port_keys[j] = port_opts[j].key;
        if (ports[j] == 0)
            return init_usage("%s cannot be 0 (only the implicit-TLS ports can be disabled)",
                              port_opts[j].opt);
    }
    ports[5] = imaps;
    port_keys[5] = "imaps_port";
    ports[6] = submissions;
    port_keys[6] = "submissions_port";
    for (int a = 0; a < 7; a++)
        for (int c = a + 1; c < 7; c++)
            if (ports[a] && ports[a] == ports[c]) {
                fprintf(stderr, "haven: init: %s and %s are both %ld\n", port_keys[a],
                        port_keys[c], ports[a]);
                return 2;
            }

    char conf_file[4096];
    snprintf(conf_file, sizeof(conf_file), "%s/haven.conf", o.dir);
    struct stat st;
    if (lstat(conf_file, &st) == 0)
        return cmd_fail("%s already exists; not overwriting an instance (remove it, or "
                        "init another folder)", conf_file);

    init_setting s[24]; /* room for every key init sets (17 today) */
    size_t n = 0;
#define SET(k, ...) (s[n].key = (k), snprintf(s[n].value, sizeof(s[n].value), __VA_ARGS__), n++)
    SET("hostname", "%s", host);
    SET("listen", "127.0.0.1");
    SET("data_dir", "data");
    SET("directory", "sqlite:%s", DIRECTORY_FILE);
    SET("store_name", "local");
    SET("tls_cert", "tls/cert.pem");
    SET("tls_key", "tls/key.pem");
    SET("plaintext_loopback", "yes");
    SET("run_dir", "run");
    SET("queue_dir", "queue");
    for (int j = 0; j < 7; j++)
        SET(port_keys[j], "%ld", ports[j]);
#undef SET

    hv_err err = {0};
    char data[4200], run[4200], queue[4200], tls[4200], cert[4300], key[4300];
    /* Mail and keys are nobody else's business: their folders are 0700. */
    if (fs_mkdir_p(o.dir, 0755, &err) < 0 ||
        make_dir(o.dir, "data", 0700, data, sizeof(data), &err) < 0 ||
        make_dir(o.dir, "run", 0750, run, sizeof(run), &err) < 0 ||
        make_dir(o.dir, "queue", 0700, queue, sizeof(queue), &err) < 0 ||
        make_dir(o.dir, "tls", 0700, tls, sizeof(tls), &err) < 0)
        return cmd_fail("init: %s", err.msg);

    snprintf(cert, sizeof(cert), "%s/cert.pem", tls);
    snprintf(key, sizeof(key), "%s/key.pem", tls);
    /* A pair left by an earlier, interrupted init (or put there by the
     * operator on purpose) is kept: replacing it would break clients that
     * already trust it. */
    int kept_cert = access(cert, F_OK) == 0 && access(key, F_OK) == 0;
    if (!kept_cert && make_cert(host, cert, key, &err) < 0)
        return cmd_fail("init: %s", err.msg);

    /* Created now rather than by the first `user add`, so that a fresh
     * instance is complete and havend finds what it expects. */
    char spec[4300];
    snprintf(spec, sizeof(spec), "sqlite:%s/%s", o.dir, DIRECTORY_FILE);
    dir *directory;
    if (dir_open(spec, &directory, &err) < 0)
        return cmd_fail("init: directory: %s", err.msg);
    dir_close(directory);

    buf b;
    buf_init(&b);
    render_conf(&b, s, n, host);
    /* Checked again just before writing: another init may have finished
     * meanwhile, and rename() would replace its file without a word. */
    if (lstat(conf_file, &st) == 0) {
        buf_free(&b);
        return cmd_fail("%s already exists; not overwriting an instance", conf_file);
    }
    rc = fs_write_file_atomic(conf_file, b.data, b.len, 0644, &err);
    buf_free(&b);
    if (rc < 0)
        return cmd_fail("init: %s", err.msg);

    printf("Haven instance written to %s:\n"
           "  %-22s the configuration (docs/config.md)\n"
           "  %-22s the directory database (accounts, domains)\n"
           "  %-22s account stores\n"
           "  %-22s the SMTP queue\n"
           "  %-22s havend's pid file and admin socket\n"
           "  %-22s %s certificate for %s\n"
           "  %-22s its private key (mode 0600)\n"
           "Ports: imap %ld, imaps %ld, smtp %ld, submission %ld, submissions %ld, lmtp %ld, "
           "http %ld (0 = disabled)\n"
           "Next:\n"
           "  haven -c %s user add you@example.org --password-stdin\n"
           "  havend -c %s -f\n",
           o.dir, "haven.conf", DIRECTORY_FILE, "data/", "queue/", "run/", "tls/cert.pem",
           kept_cert ? "kept the existing" : "a self-signed", host, "tls/key.pem",
           ports[P_IMAP], imaps, ports[P_SMTP], ports[P_SUBMISSION], submissions, ports[P_LMTP],
           ports[P_HTTP], conf_file, conf_file);
    return 0;
}
