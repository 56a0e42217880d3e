/*
 * test_repl_tail.c - the replication stream's log reader (repl_tail.c)
 * yields exactly what store_changes_since yields, from any record's end,
 * across segment boundaries and over checkpoint records; a position that
 * does not continue as expected is reported (-ESTALE), never guessed; and
 * what it yields can be applied on a second store with the same digest.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "repl/repl_internal.h"
#include "testlib.h"

typedef struct rec_list {
    uint64_t modseq[4096], seg[4096], end[4096];
    uint32_t crc[4096];
    size_t n;
    buf frames;
} rec_list;

static int collect(void *ctx, const store_record *r)
{
    rec_list *l = ctx;
    l->modseq[l->n] = r->modseq;
    l->seg[l->n] = r->segment;
    l->end[l->n] = r->offset + r->raw_len;
    l->crc[l->n] = le32(r->raw + 4);
    l->n++;
    buf_append(&l->frames, r->raw, r->raw_len);
    return 0;
}

TEST(tail_matches_changes_since)
{
    const char *dir = t_tmpdir();
    char path[4200];
    snprintf(path, sizeof(path), "%s/a", dir);
    /* Small segments and checkpoints, so both are crossed many times. */
    store_options opt = {.segment_size = 16384, .checkpoint_records = 50};
    store_account *a;
    hv_err err = {0};
    CHECKM(store_open(path, "a@x.org", STORE_OPEN_CREATE, &opt, &a, &err) == 0, "%s", err.msg);
    uint32_t mb;
    CHECK(store_mailbox_create(a, "INBOX", 0, &mb, &err) == 0);
    char body[3000];
    for (int i = 0; i < 300; i++) {
        int n = snprintf(body, sizeof(body), "Subject: %d\r\n\r\n", i);
        memset(body + n, 'a' + i % 26, sizeof(body) - (size_t)n);
        uint32_t uid;
        CHECK(store_append(a, mb, body, (size_t)(i % 7 == 0 ? 2500 : 200), 0, 1000, &uid,
                           &err) == 0);
        if (i % 10 == 0) {
            uint32_t u = uid;
            CHECK(store_set_flags(a, mb, &u, 1, STORE_FLAGS_ADD, STORE_FLAG_SEEN, 0, NULL,
                                  &err) == 0);
        }
    }
    uint64_t hi = store_highest_modseq(a);
    rec_list *all = calloc(1, sizeof(*all));
    buf_init(&all->frames);
    CHECK(store_changes_since(a, 0, collect, all, &err) == 0);
    CHECK(all->n == hi);
    CHECK(all->seg[all->n - 1] > 3); /* crossed segments */
    /* From every record's end, the tail reader yields the rest. */
    for (size_t k = 0; k < all->n; k += 37) {
        rec_list *t = calloc(1, sizeof(*t));
        buf_init(&t->frames);
        int rc = repl_tail_read(path, all->seg[k], all->end[k], all->modseq[k], hi, collect, t,
                                &err);
        CHECKM(rc == 0, "from %zu: %s", k, err.msg);
        CHECK(t->n == all->n - k - 1);
        for (size_t i = 0; i < t->n; i++)
            CHECK(t->modseq[i] == all->modseq[k + 1 + i] && t->crc[i] == all->crc[k + 1 + i]);
        buf_free(&t->frames);
        free(t);
    }
    /* A position that does not hold the next record is refused. */
    rec_list *t = calloc(1, sizeof(*t));
    buf_init(&t->frames);
    CHECK(repl_tail_read(path, all->seg[10], all->end[10], all->modseq[10] + 1, hi, collect, t,
                         &err) == -ESTALE);
    CHECK(repl_tail_read(path, all->seg[10], all->end[10] + 3, all->modseq[10], hi, collect, t,
                         &err) == -ESTALE);
    CHECK(repl_tail_read(path, 999, 40, all->modseq[10], hi, collect, t, &err) == -ESTALE);
    /* Upto stops it early. */
    t->n = 0;
    CHECK(repl_tail_read(path, all->seg[0], all->end[0], 1, 20, collect, t, &err) == 0);
    CHECK(t->n == 19 && t->modseq[18] == 20);
    CHECK(repl_sync_log(path, all->seg[0], &err) == 0);
    CHECK(repl_sync_log(path, 0, &err) == 0);

    /* What was read applies on another store: same digest. */
    snprintf(path, sizeof(path), "%s/b", dir);
    store_account *b;
    CHECK(store_open(path, "a@x.org", STORE_OPEN_CREATE, &opt, &b, &err) == 0);
    CHECKM(store_apply_frames(b, all->frames.data, all->frames.len, &err) == 0, "%s", err.msg);
    uint8_t da[32], db[32];
    store_digest(a, da);
    store_digest(b, db);
    CHECK(memcmp(da, db, 32) == 0 && store_highest_modseq(b) == hi);
    uint32_t crc = 0, crc2 = 0;
    CHECK(repl_record_crc(a, hi, &crc, &err) == 0 && repl_record_crc(b, hi, &crc2, &err) == 0);
    CHECK(crc == crc2 && crc == all->crc[all->n - 1]);
    CHECK(repl_record_crc(a, hi + 1, &crc, &err) == -ENOENT);
    store_close(b);
    store_close(a);
    buf_free(&t->frames);
    free(t);
    buf_free(&all->frames);
    free(all);
}

int main(void)
{
    RUN(tail_matches_changes_since);
    return t_done();
}
