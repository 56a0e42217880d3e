/* test_store.c - the account store: API behaviour, recovery and damage. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/fsutil.h"
#include "store/store.h"
#include "store/store_internal.h"
#include "testlib.h"

static char acct_dir[4096];

static store_account *fresh(void)
{
    snprintf(acct_dir, sizeof(acct_dir), "%s/acct_dir", t_tmpdir());
    store_account *a = NULL;
    hv_err err = {0};
    if (store_open(acct_dir, "t@example.org", STORE_OPEN_CREATE, NULL, &a, &err) < 0)
        fprintf(stderr, "open: %s\n", err.msg);
    return a;
}

static store_account *reopen(store_account *a)
{
    store_close(a);
    hv_err err = {0};
    if (store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) < 0) {
        fprintf(stderr, "reopen: %s\n", err.msg);
        return NULL;
    }
    return a;
}

static void count_problems(void *ctx, const char *p)
{
    if (strncmp(p, "note: ", 6) != 0)
        (*(int *)ctx)++;
    fprintf(stderr, "    verify: %s\n", p);
}

static int verify_problems(void)
{
    int n = 0;
    hv_err err = {0};
    int rc = store_verify(acct_dir, "t@example.org", count_problems, &n, &err);
    return rc < 0 ? -1 : rc;
}

TEST(mailboxes_create_rename_delete)
{
    store_account *a = fresh();
    CHECK(a);
    hv_err err = {0};
    uint32_t inbox, work;
    CHECK(store_mailbox_create(a, "inbox", 0, &inbox, &err) == 0);
    store_mailbox_info mi;
    CHECK(store_mailbox_find(a, "INBOX", &mi) == 0 && mi.id == inbox);
    CHECK(strcmp(mi.name, "INBOX") == 0 && mi.uidnext == 1 && mi.uidvalidity > 0);
    CHECK(store_mailbox_create(a, "INBOX", 0, NULL, &err) == -EEXIST);
    CHECK(store_mailbox_create(a, "Work/Projects", STORE_USE_ARCHIVE, &work, &err) == 0);
    CHECK(store_mailbox_create(a, "bad//name", 0, NULL, &err) == -EINVAL);
    CHECK(store_mailbox_create(a, "", 0, NULL, &err) == -EINVAL);
    CHECK(store_mailbox_rename(a, work, "Old", &err) == 0);
    CHECK(store_mailbox_find(a, "Old", &mi) == 0 && mi.id == work &&
          mi.special_use == STORE_USE_ARCHIVE);
    CHECK(store_mailbox_rename(a, work, "INBOX", &err) == -EEXIST);
    CHECK(store_mailbox_count(a) == 2);
    CHECK(store_mailbox_delete(a, work, &err) == 0);
    CHECK(store_mailbox_find(a, "Old", &mi) == -ENOENT);
    a = reopen(a);
    CHECK(a);
    CHECK(store_mailbox_count(a) == 1);
    store_close(a);
}

TEST(append_read_flags_expunge)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid = 0;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    const char *msg = "Subject: hi\r\n\r\nhello\r\n";
    for (int i = 0; i < 10; i++) {
        char body[100];
        snprintf(body, sizeof(body), "%s%d\r\n", msg, i);
        CHECKM(store_append(a, inbox, body, strlen(body), i == 3 ? STORE_FLAG_SEEN : 0,
                            1700000000 + i, &uid, &err) == 0, "%s", err.msg);
        CHECK(uid == (uint32_t)i + 1);
    }
    store_msg m;
    CHECK(store_msg_at(a, inbox, 3, &m) == 0 && m.uid == 4 && m.flags == STORE_FLAG_SEEN);
    char *data;
    size_t len;
    CHECK(store_blob_read(a, &m.blob, &data, &len, &err) == 0);
    CHECK(len == m.size && memcmp(data, msg, strlen(msg)) == 0 && data[len - 3] == '3');
    free(data);

    uint32_t uids[] = {2, 3, 4, 99};
    CHECK(store_set_flags(a, inbox, uids, 4, STORE_FLAGS_ADD, STORE_FLAG_FLAGGED, 0, NULL,
                          &err) == 0);
    uint64_t ms = store_highest_modseq(a);
    CHECK(store_msg_at(a, inbox, 1, &m) == 0 && m.flags == STORE_FLAG_FLAGGED && m.modseq == ms);
    /* CONDSTORE: message 2 changed after modseq ms-1, so it is refused. */
    size_t failed = 0;
    uint32_t one[] = {2};
    CHECK(store_set_flags(a, inbox, one, 1, STORE_FLAGS_REPLACE, 0, ms - 1, &failed, &err) == 0);
    CHECK(failed == 1);
    uint32_t ex[] = {1, 5, 6, 7};
    CHECK(store_expunge(a, inbox, ex, 4, &err) == 0);
    uint32_t n;
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 6);
    CHECK(store_msg_at(a, inbox, 0, &m) == 0 && m.uid == 2);
    CHECK(store_msg_at(a, inbox, 3, &m) == 0 && m.uid == 8);
    uint8_t d1[32], d2[32];
    store_digest(a, d1);
    a = reopen(a);
    CHECK(a);
    store_digest(a, d2);
    CHECK(memcmp(d1, d2, 32) == 0);
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 6);
    CHECK(verify_problems() == 0);
    store_close(a);
}

typedef struct change_log {
    int appends, flags, expunges, creates;
    uint64_t first;
} change_log;

static int on_change(void *ctx, const store_record *r)
{
    change_log *c = ctx;
    if (!c->first)
        c->first = r->modseq;
    c->appends += r->type == STORE_REC_APPEND;
    c->flags += r->type == STORE_REC_FLAGS;
    c->expunges += r->type == STORE_REC_EXPUNGE;
    c->creates += r->type == STORE_REC_MAILBOX_CREATE;
    return 0;
}

TEST(changes_since_covers_expunges)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "a\r\n", 3, 0, 1, &uid, &err) == 0);
    uint64_t mark = store_highest_modseq(a);
    CHECK(store_append(a, inbox, "b\r\n", 3, 0, 1, &uid, &err) == 0);
    CHECK(store_set_flags(a, inbox, &uid, 1, STORE_FLAGS_ADD, STORE_FLAG_SEEN, 0, NULL, &err) == 0);
    CHECK(store_expunge(a, inbox, &uid, 1, &err) == 0);
    CHECK(store_checkpoint(a, &err) == 0);
    change_log c = {0};
    CHECK(store_changes_since(a, mark, on_change, &c, &err) == 0);
    CHECK(c.first == mark + 1 && c.appends == 1 && c.flags == 1 && c.expunges == 1 &&
          c.creates == 0);
    change_log all = {0};
    CHECK(store_changes_since(a, 0, on_change, &all, &err) == 0);
    CHECK(all.creates == 1 && all.appends == 2);
    store_close(a);
}

TEST(copy_shares_blob_and_keywords)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, arch, uid, nu[2];
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_mailbox_create(a, "Archive", 0, &arch, &err) == 0);
    CHECK(store_append(a, inbox, "x\r\n", 3, 0, 5, &uid, &err) == 0);
    uint32_t src[] = {uid, 77};
    CHECK(store_copy(a, inbox, src, 2, arch, nu, &err) == 0);
    CHECK(nu[0] == 1 && nu[1] == 0);
    store_msg m1, m2;
    CHECK(store_msg_at(a, inbox, 0, &m1) == 0 && store_msg_at(a, arch, 0, &m2) == 0);
    CHECK(memcmp(&m1.blob, &m2.blob, 32) == 0 && m2.internal_date == 5);
    uint64_t bit, bit2;
    CHECK(store_keyword(a, "$Junk", 0, &bit, &err) == -ENOENT);
    CHECK(store_keyword(a, "$Junk", 1, &bit, &err) == 0);
    CHECK(store_keyword(a, "$junk", 0, &bit2, &err) == 0 && bit2 == bit);
    CHECK(strcmp(store_keyword_name(a, bit), "$Junk") == 0);
    CHECK(store_subscribe(a, "Archive", 1, &err) == 0 && store_is_subscribed(a, "Archive"));
    CHECK(store_setting_set(a, "quota", "1000", &err) == 0);
    a = reopen(a);
    CHECK(a);
    CHECK(store_is_subscribed(a, "Archive"));
    CHECK(store_setting_get(a, "quota") && strcmp(store_setting_get(a, "quota"), "1000") == 0);
    CHECK(store_keyword(a, "$Junk", 0, &bit2, &err) == 0 && bit2 == bit);
    store_close(a);
}

TEST(readers_see_writers_without_reopening)
{
    store_account *w = fresh();
    hv_err err = {0};
    uint32_t inbox, uid, n = 0;
    CHECK(store_mailbox_create(w, "INBOX", 0, &inbox, &err) == 0);
    store_account *r;
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &r, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 0);
    CHECK(store_append(w, inbox, "y\r\n", 3, 0, 5, &uid, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 1);
    /* And the other way: the reader writes, the first handle catches up. */
    CHECK(store_append(r, inbox, "z\r\n", 3, 0, 5, &uid, &err) == 0 && uid == 2);
    CHECK(store_msg_count(w, inbox, &n) == 0 && n == 2);
    uint8_t d1[32], d2[32];
    store_digest(w, d1);
    store_digest(r, d2);
    CHECK(memcmp(d1, d2, 32) == 0);
    store_close(r);
    store_close(w);
}

TEST(batch_and_segments_roll)
{
    snprintf(acct_dir, sizeof(acct_dir), "%s/acct_dir", t_tmpdir());
    store_options opt = {.segment_size = 4096, .checkpoint_records = 50};
    store_account *a;
    hv_err err = {0};
    CHECK(store_open(acct_dir, "t@example.org", STORE_OPEN_CREATE, &opt, &a, &err) == 0);
    uint32_t inbox;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    for (int round = 0; round < 5; round++) {
        store_batch *b;
        CHECK(store_batch_begin(a, &b, &err) == 0);
        for (int i = 0; i < 40; i++) {
            char body[64];
            int len = snprintf(body, sizeof(body), "Subject: %d-%d\r\n\r\nx\r\n", round, i);
            CHECK(store_batch_add(b, inbox, body, (size_t)len, 0, 0, NULL, &err) == 0);
        }
        CHECKM(store_batch_commit(b, &err) == 0, "%s", err.msg);
    }
    uint32_t n;
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 200);
    store_msg m;
    CHECK(store_msg_at(a, inbox, 199, &m) == 0 && m.uid == 200);
    change_log c = {0};
    CHECK(store_changes_since(a, 100, on_change, &c, &err) == 0);
    CHECK(c.first == 101 && c.appends == 101);
    store_close(a);
    CHECK(store_open(acct_dir, "t@example.org", 0, &opt, &a, &err) == 0);
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 200);
    store_close(a);
    char seg2[4200];
    snprintf(seg2, sizeof(seg2), "%s/log/%020d.log", acct_dir, 2);
    CHECK(access(seg2, F_OK) == 0);
    CHECK(verify_problems() == 0);
}

static off_t file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? st.st_size : -1;
}

TEST(torn_tail_is_cut_and_reported)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "1\r\n", 3, 0, 0, &uid, &err) == 0);
    store_close(a);
    char seg[4200];
    snprintf(seg, sizeof(seg), "%s/log/%020d.log", acct_dir, 1);
    off_t good = file_size(seg);
    /* Half a record at the end, as a crash mid-write leaves it. */
    int fd = open(seg, O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    CHECK(write(fd, "\x40\x00\x00\x00\x12\x34\x56\x78zzzz", 12) == 12);
    close(fd);
    CHECK(verify_problems() == 0); /* reported as a note, not damage */
    store_stats s0, s1;
    store_get_stats(&s0);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == 0);
    store_get_stats(&s1);
    CHECK(s1.tail_truncations == s0.tail_truncations + 1);
    CHECK(file_size(seg) >= good); /* the cut, plus maybe a checkpoint marker */
    uint32_t n;
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 1);
    CHECK(store_append(a, inbox, "2\r\n", 3, 0, 0, &uid, &err) == 0 && uid == 2);
    store_close(a);
    CHECK(verify_problems() == 0);
}

TEST(corrupt_record_refuses_account)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "1\r\n", 3, 0, 0, &uid, &err) == 0);
    off_t mid;
    char seg[4200];
    snprintf(seg, sizeof(seg), "%s/log/%020d.log", acct_dir, 1);
    mid = file_size(seg);
    CHECK(store_append(a, inbox, "2\r\n", 3, 0, 0, &uid, &err) == 0);
    CHECK(store_append(a, inbox, "3\r\n", 3, 0, 0, &uid, &err) == 0);
    store_close(a);
    /* Flip a byte inside the second append (after the checkpoint). */
    int fd = open(seg, O_RDWR);
    uint8_t byte;
    CHECK(pread(fd, &byte, 1, mid + 30) == 1);
    byte ^= 0x5a;
    CHECK(pwrite(fd, &byte, 1, mid + 30) == 1);
    close(fd);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == -EUCLEAN);
    CHECK(strstr(err.msg, "segment 1") && strstr(err.msg, "offset"));
    CHECK(verify_problems() >= 1);
}

TEST(damaged_index_is_rebuilt)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    for (int i = 0; i < 20; i++)
        CHECK(store_append(a, inbox, "m\r\n", 3, 0, 0, &uid, &err) == 0);
    CHECK(store_checkpoint(a, &err) == 0);
    uint8_t d1[32], d2[32];
    store_digest(a, d1);
    store_close(a);
    char ix[4200];
    snprintf(ix, sizeof(ix), "%s/index/index.ckpt", acct_dir);
    int fd = open(ix, O_RDWR);
    uint8_t byte;
    CHECK(pread(fd, &byte, 1, 150) == 1);
    byte ^= 1;
    CHECK(pwrite(fd, &byte, 1, 150) == 1);
    close(fd);
    CHECK(verify_problems() == 1);
    store_stats s0, s1;
    store_get_stats(&s0);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == 0);
    store_get_stats(&s1);
    CHECK(s1.index_rebuilds == s0.index_rebuilds + 1);
    store_digest(a, d2);
    CHECK(memcmp(d1, d2, 32) == 0);
    store_close(a);
    CHECK(verify_problems() == 0);
}

static void blob_file(const store_blob_id *id, char *path, size_t n)
{
    char hex[65];
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = d[id->b[i] >> 4];
        hex[2 * i + 1] = d[id->b[i] & 15];
    }
    hex[64] = 0;
    snprintf(path, n, "%s/blobs/%.2s/%s", acct_dir, hex, hex);
}

TEST(flipped_blob_is_detected)
{
    /* A message too big to travel inline: its blob file is the only copy. */
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    size_t big = STORE_INLINE_MAX + 1000;
    char *body = malloc(big);
    memset(body, 'b', big);
    CHECK(store_append(a, inbox, body, big, 0, 0, &uid, &err) == 0);
    free(body);
    store_msg m;
    CHECK(store_msg_at(a, inbox, 0, &m) == 0);
    char path[4300];
    blob_file(&m.blob, path, sizeof(path));
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0 && pwrite(fd, "S", 1, 0) == 1);
    close(fd);
    char *data;
    size_t len;
    CHECK(store_blob_read(a, &m.blob, &data, &len, &err) == -EUCLEAN);
    store_close(a);
    CHECK(verify_problems() == 1);
}

TEST(inline_body_lives_only_in_the_log)
{
    /* A small message's body travels in its log record, which is its only
     * copy: no blob file is written. Before a checkpoint readers find it
     * through the records they replayed, after one through the
     * checkpoint's INLB section; a stray (damaged) file of an older
     * version is not used. */
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "secret\r\n", 8, 0, 0, &uid, &err) == 0);
    store_msg m;
    CHECK(store_msg_at(a, inbox, 0, &m) == 0);
    char path[4300];
    blob_file(&m.blob, path, sizeof(path));
    CHECK(access(path, F_OK) < 0 && errno == ENOENT);
    char *data;
    size_t len;
    CHECK(store_blob_read(a, &m.blob, &data, &len, &err) == 0);
    CHECK(len == 8 && memcmp(data, "secret\r\n", 8) == 0);
    free(data);
    /* A reader in another handle, before any checkpoint. */
    store_account *r;
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &r, &err) == 0);
    int bfd;
    uint64_t bsize;
    char got[16] = {0};
    CHECK(store_blob_open(r, &m.blob, &bfd, &bsize, &err) == 0 && bsize == 8);
    CHECK(read(bfd, got, sizeof(got)) == 8 && memcmp(got, "secret\r\n", 8) == 0);
    close(bfd);
    store_close(r);
    CHECK(store_checkpoint(a, &err) == 0);
    store_close(a);
    CHECK(access(path, F_OK) < 0);
    CHECK(verify_problems() == 0);

    /* After the checkpoint: found through INLB, without replaying the
     * append, also next to a damaged stray file. */
    int fd = open(path, O_WRONLY | O_CREAT, 0600);
    CHECK(fd >= 0 && write(fd, "Secret\r\n", 8) == 8);
    close(fd);
    store_stats s0, s1;
    store_get_stats(&s0);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == 0);
    store_get_stats(&s1);
    /* Only the checkpoint's own marker record follows its position. */
    CHECK(s1.records_replayed <= s0.records_replayed + 1 && s1.index_rebuilds == s0.index_rebuilds);
    CHECK(store_blob_read(a, &m.blob, &data, &len, &err) == 0);
    CHECK(len == 8 && memcmp(data, "secret\r\n", 8) == 0);
    free(data);
    CHECK(store_blob_open(a, &m.blob, &bfd, &bsize, &err) == 0 && bsize == 8);
    memset(got, 0, sizeof(got));
    CHECK(pread(bfd, got, 8, 0) == 8 && memcmp(got, "secret\r\n", 8) == 0);
    close(bfd);
    store_close(a);
    CHECK(verify_problems() == 0); /* a note: the stray file is not used */
    CHECK(unlink(path) == 0);
}

TEST(inline_bodies_across_checkpoints)
{
    /* Many deliveries, checkpoints in between (every 16 records), copies
     * naming inline blobs, a body stored twice: every body is found by a
     * fresh handle that replays only the tail, and verify checks the
     * checkpoint's INLB against the log. */
    snprintf(acct_dir, sizeof(acct_dir), "%s/acct_dir", t_tmpdir());
    char cmd[4400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", acct_dir);
    CHECK(system(cmd) == 0);
    store_options o = {.checkpoint_records = 16};
    store_account *a;
    hv_err err = {0};
    CHECK(store_open(acct_dir, "t@example.org", STORE_OPEN_CREATE, &o, &a, &err) == 0);
    uint32_t inbox, other, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_mailbox_create(a, "Other", 0, &other, &err) == 0);
    enum { N = 100 };
    for (int i = 0; i < N; i++) {
        char body[200];
        int n = snprintf(body, sizeof(body), "Subject: %d\r\n\r\nbody %d\r\n", i % 90, i % 90);
        char did[32];
        snprintf(did, sizeof(did), "q-%d", i);
        int dup;
        if (i % 3) {
            CHECK(store_append_once(a, inbox, did, body, (size_t)n, 0, 0, &uid, &dup, &err) == 0);
        } else {
            store_batch *b;
            CHECK(store_batch_begin(a, &b, &err) == 0);
            CHECK(store_batch_add_once(b, inbox, did, body, (size_t)n, 0, 0, &uid, &dup,
                                       &err) == 0);
            CHECK(store_batch_commit(b, &err) == 0);
        }
        if (i % 10 == 0)
            CHECK(store_copy(a, inbox, &uid, 1, other, NULL, &err) == 0);
    }
    store_close(a);
    CHECK(store_open(acct_dir, "t@example.org", 0, &o, &a, &err) == 0);
    const char *names[] = {"INBOX", "Other"};
    for (int k = 0; k < 2; k++) {
        store_mailbox_info mi;
        uint32_t count;
        CHECK(store_mailbox_find(a, names[k], &mi) == 0 && store_msg_count(a, mi.id, &count) == 0);
        CHECK(count == (k ? N / 10 : N));
        for (uint32_t i = 0; i < count; i++) {
            store_msg m;
            char *data;
            size_t len;
            char path[4300];
            CHECK(store_msg_at(a, mi.id, i, &m) == 0);
            CHECK(store_blob_read(a, &m.blob, &data, &len, &err) == 0 && len == m.size);
            CHECK(strncmp(data, "Subject: ", 9) == 0);
            free(data);
            blob_file(&m.blob, path, sizeof(path));
            CHECK(access(path, F_OK) < 0);
        }
    }
    store_close(a);
    CHECK(verify_problems() == 0);
    /* An INLB entry pointing elsewhere (its checkpoint's CRC made right
     * again) is reported by verify; readers still find the body (the
     * frame there fails its checks, and the log is searched), and
     * reconstruct rebuilds the index. */
    char ck[4400];
    snprintf(ck, sizeof(ck), "%s/index/index.ckpt", acct_dir);
    char *img;
    size_t ilen;
    CHECK(fs_read_file(ck, &img, &ilen, &err) == 0 && ilen > 200);
    uint8_t *tag = memmem(img, ilen, "INLB", 4);
    CHECK(tag != NULL);
    uint8_t *e = tag + 16 + 8; /* section header, entry count */
    while ((e - (uint8_t *)img) % 8)
        e++;
    store_blob_id victim;
    memcpy(victim.b, e, 32);
    uint64_t off = le64(e + 40);
    st64(e + 40, off + 1);
    st32((uint8_t *)img + ilen - 4, crc32c(0, img, ilen - 4));
    CHECK(fs_write_file_atomic(ck, img, ilen, 0600, &err) == 0);
    free(img);
    CHECK(verify_problems() == 1);
    CHECK(store_open(acct_dir, "t@example.org", 0, &o, &a, &err) == 0);
    char *data;
    size_t len;
    CHECK(store_blob_read(a, &victim, &data, &len, &err) == 0);
    CHECK(strncmp(data, "Subject: ", 9) == 0);
    free(data);
    store_close(a);
    CHECK(store_reconstruct(acct_dir, "t@example.org", &err) == 0);
    CHECK(verify_problems() == 0);
}

TEST(frame_image_in_a_torn_body_is_not_damage)
{
    /* A sender can put the bytes of a valid log frame in a message, and
     * small messages travel in the log. If a crash tears that record, the
     * image must not make the torn tail look like mid-log damage. */
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "first\r\n", 7, 0, 0, &uid, &err) == 0);
    buf img;
    buf_init(&img);
    buf_append_str(&img, "Subject: x\r\n\r\n");
    size_t at = img.len;
    store_record fake = {0};
    fake.type = STORE_REC_SETTING;
    fake.modseq = 1000000; /* later than anything: the best a sender can do */
    fake.name = "k";
    fake.name_len = 1;
    fake.value = "v";
    fake.value_len = 1;
    rec_encode(&img, &fake);
    size_t img_end = img.len;
    buf_append_str(&img, "\r\nmore text after the image\r\n");
    char seg[4200];
    snprintf(seg, sizeof(seg), "%s/log/%020d.log", acct_dir, 1);
    struct stat st;
    CHECK(stat(seg, &st) == 0);
    off_t rec_start = st.st_size;
    CHECK(store_append(a, inbox, img.data, img.len, 0, 0, &uid, &err) == 0);
    store_close(a);
    /* Tear the record a little after the image (where the body goes on). */
    off_t body_at = rec_start + 8 + 24 + 60; /* frame hdr, body hdr, APPEND fields */
    CHECK(truncate(seg, body_at + (off_t)img_end + 5) == 0);
    (void)at;
    buf_free(&img);
    CHECKM(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == 0, "%s", err.msg);
    uint32_t n;
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 1);
    store_close(a);
    CHECK(verify_problems() == 0);
}

TEST(account_dir_rejects_unsafe_addresses)
{
    char out[512];
    hv_err err;
    CHECK(store_account_dir("d", "a@b.c", out, sizeof(out), &err) == 0);
    CHECK(strcmp(out, "d/accounts/b.c/a") == 0);
    CHECK(store_account_dir("d", "../x@b.c", out, sizeof(out), &err) < 0);
    CHECK(store_account_dir("d", "a/b@c", out, sizeof(out), &err) < 0);
    CHECK(store_account_dir("d", "a@..", out, sizeof(out), &err) < 0);
    CHECK(store_account_dir("d", "A@b.c", out, sizeof(out), &err) < 0);
    CHECK(store_account_dir("d", "@b.c", out, sizeof(out), &err) < 0);
    CHECK(store_account_dir("d", "a@", out, sizeof(out), &err) < 0);
}

static int count_dids(void *ctx, const store_record *r)
{
    if (r->type == STORE_REC_APPEND && r->delivery_id_len == 5 &&
        memcmp(r->delivery_id, "q1-00", 5) == 0)
        (*(int *)ctx)++;
    return 0;
}

/* A retried delivery (the queue lost its bookkeeping in a crash) must not
 * show the message twice, whether the retry comes before or after a
 * reopen, a checkpoint, a rebuilt index or a large body. */
TEST(delivery_ids_make_retries_idempotent)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid, uid2, n;
    int dup = -1;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append_once(a, inbox, "q1-00", "m1\r\n", 4, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 0 && uid == 1);
    CHECK(store_append_once(a, inbox, "q1-00", "m1\r\n", 4, 0, 0, &uid2, &dup, &err) == 0);
    CHECK(dup == 1 && uid2 == 1);
    CHECK(store_append_once(a, inbox, "q1-01", "m1\r\n", 4, 0, 0, &uid2, &dup, &err) == 0);
    CHECK(dup == 0 && uid2 == 2);
    CHECK(store_append_once(a, inbox, "", "x", 1, 0, 0, &uid2, &dup, &err) == -EINVAL);
    CHECK(store_append_once(a, inbox, "bad id", "x", 1, 0, 0, &uid2, &dup, &err) == -EINVAL);
    int seen = 0;
    CHECK(store_changes_since(a, 0, count_dids, &seen, &err) == 0 && seen == 1);

    /* A body over the inline limit takes the blob-first path. */
    size_t big = STORE_INLINE_MAX + 100;
    char *body = malloc(big);
    memset(body, 'x', big);
    memcpy(body + big - 2, "\r\n", 2);
    CHECK(store_append_once(a, inbox, "q2-00", body, big, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 0 && uid == 3);
    CHECK(store_append_once(a, inbox, "q2-00", body, big, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 1 && uid == 3);

    /* Remembered across a plain reopen (replay)... */
    CHECK((a = reopen(a)) != NULL);
    CHECK(store_append_once(a, inbox, "q1-00", "m1\r\n", 4, 0, 0, &uid2, &dup, &err) == 0);
    CHECK(dup == 1 && uid2 == 1);
    /* ...and across a checkpoint, which must carry them. */
    CHECK(store_checkpoint(a, &err) == 0);
    CHECK((a = reopen(a)) != NULL);
    CHECK(store_append_once(a, inbox, "q2-00", body, big, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 1 && uid == 3);
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 3);

    /* Batches: a repeat inside one batch and across batches adds nothing;
     * the ring keeps the newest STORE_DELIVERY_IDS_KEPT. */
    store_batch *b;
    CHECK(store_batch_begin(a, &b, &err) == 0);
    char id[32];
    for (int i = 0; i < STORE_DELIVERY_IDS_KEPT + 10; i++) {
        snprintf(id, sizeof(id), "b%d", i);
        CHECK(store_batch_add_once(b, inbox, id, "b\r\n", 3, 0, 0, NULL, &dup, &err) == 0);
        CHECK(dup == 0);
    }
    CHECK(store_batch_add_once(b, inbox, "b7", "b\r\n", 3, 0, 0, NULL, &dup, &err) == 0);
    CHECK(dup == 1);
    CHECK(store_batch_commit(b, &err) == 0);
    CHECK(store_msg_count(a, inbox, &n) == 0 && n == 3 + STORE_DELIVERY_IDS_KEPT + 10);
    snprintf(id, sizeof(id), "b%d", STORE_DELIVERY_IDS_KEPT + 9);
    CHECK(store_append_once(a, inbox, id, "b\r\n", 3, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 1);
    CHECK(store_append_once(a, inbox, "b0", "b\r\n", 3, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 0); /* fell out of the ring: only the newest are kept */
    CHECK(store_checkpoint(a, &err) == 0);
    store_close(a);
    CHECK(verify_problems() == 0);

    /* A rebuilt index (checkpoint gone) remembers the same ids. */
    char ix[4200];
    snprintf(ix, sizeof(ix), "%s/index/index.ckpt", acct_dir);
    CHECK(unlink(ix) == 0);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &a, &err) == 0);
    snprintf(id, sizeof(id), "b%d", STORE_DELIVERY_IDS_KEPT + 9);
    CHECK(store_append_once(a, inbox, id, "b\r\n", 3, 0, 0, &uid, &dup, &err) == 0);
    CHECK(dup == 1);
    store_close(a);
    free(body);
}

typedef struct ship {
    buf frames;
    store_account *primary, *replica;
    int blobs;
} ship;

static int ship_one(void *ctx, const store_record *r)
{
    ship *sh = ctx;
    if (r->type == STORE_REC_APPEND && !r->body) {
        char *data;
        size_t len;
        hv_err err = {0};
        if (store_blob_read(sh->primary, &r->blob, &data, &len, &err) < 0 ||
            store_blob_import(sh->replica, &r->blob, data, len, &err) < 0)
            return -1;
        free(data);
        sh->blobs++;
    }
    buf_append(&sh->frames, r->raw, r->raw_len);
    return 0;
}

/* A replica applying the primary's frames reaches the same state and
 * digest; out-of-order, damaged or blob-less frames are refused whole. */
TEST(replica_applies_primary_frames)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(a, inbox, "one\r\n", 5, 0, 7, &uid, &err) == 0);
    size_t big = STORE_INLINE_MAX + 1;
    char *body = calloc(1, big);
    CHECK(store_append(a, inbox, body, big, 0, 8, &uid, &err) == 0);
    uint32_t u1 = 1;
    CHECK(store_set_flags(a, inbox, &u1, 1, STORE_FLAGS_ADD, STORE_FLAG_SEEN, 0, NULL, &err) == 0);
    CHECK(store_subscribe(a, "INBOX", 1, &err) == 0);

    char rdir[4200];
    snprintf(rdir, sizeof(rdir), "%s.replica", acct_dir);
    store_account *r = NULL;
    int rc = store_open(rdir, "t@example.org", STORE_OPEN_CREATE, NULL, &r, &err);
    CHECKM(rc == 0, "%s", err.msg);
    ship sh = {.primary = a, .replica = r};
    buf_init(&sh.frames);
    CHECK(store_changes_since(a, 0, ship_one, &sh, &err) == 0);
    CHECK(sh.blobs == 1);
    /* Out of order: starting at modseq 2 is refused. */
    size_t first_len = 8 + le32(sh.frames.data);
    CHECK(store_apply_frames(r, sh.frames.data + first_len, sh.frames.len - first_len, &err) ==
          -ESPIPE);
    CHECK(store_highest_modseq(r) == 0);
    /* A flipped byte is refused. */
    sh.frames.data[first_len + 20] ^= 1;
    CHECK(store_apply_frames(r, sh.frames.data, sh.frames.len, &err) == -EBADMSG);
    sh.frames.data[first_len + 20] ^= 1;
    CHECK(store_highest_modseq(r) == 0);
    /* In two parts, as a stream would deliver them. */
    CHECK(store_apply_frames(r, sh.frames.data, first_len, &err) == 0);
    CHECK(store_apply_frames(r, sh.frames.data + first_len, sh.frames.len - first_len, &err) == 0);
    uint8_t d1[32], d2[32];
    store_digest(a, d1);
    store_digest(r, d2);
    CHECK(memcmp(d1, d2, 32) == 0);
    CHECK(store_highest_modseq(r) == store_highest_modseq(a));
    char *got;
    size_t glen;
    store_msg m;
    CHECK(store_msg_at(r, inbox, 0, &m) == 0 && (m.flags & STORE_FLAG_SEEN));
    CHECK(store_blob_read(r, &m.blob, &got, &glen, &err) == 0 && glen == 5 &&
          memcmp(got, "one\r\n", 5) == 0);
    free(got);
    /* A wrong blob is refused by its hash. */
    store_blob_id bogus = {{0}};
    CHECK(store_blob_import(r, &bogus, "x", 1, &err) == -EBADMSG);
    buf_free(&sh.frames);
    store_close(r);
    store_close(a);
    CHECK(store_verify(rdir, "t@example.org", NULL, NULL, &err) == 0);
    free(body);
}

static int grab_last(void *ctx, const store_record *r)
{
    buf *b = ctx;
    buf_reset(b);
    buf_append(b, r->raw, r->raw_len);
    return 0;
}

/* Readers show only what is durable: while a writer holds the lock, bytes
 * past its last synced commit (the durable mark) stay invisible; once the
 * lock is free, everything in the log counts. */
TEST(readers_see_only_durable_records)
{
    store_account *w = fresh();
    hv_err err = {0};
    uint32_t inbox, uid, n = 0;
    CHECK(store_mailbox_create(w, "INBOX", 0, &inbox, &err) == 0);
    CHECK(store_append(w, inbox, "a\r\n", 3, 0, 5, &uid, &err) == 0);
    store_account *r, *w2;
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &r, &err) == 0);
    CHECK(store_open(acct_dir, "t@example.org", 0, NULL, &w2, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 1);

    /* A frame that a writer has written but not synced: the next append's
     * frame, produced in a scratch copy of the account, put at the end of
     * the log while another handle holds the write lock. */
    char copy[4200], cmd[9000];
    snprintf(copy, sizeof(copy), "%s.copy", acct_dir);
    snprintf(cmd, sizeof(cmd), "cp -a '%s' '%s'", acct_dir, copy);
    CHECK(system(cmd) == 0);
    store_account *c;
    CHECK(store_open(copy, "t@example.org", 0, NULL, &c, &err) == 0);
    CHECK(store_append(c, inbox, "b\r\n", 3, 0, 5, &uid, &err) == 0);
    buf frame;
    buf_init(&frame);
    CHECK(store_changes_since(c, store_highest_modseq(c) - 1, grab_last, &frame, &err) == 0);
    CHECK(frame.len > 0);
    store_close(c);

    store_batch *b;
    CHECK(store_batch_begin(w2, &b, &err) == 0); /* holds the write lock */
    char seg[4200];
    snprintf(seg, sizeof(seg), "%s/log/%020llu.log", acct_dir, 1ULL);
    int fd = open(seg, O_WRONLY | O_APPEND);
    CHECK(fd >= 0);
    CHECK(write(fd, frame.data, frame.len) == (ssize_t)frame.len);
    close(fd);
    CHECK(store_refresh(r, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 1); /* not durable yet */
    store_batch_abort(b);                                /* the lock is free */
    CHECK(store_refresh(r, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 2);

    /* A synced commit moves the mark: readers see it even while another
     * writer holds the lock right after. */
    CHECK(store_append(w, inbox, "c\r\n", 3, 0, 5, &uid, &err) == 0);
    CHECK(store_batch_begin(w2, &b, &err) == 0);
    CHECK(store_refresh(r, &err) == 0);
    CHECK(store_msg_count(r, inbox, &n) == 0 && n == 3);
    store_batch_abort(b);
    buf_free(&frame);
    store_close(w2);
    store_close(r);
    store_close(w);
    CHECK(access(acct_dir, F_OK) == 0);
    char mark[4200];
    snprintf(mark, sizeof(mark), "%s/log/durable", acct_dir);
    CHECK(access(mark, F_OK) == 0);
    CHECK(verify_problems() == 0);
}

/* A fence file stops every write at once (a replica, a demoted primary),
 * except the primary's frames that a replica applies. */
TEST(fence_refuses_writes_but_not_replication)
{
    store_account *a = fresh();
    hv_err err = {0};
    uint32_t inbox, uid;
    CHECK(store_mailbox_create(a, "INBOX", 0, &inbox, &err) == 0);
    char fence[4200], why[128];
    snprintf(fence, sizeof(fence), "%s.fence", acct_dir);
    store_set_fence(fence);
    CHECK(store_fenced(why, sizeof(why)) == 0);
    FILE *f = fopen(fence, "w");
    CHECK(f != NULL);
    fputs("replica of store east\n", f);
    fclose(f);
    CHECK(store_fenced(why, sizeof(why)) == 1 && strcmp(why, "replica of store east") == 0);
    int rc = store_append(a, inbox, "x\r\n", 3, 0, 0, &uid, &err);
    CHECKM(rc == -EROFS && strstr(err.msg, "replica of store east"), "%d %s", rc, err.msg);
    CHECK(store_mailbox_create(a, "Other", 0, NULL, &err) == -EROFS);

    /* The replica side: frames from a primary still apply. */
    char pdir[4200];
    snprintf(pdir, sizeof(pdir), "%s.primary", acct_dir);
    store_set_fence(NULL);
    store_account *p = NULL;
    CHECK(store_open(pdir, "t@example.org", STORE_OPEN_CREATE, NULL, &p, &err) == 0);
    CHECK(store_mailbox_create(p, "INBOX", 0, NULL, &err) == 0);
    CHECK(store_append(p, inbox, "y\r\n", 3, 0, 0, &uid, &err) == 0);
    store_set_fence(fence);
    store_account *r = NULL;
    char rdir[4200];
    snprintf(rdir, sizeof(rdir), "%s.rep", acct_dir);
    rc = store_open(rdir, "t@example.org", STORE_OPEN_CREATE, NULL, &r, &err);
    CHECKM(rc == 0, "%s", err.msg);
    buf frames;
    buf_init(&frames);
    ship sh = {.primary = p, .replica = r};
    sh.frames = frames;
    CHECK(store_changes_since(p, 0, ship_one, &sh, &err) == 0);
    CHECK(store_apply_frames(r, sh.frames.data, sh.frames.len, &err) == 0);
    CHECK(store_highest_modseq(r) == store_highest_modseq(p));
    buf_free(&sh.frames);

    CHECK(unlink(fence) == 0);
    CHECK(store_append(a, inbox, "x\r\n", 3, 0, 0, &uid, &err) == 0);
    store_set_fence(NULL);
    store_close(r);
    store_close(p);
    store_close(a);
}

int main(void)
{
    RUN(mailboxes_create_rename_delete);
    RUN(append_read_flags_expunge);
    RUN(changes_since_covers_expunges);
    RUN(copy_shares_blob_and_keywords);
    RUN(readers_see_writers_without_reopening);
    RUN(batch_and_segments_roll);
    RUN(torn_tail_is_cut_and_reported);
    RUN(corrupt_record_refuses_account);
    RUN(damaged_index_is_rebuilt);
    RUN(flipped_blob_is_detected);
    RUN(inline_body_lives_only_in_the_log);
    RUN(inline_bodies_across_checkpoints);
    RUN(frame_image_in_a_torn_body_is_not_damage);
    RUN(account_dir_rejects_unsafe_addresses);
    RUN(delivery_ids_make_retries_idempotent);
    RUN(replica_applies_primary_frames);
    RUN(readers_see_only_durable_records);
    RUN(fence_refuses_writes_but_not_replication);
    return t_done();
}
