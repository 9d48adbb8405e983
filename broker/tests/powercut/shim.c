/*
 * A power cut for one process, as an LD_PRELOAD shim (broker/tests/power_loss.rs).
 *
 * It remembers what the process made durable under a data directory, in a
 * shadow directory beside it; after the process is killed, the test
 * (powercut/mod.rs) rebuilds the data directory from the shadow alone:
 * what was not fsynced is gone, as after a power cut.
 *
 * The model (strict POSIX, stricter than ext4's data=ordered):
 *   - a regular file's contents are durable as of its last fsync or
 *     fdatasync (of any of its descriptors); writes, truncations and
 *     sync_file_range() since then are lost;
 *   - a directory's entries (creations, renames, unlinks of regular files)
 *     are durable as of its last fsync: after a cut every name it listed
 *     then is back, with the durable contents of the file it named then;
 *   - directories themselves are never lost (RocksDB does not sync the
 *     parent of its own directory; the test creates the data directory).
 *
 * Shadow layout: <shadow>/files/<name> is the durable contents of one file
 * (by identity: "b<inode>" for a file that existed when the test took its
 * baseline, "n<pid>_<counter>" for one this process created, so that a
 * reused inode number never mixes two files), <shadow>/dirs/<key> the
 * durable listing of one directory ("<entry>\t<file name>" lines; <key>
 * is the directory's path under the data root with '/' as '%', "@root" for
 * the root).
 *
 * Environment: POWERCUT_DATA (absolute, canonical path of the data
 * directory), POWERCUT_SHADOW (absolute path of the shadow directory).
 * Without them the shim does nothing.
 *
 * Limits: writes through mmap, and files opened through glibc-internal
 * opens (fopen) before their first fsync, are seen only at fsync (their
 * whole contents are copied then); hard links are not modelled. RocksDB in
 * its default configuration uses neither for its data.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 65536
#define MAX_INODES 16384
#define CLEAN INT64_MAX

static char root[PATH_MAX];
static size_t root_len;
static char shadow[PATH_MAX];
static int enabled;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_truncate)(const char *, off_t);
static int (*real_truncate64)(const char *, off_t);
static int (*real_fallocate)(int, int, off_t, off_t);
static int (*real_fallocate64)(int, int, off_t, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

/* Per descriptor: 1 a regular file under the root, 0 anything else. */
static unsigned char tracked[MAX_FDS];

/* Per inode: the lowest offset written since its last sync, and its
 * shadow name if this process created it. */
struct inode {
    ino_t ino;
    int used;
    int64_t low;
    char name[48];
};
static struct inode inodes[MAX_INODES];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long counter;

static void *sym(const char *name) { return dlsym(RTLD_NEXT, name); }

__attribute__((constructor)) static void init(void) {
    real_open = sym("open");
    real_open64 = sym("open64");
    real_openat = sym("openat");
    real_openat64 = sym("openat64");
    real_creat = sym("creat");
    real_creat64 = sym("creat64");
    real_close = sym("close");
    real_write = sym("write");
    real_pwrite = sym("pwrite");
    real_pwrite64 = sym("pwrite64");
    real_writev = sym("writev");
    real_pwritev = sym("pwritev");
    real_pwritev64 = sym("pwritev64");
    real_ftruncate = sym("ftruncate");
    real_ftruncate64 = sym("ftruncate64");
    real_truncate = sym("truncate");
    real_truncate64 = sym("truncate64");
    real_fallocate = sym("fallocate");
    real_fallocate64 = sym("fallocate64");
    real_fsync = sym("fsync");
    real_fdatasync = sym("fdatasync");
    const char *d = getenv("POWERCUT_DATA");
    const char *s = getenv("POWERCUT_SHADOW");
    if (d && s && strlen(d) < sizeof root && strlen(s) < sizeof shadow) {
        strcpy(root, d);
        root_len = strlen(root);
        strcpy(shadow, s);
        enabled = 1;
    }
}

static void die(const char *what) {
    /* The model cannot be kept: stop the process rather than let a test
     * pass on a shadow that lies. */
    fprintf(stderr, "powercut shim: %s: %s\n", what, strerror(errno));
    abort();
}

/* Whether `path` (absolute) is the root or under it. */
static int under_root(const char *path) {
    return strncmp(path, root, root_len) == 0 && (path[root_len] == '/' || path[root_len] == 0);
}

/* The absolute path of what `fd` is open on. */
static int fd_path(int fd, char *out, size_t len) {
    char proc[64];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, out, len - 1);
    if (n < 0) return -1;
    out[n] = 0;
    return 0;
}

/* The inode's entry (created if `create`), under `lock`. */
static struct inode *inode_get(ino_t ino, int create) {
    size_t h = (size_t)ino % MAX_INODES;
    for (size_t i = 0; i < MAX_INODES; i++) {
        struct inode *e = &inodes[(h + i) % MAX_INODES];
        if (e->used && e->ino == ino) return e;
        if (!e->used) {
            if (!create) return NULL;
            e->used = 1;
            e->ino = ino;
            e->low = CLEAN;
            e->name[0] = 0;
            return e;
        }
    }
    errno = ENOSPC;
    die("too many files");
    return NULL;
}

static void shadow_name(ino_t ino, char *out, size_t len) {
    pthread_mutex_lock(&lock);
    struct inode *e = inode_get(ino, 0);
    if (e && e->name[0])
        snprintf(out, len, "%s", e->name);
    else
        snprintf(out, len, "b%lu", (unsigned long)ino);
    pthread_mutex_unlock(&lock);
}

static void mark(int fd, int64_t off) {
    if (!enabled || fd < 0 || fd >= MAX_FDS || !tracked[fd]) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    pthread_mutex_lock(&lock);
    struct inode *e = inode_get(st.st_ino, 1);
    if (off < e->low) e->low = off < 0 ? 0 : off;
    pthread_mutex_unlock(&lock);
}

/* After an open: track regular files under the root; a file this open
 * created gets a fresh shadow name. */
static int opened(int fd, int flags, int existed) {
    if (!enabled || fd < 0 || fd >= MAX_FDS) return fd;
    tracked[fd] = 0;
    char path[PATH_MAX];
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || fd_path(fd, path, sizeof path) != 0 ||
        !under_root(path))
        return fd;
    tracked[fd] = 1;
    pthread_mutex_lock(&lock);
    struct inode *e = inode_get(st.st_ino, 1);
    if (!existed) {
        snprintf(e->name, sizeof e->name, "n%d_%lu", (int)getpid(), ++counter);
        e->low = 0;
    }
    if (flags & O_TRUNC) e->low = 0;
    pthread_mutex_unlock(&lock);
    return fd;
}

static int exists_at(int dirfd, const char *path) {
    struct stat st;
    return fstatat(dirfd, path, &st, 0) == 0;
}

#define OPEN_BODY(call, dirfd)                                   \
    mode_t mode = 0;                                             \
    if (flags & (O_CREAT | O_TMPFILE)) {                         \
        va_list ap;                                              \
        va_start(ap, flags);                                     \
        mode = va_arg(ap, mode_t);                               \
        va_end(ap);                                              \
    }                                                            \
    int existed = enabled && (flags & O_CREAT) ? exists_at(dirfd, path) : 1; \
    int fd = call;                                               \
    return opened(fd, flags, existed);

int open(const char *path, int flags, ...) { OPEN_BODY(real_open(path, flags, mode), AT_FDCWD) }
int open64(const char *path, int flags, ...) { OPEN_BODY(real_open64(path, flags, mode), AT_FDCWD) }
int openat(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat(dirfd, path, flags, mode), dirfd)
}
int openat64(int dirfd, const char *path, int flags, ...) {
    OPEN_BODY(real_openat64(dirfd, path, flags, mode), dirfd)
}
int creat(const char *path, mode_t mode) {
    int existed = enabled ? exists_at(AT_FDCWD, path) : 1;
    return opened(real_creat(path, mode), O_CREAT | O_TRUNC, existed);
}
int creat64(const char *path, mode_t mode) {
    int existed = enabled ? exists_at(AT_FDCWD, path) : 1;
    return opened(real_creat64(path, mode), O_CREAT | O_TRUNC, existed);
}

int close(int fd) {
    if (fd >= 0 && fd < MAX_FDS) tracked[fd] = 0;
    return real_close(fd);
}

static int64_t position(int fd) {
    if (!enabled || fd < 0 || fd >= MAX_FDS || !tracked[fd]) return 0;
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? st.st_size : 0;
    }
    off_t pos = lseek(fd, 0, SEEK_CUR);
    return pos < 0 ? 0 : pos;
}

ssize_t write(int fd, const void *buf, size_t n) {
    mark(fd, position(fd));
    return real_write(fd, buf, n);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    mark(fd, off);
    return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    mark(fd, off);
    return real_pwrite64(fd, buf, n, off);
}
ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    mark(fd, position(fd));
    return real_writev(fd, iov, cnt);
}
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    mark(fd, off);
    return real_pwritev(fd, iov, cnt, off);
}
ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t off) {
    mark(fd, off);
    return real_pwritev64(fd, iov, cnt, off);
}
int ftruncate(int fd, off_t len) {
    mark(fd, len);
    return real_ftruncate(fd, len);
}
int ftruncate64(int fd, off_t len) {
    mark(fd, len);
    return real_ftruncate64(fd, len);
}
static void mark_path(const char *path, off_t len) {
    if (!enabled) return;
    int fd = real_open(path, O_RDONLY);
    if (fd < 0) return;
    opened(fd, 0, 1);
    mark(fd, len);
    close(fd);
}
int truncate(const char *path, off_t len) {
    mark_path(path, len);
    return real_truncate(path, len);
}
int truncate64(const char *path, off_t len) {
    mark_path(path, len);
    return real_truncate64(path, len);
}
int fallocate(int fd, int mode, off_t off, off_t len) {
    mark(fd, off);
    return real_fallocate(fd, mode, off, len);
}
int fallocate64(int fd, int mode, off_t off, off_t len) {
    mark(fd, off);
    return real_fallocate64(fd, mode, off, len);
}

/* Copies the file's contents that changed since its last sync (from the
 * lowest offset written, or from where its shadow ends) to its shadow. */
static void sync_file(int fd, const struct stat *st) {
    char name[64], spath[PATH_MAX + 80], proc[64];
    shadow_name(st->st_ino, name, sizeof name);
    snprintf(spath, sizeof spath, "%s/files/%s", shadow, name);
    int64_t low;
    pthread_mutex_lock(&lock);
    struct inode *e = inode_get(st->st_ino, 1);
    low = e->low;
    /* Writes from here on are the next sync's. */
    e->low = CLEAN;
    pthread_mutex_unlock(&lock);
    int sfd = real_open(spath, O_RDWR | O_CREAT, 0644);
    if (sfd < 0) die("open shadow file");
    struct stat sst;
    if (fstat(sfd, &sst) != 0) die("stat shadow file");
    if (sst.st_size < low) low = sst.st_size;
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    int rfd = real_open(proc, O_RDONLY);
    if (rfd < 0) die("reopen file to sync");
    struct stat now;
    if (fstat(rfd, &now) != 0) die("stat file to sync");
    static __thread char buf[1 << 16];
    for (int64_t off = low; off < now.st_size;) {
        ssize_t n = pread(rfd, buf, sizeof buf, off);
        if (n < 0) die("read file to sync");
        if (n == 0) break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = real_pwrite(sfd, buf + done, (size_t)(n - done), off + done);
            if (w <= 0) die("write shadow file");
            done += w;
        }
        off += n;
    }
    if (real_ftruncate(sfd, now.st_size) != 0) die("truncate shadow file");
    real_close(rfd);
    real_close(sfd);
}

/* Writes the directory's listing: its regular files and their shadow
 * names, as of now. */
static void sync_dir(int fd, const char *path) {
    char key[PATH_MAX], lpath[PATH_MAX + 80], tmp[PATH_MAX + 96];
    const char *rel = path + root_len;
    if (*rel == '/') rel++;
    if (!*rel) {
        strcpy(key, "@root");
    } else {
        snprintf(key, sizeof key, "%s", rel);
        for (char *c = key; *c; c++)
            if (*c == '/') *c = '%';
    }
    snprintf(lpath, sizeof lpath, "%s/dirs/%s", shadow, key);
    snprintf(tmp, sizeof tmp, "%s.tmp%d", lpath, (int)gettid());
    int dfd = real_openat(fd, ".", O_RDONLY | O_DIRECTORY);
    if (dfd < 0) die("reopen directory to sync");
    DIR *dir = fdopendir(dfd);
    if (!dir) die("fdopendir");
    int out = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (out < 0) die("open listing");
    struct dirent *de;
    while ((de = readdir(dir))) {
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        char name[64], line[NAME_MAX + 80];
        shadow_name(st.st_ino, name, sizeof name);
        int len = snprintf(line, sizeof line, "%s\t%s\n", de->d_name, name);
        if (real_write(out, line, (size_t)len) != len) die("write listing");
    }
    closedir(dir);
    real_close(out);
    if (rename(tmp, lpath) != 0) die("rename listing");
}

static void synced(int fd) {
    if (!enabled || fd < 0) return;
    char path[PATH_MAX];
    struct stat st;
    if (fstat(fd, &st) != 0 || fd_path(fd, path, sizeof path) != 0 || !under_root(path)) return;
    if (S_ISREG(st.st_mode))
        sync_file(fd, &st);
    else if (S_ISDIR(st.st_mode))
        sync_dir(fd, path);
}

/* The shadow is updated before the real call returns, so anything the
 * caller acknowledges after its fsync is in it. */
int fsync(int fd) {
    synced(fd);
    return real_fsync(fd);
}
int fdatasync(int fd) {
    synced(fd);
    return real_fdatasync(fd);
}
