/* Declarations cffi sees for cowblock._fusefile (see fusefile.c). */

typedef struct cbf_fs cbf_fs;

/* The core's byte IO calls, handed in by the Python side (function
 * pointers of cowblock._cowblock), so this module needs no copy of the core. */
typedef struct cbf_core {
    int (*read)(void *dev, void *buf, uint64_t len, uint64_t off);
    int (*write)(void *dev, const void *buf, uint64_t len, uint64_t off);
    int (*discard)(void *dev, uint64_t len, uint64_t off);
    int (*flush)(void *dev);
} cbf_core;

typedef struct cbf_counters {
    uint64_t reads, writes, bytes_read, bytes_written, discards, flushes, errors;
} cbf_counters;

#define CBF_NAME_MAX ...
#define CBF_MAX_FILES ...
#define CBF_MAX_IO ...

int cbf_available(void);
int cbf_create(const char *mountpoint, const cbf_core *core, unsigned max_threads,
               cbf_fs **out);
int cbf_run(cbf_fs *fs);
void cbf_stop(cbf_fs *fs);
void cbf_destroy(cbf_fs *fs);
int cbf_add(cbf_fs *fs, const char *name, void *dev, uint64_t size, int readonly);
int cbf_remove(cbf_fs *fs, const char *name);
int cbf_open_count(cbf_fs *fs, const char *name);
void cbf_counters_get(cbf_fs *fs, cbf_counters *out);
