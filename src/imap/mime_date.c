/*
 * mime_date.c - the Date: field as seconds since the epoch, for SORT DATE
 * and SEARCH SENTBEFORE/SENTON/SENTSINCE.
 *
 * RFC 5322 section 3.3 with the obsolete forms of 4.3 and what mailers
 * really write: the day name optional and with or without its comma,
 * comments anywhere, seconds optional, two- and three-digit years, zone
 * names (military zones count as -0000 as RFC 5322 says), no zone at all
 * (UTC), and the asctime order "Mon Jan  2 15:04:05 2006". The value is
 * split into at most a few words, each classified once; anything that
 * does not give a day, month, year and time is -1.
 */
#include <string.h>
#include <strings.h>

#include "imap/mime_internal.h"

static int month_of(const uint8_t *p, size_t n)
{
    static const char *const mon[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                      "jul", "aug", "sep", "oct", "nov", "dec"};
    if (n < 3)
        return -1;
    for (int i = 0; i < 12; i++)
        if (strncasecmp((const char *)p, mon[i], 3) == 0)
            return i + 1;
    return -1;
}

/* Minutes east of UTC for a zone name; 0 for unknown names. */
static int zone_of(const uint8_t *p, size_t n)
{
    static const struct {
        const char *name;
        int min;
    } z[] = {{"UT", 0},         {"UTC", 0},        {"GMT", 0},        {"Z", 0},
             {"EST", -5 * 60},  {"EDT", -4 * 60},  {"CST", -6 * 60},  {"CDT", -5 * 60},
             {"MST", -7 * 60},  {"MDT", -6 * 60},  {"PST", -8 * 60},  {"PDT", -7 * 60}};
    for (size_t i = 0; i < sizeof(z) / sizeof(z[0]); i++)
        if (mime_name_eq(p, n, z[i].name))
            return z[i].min;
    return 0;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int64_t y, int m)
{
    static const int d[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return 29;
    return d[m - 1];
}

static int all_digits(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return n > 0;
}

static long num(const uint8_t *p, size_t n)
{
    long v = 0;
    for (size_t i = 0; i < n && i < 9; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

/* "hh:mm[:ss]" */
static int parse_time(const uint8_t *p, size_t n, int *h, int *mi, int *s)
{
    size_t i = 0;
    int v[3] = {0, 0, 0}, k = 0;
    while (k < 3) {
        size_t st = i;
        while (i < n && p[i] >= '0' && p[i] <= '9' && i - st < 2)
            v[k] = v[k] * 10 + (p[i++] - '0');
        if (i == st)
            return 0;
        k++;
        if (i == n)
            break;
        if (p[i] != ':')
            return 0;
        i++;
    }
    if (i != n || k < 2 || v[0] > 23 || v[1] > 59 || v[2] > 60)
        return 0;
    *h = v[0];
    *mi = v[1];
    *s = v[2];
    return 1;
}

static int64_t parse_date(const uint8_t *m, size_t off, size_t end)
{
    int day = -1, month = -1, h = -1, mi = 0, s = 0, zone = 0, have_zone = 0;
    long year = -1;
    int words = 0;
    size_t i = off;
    while (i < end && words < 12) {
        i = mime_skip_cfws(m, i, end);
        if (i < end && m[i] == ',') {
            i++;
            continue;
        }
        size_t st = i;
        while (i < end && !mime_is_wsp(m[i]) && m[i] != ',' && m[i] != '(')
            i++;
        if (i == st)
            break;
        words++;
        const uint8_t *w = m + st;
        size_t n = i - st;
        if (memchr(w, ':', n)) {
            if (h >= 0 || !parse_time(w, n, &h, &mi, &s))
                return -1;
        } else if ((w[0] == '+' || w[0] == '-') && n == 5 && all_digits(w + 1, 4)) {
            if (h < 0)
                return -1;
            int z = (int)num(w + 1, 2) * 60 + (int)num(w + 3, 2);
            zone = w[0] == '-' ? -z : z;
            have_zone = 1;
        } else if (all_digits(w, n)) {
            if (day < 0 && n <= 2)
                day = (int)num(w, n);
            else if (year < 0 && n <= 4)
                year = num(w, n);
            else
                return -1;
        } else if (month < 0 && month_of(w, n) > 0 && h < 0) {
            month = month_of(w, n);
        } else if (h >= 0 && !have_zone) {
            zone = zone_of(w, n);
            have_zone = 1;
        }
        /* else: a day name or noise; ignored */
    }
    if (day < 1 || month < 1 || year < 0 || h < 0)
        return -1;
    if (year < 50)
        year += 2000; /* RFC 5322 4.3 */
    else if (year < 1000)
        year += 1900;
    if (day > days_in_month(year, month))
        return -1;
    int64_t t = days_from_civil(year, month, day) * 86400 + (int64_t)h * 3600 + mi * 60 + s;
    return t - (int64_t)zone * 60;
}

int64_t mime_date(const mime_part *root, const char *msg)
{
    const uint8_t *m = (const uint8_t *)(msg ? msg : "");
    mime_span v;
    if (!mime_find_field(m, root ? root : mime_empty_tree(), "date", &v))
        return -1;
    return parse_date(m, v.off, v.off + v.len);
}
