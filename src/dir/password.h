/*
 * password.h - password hashes as the directory stores them.
 *
 * New hashes are yescrypt ("$y$...") from libcrypt with its default cost
 * and a salt from the kernel's random source. Verification accepts any
 * scheme libcrypt knows (so hashes imported from an older system keep
 * working) and compares the whole recomputed hash in constant time.
 *
 * Passwords are 1..PASSWORD_MAX bytes. libcrypt refuses passphrases of 512
 * bytes or more, so those are first reduced to the hex SHA-256 of the
 * password; shorter ones are hashed as they are, which keeps every hash a
 * plain yescrypt hash that other tools built on libcrypt verify alike.
 */
#ifndef HV_PASSWORD_H
#define HV_PASSWORD_H

#include <stddef.h>

#include "lib/err.h"

#define PASSWORD_MAX 1024
/* Room for any hash this module writes, with its NUL (yescrypt needs ~75). */
#define PASSWORD_HASH_MAX 256

/* Hashes password into out (outlen >= PASSWORD_HASH_MAX is always enough).
 * -EINVAL for an empty or too long password, with the reason in err. */
int password_hash(const char *password, char *out, size_t outlen, hv_err *err);

/* 0 when password matches hash, -EACCES when it does not, also when hash is
 * NULL or empty (an account without a password: no login). Takes about as
 * long in every case, so timing does not tell which one it was. */
int password_verify(const char *password, const char *hash);

/* Length check alone (1..PASSWORD_MAX), for callers that read a password
 * before they are ready to hash it. 0 or -EINVAL with the reason. */
int password_check(const char *password, hv_err *err);

#endif
