/* Copying a shared node (mapping.c's shadow, reached through cb_map_writable)
 * when taking a reference fails midway: every reference taken must be given
 * back, so the tree and all counts are as before (see test_shadow.py). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cowblock.h"
#include "mapping.h"

#define NBLOCKS 4096u
static int failures;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            printf("FAIL line %d: ", __LINE__);            \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
            failures++;                                    \
        }                                                  \
    } while (0)

static uint32_t *rc_of(struct cb_spacemap *sm, uint64_t b)
{
    return &sm->chunks[b / CB_SM_CHUNK]->rc[b % CB_SM_CHUNK];
}

/* A leaf naming blocks 10.. (one per entry), entry 5 also with an origin,
 * as a snapshot leaves it: referenced once by the leaf, shared by two roots. */
static struct cb_node *shared_leaf(struct cb_mapping *m)
{
    struct cb_node *n = cb_node_new(m, 0);
    for (unsigned i = 0; i < 20; i++) {
        struct cb_entry *e = &n->u.e[i];
        e->block = 10 + i;
        e->bitmap = 1;
        e->flags = CB_E_MAPPED;
        if (i == 5) {
            e->flags |= CB_E_ORIGIN;
            e->origin = 100;
        }
        if (cb_entry_ref(m->sm, e))
            abort();
    }
    n->dirty = 0;
    m->ndirty--;
    n->rc = 2;
    return n;
}

static void snap_counts(struct cb_spacemap *sm, uint32_t *out)
{
    for (uint64_t b = 0; b < 200; b++)
        out[b] = cb_sm_rc(sm, b);
}

/* The copy must fail with CB_ECORRUPT and leave everything as it was. */
static void expect_rollback(const char *what, struct cb_mapping *m, struct cb_node *root,
                            unsigned depth, uint64_t v)
{
    uint32_t before[200], after[200];
    snap_counts(m->sm, before);
    uint64_t nnodes = m->nnodes, ndirty = m->ndirty, busy = m->sm->busy;
    size_t pending = m->sm->pending.n;
    uint32_t rc = root->rc;
    struct cb_node *slot = root;
    struct cb_entry *e = NULL;
    int r = cb_map_writable(m, &slot, depth, v, &e);
    CHECK(r == CB_ECORRUPT, "%s: returned %d, not CB_ECORRUPT", what, r);
    CHECK(slot == root, "%s: the root was replaced", what);
    CHECK(root->rc == rc, "%s: root count %u, was %u", what, root->rc, rc);
    CHECK(m->nnodes == nnodes && m->ndirty == ndirty, "%s: node counts changed", what);
    CHECK(m->sm->busy == busy && m->sm->pending.n == pending, "%s: space map changed", what);
    snap_counts(m->sm, after);
    for (uint64_t b = 0; b < 200; b++)
        CHECK(before[b] == after[b], "%s: block %llu has count %u, had %u", what,
              (unsigned long long)b, after[b], before[b]);
}

int main(void)
{
    struct cb_spacemap sm;
    struct cb_pagemap pm;
    if (cb_sm_init(&sm, NBLOCKS) || cb_pm_init(&pm, 2))
        return 2;
    struct cb_mapping m = {&sm, &pm, 1, 0, 0};

    /* a leaf: the 8th block's count is at its maximum */
    struct cb_node *leaf = shared_leaf(&m);
    uint32_t *c17 = rc_of(&sm, 17), saved = *c17;
    *c17 = UINT32_MAX;
    expect_rollback("leaf, block count at its maximum", &m, leaf, 0, 0);
    *c17 = saved;

    /* a leaf: the origin of entry 5 at its maximum (its block was counted first) */
    uint32_t *c100 = rc_of(&sm, 100);
    saved = *c100;
    *c100 = UINT32_MAX;
    expect_rollback("leaf, origin count at its maximum", &m, leaf, 0, 0);
    *c100 = saved;

    /* an interior node whose second child's count is at its maximum: the
     * count must not wrap to zero */
    struct cb_node *top = cb_node_new(&m, 1);
    struct cb_node *k0 = cb_node_new(&m, 0), *k1 = cb_node_new(&m, 0);
    top->u.c[0] = k0;
    top->u.c[1] = k1;
    top->rc = 2;
    k1->rc = UINT32_MAX;
    expect_rollback("interior node, child count at its maximum", &m, top, 1, 0);
    CHECK(k0->rc == 1 && k1->rc == UINT32_MAX, "children counts %u %u", k0->rc, k1->rc);

    /* and with sane counts the copy happens, one more reference on each */
    uint32_t before[200];
    snap_counts(&sm, before);
    struct cb_node *slot = leaf;
    struct cb_entry *e;
    int r = cb_map_writable(&m, &slot, 0, 0, &e);
    CHECK(r == 0 && slot != leaf && leaf->rc == 1 && slot->rc == 1, "copy: rc %d", r);
    for (unsigned i = 0; i < 20; i++)
        CHECK(cb_sm_rc(&sm, 10 + i) == before[10 + i] + 1, "copy: block %u", 10 + i);
    CHECK(cb_sm_rc(&sm, 100) == before[100] + 1, "copy: origin");

    /* give everything back (the sanitizer build checks for leaks) */
    cb_node_put(&m, leaf);
    cb_node_put(&m, slot);
    top->rc = 1;
    k1->rc = 1;
    cb_node_put(&m, top);
    CHECK(m.nnodes == 0, "%llu nodes left", (unsigned long long)m.nnodes);
    cb_sm_destroy(&sm);
    cb_pm_destroy(&pm);
    printf("checked, %d failure(s)\n", failures);
    return failures != 0;
}
