/*
 * cowblock.h - the public C API of the cowblock core.
 *
 * cowblock keeps thin-provisioned block devices with O(1) snapshots in a
 * pool: a directory holding a sparse data file ("data") and a metadata file
 * ("meta").  Devices map virtual blocks to reference-counted data blocks
 * through radix trees whose nodes are shared between snapshots and copied on
 * the first write through a shared node.  A write into a shared data block
 * copies up only the sub-blocks it touches (see DESIGN.md section 4).
 *
 * Conventions
 *  - Every fallible call returns int: 0 on success or a negative code.
 *    Codes in [CB_ERR_FIRST, CB_ERR_LAST] are cowblock's own; any other
 *    negative value is -errno from the operating system.  cb_strerror()
 *    names every code.  Results come back through out-parameters.
 *  - Handles are opaque.  A cb_pool owns its cb_dev handles: cb_pool_close()
 *    closes every handle still open, after which those pointers are invalid.
 *  - Thread safety: every call may be made from any thread, concurrently,
 *    on the same or different handles, except that cb_pool_close() and
 *    cb_dev_close() must not race with other calls on the handles they
 *    destroy.  One reader/writer lock per pool guards the metadata: reads
 *    share it, mutations hold it exclusively.
 *  - Durability: cb_pool_flush() (or cb_dev_flush(), which is the same) is
 *    the durability point.  When it returns 0, everything written before it
 *    survives a crash.  After a crash, every byte reads either as it was at
 *    the last completed flush or as a later write made it.
 *  - Sticky failure: if a metadata write fails, the pool enters a failed
 *    state; every later call but close returns CB_EFAILED.
 */
#ifndef COWBLOCK_H
#define COWBLOCK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes ------------------------------------------------------ */
#define CB_ERR_FIRST (-30699)
#define CB_EINVAL    (-30699) /* bad argument */
#define CB_ENOENT    (-30698) /* no such device */
#define CB_EEXIST    (-30697) /* a device of that name exists */
#define CB_EROFS     (-30696) /* pool or device is read-only */
#define CB_ENOSPC    (-30695) /* pool full (capacity or file system) */
#define CB_ECORRUPT  (-30694) /* metadata failed validation */
#define CB_EFAILED   (-30693) /* pool is in the sticky failed state */
#define CB_EBUSY     (-30692) /* pool locked by another opener */
#define CB_ETOOMANY  (-30691) /* device table or external table full */
#define CB_EVERSION  (-30690) /* unsupported on-disk format version */
#define CB_ENOMEM    (-30689) /* out of memory */
#define CB_EEXTERNAL (-30688) /* external origin file missing/unusable */
#define CB_ECHECKSUM (-30687) /* data failed its checksum: see cb_bad_offset() */
#define CB_ERR_LAST  (-30687)

/* ---- limits ----------------------------------------------------------- */
#define CB_NAME_MAX       127          /* bytes of a device name, no NUL */
#define CB_PATH_MAX       3800         /* bytes of an external origin path */
#define CB_MIN_BLOCK_SIZE 4096
#define CB_MAX_BLOCK_SIZE (1u << 20)
#define CB_MAX_DEV_SIZE   (1ull << 56) /* bytes */
#define CB_MAX_DEVICES    6400
#define CB_MAX_EXTERNALS  64

/* ---- flags ------------------------------------------------------------ */
#define CB_OPEN_READONLY 1u  /* open the pool read-only (shared lock) */
#define CB_OPEN_DIRECT   2u  /* O_DIRECT on the data file */
#define CB_OPEN_MMAP     4u  /* reads of the data file from a read-only shared mapping: no
                              * syscall per read, but a media error or the file shrinking
                              * under the pool raises SIGBUS (see blockio.h); opt-in, and
                              * not with CB_OPEN_DIRECT (CB_EINVAL) */
#define CB_DEV_READONLY  1u  /* device refuses writes and discards */
/* cb_pool_create: keep a CRC-32C of every data sub-block and verify it on
 * every read (see "Data checksums" below).  Fixed for the pool's life. */
#define CB_CREATE_CHECKSUMS 0x100u

typedef struct cb_pool cb_pool;
typedef struct cb_dev cb_dev;

/* Pool-wide figures.  Counters count since the pool was opened. */
typedef struct cb_stat {
    uint64_t block_size;      /* bytes */
    uint64_t nblocks;         /* data capacity in blocks */
    uint64_t used_blocks;     /* blocks referenced by some device */
    uint64_t ndevices;
    uint64_t generation;      /* last committed transaction */
    uint64_t time;            /* snapshot clock */
    uint64_t meta_pages;      /* pages reachable in the committed metadata */
    uint64_t meta_file_pages; /* pages the metadata file spans */
    uint64_t reads, bytes_read;
    uint64_t writes, bytes_written;      /* as asked by callers */
    uint64_t data_bytes_written;          /* physically written into the data file */
    uint64_t copyups;                     /* writes that broke sharing of a block */
    uint64_t copyup_bytes;                /* bytes copied from an origin block */
    uint64_t commits;
    uint64_t punched_blocks;              /* data blocks given back to the file system */
    uint64_t checksums;                   /* 1 if the pool keeps data checksums */
    uint64_t checksum_failures;           /* sub-blocks that failed verification */
    uint64_t kept_blocks;                 /* free blocks kept allocated for reuse */
} cb_stat;

/* One device's description.  name is NUL-terminated. */
typedef struct cb_devinfo {
    char name[CB_NAME_MAX + 1];
    uint32_t id;
    uint32_t origin_id;       /* id of the device it was snapshotted from, 0 if none */
    uint64_t size;            /* bytes */
    uint32_t flags;           /* CB_DEV_READONLY */
    uint32_t external_id;     /* 0 if none */
    uint64_t created_ns;      /* CLOCK_REALTIME at creation */
    uint32_t birth_time;      /* snapshot clock at creation */
    uint32_t snap_time;       /* snapshot clock at its last snapshot */
} cb_devinfo;

/* Space used by one device, in blocks.  mapped = exclusive + shared. */
typedef struct cb_usage {
    char name[CB_NAME_MAX + 1];
    uint32_t id;
    uint64_t mapped;     /* distinct data blocks it reads from */
    uint64_t exclusive;  /* ... that no other device reads from */
    uint64_t shared;     /* ... that some other device reads from too */
} cb_usage;

/* Result of cb_pool_check: counts of problems found. */
typedef struct cb_check {
    uint64_t errors;          /* corruption: data would be wrong */
    uint64_t leaked_blocks;   /* free blocks still holding data in the file */
    uint64_t leaked_pages;    /* reserved for metadata page leaks */
    uint64_t nodes;           /* metadata nodes visited */
    uint64_t mapped_entries;  /* entries visited */
    uint64_t repaired;        /* problems fixed (with repair) */
} cb_check;

/* Progress and outcome of cb_pool_scrub.  The scrub stores into the
 * counters as it goes (atomically), so another thread may read them to show
 * progress, and may set cancel to non-zero to stop it early. */
typedef struct cb_scrub {
    uint64_t total_bytes;     /* bytes to read; known once the walk is done */
    uint64_t done_bytes;      /* bytes read so far */
    uint64_t blocks;          /* data blocks read */
    uint64_t bad;             /* sub-blocks that failed (checksum or IO error) */
    int checksums;            /* 1: verified against checksums; 0: only read */
    int cancel;               /* set by the caller to stop */
    uint64_t rate_limit;      /* set by the caller: bytes per second at most, 0 = none */
} cb_scrub;

/* One damaged sub-block found by cb_pool_scrub. */
typedef struct cb_scrub_bad {
    char name[CB_NAME_MAX + 1]; /* a device that reads it, "" if none does */
    uint64_t offset;          /* byte offset in that device */
    uint64_t length;          /* bytes (one sub-block) */
    uint64_t block;           /* data block */
    uint32_t ndevices;        /* devices that read it */
    int error;                /* CB_ECHECKSUM, or the IO error */
} cb_scrub_bad;

/* ---- library ---------------------------------------------------------- */
/* "cowblock-core src <hash>": the hash of the sources the library was built
 * from, computed by the build (csrc/build_ffi.py, cowblock/_buildid.py), so
 * that a binding can refuse a library built from other sources.  Static
 * storage. */
const char *cb_build_id(void);
const char *cb_strerror(int code);      /* static storage, never NULL */
/* After a call on this thread returned CB_ECHECKSUM: the byte offset, in
 * the device that call named, of the first sub-block whose data failed its
 * checksum.  Undefined after any other result. */
uint64_t cb_bad_offset(void);

/* ---- pool ------------------------------------------------------------- */
/* Make a new pool in directory `path` (created if missing, must be empty of
 * pool files).  size: data capacity in bytes (rounded down to whole blocks,
 * at least one block).  block_size: a power of two in
 * [CB_MIN_BLOCK_SIZE, CB_MAX_BLOCK_SIZE].  On success *out is an open pool. */
int cb_pool_create(const char *path, uint64_t size, uint32_t block_size,
                   unsigned flags, cb_pool **out);
/* Open an existing pool.  Validates every metadata page it reads and
 * recomputes reference counts from the mappings. */
int cb_pool_open(const char *path, unsigned flags, cb_pool **out);
/* Commit (unless read-only or failed), close every device handle, release
 * the pool.  Returns the commit's result; the pool is freed either way. */
int cb_pool_close(cb_pool *pool);
/* Durability point: data, then metadata, then the superblock. */
int cb_pool_flush(cb_pool *pool);
/* Keep up to max_blocks freed data blocks allocated in the data file
 * instead of punching them out once the commit that freed them is durable,
 * and hand them out first to later writes, which then land in space the
 * file system has already allocated (like dm-thin without discard
 * passdown).  Default 0: every freed block is punched.  Kept blocks count
 * as free in every figure but the data file's size on disk; lowering the
 * bound punches the excess at once, and close punches them all, so a
 * closed pool holds none.  Not persistent: set it after each open. */
int cb_pool_set_keep(cb_pool *pool, uint64_t max_blocks);
int cb_pool_stat(cb_pool *pool, cb_stat *out);

/* Device table.  Names are 1..CB_NAME_MAX bytes, no '/' and no NUL. */
int cb_pool_create_device(cb_pool *pool, const char *name, uint64_t size,
                          const char *external_path);   /* may be NULL */
int cb_pool_snapshot(cb_pool *pool, const char *source, const char *name,
                     unsigned dev_flags);
int cb_pool_delete(cb_pool *pool, const char *name);
/* Device count, then descriptions.  cb_pool_list fills at most n infos and
 * sets *count to the number of devices (call with n = 0 to size). */
int cb_pool_list(cb_pool *pool, cb_devinfo *out, size_t n, size_t *count);
int cb_pool_info(cb_pool *pool, const char *name, cb_devinfo *out);
/* Path of external origin `id` copied into buf (NUL-terminated). */
int cb_pool_external_path(cb_pool *pool, uint32_t id, char *buf, size_t len);
/* Per-device space, exact, in one walk of all metadata: fills at most n
 * entries and sets *count to the number of devices. */
int cb_pool_usage(cb_pool *pool, cb_usage *out, size_t n, size_t *count);
/* Walk and verify all metadata: checksums, structure, reference counts
 * recomputed from the mappings, data blocks in range, and the data file for
 * free blocks still holding data.  With repair, such blocks are punched out.
 * Messages (one per line) go to buf (truncated to len, NUL-terminated). */
int cb_pool_check(cb_pool *pool, int repair, cb_check *out,
                  char *buf, size_t len);
/* The committed metadata (what the last commit made durable, read back from
 * the metadata file and verified) as JSON text, like thin_dump: superblock,
 * both slots, external origins, devices with their mappings as runs, free
 * log.  On success *json is NUL-terminated, malloc'd, owned by the caller
 * and released with cb_free(); *len (if len is not NULL) gets its length.
 * Takes the pool lock shared.  CB_ECORRUPT if a page fails verification. */
int cb_pool_dump(cb_pool *pool, char **json, size_t *len);
/* Read every data block some device reads, once, in data-file order, and
 * verify it against its checksums (pools made without checksums are only
 * read, which finds IO errors).  Online: it holds the pool lock shared for
 * a 4 MiB slice of blocks at a time, so writes wait for one slice at most;
 * what changes meanwhile is handled (blocks freed are skipped, blocks
 * written after the scrub began are not read).  Damaged sub-blocks are
 * reported in bad (at most n; *count gets how many were found, as does
 * progress->bad).  Returns 0 when the scrub ran to the end, whatever it
 * found; -ECANCELED if progress->cancel was set.  The pool must not be
 * closed while it runs. */
int cb_pool_scrub(cb_pool *pool, cb_scrub *progress, cb_scrub_bad *bad,
                  size_t n, size_t *count);
/* Release memory the library handed out (cb_pool_dump).  NULL is a no-op. */
void cb_free(void *ptr);

/* ---- devices ---------------------------------------------------------- */
/* Handles stay valid until cb_dev_close or cb_pool_close.  A handle whose
 * device is deleted returns CB_ENOENT from every call. */
int cb_dev_open(cb_pool *pool, const char *name, cb_dev **out);
void cb_dev_close(cb_dev *dev);
int cb_dev_info(cb_dev *dev, cb_devinfo *out);

/* Byte IO.  off + len must lie within the device.  Unmapped ranges read as
 * zeros.  Writes into shared blocks copy up only the touched sub-blocks.
 *
 * Data checksums (pools made with CB_CREATE_CHECKSUMS): every sub-block a
 * read or a copy-up takes from the data file is verified first; a mismatch
 * fails the call with CB_ECHECKSUM and cb_bad_offset() tells where.  Bytes
 * from external origins are not covered.  To keep the checksums exact
 * across crashes, a block is never rewritten once a commit made it
 * durable: the first write to it after a flush copies up, as if it were
 * shared. */
int cb_dev_read(cb_dev *dev, void *buf, uint64_t len, uint64_t off);
int cb_dev_write(cb_dev *dev, const void *buf, uint64_t len, uint64_t off);
int cb_dev_discard(cb_dev *dev, uint64_t len, uint64_t off);
int cb_dev_flush(cb_dev *dev);

/* Batch IO: n whole blocks, block idx[i] <-> buf + i * block_size. */
int cb_dev_read_blocks(cb_dev *dev, const uint64_t *idx, size_t n, void *buf);
int cb_dev_write_blocks(cb_dev *dev, const uint64_t *idx, size_t n,
                        const void *buf);

/* Bitmap (LSB first) of the virtual blocks this device changed since it was
 * created, written or discarded through it; bits must hold
 * ceil(size / block_size) bits.  Cost grows with what changed, not with the
 * device size. */
int cb_dev_changed(cb_dev *dev, uint8_t *bits, size_t nbytes);
/* Runs of virtual blocks that may hold data (mapped, or read from the
 * external origin): fills at most n (start, count) pairs and sets *count to
 * the total number of runs. */
int cb_dev_extents(cb_dev *dev, uint64_t *pairs, size_t n, size_t *count);
int cb_dev_usage(cb_dev *dev, cb_usage *out);

#ifdef __cplusplus
}
#endif
#endif /* COWBLOCK_H */
