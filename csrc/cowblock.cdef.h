/* The declarations cffi sees: a copy of cowblock.h's API with constants
 * left as "..." so their values come from the real header at build time. */
#define CB_EINVAL ...
#define CB_ENOENT ...
#define CB_EEXIST ...
#define CB_EROFS ...
#define CB_ENOSPC ...
#define CB_ECORRUPT ...
#define CB_EFAILED ...
#define CB_EBUSY ...
#define CB_ETOOMANY ...
#define CB_EVERSION ...
#define CB_ENOMEM ...
#define CB_EEXTERNAL ...
#define CB_ECHECKSUM ...
#define CB_ECLOSED ...
#define CB_EFENCED ...
#define CB_ESTALE ...
#define CB_NAME_MAX ...
#define CB_PATH_MAX ...
#define CB_MIN_BLOCK_SIZE ...
#define CB_MAX_BLOCK_SIZE ...
#define CB_MAX_DEV_SIZE ...
#define CB_MAX_DEVICES ...
#define CB_MAX_EXTERNALS ...
#define CB_OPEN_READONLY ...
#define CB_OPEN_DIRECT ...
#define CB_OPEN_MMAP ...
#define CB_DEV_READONLY ...
#define CB_CREATE_CHECKSUMS ...

typedef struct cb_pool cb_pool;
typedef struct cb_dev cb_dev;

typedef struct cb_stat {
    uint64_t block_size, nblocks, used_blocks, ndevices, generation, time;
    uint64_t meta_pages, meta_file_pages;
    uint64_t reads, bytes_read, writes, bytes_written, data_bytes_written;
    uint64_t copyups, copyup_bytes, commits, punched_blocks;
    uint64_t checksums, checksum_failures, kept_blocks, held_blocks;
} cb_stat;

typedef struct cb_devinfo {
    char name[...];
    uint32_t id, origin_id;
    uint64_t size;
    uint32_t flags, external_id;
    uint64_t created_ns;
    uint32_t birth_time, snap_time;
} cb_devinfo;

typedef struct cb_usage {
    char name[...];
    uint32_t id;
    uint64_t mapped, exclusive, shared;
    uint64_t changed_bytes;
} cb_usage;

typedef struct cb_delta {
    uint64_t block, data, zero;
} cb_delta;

typedef struct cb_check {
    uint64_t errors, leaked_blocks, leaked_pages, nodes, mapped_entries, repaired;
} cb_check;

typedef struct cb_scrub {
    uint64_t total_bytes, done_bytes, blocks, bad;
    int checksums, cancel;
    uint64_t rate_limit;
} cb_scrub;

typedef struct cb_scrub_bad {
    char name[...];
    uint64_t offset, length, block;
    uint32_t ndevices;
    int error;
} cb_scrub_bad;

const char *cb_build_id(void);
const char *cb_strerror(int code);
uint64_t cb_bad_offset(void);
size_t cb_corrupt_detail(char *buf, size_t len, uint64_t *page);
uint32_t cb_crc32c(uint32_t crc, const void *buf, size_t len);
const char *cb_backends(void);
int cb_pool_unlock(const char *location, char *holder, size_t len);

int cb_pool_create(const char *path, uint64_t size, uint32_t block_size,
                   unsigned flags, cb_pool **out);
int cb_pool_open(const char *path, unsigned flags, cb_pool **out);
int cb_pool_close(cb_pool *pool);
void cb_pool_retain(cb_pool *pool);
void cb_pool_release(cb_pool *pool);
int cb_pool_flush(cb_pool *pool);
int cb_pool_refresh(cb_pool *pool, uint64_t *generation);
int cb_pool_set_keep(cb_pool *pool, uint64_t max_blocks);
int cb_pool_stat(cb_pool *pool, cb_stat *out);
int cb_pool_uuid(cb_pool *pool, uint8_t out[16]);
int cb_pool_create_device(cb_pool *pool, const char *name, uint64_t size,
                          const char *external_path);
int cb_pool_snapshot(cb_pool *pool, const char *source, const char *name,
                     unsigned dev_flags);
int cb_pool_delete(cb_pool *pool, const char *name);
int cb_pool_list(cb_pool *pool, cb_devinfo *out, size_t n, size_t *count);
int cb_pool_info(cb_pool *pool, const char *name, cb_devinfo *out);
int cb_pool_external_path(cb_pool *pool, uint32_t id, char *buf, size_t len);
int cb_pool_usage(cb_pool *pool, cb_usage *out, size_t n, size_t *count);
int cb_pool_check(cb_pool *pool, int repair, cb_check *out, char *buf, size_t len);
int cb_pool_dump(cb_pool *pool, char **json, size_t *len);
int cb_pool_scrub(cb_pool *pool, cb_scrub *progress, cb_scrub_bad *bad,
                  size_t n, size_t *count);
void cb_free(void *ptr);

#define CB_DOC_NAME_MAX ...
#define CB_DOC_MAX ...
int cb_pool_doc_get(cb_pool *pool, const char *name, uint64_t known_gen, char **data,
                    size_t *len, uint64_t *gen);
int cb_pool_doc_put(cb_pool *pool, const char *name, const void *data, size_t len,
                    uint64_t *gen);
int cb_pool_doc_list(cb_pool *pool, char **names, size_t *len);

int cb_dev_open(cb_pool *pool, const char *name, cb_dev **out);
void cb_dev_close(cb_dev *dev);
int cb_dev_info(cb_dev *dev, cb_devinfo *out);
int cb_dev_read(cb_dev *dev, void *buf, uint64_t len, uint64_t off);
int cb_dev_write(cb_dev *dev, const void *buf, uint64_t len, uint64_t off);
int cb_dev_discard(cb_dev *dev, uint64_t len, uint64_t off);
int cb_dev_flush(cb_dev *dev);
int cb_dev_read_blocks(cb_dev *dev, const uint64_t *idx, size_t n, void *buf);
int cb_dev_write_blocks(cb_dev *dev, const uint64_t *idx, size_t n, const void *buf);
int cb_dev_changed(cb_dev *dev, uint8_t *bits, size_t nbytes);
int cb_dev_extents(cb_dev *dev, uint64_t *pairs, size_t n, size_t *count);
int cb_dev_extents_range(cb_dev *dev, uint64_t first, uint64_t nblocks, uint64_t *pairs,
                         size_t n, size_t *count, uint64_t *next);
int cb_dev_usage(cb_dev *dev, cb_usage *out);
int cb_dev_delta(cb_dev *dev, cb_dev *base, uint64_t start, cb_delta *out, size_t n,
                 size_t *count, uint64_t *next);
