/* The megaflow cache's new TCP and UDP connections in C (included by _fastpath.c; see megaflow.py).
 *
 * A SYN scan, a flood or many short connections open a new connection with every packet.  The
 * megaflow cache (megaflow.py) already serves those from a path learned from another connection,
 * but its per-packet work - the tracker's new entry, the NAT bindings with their port search, the
 * confirmation - ran as Python, about 30 us a packet.  MegaLane does that work for two shapes of
 * packet in C, inside serve_pcap's and serve_pcapng's loops: a pure SYN (TCP flags SYN, and ECE,
 * CWR or PSH at most), a UDP datagram or an ICMP echo request whose megaflow entry MegaflowCache.lane_entries holds (entries Python judged
 * this code can serve: megaflow.py `_lane_fit`).  Anything else stops the loop and Python runs
 * the packet as before.
 *
 * It is MegaflowCache.serve and _serve_new for those cases, step by step, on the model's own
 * objects: the NfConn, TcpState, TcpSeen and UdpState it makes are copies of prototypes the model
 * built (so every field Python's constructors set is set), the tuples are the model's Tuple type,
 * the hash, NAT's by-source lists, the RNG (table.rng.getrandbits), the gc and the insertion
 * (table.insert) are the ConntrackTable's.  What it computes itself mirrors, line for line:
 *   tcp_error / tcp_new / tcp_in_window / tcp_timeout for a SYN in state NONE
 *       (net/netfilter/nf_conntrack_proto_tcp.py; the SYN's window tests always pass);
 *   udp_error and nf_conntrack_udp_packet for a new flow (nf_conntrack_proto_udp.py);
 *   nf_nat_setup_info, get_unique_tuple, find_appropriate_src, nf_nat_l4proto_unique_tuple and
 *       nf_nat_used_tuple for a ported protocol and a single address (nf_nat_core.py, nf_nat_unique.py);
 *   __nf_conntrack_confirm without a clash (when the NAT search found no free tuple, the model runs
 *       the packet, drawing the numbers drawn here: MegaflowCache.abort).
 * Everything that can refuse the packet is checked before shared state changes.  Tests compare
 * replays with it, with the Python megaflow and with no cache (tests/test_megalane.py).
 */

#define ML_TH_SYN 0x02
#define ML_FLAG_SACK_PERM 0x02
#define ML_FLAG_WINDOW_SCALE 0x01
#define ML_IPS_CONFIRMED (1 << 3)
#define ML_IPS_SRC_NAT (1 << 4)
#define ML_IPS_DST_NAT (1 << 5)
#define ML_IPS_SRC_NAT_DONE (1 << 7)
#define ML_IPS_DST_NAT_DONE (1 << 8)
#define ML_IPS_DYING (1 << 9)
#define ML_MAP_IPS (1 << 0)
#define ML_PROTO_SPECIFIED (1 << 1)
#define ML_PROTO_RANDOM (1 << 2)
#define ML_PROTO_RANDOM_FULLY (1 << 4)
#define ML_PROTO_OFFSET (1 << 5)
#define ML_RANDOM_ALL (ML_PROTO_RANDOM | ML_PROTO_RANDOM_FULLY)
#define ML_MANIP_SRC 0
#define ML_MANIP_DST 1
#define ML_MAX_ATTEMPTS 128
#define ML_MAX_SLOTS 24
#define ML_INTS 16              /* distinct ints one new entry holds (Ints) */
#define ML_MAX_DRAWS 64         /* a port search draws at most 5 times; 4 NAT ops */

typedef struct { uint32_t src, dst, sport, dport, proto; } T4;     /* a TCP, UDP or ICMP tuple (Tuple's fields) */
typedef struct { long flags; uint32_t min_addr, max_addr, min_proto, max_proto, base_proto; } NatR;
typedef struct { Py_ssize_t n, off[ML_MAX_SLOTS]; } Slots;

typedef struct MegaLane_ {
    PyObject_HEAD
    PyObject *mega, *entries, *memo, *levels, *sbounds, *dbounds;
    PyObject *table, *hash, *conns, *bysource, *sysctl, *rng, *getrandbits, *insert, *delete_, *gc;
    PyObject *neigh_entries, *by_mac, *devnames, *default_dev, *forced_dev, *abort;
    PyObject *ct_proto, *st_proto, *seen_proto, *udp_proto, *tuple_type, *syn_sent, *syn_set, *zero, *scratch;
    double gc_interval;
    Slots ct_slots, st_slots, seen_slots, udp_slots;
    Py_ssize_t ct_orig, ct_reply, ct_status, ct_timeout, ct_proto_off, ct_masq, ct_seq_unused;
    Py_ssize_t st_seen, st_state, st_last_index, st_last_dir;
    Py_ssize_t td_end, td_maxend, td_maxwin, td_scale, td_flags, udp_stream_ts;
    Py_ssize_t t_now, t_last_gc;
    long long served;
    int ndraws;
    uint32_t draws[ML_MAX_DRAWS];
} MegaLane;

static PyObject *ml_s[32];
enum { MS_HITS, MS_TALLIED, MS_STATE, MS_HH, MS_LLADDR, MS_TIMER, MS_UPDATED, MS_EXPIRED,
       MS_CT_MAX, MS_CT_CHECKSUM, MS_T_SYN_SENT, MS_T_MAX_RETRANS, MS_T_UDP, MS_RNG, MS_T_ICMP, MS_COUNT };
static const char *ml_names[MS_COUNT] = {
    "hits", "tallied", "state", "hh_cached", "lladdr", "timer", "updated", "expired",
    "nf_conntrack_max", "nf_conntrack_checksum", "nf_conntrack_tcp_timeout_syn_sent",
    "nf_conntrack_tcp_timeout_max_retrans", "nf_conntrack_udp_timeout", "rng", "nf_conntrack_icmp_timeout"};

/* megaflow.py _lane_plan's fields */
enum { P_ENTRY, P_OPS, P_CONFIRM, P_NEIGH_SEEN, P_ONLINK, P_NEIGH, P_NEIGH_KEY, P_NEIGH_SIG, P_NEIGH_TOUCH, P_COUNT };

/* ---- slots of the model's objects ------------------------------------------------------------ */

static inline PyObject *sget(PyObject *o, Py_ssize_t off) { return *(PyObject **)((char *)o + off); }

static inline void sset(PyObject *o, Py_ssize_t off, PyObject *v) {       /* v: a new reference, stolen */
    PyObject **p = (PyObject **)((char *)o + off);
    PyObject *old = *p;
    *p = v;
    Py_XDECREF(old);
}

static int sset_u(PyObject *o, Py_ssize_t off, unsigned long long v) {
    PyObject *x = PyLong_FromUnsignedLongLong(v);
    if (x == NULL) return -1;
    sset(o, off, x);
    return 0;
}

static int slots_of(PyObject *proto, PyObject *names, Slots *s) {
    PyObject *seq = PySequence_Fast(names, "MegaLane: slot names must be a sequence");
    if (seq == NULL) return -1;
    s->n = PySequence_Fast_GET_SIZE(seq);
    if (s->n > ML_MAX_SLOTS) { Py_DECREF(seq); PyErr_SetString(PyExc_TypeError, "MegaLane: too many slots"); return -1; }
    for (Py_ssize_t i = 0; i < s->n; i++) {
        s->off[i] = type_slot_offset(Py_TYPE(proto), PySequence_Fast_GET_ITEM(seq, i));
        if (s->off[i] < 0 || sget(proto, s->off[i]) == NULL) {
            PyErr_Format(PyExc_TypeError, "MegaLane: %R is not a set slot of %R", PySequence_Fast_GET_ITEM(seq, i),
                         proto);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static Py_ssize_t one_slot(PyObject *proto, const char *name) {
    PyObject *n = PyUnicode_FromString(name);
    if (n == NULL) return -1;
    Py_ssize_t off = type_slot_offset(Py_TYPE(proto), n);
    Py_DECREF(n);
    if (off < 0) PyErr_Format(PyExc_TypeError, "MegaLane: %s is not a slot of %R", name, proto);
    return off;
}

/* A new object of proto's class holding proto's slot values (what the model's constructor set). */
static PyObject *ml_clone(PyObject *proto, const Slots *s) {
    PyTypeObject *tp = Py_TYPE(proto);
    PyObject *o = tp->tp_alloc(tp, 0);
    if (o == NULL) return NULL;
    for (Py_ssize_t i = 0; i < s->n; i++) sset(o, s->off[i], Py_XNewRef(sget(proto, s->off[i])));
    return o;
}

static inline int get_ull(PyObject *v, unsigned long long *out) {
    if (v == NULL || !PyLong_Check(v)) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "MegaLane: an int was expected");
        return -1;
    }
    *out = PyLong_AsUnsignedLongLong(v);
    return (*out == (unsigned long long)-1 && PyErr_Occurred()) ? -1 : 0;
}

/* ---- tuples ---------------------------------------------------------------------------------- */

/* The ints a packet's entry holds, made once each: the model's entry shares one int object between
 * its two tuples (the reply is made from the original) and between fields of equal value; with a new
 * object per field a scan's ~10^5 entries took 10% more memory. */
typedef struct { int n; unsigned long long v[ML_INTS]; PyObject *o[ML_INTS]; } Ints;

static PyObject *int_of(Ints *c, unsigned long long v) {       /* a new reference */
    for (int i = 0; i < c->n; i++) if (c->v[i] == v) return Py_NewRef(c->o[i]);
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (o != NULL && c->n < ML_INTS) { c->v[c->n] = v; c->o[c->n++] = Py_NewRef(o); }
    return o;
}

static void ints_clear(Ints *c) {
    for (int i = 0; i < c->n; i++) Py_DECREF(c->o[i]);
    c->n = 0;
}

static int sset_int(Ints *c, PyObject *o, Py_ssize_t off, unsigned long long v) {
    PyObject *x = int_of(c, v);
    if (x == NULL) return -1;
    sset(o, off, x);
    return 0;
}

/* (src, dst, 6, sport, dport): a plain tuple (hashes and compares as the model's Tuple) or, with the
 * packet's ints `c`, a Tuple. */
static PyObject *py_t4(MegaLane *M, const T4 *t, Ints *c) {
    int typed = c != NULL;
    PyObject *it[5];
    if (typed) {
        it[0] = int_of(c, t->src); it[1] = int_of(c, t->dst); it[2] = int_of(c, t->proto);
        it[3] = int_of(c, t->sport); it[4] = int_of(c, t->dport);
    } else {
        it[0] = PyLong_FromUnsignedLong(t->src); it[1] = PyLong_FromUnsignedLong(t->dst);
        it[2] = PyLong_FromLong(t->proto); it[3] = PyLong_FromUnsignedLong(t->sport);
        it[4] = PyLong_FromUnsignedLong(t->dport);
    }
    PyObject *r = NULL;
    for (int i = 0; i < 5; i++) if (it[i] == NULL) goto fail;
    PyTypeObject *tp = typed ? (PyTypeObject *)M->tuple_type : &PyTuple_Type;
    r = typed ? tp->tp_alloc(tp, 5) : PyTuple_New(5);
    if (r == NULL) goto fail;
    for (int i = 0; i < 5; i++) PyTuple_SET_ITEM(r, i, it[i]);
    if (typed) PyObject_GC_UnTrack(r);        /* five ints: never in a cycle (the collector untracks such
                                                 exact tuples itself, not a Tuple) */
    return r;
fail:
    for (int i = 0; i < 5; i++) Py_XDECREF(it[i]);
    return NULL;
}

static int read_t4(PyObject *t, T4 *out) {
    unsigned long long v[5];
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 5) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: a conntrack tuple was expected");
        return -1;
    }
    for (int i = 0; i < 5; i++) if (get_ull(PyTuple_GET_ITEM(t, i), &v[i]) < 0) return -1;
    out->src = (uint32_t)v[0]; out->dst = (uint32_t)v[1]; out->sport = (uint32_t)v[3]; out->dport = (uint32_t)v[4];
    out->proto = (uint32_t)v[2];
    return v[2] == 6 || v[2] == 17 || v[2] == 1 ? 0
                                                : (PyErr_SetString(PyExc_TypeError, "MegaLane: not a TCP, UDP or ICMP tuple"), -1);
}

/* nf_ct_invert_tuple: ports swapped; for ICMP the id stays and the type is the reply's (ICMP_INVMAP:
 * the lane makes echo requests only, whose replies are echo replies) */
static inline T4 invert(const T4 *t) {
    if (t->proto == 1) {
        uint32_t type = t->dport >> 8, rtype = type == 8 ? 0 : type == 0 ? 8 : type;
        T4 r = {t->dst, t->src, t->sport, (rtype << 8) | (t->dport & 0xFF), 1};
        return r;
    }
    T4 r = {t->dst, t->src, t->dport, t->sport, t->proto};
    return r;
}
static inline int t4_eq(const T4 *a, const T4 *b) {
    return a->src == b->src && a->dst == b->dst && a->sport == b->sport && a->dport == b->dport &&
           a->proto == b->proto;
}

/* ---- the conntrack table ----------------------------------------------------------------------- */

/* The lane's lookup key for a tuple: one untracked 5-tuple of its own, refilled for each lookup (a
 * dict lookup keeps no reference to its key), instead of a new tuple for each of ~6 lookups a SYN. */
static PyObject *scratch_t4(MegaLane *M, const T4 *t) {
    unsigned long v[5] = {t->src, t->dst, t->proto, t->sport, t->dport};
    PyObject *k = M->scratch;
    if (Py_REFCNT(k) != 1) {                     /* never shared; if it ever were, make another */
        Py_SETREF(M->scratch, PyTuple_New(5));
        if (M->scratch == NULL) return NULL;
        for (int i = 0; i < 5; i++) PyTuple_SET_ITEM(M->scratch, i, Py_NewRef(M->zero));
        PyObject_GC_UnTrack(M->scratch);
        k = M->scratch;
    }
    for (int i = 0; i < 5; i++) {
        PyObject *x = PyLong_FromUnsignedLong(v[i]);
        if (x == NULL) return NULL;
        PyObject *old = PyTuple_GET_ITEM(k, i);
        PyTuple_SET_ITEM(k, i, x);
        Py_DECREF(old);
    }
    return k;                                    /* borrowed */
}

/* ConntrackTable.find(t, now) is not None: 1 when a live entry holds t, 0 when none does (an expired
 * or dying entry found is deleted, as find does), -1 on error. */
static int ml_find(MegaLane *M, const T4 *t, double now) {
    PyObject *k = scratch_t4(M, t);
    if (k == NULL) return -1;
    PyObject *hit = PyDict_GetItemWithError(M->hash, k);
    if (hit == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyTuple_Check(hit) || PyTuple_GET_SIZE(hit) != 2) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: hash entries are (ct, direction)");
        return -1;
    }
    PyObject *ct = Py_NewRef(PyTuple_GET_ITEM(hit, 0));
    unsigned long long status;
    PyObject *tv = sget(ct, M->ct_timeout);
    double to = tv ? PyFloat_AsDouble(tv) : -1.0;
    if ((tv == NULL || (to == -1.0 && PyErr_Occurred())) || get_ull(sget(ct, M->ct_status), &status) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "MegaLane: an entry without a timeout");
        Py_DECREF(ct);
        return -1;
    }
    if (to <= now || status & ML_IPS_DYING) {
        PyObject *args = PyTuple_Pack(1, ct), *kw = Py_BuildValue("{O:O}", ml_s[MS_EXPIRED], Py_True);
        PyObject *r = args && kw ? PyObject_Call(M->delete_, args, kw) : NULL;
        Py_XDECREF(args);
        Py_XDECREF(kw);
        Py_DECREF(ct);
        if (r == NULL) return -1;
        Py_DECREF(r);
        return 0;
    }
    Py_DECREF(ct);
    return 1;
}

/* nf_nat_used_tuple(t, ct) for an entry not in the table: is t's reply some confirmed entry's? */
static inline int ml_used(MegaLane *M, const T4 *t, double now) {
    T4 r = invert(t);
    return ml_find(M, &r, now);
}

/* ---- NAT (nf_nat_unique.py) ------------------------------------------------------------------- */

static inline int port_in(const T4 *t, int manip, uint32_t lo, uint32_t hi) {     /* l4proto_in_range */
    uint32_t port = manip == ML_MANIP_SRC || t->proto == 1 ? t->sport : t->dport;    /* ICMP: the id */
    return lo <= port && port <= hi;
}

static inline int in_range(const T4 *t, const NatR *r) {      /* nf_in_range */
    if (r->flags & ML_MAP_IPS && !(r->min_addr <= t->src && t->src <= r->max_addr)) return 0;
    if (!(r->flags & ML_PROTO_SPECIFIED)) return 1;
    return port_in(t, ML_MANIP_SRC, r->min_proto, r->max_proto);
}

/* table.rng.getrandbits(16), remembered: a packet whose confirmation would clash hands its draws to
 * the model (MegaflowCache.abort), which then runs it drawing the same numbers. */
static int rand16(MegaLane *M, uint32_t *out) {
    if (M->ndraws >= ML_MAX_DRAWS) { PyErr_SetString(PyExc_RuntimeError, "MegaLane: too many NAT draws"); return -1; }
    PyObject *sixteen = PyLong_FromLong(16);
    PyObject *v = sixteen ? PyObject_CallOneArg(M->getrandbits, sixteen) : NULL;
    Py_XDECREF(sixteen);
    unsigned long long x = 0;
    int bad = get_ull(v, &x);
    Py_XDECREF(v);
    *out = (uint32_t)x;
    if (!bad) M->draws[M->ndraws++] = (uint32_t)x;
    return bad ? -1 : 0;
}

/* find_appropriate_src: 1 with *out set, 0 none, -1 error */
static int appropriate_src(MegaLane *M, PyObject *ct, const T4 *t, const NatR *r, T4 *out) {
    PyObject *key = Py_BuildValue("(kkk)", (unsigned long)t->proto, (unsigned long)t->src, (unsigned long)t->sport);
    if (key == NULL) return -1;
    PyObject *lst = PyDict_GetItemWithError(M->bysource, key);
    Py_DECREF(key);
    if (lst == NULL) return PyErr_Occurred() ? -1 : 0;
    if (!PyList_Check(lst)) { PyErr_SetString(PyExc_TypeError, "MegaLane: bysource holds lists"); return -1; }
    for (Py_ssize_t i = PyList_GET_SIZE(lst) - 1; i >= 0; i--) {
        PyObject *other = PyList_GET_ITEM(lst, i);
        if (other == ct) continue;
        PyObject *rt = sget(other, M->ct_reply);
        T4 reply;
        if (rt == NULL || read_t4(rt, &reply) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "MegaLane: an entry without a reply tuple");
            return -1;
        }
        T4 inv = invert(&reply), res = {inv.src, t->dst, inv.sport, t->dport, t->proto};
        if (in_range(&res, r)) { *out = res; return 1; }
    }
    return 0;
}

/* nf_nat_l4proto_unique_tuple for TCP, UDP (ported protocols) and ICMP (the id) */
static int unique_port(MegaLane *M, const T4 *t, const NatR *r, int manip, double now, T4 *out) {
    uint32_t lo, size;
    int key_src = manip == ML_MANIP_SRC || t->proto == 1;
    if (t->proto == 1) {
        long long lo_ = 0, size_ = 65536;
        if (r->flags & ML_PROTO_SPECIFIED) { lo_ = r->min_proto; size_ = (long long)r->max_proto - r->min_proto + 1; }
        if (size_ <= 0) { *out = *t; return 0; }          /* no attempt: the tuple as it is */
        lo = (uint32_t)lo_;
        size = (uint32_t)size_;
    } else if (!(r->flags & ML_PROTO_SPECIFIED)) {
        if (manip == ML_MANIP_DST) { *out = *t; return 0; }
        uint32_t port = t->sport;
        if (port < 1024) { if (port < 512) { lo = 1; size = 511; } else { lo = 600; size = 1023 - 600 + 1; } }
        else { lo = 1024; size = 65535 - 1024 + 1; }
    } else {
        uint32_t a = r->min_proto, b = r->max_proto;
        lo = a < b ? a : b;
        size = (a < b ? b : a) - lo + 1;
    }
    uint32_t key = key_src ? t->sport : t->dport, off;
    if (r->flags & ML_PROTO_OFFSET) off = (key - r->base_proto) & 0xFFFF;
    else if (r->flags & ML_RANDOM_ALL || manip != ML_MANIP_DST) { if (rand16(M, &off) < 0) return -1; }
    else off = 0;
    uint32_t attempts = size < ML_MAX_ATTEMPTS ? size : ML_MAX_ATTEMPTS;
    T4 cand = *t;
    for (;;) {
        for (uint32_t i = 0; i < attempts; i++) {
            uint32_t value = lo + off % size;
            cand = *t;
            if (key_src) cand.sport = value; else cand.dport = value;
            off = (off + 1) & 0xFFFF;
            int used = ml_used(M, &cand, now);
            if (used < 0) return -1;
            if (!used) { *out = cand; return 0; }
        }
        if (attempts >= size || attempts < 16) { *out = cand; return 0; }
        attempts /= 2;
        if (rand16(M, &off) < 0) return -1;
    }
}

/* get_unique_tuple (the address part: a single address, as MegaflowCache._lane_fit requires) */
static int unique_tuple(MegaLane *M, PyObject *ct, const T4 *orig, const NatR *r, int manip, double now, T4 *out) {
    int used;
    if (manip == ML_MANIP_SRC && !(r->flags & ML_RANDOM_ALL)) {
        if (in_range(orig, r)) {
            if ((used = ml_used(M, orig, now)) < 0) return -1;
            if (!used) { *out = *orig; return 0; }
        } else {
            T4 found;
            int f = appropriate_src(M, ct, orig, r, &found);
            if (f < 0) return -1;
            if (f) {
                if ((used = ml_used(M, &found, now)) < 0) return -1;
                if (!used) { *out = found; return 0; }
            }
        }
    }
    T4 t = *orig;                                       /* find_best_ips_proto */
    if (r->flags & ML_MAP_IPS) {
        if (manip == ML_MANIP_SRC) t.src = r->min_addr; else t.dst = r->min_addr;
    }
    if (!(r->flags & ML_RANDOM_ALL)) {
        if (r->flags & ML_PROTO_SPECIFIED) {
            if (!(r->flags & ML_PROTO_OFFSET) && port_in(&t, manip, r->min_proto, r->max_proto)) {
                if (r->min_proto == r->max_proto) { *out = t; return 0; }
                if ((used = ml_used(M, &t, now)) < 0) return -1;
                if (!used) { *out = t; return 0; }
            }
        } else {
            if ((used = ml_used(M, &t, now)) < 0) return -1;
            if (!used) { *out = t; return 0; }
        }
    }
    return unique_port(M, &t, r, manip, now, out);
}

/* nf_nat_setup_info on an unconfirmed entry: *status and *reply updated */
static int setup_info(MegaLane *M, PyObject *ct, const NatR *r, int manip, double now, unsigned long long *status,
                      T4 *reply) {
    unsigned long long done = manip == ML_MANIP_SRC ? ML_IPS_SRC_NAT_DONE : ML_IPS_DST_NAT_DONE;
    if (*status & done) return 0;                        /* NF_DROP, which _serve_new does not look at */
    T4 curr = invert(reply), nw;
    if (unique_tuple(M, ct, &curr, r, manip, now, &nw) < 0) return -1;
    if (!t4_eq(&nw, &curr)) {
        *reply = invert(&nw);
        *status |= manip == ML_MANIP_SRC ? ML_IPS_SRC_NAT : ML_IPS_DST_NAT;
    }
    *status |= done;
    return 0;
}

/* ---- the tracker (nf_conntrack_proto_tcp.py) for a SYN in state NONE --------------------------- */

typedef struct { uint32_t end, maxend, maxwin, scale, flags; } Sender;

static void syn_options(const unsigned char *opts, Py_ssize_t n, Sender *s) {      /* _options */
    if (n <= 0) return;
    s->scale = 0;
    s->flags = 0;                                          /* flags &= FLAG_BE_LIBERAL, of 0 */
    Py_ssize_t i = 0;
    while (i < n) {
        unsigned char kind = opts[i];
        if (kind == 0) return;
        if (kind == 1) { i++; continue; }
        if (n - i < 2) return;
        Py_ssize_t size = opts[i + 1];
        if (size < 2 || size > n - i) return;
        if (kind == 4 && size == 2) s->flags |= ML_FLAG_SACK_PERM;
        else if (kind == 3 && size == 3) { s->scale = opts[i + 2] < 14 ? opts[i + 2] : 14; s->flags |= ML_FLAG_WINDOW_SCALE; }
        i += size;
    }
}

static long long sysctl_ll(MegaLane *M, int name, int *err) {
    PyObject *v = PyDict_GetItemWithError(M->sysctl, ml_s[name]);
    if (v == NULL) { if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, ml_s[name]); *err = 1; return 0; }
    long long x = PyLong_AsLongLong(v);
    if (x == -1 && PyErr_Occurred()) *err = 1;
    return x;
}

/* ---- the entry's guards --------------------------------------------------------------------------- */

/* Python's `getattr(n, name) != expected` */
static int attr_differs(PyObject *n, int name, PyObject *expected) {
    PyObject *v = PyObject_GetAttr(n, ml_s[name]);
    if (v == NULL) return -1;
    int eq = v == expected ? 1 : PyObject_RichCompareBool(v, expected, Py_EQ);
    Py_DECREF(v);
    return eq < 0 ? -1 : !eq;
}

/* MegaflowCache._neighbour: *n (new reference, or None) when as learned; 0 when not, -1 error */
static int ml_neighbour(MegaLane *M, PyObject *plan, uint32_t nexthop, PyObject **n) {
    *n = NULL;
    int seen = PyObject_IsTrue(PyTuple_GET_ITEM(plan, P_NEIGH_SEEN));
    if (seen <= 0) { if (seen == 0) *n = Py_NewRef(Py_None); return seen < 0 ? -1 : 1; }
    PyObject *sig = PyTuple_GET_ITEM(plan, P_NEIGH_SIG), *key = PyTuple_GET_ITEM(plan, P_NEIGH_KEY);
    if (!PyTuple_Check(sig) || PyTuple_GET_SIZE(sig) != 4 || !PyTuple_Check(key) || PyTuple_GET_SIZE(key) != 2) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: neigh_sig is (state, hh, lladdr, timer), neigh_key (addr, dev)");
        return -1;
    }
    int rc = -1, onlink = PyObject_IsTrue(PyTuple_GET_ITEM(plan, P_ONLINK)), d;
    PyObject *nb = NULL;
    if (onlink < 0) return -1;
    if (onlink) {
        PyObject *addr = PyLong_FromUnsignedLong(nexthop);
        PyObject *k = addr ? PyTuple_Pack(2, addr, PyTuple_GET_ITEM(key, 1)) : NULL;
        Py_XDECREF(addr);
        if (k == NULL) return -1;
        nb = Py_XNewRef(PyDict_GetItemWithError(M->neigh_entries, k));
        Py_DECREF(k);
        if (nb == NULL) return PyErr_Occurred() ? -1 : 0;
        if ((d = attr_differs(nb, MS_STATE, PyTuple_GET_ITEM(sig, 0))) != 0 ||
            (d = attr_differs(nb, MS_HH, PyTuple_GET_ITEM(sig, 1))) != 0 ||
            (d = attr_differs(nb, MS_TIMER, PyTuple_GET_ITEM(sig, 3))) != 0) { rc = d < 0 ? -1 : 0; goto out; }
    } else {
        nb = Py_NewRef(PyTuple_GET_ITEM(plan, P_NEIGH));
        if ((d = attr_differs(nb, MS_STATE, PyTuple_GET_ITEM(sig, 0))) != 0 ||
            (d = attr_differs(nb, MS_HH, PyTuple_GET_ITEM(sig, 1))) != 0 ||
            (d = attr_differs(nb, MS_LLADDR, PyTuple_GET_ITEM(sig, 2))) != 0 ||
            (d = attr_differs(nb, MS_TIMER, PyTuple_GET_ITEM(sig, 3))) != 0) { rc = d < 0 ? -1 : 0; goto out; }
        PyObject *cur = PyDict_GetItemWithError(M->neigh_entries, key);
        if (cur != nb) { rc = PyErr_Occurred() ? -1 : 0; goto out; }
    }
    *n = Py_NewRef(nb);
    rc = 1;
out:
    Py_XDECREF(nb);
    return rc;
}

static int attr_incr(PyObject *o, PyObject *name) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL) return -1;
    PyObject *one = PyLong_FromLong(1);
    PyObject *n = one ? PyNumber_Add(v, one) : NULL;
    Py_DECREF(v);
    Py_XDECREF(one);
    if (n == NULL) return -1;
    int r = PyObject_SetAttr(o, name, n);
    Py_DECREF(n);
    return r;
}

/* ---- the megaflow key (MegaflowCache.lane_key) ------------------------------------------------------ */

/* AddressClasses.addr without its memo's insertion: the memo, else the longest prefix */
static int addr_class(MegaLane *M, uint32_t a, long long *out) {
    PyObject *k = PyLong_FromUnsignedLong(a);
    if (k == NULL) return -1;
    PyObject *c = PyDict_GetItemWithError(M->memo, k);
    Py_DECREF(k);
    if (c != NULL) { *out = PyLong_AsLongLong(c); return (*out == -1 && PyErr_Occurred()) ? -1 : 0; }
    if (PyErr_Occurred()) return -1;
    *out = -1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(M->levels); i++) {
        PyObject *lv = PyList_GET_ITEM(M->levels, i);
        unsigned long long plen, mask;
        if (!PyTuple_Check(lv) || PyTuple_GET_SIZE(lv) != 3 || get_ull(PyTuple_GET_ITEM(lv, 0), &plen) < 0 ||
            get_ull(PyTuple_GET_ITEM(lv, 1), &mask) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "MegaLane: levels are (plen, mask, nets)");
            return -1;
        }
        uint32_t net = a & (uint32_t)mask;
        PyObject *nk = PyLong_FromUnsignedLong(net);
        if (nk == NULL) return -1;
        int in = PySet_Contains(PyTuple_GET_ITEM(lv, 2), nk);
        Py_DECREF(nk);
        if (in < 0) return -1;
        if (in) { *out = (long long)((plen << 32) | net); return 0; }
    }
    return 0;
}

static int bisect_right(PyObject *lst, long x, long *out) {
    Py_ssize_t lo = 0, hi = PyList_GET_SIZE(lst);
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        long v = PyLong_AsLong(PyList_GET_ITEM(lst, mid));
        if (v == -1 && PyErr_Occurred()) return -1;
        if (x < v) hi = mid; else lo = mid + 1;
    }
    *out = (long)lo;
    return 0;
}

static void put_be(unsigned char *p, unsigned long long v, int n) {
    for (int i = n - 1; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}

/* ---- one frame ---------------------------------------------------------------------------------- */

/* A captured Ethernet frame f[:caplen] at `now`, no timer due: R_SERVED when its megaflow's path
 * took it (the connection's state made as MegaflowCache._serve_new makes it), R_STOP for Python. */
static int mega_serve(MegaLane *M, const unsigned char *ifname, Py_ssize_t iflen, const unsigned char *f,
                      Py_ssize_t caplen, double now) {
    const unsigned char *p = f + 14;
    Py_ssize_t plen = caplen - 14;
    if (plen < 28 || f[12] != 0x08 || f[13] != 0x00 || p[0] != 0x45) return R_STOP;
    int udp = p[9] == 17, icmp = p[9] == 1;
    Py_ssize_t tot = be16(p + 2), doff = 0;
    if (udp) {                                                     /* udp_error */
        Py_ssize_t ulen = be16(p + 24);
        if (tot > plen || tot < 28 || ulen > tot - 20 || ulen < 8) return R_STOP;
    } else if (icmp) {                                             /* an echo request */
        if (p[20] != 8 || tot > plen || tot < 28) return R_STOP;
    } else {
        /* a SYN, with or without ECE, CWR (an ECN-setup SYN) and PSH: the tracker reads neither */
        if (p[9] != 6 || plen < 40 || (p[33] & ~(0x40 | 0x80 | 0x08)) != ML_TH_SYN) return R_STOP;
        doff = (p[32] >> 4) * 4;                                   /* tcp_error */
        if (tot > plen || tot < 40 || doff < 20 || tot - 20 < doff) return R_STOP;
    }
    if (be16(p + 6) & 0x3FFF) return R_STOP;                       /* a fragment */
    if (word_sum(p, 20) % 0xFFFF) return R_STOP;                   /* ip_rcv_core: bad header checksum */
    /* the key: ingress (Replayer.choose_ingress: --in, the pcapng interface's name, the destination
     * MAC, the first interface) and the pcapng interface's name, destination MAC, length, the IP
     * header's fixed bytes, TCP offset and flags or the UDP length, classes */
    if (iflen > 256) return R_STOP;
    PyObject *dev = M->forced_dev;
    if (dev == Py_None && iflen > 0) {
        PyObject *ifn = PyBytes_FromStringAndSize((const char *)ifname, iflen);
        if (ifn == NULL) return R_ERROR;
        dev = PyDict_GetItemWithError(M->devnames, ifn);
        Py_DECREF(ifn);
        if (dev == NULL && PyErr_Occurred()) return R_ERROR;
        if (dev == NULL) dev = Py_None;
    }
    if (dev == Py_None) {
        PyObject *mac = PyBytes_FromStringAndSize((const char *)f, 6);
        if (mac == NULL) return R_ERROR;
        dev = PyDict_GetItemWithError(M->by_mac, mac);
        Py_DECREF(mac);
        if (dev == NULL) { if (PyErr_Occurred()) return R_ERROR; dev = M->default_dev; }
    }
    Py_ssize_t nlen;
    const char *name = PyUnicode_AsUTF8AndSize(dev, &nlen);
    if (name == NULL || nlen > 256) return name == NULL ? R_ERROR : R_STOP;
    unsigned char kb[256 + 1 + 256 + 1 + 6 + 4 + 4 + 4 + 2 + 8 + 8 + 2 + 2], *k;
    memcpy(kb, name, nlen);
    kb[nlen] = 0;
    memcpy(kb + nlen + 1, ifname, iflen);
    kb[nlen + 1 + iflen] = 0;
    k = kb + nlen + 1 + iflen + 1;
    memcpy(k, f, 6);
    put_be(k + 6, (unsigned long long)plen, 4);
    memcpy(k + 10, p, 4);
    memcpy(k + 14, p + 6, 4);
    memcpy(k + 18, p + (udp || icmp ? (icmp ? 20 : 24) : 32), 2);  /* ICMP: type and code */
    uint32_t saddr = be32(p + 12), daddr = be32(p + 16);
    uint32_t sport = be16(p + 20), dport = be16(p + 22);
    if (icmp) { sport = be16(p + 24); dport = ((uint32_t)p[20] << 8) | p[21]; }   /* the id; type << 8 | code */
    long long cs, cd;
    long ps = 0, pd = 0;                                           /* ICMP: no port classes */
    if (addr_class(M, saddr, &cs) < 0 || addr_class(M, daddr, &cd) < 0 ||
        (!icmp && (bisect_right(M->sbounds, (long)sport, &ps) < 0 || bisect_right(M->dbounds, (long)dport, &pd) < 0)))
        return R_ERROR;
    put_be(k + 20, (unsigned long long)cs, 8);
    put_be(k + 28, (unsigned long long)cd, 8);
    put_be(k + 36, (unsigned long long)ps, 2);
    put_be(k + 38, (unsigned long long)pd, 2);
    PyObject *key = PyBytes_FromStringAndSize((const char *)kb, (k + 40) - kb);
    if (key == NULL) return R_ERROR;
    PyObject *plan = Py_XNewRef(PyDict_GetItemWithError(M->entries, key));
    Py_DECREF(key);
    if (plan == NULL) return PyErr_Occurred() ? R_ERROR : R_STOP;
    if (!PyTuple_Check(plan) || PyTuple_GET_SIZE(plan) != P_COUNT || !PyTuple_Check(PyTuple_GET_ITEM(plan, P_OPS))) {
        Py_DECREF(plan);
        PyErr_SetString(PyExc_TypeError, "MegaLane: entries are megaflow.py _lane_plan tuples");
        return R_ERROR;
    }
    PyObject *e = PyTuple_GET_ITEM(plan, P_ENTRY), *ops = PyTuple_GET_ITEM(plan, P_OPS);

    int rc = R_ERROR, err = 0;
    PyObject *n = NULL, *ct = NULL, *st = NULL, *seen = NULL, *s0 = NULL, *s1 = NULL;
    Ints ints = {0};
    /* MegaflowCache.serve: not while the model is to run an aborted packet (its RNG is replaced), then
     * table.now, the gc nf_conntrack_in runs first, the lookup */
    PyObject *cur_rng = PyObject_GetAttr(M->table, ml_s[MS_RNG]);
    if (cur_rng == NULL) goto out;
    Py_DECREF(cur_rng);
    if (cur_rng != M->rng) { rc = R_STOP; goto out; }
    PyObject *tnow = PyFloat_FromDouble(now);
    if (tnow == NULL) goto out;
    if (PyObject_SetAttr(M->table, attr_name[A_T_NOW], tnow) < 0) {
        Py_DECREF(tnow);
        goto out;
    }
    PyObject *lg = PyObject_GetAttr(M->table, attr_name[A_T_LAST_GC]);
    double last_gc = lg ? PyFloat_AsDouble(lg) : -1.0;
    Py_XDECREF(lg);
    if (lg == NULL || (last_gc == -1.0 && PyErr_Occurred())) { Py_DECREF(tnow); goto out; }
    if (now - last_gc >= M->gc_interval) {
        PyObject *r = PyObject_CallOneArg(M->gc, tnow);
        if (r == NULL) { Py_DECREF(tnow); goto out; }
        Py_DECREF(r);
    }
    Py_DECREF(tnow);
    T4 t = {saddr, daddr, sport, dport, udp ? 17 : icmp ? 1 : 6};
    PyObject *tk = scratch_t4(M, &t);
    if (tk == NULL) goto out;
    int known = PyDict_Contains(M->hash, tk);
    if (known) { rc = known < 0 ? R_ERROR : R_STOP; goto out; }   /* a known connection, or an entry find reaps */

    /* _serve_new: the next hop, the table's limit */
    Py_ssize_t nops = PyTuple_GET_SIZE(ops);
    uint32_t out_addr = daddr;
    NatR ranges[4];
    int manips[4], is_null[4];
    PyObject *masq[4] = {NULL, NULL, NULL, NULL};
    if (nops > 4) { rc = R_STOP; goto out; }
    for (Py_ssize_t i = 0; i < nops; i++) {
        PyObject *op = PyTuple_GET_ITEM(ops, i);
        unsigned long long v[8];
        if (!PyTuple_Check(op) || PyTuple_GET_SIZE(op) != 9) {
            PyErr_SetString(PyExc_TypeError, "MegaLane: a plan's op has 9 fields");
            goto out;
        }
        for (int j = 0; j < 8; j++) if (get_ull(PyTuple_GET_ITEM(op, j), &v[j]) < 0) goto out;
        is_null[i] = v[0] != 0;
        manips[i] = (int)v[1];
        ranges[i].flags = (long)v[2]; ranges[i].min_addr = (uint32_t)v[3]; ranges[i].max_addr = (uint32_t)v[4];
        ranges[i].min_proto = (uint32_t)v[5]; ranges[i].max_proto = (uint32_t)v[6]; ranges[i].base_proto = (uint32_t)v[7];
        masq[i] = PyTuple_GET_ITEM(op, 8);
        if (!is_null[i] && ints.n < ML_INTS) {   /* the rule's address: the object the model's tuples share */
            ints.v[ints.n] = v[3];
            ints.o[ints.n++] = Py_NewRef(PyTuple_GET_ITEM(op, 3));
        }
        if (!is_null[i] && (ranges[i].flags & ML_MAP_IPS) && ranges[i].min_addr != ranges[i].max_addr) { rc = R_STOP; goto out; }
    }
    for (Py_ssize_t i = 0; i < nops; i++)                       /* the first DNAT's address */
        if (!is_null[i] && manips[i] == ML_MANIP_DST) { out_addr = ranges[i].min_addr; break; }
    int g = ml_neighbour(M, plan, out_addr, &n);
    if (g <= 0) { rc = g < 0 ? R_ERROR : R_STOP; goto out; }
    long long limit = sysctl_ll(M, MS_CT_MAX, &err);
    if (err) goto out;
    if (limit && PyDict_GET_SIZE(M->conns) >= limit) { rc = R_STOP; goto out; }

    /* the tracker: checksum, then tcp_new and nf_conntrack_tcp_packet's SYN in state NONE, or a new
     * UDP flow's (nf_conntrack_udp_packet) */
    long long check = sysctl_ll(M, MS_CT_CHECKSUM, &err);
    if (err) goto out;
    const unsigned char *th = p + 20;
    Py_ssize_t seglen = tot - 20;
    if (check) {
        uint64_t sum = word_sum(th, seglen);
        int bad = icmp ? (sum == 0 || sum % 0xFFFF)                /* nf_conntrack_icmpv4_error: no pseudo header */
                       : !(udp && th[6] == 0 && th[7] == 0) && (sum + word_sum(p + 12, 8) + t.proto + (uint64_t)seglen) % 0xFFFF;
        if (bad) { rc = R_STOP; goto out; }                        /* bad checksum: INVALID, the model's */
    }
    T4 reply = invert(&t);
    long long timeout;
    /* from here on shared state changes as the model makes it */
    ct = ml_clone(M->ct_proto, &M->ct_slots);
    if (ct == NULL) goto out;
    if (icmp) {                                                    /* nf_conntrack_icmp_packet: no state */
        timeout = sysctl_ll(M, MS_T_ICMP, &err);
        if (err) goto out;
    } else if (udp) {
        timeout = sysctl_ll(M, MS_T_UDP, &err);
        if (err) goto out;
        st = ml_clone(M->udp_proto, &M->udp_slots);               /* UdpState(stream_ts=now + 2.0) */
        PyObject *ts = st ? PyFloat_FromDouble(now + 2.0) : NULL;
        if (ts == NULL) goto out;
        sset(st, M->udp_stream_ts, ts);
        PyObject_GC_UnTrack(st);
    } else {
        long long t_syn = sysctl_ll(M, MS_T_SYN_SENT, &err);
        long long t_retr = sysctl_ll(M, MS_T_MAX_RETRANS, &err);
        if (err) goto out;
        uint32_t seq = be32(th + 4), win = be16(th + 14);
        Sender s = {0, 0, 0, 0, 0};
        s.end = (uint32_t)((uint64_t)seq + (uint64_t)(seglen - doff) + 1);
        s.maxwin = win ? win : 1;
        s.maxend = s.end;
        syn_options(th + 20, doff - 20, &s);
        if (s.maxwin < win) s.maxwin = win;                      /* tcp_window_update: swin = win */
        uint32_t r_maxend = win + (win == 0);                     /* after(sack + win, r_maxend - 1) */
        timeout = t_syn > t_retr ? t_retr : t_syn;                 /* tcp_timeout: last_win is 0 */
        st = ml_clone(M->st_proto, &M->st_slots);
        s0 = st ? ml_clone(M->seen_proto, &M->seen_slots) : NULL;
        s1 = s0 ? ml_clone(M->seen_proto, &M->seen_slots) : NULL;
        seen = s1 ? PyList_New(2) : NULL;
        if (seen == NULL) goto out;
        PyList_SET_ITEM(seen, 0, Py_NewRef(s0));
        PyList_SET_ITEM(seen, 1, Py_NewRef(s1));
        /* The tracker state holds ints only (TcpState -> its list -> two TcpSeen): it can never be part
         * of a reference cycle, so the cyclic collector need not scan it.  A replay keeps ~10^5 of these
         * for their timeouts; scanning them again and again was ~40% of a scan's time. */
        PyObject_GC_UnTrack(s0);
        PyObject_GC_UnTrack(s1);
        PyObject_GC_UnTrack(seen);
        PyObject_GC_UnTrack(st);
        if (sset_int(&ints, s0, M->td_end, s.end) < 0 || sset_int(&ints, s0, M->td_maxend, s.maxend) < 0 ||
            sset_int(&ints, s0, M->td_maxwin, s.maxwin) < 0 || sset_int(&ints, s0, M->td_scale, s.scale) < 0 ||
            sset_int(&ints, s0, M->td_flags, s.flags) < 0 || sset_int(&ints, s1, M->td_maxend, r_maxend) < 0)
            goto out;
        sset(st, M->st_seen, Py_NewRef(seen));
        sset(st, M->st_state, Py_NewRef(M->syn_sent));
        sset(st, M->st_last_index, Py_NewRef(M->syn_set));
        sset(st, M->st_last_dir, Py_NewRef(M->zero));
    }
    if (st != NULL) sset(ct, M->ct_proto_off, Py_NewRef(st));      /* (ICMP: None, the prototype's) */
    PyObject *to = PyFloat_FromDouble(now + (double)timeout);
    if (to == NULL) goto out;
    sset(ct, M->ct_timeout, to);
    /* the NAT bindings, in the learned order */
    unsigned long long status = 0;
    M->ndraws = 0;
    for (Py_ssize_t i = 0; i < nops; i++) {
        NatR nr;
        if (is_null[i]) {
            uint32_t ip = manips[i] == ML_MANIP_SRC ? reply.dst : reply.src;
            nr.flags = ML_MAP_IPS; nr.min_addr = nr.max_addr = ip; nr.min_proto = nr.max_proto = nr.base_proto = 0;
        } else {
            nr = ranges[i];
            sset(ct, M->ct_masq, Py_NewRef(masq[i]));
        }
        if (setup_info(M, ct, &nr, manips[i], now, &status, &reply) < 0) goto out;
    }
    PyObject *orig_t = py_t4(M, &t, &ints), *reply_t = orig_t ? py_t4(M, &reply, &ints) : NULL;
    if (reply_t == NULL) { Py_XDECREF(orig_t); goto out; }
    sset(ct, M->ct_orig, orig_t);
    sset(ct, M->ct_reply, reply_t);
    int confirm = PyObject_IsTrue(PyTuple_GET_ITEM(plan, P_CONFIRM));
    if (confirm < 0) goto out;
    if (confirm) {                                                 /* __nf_conntrack_confirm */
        int clash = ml_find(M, &t, now);
        if (clash == 0) clash = ml_find(M, &reply, now);
        if (clash < 0) goto out;
        if (clash) {
            /* the NAT search found no free tuple: the model decides (a drop, or a UDP merge), drawing
             * the numbers drawn here; nothing else shared has changed (the entry is dropped) */
            PyObject *draws = PyTuple_New(M->ndraws);
            if (draws == NULL) goto out;
            for (int i = 0; i < M->ndraws; i++) {
                PyObject *x = PyLong_FromUnsignedLong(M->draws[i]);
                if (x == NULL) { Py_DECREF(draws); goto out; }
                PyTuple_SET_ITEM(draws, i, x);
            }
            PyObject *r = PyObject_CallOneArg(M->abort, draws);
            Py_DECREF(draws);
            if (r == NULL) goto out;
            Py_DECREF(r);
            rc = R_STOP;
            goto out;
        } else {
            if (sset_u(ct, M->ct_status, status | ML_IPS_CONFIRMED) < 0) goto out;
            PyObject *r = PyObject_CallOneArg(M->insert, ct);
            if (r == NULL) goto out;
            Py_DECREF(r);
            /* Not scanned by the cyclic collector while it is in the table: a scan keeps ~10^5 entries
             * for their timeouts, and the collector's full passes over them, the hash's (ct, dir) tuples and
             * NAT's by-source lists (not tracked either) were a third of a scan's time.  An entry is in
             * no cycle but the one through its table; ConntrackTable.delete and MegaflowCache.release
             * hand it back (track) so that a table that becomes garbage is still collected. */
            PyObject_GC_UnTrack(ct);
            for (int d = 0; d < 2; d++) {
                PyObject *hv = PyDict_GetItemWithError(M->hash, sget(ct, d ? M->ct_reply : M->ct_orig));
                if (hv == NULL) {
                    if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "MegaLane: insert did not hash");
                    goto out;
                }
                if (PyObject_GC_IsTracked(hv)) PyObject_GC_UnTrack(hv);
            }
            if (status & ML_IPS_SRC_NAT_DONE) {
                PyObject *bk = Py_BuildValue("(kkk)", (unsigned long)t.proto, (unsigned long)t.src,
                                             (unsigned long)t.sport);
                if (bk == NULL) goto out;
                PyObject *lst = PyDict_GetItemWithError(M->bysource, bk);
                int bad;
                if (lst == NULL) {
                    PyObject *one = PyErr_Occurred() ? NULL : PyList_New(1);
                    if (one != NULL) {
                        PyList_SET_ITEM(one, 0, Py_NewRef(ct));
                        PyObject_GC_UnTrack(one);      /* as the entry (release tracks it again) */
                    }
                    bad = one == NULL || PyDict_SetItem(M->bysource, bk, one) < 0;
                    Py_XDECREF(one);
                } else {
                    bad = PyList_Append(lst, ct) < 0;
                }
                Py_DECREF(bk);
                if (bad) goto out;
            }
        }
    }                           /* (not confirmed: the entry is dropped with the packet, its bindings' draws made) */
    /* _hit, and _tally_one's count */
    int touch = PyObject_IsTrue(PyTuple_GET_ITEM(plan, P_NEIGH_TOUCH));
    if (touch < 0) goto out;
    if (touch && n != Py_None) {
        PyObject *u = PyFloat_FromDouble(now);
        int bad = u == NULL || PyObject_SetAttr(n, ml_s[MS_UPDATED], u) < 0;
        Py_XDECREF(u);
        if (bad) goto out;
    }
    if (attr_incr(e, ml_s[MS_HITS]) < 0 || attr_incr(M->mega, ml_s[MS_HITS]) < 0 || attr_incr(e, ml_s[MS_TALLIED]) < 0)
        goto out;
    M->served++;
    rc = R_SERVED;
out:
    ints_clear(&ints);
    Py_XDECREF(n);
    Py_XDECREF(ct);
    Py_XDECREF(st);
    Py_XDECREF(seen);
    Py_XDECREF(s0);
    Py_XDECREF(s1);
    Py_DECREF(plan);
    return rc;
}

/* ---- the type ------------------------------------------------------------------------------------ */

static int MegaLane_init(MegaLane *M, PyObject *args, PyObject *kw) {
    PyObject *ct_slots, *st_slots, *seen_slots, *udp_slots;
    static char *kwlist[] = {"mega", "entries", "memo", "levels", "sbounds", "dbounds", "table", "neigh_entries",
                             "by_mac", "devnames", "default_dev", "forced_dev", "abort", "ct_proto", "ct_slots", "st_proto",
                             "st_slots", "seen_proto", "seen_slots", "udp_proto", "udp_slots", "tuple_type",
                             "syn_sent", "syn_set", "gc_interval", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!O!O!O!O!OO!O!O!UOOOOOOOOOOOOOd", kwlist, &M->mega, &PyDict_Type,
                                     &M->entries, &PyDict_Type, &M->memo, &PyList_Type, &M->levels, &PyList_Type,
                                     &M->sbounds, &PyList_Type, &M->dbounds, &M->table, &PyDict_Type,
                                     &M->neigh_entries, &PyDict_Type, &M->by_mac, &PyDict_Type, &M->devnames,
                                     &M->default_dev, &M->forced_dev,
                                     &M->abort, &M->ct_proto, &ct_slots, &M->st_proto, &st_slots, &M->seen_proto,
                                     &seen_slots, &M->udp_proto, &udp_slots, &M->tuple_type, &M->syn_sent,
                                     &M->syn_set, &M->gc_interval))
        return -1;
    PyObject **keep[] = {&M->mega, &M->entries, &M->memo, &M->levels, &M->sbounds, &M->dbounds, &M->table,
                         &M->neigh_entries, &M->by_mac, &M->devnames, &M->default_dev, &M->forced_dev, &M->abort,
                         &M->ct_proto,
                         &M->st_proto, &M->seen_proto, &M->udp_proto, &M->tuple_type, &M->syn_sent, &M->syn_set};
    for (size_t i = 0; i < sizeof(keep) / sizeof(*keep); i++) Py_INCREF(*keep[i]);
    if (!PyType_Check(M->tuple_type) || !PyType_IsSubtype((PyTypeObject *)M->tuple_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: tuple_type must be a tuple type");
        return -1;
    }
    if (M->forced_dev != Py_None && !PyUnicode_Check(M->forced_dev)) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: forced_dev must be a str or None");
        return -1;
    }
    M->zero = PyLong_FromLong(0);
    M->scratch = PyTuple_New(5);
    if (M->zero == NULL || M->scratch == NULL) return -1;
    for (int i = 0; i < 5; i++) PyTuple_SET_ITEM(M->scratch, i, Py_NewRef(M->zero));
    PyObject_GC_UnTrack(M->scratch);
    M->hash = PyObject_GetAttrString(M->table, "hash");
    M->conns = PyObject_GetAttrString(M->table, "conns");
    M->bysource = PyObject_GetAttrString(M->table, "bysource");
    M->sysctl = PyObject_GetAttrString(M->table, "sysctl");
    M->insert = PyObject_GetAttrString(M->table, "insert");
    M->delete_ = PyObject_GetAttrString(M->table, "delete");
    M->gc = PyObject_GetAttrString(M->table, "gc");
    M->rng = PyObject_GetAttrString(M->table, "rng");
    M->getrandbits = M->rng ? PyObject_GetAttrString(M->rng, "getrandbits") : NULL;
    if (!M->zero || !M->hash || !M->conns || !M->bysource || !M->sysctl || !M->insert || !M->delete_ || !M->gc ||
        !M->getrandbits)
        return -1;
    if (!PyDict_Check(M->hash) || !PyDict_Check(M->conns) || !PyDict_Check(M->bysource) || !PyDict_Check(M->sysctl)) {
        PyErr_SetString(PyExc_TypeError, "MegaLane: the table's hash, conns, bysource and sysctl are dicts");
        return -1;
    }
    if (slots_of(M->ct_proto, ct_slots, &M->ct_slots) < 0 || slots_of(M->st_proto, st_slots, &M->st_slots) < 0 ||
        slots_of(M->seen_proto, seen_slots, &M->seen_slots) < 0 || slots_of(M->udp_proto, udp_slots, &M->udp_slots) < 0)
        return -1;
    if ((M->ct_orig = one_slot(M->ct_proto, "orig")) < 0 || (M->ct_reply = one_slot(M->ct_proto, "reply")) < 0 ||
        (M->ct_status = one_slot(M->ct_proto, "status")) < 0 || (M->ct_timeout = one_slot(M->ct_proto, "_timeout")) < 0 ||
        (M->ct_proto_off = one_slot(M->ct_proto, "proto")) < 0 || (M->ct_masq = one_slot(M->ct_proto, "masq_index")) < 0 ||
        (M->st_seen = one_slot(M->st_proto, "seen")) < 0 || (M->st_state = one_slot(M->st_proto, "state")) < 0 ||
        (M->st_last_index = one_slot(M->st_proto, "last_index")) < 0 ||
        (M->st_last_dir = one_slot(M->st_proto, "last_dir")) < 0 ||
        (M->td_end = one_slot(M->seen_proto, "td_end")) < 0 || (M->td_maxend = one_slot(M->seen_proto, "td_maxend")) < 0 ||
        (M->td_maxwin = one_slot(M->seen_proto, "td_maxwin")) < 0 ||
        (M->td_scale = one_slot(M->seen_proto, "td_scale")) < 0 || (M->td_flags = one_slot(M->seen_proto, "flags")) < 0 ||
        (M->udp_stream_ts = one_slot(M->udp_proto, "stream_ts")) < 0)
        return -1;
    return 0;
}

static int MegaLane_traverse(MegaLane *M, visitproc visit, void *arg) {
    Py_VISIT(M->mega); Py_VISIT(M->entries); Py_VISIT(M->memo); Py_VISIT(M->levels); Py_VISIT(M->table);
    Py_VISIT(M->neigh_entries); Py_VISIT(M->abort); Py_VISIT(M->ct_proto); Py_VISIT(M->st_proto);
    Py_VISIT(M->seen_proto); Py_VISIT(M->udp_proto); Py_VISIT(M->insert); Py_VISIT(M->delete_); Py_VISIT(M->gc); Py_VISIT(M->getrandbits); Py_VISIT(M->rng);
    return 0;
}

static int MegaLane_clear(MegaLane *M) {
    PyObject **all[] = {&M->mega, &M->entries, &M->memo, &M->levels, &M->sbounds, &M->dbounds, &M->table, &M->hash,
                        &M->conns, &M->bysource, &M->sysctl, &M->rng, &M->getrandbits, &M->insert, &M->delete_, &M->gc,
                        &M->neigh_entries, &M->by_mac, &M->devnames, &M->default_dev, &M->forced_dev, &M->abort,
                        &M->ct_proto,
                        &M->st_proto, &M->seen_proto, &M->udp_proto, &M->tuple_type, &M->syn_sent, &M->syn_set,
                        &M->zero, &M->scratch};
    for (size_t i = 0; i < sizeof(all) / sizeof(*all); i++) Py_CLEAR(*all[i]);
    return 0;
}

static void MegaLane_dealloc(MegaLane *M) {
    PyObject_GC_UnTrack(M);
    MegaLane_clear(M);
    Py_TYPE(M)->tp_free((PyObject *)M);
}

static PyObject *MegaLane_get_served(MegaLane *M, void *closure) { return PyLong_FromLongLong(M->served); }

static PyGetSetDef MegaLane_getset[] = {
    {"served", (getter)MegaLane_get_served, NULL, "packets served so far", NULL},
    {NULL}
};

static PyTypeObject MegaLaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "pathtrace._fastpath.MegaLane",
    .tp_basicsize = sizeof(MegaLane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The megaflow cache's new TCP and UDP connections in C (pathtrace/megaflow.py MegaflowCache.lane).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MegaLane_init,
    .tp_traverse = (traverseproc)MegaLane_traverse,
    .tp_clear = (inquiry)MegaLane_clear,
    .tp_dealloc = (destructor)MegaLane_dealloc,
    .tp_getset = MegaLane_getset,
};

/* track(objects): hand objects the lane stopped tracking back to the cyclic collector. */
static PyObject *gc_track(PyObject *self, PyObject *objects) {
    PyObject *it = PyObject_GetIter(objects);
    if (it == NULL) return NULL;
    PyObject *o;
    while ((o = PyIter_Next(it)) != NULL) {
        if (PyObject_IS_GC(o) && !PyObject_GC_IsTracked(o)) PyObject_GC_Track(o);
        Py_DECREF(o);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    Py_RETURN_NONE;
}

static int megalane_intern(void) {
    for (int i = 0; i < MS_COUNT; i++) if (!(ml_s[i] = PyUnicode_InternFromString(ml_names[i]))) return -1;
    return 0;
}
