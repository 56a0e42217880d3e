/*
 * test_store_fence.c - an account's own fence (store_account_fence): what
 * `haven move` relies on to freeze an account. Writes are refused with the
 * fence's reason while it stands (checked under the account lock), by
 * every handle, and work again once it is lifted; the fence survives
 * reopening; replication (store_apply_frames) is not stopped by it.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "store/store.h"
#include "testlib.h"

static const char MSG[] = "From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n";

static int open_acct(const char *dir, store_account **out)
{
    hv_err err = {0};
    store_options opt = {0};
    return store_open(dir, "user@example.org", STORE_OPEN_CREATE, &opt, out, &err);
}

TEST(fence_refuses_writes_until_lifted)
{
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/acct", t_tmpdir());
    store_account *a, *b;
    hv_err err = {0};
    CHECK(open_acct(dir, &a) == 0);
    CHECK(open_acct(dir, &b) == 0); /* another process's handle, in effect */
    uint32_t inbox = 0, uid = 0;
    CHECKM(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0, "%s", err.msg);
    CHECKM(store_append(a, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == 0, "%s", err.msg);
    char why[256] = "";
    CHECK(store_account_fenced(a, why, sizeof(why)) == 0);

    CHECKM(store_account_fence(a, "account is moving to store b", &err) == 0, "%s", err.msg);
    CHECK(store_account_fenced(b, why, sizeof(why)) == 1);
    CHECK(strcmp(why, "account is moving to store b") == 0);
    uint64_t before = store_highest_modseq(a);
    CHECK(store_append(b, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == -EROFS);
    CHECK(strstr(err.msg, "moving to store b") != NULL);
    CHECK(store_append(a, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == -EROFS);
    CHECK(store_mailbox_create(b, "Other", 0, NULL, &err) == -EROFS);
    CHECK(store_refresh(b, &err) == 0);
    CHECK(store_highest_modseq(b) == before);

    /* It stands across reopening (a restarted service sees it). */
    store_close(b);
    CHECK(open_acct(dir, &b) == 0);
    CHECK(store_account_fenced(b, NULL, 0) == 1);
    CHECK(store_append(b, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == -EROFS);

    CHECKM(store_account_unfence(a, &err) == 0, "%s", err.msg);
    CHECK(store_account_fenced(b, NULL, 0) == 0);
    CHECKM(store_append(b, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == 0, "%s", err.msg);
    CHECK(store_refresh(a, &err) == 0);
    CHECK(store_highest_modseq(a) == before + 1);
    store_close(a);
    store_close(b);
}

typedef struct frames {
    char buf[1 << 16];
    size_t len;
} frames;

static int collect(void *ctx, const store_record *r)
{
    frames *f = ctx;
    if (f->len + r->raw_len <= sizeof(f->buf)) {
        memcpy(f->buf + f->len, r->raw, r->raw_len);
        f->len += r->raw_len;
    }
    return 0;
}

TEST(fence_does_not_stop_applying_frames)
{
    char src[4200], dst[4200];
    snprintf(src, sizeof(src), "%s/src", t_tmpdir());
    snprintf(dst, sizeof(dst), "%s/dst", t_tmpdir());
    store_account *s, *d;
    hv_err err = {0};
    CHECK(open_acct(src, &s) == 0);
    CHECK(open_acct(dst, &d) == 0);
    uint32_t inbox = 0, uid = 0;
    CHECK(store_mailbox_create(s, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(s, inbox, MSG, sizeof(MSG) - 1, 0, 0, &uid, &err) == 0);
    /* The target's copy carries a fence from an earlier move away. */
    CHECK(store_account_fence(d, "account moved to store a", &err) == 0);
    static frames f;
    f.len = 0;
    CHECK(store_changes_since(s, 0, collect, &f, &err) >= 0);
    CHECK(f.len > 0);
    CHECKM(store_apply_frames(d, f.buf, f.len, &err) == 0, "%s", err.msg);
    uint8_t ds[32], dd[32];
    store_digest(s, ds);
    store_digest(d, dd);
    CHECK(memcmp(ds, dd, 32) == 0);
    store_close(s);
    store_close(d);
}

int main(void)
{
    RUN(fence_refuses_writes_until_lifted);
    RUN(fence_does_not_stop_applying_frames);
    return t_done();
}
