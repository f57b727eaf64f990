/*
 * mapping.c - shared, reference-counted radix trees (see mapping.h).
 *
 * Invariants:
 *  1. n->rc equals the number of device roots and interior slots that
 *     point at n.
 *  2. A node reachable through a path whose nodes all have rc == 1 is
 *     private to one device and may change in place; any other node is
 *     copied before it changes.
 *  3. Each leaf holds one reference on every data block its entries name
 *     (block when CB_E_MAPPED, origin when CB_E_ORIGIN).
 *  4. Every dirty node's parent is dirty (changes go down from the root).
 */
#include "mapping.h"
#include "cowblock.h"

#include <stdlib.h>

uint64_t cb_map_span(unsigned level)
{
    /* blocks under one slot of a node at `level` (level >= 1) */
    uint64_t s = CB_LEAF_ENTRIES;
    for (unsigned l = 1; l < level; l++)
        s *= CB_NODE_FANOUT;
    return s;
}

unsigned cb_map_depth(uint64_t nblocks)
{
    unsigned d = 0;
    uint64_t cover = CB_LEAF_ENTRIES;
    while (cover < nblocks) {
        cover *= CB_NODE_FANOUT;
        d++;
    }
    return d;
}

struct cb_node *cb_node_new(struct cb_mapping *m, uint16_t level)
{
    struct cb_node *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->rc = 1;
    n->level = level;
    n->time = m->now;
    n->dirty = 1;
    m->nnodes++;
    m->ndirty++;
    return n;
}

void cb_node_touch(struct cb_mapping *m, struct cb_node *n)
{
    n->time = m->now;
    if (!n->dirty) {
        n->dirty = 1;
        m->ndirty++;
    }
}

int cb_entry_ref(struct cb_spacemap *sm, const struct cb_entry *e)
{
    int rc = 0;
    if (e->flags & CB_E_MAPPED)
        rc = cb_sm_inc(sm, e->block);
    if (rc == 0 && (e->flags & CB_E_ORIGIN))
        rc = cb_sm_inc(sm, e->origin);
    return rc;
}

int cb_entry_unref(struct cb_spacemap *sm, const struct cb_entry *e)
{
    int rc = 0;
    if (e->flags & CB_E_MAPPED)
        rc = cb_sm_dec(sm, e->block);
    if (rc == 0 && (e->flags & CB_E_ORIGIN))
        rc = cb_sm_dec(sm, e->origin);
    return rc;
}

int cb_node_put(struct cb_mapping *m, struct cb_node *n)
{
    if (!n)
        return 0;
    if (n->rc == 0)
        return CB_ECORRUPT;
    if (--n->rc > 0)
        return 0;
    int rc = 0, r;
    if (n->level == 0) {
        for (unsigned i = 0; i < CB_LEAF_ENTRIES; i++)
            if ((r = cb_entry_unref(m->sm, &n->u.e[i])) && !rc)
                rc = r;
    } else {
        for (unsigned i = 0; i < CB_NODE_FANOUT; i++)
            if ((r = cb_node_put(m, n->u.c[i])) && !rc)
                rc = r;
    }
    if (n->page && (r = cb_pm_free(m->pm, n->page)) && !rc)
        rc = r;
    if (n->dirty)
        m->ndirty--;
    m->nnodes--;
    free(n);
    return rc;
}

static unsigned slot_of(unsigned level, uint64_t v)
{
    return (unsigned)((v / cb_map_span(level)) % CB_NODE_FANOUT);
}

const struct cb_entry *cb_map_lookup(const struct cb_node *n, unsigned depth, uint64_t v)
{
    for (unsigned l = depth; n && l > 0; l--)
        n = n->u.c[slot_of(l, v)];
    return n ? &n->u.e[v % CB_LEAF_ENTRIES] : NULL;
}

const struct cb_node *cb_map_leaf(const struct cb_node *n, unsigned depth,
                                  uint64_t v, uint64_t *base)
{
    for (unsigned l = depth; n && l > 0; l--)
        n = n->u.c[slot_of(l, v)];
    *base = v - v % CB_LEAF_ENTRIES;
    return n;
}

/* Make *slot private: copy it if shared, create it if missing. */
static int shadow(struct cb_mapping *m, struct cb_node **slot, uint16_t level)
{
    struct cb_node *n = *slot;
    if (!n) {
        if (!(n = cb_node_new(m, level)))
            return CB_ENOMEM;
        *slot = n;
        return 0;
    }
    if (n->level != level)
        return CB_ECORRUPT;
    if (n->rc == 1) {
        cb_node_touch(m, n);
        return 0;
    }
    struct cb_node *c = cb_node_new(m, level);
    if (!c)
        return CB_ENOMEM;
    c->u = n->u;
    /* The copy takes one more reference on everything n names.  That fails
     * only on a corrupt count (at its maximum, or a block out of range):
     * then every reference taken so far is given back (n holds one on each,
     * so no count drops to zero), and the tree and the counts are as they
     * were. */
    int rc = 0;
    unsigned i;
    if (level == 0) {
        for (i = 0; i < CB_LEAF_ENTRIES; i++) {
            const struct cb_entry *e = &c->u.e[i];
            if ((e->flags & CB_E_MAPPED) && (rc = cb_sm_inc(m->sm, e->block)))
                break;
            if ((e->flags & CB_E_ORIGIN) && (rc = cb_sm_inc(m->sm, e->origin))) {
                if (e->flags & CB_E_MAPPED)
                    cb_sm_dec(m->sm, e->block); /* this entry's first half */
                break;
            }
        }
        if (rc)
            while (i-- > 0)
                cb_entry_unref(m->sm, &c->u.e[i]);
    } else {
        for (i = 0; i < CB_NODE_FANOUT && !rc; i++)
            if (c->u.c[i] && c->u.c[i]->rc == UINT32_MAX)
                rc = CB_ECORRUPT; /* checked before any is taken */
        for (i = 0; i < CB_NODE_FANOUT && !rc; i++)
            if (c->u.c[i])
                c->u.c[i]->rc++;
    }
    if (rc) { /* only on a corrupt count: leave the tree as it was */
        free(c);
        m->nnodes--;
        m->ndirty--;
        return rc;
    }
    n->rc--;
    *slot = c;
    return 0;
}

int cb_map_writable(struct cb_mapping *m, struct cb_node **root, unsigned depth,
                    uint64_t v, struct cb_entry **out)
{
    struct cb_node **slot = root;
    for (unsigned l = depth;; l--) {
        int rc = shadow(m, slot, (uint16_t)l);
        if (rc)
            return rc;
        if (l == 0)
            break;
        slot = &(*slot)->u.c[slot_of(l, v)];
    }
    *out = &(*slot)->u.e[v % CB_LEAF_ENTRIES];
    return 0;
}

static uint64_t seek(const struct cb_node *n, unsigned level, uint64_t base, uint64_t v)
{
    if (level == 0)
        return v < base ? base : v;
    uint64_t span = cb_map_span(level);
    uint64_t i = v > base ? (v - base) / span : 0;
    for (; i < CB_NODE_FANOUT; i++) {
        const struct cb_node *c = n->u.c[i];
        if (!c)
            continue;
        uint64_t cb = base + i * span;
        uint64_t r = seek(c, level - 1, cb, v > cb ? v : cb);
        if (r != UINT64_MAX)
            return r;
    }
    return UINT64_MAX;
}

uint64_t cb_map_seek(const struct cb_node *root, unsigned depth, uint64_t v)
{
    if (!root)
        return UINT64_MAX;
    return seek(root, depth, 0, v);
}
