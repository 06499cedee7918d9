"""Build the cffi binding to Debian's DPDK 22.11 (API mode, compiled against its headers).

rte_eth_rx_burst/rte_eth_tx_burst and the mbuf helpers are `static inline` in
DPDK's headers: an ABI-mode binding cannot call them, so a small C module
wraps them in real functions. Two loops live in C because in Python they
would cost more than the packets they move:
  - the generator (hp_gen_*): sends bursts of prebuilt mbufs (a frame is
    written into an mbuf once and the mbuf remembers it; per packet only a
    sequence number, a TSC stamp and the L4 checksum change), paced by the TSC;
  - the receiver (hp_rcv_*): finds the stamp in each frame and counts
    packets, duplicates, reordering and a latency histogram; it reads from a
    DPDK port or from an AF_PACKET socket, or, inside the generator's loop,
    from the generator's own port (the round trip: frames a peer sent back,
    timed by the one TSC that stamped them).

    python -m hpnlab.dpdk._build      # what `make setup` runs
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ..cbuild import build_main, compile_into

# The version changes with the C interface, so a build of an older one is never loaded.
MODULE = "_hpnlab_dpdk_v5"

# The structs Python reads, in both the cdef and the C source.
STRUCTS = r"""
struct hp_port_info {
    char driver[64];
    uint16_t max_rx_queues, max_tx_queues;
    uint16_t mtu;
    uint8_t mac[6];
    uint64_t rss_offloads;
};
struct hp_link { uint32_t speed_mbps; int up; int full_duplex; int autoneg; };
struct hp_stats {
    uint64_t ipackets, opackets, ibytes, obytes, imissed, ierrors, oerrors, rx_nombuf;
};
struct hp_rcv_counts {
    uint64_t frames, stamped, bytes, unique, dups, reordered, max_seq, late, kernel_drops;
    uint64_t lat_min_ns, lat_max_ns, lat_sum_ns;
};
"""

CDEF = STRUCTS + r"""
struct rte_mempool;
struct rte_mbuf;

int hp_eal_init(int argc, char **argv);
int hp_eal_cleanup(void);
const char *hp_strerror(int err);
int hp_errno(void);
uint64_t hp_tsc_hz(void);
uint64_t hp_tsc(void);

uint16_t hp_port_count(void);
int hp_port_valid(uint16_t port);
int hp_port_name(uint16_t port, char *name, unsigned cap);

int hp_port_info(uint16_t port, struct hp_port_info *out);
int hp_port_start(uint16_t port, uint16_t nrxq, uint16_t ntxq, uint16_t nrxd, uint16_t ntxd,
                  struct rte_mempool *pool, int rss);
int hp_port_stop(uint16_t port);

int hp_link(uint16_t port, struct hp_link *out);

int hp_stats(uint16_t port, struct hp_stats *out);
int hp_stats_reset(uint16_t port);
int hp_xstats(uint16_t port, char *names, uint64_t *values, unsigned cap);
#define HP_XSTAT_NAME ...

#define HP_HEADROOM ...
#define HP_DEFAULT_DATA_ROOM ...
struct rte_mempool *hp_pool_create(const char *name, unsigned n, unsigned cache, unsigned data_room);
void hp_pool_free(struct rte_mempool *pool);
unsigned hp_pool_avail(struct rte_mempool *pool);

uint16_t hp_rx_burst(uint16_t port, uint16_t q, struct rte_mbuf **bufs, uint16_t n);
uint16_t hp_tx_burst(uint16_t port, uint16_t q, struct rte_mbuf **bufs, uint16_t n);
int hp_rx_copy(uint16_t port, uint16_t q, uint8_t *out, unsigned each, unsigned *lens, unsigned n);
int hp_tx_copy(uint16_t port, uint16_t q, struct rte_mempool *pool,
               const uint8_t *data, const unsigned *lens, unsigned n);

#define HP_STAMP_LEN ...
#define HP_TMPL_MAX ...
typedef struct hp_gen hp_gen;
typedef struct hp_rcv hp_rcv;
hp_gen *hp_gen_new(uint16_t port, uint16_t queue, unsigned pool_size, unsigned burst);
int hp_gen_template(hp_gen *g, const uint8_t *frame, unsigned len, unsigned stamp_off,
                    int csum_off, uint32_t csum_base);
int hp_gen_schedule(hp_gen *g, const uint32_t *order, unsigned n);
void hp_gen_limits(hp_gen *g, double pps, uint64_t count, uint64_t first_seq);
int hp_gen_run(hp_gen *g, uint64_t until_tsc);
uint64_t hp_gen_sent(hp_gen *g);
uint64_t hp_gen_bytes(hp_gen *g);
uint64_t hp_gen_full(hp_gen *g);
uint64_t hp_gen_unsent(hp_gen *g);
uint64_t hp_gen_writes(hp_gen *g);
uint64_t hp_gen_patches(hp_gen *g);
void hp_gen_free(hp_gen *g);
void hp_gen_echo(hp_gen *g, hp_rcv *r, uint16_t queue);
void hp_gen_backoff(hp_gen *g, unsigned usec);

#define HP_HIST_SUB ...
#define HP_HIST_N ...
hp_rcv *hp_rcv_new(uint64_t expect, uint64_t tsc_hz);
void hp_rcv_want_dst(hp_rcv *r, const uint8_t *mac);
void hp_rcv_frame(hp_rcv *r, const uint8_t *frame, unsigned len, uint64_t now_tsc);
int hp_rcv_dpdk(hp_rcv *r, uint16_t port, uint16_t nq, uint64_t *per_queue, uint64_t until_tsc);
int hp_rcv_afpacket(hp_rcv *r, int fd, uint64_t until_tsc);
void hp_rcv_counts(hp_rcv *r, struct hp_rcv_counts *out);
int hp_rcv_hist(hp_rcv *r, uint64_t *out, unsigned n);
void hp_rcv_free(hp_rcv *r);
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <sys/socket.h>
#include <rte_common.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
""" + STRUCTS + r"""

/* ---- EAL ------------------------------------------------------------------------------ */

int hp_eal_init(int argc, char **argv)
{
    int r = rte_eal_init(argc, argv);
    return r < 0 ? -rte_errno : r;
}
int hp_eal_cleanup(void) { return rte_eal_cleanup(); }
const char *hp_strerror(int err) { return rte_strerror(err); }
int hp_errno(void) { return rte_errno; }
uint64_t hp_tsc_hz(void) { return rte_get_tsc_hz(); }
uint64_t hp_tsc(void) { return rte_rdtsc(); }

/* ---- ports ---------------------------------------------------------------------------- */

uint16_t hp_port_count(void) { return rte_eth_dev_count_avail(); }
int hp_port_valid(uint16_t port) { return rte_eth_dev_is_valid_port(port); }
int hp_port_name(uint16_t port, char *name, unsigned cap)
{
    char buf[RTE_ETH_NAME_MAX_LEN];
    int r = rte_eth_dev_get_name_by_port(port, buf);
    if (r < 0) return r;
    snprintf(name, cap, "%s", buf);
    return 0;
}


int hp_port_info(uint16_t port, struct hp_port_info *out)
{
    struct rte_eth_dev_info info;
    struct rte_ether_addr mac;
    int r = rte_eth_dev_info_get(port, &info);
    if (r < 0) return r;
    memset(out, 0, sizeof *out);
    snprintf(out->driver, sizeof out->driver, "%s", info.driver_name ? info.driver_name : "?");
    out->max_rx_queues = info.max_rx_queues;
    out->max_tx_queues = info.max_tx_queues;
    out->rss_offloads = info.flow_type_rss_offloads;
    if (rte_eth_dev_get_mtu(port, &out->mtu) < 0) out->mtu = 1500;
    if (rte_eth_macaddr_get(port, &mac) == 0) memcpy(out->mac, mac.addr_bytes, 6);
    return 0;
}

/* Configure N RX and N TX queues, RSS over IP/TCP/UDP when asked and offered, start,
 * promiscuous (a generator's peer sends to MACs the port does not own). */
int hp_port_start(uint16_t port, uint16_t nrxq, uint16_t ntxq, uint16_t nrxd, uint16_t ntxd,
                  struct rte_mempool *pool, int rss)
{
    struct rte_eth_conf conf;
    struct rte_eth_dev_info info;
    int r = rte_eth_dev_info_get(port, &info);
    if (r < 0) return r;
    if (nrxq > info.max_rx_queues || ntxq > info.max_tx_queues) return -EINVAL;
    memset(&conf, 0, sizeof conf);
    if (rss && nrxq > 1 && info.flow_type_rss_offloads) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = (RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP)
                                           & info.flow_type_rss_offloads;
    }
    r = rte_eth_dev_configure(port, nrxq, ntxq, &conf);
    if (r < 0) return r;
    r = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrxd, &ntxd);
    if (r < 0) return r;
    int socket = rte_eth_dev_socket_id(port);
    if (socket < 0) socket = 0;
    for (uint16_t q = 0; q < nrxq; q++)
        if ((r = rte_eth_rx_queue_setup(port, q, nrxd, socket, NULL, pool)) < 0) return r;
    for (uint16_t q = 0; q < ntxq; q++)
        if ((r = rte_eth_tx_queue_setup(port, q, ntxd, socket, NULL)) < 0) return r;
    r = rte_eth_dev_start(port);
    if (r < 0) return r;
    rte_eth_promiscuous_enable(port);          /* -ENOTSUP on some vdevs: harmless */
    return 0;
}

int hp_port_stop(uint16_t port)
{
    int r = rte_eth_dev_stop(port);
    int c = rte_eth_dev_close(port);
    return r < 0 ? r : c;
}


int hp_link(uint16_t port, struct hp_link *out)
{
    struct rte_eth_link l;
    int r = rte_eth_link_get_nowait(port, &l);
    if (r < 0) return r;
    out->speed_mbps = l.link_speed == RTE_ETH_SPEED_NUM_UNKNOWN ? 0 : l.link_speed;
    out->up = l.link_status;
    out->full_duplex = l.link_duplex;
    out->autoneg = l.link_autoneg;
    return 0;
}


int hp_stats(uint16_t port, struct hp_stats *out)
{
    struct rte_eth_stats s;
    int r = rte_eth_stats_get(port, &s);
    if (r < 0) return r;
    out->ipackets = s.ipackets; out->opackets = s.opackets;
    out->ibytes = s.ibytes; out->obytes = s.obytes;
    out->imissed = s.imissed; out->ierrors = s.ierrors; out->oerrors = s.oerrors;
    out->rx_nombuf = s.rx_nombuf;
    return 0;
}
int hp_stats_reset(uint16_t port) { return rte_eth_stats_reset(port); }

#define HP_XSTAT_NAME RTE_ETH_XSTATS_NAME_SIZE
/* names: cap * HP_XSTAT_NAME bytes; returns how many there are (may exceed cap: call again). */
int hp_xstats(uint16_t port, char *names, uint64_t *values, unsigned cap)
{
    int n = rte_eth_xstats_get_names(port, NULL, 0);
    if (n < 0 || (unsigned)n > cap) return n;
    struct rte_eth_xstat_name *nm = calloc(n ? n : 1, sizeof *nm);
    struct rte_eth_xstat *xs = calloc(n ? n : 1, sizeof *xs);
    int r = -ENOMEM;
    if (nm && xs) {
        r = rte_eth_xstats_get_names(port, nm, n);
        if (r >= 0) r = rte_eth_xstats_get(port, xs, n);
        if (r >= 0) {
            if (r > n) r = n;
            for (int i = 0; i < r; i++) {
                memcpy(names + (size_t)i * HP_XSTAT_NAME, nm[xs[i].id].name, HP_XSTAT_NAME);
                values[i] = xs[i].value;
            }
        }
    }
    free(nm); free(xs);
    return r;
}

/* ---- mbufs ---------------------------------------------------------------------------- */

#define HP_HEADROOM RTE_PKTMBUF_HEADROOM
#define HP_DEFAULT_DATA_ROOM RTE_MBUF_DEFAULT_BUF_SIZE
/* data_room: headroom + the longest frame an mbuf holds (RTE_MBUF_DEFAULT_BUF_SIZE: 2 KiB) */
struct rte_mempool *hp_pool_create(const char *name, unsigned n, unsigned cache, unsigned data_room)
{
    if (data_room > UINT16_MAX) { rte_errno = EINVAL; return NULL; }
    return rte_pktmbuf_pool_create(name, n, cache, 0, (uint16_t)data_room, rte_socket_id());
}
void hp_pool_free(struct rte_mempool *pool) { rte_mempool_free(pool); }
unsigned hp_pool_avail(struct rte_mempool *pool) { return rte_mempool_avail_count(pool); }

uint16_t hp_rx_burst(uint16_t port, uint16_t q, struct rte_mbuf **bufs, uint16_t n)
{ return rte_eth_rx_burst(port, q, bufs, n); }
uint16_t hp_tx_burst(uint16_t port, uint16_t q, struct rte_mbuf **bufs, uint16_t n)
{ return rte_eth_tx_burst(port, q, bufs, n); }

/* Receive up to n frames, copy frame i to out + i*each (cut at `each`), its length to lens[i]. */
int hp_rx_copy(uint16_t port, uint16_t q, uint8_t *out, unsigned each, unsigned *lens, unsigned n)
{
    struct rte_mbuf *m[64];
    if (n > 64) n = 64;
    uint16_t got = rte_eth_rx_burst(port, q, m, n);
    for (uint16_t i = 0; i < got; i++) {
        unsigned len = rte_pktmbuf_pkt_len(m[i]);
        unsigned take = len < each ? len : each;
        const void *p = rte_pktmbuf_read(m[i], 0, take, out + (size_t)i * each);
        if (p && p != out + (size_t)i * each) memcpy(out + (size_t)i * each, p, take);
        lens[i] = len;
        rte_pktmbuf_free(m[i]);
    }
    return got;
}

/* Send n frames laid end to end in data; returns how many the queue took. */
int hp_tx_copy(uint16_t port, uint16_t q, struct rte_mempool *pool,
               const uint8_t *data, const unsigned *lens, unsigned n)
{
    struct rte_mbuf *m[64];
    if (n > 64) n = 64;
    if (rte_pktmbuf_alloc_bulk(pool, m, n) < 0) return -ENOBUFS;
    size_t off = 0;
    for (unsigned i = 0; i < n; i++) {
        char *p = rte_pktmbuf_append(m[i], lens[i]);
        if (!p) { rte_pktmbuf_free_bulk(m, n); return -EMSGSIZE; }
        memcpy(p, data + off, lens[i]);
        *(int32_t *)rte_mbuf_to_priv(m[i]) = -1;
        off += lens[i];
    }
    uint16_t sent = rte_eth_tx_burst(port, q, m, n);
    if (sent < n) rte_pktmbuf_free_bulk(m + sent, n - sent);
    return sent;
}

/* ---- the stamp ------------------------------------------------------------------------ */

/* At the start of the L4 payload: magic, sequence number, sender's TSC (unaligned, host order). */
#define HP_MAGIC 0x4c4e5048u            /* "HPNL" little-endian */
#define HP_STAMP_LEN 20
#define HP_TMPL_MAX 2048

/* ---- generator ------------------------------------------------------------------------ */

typedef struct hp_gen hp_gen;
typedef struct hp_rcv hp_rcv;

/* Templates of one frame size form a group with its own mempool; within a group the
 * templates differ only in [lo, hi) (the flows' ports and checksums). Every mbuf
 * remembers which template it holds, so a frame is written into an
 * mbuf once: an mbuf that comes back from the pool holding another flow of its size
 * gets those few bytes rewritten, one holding the same template nothing. Freed mbufs go
 * back to the pool as usual (no reference counting: an atomic per packet cost a third
 * of the time on net_null). */
#define HP_GROUPS 16
struct hp_tmpl { unsigned len, stamp_off; int csum_off; uint32_t csum_base; uint8_t *data; unsigned group; };
struct hp_group { unsigned len, lo, hi; struct rte_mempool *pool; };

struct hp_gen {
    uint16_t port, queue;
    unsigned burst, pool_size, id;
    struct hp_tmpl *t; unsigned nt;
    struct hp_group grp[HP_GROUPS]; unsigned ngrp;
    uint32_t *order; unsigned norder, next;  /* which template the k-th packet uses */
    double tsc_per_pkt;                      /* 0: as fast as the queue takes them */
    uint64_t count, first_seq, seq;          /* count 0: no limit */
    uint64_t start_tsc, sent, bytes, full, unsent, writes, patches;
    hp_rcv *echo; uint16_t echo_q;           /* frames coming back, counted while sending */
    struct timespec backoff;                 /* sleep this long when the TX ring is full (0: spin) */
};

static void hp_rcv_mbufs(hp_rcv *r, struct rte_mbuf **m, uint16_t n, uint64_t now);

static unsigned hp_gen_ids;

hp_gen *hp_gen_new(uint16_t port, uint16_t queue, unsigned pool_size, unsigned burst)
{
    hp_gen *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->port = port; g->queue = queue; g->pool_size = pool_size;
    g->burst = burst < 1 ? 1 : burst > 512 ? 512 : burst;
    g->id = hp_gen_ids++;
    return g;
}

/* The tag lives in the mbuf's RX hash field, on the first cache line that every packet
 * touches anyway: a TX-only pool's mbufs never carry a hash, and nothing resets it. */
#define HP_TAG(m) (*(int32_t *)&(m)->hash.usr)

static void hp_tag_none(struct rte_mempool *mp, void *arg, void *obj, unsigned idx)
{
    (void)mp; (void)arg; (void)idx;
    HP_TAG((struct rte_mbuf *)obj) = -1;
}

/* The template's checksum field is 0 and its stamp area zero; csum_base is the unfolded
 * ones-complement sum of what the checksum covers (pseudo-header included) as it is. */
int hp_gen_template(hp_gen *g, const uint8_t *frame, unsigned len, unsigned stamp_off,
                    int csum_off, uint32_t csum_base)
{
    if (g->order || len > HP_TMPL_MAX || len < 14 || stamp_off + HP_STAMP_LEN > len || (stamp_off & 1))
        return -EINVAL;
    unsigned gi = 0;
    while (gi < g->ngrp && g->grp[gi].len != len) gi++;
    if (gi == HP_GROUPS) return -E2BIG;
    struct hp_tmpl *t = realloc(g->t, (g->nt + 1) * sizeof *t);
    if (!t) return -ENOMEM;
    g->t = t;
    t = &g->t[g->nt];
    t->data = malloc(len);
    if (!t->data) return -ENOMEM;
    memcpy(t->data, frame, len);
    t->len = len; t->stamp_off = stamp_off; t->csum_off = csum_off; t->csum_base = csum_base;
    t->group = gi;
    struct hp_group *gr = &g->grp[gi];
    if (gi == g->ngrp) {                      /* the first of its size */
        g->ngrp++;
        gr->len = len; gr->lo = len; gr->hi = 0; gr->pool = NULL;
    } else {
        const uint8_t *first = NULL;
        for (unsigned i = 0; i < g->nt && !first; i++) if (g->t[i].group == gi) first = g->t[i].data;
        for (unsigned b = 0; b < len; b++)
            if (frame[b] != first[b]) { if (b < gr->lo) gr->lo = b; if (b + 1 > gr->hi) gr->hi = b + 1; }
    }
    return (int)g->nt++;
}

/* The schedule; creates each size's mempool. */
int hp_gen_schedule(hp_gen *g, const uint32_t *order, unsigned n)
{
    if (!n || g->order) return -EINVAL;
    for (unsigned i = 0; i < n; i++) if (order[i] >= g->nt) return -EINVAL;
    g->order = malloc(n * sizeof *order);
    if (!g->order) return -ENOMEM;
    memcpy(g->order, order, n * sizeof *order);
    g->norder = n;
    for (unsigned gi = 0; gi < g->ngrp; gi++) {
        char name[RTE_MEMPOOL_NAMESIZE];
        snprintf(name, sizeof name, "hpgen%u_%u", g->id, gi);
        g->grp[gi].pool = rte_pktmbuf_pool_create(name, g->pool_size, 256, 0,
                                                  RTE_MBUF_DEFAULT_BUF_SIZE, rte_socket_id());
        if (!g->grp[gi].pool) return -rte_errno;
        rte_mempool_obj_iter(g->grp[gi].pool, hp_tag_none, NULL);
    }
    return 0;
}

void hp_gen_limits(hp_gen *g, double pps, uint64_t count, uint64_t first_seq)
{
    g->tsc_per_pkt = pps > 0 ? (double)rte_get_tsc_hz() / pps : 0;
    g->count = count; g->first_seq = g->seq = first_seq;
    g->start_tsc = 0; g->sent = g->bytes = g->full = g->unsent = 0;
}

/* Write template k into mbuf b (or only what differs from the template it holds) and
 * stamp it with seq and tsc. */
static inline void hp_fill(hp_gen *g, struct rte_mbuf *b, uint32_t k, uint64_t seq, uint64_t tsc)
{
    struct hp_tmpl *t = &g->t[k];
    int32_t *tag = &HP_TAG(b);
    uint8_t *p = rte_pktmbuf_mtod(b, uint8_t *);
    if (*tag != (int32_t)k) {
        struct hp_group *gr = &g->grp[t->group];
        if (*tag < 0) { memcpy(p, t->data, t->len); g->writes++; }
        else { memcpy(p + gr->lo, t->data + gr->lo, gr->hi - gr->lo); g->patches++; }
        *tag = (int32_t)k;
    }
    b->data_len = (uint16_t)t->len;
    b->pkt_len = t->len;
    b->ol_flags = 0;
    uint8_t *s = p + t->stamp_off;
    uint32_t magic = HP_MAGIC;
    memcpy(s, &magic, 4);
    memcpy(s + 4, &seq, 8);
    memcpy(s + 12, &tsc, 8);
    if (t->csum_off >= 0) {
        /* the stamp's words summed in host order; byte-swapping the folded sum gives the
         * network-order sum (RFC 1071: the sum does not depend on byte order) */
        uint64_t h = (uint64_t)(magic & 0xffff) + (magic >> 16)
                   + (seq & 0xffffffff) + (seq >> 32) + (tsc & 0xffffffff) + (tsc >> 32);
        while (h >> 16) h = (h & 0xffff) + (h >> 16);
        uint32_t sum = t->csum_base + (uint32_t)rte_bswap16((uint16_t)h);
        while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
        uint16_t c = (uint16_t)~sum;
        if (c == 0) c = 0xffff;              /* UDP: 0 means "no checksum" */
        p[t->csum_off] = c >> 8;
        p[t->csum_off + 1] = c & 0xff;
    }
}

/* With the TX ring full: sleep if asked. An emulated NIC's device model (QEMU) drains the
 * ring on the host's CPUs, which a guest spinning on its vCPU competes with. */
static inline void hp_gen_wait(hp_gen *g)
{
    if (g->backoff.tv_nsec) nanosleep(&g->backoff, NULL);
}
void hp_gen_backoff(hp_gen *g, unsigned usec)
{
    if (usec > 999999) usec = 999999;
    g->backoff.tv_sec = 0;
    g->backoff.tv_nsec = (long)usec * 1000;
}

/* Send until the count is reached or the TSC passes until_tsc (the caller calls again:
 * a slice at a time, so Python sees signals). 1: done (count reached), 0: time slice over. */
int hp_gen_run(hp_gen *g, uint64_t until_tsc)
{
    struct rte_mbuf *m[512];
    if (!g->order) return -EINVAL;
    if (!g->start_tsc) g->start_tsc = rte_rdtsc();
    /* looked up once: rte_lcore_id() in a shared object is a __tls_get_addr call */
    struct rte_mempool_cache *cache = rte_mempool_default_cache(g->grp[0].pool, rte_lcore_id());
    for (;;) {
        uint64_t now = rte_rdtsc();
        if (g->echo) {
            struct rte_mbuf *back[64];
            uint16_t got = rte_eth_rx_burst(g->port, g->echo_q, back, 64);
            if (got) hp_rcv_mbufs(g->echo, back, got, rte_rdtsc());
        }
        if (g->count && g->sent >= g->count) return 1;
        if (now >= until_tsc) return 0;
        unsigned n = g->burst;
        if (g->count && g->count - g->sent < n) n = (unsigned)(g->count - g->sent);
        if (g->tsc_per_pkt > 0) {
            /* the burst goes when its first packet is due */
            uint64_t due = g->start_tsc + (uint64_t)((double)g->sent * g->tsc_per_pkt);
            if (now < due) { rte_pause(); continue; }
        }
        unsigned at = g->next, k = 0;
        /* A freed mbuf is back in its pool with one segment, no next, reference count 1
         * (rte_pktmbuf_prefree_seg) and the data offset the generator never moves: the
         * raw get skips rte_pktmbuf_reset, as testpmd's txonly does. */
        if (g->ngrp == 1) {
            if (rte_mempool_generic_get(g->grp[0].pool, (void **)m, n, cache) == 0) k = n;
        } else {
            for (; k < n; k++) {
                unsigned i = (at + k) % g->norder;
                if (rte_mempool_get(g->grp[g->t[g->order[i]].group].pool, (void **)&m[k]) < 0) break;
            }
        }
        if (!k) {                                           /* the driver holds every mbuf */
            rte_eth_tx_done_cleanup(g->port, g->queue, 0);  /* drivers that free on completion */
            g->full++;
            hp_gen_wait(g);
            continue;
        }
        uint32_t len[512];
        for (unsigned i = 0; i < k; i++) {
            hp_fill(g, m[i], g->order[at], g->seq + i, now);
            len[i] = g->t[g->order[at]].len;
            if (++at == g->norder) at = 0;
        }
        uint16_t sent = rte_eth_tx_burst(g->port, g->queue, m, (uint16_t)k);
        if (sent < k) {
            /* the ring is full: the unsent tail goes back and its sequence numbers are used
             * again, so every number a receiver may see was sent exactly once */
            rte_pktmbuf_free_bulk(m + sent, k - sent);
            g->full++;
            g->unsent += k - sent;
            hp_gen_wait(g);
        }
        for (unsigned i = 0; i < sent; i++) g->bytes += len[i];
        g->next = (g->next + sent) % g->norder;
        g->seq += sent;
        g->sent += sent;
    }
}

uint64_t hp_gen_sent(hp_gen *g) { return g->sent; }
uint64_t hp_gen_bytes(hp_gen *g) { return g->bytes; }
uint64_t hp_gen_full(hp_gen *g) { return g->full; }
uint64_t hp_gen_unsent(hp_gen *g) { return g->unsent; }
uint64_t hp_gen_writes(hp_gen *g) { return g->writes; }
uint64_t hp_gen_patches(hp_gen *g) { return g->patches; }
/* Count the frames arriving on RX queue `queue` of the generator's port with r while
 * sending (polled before every burst). */
void hp_gen_echo(hp_gen *g, hp_rcv *r, uint16_t queue) { g->echo = r; g->echo_q = queue; }
void hp_gen_free(hp_gen *g)
{
    if (!g) return;
    for (unsigned i = 0; i < g->nt; i++) free(g->t[i].data);
    /* the pools stay: mbufs may still sit in a TX ring; EAL gives them back at exit */
    free(g->t); free(g->order); free(g);
}

/* ---- receiver ------------------------------------------------------------------------- */

/* Latency histogram, log-linear: values < HP_HIST_SUB ns exact, then HP_HIST_SUB buckets
 * per power of two (about 6 % wide). */
#define HP_HIST_SUB 16
#define HP_HIST_N (64 * HP_HIST_SUB)


struct hp_rcv {
    struct hp_rcv_counts c;
    uint8_t *seen; uint64_t cap;            /* one bit a sequence number */
    uint64_t next;                          /* highest sequence number seen + 1 */
    double ns_per_tsc;
    uint64_t hz;
    uint8_t dst[6]; int want_dst;           /* count only frames sent to this MAC */
    uint64_t hist[HP_HIST_N];
};

/* Count only frames whose destination is `mac` (a round trip's receiver on the sending
 * port: AF_PACKET devices also show a port the frames it sent itself). */
void hp_rcv_want_dst(hp_rcv *r, const uint8_t *mac) { memcpy(r->dst, mac, 6); r->want_dst = 1; }

hp_rcv *hp_rcv_new(uint64_t expect, uint64_t tsc_hz)
{
    hp_rcv *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->cap = expect < (1u << 20) ? (1u << 20) : expect;
    r->seen = calloc(r->cap / 8 + 1, 1);
    if (!r->seen) { free(r); return NULL; }
    r->hz = tsc_hz;
    r->ns_per_tsc = 1e9 / (double)tsc_hz;
    r->c.lat_min_ns = UINT64_MAX;
    return r;
}

static unsigned hp_hist_index(uint64_t v)
{
    if (v < HP_HIST_SUB) return (unsigned)v;
    unsigned msb = 63 - __builtin_clzll(v);         /* >= 4 */
    unsigned sub = (unsigned)(v >> (msb - 4)) & (HP_HIST_SUB - 1);
    unsigned idx = (msb - 3) * HP_HIST_SUB + sub;
    return idx < HP_HIST_N ? idx : HP_HIST_N - 1;
}

static int hp_grow(hp_rcv *r, uint64_t seq)
{
    uint64_t cap = r->cap;
    while (cap <= seq) cap *= 2;
    uint8_t *s = realloc(r->seen, cap / 8 + 1);
    if (!s) return -1;
    memset(s + r->cap / 8 + 1, 0, cap / 8 - r->cap / 8);
    r->seen = s; r->cap = cap;
    return 0;
}

void hp_rcv_frame(hp_rcv *r, const uint8_t *f, unsigned len, uint64_t now)
{
    r->c.frames++;
    r->c.bytes += len;
    unsigned off = 14;
    if (len < off + 20) return;
    if (r->want_dst && memcmp(f, r->dst, 6) != 0) return;
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    if (type == 0x8100) { off += 4; type = (uint16_t)(f[16] << 8 | f[17]); }
    if (type != 0x0800 || len < off + 20) return;
    unsigned ihl = (f[off] & 0x0f) * 4u;
    uint8_t proto = f[off + 9];
    off += ihl;
    if (proto == 17 || proto == 1) off += 8;
    else if (proto == 6) { if (len < off + 13) return; off += (f[off + 12] >> 4) * 4u; }
    else return;
    if (len < off + HP_STAMP_LEN) return;
    uint32_t magic; uint64_t seq, tsc;
    memcpy(&magic, f + off, 4);
    if (magic != HP_MAGIC) return;
    memcpy(&seq, f + off + 4, 8);
    memcpy(&tsc, f + off + 12, 8);
    r->c.stamped++;
    if (seq >= r->cap && hp_grow(r, seq) < 0) { r->c.late++; return; }
    uint8_t bit = (uint8_t)(1u << (seq & 7));
    if (r->seen[seq >> 3] & bit) { r->c.dups++; return; }
    r->seen[seq >> 3] |= bit;
    r->c.unique++;
    if (seq + 1 < r->next) r->c.reordered++;
    else r->next = seq + 1;
    if (now >= tsc) {
        uint64_t ns = (uint64_t)((double)(now - tsc) * r->ns_per_tsc);
        r->hist[hp_hist_index(ns)]++;
        if (ns < r->c.lat_min_ns) r->c.lat_min_ns = ns;
        if (ns > r->c.lat_max_ns) r->c.lat_max_ns = ns;
        r->c.lat_sum_ns += ns;
    }
}

/* Poll RX queues 0..nq-1 in turn (one lcore for all: the course's 多队列 picture is
 * which queue each flow lands in, counted in per_queue[q]). */
int hp_rcv_dpdk(hp_rcv *r, uint16_t port, uint16_t nq, uint64_t *per_queue, uint64_t until_tsc)
{
    struct rte_mbuf *m[64];
    int total = 0;
    uint16_t q = 0;
    for (;;) {
        uint64_t now = rte_rdtsc();
        if (now >= until_tsc) return total;
        if (++q >= nq) q = 0;
        uint16_t n = rte_eth_rx_burst(port, q, m, 64);
        if (!n) { rte_pause(); continue; }
        per_queue[q] += n;
        hp_rcv_mbufs(r, m, n, rte_rdtsc());
        total += n;
    }
}

/* Count a burst of received mbufs and free them. */
static void hp_rcv_mbufs(hp_rcv *r, struct rte_mbuf **m, uint16_t n, uint64_t now)
{
    for (uint16_t i = 0; i < n; i++) {
        struct rte_mbuf *b = m[i];
        if (b->nb_segs == 1)
            hp_rcv_frame(r, rte_pktmbuf_mtod(b, uint8_t *), b->data_len, now);
        else {
            uint8_t tmp[128];
            unsigned take = b->pkt_len < sizeof tmp ? b->pkt_len : sizeof tmp;
            const uint8_t *p = rte_pktmbuf_read(b, 0, take, tmp);
            if (p) hp_rcv_frame(r, p, take, now);
        }
    }
    rte_pktmbuf_free_bulk(m, n);
}

/* An AF_PACKET socket bound to the receiving NIC: recvmmsg in batches, frames the host
 * itself sent (PACKET_OUTGOING) skipped. Returns frames read, or -errno. */
int hp_rcv_afpacket(hp_rcv *r, int fd, uint64_t until_tsc)
{
    enum { B = 64, SNAP = 128 };
    static uint8_t buf[B][SNAP];
    struct mmsghdr msgs[B];
    struct iovec iov[B];
    struct sockaddr_ll from[B];
    int total = 0;
    uint64_t hz = r->hz;
    for (;;) {
        uint64_t now = rte_rdtsc();
        if (now >= until_tsc) return total;
        int wait_ms = (int)((until_tsc - now) * 1000 / hz) + 1;
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int pr = poll(&pfd, 1, wait_ms > 100 ? 100 : wait_ms);
        if (pr < 0) return errno == EINTR ? total : -errno;
        if (pr == 0) continue;
        for (int i = 0; i < B; i++) {
            iov[i].iov_base = buf[i]; iov[i].iov_len = SNAP;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i]; msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(fd, msgs, B, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (n < 0) { if (errno == EAGAIN || errno == EINTR) continue; return -errno; }
        now = rte_rdtsc();
        for (int i = 0; i < n; i++) {
            if (from[i].sll_pkttype == PACKET_OUTGOING) continue;
            unsigned len = msgs[i].msg_len;
            r->c.bytes += len > SNAP ? len - SNAP : 0;     /* what the snap cut off */
            hp_rcv_frame(r, buf[i], len < SNAP ? len : SNAP, now);
        }
        total += n;
    }
}

void hp_rcv_counts(hp_rcv *r, struct hp_rcv_counts *out)
{
    *out = r->c;
    out->max_seq = r->next;
    if (out->lat_min_ns == UINT64_MAX) out->lat_min_ns = 0;
}

int hp_rcv_hist(hp_rcv *r, uint64_t *out, unsigned n)
{
    if (n > HP_HIST_N) n = HP_HIST_N;
    memcpy(out, r->hist, n * sizeof *out);
    return (int)n;
}

void hp_rcv_free(hp_rcv *r) { if (r) { free(r->seen); free(r); } }
"""


def build_dir() -> Path:
    return Path(__file__).resolve().parent


def pkg_config(*args: str) -> list[str]:
    if not shutil.which("pkg-config"):
        raise RuntimeError("pkg-config not found: install pkg-config (`make setup` does)")
    proc = subprocess.run(["pkg-config", *args, "libdpdk"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("DPDK's development files not found (pkg-config libdpdk): "
                           "install libdpdk-dev (`make setup` does)")
    return shlex.split(proc.stdout)


def build(target_dir: Path | None = None, verbose: bool = False) -> Path:
    """Compile the module into the package (or `target_dir`); return the .so path."""
    from cffi import FFI
    cflags = pkg_config("--cflags")
    # Only the libraries the shim calls (pkg-config --libs names ~50; the PMDs are plugins EAL loads).
    libs = ["rte_ethdev", "rte_mbuf", "rte_mempool", "rte_eal", "rte_ring", "rte_net"]
    if not (shutil.which("gcc") or shutil.which("cc")):
        raise RuntimeError("no C compiler: install gcc (`make setup` does)")
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=libs, extra_compile_args=["-O2", *cflags])
    return compile_into(ffi, MODULE, target_dir or build_dir(), verbose)


if __name__ == "__main__":
    sys.exit(build_main("hpnlab.dpdk", build))
