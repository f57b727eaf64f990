/*
 * pool.h - what the pool layer (pool.c) owns: the pool handle around the
 * store, its lock and state, and the device handles.  Only pool.c includes
 * it; the layers below see the store (store.h) and nothing of this.
 */
#ifndef CB_POOL_H
#define CB_POOL_H
#include <pthread.h>

#include "cowblock.h"
#include "store.h"

struct cb_pool {
    struct cb_store s;    /* what the layers below work on */
    /* Reader/writer lock over s: shared for reads of device data and of
     * metadata, exclusive for everything that changes metadata, allocates
     * or commits.  A write's data IO happens under the exclusive lock,
     * which makes allocation and copy-up of a block atomic with respect to
     * other writers, and means a reader never sees an entry whose data is
     * not yet written. */
    pthread_rwlock_t lock;
    unsigned refs;        /* open's + cb_pool_retain's + one per cb_dev (atomic) */
    int shut;             /* cb_pool_close has begun: CLOSING, then CLOSED (atomic) */
    char *path;
    unsigned flags;       /* CB_OPEN_* as opened: CB_OPEN_READONLY never commits */
    /* State (see the diagram at the top of pool.c): 0 while OPEN; the
     * sticky error code once FAILED (set by pool_fail only). */
    int failed;
    /* A reader of a shared pool whose refresh failed after its pin moved:
     * its state may name reused blocks, so reads give CB_ESTALE until a
     * refresh succeeds (atomic; set and cleared under the lock). */
    int stale;
    struct cb_dev *handles;    /* open device handles (list) */
};

struct cb_dev {
    struct cb_pool *pool;
    struct cb_devrec *rec;     /* NULL once the pool is closed */
    struct cb_dev *prev, *next;
};

#endif
