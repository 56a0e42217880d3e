/*
 * password.c - yescrypt hashing and constant-time verification; see
 * password.h.
 *
 * crypt_ra keeps its large work area on the heap, so nothing here puts
 * tens of kilobytes on the stack of a service thread; the work area and
 * any copy of the password are wiped before they are freed.
 */
#include "dir/password.h"

#include <crypt.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/sha256.h"

/* Hashed instead of an account's missing hash, so that "no such password"
 * costs what a wrong password costs. Any valid yescrypt setting will do. */
static const char dummy_setting[] = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$";

int password_check(const char *password, hv_err *err)
{
    if (!password || !*password)
        return hv_err_set(err, -EINVAL, "empty password");
    if (strnlen(password, PASSWORD_MAX + 1) > PASSWORD_MAX)
        return hv_err_set(err, -EINVAL, "password longer than %d bytes", PASSWORD_MAX);
    return 0;
}

/* The passphrase handed to libcrypt: the password itself, or the hex
 * SHA-256 of it when libcrypt would refuse its length. */
static const char *passphrase(const char *password, char hex[65])
{
    size_t len = strlen(password);
    if (len < CRYPT_MAX_PASSPHRASE_SIZE)
        return password;
    uint8_t sum[32];
    sha256(password, len, sum);
    hex_encode(sum, sizeof(sum), hex);
    explicit_bzero(sum, sizeof(sum));
    return hex;
}

/* crypt_ra with the work area wiped and freed; the result is copied to out.
 * Returns 0, or -1 when libcrypt refused the setting (or out is too small). */
static int crypt_into(const char *phrase, const char *setting, char *out, size_t outlen)
{
    void *data = NULL;
    int size = 0;
    const char *h = crypt_ra(phrase, setting, &data, &size);
    int rc = -1;
    /* libcrypt signals failure with NULL or, in some builds, a "*" string. */
    if (h && h[0] != '*' && strlen(h) < outlen) {
        memcpy(out, h, strlen(h) + 1);
        rc = 0;
    }
    if (data) {
        explicit_bzero(data, (size_t)size);
        free(data);
    }
    return rc;
}

int password_hash(const char *password, char *out, size_t outlen, hv_err *err)
{
    int rc = password_check(password, err);
    if (rc < 0)
        return rc;
    errno = 0;
    char *setting = crypt_gensalt_ra("$y$", 0, NULL, 0);
    if (!setting)
        return hv_err_sys(err, "password hash: cannot make a salt");
    char hex[65];
    const char *phrase = passphrase(password, hex);
    rc = crypt_into(phrase, setting, out, outlen);
    explicit_bzero(hex, sizeof(hex));
    free(setting);
    if (rc < 0)
        return hv_err_set(err, -EIO, "password hash: libcrypt refused to hash");
    return 0;
}

/* Equal when both strings are equal; the time taken depends on the
 * lengths (public: fixed per scheme) but not on where they differ. */
static int ct_streq(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    volatile unsigned char diff = la != lb;
    for (size_t i = 0; i < la; i++)
        diff |= (unsigned char)a[i] ^ (unsigned char)(i < lb ? b[i] : 0);
    return diff == 0;
}

int password_verify(const char *password, const char *hash)
{
    char out[PASSWORD_HASH_MAX];
    char hex[65];
    int usable = password_check(password, NULL) == 0 && hash && *hash;
    const char *phrase = usable ? passphrase(password, hex) : "-";
    int rc = crypt_into(phrase, usable ? hash : dummy_setting, out, sizeof(out));
    int ok = usable && rc == 0 && ct_streq(out, hash);
    explicit_bzero(hex, sizeof(hex));
    explicit_bzero(out, sizeof(out));
    return ok ? 0 : -EACCES;
}
