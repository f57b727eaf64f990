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
 *  - Handles are opaque.  See "Lifetimes" below for how long they stay valid.
 *  - Thread safety: every call may be made from any thread, concurrently,
 *    on the same or different handles, cb_pool_close() included (see
 *    "Lifetimes").  Only the calls that give up a pointer -- cb_dev_close()
 *    and cb_pool_release(), and cb_pool_close() of a pool nobody retained --
 *    must not race with other calls on the pointer they give up.  One
 *    reader/writer lock per pool guards the metadata: reads share it,
 *    mutations hold it exclusively; each prototype below says which it
 *    takes ("Lock:"), what it may return ("Errors:") and what it costs
 *    ("Cost:").  No call holds the lock of two pools, and no call waits for
 *    anything but the lock and its own IO (cb_pool_close: the calls inside).
 *  - Lifetimes.  A pool is shut down by cb_pool_close(); its memory is freed
 *    only when nothing refers to it any more.  References to a pool are:
 *    the one cb_pool_create()/cb_pool_open() hands out (given up by
 *    cb_pool_close()), one per cb_pool_retain() (given up by
 *    cb_pool_release()), and one per open cb_dev handle (given up by
 *    cb_dev_close()).  While a caller holds a reference, the pointer is
 *    valid and every call on it is safe, before, during or after the close:
 *      - cb_pool_close() first marks the pool closed: from then on every
 *        new call on the pool or any of its devices returns CB_ECLOSED at
 *        once, without touching anything;
 *      - it then waits for the calls already inside the pool to return
 *        (they complete normally), commits as a flush would (unless the
 *        pool is read-only or failed; this is what makes every write that
 *        returned before the close durable), and releases the files, their
 *        lock and the pool's memory but the small handle itself;
 *      - a cb_dev handle stays valid until cb_dev_close(), which may come
 *        before or after cb_pool_close() (after it, it only frees the handle).
 *    A binding whose threads may still hold a pool pointer when another
 *    closes it (a garbage-collected language) takes one cb_pool_retain()
 *    right after the open and calls cb_pool_release() once no thread can
 *    reach the pointer any more; a plain C program that closes when nothing
 *    else runs just calls cb_pool_close() and cb_dev_close().
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
#define CB_EEXTERNAL (-30688) /* external origin file missing, unusable or changed */
#define CB_ECHECKSUM (-30687) /* data failed its checksum: see cb_bad_offset() */
#define CB_ECLOSED   (-30686) /* pool closed (cb_pool_close), or being closed */
#define CB_EFENCED   (-30685) /* this writer's lock was broken and another writer
                               * committed (or it was blocklisted): the pool fails */
#define CB_ESTALE    (-30684) /* a read-only opener's reader lease lapsed: what it read
                               * may have been reused; cb_pool_refresh moves it on */
#define CB_ERR_LAST  (-30684)

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
    uint64_t held_blocks;                 /* freed blocks held for readers of older commits
                                           * (counted in used_blocks: not yet free) */
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

/* Space used by one device: counts of data blocks, but changed_bytes.
 * mapped = exclusive + shared.  A partly copied-up block counts twice: the
 * new block and the origin block its absent sub-blocks are read from.
 * Blocks of an external origin file are not data blocks and count nowhere. */
typedef struct cb_usage {
    char name[CB_NAME_MAX + 1];
    uint32_t id;
    uint64_t mapped;     /* distinct data blocks it reads from */
    uint64_t exclusive;  /* ... that no other device reads from */
    uint64_t shared;     /* ... that some other device reads from too */
    uint64_t changed_bytes; /* bytes of the virtual blocks cb_dev_changed marks,
                             * the last block counted up to the device's end */
} cb_usage;

/* One block of cb_dev_delta: which of its sub-blocks (bit s = sub-block s,
 * LSB first, as the pool's sub-block size divides the block) read
 * differently from the base, split by what the device reads there. */
typedef struct cb_delta {
    uint64_t block;           /* virtual block */
    uint64_t data;            /* sub-blocks that differ and read data (or the external origin) */
    uint64_t zero;            /* sub-blocks that differ and read as zeros; every
                               * sub-block of a block that reads as zeros as a whole */
} cb_delta;

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

/* ---- library ----------------------------------------------------------
 * None of these takes a lock; each costs O(1). */

/* "cowblock-core src <hash>": the hash of the sources the library was built
 * from, computed by the build (csrc/build_ffi.py, cowblock/_buildid.py), so
 * that a binding can refuse a library built from other sources.  Static
 * storage. */
const char *cb_build_id(void);
/* A description of any return code: cowblock's own, or -errno.  Static
 * storage, never NULL. */
const char *cb_strerror(int code);
/* After a call on this thread returned CB_ECHECKSUM: the byte offset, in
 * the device that call named, of the first sub-block whose data failed its
 * checksum.  Undefined after any other result. */
uint64_t cb_bad_offset(void);
/* After a call on this thread returned CB_ECORRUPT: what was found to be
 * wrong, as thin_check would say it, e.g.
 *   "metadata page 1234 (offset 0x4d2000, a mapping leaf): bad checksum
 *    (in the mapping tree of device 'base')"
 * or "data file '/p/data' is 1048576 bytes, shorter than ...".  Copies the
 * text into buf (truncated to len, NUL-terminated), sets *page (if page is
 * not NULL) to the damaged metadata page (0 when the damage is not one
 * page's), returns the text's length (0: no detail known) and forgets it,
 * so a later failure never shows a stale detail. */
size_t cb_corrupt_detail(char *buf, size_t len, uint64_t *page);
/* CRC-32C (Castagnoli) of buf, continued from crc (start with 0; the
 * result of one call may be fed to the next to checksum data in pieces).
 * The checksum the metadata and data checksums use; any thread, no lock. */
uint32_t cb_crc32c(uint32_t crc, const void *buf, size_t len);
/* The IO backends this build has, space-separated: "file", or "file rados"
 * when built with librados.  Static storage. */
const char *cb_backends(void);

/* ---- locations -------------------------------------------------------- */
/* Where a pool lives, the `path` of cb_pool_create and cb_pool_open: a
 * directory (the file backend: DIR/meta and DIR/data, flock'ed), or
 * "rados://POOL/NAME?conf=PATH" (the RADOS backend, when built: see
 * blockio_rados.h), where the writer's lock is a RADOS lock and a writer
 * whose lock was broken fails with CB_EFENCED instead of overwriting a
 * newer commit.  A read-only open of a RADOS pool takes no lock: it
 * registers in the pool's reader table as a reader of the newest commit,
 * under a lease renewed in the background, and reads that commit, whatever
 * the writer does meanwhile (the writer holds back the blocks a registered
 * reader's commit reaches, and copies up instead of writing a committed
 * block in place); cb_pool_refresh moves it to a newer commit.  Once its
 * lease may have lapsed (the process stalled or lost the cluster for a
 * whole lease), its reads fail with CB_ESTALE, never returning data of
 * another commit, until cb_pool_refresh succeeds.  A malformed URL, or one of a
 * backend this build lacks, gives CB_EINVAL (cb_corrupt_detail says why);
 * CB_EBUSY from an open names the lock's holder there too. */
/* Break the writer lock of the pool at location (a URL): its holder is
 * blocklisted first, so that it cannot write after a new writer starts,
 * then its lock is released.  holder (len bytes) names whom, "" if nobody
 * held it.  CB_EINVAL for a directory: its flock dies with its process. */
int cb_pool_unlock(const char *location, char *holder, size_t len);

/* ---- pool ---------------------------------------------------------------
 * Every call below but create, open, close, retain and release fails with
 * CB_ECLOSED once the pool is closed or being closed, with CB_EFAILED once
 * it is in the failed state, and, if it changes the pool, with CB_EROFS on
 * a pool opened CB_OPEN_READONLY; none of these is repeated in the lists of
 * errors.  "-errno" means an error of the operating system
 * (open, pread, pwrite, fdatasync, fallocate, ...); a full file system is
 * CB_ENOSPC.  "Lock: shared" calls run concurrently with each other;
 * "exclusive" ones wait for every other call on the pool and hold off new
 * ones.  Costs: B = the block size, N = the pool's data blocks, D = devices,
 * M = metadata pages in use, mapped = data blocks some device reads. */

/* Make a new pool in directory `path` (created if missing, must be empty of
 * pool files).  size: data capacity in bytes (rounded down to whole blocks,
 * at least one block).  block_size: a power of two in
 * [CB_MIN_BLOCK_SIZE, CB_MAX_BLOCK_SIZE].  flags: CB_OPEN_DIRECT or
 * CB_OPEN_MMAP, and CB_CREATE_CHECKSUMS.  On success *out is an open pool,
 * owned by the caller until cb_pool_close().  All or nothing: on an error,
 * the files it made are removed again, and the directory too if it made it
 * (nothing that was there before is touched).
 * Errors: CB_EINVAL (NULL or empty path, bad block size, size below one
 *   block or above 2^36 blocks, unknown flags, DIRECT with MMAP), CB_EEXIST
 *   (the pool files exist), CB_ENOSPC, CB_ENOMEM, -errno (mkdir, creating
 *   or sizing the files); -EFBIG: the data file (size bytes, plus the
 *   checksum table) is larger than the file system or RLIMIT_FSIZE allows
 *   one file to be.
 * Lock: none (nothing else can see the pool yet).
 * Cost: two metadata pages written and two fdatasyncs; memory one pointer
 *   per 2^14 blocks up front (the space map fills in by chunks as blocks are
 *   used; the checksum table, by pages as they are read). */
int cb_pool_create(const char *path, uint64_t size, uint32_t block_size,
                   unsigned flags, cb_pool **out);
/* Open an existing pool.  Validates every metadata page it reads and
 * recomputes reference counts from the mappings.  flags: CB_OPEN_READONLY
 * (a shared flock: any number of read-only openers, no writer),
 * CB_OPEN_DIRECT or CB_OPEN_MMAP.  A writable open takes an exclusive flock,
 * punches out the free blocks that still hold data after an unclean
 * shutdown, and commits once.  With CB_OPEN_READONLY both files are opened
 * O_RDONLY and nothing is written, punched or truncated, not even after an
 * unclean shutdown: free blocks that still hold data then stay as they are
 * (cb_pool_check counts them as leaked_blocks) until the next writable open
 * reclaims them.
 * Errors: CB_EINVAL (flags), CB_ENOENT (no pool at path), CB_EBUSY (another
 *   process holds it: a writer, or readers when opening to write),
 *   CB_ECORRUPT (no valid superblock, a page that fails verification, counts
 *   that overflow, a data file shorter than the geometry; cb_corrupt_detail
 *   says which), CB_EVERSION (an unknown format version or incompat
 *   feature), CB_ENOMEM, -errno.
 * Lock: none (nothing else can see the pool yet).
 * Cost: every metadata page read once (O(M)), memory O(M) for the trees;
 *   after an unclean shutdown, one SEEK_DATA walk of the data file. */
int cb_pool_open(const char *path, unsigned flags, cb_pool **out);
/* Shut the pool down (see "Lifetimes" at the top): refuse new calls with
 * CB_ECLOSED, wait for the calls inside to return, commit (unless
 * read-only or failed) with the pool marked clean, release files, lock and
 * memory, and give up the reference the open handed out.  Returns the
 * commit's result; the pool is closed either way.  NULL is a no-op.
 * Errors: those of cb_pool_flush (the pool is closed regardless);
 *   CB_ECLOSED when the pool is closed already (through a retained pointer).
 * Lock: exclusive, once the calls inside have left.
 * Cost: the wait, a commit, and punching any kept blocks. */
int cb_pool_close(cb_pool *pool);
/* Take / give up a reference that keeps the pool pointer valid (not the
 * pool open) until the matching cb_pool_release: for bindings whose threads
 * may still call through the pointer while another closes the pool.
 * cb_pool_retain needs a reference held already.  Release never closes:
 * the pool must still be closed by cb_pool_close.  NULL is a no-op.
 * Lock: none (an atomic count).  Cost: O(1); the last release frees the
 *   small handle. */
void cb_pool_retain(cb_pool *pool);
void cb_pool_release(cb_pool *pool);
/* Durability point: data, then metadata, then the superblock.  When it
 * returns 0 every write made before it survives a crash.  A failure puts
 * the pool in the failed state (nothing written since the last flush can be
 * trusted to be on disk).  0 at once on a read-only pool.
 * Errors: CB_ENOSPC, CB_ENOMEM, -errno (then the pool has failed).
 * Lock: exclusive.
 * Cost: the metadata changed since the last commit (each dirty node and
 *   record written once to a fresh page) and the blocks it freed, plus up
 *   to three fdatasyncs; nothing at all when nothing changed. */
int cb_pool_flush(cb_pool *pool);
/* Move a read-only opener of a RADOS pool to the writer's newest commit:
 * register as its reader, load it, and re-attach open device handles to
 * their devices in it (a handle whose device the writer deleted gets
 * CB_ENOENT from then on).  *generation (may be NULL) gets the generation
 * now read.  On a writer, or a reader of a pool in a directory (its flock
 * keeps every writer out), it changes nothing and gives the generation.
 * Errors: CB_ECORRUPT, CB_ENOMEM, -errno, CB_EBUSY (the writer committed
 * faster than the registration could settle); after such an error the
 * old commit is no longer safe to read: reads fail with CB_ESTALE until a
 * refresh succeeds.
 * Lock: exclusive.
 * Cost: what an open costs (every metadata page once), plus a few round
 *   trips to the cluster. */
int cb_pool_refresh(cb_pool *pool, uint64_t *generation);
/* Keep up to max_blocks freed data blocks allocated in the data file
 * instead of punching them out once the commit that freed them is durable,
 * and hand them out first to later writes, which then land in space the
 * file system has already allocated (like dm-thin without discard
 * passdown).  Default 0: every freed block is punched.  Kept blocks count
 * as free in every figure but the data file's size on disk; lowering the
 * bound punches the excess at once, and close punches them all, so a
 * closed pool holds none.  Not persistent: set it after each open.
 * Errors: none but CB_EROFS and CB_EFAILED (a punch that fails leaves the
 *   space allocated: check reports it, the next open reclaims it).
 * Lock: exclusive.  Cost: O(blocks punched). */
int cb_pool_set_keep(cb_pool *pool, uint64_t max_blocks);
/* Pool-wide figures (cb_stat).  Lock: shared.  Cost: O(1). */
int cb_pool_stat(cb_pool *pool, cb_stat *out);
/* The pool's identity: 16 random bytes chosen when it was created and kept
 * for its life (in every superblock).  Errors: CB_EINVAL (out is NULL).
 * Lock: shared.  Cost: O(1). */
int cb_pool_uuid(cb_pool *pool, uint8_t out[16]);

/* Device table.  Names are 1..CB_NAME_MAX bytes, no '/' and no NUL.
 * Changes to the table are durable at the next flush, like writes. */

/* A new device of `size` bytes (a multiple of 512, at most
 * CB_MAX_DEV_SIZE), reading as zeros; or, with external_path, reading as
 * that regular file or block device (its external origin, never written;
 * size 0 = the file's size rounded up to 512) where the device has no data
 * of its own.  A regular file's size, inode and mtime are recorded; an open
 * that finds it changed refuses reads that need it (CB_EEXTERNAL,
 * cb_corrupt_detail says what changed).
 * Errors: CB_EINVAL (name, size), CB_EEXIST (the name is taken),
 *   CB_ETOOMANY (CB_MAX_DEVICES devices, or CB_MAX_EXTERNALS origins),
 *   CB_EEXTERNAL (the origin is missing, or not a regular file or block
 *   device), CB_ENOMEM, -errno.
 * Lock: exclusive.  Cost: O(D) (the name is looked up). */
int cb_pool_create_device(cb_pool *pool, const char *name, uint64_t size,
                          const char *external_path);   /* may be NULL */
/* A new device `name` sharing everything `source` holds now (dev_flags:
 * CB_DEV_READONLY or 0).  Later writes through either copy up.
 * Errors: CB_EINVAL, CB_ENOENT (no source), CB_EEXIST, CB_ETOOMANY (devices,
 *   or the snapshot clock ran out), CB_ENOMEM.
 * Lock: exclusive.  Cost: O(D) for the lookups, O(1) whatever the data
 *   behind the source (one reference count goes up). */
int cb_pool_snapshot(cb_pool *pool, const char *source, const char *name,
                     unsigned dev_flags);
/* Remove a device; the blocks only it read are freed at the next commit.
 * Open handles of the device stay valid memory until cb_dev_close (or
 * cb_pool_close) and return CB_ENOENT from every call; a device created
 * later under the same name is a different device, which they never reach.
 * Errors: CB_EINVAL (NULL name), CB_ENOENT, CB_ECORRUPT (its reference
 *   counts disagreed with its tree: the device is gone and the pool has
 *   failed, so that nothing is written over counts that cannot be trusted).
 * Lock: exclusive.  Cost: O(D) + O(nodes only this device reaches); the
 *   data blocks are released by the commit. */
int cb_pool_delete(cb_pool *pool, const char *name);
/* Device count, then descriptions.  cb_pool_list fills at most n infos and
 * sets *count to the number of devices (call with n = 0 to size).
 * Lock: shared.  Cost: O(D). */
int cb_pool_list(cb_pool *pool, cb_devinfo *out, size_t n, size_t *count);
/* One device's description.  Errors: CB_EINVAL, CB_ENOENT.
 * Lock: shared.  Cost: O(D). */
int cb_pool_info(cb_pool *pool, const char *name, cb_devinfo *out);
/* Path of external origin `id` copied into buf (NUL-terminated).
 * Errors: CB_EINVAL (id out of range, NULL buf; or buf too short: then it
 *   holds the truncated path), CB_ENOENT (no such origin).
 * Lock: shared.  Cost: O(1). */
int cb_pool_external_path(cb_pool *pool, uint32_t id, char *buf, size_t len);
/* Per-device space, exact, in one walk of all metadata: fills at most n
 * entries (in device-table order) and sets *count to the number of devices.
 * Errors: CB_ENOMEM.
 * Lock: exclusive (the walk keeps scratch counts in the nodes), so IO waits
 *   for the whole walk.
 * Cost: every distinct tree node of the pool once, shared nodes once
 *   whatever the number of devices sharing them, plus one counter per data
 *   block in the 16384-block chunks that some device names; each device's
 *   changed_bytes adds a walk of the nodes it changed.  To report every
 *   device, call this once rather than cb_dev_usage per device: n snapshots
 *   of one tree cost that tree once here, n times there. */
int cb_pool_usage(cb_pool *pool, cb_usage *out, size_t n, size_t *count);
/* Walk and verify all metadata: both superblock slots, checksums,
 * structure, reference counts recomputed from the mappings, data blocks in
 * range, the data file's size, external origins against what was recorded
 * when they were attached, and the data file for free blocks still holding
 * data.  With repair (a writable pool), such blocks are punched out, leaked
 * metadata pages freed (only in a pool with no other error: corruption is
 * reported, never guessed at) and a damaged superblock slot rewritten by a
 * commit (which writes only the slot the pool does not stand on).  A
 * writable pool is committed first, so the check sees in the file what is
 * in memory.  Returns 0 whatever it found (out->errors, out->leaked_*);
 * messages (one per line) go to buf (truncated to len, NUL-terminated).
 * Errors: those of cb_pool_flush (the commits), CB_ENOMEM, -errno when a
 *   page cannot be read (the check cannot conclude).
 * Lock: exclusive.  Cost: every committed metadata page read (O(M)), the
 *   trees walked, one SEEK_DATA walk of the data file; memory as for
 *   cb_pool_usage. */
int cb_pool_check(cb_pool *pool, int repair, cb_check *out,
                  char *buf, size_t len);
/* The committed metadata (what the last commit made durable, read back from
 * the metadata file and verified) as JSON text, like thin_dump: superblock,
 * both slots, external origins, devices with their mappings as runs, free
 * log.  On success *json is NUL-terminated, malloc'd, owned by the caller
 * and released with cb_free(); *len (if len is not NULL) gets its length.
 * Errors: CB_EINVAL (NULL pool or json), CB_ECORRUPT (a page fails
 *   verification), CB_ENOMEM, -errno.
 * Lock: shared.  Cost: every committed metadata page read once per device
 *   that reaches it (O(M) without sharing); output O(mapping runs). */
int cb_pool_dump(cb_pool *pool, char **json, size_t *len);
/* Read every data block some device reads, once, in data-file order, and
 * verify it against its checksums (pools made without checksums are only
 * read, which finds IO errors).  Online: it holds the pool lock shared for
 * a 4 MiB slice of blocks at a time, so writes wait for one slice at most;
 * what changes meanwhile is handled (blocks freed are skipped, blocks
 * written after the scrub began are not read).  Damaged sub-blocks are
 * reported in bad (at most n; *count gets how many were found, as does
 * progress->bad).  Returns 0 when the scrub ran to the end, whatever it
 * found; -ECANCELED if progress->cancel was set; CB_ECLOSED if the pool
 * was closed meanwhile (the close waits for the slice being read).
 * Errors: CB_EINVAL (NULL progress or count, NULL bad with n > 0),
 *   -ECANCELED, CB_ECLOSED, CB_ENOMEM.
 * Lock: shared, per step (the walk, then each slice).
 * Cost: every mapped sub-block read once (O(mapped * B)), the trees walked
 *   once; memory as for cb_pool_usage. */
int cb_pool_scrub(cb_pool *pool, cb_scrub *progress, cb_scrub_bad *bad,
                  size_t n, size_t *count);
/* Release memory the library handed out (cb_pool_dump).  NULL is a no-op. */
void cb_free(void *ptr);

/* ---- documents ------------------------------------------------------------
 * Small named documents a binding keeps with the pool: the snapshotter's and
 * the Docker model's JSON.  A pool in a directory has none here (its binding
 * keeps them as files beside the pool's: CB_EINVAL, cb_corrupt_detail says
 * so); a pool in RADOS keeps each in the omap of its metadata head object
 * (blockio_rados.h), so that every host that opens the pool sees them.
 * Names: 1..CB_DOC_NAME_MAX of [A-Za-z0-9._-].  A document is at most
 * CB_DOC_MAX bytes: the whole of it goes in one RADOS op. */
#define CB_DOC_NAME_MAX 64
#define CB_DOC_MAX (8u << 20)
/* Document `name` as the store has it now (not as of the pool's open: a
 * read-only opener sees another host's later puts).  *gen gets its
 * generation, 0 if there is no such document; when that differs from
 * known_gen, *data (malloc'd, released with cb_free) and *len get its
 * bytes, read together with the generation in one atomic read; otherwise
 * *data is NULL (the caller's copy of generation known_gen is current).
 * Errors: CB_EINVAL (NULL argument, bad name, a pool in a directory),
 *   CB_ECORRUPT (the generation is malformed, or names no document),
 *   CB_ENOMEM, -errno (e.g. -ETIMEDOUT from the cluster).
 * Lock: shared.  Cost: one round trip to the store; two when it changed. */
int cb_pool_doc_get(cb_pool *pool, const char *name, uint64_t known_gen, char **data,
                    size_t *len, uint64_t *gen);
/* Replace document `name` with len bytes of data, atomically: a reader
 * gets the whole old or the whole new document, never a mix, whatever
 * happens to this process meanwhile.  Ordered after every write made
 * before it (flush first to make the devices it names durable: the put
 * does not commit).  Fenced like a commit: a writer whose lock was broken
 * and whose pool another writer has written since gets CB_EFENCED and the
 * document is unchanged.  Any failure but CB_EINVAL fails the pool, as a
 * failed commit does (the store's state is not known).  *gen (if not NULL)
 * gets the new generation: the pool's fence sequence, which every put and
 * every commit increases, so two versions of a document never share one.
 * Errors: CB_EINVAL (NULL argument, bad name, len > CB_DOC_MAX: the detail
 *   names the limit; a pool in a directory), CB_EFENCED, CB_ENOMEM, -errno.
 * Lock: exclusive.  Cost: one synchronous round trip, after the writes in
 *   flight have completed. */
int cb_pool_doc_put(cb_pool *pool, const char *name, const void *data, size_t len,
                    uint64_t *gen);
/* The names of every document, each NUL-terminated, back to back in *names
 * (malloc'd, released with cb_free; NULL when there are none), *len bytes
 * in all.
 * Errors: CB_EINVAL (NULL argument, a pool in a directory), CB_ENOMEM,
 *   -errno.
 * Lock: shared.  Cost: one round trip per 1000 documents. */
int cb_pool_doc_list(cb_pool *pool, char **names, size_t *len);

/* ---- devices --------------------------------------------------------------
 * A cb_dev is a handle on one device.  A handle stays valid until
 * cb_dev_close, whatever happens to its device or its pool meanwhile; it
 * holds a reference on the pool (see "Lifetimes").  After the device is
 * deleted (cb_pool_delete), every call on its handles returns CB_ENOENT,
 * whatever is created later under its name; once the pool is closed (or
 * being closed), every call returns CB_ECLOSED.  cb_dev_close may be called
 * before or after cb_pool_close, from any thread, but not while another
 * call on the same handle runs.  Every call below also returns CB_EFAILED
 * on a failed pool, and the calls that write CB_EROFS on a read-only pool
 * or device. */

/* A handle on device `name`.  Errors: CB_EINVAL, CB_ENOENT, CB_ENOMEM.
 * Lock: exclusive (the pool's list of handles).  Cost: O(D). */
int cb_dev_open(cb_pool *pool, const char *name, cb_dev **out);
/* Free a handle (NULL is a no-op).  Must not race with other calls on the
 * same handle.  Lock: exclusive.  Cost: O(1). */
void cb_dev_close(cb_dev *dev);
/* The device's description.  Errors: CB_ENOENT (deleted).
 * Lock: shared.  Cost: O(1). */
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
 * shared.
 *
 * Errors of all four: CB_EINVAL (range, NULL buffer), CB_ENOENT (deleted),
 *   CB_ECHECKSUM, CB_EEXTERNAL (the external origin cannot be read), -errno.
 * Writes and discards also: CB_ENOSPC -- the pool cannot hold the write
 *   (refused before anything is changed, once a commit has given back what
 *   the open transaction freed), or the file system is full (the blocks
 *   before the one that failed are written); CB_ENOMEM; and those of
 *   cb_pool_flush, since they commit when the open transaction grows past
 *   its bound or when only a commit can free space.
 * Lock: shared for cb_dev_read, exclusive for the others (a write's data IO
 *   is done under it, so a reader never sees a block half copied up).
 * Cost: O(len / B) entry lookups of O(tree depth) each, whatever the length
 *   of the snapshot chain, and one pread or pwrite per run of blocks that are
 *   contiguous in the data file; a write into a shared block copies only the
 *   partly covered sub-blocks at its edges.  cb_dev_flush is cb_pool_flush. */
int cb_dev_read(cb_dev *dev, void *buf, uint64_t len, uint64_t off);
int cb_dev_write(cb_dev *dev, const void *buf, uint64_t len, uint64_t off);
int cb_dev_discard(cb_dev *dev, uint64_t len, uint64_t off);
int cb_dev_flush(cb_dev *dev);

/* Batch IO: n whole blocks, block idx[i] <-> buf + i * block_size.  Errors,
 * lock and cost as for cb_dev_read / cb_dev_write (CB_EINVAL when an index
 * is not a whole block inside the device), one lock hold for all n. */
int cb_dev_read_blocks(cb_dev *dev, const uint64_t *idx, size_t n, void *buf);
int cb_dev_write_blocks(cb_dev *dev, const uint64_t *idx, size_t n,
                        const void *buf);

/* Bitmap (LSB first) of the virtual blocks this device changed since it was
 * created, written or discarded through it; bits must hold
 * ceil(size / block_size) bits.
 * Errors: CB_EINVAL (bits too short), CB_ENOENT.
 * Lock: shared.  Cost: O(nodes changed since the device was created), not
 *   the device size. */
int cb_dev_changed(cb_dev *dev, uint8_t *bits, size_t nbytes);
/* Runs of virtual blocks that may hold data (mapped, or read from the
 * external origin): fills at most n (start, count) pairs and sets *count to
 * the total number of runs.
 * Errors: CB_EINVAL, CB_ENOENT.
 * Lock: shared.  Cost: O(mapped blocks of the device), holes skipped a node
 *   at a time; with an external origin, O(blocks the origin covers). */
int cb_dev_extents(cb_dev *dev, uint64_t *pairs, size_t n, size_t *count);
/* The same for the blocks [first, first + nblocks) only, for callers that
 * ask about a part of a device at a time (an NBD block status request):
 * fills at most n runs, clipped to the range, in order, and sets *count to
 * the number filled.  The walk stops where run n + 1 would start and sets
 * *next to that block (first + nblocks when the range is done): every
 * block of [first, *next) outside the runs reads as zeros.  n = 0 finds the
 * next run's start.  CB_EINVAL if the range is not within the device.
 * Shared lock; cost grows with the mapped entries in [first, *next), not
 * with the device size. */
int cb_dev_extents_range(cb_dev *dev, uint64_t first, uint64_t nblocks, uint64_t *pairs,
                         size_t n, size_t *count, uint64_t *next);
/* Where dev reads differently from base: the blocks with a sub-block
 * that reads otherwise in dev than in base (base NULL: a device that reads
 * as zeros everywhere, so every sub-block that may hold data), in block
 * order from block `start` on, with the sub-blocks that differ (cb_delta).
 * Found from the mappings alone, nothing is read from the data file: a
 * sub-block read from the same data block in both is the same, anything
 * else (another block, zeros, the external origin) is reported, so a
 * block written with the bytes it had is reported too.  Sub-blocks past
 * the device's end are never reported.  Cost: the tree
 * nodes where the two devices' trees differ -- a subtree both reach
 * through the same node is skipped unread -- so for a device and a
 * snapshot of it, or one of its ancestors, it grows with what changed
 * between them, not with the device size; for devices that share no
 * nodes, with both trees.  Fills at most n (n >= 1) entries, sets *count
 * to how many, and *next to the block to pass as start to continue (the
 * device's block count once there is no more).  Both handles must be of
 * the same pool and base of the same size and external origin as dev
 * (CB_EINVAL).  Lock: shared, for this call only: for a consistent result
 * across calls, neither device may change meanwhile (read-only devices or
 * snapshots).  CB_ENOENT if either device was deleted. */
int cb_dev_delta(cb_dev *dev, cb_dev *base, uint64_t start, cb_delta *out, size_t n,
                 size_t *count, uint64_t *next);
/* One device's entry of cb_pool_usage, the same figures, found from its own
 * tree alone: a block is exclusive when its reference count is 1 and every
 * node on the path to it has one reference.
 * Errors: CB_EINVAL (out is NULL), CB_ENOENT (deleted).
 * Lock: shared, so it runs beside reads.
 * Cost: the nodes this device reaches (shared ones included), whatever the
 *   number of other devices; no allocation. */
int cb_dev_usage(cb_dev *dev, cb_usage *out);

#ifdef __cplusplus
}
#endif
#endif /* COWBLOCK_H */
