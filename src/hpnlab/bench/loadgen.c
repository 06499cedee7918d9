/*
 * hpnlab-loadgen: a small epoll load generator for echo-style servers.
 *
 * No Debian package drives a plain echo server (tcpkali is not packaged,
 * sockperf only talks to its own server), so hpnlab builds this one.
 * One thread, level-triggered epoll, non-blocking sockets. Each connection
 * keeps `depth` messages of `size` bytes in flight; a message is complete
 * when `size` more bytes have come back, and its latency (send start ->
 * last byte back) goes into an HDR-style log-linear histogram.
 *
 *   hpnlab-loadgen -H 127.0.0.1 -p 7000 -c 100 -s 64 -d 1 -t 5 -w 1
 *
 * Progress markers go to stderr ("# connected", "# measuring", "# done") so
 * a runner can sample the server exactly around the measured window; after
 * "# done" the connections stay open for -L seconds (default 0.5) so the
 * server can be sampled loaded. The result is one JSON object on stdout. The client's own CPU use over the
 * window is reported so a reader can see it is not the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- HDR-style histogram: 128 exact values, then 64 sub-buckets per power of two ---- */
#define SUB_BITS 6
#define SUB (1u << SUB_BITS)
#define NBUCKETS (2 * SUB + 40 * SUB)

static uint64_t hist[NBUCKETS];

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * SUB)
        return (unsigned)v;
    unsigned msb = 63 - __builtin_clzll(v);
    unsigned shift = msb - SUB_BITS;
    unsigned idx = 2 * SUB + (shift - 1) * SUB + (unsigned)((v >> shift) - SUB);
    return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

/* Middle of the bucket's value range (its error is < 1/128 of the value). */
static double bucket_value(unsigned idx)
{
    if (idx < 2 * SUB)
        return idx;
    unsigned shift = (idx - 2 * SUB) / SUB + 1;
    uint64_t top = (idx - 2 * SUB) % SUB + SUB;
    uint64_t lo = top << shift;
    return (double)lo + (double)((1ull << shift) - 1) / 2.0;
}

static double percentile(uint64_t total, double q)
{
    if (total == 0)
        return 0;
    uint64_t want = (uint64_t)(q * (double)total);
    if (want >= total)
        want = total - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        seen += hist[i];
        if (seen > want)
            return bucket_value(i);
    }
    return bucket_value(NBUCKETS - 1);
}

/* ---- connections ---- */
enum { C_IDLE, C_CONNECTING, C_OPEN, C_DEAD };

struct conn {
    int fd;
    int state;
    unsigned want_out;   /* EPOLLOUT registered */
    uint64_t sent;       /* messages whose first byte was written */
    uint64_t done;       /* messages fully echoed back */
    uint32_t woff;       /* bytes of the current message already written */
    uint64_t rbytes;     /* bytes received in total */
    uint64_t *ts;        /* send-start time of each in-flight message, ring of `depth` */
};

static struct {
    const char *host;
    int port, conns, size, depth, max_connecting;
    double duration, warmup, connect_timeout, linger;
} opt = {"127.0.0.1", 7000, 10, 64, 1, 256, 5.0, 1.0, 30.0, 0.5};

static int epfd;
static struct conn *C;
static char *wbuf, *rbuf;
static const size_t RBUF = 1 << 16;
static uint64_t requests, bytes_in, errors, closed_by_peer, connect_errors;
static int measuring, traffic;
static struct sockaddr_in addr;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void ctl(struct conn *c, int op, uint32_t ev)
{
    struct epoll_event e = {.events = ev, .data.u32 = (uint32_t)(c - C)};
    if (epoll_ctl(epfd, op, c->fd, &e) < 0 && op != EPOLL_CTL_DEL) {
        perror("epoll_ctl");
        exit(2);
    }
}

static void kill_conn(struct conn *c, int by_peer)
{
    if (c->state == C_DEAD)
        return;
    if (c->state == C_CONNECTING)
        connect_errors++;
    else if (by_peer)
        closed_by_peer++;
    else
        errors++;
    close(c->fd);
    c->state = C_DEAD;
}

static int start_connect(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("socket");
        exit(2);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = C_CONNECTING;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        kill_conn(c, 0);
        return -1;
    }
    ctl(c, EPOLL_CTL_ADD, EPOLLOUT);
    return 0;
}

/* Write until `depth` messages are in flight or the socket is full. */
static void pump(struct conn *c, uint64_t now)
{
    while (c->sent - c->done < (uint64_t)opt.depth || c->woff) {
        if (c->woff == 0)
            c->ts[c->sent % opt.depth] = now;
        ssize_t n = send(c->fd, wbuf + c->woff, opt.size - c->woff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->want_out) {
                    c->want_out = 1;
                    ctl(c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                }
                return;
            }
            kill_conn(c, errno == ECONNRESET || errno == EPIPE);
            return;
        }
        c->woff += (uint32_t)n;
        if (c->woff == (uint32_t)opt.size) {
            c->woff = 0;
            c->sent++;
            if (c->sent - c->done >= (uint64_t)opt.depth)
                break;
        }
    }
    if (c->want_out) {
        c->want_out = 0;
        ctl(c, EPOLL_CTL_MOD, EPOLLIN);
    }
}

static void on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, rbuf, RBUF, 0);
        if (n == 0) {
            kill_conn(c, 1);
            return;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                kill_conn(c, errno == ECONNRESET);
            break;
        }
        uint64_t now = now_ns();
        c->rbytes += (uint64_t)n;
        if (measuring)
            bytes_in += (uint64_t)n;
        while (c->rbytes >= (c->done + 1) * (uint64_t)opt.size && c->done < c->sent) {
            if (measuring) {
                hist[bucket_of(now - c->ts[c->done % opt.depth])]++;
                requests++;
            }
            c->done++;
        }
        if ((size_t)n < RBUF)
            break;
    }
    if (c->state == C_OPEN && traffic)
        pump(c, now_ns());
}

static void usage(void)
{
    fprintf(stderr,
            "usage: hpnlab-loadgen [-H host] [-p port] [-c conns] [-s size] [-d depth]\n"
            "                      [-t seconds] [-w warmup] [-m max-connecting] [-T connect-timeout]\n"
            "                      [-L linger-seconds]\n");
    exit(2);
}

static double cpu_seconds(struct rusage *r, int sys)
{
    struct timeval *tv = sys ? &r->ru_stime : &r->ru_utime;
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

int main(int argc, char **argv)
{
    int ch;
    while ((ch = getopt(argc, argv, "H:p:c:s:d:t:w:m:T:L:h")) != -1) {
        switch (ch) {
        case 'H': opt.host = optarg; break;
        case 'p': opt.port = atoi(optarg); break;
        case 'c': opt.conns = atoi(optarg); break;
        case 's': opt.size = atoi(optarg); break;
        case 'd': opt.depth = atoi(optarg); break;
        case 't': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'm': opt.max_connecting = atoi(optarg); break;
        case 'T': opt.connect_timeout = atof(optarg); break;
        case 'L': opt.linger = atof(optarg); break;
        default: usage();
        }
    }
    if (opt.conns < 1 || opt.size < 1 || opt.depth < 1 || opt.duration <= 0 || opt.warmup < 0 ||
        opt.port < 1 || opt.port > 65535 || opt.max_connecting < 1) {
        fprintf(stderr, "hpnlab-loadgen: conns, size, depth, port and duration must be positive\n");
        usage();
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)opt.port);
    if (inet_pton(AF_INET, opt.host, &addr.sin_addr) != 1) {
        fprintf(stderr, "hpnlab-loadgen: -H wants an IPv4 address, got %s\n", opt.host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    wbuf = malloc((size_t)opt.size);
    rbuf = malloc(RBUF);
    for (int i = 0; i < opt.size; i++)
        wbuf[i] = (char)('a' + i % 26);
    C = calloc((size_t)opt.conns, sizeof *C);
    uint64_t *ts = calloc((size_t)opt.conns * (size_t)opt.depth, sizeof *ts);
    if (!wbuf || !rbuf || !C || !ts) {
        fprintf(stderr, "hpnlab-loadgen: out of memory\n");
        return 2;
    }
    for (int i = 0; i < opt.conns; i++)
        C[i].ts = ts + (size_t)i * (size_t)opt.depth;
    epfd = epoll_create1(EPOLL_CLOEXEC);

    /* Phase 1: connect everything, at most max_connecting at a time so the
     * server's accept queue does not overflow into SYN retransmits. */
    struct epoll_event evs[1024];
    int next = 0, connecting = 0, open_ = 0;
    uint64_t t_start = now_ns();
    uint64_t deadline = t_start + (uint64_t)(opt.connect_timeout * 1e9);
    while (open_ + (int)connect_errors < opt.conns) {
        while (next < opt.conns && connecting < opt.max_connecting) {
            if (start_connect(&C[next++]) == 0)
                connecting++;
        }
        if (now_ns() > deadline)
            break;
        int n = epoll_wait(epfd, evs, 1024, 100);
        for (int i = 0; i < n; i++) {
            struct conn *c = &C[evs[i].data.u32];
            if (c->state != C_CONNECTING)
                continue;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            connecting--;
            if (err) {
                kill_conn(c, 0);
                continue;
            }
            c->state = C_OPEN;
            open_++;
            ctl(c, EPOLL_CTL_MOD, EPOLLIN);
        }
    }
    for (int i = 0; i < opt.conns; i++)
        if (C[i].state == C_CONNECTING || C[i].state == C_IDLE) {
            if (C[i].state == C_CONNECTING)
                kill_conn(&C[i], 0);
            else
                connect_errors++;
        }
    double connect_s = (double)(now_ns() - t_start) / 1e9;
    fprintf(stderr, "# connected %d/%d in %.2fs\n", open_, opt.conns, connect_s);
    fflush(stderr);
    if (open_ == 0) {
        printf("{\"error\": \"no connection could be opened\", \"conns\": %d, \"connect_errors\": %llu}\n",
               opt.conns, (unsigned long long)connect_errors);
        return 1;
    }

    /* Phase 2: traffic; warm up, then measure. */
    traffic = 1;
    uint64_t t0 = now_ns();
    for (int i = 0; i < opt.conns; i++)
        if (C[i].state == C_OPEN)
            pump(&C[i], t0);
    uint64_t t_measure = t0 + (uint64_t)(opt.warmup * 1e9);
    uint64_t t_end = t_measure + (uint64_t)(opt.duration * 1e9);
    struct rusage ru0, ru1;
    uint64_t m0 = 0, m1 = 0;
    for (;;) {
        uint64_t now = now_ns();
        if (!measuring && now >= t_measure) {
            measuring = 1;
            m0 = now;
            getrusage(RUSAGE_SELF, &ru0);
            fprintf(stderr, "# measuring\n");
            fflush(stderr);
        }
        if (measuring && now >= t_end)
            break;
        uint64_t until = measuring ? t_end : t_measure;
        int timeout_ms = (int)((until - now) / 1000000ull) + 1;
        if (timeout_ms > 100)
            timeout_ms = 100;
        int n = epoll_wait(epfd, evs, 1024, timeout_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = &C[evs[i].data.u32];
            if (c->state != C_OPEN)
                continue;
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c);
            if (c->state == C_OPEN && (evs[i].events & EPOLLOUT))
                pump(c, now_ns());
        }
    }
    m1 = now_ns();
    getrusage(RUSAGE_SELF, &ru1);
    fprintf(stderr, "# done\n");
    fflush(stderr);
    /* Keep the connections open a moment so the runner can sample the server
     * in its loaded state (threads alive, RSS) right after the window. */
    if (opt.linger > 0) {
        struct timespec ls = {.tv_sec = (time_t)opt.linger,
                              .tv_nsec = (long)((opt.linger - (double)(time_t)opt.linger) * 1e9)};
        nanosleep(&ls, NULL);
    }

    double secs = (double)(m1 - m0) / 1e9;
    double cu = cpu_seconds(&ru1, 0) - cpu_seconds(&ru0, 0);
    double cs = cpu_seconds(&ru1, 1) - cpu_seconds(&ru0, 1);
    uint64_t total = 0, sum_ns = 0;
    double maxv = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        total += hist[i];
        sum_ns += hist[i] * (uint64_t)bucket_value(i);
        if (hist[i])
            maxv = bucket_value(i);
    }
    int alive = 0;
    for (int i = 0; i < opt.conns; i++)
        alive += C[i].state == C_OPEN;
    printf("{\"host\": \"%s\", \"port\": %d, \"conns\": %d, \"connected\": %d, \"alive\": %d, "
           "\"connect_errors\": %llu, \"connect_s\": %.3f, \"size\": %d, \"depth\": %d, "
           "\"duration_s\": %.4f, \"requests\": %llu, \"rps\": %.1f, \"bytes_in\": %llu, "
           "\"errors\": %llu, \"closed_by_peer\": %llu, "
           "\"lat_us\": {\"p50\": %.2f, \"p90\": %.2f, \"p99\": %.2f, \"p999\": %.2f, \"max\": %.2f, "
           "\"mean\": %.2f}, "
           "\"client_cpu\": {\"user_s\": %.4f, \"sys_s\": %.4f, \"util\": %.4f}}\n",
           opt.host, opt.port, opt.conns, open_, alive, (unsigned long long)connect_errors, connect_s,
           opt.size, opt.depth, secs, (unsigned long long)requests, (double)requests / secs,
           (unsigned long long)bytes_in, (unsigned long long)errors,
           (unsigned long long)closed_by_peer, percentile(total, 0.50) / 1e3,
           percentile(total, 0.90) / 1e3, percentile(total, 0.99) / 1e3,
           percentile(total, 0.999) / 1e3, maxv / 1e3,
           total ? (double)sum_ns / (double)total / 1e3 : 0.0, cu, cs, (cu + cs) / secs);
    fflush(stdout);
    return 0;
}
