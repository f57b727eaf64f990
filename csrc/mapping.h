/*
 * mapping.h - per-device maps from virtual block to entry: radix trees whose
 * nodes are reference counted and shared between snapshots.
 *
 * A device's tree has a fixed depth, set by its size: leaves (level 0) hold
 * CB_LEAF_ENTRIES entries, interior nodes CB_NODE_FANOUT children.  A
 * missing child is a hole: every block under it is unmapped.
 *
 * Snapshot = the new device takes the origin's root and the root's count
 * goes up by one; nothing else is touched, so it costs the same whatever
 * the data behind it.  A lookup walks depth + 1 nodes whatever the length
 * of the snapshot chain.  cb_map_writable() gives a private leaf: every
 * shared node on the path (rc > 1) is copied first ("shadowed"); copying a
 * leaf counts one more reference to each data block it names; copying an
 * interior node, one more to each child.
 *
 * A node that changes is marked dirty; the next commit writes it to a new
 * page (never over its old one) and frees the old page once durable.
 * Not thread-safe: callers hold the pool lock (shared for lookups,
 * exclusive for everything else).
 */
#ifndef CB_MAPPING_H
#define CB_MAPPING_H
#include <stdint.h>
#include "meta.h"
#include "spacemap.h"

struct cb_entry {
    uint64_t block;   /* data block holding the sub-blocks in bitmap */
    uint64_t origin;  /* with CB_E_ORIGIN: where the other sub-blocks are */
    uint64_t bitmap;  /* sub-blocks present in block */
    uint32_t time;    /* snapshot clock when the entry last changed (0 = never) */
    uint32_t flags;   /* CB_E_* */
};

struct cb_node {
    uint32_t rc;      /* device roots and interior slots pointing here */
    uint32_t time;    /* snapshot clock when it last changed */
    uint64_t page;    /* where it is committed, 0 if it never was */
    uint16_t level;   /* 0 = leaf */
    uint8_t dirty;    /* changed since its last commit */
    uint8_t mark;     /* scratch for walks */
    uint64_t aux;     /* scratch for walks */
    union {
        struct cb_entry e[CB_LEAF_ENTRIES];
        struct cb_node *c[CB_NODE_FANOUT];
    } u;
};

struct cb_mapping {
    struct cb_spacemap *sm;
    struct cb_pagemap *pm;
    uint32_t now;      /* the snapshot clock */
    uint64_t nnodes;   /* nodes in memory */
    uint64_t ndirty;   /* dirty nodes (bounded: the pool commits past a limit) */
};

/* Levels above the leaves for a device of nblocks virtual blocks. */
unsigned cb_map_depth(uint64_t nblocks);
struct cb_node *cb_node_new(struct cb_mapping *m, uint16_t level);
/* Drop one reference; at zero, drop the children / data blocks too. */
int cb_node_put(struct cb_mapping *m, struct cb_node *n);
/* Mark a private node changed. */
void cb_node_touch(struct cb_mapping *m, struct cb_node *n);
/* The entry for v, or NULL inside a hole.  Read-only. */
const struct cb_entry *cb_map_lookup(const struct cb_node *root, unsigned depth, uint64_t v);
/* A private, writable entry for v: shadows shared nodes on the way down and
 * creates missing ones. */
int cb_map_writable(struct cb_mapping *m, struct cb_node **root, unsigned depth,
                    uint64_t v, struct cb_entry **out);
/* The first v' >= v that lies in an existing leaf, or UINT64_MAX. */
uint64_t cb_map_seek(const struct cb_node *root, unsigned depth, uint64_t v);
/* Leaf for v (read-only), or NULL; *base gets the first block it covers. */
const struct cb_node *cb_map_leaf(const struct cb_node *root, unsigned depth,
                                  uint64_t v, uint64_t *base);
/* Count data references of one entry up or down. */
int cb_entry_ref(struct cb_spacemap *sm, const struct cb_entry *e);
int cb_entry_unref(struct cb_spacemap *sm, const struct cb_entry *e);
/* Blocks covered by one child of a node at `level`. */
uint64_t cb_map_span(unsigned level);

#endif
