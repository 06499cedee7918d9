"""Build the cffi binding to liburing (API mode: compiled against liburing.h).

liburing's prep helpers are `static inline` in liburing.h, so an ABI-mode
binding cannot call them; API mode compiles a small C module that can. The
few C helpers below exist so that Python pays one call per operation instead
of one per struct field: get an SQE (submitting if the queue is full), fill
it, tag it. `harvest` copies finished CQEs into three flat arrays.

Two jobs are done in C because in Python they cost more than the I/O saves
(measured: the uring engine spent twice epoll-lt's user-space CPU per request):
  - provided buffers are given back to the kernel in one batch at the next
    harvest, not by a call per completion (a buffer's data stays valid until
    then: the caller copies it out first);
  - sends: hp_send copies the bytes into a per-fd queue and keeps one send in
    flight per fd; its completions, partial sends and the next send are
    handled inside harvest and never reach Python. Python hears only of a
    failed send (HP_SEND_TAG, res < 0) and, when it asked with hp_send_notify,
    that the queue drained to a mark (HP_DRAIN_TAG, res = bytes still queued);
  - hp_send_buf queues a provided buffer itself (an echo: no copy, no malloc of
    the data); the buffer is lent to the send and skipped by the next harvest's
    give-back until its send is done. hp_wait_harvest takes a list of such
    buffers to send back before it harvests: one call per batch, not per echo.

    python -m hpnlab.uring._build      # what `make setup` runs
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..cbuild import build_main, compile_into

# The version changes with the C interface, so a build of an older one is never loaded.
MODULE = "_hpnlab_uring_v5"

CDEF = r"""
typedef unsigned long long u64;
typedef struct hp_ring hp_ring;

hp_ring *hp_ring_new(unsigned entries, unsigned flags, int *err);
unsigned hp_ring_flags(hp_ring *r);
unsigned hp_ring_features(hp_ring *r);
unsigned hp_ring_lent(hp_ring *r);
void hp_ring_free(hp_ring *r);

int hp_bufring_setup(hp_ring *r, unsigned nbufs, unsigned bufsize, int bgid);
char *hp_buf_base(hp_ring *r);

long long hp_send(hp_ring *r, int fd, const char *buf, unsigned len);
long long hp_send_buf(hp_ring *r, int fd, unsigned bid, unsigned len);
void hp_set_high_water(hp_ring *r, long long mark);
int hp_send_back(hp_ring *r, unsigned *bids, unsigned n, u64 *ud, int *res);
long long hp_send_notify(hp_ring *r, int fd, long long mark);
void hp_send_forget(hp_ring *r, int fd);

#define HP_TAG_BITS ...
#define HP_SEND_TAG ...
#define HP_DRAIN_TAG ...

int hp_prep_accept(hp_ring *r, int fd, u64 ud, int multishot);
int hp_prep_recv(hp_ring *r, int fd, u64 ud, int multishot);
int hp_prep_cancel(hp_ring *r, u64 target, u64 ud);
int hp_prep_nop(hp_ring *r, u64 ud);
int hp_prep_poll(hp_ring *r, int fd, u64 ud);

int hp_submit(hp_ring *r);
int hp_submit_and_wait(hp_ring *r, unsigned wait_nr);
int hp_harvest(hp_ring *r, u64 *ud, int *res, unsigned *flags, unsigned max);
int hp_wait_harvest(hp_ring *r, u64 *ud, int *res, unsigned *flags, unsigned max,
                    unsigned *back, unsigned nback);

int shutdown(int fd, int how);
int close(int fd);
int setsockopt(int fd, int level, int name, const void *val, unsigned len);

#define IORING_SETUP_COOP_TASKRUN ...
#define IORING_SETUP_SINGLE_ISSUER ...
#define IORING_SETUP_DEFER_TASKRUN ...
#define IORING_CQE_F_BUFFER ...
#define IORING_CQE_F_MORE ...
#define IORING_CQE_BUFFER_SHIFT ...
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <liburing.h>

typedef unsigned long long u64;

/* user_data = fd << HP_TAG_BITS | tag; tags 1-4 and 7 are the caller's. */
#define HP_TAG_BITS 3
#define HP_SEND_TAG 5
#define HP_DRAIN_TAG 6

typedef struct hp_out {          /* one queued write */
    struct hp_out *next;
    char *ptr;                   /* a copy (malloc'd with the node), or a provided buffer lent to the send */
    int bid;                     /* that buffer (its node is bout[bid]), or -1 */
    unsigned len, off;
} hp_out;

typedef struct hp_fdq {          /* the send queue of one fd */
    hp_out *head, *tail;
    long long pending;           /* bytes queued, in flight included */
    long long mark;              /* report DRAIN once pending <= mark; -1: not asked */
    int inflight, failed;
} hp_fdq;

typedef struct hp_ring {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    unsigned nbufs, bufsize, mask;
    int bgid;
    unsigned *held;              /* buffers handed out by the last harvest */
    unsigned nheld;
    unsigned *spare;             /* free buffers not in the ring: a stack, last freed on top */
    unsigned nspare;
    unsigned posted;             /* buffers in the ring the kernel has not taken yet */
    unsigned char *lent;         /* lent[bid]: the buffer is the data of a queued send */
    unsigned nlent;
    hp_out *bout;                /* the send node of each buffer, used while it is lent */
    int *bfd;                    /* bfd[bid], blen[bid]: the recv the last harvest handed it to */
    unsigned *blen;
    long long high_water;        /* hp_send_back reports a queue longer than this */
    unsigned target;             /* how many to keep posted (doubles on ENOBUFS) */
    hp_fdq *q;                   /* indexed by fd */
    unsigned nq;
} hp_ring;

hp_ring *hp_ring_new(unsigned entries, unsigned flags, int *err)
{
    hp_ring *r = calloc(1, sizeof *r);
    if (!r) { *err = -ENOMEM; return NULL; }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = flags;
    int ret = io_uring_queue_init_params(entries, &r->ring, &p);
    if (ret < 0) { free(r); *err = ret; return NULL; }
    *err = 0;
    r->high_water = 0x7fffffffffffffffLL;
    return r;
}

unsigned hp_ring_flags(hp_ring *r) { return r->ring.flags; }
unsigned hp_ring_features(hp_ring *r) { return r->ring.features; }
unsigned hp_ring_lent(hp_ring *r) { return r->nlent; }

/* A buffer lent to a send is free again once the send is done (or dropped). */
static void buf_unlend(hp_ring *r, int bid)
{
    r->lent[bid] = 0;
    r->nlent--;
    r->spare[r->nspare++] = (unsigned)bid;
}

static void out_free(hp_ring *r, hp_out *o)
{
    if (o->bid >= 0) buf_unlend(r, o->bid);
    else free(o);
}

static void fdq_clear(hp_ring *r, hp_fdq *q)
{
    hp_out *o = q->head;
    while (o) { hp_out *n = o->next; out_free(r, o); o = n; }
    q->head = q->tail = NULL;
    q->pending = 0;
}

void hp_ring_free(hp_ring *r)
{
    if (!r) return;
    for (unsigned i = 0; i < r->nq; i++) fdq_clear(r, &r->q[i]);
    free(r->q);
    free(r->held);
    free(r->spare);
    free(r->lent);
    free(r->bout);
    free(r->bfd);
    free(r->blen);
    if (r->br) {
        io_uring_unregister_buf_ring(&r->ring, r->bgid);
        munmap(r->br, r->nbufs * sizeof(struct io_uring_buf));
    }
    free(r->bufs);
    io_uring_queue_exit(&r->ring);
    free(r);
}

/* A provided-buffer ring: the kernel picks a free buffer only when data
 * arrives, so memory scales with data in flight, not with connections. */
/* Post free buffers (most recently used first) until `target` are in the ring. */
static void hp_buf_post(hp_ring *r)
{
    unsigned n = 0;
    while (r->posted < r->target && r->nspare) {
        unsigned bid = r->spare[--r->nspare];
        io_uring_buf_ring_add(r->br, r->bufs + (size_t)bid * r->bufsize, r->bufsize, bid, r->mask, (int)n);
        n++;
        r->posted++;
    }
    if (n) io_uring_buf_ring_advance(r->br, n);
}

int hp_bufring_setup(hp_ring *r, unsigned nbufs, unsigned bufsize, int bgid)
{
    size_t ring_size = nbufs * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, ring_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (mem == MAP_FAILED) return -errno;
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (unsigned long)mem;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    int ret = io_uring_register_buf_ring(&r->ring, &reg, 0);
    if (ret < 0) { munmap(mem, ring_size); return ret; }
    r->br = mem;
    r->bufs = malloc((size_t)nbufs * bufsize);
    r->held = malloc(nbufs * sizeof *r->held);
    r->spare = malloc(nbufs * sizeof *r->spare);
    r->lent = calloc(nbufs, 1);
    r->bout = malloc(nbufs * sizeof *r->bout);
    r->bfd = malloc(nbufs * sizeof *r->bfd);
    r->blen = malloc(nbufs * sizeof *r->blen);
    if (!r->bufs || !r->held || !r->spare || !r->lent || !r->bout || !r->bfd || !r->blen) return -ENOMEM;
    /* Touch the buffers now: a burst may use all of them, so they may all end
     * up resident. Faulting them in up front makes them part of the idle
     * RSS - a fixed cost, not a per-connection one. */
    for (size_t off = 0; off < (size_t)nbufs * bufsize; off += 4096)
        ((volatile char *)r->bufs)[off] = 0;   /* volatile: gcc would turn malloc+memset into calloc */
    r->nbufs = nbufs; r->bufsize = bufsize; r->bgid = bgid;
    r->mask = io_uring_buf_ring_mask(nbufs);
    io_uring_buf_ring_init(r->br);
    /* The ring is FIFO: posting all nbufs would make the kernel cycle through
     * every buffer (2 MiB at 512 x 4 KiB, more than a core's L2) and each recv
     * would land in cold memory. So only `target` buffers are posted, taken
     * from a stack of free ones with the most recently used on top; the
     * target doubles whenever a recv finds no buffer (ENOBUFS). */
    for (unsigned i = 0; i < nbufs; i++)
        r->spare[i] = nbufs - 1 - i;
    r->nspare = nbufs;
    r->target = nbufs < 64 ? nbufs : 64;
    hp_buf_post(r);
    return 0;
}

char *hp_buf_base(hp_ring *r) { return r->bufs; }

static struct io_uring_sqe *get_sqe(hp_ring *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) {              /* submission queue full: hand it to the kernel, retry */
        io_uring_submit(&r->ring);
        sqe = io_uring_get_sqe(&r->ring);
    }
    return sqe;
}

int hp_prep_accept(hp_ring *r, int fd, u64 ud, int multishot)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    if (multishot)
        io_uring_prep_multishot_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    else
        io_uring_prep_accept(sqe, fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

int hp_prep_recv(hp_ring *r, int fd, u64 ud, int multishot)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    if (multishot)
        io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, fd, NULL, r->bufsize, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = r->bgid;
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

static hp_fdq *fdq(hp_ring *r, int fd)
{
    if (fd < 0) return NULL;
    if ((unsigned)fd >= r->nq) {
        unsigned n = r->nq ? r->nq : 1024;
        while (n <= (unsigned)fd) n *= 2;
        hp_fdq *q = realloc(r->q, n * sizeof *q);
        if (!q) return NULL;
        memset(q + r->nq, 0, (n - r->nq) * sizeof *q);
        for (unsigned i = r->nq; i < n; i++) q[i].mark = -1;
        r->q = q;
        r->nq = n;
    }
    return &r->q[fd];
}

/* One send in flight per fd: two on one TCP socket could interleave if the first is short. */
static int fdq_issue(hp_ring *r, int fd, hp_fdq *q)
{
    hp_out *o = q->head;
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_send(sqe, fd, o->ptr + o->off, o->len - o->off, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (u64)fd << HP_TAG_BITS | HP_SEND_TAG);
    q->inflight = 1;
    return 0;
}

static long long fdq_push(hp_ring *r, int fd, hp_fdq *q, hp_out *o, unsigned len)
{
    o->next = NULL; o->len = len; o->off = 0;
    if (q->tail) q->tail->next = o; else q->head = o;
    q->tail = o;
    q->pending += len;
    if (!q->inflight) {
        int ret = fdq_issue(r, fd, q);
        if (ret < 0) return ret;
    }
    return q->pending;
}

/* Queue a copy of buf for fd; returns the bytes now queued for fd, or -errno. */
long long hp_send(hp_ring *r, int fd, const char *buf, unsigned len)
{
    hp_fdq *q = fdq(r, fd);
    if (!q) return -ENOMEM;
    if (q->failed) return -EPIPE;
    hp_out *o = malloc(sizeof *o + len);
    if (!o) return -ENOMEM;
    o->ptr = (char *)(o + 1);
    memcpy(o->ptr, buf, len);
    o->bid = -1;
    return fdq_push(r, fd, q, o, len);
}

/* Send the first `len` bytes of provided buffer `bid` (handed out by the last
 * harvest) from the buffer itself: it is lent to the send and goes back to the
 * ring when the send is done, not at the next harvest. At most half of the
 * buffers are lent, so that stalled sends cannot starve every recv; past that
 * the bytes are copied as hp_send does. */
long long hp_send_buf(hp_ring *r, int fd, unsigned bid, unsigned len)
{
    if (bid >= r->nbufs || len > r->bufsize) return -EINVAL;
    char *buf = r->bufs + (size_t)bid * r->bufsize;
    if (r->lent[bid] || r->nlent >= r->nbufs / 2) return hp_send(r, fd, buf, len);
    hp_fdq *q = fdq(r, fd);
    if (!q) return -ENOMEM;
    if (q->failed) return -EPIPE;
    hp_out *o = &r->bout[bid];
    o->ptr = buf;
    o->bid = (int)bid;
    r->lent[bid] = 1;
    r->nlent++;
    return fdq_push(r, fd, q, o, len);
}

void hp_set_high_water(hp_ring *r, long long mark) { r->high_water = mark; }

/* Send each listed buffer (handed out by the last harvest) back on the connection
 * its data came from, as hp_send_buf: an echo for a batch of recvs in one call. A
 * send that fails, or leaves more than high_water bytes queued, is reported in
 * ud/res (fd << HP_TAG_BITS | HP_SEND_TAG, the bytes queued or -errno); the
 * number of reports is returned. */
int hp_send_back(hp_ring *r, unsigned *bids, unsigned n, u64 *ud, int *res)
{
    int k = 0;
    for (unsigned i = 0; i < n; i++) {
        unsigned bid = bids[i];
        int fd = bid < r->nbufs ? r->bfd[bid] : -1;
        long long q = fd < 0 ? -EINVAL : hp_send_buf(r, fd, bid, r->blen[bid]);
        if (q >= 0 && q <= r->high_water) continue;
        ud[k] = (u64)(fd < 0 ? 0 : fd) << HP_TAG_BITS | HP_SEND_TAG;
        res[k] = q > 0x7fffffff ? 0x7fffffff : (int)q;
        k++;
    }
    return k;
}

/* Ask for one DRAIN completion once fd's queue is at or below `mark` bytes;
 * returns what is queued now (if that is already <= mark, nothing will come). */
long long hp_send_notify(hp_ring *r, int fd, long long mark)
{
    hp_fdq *q = fdq(r, fd);
    if (!q) return -ENOMEM;
    q->mark = q->pending <= mark ? -1 : mark;
    return q->pending;
}

/* fd is closed or about to be: drop its queue (only with no send in flight). */
void hp_send_forget(hp_ring *r, int fd)
{
    if (fd < 0 || (unsigned)fd >= r->nq) return;
    hp_fdq *q = &r->q[fd];
    fdq_clear(r, q);
    q->inflight = q->failed = 0;
    q->mark = -1;
}

/* A send completed: 0 = nothing to tell, 1 = report it (it failed), 2 = report a DRAIN. */
static int fdq_sent(hp_ring *r, struct io_uring_cqe *cqe, int *res)
{
    int fd = (int)(cqe->user_data >> HP_TAG_BITS);
    hp_fdq *q = &r->q[fd];
    q->inflight = 0;
    if (cqe->res >= 0 && q->head) {
        unsigned n = (unsigned)cqe->res;
        hp_out *o = q->head;
        q->pending -= n;
        o->off += n;
        if (o->off == o->len) {
            q->head = o->next;
            if (!q->head) q->tail = NULL;
            out_free(r, o);
        }
        if (!q->head || fdq_issue(r, fd, q) == 0) {
            if (q->mark >= 0 && q->pending <= q->mark) {
                q->mark = -1;
                *res = q->pending > 0x7fffffff ? 0x7fffffff : (int)q->pending;
                return 2;
            }
            return 0;
        }
        *res = -EBUSY;               /* could not queue the rest */
    } else {
        *res = cqe->res < 0 ? cqe->res : -EIO;
    }
    fdq_clear(r, q);                 /* EPIPE, ECONNRESET...: the peer is gone */
    q->failed = 1;
    q->mark = -1;
    return 1;
}

int hp_prep_cancel(hp_ring *r, u64 target, u64 ud)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_cancel64(sqe, target, 0);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

int hp_prep_nop(hp_ring *r, u64 ud)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

/* One-shot POLLIN on fd: a completion when it is readable (a signal's wake-up pipe). */
int hp_prep_poll(hp_ring *r, int fd, u64 ud)
{
    struct io_uring_sqe *sqe = get_sqe(r);
    if (!sqe) return -EBUSY;
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

int hp_submit(hp_ring *r) { return io_uring_submit(&r->ring); }
int hp_submit_and_wait(hp_ring *r, unsigned wait_nr) { return io_uring_submit_and_wait(&r->ring, wait_nr); }

int hp_harvest(hp_ring *r, u64 *ud, int *res, unsigned *flags, unsigned max)
{
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0, n = 0;
    const u64 tagmask = (1u << HP_TAG_BITS) - 1;
    /* The buffers the caller was given last time: it has copied them out by now. */
    if (r->br) {
        for (unsigned i = r->nheld; i > 0; i--)
            if (!r->lent[r->held[i - 1]])        /* a lent one comes back with its send */
                r->spare[r->nspare++] = r->held[i - 1];
        r->nheld = 0;
        hp_buf_post(r);
    }
    io_uring_for_each_cqe(&r->ring, head, cqe) {
        if (n == max) break;
        seen++;
        if ((cqe->user_data & tagmask) == HP_SEND_TAG) {
            int rv, kind = fdq_sent(r, cqe, &rv);
            if (!kind) continue;
            ud[n] = kind == 2 ? (cqe->user_data & ~tagmask) | HP_DRAIN_TAG : cqe->user_data;
            res[n] = rv;
            flags[n] = 0;
            n++;
            continue;
        }
        if (cqe->flags & IORING_CQE_F_BUFFER) {
            unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
            r->held[r->nheld++] = bid;
            r->bfd[bid] = (int)(cqe->user_data >> HP_TAG_BITS);
            r->blen[bid] = cqe->res > 0 ? (unsigned)cqe->res : 0;
            r->posted--;
        } else if (cqe->res == -ENOBUFS && r->target < r->nbufs) {
            r->target = r->target * 2 < r->nbufs ? r->target * 2 : r->nbufs;
        }
        ud[n] = cqe->user_data;
        res[n] = cqe->res;
        flags[n] = cqe->flags;
        n++;
    }
    io_uring_cq_advance(&r->ring, seen);
    return (int)n;
}

/* Send back the `nback` buffers listed (hp_send_back, whose reports come
 * first), submit what is queued, wait for at least one completion, harvest up
 * to `max` in all. One Python->C call per loop turn. Returns -EINTR on a signal
 * (never with reports to give) so that Python can run its handler. */
int hp_wait_harvest(hp_ring *r, u64 *ud, int *res, unsigned *flags, unsigned max,
                    unsigned *back, unsigned nback)
{
    int k = nback ? hp_send_back(r, back, nback < max ? nback : max, ud, res) : 0;
    for (int i = 0; i < k; i++) flags[i] = 0;
    for (;;) {
        int n = k + hp_harvest(r, ud + k, res + k, flags + k, max - (unsigned)k);
        if (n > 0) {
            io_uring_submit(&r->ring);
            return n;
        }
        /* Nothing for the caller (perhaps only sends, handled above): wait. */
        int ret = io_uring_submit_and_wait(&r->ring, 1);
        if (ret < 0 && ret != -EBUSY) return ret;
    }
}
"""


def build_dir() -> Path:
    return Path(__file__).resolve().parent


def build(target_dir: Path | None = None, verbose: bool = False) -> Path:
    """Compile the module into the package (or `target_dir`); return the .so path."""
    from cffi import FFI
    if not Path("/usr/include/liburing.h").exists():
        raise RuntimeError("liburing.h not found: install liburing-dev (`make setup` does)")
    if not (shutil.which("gcc") or shutil.which("cc")):
        raise RuntimeError("no C compiler: install gcc (`make setup` does)")
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(MODULE, SOURCE, libraries=["uring"], extra_compile_args=["-O2"])
    return compile_into(ffi, MODULE, target_dir or build_dir(), verbose)


if __name__ == "__main__":
    sys.exit(build_main("hpnlab.uring", build))
