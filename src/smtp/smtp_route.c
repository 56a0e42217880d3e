/*
 * smtp_route.c - where mail for a domain goes: a static route, else its
 * MX records (RFC 5321 5.1), else the domain's own address; see
 * smtp_client.h.
 *
 * DNS goes through libresolv with a resolver state of its own per call
 * (res_ninit), so delivery threads never share one. Answers are read with
 * ns_initparse/ns_parserr, which check every length against the packet.
 * NXDOMAIN is permanent (-ENOENT), SERVFAIL and timeouts temporary
 * (-EAGAIN); a null MX (RFC 7505) says the domain takes no mail.
 */
#include "smtp/smtp_client.h"

#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <netinet/in.h>
#include <netdb.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_MX 64

/* --- static routes --- */

static int is_host_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_';
}

/* A domain name: letters, digits, '-', '_' in dot-separated labels of 1..63
 * bytes, 253 bytes at most (a trailing dot allowed and not counted). */
static int valid_domain(const char *d, size_t n)
{
    if (n > 0 && d[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return 0;
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        if (d[i] == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if (!is_host_char(d[i]) || ++label > 63) {
            return 0;
        }
    }
    return label > 0;
}

static int same_domain(const char *a, size_t an, const char *b, size_t bn)
{
    if (an > 0 && a[an - 1] == '.')
        an--;
    if (bn > 0 && b[bn - 1] == '.')
        bn--;
    return an == bn && strncasecmp(a, b, an) == 0;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* Parses one "host[:port]" or "[literal][:port]" (p..end, trimmed). */
static int parse_hop(const char *p, const char *end, smtp_hop *h, hv_err *err)
{
    const char *hs, *he, *q;
    if (p < end && *p == '[') {
        hs = p + 1;
        he = memchr(hs, ']', (size_t)(end - hs));
        if (!he)
            return hv_err_set(err, -EINVAL, "relay_routes: missing ']' in \"%.*s\"",
                              (int)(end - p), p);
        q = he + 1;
        char tmp[64];
        unsigned char a[16];
        size_t n = (size_t)(he - hs);
        if (n == 0 || n >= sizeof(tmp))
            return hv_err_set(err, -EINVAL, "relay_routes: bad address in \"%.*s\"",
                              (int)(end - p), p);
        memcpy(tmp, hs, n);
        tmp[n] = 0;
        if (inet_pton(AF_INET6, tmp, a) != 1 && inet_pton(AF_INET, tmp, a) != 1)
            return hv_err_set(err, -EINVAL, "relay_routes: bad address \"%s\"", tmp);
    } else {
        hs = p;
        he = p;
        while (he < end && *he != ':')
            he++;
        q = he;
        if (he == hs || !valid_domain(hs, (size_t)(he - hs)))
            return hv_err_set(err, -EINVAL, "relay_routes: bad host in \"%.*s\"",
                              (int)(end - p), p);
    }
    if ((size_t)(he - hs) >= sizeof(h->host))
        return hv_err_set(err, -EINVAL, "relay_routes: host name too long");
    long port = 25;
    if (q < end) {
        if (*q != ':' || q + 1 >= end)
            return hv_err_set(err, -EINVAL, "relay_routes: bad port in \"%.*s\"",
                              (int)(end - p), p);
        port = 0;
        for (q++; q < end; q++) {
            if (*q < '0' || *q > '9' || port > 65535)
                return hv_err_set(err, -EINVAL, "relay_routes: bad port in \"%.*s\"",
                                  (int)(end - p), p);
            port = port * 10 + (*q - '0');
        }
        if (port < 1 || port > 65535)
            return hv_err_set(err, -EINVAL, "relay_routes: port out of range in \"%.*s\"",
                              (int)(end - p), p);
    }
    memcpy(h->host, hs, (size_t)(he - hs));
    h->host[he - hs] = 0;
    if (h->host[0] && h->host[strlen(h->host) - 1] == '.')
        h->host[strlen(h->host) - 1] = 0;
    h->port = (int)port;
    return 0;
}

/* Checks the whole table (a typo anywhere is reported whatever the
 * domain) and collects the hops of domain, or of "*" when it has none. */
static int static_routes(const char *domain, const char *routes, smtp_hop *out, size_t max,
                         hv_err *err)
{
    size_t nexact = 0, nstar = 0;
    smtp_hop star[8];
    const char *p = routes, *end = routes + strlen(routes);
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *e = comma ? comma : end;
        const char *s = skip_ws(p, e);
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        p = comma ? comma + 1 : end;
        if (s == t)
            continue; /* an empty entry, e.g. a trailing comma */
        const char *eq = memchr(s, '=', (size_t)(t - s));
        if (!eq)
            return hv_err_set(err, -EINVAL, "relay_routes: \"%.*s\" is not domain=host:port",
                              (int)(t - s), s);
        const char *de = eq;
        while (de > s && (de[-1] == ' ' || de[-1] == '\t'))
            de--;
        const char *hs = skip_ws(eq + 1, t);
        int is_star = de - s == 1 && *s == '*';
        if (!is_star && !valid_domain(s, (size_t)(de - s)))
            return hv_err_set(err, -EINVAL, "relay_routes: bad domain in \"%.*s\"",
                              (int)(t - s), s);
        if (hs == t)
            return hv_err_set(err, -EINVAL, "relay_routes: no host in \"%.*s\"", (int)(t - s),
                              s);
        smtp_hop h;
        int rc = parse_hop(hs, t, &h, err);
        if (rc < 0)
            return rc;
        if (is_star) {
            if (nstar < sizeof(star) / sizeof(star[0]))
                h.preference = (int)nstar, star[nstar++] = h;
        } else if (same_domain(s, (size_t)(de - s), domain, strlen(domain))) {
            if (nexact < max)
                h.preference = (int)nexact, out[nexact++] = h;
        }
    }
    if (nexact > 0)
        return (int)nexact;
    size_t n = nstar < max ? nstar : max;
    memcpy(out, star, n * sizeof(star[0]));
    return (int)n;
}

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3): 1 and the
 * address in h, 0 when domain is no literal, < 0 when it is a bad one. */
static int domain_literal(const char *domain, smtp_hop *h, hv_err *err)
{
    size_t n = strlen(domain);
    if (n < 2 || domain[0] != '[')
        return 0;
    char tmp[64];
    unsigned char a[16];
    const char *s = domain + 1;
    size_t k = n - 2;
    if (domain[n - 1] != ']' || k >= sizeof(tmp))
        return hv_err_set(err, -ENOENT, "bad address literal %s", domain);
    int v6 = k > 5 && strncasecmp(s, "IPv6:", 5) == 0;
    if (v6)
        s += 5, k -= 5;
    memcpy(tmp, s, k);
    tmp[k] = 0;
    if (inet_pton(v6 ? AF_INET6 : AF_INET, tmp, a) != 1)
        return hv_err_set(err, -ENOENT, "bad address literal %s", domain);
    snprintf(h->host, sizeof(h->host), "%s", tmp);
    h->port = 25;
    h->preference = 0;
    return 1;
}

/* --- DNS --- */

/* One query. Returns the answer's length, or -ENOENT (NXDOMAIN), -ENODATA
 * (the name exists, without records of that type), -EAGAIN. */
static int dns_query(res_state st, const char *name, int type, unsigned char *ans, int anslen,
                     hv_err *err)
{
    int len = res_nquery(st, name, ns_c_in, type, ans, anslen);
    const char *tn = type == ns_t_mx ? "MX" : type == ns_t_a ? "A" : "AAAA";
    if (len >= 0) {
        if (len < NS_HFIXEDSZ || ns_get16(ans + 6) == 0)
            return -ENODATA;
        return len;
    }
    switch (st->res_h_errno) {
    case HOST_NOT_FOUND:
        return hv_err_set(err, -ENOENT, "%s: no such domain", name);
    case NO_DATA:
        return -ENODATA;
    case TRY_AGAIN:
        return hv_err_set(err, -EAGAIN, "%s: DNS %s lookup failed for now (server failure or timeout)",
                          name, tn);
    default:
        return hv_err_set(err, -EAGAIN, "%s: DNS %s lookup failed (resolver refused or unusable)",
                          name, tn);
    }
}

typedef struct mx_rec {
    int pref;
    uint32_t shuffle;
    char host[256];
} mx_rec;

static int mx_cmp(const void *a, const void *b)
{
    const mx_rec *x = a, *y = b;
    if (x->pref != y->pref)
        return x->pref < y->pref ? -1 : 1;
    return x->shuffle < y->shuffle ? -1 : x->shuffle > y->shuffle;
}

/* Returns the number of usable MX records put in mx, -ENODATA when there
 * are none, -ENOENT for a null MX only. */
static int parse_mx(const char *domain, const unsigned char *ans, int len, mx_rec *mx,
                    hv_err *err)
{
    ns_msg msg;
    if (ns_initparse(ans, len, &msg) < 0)
        return hv_err_set(err, -EAGAIN, "%s: malformed DNS answer", domain);
    int count = ns_msg_count(msg, ns_s_an), n = 0, nulls = 0;
    for (int i = 0; i < count && n < MAX_MX; i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
            return hv_err_set(err, -EAGAIN, "%s: malformed DNS answer", domain);
        if (ns_rr_type(rr) != ns_t_mx || ns_rr_class(rr) != ns_c_in || ns_rr_rdlen(rr) < 3)
            continue;
        char name[NS_MAXDNAME];
        if (dn_expand(ns_msg_base(msg), ns_msg_end(msg), ns_rr_rdata(rr) + 2, name,
                      sizeof(name)) < 0)
            return hv_err_set(err, -EAGAIN, "%s: malformed MX record", domain);
        size_t nl = strlen(name);
        if (nl > 0 && name[nl - 1] == '.')
            name[--nl] = 0;
        if (nl == 0) {
            nulls++; /* RFC 7505 null MX: never a host to try */
            continue;
        }
        if (nl >= sizeof(mx[n].host) || !valid_domain(name, nl))
            continue;
        mx[n].pref = ns_get16(ns_rr_rdata(rr));
        mx[n].shuffle = arc4random();
        memcpy(mx[n].host, name, nl + 1);
        n++;
    }
    if (n == 0 && nulls > 0)
        return hv_err_set(err, -ENOENT, "%s: domain accepts no mail (null MX, RFC 7505)", domain);
    if (n == 0)
        return -ENODATA;
    qsort(mx, (size_t)n, sizeof(mx[0]), mx_cmp);
    return n;
}

/* The test suite's own DNS server, when set (see smtp_route_set_dns_server). */
static struct sockaddr_in dns_override;

void smtp_route_set_dns_server(const char *ipv4, int port)
{
    memset(&dns_override, 0, sizeof(dns_override));
    if (ipv4 && inet_pton(AF_INET, ipv4, &dns_override.sin_addr) == 1) {
        dns_override.sin_family = AF_INET;
        dns_override.sin_port = htons((uint16_t)port);
    }
}

static int dns_route(const char *domain, smtp_hop *out, size_t max, hv_err *err)
{
    struct __res_state st;
    memset(&st, 0, sizeof(st));
    if (res_ninit(&st) != 0)
        return hv_err_set(err, -EAGAIN, "%s: cannot initialise the DNS resolver", domain);
    if (dns_override.sin_family == AF_INET) {
        st.nsaddr_list[0] = dns_override;
        st.nscount = 1;
        st.retrans = 2;
        st.retry = 1;
    }
    int anslen = 65536;
    unsigned char *ans = malloc((size_t)anslen);
    mx_rec *mx = malloc(MAX_MX * sizeof(*mx));
    int rc;
    if (!ans || !mx) {
        rc = hv_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    rc = dns_query(&st, domain, ns_t_mx, ans, anslen, err);
    if (rc >= 0)
        rc = parse_mx(domain, ans, rc, mx, err);
    if (rc > 0) {
        size_t n = (size_t)rc < max ? (size_t)rc : max;
        for (size_t i = 0; i < n; i++) {
            snprintf(out[i].host, sizeof(out[i].host), "%s", mx[i].host);
            out[i].port = 25;
            out[i].preference = mx[i].pref;
        }
        rc = (int)n;
        goto out;
    }
    if (rc != -ENODATA)
        goto out;
    /* No MX: the domain itself is the host when it has an address
     * (RFC 5321 5.1); the client's getaddrinfo picks A or AAAA. */
    rc = dns_query(&st, domain, ns_t_a, ans, anslen, err);
    if (rc == -ENODATA)
        rc = dns_query(&st, domain, ns_t_aaaa, ans, anslen, err);
    if (rc == -ENODATA) {
        rc = hv_err_set(err, -ENOENT, "%s: no MX and no address", domain);
    } else if (rc >= 0) {
        snprintf(out[0].host, sizeof(out[0].host), "%s", domain);
        size_t l = strlen(out[0].host);
        if (l > 0 && out[0].host[l - 1] == '.')
            out[0].host[l - 1] = 0;
        out[0].port = 25;
        out[0].preference = 0;
        rc = 1;
    }
out:
    free(ans);
    free(mx);
    res_nclose(&st);
    return rc;
}

int smtp_route_lookup(const char *domain, const char *routes, smtp_hop *out, size_t max,
                      hv_err *err)
{
    if (max == 0)
        return hv_err_set(err, -EINVAL, "smtp_route_lookup: no room for hops");
    if (!domain)
        domain = "";
    size_t dl = strlen(domain);
    int literal = dl > 0 && domain[0] == '[';
    if (!literal && !valid_domain(domain, dl))
        return hv_err_set(err, -ENOENT, "\"%.100s\" is not a domain name", domain);
    smtp_hop lit;
    if (literal) {
        int rc = domain_literal(domain, &lit, err);
        if (rc < 0)
            return rc;
    }
    if (routes && routes[0]) {
        int n = static_routes(domain, routes, out, max, err);
        if (n != 0)
            return n;
    }
    if (literal) {
        out[0] = lit;
        return 1;
    }
    return dns_route(domain, out, max, err);
}
