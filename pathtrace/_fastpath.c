/* pathtrace._fastpath: the replay decision cache's hot path in C (optional accelerator).
 *
 * Not a model of anything: pathtrace/flowcache.py remembers a flow's path and compiles
 * the guards and per-packet work of its later packets into a closure (_compile).  This
 * module is the same closure as a C object, FastEntry, plus `serve_pcap`, a loop over
 * a classic pcap buffer that serves consecutive cached Ethernet/IPv4 frames without
 * creating a Frame, and stops at the first frame it cannot serve so that Python runs it
 * through the model.  Every field is read from and written to the model's own Python
 * objects (NfConn, TcpState, TcpSeen, Neighbour, ConntrackTable), so the state after a
 * replay is the same whichever runs; tests replay captures with the accelerator, with
 * the Python closures and with no cache at all and compare every record and the state.
 *
 * Arithmetic follows the Python exactly: checksums as word sums modulo 0xFFFF,
 * sequence numbers modulo 2**32, capture time as sec + frac / divisor in doubles.
 * Anything C cannot represent (a window value past 32 bits) goes to the Python closure
 * (`slow`) before any state is touched.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <poll.h>
#include <sys/uio.h>

#define TH_SYN 0x02
#define TH_ACK 0x10
#define FLAG_SACK_PERM 0x02
#define FLAG_BE_LIBERAL 0x08
#define FLAG_DATA_UNACKNOWLEDGED 0x10
#define FLAG_MAXACK_SET 0x20
#define ACK_SET 3
#define MAX_RECORD (64 << 20)

enum { K_PLAIN = 0, K_UDP = 1, K_TCP = 2, K_ICMP = 3 };

/* The attributes the hot path reads and writes.  Those that are __slots__ members of their
 * object's class (the model's dataclasses use slots=True) are resolved once to the member's
 * offset and accessed in place, as the member descriptor itself does; others by name. */
enum {
    A_CT_TIMEOUT, A_CT_GC_KEY, A_CT_STATUS, A_CT_MARK, A_CT_LABELS,
    A_ST_STATE, A_ST_LAST_SEQ, A_ST_LAST_ACK, A_ST_LAST_END, A_ST_LAST_WIN, A_ST_LAST_DIR, A_ST_RETRANS,
    A_ST_LAST_INDEX, A_ST_STREAM_TS,
    A_TD_END, A_TD_MAXEND, A_TD_MAXWIN, A_TD_MAXACK, A_TD_SCALE, A_TD_FLAGS,
    A_N_STATE, A_N_HH, A_N_LLADDR, A_N_TIMER, A_N_UPDATED,
    A_T_NOW, A_T_LAST_GC,
    A_COUNT
};

static PyObject *s_timeout, *s_state, *s_gc, *s_fast, *s_earliest, *s_new_state, *s_assured, *s_ESTABLISHED, *s_render;
static PyObject *s_emit_dev, *s_emit_kind, *s_mangle, *s_l2_out, *s_fd, *s_flush, *i_ETH_P_IP;

typedef struct {
    PyObject_HEAD
    int kind;
    Py_ssize_t hlen, tot_len;
    int proto, check_l4;
    uint64_t pseudo_const;          /* proto + segment length */
    PyObject *ct, *st, *table, *status, *mark, *labels, *pstate;
    double gc_interval;
    int fixed;
    PyObject *neigh, *nstate, *nhh, *nlladdr, *ntimer, *neigh_entries, *nkey;
    int assured, seen_reply;
    PyObject *udp_timeout, *udp_stream_timeout, *icmp_timeout;
    int dir, detail;
    int be_liberal;                 /* sysctl nf_conntrack_tcp_be_liberal */
    PyObject *sender, *receiver;
    PyObject *t_est, *t_retrans, *t_unack;
    long long v_est, v_retrans, v_unack, v_max_retrans;
    PyObject *no_detail, *slow;
    int touch;                      /* FlowEntry.neigh_touch: a hit sets neigh.updated = now */
    long long tallied;              /* serve_pcap hits not yet handed to FlowEntry (take_tallied) */
    Py_ssize_t off[A_COUNT];        /* member offsets, -1: by name */
} FastEntry;

static PyObject *attr_name[A_COUNT];

/* The offset of `name` when it is a writable object slot of the class, else -1. */
static Py_ssize_t type_slot_offset(PyTypeObject *type, PyObject *name) {
    PyObject *d = PyObject_GetAttr((PyObject *)type, name);
    if (d == NULL) { PyErr_Clear(); return -1; }
    Py_ssize_t off = -1;
    if (Py_TYPE(d) == &PyMemberDescr_Type) {
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type == T_OBJECT_EX && !(m->flags & READONLY)) off = m->offset;
    }
    Py_DECREF(d);
    return off;
}

static Py_ssize_t slot_offset(PyObject *obj, PyObject *name) {
    return obj == Py_None ? -1 : type_slot_offset(Py_TYPE(obj), name);
}

/* obj.<attr> as a new reference (NULL with AttributeError when the slot is unset). */
static inline PyObject *aget(FastEntry *fe, PyObject *obj, int a) {
    Py_ssize_t off = fe->off[a];
    if (off < 0) return PyObject_GetAttr(obj, attr_name[a]);
    PyObject *v = *(PyObject **)((char *)obj + off);
    if (v == NULL) { PyErr_SetObject(PyExc_AttributeError, attr_name[a]); return NULL; }
    return Py_NewRef(v);
}

/* obj.<attr> = v (v borrowed). */
static inline int aset(FastEntry *fe, PyObject *obj, int a, PyObject *v) {
    Py_ssize_t off = fe->off[a];
    if (off < 0) return PyObject_SetAttr(obj, attr_name[a], v);
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    *p = Py_NewRef(v);
    Py_XDECREF(old);
    return 0;
}

/* ---- small helpers ------------------------------------------------------------------- */

static int get_double(FastEntry *fe, PyObject *o, int a, double *out) {
    PyObject *v = aget(fe, o, a);
    if (v == NULL) return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

static int set_double(FastEntry *fe, PyObject *o, int a, double value) {
    PyObject *v = PyFloat_FromDouble(value);
    if (v == NULL) return -1;
    int r = aset(fe, o, a, v);
    Py_DECREF(v);
    return r;
}

/* ct.timeout = value, as NfConn's setter does it: the `_timeout` slot, and when the value is below the
 * entry's key in the table's expiry queue (`_gc_key`), table.requeue(ct, value) - a timeout moved down. */
static int set_ct_timeout(FastEntry *fe, double value) {
    double key;
    if (set_double(fe, fe->ct, A_CT_TIMEOUT, value) < 0) return -1;
    if (get_double(fe, fe->ct, A_CT_GC_KEY, &key) < 0) return -1;
    if (value < key) {
        PyObject *r = PyObject_CallMethod(fe->table, "requeue", "Od", fe->ct, value);
        if (r == NULL) return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int set_u64(FastEntry *fe, PyObject *o, int a, unsigned long long value) {
    PyObject *v = PyLong_FromUnsignedLongLong(value);
    if (v == NULL) return -1;
    int r = aset(fe, o, a, v);
    Py_DECREF(v);
    return r;
}

/* An attribute as an unsigned value below `limit`: 1 when it is, 0 when it is not (or not an int), -1 on error. */
static int get_u32(FastEntry *fe, PyObject *o, int a, uint64_t limit, uint64_t *out) {
    PyObject *v = aget(fe, o, a);
    if (v == NULL) return -1;
    int ok = 0;
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred()) { Py_DECREF(v); return -1; }
        if (!overflow && x >= 0 && (uint64_t)x < limit) { *out = (uint64_t)x; ok = 1; }
    }
    Py_DECREF(v);
    return ok;
}

/* Python's `a != b` for the guards' values (ints, strings, bytes, None, floats). */
static int differs(FastEntry *fe, PyObject *o, int a, PyObject *expected) {
    PyObject *v = aget(fe, o, a);
    if (v == NULL) return -1;
    int eq = (v == expected) ? 1 : PyObject_RichCompareBool(v, expected, Py_EQ);
    Py_DECREF(v);
    return eq < 0 ? -1 : !eq;
}

/* int.from_bytes(data, "big") % 0xFFFF, as the sum of big-endian 16-bit words (2**16 = 1 mod 0xFFFF). */
static uint64_t word_sum(const unsigned char *p, Py_ssize_t n) {
    uint64_t s = 0;
    Py_ssize_t i = 0;
    for (; i + 1 < n; i += 2) s += ((uint64_t)p[i] << 8) | p[i + 1];
    if (n & 1) s += (uint64_t)p[n - 1] << 8;      /* the Python shifts an odd body left by 8 */
    return s;
}

/* ---- the guards (flowcache._compile's guards / ct_guards) ----------------------------- */

static int neigh_ok(FastEntry *fe) {
    if (fe->neigh == Py_None) return 1;
    int d;
    if ((d = differs(fe, fe->neigh, A_N_STATE, fe->nstate)) != 0) return d < 0 ? -1 : 0;
    if ((d = differs(fe, fe->neigh, A_N_HH, fe->nhh)) != 0) return d < 0 ? -1 : 0;
    if ((d = differs(fe, fe->neigh, A_N_LLADDR, fe->nlladdr)) != 0) return d < 0 ? -1 : 0;
    if ((d = differs(fe, fe->neigh, A_N_TIMER, fe->ntimer)) != 0) return d < 0 ? -1 : 0;
    PyObject *cur = PyDict_GetItemWithError(fe->neigh_entries, fe->nkey);
    if (cur == NULL && PyErr_Occurred()) return -1;
    return cur == fe->neigh;
}

static int guards(FastEntry *fe, const unsigned char *p) {
    if (word_sum(p, fe->hlen) % 0xFFFF) return 0;
    if (fe->check_l4 && fe->proto == 1) {          /* no pseudo header: an all-zero sum is wrong too */
        uint64_t s = word_sum(p + fe->hlen, fe->tot_len - fe->hlen);
        if (s == 0 || s % 0xFFFF) return 0;
    } else if (fe->check_l4 && !(fe->proto == 17 && p[fe->hlen + 6] == 0 && p[fe->hlen + 7] == 0)) {
        uint64_t s = word_sum(p + fe->hlen, fe->tot_len - fe->hlen) + word_sum(p + 12, 8) + fe->pseudo_const;
        if (s % 0xFFFF) return 0;
    }
    return neigh_ok(fe);
}

static int ct_guards(FastEntry *fe, const unsigned char *p, double now) {
    double timeout, last_gc;
    int d;
    if (get_double(fe, fe->ct, A_CT_TIMEOUT, &timeout) < 0) return -1;
    if (timeout <= now) return 0;
    if ((d = differs(fe, fe->ct, A_CT_STATUS, fe->status)) != 0) return d < 0 ? -1 : 0;
    if ((d = differs(fe, fe->ct, A_CT_MARK, fe->mark)) != 0) return d < 0 ? -1 : 0;
    if ((d = differs(fe, fe->ct, A_CT_LABELS, fe->labels)) != 0) return d < 0 ? -1 : 0;
    if (fe->st == Py_None) {
        if (fe->pstate != Py_None) return 0;
    } else {
        PyObject *v = aget(fe, fe->st, A_ST_STATE);
        if (v == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
            PyErr_Clear();
            v = Py_NewRef(Py_None);
        }
        int eq = (v == fe->pstate) ? 1 : PyObject_RichCompareBool(v, fe->pstate, Py_EQ);
        Py_DECREF(v);
        if (eq <= 0) return eq;
    }
    if ((d = guards(fe, p)) <= 0) return d;
    if (set_double(fe, fe->table, A_T_NOW, now) < 0) return -1;
    if (get_double(fe, fe->table, A_T_LAST_GC, &last_gc) < 0) return -1;
    if (now - last_gc >= fe->gc_interval) {
        PyObject *t = PyFloat_FromDouble(now);
        if (t == NULL) return -1;
        PyObject *r = PyObject_CallMethodObjArgs(fe->table, s_gc, t, NULL);
        Py_DECREF(t);
        if (r == NULL) return -1;
        Py_DECREF(r);
        if (get_double(fe, fe->ct, A_CT_TIMEOUT, &timeout) < 0) return -1;
        if (timeout <= now) return 0;
    }
    return 1;
}

/* ---- per-packet work ------------------------------------------------------------------ */

typedef struct { uint64_t end, maxend, maxwin, maxack, scale, flags; } Seen;

static int read_seen(FastEntry *fe, PyObject *o, Seen *s) {
    const uint64_t L = 1ULL << 32;
    int r;
    if ((r = get_u32(fe, o, A_TD_END, L, &s->end)) <= 0) return r;
    if ((r = get_u32(fe, o, A_TD_MAXEND, L, &s->maxend)) <= 0) return r;
    if ((r = get_u32(fe, o, A_TD_MAXWIN, L, &s->maxwin)) <= 0) return r;
    if ((r = get_u32(fe, o, A_TD_MAXACK, L, &s->maxack)) <= 0) return r;
    if ((r = get_u32(fe, o, A_TD_SCALE, 33, &s->scale)) <= 0) return r;
    return get_u32(fe, o, A_TD_FLAGS, L, &s->flags);
}

/* tcp_sack: the highest right edge among the SACK blocks of the options. */
static uint32_t tcp_sack(const unsigned char *opts, Py_ssize_t n, uint32_t sack) {
    static const unsigned char ts_only[4] = {1, 1, 8, 10};
    if (n <= 0 || (n == 12 && memcmp(opts, ts_only, 4) == 0)) return sack;
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char kind = opts[i];
        if (kind == 0) return sack;
        if (kind == 1) { i++; continue; }
        if (n - i < 2) return sack;
        Py_ssize_t size = opts[i + 1];
        if (size < 2 || size > n - i) return sack;
        if (kind == 5 && size >= 10 && (size - 2) % 8 == 0) {
            for (Py_ssize_t j = i + 2; j < i + size; j += 8) {
                const unsigned char *e = opts + j + 4;
                uint32_t edge = ((uint32_t)e[0] << 24) | ((uint32_t)e[1] << 16) | ((uint32_t)e[2] << 8) | e[3];
                if ((uint32_t)(sack - edge) >= 0x80000000u) sack = edge;       /* after(edge, sack) */
            }
            return sack;
        }
        i += size;
    }
    return sack;
}

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

#define SET(o, a, v) do { if (set_u64(fe, (o), (a), (v)) < 0) return NULL; } while (0)

static PyObject *call_slow(FastEntry *fe, const unsigned char *p, Py_ssize_t n, double now) {
    PyObject *payload = PyBytes_FromStringAndSize((const char *)p, n);
    if (payload == NULL) return NULL;
    PyObject *t = PyFloat_FromDouble(now);
    if (t == NULL) { Py_DECREF(payload); return NULL; }
    PyObject *r = PyObject_CallFunctionObjArgs(fe->slow, payload, t, NULL);
    Py_DECREF(payload);
    Py_DECREF(t);
    return r;
}

static PyObject *tcp_accept(FastEntry *fe, double now, uint64_t seen_flags, long long last_win);

/* nf_conntrack_tcp_packet for an ACK of an ESTABLISHED connection (flowcache's TCP `fast`). */
static PyObject *tcp_fast(FastEntry *fe, const unsigned char *p, Py_ssize_t n, double now) {
    Seen s, r;
    int ok = read_seen(fe, fe->sender, &s);
    if (ok < 0) return NULL;
    if (ok && (ok = read_seen(fe, fe->receiver, &r)) < 0) return NULL;
    if (!ok) return call_slow(fe, p, n, now);
    if (s.maxwin == 0) Py_RETURN_NONE;
    int g = ct_guards(fe, p, now);
    if (g <= 0) { if (g < 0) return NULL; Py_RETURN_NONE; }
    const unsigned char *th = p + fe->hlen;
    Py_ssize_t seglen = fe->tot_len - fe->hlen;
    uint32_t seq = be32(th + 4), ack = be32(th + 8);
    Py_ssize_t doff = (th[12] >> 4) * 4;
    unsigned flags = th[13];
    uint32_t win_raw = ((uint32_t)th[14] << 8) | th[15];
    uint32_t end = (uint32_t)((int64_t)seq + seglen - doff);
    uint32_t sack = ack;
    if (doff > 20 && (r.flags & FLAG_SACK_PERM)) {
        Py_ssize_t stop = doff < seglen ? doff : seglen;
        sack = tcp_sack(th + 20, stop - 20, ack);
    }
    /* _window_test */
    uint32_t maxackwin = s.maxwin > 66000 ? (uint32_t)s.maxwin : 66000;
    int test = 0;
    if ((uint32_t)(seq - (uint32_t)s.maxend - 1) < 0x80000000u) test = 1;
    else if ((uint32_t)(sack - (uint32_t)r.end - 1) < 0x80000000u) test = 2;
    else if (r.maxwin && (uint32_t)((uint32_t)s.end - (uint32_t)r.maxwin - 1 - end) < 0x80000000u) test = 3;
    else if ((uint32_t)((uint32_t)r.end - maxackwin - 1 - sack) < 0x80000000u) test = 4;
    uint64_t sflags = s.flags, rflags = r.flags;
    if (test) {
        /* out of window, nothing changed: a liberal sender's segment is accepted as it is (a flow
         * picked up mid-stream), unless _window_verdict finds it overshot; else the model says why */
        if (!((s.flags & FLAG_BE_LIBERAL) || fe->be_liberal)) Py_RETURN_NONE;
        if (test == 1 && r.maxwin) Py_RETURN_NONE;
        return tcp_accept(fe, now, sflags | rflags, -1);
    }
    /* tcp_window_update's in-window branch */
    uint32_t win = (flags & TH_SYN) ? win_raw : (uint32_t)((uint64_t)win_raw << s.scale);
    uint32_t swin = win + (sack - ack);
    if (s.maxwin < swin) SET(fe->sender, A_TD_MAXWIN, swin);
    if ((uint32_t)((uint32_t)s.end - end) >= 0x80000000u) {
        SET(fe->sender, A_TD_END, end);
        sflags |= FLAG_DATA_UNACKNOWLEDGED;
    }
    if (flags & TH_ACK) {
        if (!(sflags & FLAG_MAXACK_SET)) {
            SET(fe->sender, A_TD_MAXACK, ack);
            sflags |= FLAG_MAXACK_SET;
        } else if ((uint32_t)((uint32_t)s.maxack - ack) >= 0x80000000u) {
            SET(fe->sender, A_TD_MAXACK, ack);
        }
    }
    SET(fe->sender, A_TD_FLAGS, sflags);
    if (r.maxwin != 0 && (uint32_t)((uint32_t)s.maxend - end) >= 0x80000000u)
        SET(fe->receiver, A_TD_MAXWIN, (uint32_t)(r.maxwin + end - s.maxend));
    if ((uint32_t)((uint32_t)r.maxend - 1 - sack - win) >= 0x80000000u)
        SET(fe->receiver, A_TD_MAXEND, (uint32_t)(sack + win + (win == 0)));
    if (ack == (uint32_t)r.end) {
        rflags &= ~(uint64_t)FLAG_DATA_UNACKNOWLEDGED;
        SET(fe->receiver, A_TD_FLAGS, rflags);
    }
    /* index == ACK_SET: retransmission bookkeeping */
    uint64_t l_seq, l_ack, l_end, l_win, l_dir;
    const uint64_t L = 1ULL << 32;
    int same = 1, k;
    PyObject *st = fe->st;
    if ((k = get_u32(fe, st, A_ST_LAST_SEQ, L, &l_seq)) < 0) return NULL;
    same = same && k && l_seq == seq;
    if ((k = get_u32(fe, st, A_ST_LAST_DIR, 2, &l_dir)) < 0) return NULL;
    same = same && k && l_dir == (uint64_t)fe->dir;
    if ((k = get_u32(fe, st, A_ST_LAST_ACK, L, &l_ack)) < 0) return NULL;
    same = same && k && l_ack == ack;
    if ((k = get_u32(fe, st, A_ST_LAST_END, L, &l_end)) < 0) return NULL;
    same = same && k && l_end == end;
    if ((k = get_u32(fe, st, A_ST_LAST_WIN, L, &l_win)) < 0) return NULL;
    same = same && k && l_win == win_raw;
    if (same) {
        PyObject *v = aget(fe, st, A_ST_RETRANS);
        if (v == NULL) return NULL;
        PyObject *one = PyLong_FromLong(1);
        PyObject *v1 = one ? PyNumber_Add(v, one) : NULL;
        Py_DECREF(v);
        Py_XDECREF(one);
        if (v1 == NULL) return NULL;
        int rc = aset(fe, st, A_ST_RETRANS, v1);
        Py_DECREF(v1);
        if (rc < 0) return NULL;
    } else {
        SET(st, A_ST_LAST_DIR, fe->dir);
        SET(st, A_ST_LAST_SEQ, seq);
        SET(st, A_ST_LAST_ACK, ack);
        SET(st, A_ST_LAST_END, end);
        SET(st, A_ST_LAST_WIN, win_raw);
        SET(st, A_ST_RETRANS, 0);
    }
    return tcp_accept(fe, now, sflags | rflags, win_raw);
}

/* The end of nf_conntrack_tcp_packet for an accepted ACK that stays ESTABLISHED: last_index and
 * last_dir, tcp_timeout(table, st, ACK_SET, ESTABLISHED) - `last_win` is st.last_win when known
 * (-1: read it) - and the refresh, shortened to the unacknowledged timeout while [UNREPLIED]. */
static PyObject *tcp_accept(FastEntry *fe, double now, uint64_t seen_flags, long long last_win) {
    PyObject *st = fe->st;
    const uint64_t L = 1ULL << 32;
    SET(st, A_ST_LAST_INDEX, ACK_SET);
    SET(st, A_ST_LAST_DIR, fe->dir);
    if (last_win < 0) {
        uint64_t w;
        int k = get_u32(fe, st, A_ST_LAST_WIN, L, &w);
        if (k < 0) return NULL;
        last_win = k ? (long long)w : 1;    /* past 32 bits: not zero */
    }
    PyObject *timeout = fe->t_est;
    long long tval = fe->v_est;
    int overflow = 0;
    PyObject *rv = aget(fe, st, A_ST_RETRANS);
    if (rv == NULL) return NULL;
    long long nretrans = PyLong_AsLongLongAndOverflow(rv, &overflow);
    Py_DECREF(rv);
    if (nretrans == -1 && PyErr_Occurred()) return NULL;
    int many = overflow > 0 || (!overflow && nretrans >= fe->v_max_retrans);
    if (many && tval > fe->v_retrans) {
        timeout = fe->t_retrans; tval = fe->v_retrans;
    } else if (seen_flags & FLAG_DATA_UNACKNOWLEDGED) {
        if (tval > fe->v_unack) { timeout = fe->t_unack; tval = fe->v_unack; }
    } else if (last_win == 0 && tval > fe->v_retrans) {
        timeout = fe->t_retrans; tval = fe->v_retrans;
    }
    long long refresh = (!fe->seen_reply && tval > fe->v_unack) ? fe->v_unack : tval;
    if (!fe->fixed && set_ct_timeout(fe, now + (double)refresh) < 0) return NULL;
    if (!fe->detail) return Py_NewRef(fe->no_detail);
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    if (PyDict_SetItem(d, s_state, s_ESTABLISHED) < 0 || PyDict_SetItem(d, s_new_state, s_ESTABLISHED) < 0 ||
        PyDict_SetItem(d, s_timeout, timeout) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* nf_conntrack_udp_packet when it changes nothing but the timeout. */
static PyObject *udp_fast(FastEntry *fe, const unsigned char *p, double now) {
    int g = ct_guards(fe, p, now);
    if (g <= 0) { if (g < 0) return NULL; Py_RETURN_NONE; }
    PyObject *extra = fe->udp_timeout;
    if (fe->seen_reply && fe->st != Py_None) {
        double stream_ts;
        if (get_double(fe, fe->st, A_ST_STREAM_TS, &stream_ts) < 0) return NULL;
        if (now > stream_ts) {
            if (!fe->assured) Py_RETURN_NONE;
            extra = fe->udp_stream_timeout;
        }
    }
    if (!fe->fixed) {
        double x = PyFloat_AsDouble(extra);
        if (x == -1.0 && PyErr_Occurred()) return NULL;
        if (set_ct_timeout(fe, now + x) < 0) return NULL;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    if (PyDict_SetItem(d, s_timeout, extra) < 0 || PyDict_SetItem(d, s_assured, fe->assured ? Py_True : Py_False) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

/* nf_conntrack_icmp_packet for a query of a known connection: the refresh. */
static PyObject *icmp_fast(FastEntry *fe, const unsigned char *p, double now) {
    int g = ct_guards(fe, p, now);
    if (g <= 0) { if (g < 0) return NULL; Py_RETURN_NONE; }
    if (!fe->fixed) {
        double x = PyFloat_AsDouble(fe->icmp_timeout);
        if (x == -1.0 && PyErr_Occurred()) return NULL;
        if (set_ct_timeout(fe, now + x) < 0) return NULL;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) return NULL;
    if (PyDict_SetItem(d, s_timeout, fe->icmp_timeout) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static PyObject *fast_run(FastEntry *fe, const unsigned char *p, Py_ssize_t n, double now) {
    if (n < fe->tot_len) Py_RETURN_NONE;            /* cannot happen: the length is in the key */
    if (fe->kind == K_TCP) return tcp_fast(fe, p, n, now);
    if (fe->kind == K_UDP) return udp_fast(fe, p, now);
    if (fe->kind == K_ICMP) return icmp_fast(fe, p, now);
    int g = guards(fe, p);
    if (g < 0) return NULL;
    if (!g) Py_RETURN_NONE;
    return Py_NewRef(fe->no_detail);
}

/* ---- the FastEntry type --------------------------------------------------------------- */

static PyObject *sysctl_int(PyObject *sysctl, const char *name, long long *out) {
    PyObject *v = PyDict_GetItemString(sysctl, name);
    if (v == NULL || !PyLong_CheckExact(v)) {
        PyErr_Format(PyExc_TypeError, "sysctl %s is not an int", name);
        return NULL;
    }
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred()) return NULL;
    return Py_NewRef(v);
}

static int FastEntry_init(FastEntry *fe, PyObject *args, PyObject *kw) {
    static char *names[] = {"kind", "hlen", "tot_len", "proto", "check_l4", "ct", "st", "table", "ct_sig",
                            "gc_interval", "fixed", "neigh", "neigh_sig", "neigh_entries", "neigh_key",
                            "assured", "seen_reply", "direction", "detail", "sender", "receiver", "sysctl",
                            "no_detail", "slow", "touch", NULL};
    PyObject *ct_sig, *neigh_sig, *sysctl;
    fe->ct = fe->st = fe->table = fe->neigh = fe->neigh_entries = fe->nkey = fe->sender = fe->receiver = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "innipOOOOdpOOOOppipOOOOOp", names, &fe->kind, &fe->hlen,
                                     &fe->tot_len, &fe->proto, &fe->check_l4, &fe->ct, &fe->st, &fe->table,
                                     &ct_sig, &fe->gc_interval, &fe->fixed, &fe->neigh, &neigh_sig,
                                     &fe->neigh_entries, &fe->nkey, &fe->assured, &fe->seen_reply, &fe->dir,
                                     &fe->detail, &fe->sender, &fe->receiver, &sysctl, &fe->no_detail, &fe->slow,
                                     &fe->touch))
        return -1;
    if (fe->kind < K_PLAIN || fe->kind > K_ICMP
        || fe->hlen < 20 || fe->tot_len < fe->hlen + (fe->kind == K_TCP ? 20 : fe->kind != K_PLAIN ? 8 : 0)) {
        PyErr_SetString(PyExc_ValueError, "lengths");
        return -1;
    }
    if (!PyDict_Check(fe->neigh_entries) || (sysctl != Py_None && !PyDict_Check(sysctl))) {
        PyErr_SetString(PyExc_TypeError, "neigh_entries and sysctl must be dicts");
        return -1;
    }
    fe->pseudo_const = (uint64_t)fe->proto + (uint64_t)(fe->tot_len - fe->hlen);
    for (int a = 0; a < A_COUNT; a++) {
        PyObject *owner = a <= A_CT_LABELS ? fe->ct : a <= A_ST_STREAM_TS ? fe->st
                        : a <= A_TD_FLAGS ? fe->sender : a <= A_N_UPDATED ? fe->neigh : fe->table;
        fe->off[a] = slot_offset(owner, attr_name[a]);
    }
    if (fe->kind == K_TCP && Py_TYPE(fe->receiver) != Py_TYPE(fe->sender)) {
        PyErr_SetString(PyExc_TypeError, "sender and receiver differ in type");
        return -1;
    }
    Py_INCREF(fe->ct); Py_INCREF(fe->st); Py_INCREF(fe->table); Py_INCREF(fe->neigh);
    Py_INCREF(fe->neigh_entries); Py_INCREF(fe->nkey); Py_INCREF(fe->sender); Py_INCREF(fe->receiver);
    Py_INCREF(fe->no_detail); Py_INCREF(fe->slow);
    if (fe->kind != K_PLAIN) {
        if (!PyArg_ParseTuple(ct_sig, "OOOO", &fe->status, &fe->mark, &fe->labels, &fe->pstate)) return -1;
        Py_INCREF(fe->status); Py_INCREF(fe->mark); Py_INCREF(fe->labels); Py_INCREF(fe->pstate);
    }
    if (fe->neigh != Py_None) {
        if (!PyArg_ParseTuple(neigh_sig, "OOOO", &fe->nstate, &fe->nhh, &fe->nlladdr, &fe->ntimer)) return -1;
        Py_INCREF(fe->nstate); Py_INCREF(fe->nhh); Py_INCREF(fe->nlladdr); Py_INCREF(fe->ntimer);
    }
    long long unused;
    if (fe->kind == K_ICMP) {
        if (!(fe->icmp_timeout = sysctl_int(sysctl, "nf_conntrack_icmp_timeout", &unused))) return -1;
    } else if (fe->kind == K_UDP) {
        if (!(fe->udp_timeout = sysctl_int(sysctl, "nf_conntrack_udp_timeout", &unused))) return -1;
        if (!(fe->udp_stream_timeout = sysctl_int(sysctl, "nf_conntrack_udp_timeout_stream", &unused))) return -1;
    } else if (fe->kind == K_TCP) {
        PyObject *mr;
        if (!(fe->t_est = sysctl_int(sysctl, "nf_conntrack_tcp_timeout_established", &fe->v_est))) return -1;
        if (!(fe->t_retrans = sysctl_int(sysctl, "nf_conntrack_tcp_timeout_max_retrans", &fe->v_retrans))) return -1;
        if (!(fe->t_unack = sysctl_int(sysctl, "nf_conntrack_tcp_timeout_unacknowledged", &fe->v_unack))) return -1;
        if (!(mr = sysctl_int(sysctl, "nf_conntrack_tcp_max_retrans", &fe->v_max_retrans))) return -1;
        Py_DECREF(mr);
        long long liberal;
        if (!(mr = sysctl_int(sysctl, "nf_conntrack_tcp_be_liberal", &liberal))) return -1;
        Py_DECREF(mr);
        fe->be_liberal = liberal != 0;
    }
    return 0;
}

/* Every reference a FastEntry owns: one list for traverse and clear. */
#define FE_OWNED(X) X(ct) X(st) X(table) X(status) X(mark) X(labels) X(pstate) X(neigh) X(nstate) X(nhh) \
    X(nlladdr) X(ntimer) X(neigh_entries) X(nkey) X(udp_timeout) X(udp_stream_timeout) X(icmp_timeout) X(sender) \
    X(receiver) \
    X(t_est) X(t_retrans) X(t_unack) X(no_detail) X(slow)
#define FE_VISIT(field) Py_VISIT(fe->field);
#define FE_CLEAR(field) Py_CLEAR(fe->field);

static int FastEntry_traverse(FastEntry *fe, visitproc visit, void *arg) {
    FE_OWNED(FE_VISIT)
    return 0;
}

static int FastEntry_clear(FastEntry *fe) {
    FE_OWNED(FE_CLEAR)
    return 0;
}

static void FastEntry_dealloc(FastEntry *fe) {
    PyObject_GC_UnTrack(fe);
    FastEntry_clear(fe);
    Py_TYPE(fe)->tp_free((PyObject *)fe);
}

/* fast(payload, now) -> the tracker step's detail, or None when the packet must run the model. */
static PyObject *FastEntry_call(FastEntry *fe, PyObject *args, PyObject *kw) {
    Py_buffer buf;
    double now;
    if (!PyArg_ParseTuple(args, "y*d", &buf, &now)) return NULL;
    PyObject *r = fast_run(fe, buf.buf, buf.len, now);
    PyBuffer_Release(&buf);
    return r;
}

/* The serve_pcap hits since the last call, to be added to the FlowEntry's hits and tallies. */
static PyObject *FastEntry_take_tallied(FastEntry *fe, PyObject *unused) {
    long long t = fe->tallied;
    fe->tallied = 0;
    return PyLong_FromLongLong(t);
}

static PyMethodDef FastEntry_methods[] = {
    {"take_tallied", (PyCFunction)FastEntry_take_tallied, METH_NOARGS, "serve_pcap hits not yet handed over"},
    {NULL}
};

static PyTypeObject FastEntryType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pathtrace._fastpath.FastEntry",
    .tp_basicsize = sizeof(FastEntry),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A remembered path's guards and per-packet work (flowcache._compile in C).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastEntry_init,
    .tp_dealloc = (destructor)FastEntry_dealloc,
    .tp_traverse = (traverseproc)FastEntry_traverse,
    .tp_clear = (inquiry)FastEntry_clear,
    .tp_call = (ternaryfunc)FastEntry_call,
    .tp_methods = FastEntry_methods,
};

/* ---- rewrite (flowcache.rewrite: the path's header rewrites on another packet) ---------- */

/* lib/checksum.py csum_replace: RFC 1624 incremental update of a stored checksum. */
static uint16_t csum_replace(uint16_t check, uint32_t old, uint32_t new_, int wide) {
    uint64_t total = (uint16_t)~check;
    if (wide)
        total += ((~old) >> 16) + ((~old) & 0xFFFF) + (new_ >> 16) + (new_ & 0xFFFF);
    else
        total += (uint16_t)~old + (uint64_t)new_;
    while (total >> 16) total = (total & 0xFFFF) + (total >> 16);
    return (uint16_t)~total;
}

static inline uint16_t be16(const unsigned char *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline void put16(unsigned char *p, uint32_t v) { p[0] = (unsigned char)(v >> 8); p[1] = (unsigned char)v; }
static inline void put32(unsigned char *p, uint32_t v) { put16(p, v >> 16); put16(p + 2, v); }

/* The transport checksum's offset for NAT (skbuff._L4_CSUM_OFFSET; ICMP's for ports), -1: none. */
static int l4_csum_offset(int proto, int ports) {
    return proto == 6 ? 16 : proto == 17 ? 6 : (ports && proto == 1) ? 2 : -1;
}

/* SkBuff.set_addr / set_port / set_ttl / set_tos, replayed in place on the IP packet p[:tot_len]. */
static int apply_mangle(unsigned char *p, Py_ssize_t hlen, Py_ssize_t tot_len, PyObject *mangle) {
    unsigned char *l4 = p + hlen;
    Py_ssize_t seglen = tot_len - hlen;
    int proto = p[9], first = (be16(p + 6) & 0x1FFF) == 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mangle); i++) {
        PyObject *op = PyTuple_GET_ITEM(mangle, i);
        const char *name;
        PyObject *a1 = NULL;
        unsigned long long v = 0;
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) < 2 || !(name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(op, 0))))
            goto bad;
        if (PyTuple_GET_SIZE(op) == 3) a1 = PyTuple_GET_ITEM(op, 1);
        v = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(op, PyTuple_GET_SIZE(op) - 1));
        if (PyErr_Occurred()) return -1;
        if (strcmp(name, "set_addr") == 0 && a1 != NULL && v <= 0xFFFFFFFFULL) {
            const char *which = PyUnicode_AsUTF8(a1);
            if (which == NULL) return -1;
            int off = strcmp(which, "saddr") == 0 ? 12 : strcmp(which, "daddr") == 0 ? 16 : -1;
            if (off < 0) goto bad;
            uint32_t old = be32(p + off), new_ = (uint32_t)v;
            if (old == new_) continue;
            put32(p + off, new_);
            put16(p + 10, csum_replace(be16(p + 10), old, new_, 1));
            int co = l4_csum_offset(proto, 0);
            if (co >= 0 && first && seglen >= co + 2) {
                uint16_t c = be16(l4 + co);
                if (!(proto == 17 && c == 0)) {
                    uint16_t n = csum_replace(c, old, new_, 1);
                    put16(l4 + co, n ? n : (proto == 17 ? 0xFFFF : 0));
                }
            }
        } else if (strcmp(name, "set_port") == 0 && a1 != NULL && v <= 0xFFFF) {
            Py_ssize_t off = PyLong_AsSsize_t(a1);
            if (off == -1 && PyErr_Occurred()) return -1;
            if (off < 0) goto bad;
            if (!(first && seglen >= off + 2)) continue;
            uint32_t old = be16(l4 + off);
            if (old == v) continue;
            put16(l4 + off, (uint32_t)v);
            int co = l4_csum_offset(proto, 1);
            if (co >= 0 && first && seglen >= co + 2) {
                uint16_t c = be16(l4 + co);
                if (!(proto == 17 && c == 0)) put16(l4 + co, csum_replace(c, old, (uint32_t)v, 0));
            }
        } else if (strcmp(name, "set_ttl") == 0 && a1 == NULL && v <= 0xFF) {
            uint32_t old = ((uint32_t)p[8] << 8) | p[9];
            p[8] = (unsigned char)v;
            put16(p + 10, csum_replace(be16(p + 10), old, ((uint32_t)v << 8) | p[9], 0));
        } else if (strcmp(name, "set_tos") == 0 && a1 == NULL && v <= 0xFF) {
            uint32_t old = ((uint32_t)p[0] << 8) | p[1];
            p[1] = (unsigned char)v;
            put16(p + 10, csum_replace(be16(p + 10), old, ((uint32_t)p[0] << 8) | p[1], 0));
        } else {
            goto bad;
        }
    }
    return 0;
bad:
    PyErr_SetString(PyExc_ValueError, "rewrite: unknown mangle operation");
    return -1;
}

/* rewrite(payload, hlen, tot_len, mangle) -> bytes: flowcache.rewrite, the path's header
 * rewrites applied to another packet of the flow. */
static PyObject *rewrite(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t hlen, tot_len;
    PyObject *mangle;
    if (!PyArg_ParseTuple(args, "y*nnO!", &view, &hlen, &tot_len, &PyTuple_Type, &mangle)) return NULL;
    if (hlen < 20 || tot_len < hlen || tot_len > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "rewrite: lengths");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(view.buf, tot_len);
    PyBuffer_Release(&view);
    if (out == NULL) return NULL;
    if (apply_mangle((unsigned char *)PyBytes_AS_STRING(out), hlen, tot_len, mangle) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* ---- output lines from a flow template (render/template.py FlowTemplate) ----------------- */

typedef struct { char *data; Py_ssize_t len, cap; } Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < b->len + more) cap *= 2;
    char *d = PyMem_Realloc(b->data, cap);
    if (d == NULL) { PyErr_NoMemory(); return -1; }
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

/* Where a lane's lines go.  Without a descriptor into `buf`, returned to Python as bytes.  With
 * one (render/template.py DirectLines) written there with writev: literal pieces by reference to
 * the flats' own UTF-8 texts (each flat held in `held` until the call ends), the per-packet
 * values copied to `scratch`; Python's `flush` is called before the call's first write, so the
 * lines stay in order with what Python wrote to the same stream. */
#define OUT_IOV 1024                    /* IOV_MAX on Linux */
typedef struct {
    Buf buf;
    int fd;
    PyObject *flush, *held;
    struct iovec iov[OUT_IOV];
    int niov, flushed;
    Buf scratch;                        /* not reallocated while iov points into it */
    Py_ssize_t size;                    /* bytes of lines in this call */
} Out;

static int out_flush(Out *o) {
    if (o->niov == 0) return 0;
    if (!o->flushed) {
        PyObject *r = PyObject_CallNoArgs(o->flush);
        if (r == NULL) return -1;
        Py_DECREF(r);
        o->flushed = 1;
    }
    struct iovec *v = o->iov;
    int n = o->niov;
    while (n > 0) {
        ssize_t w;
        int err;
        Py_BEGIN_ALLOW_THREADS
        w = writev(o->fd, v, n);
        err = errno;
        Py_END_ALLOW_THREADS
        if (w < 0) {
            if (err == EINTR) {                 /* replay's SIGINT handler only sets a flag */
                if (PyErr_CheckSignals() < 0) return -1;
                continue;
            }
            if (err == EAGAIN || err == EWOULDBLOCK) {
                struct pollfd pfd = {o->fd, POLLOUT, 0};
                Py_BEGIN_ALLOW_THREADS
                poll(&pfd, 1, -1);
                Py_END_ALLOW_THREADS
                continue;
            }
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        while (n > 0 && (size_t)w >= v->iov_len) { w -= (ssize_t)v->iov_len; v++; n--; }
        if (n > 0) { v->iov_base = (char *)v->iov_base + w; v->iov_len -= (size_t)w; }
    }
    o->niov = 0;
    o->scratch.len = 0;
    return 0;
}

/* A piece of a line: `value` pieces live only for this call (copied when written later). */
static inline int out_put(Out *o, const char *s, Py_ssize_t n, int value) {
    if (n == 0) return 0;
    o->size += n;
    if (o->fd < 0) return buf_put(&o->buf, s, n);
    if (o->niov == OUT_IOV && out_flush(o) < 0) return -1;     /* a line of more pieces than that */
    if (value) {
        char *d = o->scratch.data + o->scratch.len;     /* room made by out_room */
        memcpy(d, s, n);
        o->scratch.len += n;
        s = d;
    }
    o->iov[o->niov].iov_base = (void *)s;
    o->iov[o->niov].iov_len = (size_t)n;
    o->niov++;
    return 0;
}

/* Room for a line of `pieces` pieces, `values` bytes of them per-packet values (a flush
 * in the middle of the line leaves room for the rest: scratch starts again), and its flat held. */
static int out_room(Out *o, PyObject *flat, Py_ssize_t pieces, Py_ssize_t values) {
    if (o->fd < 0) return 0;
    if (o->niov + pieces > OUT_IOV || o->scratch.len + values > o->scratch.cap) {
        if (out_flush(o) < 0) return -1;
        if (values > o->scratch.cap && buf_reserve(&o->scratch, values) < 0) return -1;
    }
    Py_ssize_t held = PyList_GET_SIZE(o->held);
    if (held && PyList_GET_ITEM(o->held, held - 1) == flat) return 0;     /* the same flow again */
    return PyList_Append(o->held, flat);
}

/* FlowTemplate.numbers (render/template.py) */
enum { NUM_NONE = 0, NUM_TCP = 1, NUM_ECHO = 2 };
enum { T_FLATS, T_NUMBERS, T_HLEN, T_TRACKER, T_TIMEFMT, T_L2OUT, T_MANGLE, T_TOTLEN, T_COUNT };
static PyObject *tpl_name[T_COUNT];

typedef struct { PyTypeObject *type; Py_ssize_t off[T_COUNT]; } TplLayout;

/* tpl.<attr>, borrowed (the template is held by the caller). */
static PyObject *tget(TplLayout *lay, PyObject *tpl, int a) {
    Py_ssize_t off = lay->off[a];
    if (off < 0) {
        PyObject *v = PyObject_GetAttr(tpl, tpl_name[a]);
        Py_XDECREF(v);                  /* a plain attribute: the template's __dict__ holds it */
        return v;
    }
    PyObject *v = *(PyObject **)((char *)tpl + off);
    if (v == NULL) PyErr_SetObject(PyExc_AttributeError, tpl_name[a]);
    return v;
}

static Py_ssize_t tget_ssize(TplLayout *lay, PyObject *tpl, int a) {
    PyObject *v = tget(lay, tpl, a);
    return v == NULL ? -1 : PyLong_AsSsize_t(v);
}

/* FlowTemplate.line (render/template.py) for a served record: the template's flat for the
 * tracker's detail, with index, time, sequence and acknowledgement numbers and the emitted
 * frame's hex spliced in.  `flat_for(template, detail)` gives a flat the template lacks. */
static int append_line(Out *out, TplLayout *lay, PyObject *tpl, PyObject *detail, Py_ssize_t index, double now,
                       const unsigned char *p, PyObject *flat_for) {
    char num[4][32], timebuf[64];
    const char *vals[6] = {num[0], timebuf, num[2], num[3], "", ""};
    Py_ssize_t vlen[6] = {0, 0, 0, 0, 0, 0};
    PyObject *flat = NULL, *key = NULL;
    char *hex = NULL;
    int rc = -1;
    vlen[0] = snprintf(num[0], 32, "%zd", index);
    PyObject *tf = tget(lay, tpl, T_TIMEFMT);
    if (tf == NULL) goto out;
    char *timestr = PyUnicode_CompareWithASCIIString(tf, "f") == 0
        ? PyOS_double_to_string(now, 'f', 6, 0, NULL)
        : PyOS_double_to_string(now, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (timestr == NULL) goto out;
    vlen[1] = (Py_ssize_t)strlen(timestr);
    if (vlen[1] >= (Py_ssize_t)sizeof(timebuf)) { PyMem_Free(timestr); PyErr_SetString(PyExc_ValueError, "time"); goto out; }
    memcpy(timebuf, timestr, vlen[1] + 1);
    PyMem_Free(timestr);
    Py_ssize_t hlen = tget_ssize(lay, tpl, T_HLEN);
    if (hlen == -1 && PyErr_Occurred()) goto out;
    Py_ssize_t numbers = tget_ssize(lay, tpl, T_NUMBERS);
    if (numbers == -1 && PyErr_Occurred()) goto out;
    if (numbers == NUM_TCP) {
        vlen[2] = snprintf(num[2], 32, "%u", be32(p + hlen + 4));
        vlen[3] = snprintf(num[3], 32, "%u", be32(p + hlen + 8));
    } else if (numbers == NUM_ECHO) {
        vlen[2] = snprintf(num[2], 32, "%u", (unsigned)((p[hlen + 6] << 8) | p[hlen + 7]));
        vlen[3] = snprintf(num[3], 32, "0");
    } else {
        vlen[2] = vlen[3] = 1;
        num[2][0] = num[3][0] = '0';
    }
    Py_ssize_t tracker = tget_ssize(lay, tpl, T_TRACKER);
    if (tracker == -1 && PyErr_Occurred()) goto out;
    if (tracker >= 0) {
        PyObject *values = PyDict_Values(detail);
        key = values ? PyList_AsTuple(values) : NULL;
        Py_XDECREF(values);
    } else {
        key = PyTuple_New(0);
    }
    if (key == NULL) goto out;
    PyObject *flats = tget(lay, tpl, T_FLATS);
    if (flats == NULL) goto out;
    flat = PyDict_GetItemWithError(flats, key);
    Py_XINCREF(flat);
    if (flat == NULL) {
        if (PyErr_Occurred()) goto out;
        PyObject *empty = tracker >= 0 ? Py_NewRef(detail) : PyDict_New();
        if (empty == NULL) goto out;
        flat = PyObject_CallFunctionObjArgs(flat_for, tpl, empty, NULL);
        Py_DECREF(empty);
        if (flat == NULL) goto out;
    }
    if (!PyTuple_Check(flat)) { PyErr_SetString(PyExc_TypeError, "template flat"); goto out; }
    PyObject *l2 = tget(lay, tpl, T_L2OUT);
    if (l2 == NULL) goto out;
    if (l2 != Py_None) {
        Py_ssize_t tot_len = tget_ssize(lay, tpl, T_TOTLEN);
        if (tot_len == -1 && PyErr_Occurred()) goto out;
        PyObject *mangle = tget(lay, tpl, T_MANGLE);
        if (mangle == NULL || !PyBytes_Check(l2) || !PyTuple_Check(mangle)) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "template l2_out/mangle");
            goto out;
        }
        Py_ssize_t l2len = PyBytes_GET_SIZE(l2), n = l2len + tot_len;
        unsigned char *frame = PyMem_Malloc(n);
        hex = PyMem_Malloc(2 * n + 1);
        if (frame == NULL || hex == NULL) { PyMem_Free(frame); PyErr_NoMemory(); goto out; }
        memcpy(frame, PyBytes_AS_STRING(l2), l2len);
        memcpy(frame + l2len, p, tot_len);
        if (apply_mangle(frame + l2len, hlen, tot_len, mangle) < 0) { PyMem_Free(frame); goto out; }
        static const char digits[] = "0123456789abcdef";
        for (Py_ssize_t i = 0; i < n; i++) {
            hex[2 * i] = digits[frame[i] >> 4];
            hex[2 * i + 1] = digits[frame[i] & 15];
        }
        PyMem_Free(frame);
        vals[5] = hex;
        vlen[5] = 2 * n;
    }
    Py_ssize_t pieces = PyTuple_GET_SIZE(flat), values = 0;
    for (Py_ssize_t i = 0; i < pieces; i++) {
        PyObject *x = PyTuple_GET_ITEM(flat, i);
        if (PyLong_CheckExact(x)) {
            long k = PyLong_AsLong(x);
            if (k < 0 || k > 5) { PyErr_SetString(PyExc_ValueError, "template slot"); goto out; }
            values += vlen[k];
        } else if (!PyUnicode_Check(x)) {
            PyErr_SetString(PyExc_TypeError, "template flat");
            goto out;
        }
    }
    if (out_room(out, flat, pieces, values) < 0) goto out;
    for (Py_ssize_t i = 0; i < pieces; i++) {
        PyObject *x = PyTuple_GET_ITEM(flat, i);
        if (PyLong_CheckExact(x)) {
            long k = PyLong_AsLong(x);
            if (out_put(out, vals[k], vlen[k], 1) < 0) goto out;
        } else {
            Py_ssize_t n;
            const char *t = PyUnicode_AsUTF8AndSize(x, &n);     /* kept by the str, held by the flat */
            if (t == NULL || out_put(out, t, n, 0) < 0) goto out;
        }
    }
    rc = 0;
out:
    PyMem_Free(hex);
    Py_XDECREF(key);
    Py_XDECREF(flat);
    return rc;
}

/* ---- the lanes over a capture's buffer ----------------------------------------------------- */

static inline uint32_t rd32(const unsigned char *p, int little) {
    return little ? ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0] : be32(p);
}

/* A replay's cache as the C lanes see it: the entries, the neighbour timers' clock, and
 * for per-packet output the renderer's template type; `foreign`: keys of other workers' flows. */
typedef struct {
    PyObject *entries, *clock, *flat_for, *foreign;
    Out out;
    TplLayout lay;
    Py_ssize_t clock_off, fast_off, render_off, dev_off, kind_off, mangle_off, l2_off;
    PyTypeObject *entry_type;
    struct MegaLane_ *mega;     /* the megaflow cache's new TCP connections (_megalane.c), or NULL */
    /* capture agreement (bidirectional captures; agreement.py Agreement.lane_args): None when off */
    PyObject *agree, *macs, *devnames, *fastp, *made, *sent_kinds, *sent_devices;
    double ttl;
} Lane;

#define FAST_MAX (1 << 20)      /* predictions kept in C's dict before Python must expire some */

enum { R_SERVED, R_SKIPPED, R_STOP, R_ERROR };

static int lane_open(Lane *L, PyObject *entries, PyObject *clock, PyObject *template_type, PyObject *flat_for,
                     PyObject *foreign, PyObject *agree) {
    memset(L, 0, sizeof(*L));
    L->out.fd = -1;
    L->entries = entries;
    L->clock = clock;
    L->flat_for = flat_for;
    L->foreign = foreign;
    L->fast_off = L->render_off = L->dev_off = L->kind_off = L->mangle_off = L->l2_off = -1;
    if (!PyDict_Check(entries) || (foreign != Py_None && !PySet_Check(foreign))) {
        PyErr_SetString(PyExc_TypeError, "serve: entries must be a dict, foreign a set or None");
        return -1;
    }
    if (agree != Py_None) {
        if (!PyArg_ParseTuple(agree, "O!O!O!O!O!O!d;serve: agree must be (macs, devnames, fast, made, sent_kinds, "
                              "sent_devices, ttl)", &PyDict_Type, &L->macs, &PyDict_Type, &L->devnames,
                              &PyDict_Type, &L->fastp, &PyDict_Type, &L->made, &PyDict_Type, &L->sent_kinds,
                              &PySet_Type, &L->sent_devices, &L->ttl))
            return -1;
        L->agree = agree;
    }
    if (template_type != Py_None) {
        if (!PyType_Check(template_type) || !PyCallable_Check(flat_for)) {
            PyErr_SetString(PyExc_TypeError, "serve: template_type must be a type, flat_for callable");
            return -1;
        }
        L->lay.type = (PyTypeObject *)template_type;
        for (int a = 0; a < T_COUNT; a++) L->lay.off[a] = type_slot_offset(L->lay.type, tpl_name[a]);
        /* render/template.py DirectLines: the lines go straight to its descriptor */
        PyObject *fd = PyObject_GetAttr(flat_for, s_fd);
        if (fd == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) return -1;
            PyErr_Clear();
        } else {
            long v = PyLong_Check(fd) ? PyLong_AsLong(fd) : -1;
            Py_DECREF(fd);
            if (v == -1 && PyErr_Occurred()) return -1;
            if (v >= 0 && v <= INT_MAX) {
                L->out.flush = PyObject_GetAttr(flat_for, s_flush);
                if (L->out.flush == NULL) return -1;
                L->out.held = PyList_New(0);
                if (L->out.held == NULL) { Py_CLEAR(L->out.flush); return -1; }
                L->out.fd = (int)v;
            }
        }
    }
    L->clock_off = slot_offset(clock, s_earliest);
    return 0;
}

/* Whether the lane may serve another record before handing back to Python (which checks for
 * SIGINT and shows progress between calls): up to about 1 MiB of lines to copy, 16 MiB to write. */
static inline int lane_room(Lane *L) {
    return L->out.size < (L->out.fd >= 0 ? (16 << 20) : (1 << 20));
}

/* (off, index, served, lines) and the lane's buffers freed; lines written to a descriptor are b"". */
static PyObject *lane_close(Lane *L, Py_ssize_t off, Py_ssize_t index, Py_ssize_t served, int ok) {
    PyObject *result = NULL;
    Out *o = &L->out;
    if (ok && o->fd >= 0 && out_flush(o) < 0) ok = 0;
    if (ok) {
        if (L->lay.type != NULL) {
            PyObject *text = PyBytes_FromStringAndSize(o->buf.data ? o->buf.data : "", o->buf.len);
            if (text != NULL) result = Py_BuildValue("nnnN", off, index, served, text);
        } else {
            result = Py_BuildValue("nnnO", off, index, served, Py_None);
        }
    }
    PyMem_Free(o->buf.data);
    PyMem_Free(o->scratch.data);
    Py_XDECREF(o->flush);
    Py_XDECREF(o->held);
    return result;
}

/* One captured Ethernet frame f[:caplen] at capture time `now`, arrived on the interface
 * named name[:nlen] (pcapng's if_name; empty for a classic pcap): served from the cache,
 * skipped (another worker's flow), or R_STOP when Python must run it. */
/* Whether a neighbour or TCP timer is due by `now` (1), not (0), or an error (-1): Python runs those. */
static int timers_due(Lane *L, double now) {
    PyObject *ev = L->clock_off >= 0 ? Py_XNewRef(*(PyObject **)((char *)L->clock + L->clock_off))
                                     : PyObject_GetAttr(L->clock, s_earliest);
    if (ev == NULL) { if (!PyErr_Occurred()) PyErr_SetObject(PyExc_AttributeError, s_earliest); return -1; }
    double earliest = PyFloat_AsDouble(ev);
    Py_DECREF(ev);
    if (earliest == -1.0 && PyErr_Occurred()) return -1;
    return !(now < earliest);
}

/* d[key] = d.get(key, 0) + by */
static int dict_incr(PyObject *d, PyObject *key, long long by) {
    PyObject *cur = PyDict_GetItemWithError(d, key);
    if (cur == NULL && PyErr_Occurred()) return -1;
    long long v = cur == NULL ? 0 : PyLong_AsLongLong(cur);
    if (v == -1 && PyErr_Occurred()) return -1;
    PyObject *n = PyLong_FromLongLong(v + by);
    if (n == NULL) return -1;
    int r = PyDict_SetItem(d, key, n);
    Py_DECREF(n);
    return r;
}

/* A FlowEntry field as a new reference (by slot offset when it is one). */
static PyObject *eattr(PyObject *e, Py_ssize_t off, PyObject *name) {
    if (off < 0) return PyObject_GetAttr(e, name);
    PyObject *v = *(PyObject **)((char *)e + off);
    if (v == NULL) { PyErr_SetObject(PyExc_AttributeError, name); return NULL; }
    return Py_NewRef(v);
}

/* The host interface that sent frame f (a str, new reference), or NULL without error when the
 * frame was received or Python must decide (direction.py: the pcapng flag `dir`, 1 in, 2 out,
 * else a source MAC of the host's with another destination MAC; then the interface is the
 * pcapng if_name when it is the host's, else the owner of the source MAC).  *out says whether
 * the frame was sent. */
static PyObject *sent_dev(Lane *L, const unsigned char *name, Py_ssize_t nlen, const unsigned char *f, int dir,
                          int *out) {
    *out = 0;
    if (dir == 1) return NULL;
    PyObject *mac = PyBytes_FromStringAndSize((const char *)f + 6, 6);
    if (mac == NULL) return NULL;
    PyObject *owner = PyDict_GetItemWithError(L->macs, mac);
    Py_DECREF(mac);
    if (owner == NULL && PyErr_Occurred()) return NULL;
    if (dir != 2 && (owner == NULL || memcmp(f, f + 6, 6) == 0)) return NULL;
    *out = 1;
    if (nlen > 0) {
        PyObject *nm = PyBytes_FromStringAndSize((const char *)name, nlen);
        if (nm == NULL) return NULL;
        PyObject *dev = PyDict_GetItemWithError(L->devnames, nm);
        Py_DECREF(nm);
        if (dev != NULL) return Py_NewRef(dev);
        if (PyErr_Occurred()) return NULL;
    }
    return Py_XNewRef(owner);
}

/* A frame the host sent: consumed when it is exactly a prediction the lane registered (Agreement.fast)
 * within the prediction TTL, and tallied as predicted; R_STOP otherwise (Python matches the rest). */
static int lane_sent(Lane *L, PyObject *dev, const unsigned char *f, Py_ssize_t caplen, double now) {
    const unsigned char *p = f + 14;
    Py_ssize_t plen = caplen - 14;
    if (f[12] != 0x08 || f[13] != 0x00 || plen < 20) return R_STOP;
    int due = timers_due(L, now);
    if (due) return due < 0 ? R_ERROR : R_STOP;
    Py_ssize_t tot = be16(p + 2), n = tot < plen ? tot : plen;
    PyObject *l3 = PyBytes_FromStringAndSize((const char *)p, n);
    if (l3 == NULL) return R_ERROR;
    PyObject *key = PyTuple_Pack(3, dev, i_ETH_P_IP, l3);
    Py_DECREF(l3);
    if (key == NULL) return R_ERROR;
    int rc = R_ERROR;
    PyObject *rec = PyDict_GetItemWithError(L->fastp, key);
    if (rec == NULL) { rc = PyErr_Occurred() ? R_ERROR : R_STOP; goto out; }
    if (!PyList_CheckExact(rec) || PyList_GET_SIZE(rec) != 4) {
        PyErr_SetString(PyExc_TypeError, "Agreement.fast: records are [count, kind, time, index]");
        goto out;
    }
    double t = PyFloat_AsDouble(PyList_GET_ITEM(rec, 2));
    long long count = PyLong_AsLongLong(PyList_GET_ITEM(rec, 0));
    if (PyErr_Occurred()) goto out;
    if (t < now - L->ttl || count <= 0) { rc = R_STOP; goto out; }     /* expired: Python counts it unseen */
    /* a frame the host built itself also tells its TCP model what was sent (sent.py _observe_tcp): Python's */
    if (PyUnicode_CompareWithASCIIString(PyList_GET_ITEM(rec, 1), "forwarded") != 0) { rc = R_STOP; goto out; }
    PyObject *kind = Py_NewRef(PyList_GET_ITEM(rec, 1));
    if (count == 1) {
        if (PyDict_DelItem(L->fastp, key) < 0) { Py_DECREF(kind); goto out; }
    } else {
        PyObject *c = PyLong_FromLongLong(count - 1);
        if (c == NULL) { Py_DECREF(kind); goto out; }
        PyList_SetItem(rec, 0, c);
    }
    int bad = dict_incr(L->sent_kinds, kind, 1) < 0 || PySet_Add(L->sent_devices, dev) < 0;
    Py_DECREF(kind);
    rc = bad ? R_ERROR : R_SERVED;
out:
    Py_DECREF(key);
    return rc;
}

/* Register the frame a served entry's path sent (FlowCache._record's bytes) as a prediction. */
static int lane_predict(Lane *L, PyObject *dev, PyObject *kind, PyObject *mangle, FastEntry *fe,
                        const unsigned char *p, double now, Py_ssize_t index) {
    PyObject *l3 = PyBytes_FromStringAndSize((const char *)p, fe->tot_len);
    if (l3 == NULL) return -1;
    if (apply_mangle((unsigned char *)PyBytes_AS_STRING(l3), fe->hlen, fe->tot_len, mangle) < 0) {
        Py_DECREF(l3);
        return -1;
    }
    PyObject *key = PyTuple_Pack(3, dev, i_ETH_P_IP, l3);
    Py_DECREF(l3);
    if (key == NULL) return -1;
    int r = -1;
    PyObject *t = PyFloat_FromDouble(now), *ix = PyLong_FromSsize_t(index);
    if (t == NULL || ix == NULL) goto out;
    PyObject *rec = PyDict_GetItemWithError(L->fastp, key);
    if (rec == NULL) {
        if (PyErr_Occurred()) goto out;
        PyObject *one = PyLong_FromLong(1);
        PyObject *nrec = one ? PyList_New(4) : NULL;
        if (nrec == NULL) { Py_XDECREF(one); goto out; }
        PyList_SET_ITEM(nrec, 0, one);
        PyList_SET_ITEM(nrec, 1, Py_NewRef(kind));
        PyList_SET_ITEM(nrec, 2, Py_NewRef(t));
        PyList_SET_ITEM(nrec, 3, Py_NewRef(ix));
        r = PyDict_SetItem(L->fastp, key, nrec);
        Py_DECREF(nrec);
    } else {
        if (!PyList_CheckExact(rec) || PyList_GET_SIZE(rec) != 4) {
            PyErr_SetString(PyExc_TypeError, "Agreement.fast: records are [count, kind, time, index]");
            goto out;
        }
        long long count = PyLong_AsLongLong(PyList_GET_ITEM(rec, 0));
        if (count == -1 && PyErr_Occurred()) goto out;
        PyObject *c = PyLong_FromLongLong(count + 1);
        if (c == NULL) goto out;
        PyList_SetItem(rec, 0, c);
        PyList_SetItem(rec, 2, Py_NewRef(t));
        PyList_SetItem(rec, 3, Py_NewRef(ix));
        r = 0;
    }
    if (r == 0) r = dict_incr(L->made, dev, 1);
out:
    Py_XDECREF(t);
    Py_XDECREF(ix);
    Py_DECREF(key);
    return r;
}

#include "_megalane.c"

static int lane_frame(Lane *L, const unsigned char *name, Py_ssize_t nlen, const unsigned char *f,
                      Py_ssize_t caplen, double now, Py_ssize_t index, int dir) {
    unsigned char keybuf[256 + 38];
    if (L->agree != NULL && caplen >= 14) {
        int out;
        PyObject *dev = sent_dev(L, name, nlen, f, dir, &out);
        if (dev == NULL && PyErr_Occurred()) return R_ERROR;
        if (out) {
            if (dev == NULL) return R_STOP;
            int rc = lane_sent(L, dev, f, caplen, now);
            Py_DECREF(dev);
            return rc;
        }
    }
    if (caplen < 14 + 20 || nlen > 256) return R_STOP;
    const unsigned char *p = f + 14;
    Py_ssize_t plen = caplen - 14;
    if (f[12] != 0x08 || f[13] != 0x00 || p[0] != 0x45) return R_STOP;
    Py_ssize_t need = p[9] == 6 ? 34 : p[9] == 17 ? 26 : p[9] == 1 ? 28 : -1;
    if (need < 0 || plen < need) return R_STOP;
    /* FlowCache.key: interface name, dst, src, IP header but ID and checksum, ports (+ TCP offset and flags)
     * or ICMP type, code and id (+ two zero bytes), length */
    unsigned char *key = keybuf + nlen;
    memcpy(keybuf, name, nlen);
    memcpy(key, f, 12);
    memcpy(key + 12, p, 4);
    memcpy(key + 16, p + 6, 4);
    memcpy(key + 20, p + 12, 8);
    if (p[9] == 6) { memcpy(key + 28, p + 20, 4); memcpy(key + 32, p + 32, 2); }
    else if (p[9] == 17) memcpy(key + 28, p + 20, 6);
    else { memcpy(key + 28, p + 20, 2); memcpy(key + 30, p + 24, 2); key[32] = key[33] = 0; }
    key[34] = (unsigned char)(plen >> 24); key[35] = (unsigned char)(plen >> 16);
    key[36] = (unsigned char)(plen >> 8); key[37] = (unsigned char)plen;
    PyObject *k = PyBytes_FromStringAndSize((const char *)keybuf, nlen + 38);
    if (k == NULL) return R_ERROR;
    PyObject *e = PyDict_GetItemWithError(L->entries, k);
    if (e == NULL) {
        int skip = 0;
        if (!PyErr_Occurred() && L->foreign != Py_None) skip = PySet_Contains(L->foreign, k);
        Py_DECREF(k);
        if (PyErr_Occurred()) return R_ERROR;
        if (skip) return R_SKIPPED;             /* skipped: another worker's flow (replay --jobs) */
        if (L->mega == NULL) return R_STOP;
        int due = timers_due(L, now);           /* the megaflow cache's new connections (_megalane.c) */
        if (due) return due < 0 ? R_ERROR : R_STOP;
        return mega_serve((MegaLane *)L->mega, name, nlen, f, caplen, now);
    }
    Py_DECREF(k);
    int due = timers_due(L, now);
    if (due) return due < 0 ? R_ERROR : R_STOP;
    if (Py_TYPE(e) != L->entry_type) {
        L->entry_type = Py_TYPE(e);
        L->fast_off = slot_offset(e, s_fast);
        L->render_off = slot_offset(e, s_render);
        L->dev_off = slot_offset(e, s_emit_dev);
        L->kind_off = slot_offset(e, s_emit_kind);
        L->mangle_off = slot_offset(e, s_mangle);
        L->l2_off = slot_offset(e, s_l2_out);
    }
    /* a path that sends a frame: its bytes become a prediction (bidirectional captures) */
    PyObject *edev = NULL, *ekind = NULL, *emangle = NULL;
    if (L->agree != NULL) {
        edev = eattr(e, L->dev_off, s_emit_dev);
        if (edev == NULL) return R_ERROR;
        if (!PyUnicode_Check(edev) || PyUnicode_GET_LENGTH(edev) == 0) {
            Py_CLEAR(edev);
        } else {
            PyObject *l2 = eattr(e, L->l2_off, s_l2_out);
            int usable = l2 != NULL && PyBytes_Check(l2) && PyBytes_GET_SIZE(l2) == 14 &&
                         PyBytes_AS_STRING(l2)[12] == 0x08 && PyBytes_AS_STRING(l2)[13] == 0x00 &&
                         PyDict_GET_SIZE(L->fastp) < FAST_MAX;
            Py_XDECREF(l2);
            if (PyErr_Occurred()) { Py_DECREF(edev); return R_ERROR; }
            if (usable) {
                ekind = eattr(e, L->kind_off, s_emit_kind);
                emangle = ekind ? eattr(e, L->mangle_off, s_mangle) : NULL;
                if (emangle != NULL && !PyTuple_Check(emangle)) usable = 0;
            }
            if (!usable || emangle == NULL) {
                Py_DECREF(edev);
                Py_XDECREF(ekind);
                Py_XDECREF(emangle);
                return PyErr_Occurred() ? R_ERROR : R_STOP;
            }
        }
    }
    PyObject *tpl = NULL;
    int rc = R_STOP;
    if (L->lay.type != NULL) {
        if (L->render_off >= 0) {
            tpl = *(PyObject **)((char *)e + L->render_off);
        } else {
            tpl = PyObject_GetAttr(e, s_render);
            if (tpl == NULL) { rc = R_ERROR; goto done; }
            Py_DECREF(tpl);                  /* e holds it */
        }
        if (tpl == NULL || Py_TYPE(tpl) != L->lay.type) { tpl = NULL; goto done; }
        Py_INCREF(tpl);                      /* held while Python code may run (gc, flat_for) */
    }
    PyObject *fast = L->fast_off >= 0 ? Py_XNewRef(*(PyObject **)((char *)e + L->fast_off))
                                      : PyObject_GetAttr(e, s_fast);
    if (fast == NULL || Py_TYPE(fast) != &FastEntryType) {
        Py_XDECREF(fast);
        Py_XDECREF(tpl);
        rc = PyErr_Occurred() ? R_ERROR : R_STOP;
        goto done;
    }
    FastEntry *fe = (FastEntry *)fast;
    PyObject *r = fast_run(fe, p, plen, now);
    int hit = r != NULL && r != Py_None, failed = r == NULL;
    if (hit && tpl != NULL && append_line(&L->out, &L->lay, tpl, r, index, now, p, L->flat_for) < 0) failed = 1;
    Py_XDECREF(r);
    Py_XDECREF(tpl);
    if (hit && !failed) {
        fe->tallied++;
        if (fe->touch && set_double(fe, fe->neigh, A_N_UPDATED, now) < 0) failed = 1;
        if (!failed && edev != NULL && lane_predict(L, edev, ekind, emangle, fe, p, now, index) < 0) failed = 1;
    }
    Py_DECREF(fast);
    rc = failed ? R_ERROR : hit ? R_SERVED : R_STOP;
done:
    Py_XDECREF(edev);
    Py_XDECREF(ekind);
    Py_XDECREF(emangle);
    return rc;
}

/* serve_pcap(buf, off, index, count, little, divisor, rec_hlen, entries, clock[, template_type, flat_for,
 *            foreign, agree]) -> (off, index, served, lines)
 *
 * Serves consecutive records of a classic pcap buffer from the cache, as Replayer.stream
 * does for each: an untagged Ethernet/IPv4 TCP or UDP frame, no neighbour timer due,
 * whose key (FlowCache.key) names an entry whose guards pass.  With a template type,
 * only entries whose `render` is such a template (render/template.py FlowTemplate) are
 * served, and `lines` is their output as UTF-8 bytes (about 1 MiB at most per call);
 * otherwise lines is None.  Records whose key is in the set `foreign` (another worker's
 * flows, replay --jobs) are skipped.  Stops before the first record it can neither serve
 * nor skip (or that is not whole in buf) and after `count` records.
 *
 * `agree` (agreement.py Agreement.lane_args; bidirectional captures, counts only): a served
 * entry whose path sends a frame registers that frame's IPv4 bytes as a prediction in
 * Agreement.fast, and a frame the host sent (direction.py's rules) is served when it is
 * exactly such a prediction - consumed and counted as a predicted sent frame.
 *
 * `mega` (a MegaLane, counts only): a record the cache has no entry for may be a new TCP
 * connection the megaflow cache serves (_megalane.c). */
static PyObject *serve_pcap(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t off, index, count, served = 0, consumed = 0;
    int little, rec_hlen, ok = 1;
    double divisor;
    PyObject *entries, *clock, *template_type = Py_None, *flat_for = Py_None, *foreign = Py_None, *agree = Py_None;
    PyObject *mega = Py_None;
    Lane L;
    if (!PyArg_ParseTuple(args, "y*nnnpdiOO|OOOOO", &view, &off, &index, &count, &little, &divisor, &rec_hlen,
                          &entries, &clock, &template_type, &flat_for, &foreign, &agree, &mega))
        return NULL;
    if (lane_open(&L, entries, clock, template_type, flat_for, foreign, agree) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (mega != Py_None) {
        if (Py_TYPE(mega) != &MegaLaneType) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "serve_pcap: mega must be a MegaLane or None");
            return lane_close(&L, off, index, 0, 0);
        }
        L.mega = (struct MegaLane_ *)mega;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len;
    while (consumed < count && off + rec_hlen <= len && lane_room(&L)) {
        const unsigned char *h = buf + off;
        uint32_t sec = rd32(h, little), frac = rd32(h + 4, little), caplen = rd32(h + 8, little);
        if (caplen > MAX_RECORD || off + rec_hlen + (Py_ssize_t)caplen > len) break;
        double now = (double)sec + (double)frac / divisor;
        int rc = lane_frame(&L, (const unsigned char *)"", 0, h + rec_hlen, caplen, now, index, 0);
        if (rc == R_ERROR) { ok = 0; break; }
        if (rc == R_STOP) break;
        served += rc == R_SERVED;
        off += rec_hlen + caplen;
        index++;
        consumed++;
    }
    PyBuffer_Release(&view);
    return lane_close(&L, off, index, served, ok);
}

/* The direction an EPB's options o[:end - o] give in epb_flags (code 2): 1 inbound, 2 outbound (a
 * frame the host sent), 0 none or unknown (capture/pcapng.py epb_direction). */
static int epb_dir(const unsigned char *o, const unsigned char *end, int little) {
    while (o + 4 <= end) {
        uint32_t code = little ? (uint32_t)(o[0] | (o[1] << 8)) : be16(o);
        uint32_t olen = little ? (uint32_t)(o[2] | (o[3] << 8)) : be16(o + 2);
        if (code == 0 || o + 4 + olen > end) return 0;
        if (code == 2 && olen == 4) {
            uint32_t d = rd32(o + 4, little) & 3;
            return d == 3 ? 0 : (int)d;
        }
        o += 4 + ((olen + 3) & ~3u);
    }
    return 0;
}

/* serve_pcapng(buf, off, index, count, little, ifaces, last_ts, entries, clock[, template_type, flat_for,
 *              foreign, agree]) -> (off, index, served, lines, last_ts)
 *
 * serve_pcap for the Enhanced Packet Blocks of a pcapng section in byte order `little`:
 * `ifaces` is the section's interfaces as (linktype, divisor, offset, name bytes), and a
 * packet's time is ticks / divisor + offset, as capture/pcapng.py computes it.  Stops at
 * any other block (section and interface headers, statistics, simple packets) and at
 * packets Python must look at: another link type, an unknown interface, a bad length, an
 * epb_flags option saying the host sent it (outbound) unless `agree` is given. */
static PyObject *serve_pcapng(PyObject *self, PyObject *args) {
    Py_buffer view;
    Py_ssize_t off, index, count, served = 0, consumed = 0;
    int little, ok = 1;
    double last_ts;
    PyObject *ifaces, *entries, *clock, *template_type = Py_None, *flat_for = Py_None, *foreign = Py_None;
    PyObject *agree = Py_None, *mega = Py_None;
    Lane L;
    if (!PyArg_ParseTuple(args, "y*nnnpO!dOO|OOOOO", &view, &off, &index, &count, &little, &PyTuple_Type, &ifaces,
                          &last_ts, &entries, &clock, &template_type, &flat_for, &foreign, &agree, &mega))
        return NULL;
    if (lane_open(&L, entries, clock, template_type, flat_for, foreign, agree) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (mega != Py_None) {
        if (Py_TYPE(mega) != &MegaLaneType) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "serve_pcapng: mega must be a MegaLane or None");
            lane_close(&L, off, index, 0, 0);
            return NULL;
        }
        L.mega = (struct MegaLane_ *)mega;
    }
    const unsigned char *buf = view.buf;
    Py_ssize_t len = view.len, nif = PyTuple_GET_SIZE(ifaces);
    while (consumed < count && off + 32 <= len && lane_room(&L)) {
        const unsigned char *h = buf + off;
        uint32_t btype = rd32(h, little), blen = rd32(h + 4, little);
        if (btype != 6 || blen < 32 || (blen & 3) || blen > MAX_RECORD || off + (Py_ssize_t)blen > len) break;
        uint32_t ifid = rd32(h + 8, little), caplen = rd32(h + 20, little);
        uint64_t ticks = ((uint64_t)rd32(h + 12, little) << 32) | rd32(h + 16, little);
        if ((Py_ssize_t)caplen > (Py_ssize_t)blen - 32 || ifid >= (uint32_t)nif) break;
        Py_ssize_t opts = 28 + (((Py_ssize_t)caplen + 3) & ~(Py_ssize_t)3);
        int dir = opts + 4 <= (Py_ssize_t)blen - 4 ? epb_dir(h + opts, h + blen - 4, little) : 0;
        if (dir == 2 && L.agree == NULL) break;
        PyObject *iface = PyTuple_GET_ITEM(ifaces, ifid);
        int linktype;
        double divisor;
        long long toff;
        const char *name;
        Py_ssize_t nlen;
        if (!PyArg_ParseTuple(iface, "idLy#", &linktype, &divisor, &toff, &name, &nlen)) { ok = 0; break; }
        if (linktype != 1) break;
        double now = (double)ticks / divisor + (double)toff;
        int rc = lane_frame(&L, (const unsigned char *)name, nlen, h + 28, caplen, now, index, dir);
        if (rc == R_ERROR) { ok = 0; break; }
        if (rc == R_STOP) break;
        served += rc == R_SERVED;
        last_ts = now;
        off += blen;
        index++;
        consumed++;
    }
    PyBuffer_Release(&view);
    PyObject *r = lane_close(&L, off, index, served, ok);
    if (r == NULL) return NULL;
    PyObject *t = PyFloat_FromDouble(last_ts);
    PyObject *out = t ? PyTuple_Pack(5, PyTuple_GET_ITEM(r, 0), PyTuple_GET_ITEM(r, 1), PyTuple_GET_ITEM(r, 2),
                                     PyTuple_GET_ITEM(r, 3), t) : NULL;
    Py_XDECREF(t);
    Py_DECREF(r);
    return out;
}

static PyMethodDef module_methods[] = {
    {"serve_pcap", serve_pcap, METH_VARARGS, "Serve consecutive cached records of a pcap buffer."},
    {"serve_pcapng", serve_pcapng, METH_VARARGS, "Serve consecutive cached packet blocks of a pcapng buffer."},
    {"rewrite", rewrite, METH_VARARGS, "A path's header rewrites applied to another packet of the flow."},
    {"track", gc_track, METH_O, "Hand objects the megaflow lane stopped tracking back to the cyclic collector."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pathtrace._fastpath",
    "The replay decision cache's hot path in C (see pathtrace/flowcache.py).", -1, module_methods,
};

#define INTERN(var, text) do { if (!(var = PyUnicode_InternFromString(text))) return NULL; } while (0)

PyMODINIT_FUNC PyInit__fastpath(void) {
    INTERN(s_timeout, "timeout"); INTERN(s_state, "state"); INTERN(s_gc, "gc"); INTERN(s_fast, "fast");
    INTERN(s_earliest, "earliest"); INTERN(s_new_state, "new_state"); INTERN(s_assured, "assured");
    INTERN(s_ESTABLISHED, "ESTABLISHED"); INTERN(s_render, "render");
    INTERN(s_emit_dev, "emit_dev"); INTERN(s_emit_kind, "emit_kind"); INTERN(s_mangle, "mangle");
    INTERN(s_l2_out, "l2_out"); INTERN(s_fd, "fd"); INTERN(s_flush, "flush");
    if (!(i_ETH_P_IP = PyLong_FromLong(0x0800))) return NULL;
    static const char *names[A_COUNT] = {
        "_timeout", "_gc_key", "status", "mark", "labels",
        "state", "last_seq", "last_ack", "last_end", "last_win", "last_dir", "retrans", "last_index", "stream_ts",
        "td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags",
        "state", "hh_cached", "lladdr", "_timer", "updated",
        "now", "last_gc",
    };
    for (int a = 0; a < A_COUNT; a++) INTERN(attr_name[a], names[a]);
    static const char *tnames[T_COUNT] = {"flats", "numbers", "hlen", "tracker", "time_format", "l2_out", "mangle",
                                          "tot_len"};
    for (int a = 0; a < T_COUNT; a++) INTERN(tpl_name[a], tnames[a]);
    if (PyType_Ready(&FastEntryType) < 0 || PyType_Ready(&MegaLaneType) < 0 || megalane_intern() < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "FastEntry", (PyObject *)&FastEntryType) < 0 ||
        PyModule_AddObjectRef(m, "MegaLane", (PyObject *)&MegaLaneType) < 0) { Py_DECREF(m); return NULL; }
    return m;
}
