/*
 * LD_PRELOAD shim for the fault suite (tests/tests/faults.rs): a disk that fills up and
 * frees again, and a disk whose fsync is slow, under the real bridge binary.
 *
 * Env:
 *   FSB_SHIM_DIR            only files whose path starts with this directory are affected
 *   FSB_SHIM_ENOSPC_FLAG    while this file exists, writes (and growing the file) fail ENOSPC
 *   FSB_SHIM_FSYNC_DELAY_MS added before every fsync/fdatasync of an affected file
 *
 * Interposed: the libc entry points Rust std and redb use (see `nm -D` of the binary):
 * write, pwrite, pwrite64, writev, pwritev, pwritev2, fsync, fdatasync, ftruncate(64),
 * fallocate(64), posix_fallocate(64). Errors are only injected, never invented on
 * descriptors outside FSB_SHIM_DIR (the bridge's log and sockets stay untouched).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int under_dir(int fd) {
    const char *dir = getenv("FSB_SHIM_DIR");
    if (dir == NULL || dir[0] == '\0' || fd < 0) {
        return 0;
    }
    char link[64];
    char path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) {
        return 0;
    }
    path[n] = '\0';
    size_t len = strlen(dir);
    return strncmp(path, dir, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

static int disk_full(int fd) {
    const char *flag = getenv("FSB_SHIM_ENOSPC_FLAG");
    if (flag == NULL || flag[0] == '\0') {
        return 0;
    }
    struct stat st;
    if (stat(flag, &st) != 0) {
        return 0;
    }
    return under_dir(fd);
}

static void slow_sync(int fd) {
    const char *ms = getenv("FSB_SHIM_FSYNC_DELAY_MS");
    if (ms == NULL) {
        return;
    }
    long delay = strtol(ms, NULL, 10);
    if (delay <= 0 || !under_dir(fd)) {
        return;
    }
    struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#define REAL(name, ret, ...)                                                    \
    static ret (*real_##name)(__VA_ARGS__);                                     \
    if (real_##name == NULL) {                                                  \
        real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name);             \
    }

#define FULL_OR(fd)                                                             \
    if (disk_full(fd)) {                                                        \
        errno = ENOSPC;                                                         \
        return -1;                                                              \
    }

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write, ssize_t, int, const void *, size_t);
    FULL_OR(fd);
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite, ssize_t, int, const void *, size_t, off_t);
    FULL_OR(fd);
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    FULL_OR(fd);
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev, ssize_t, int, const struct iovec *, int);
    FULL_OR(fd);
    return real_writev(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    REAL(pwritev, ssize_t, int, const struct iovec *, int, off_t);
    FULL_OR(fd);
    return real_pwritev(fd, iov, iovcnt, offset);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    REAL(pwritev2, ssize_t, int, const struct iovec *, int, off_t, int);
    FULL_OR(fd);
    return real_pwritev2(fd, iov, iovcnt, offset, flags);
}

/* Growing a file needs space; shrinking it does not. */
static int grows(int fd, off_t length) {
    struct stat st;
    return fstat(fd, &st) == 0 && length > st.st_size;
}

int ftruncate(int fd, off_t length) {
    REAL(ftruncate, int, int, off_t);
    if (grows(fd, length)) {
        FULL_OR(fd);
    }
    return real_ftruncate(fd, length);
}

int ftruncate64(int fd, off_t length) {
    REAL(ftruncate64, int, int, off_t);
    if (grows(fd, length)) {
        FULL_OR(fd);
    }
    return real_ftruncate64(fd, length);
}

int fallocate(int fd, int mode, off_t offset, off_t len) {
    REAL(fallocate, int, int, int, off_t, off_t);
    FULL_OR(fd);
    return real_fallocate(fd, mode, offset, len);
}

int fallocate64(int fd, int mode, off_t offset, off_t len) {
    REAL(fallocate64, int, int, int, off_t, off_t);
    FULL_OR(fd);
    return real_fallocate64(fd, mode, offset, len);
}

int posix_fallocate(int fd, off_t offset, off_t len) {
    REAL(posix_fallocate, int, int, off_t, off_t);
    if (disk_full(fd)) {
        return ENOSPC;
    }
    return real_posix_fallocate(fd, offset, len);
}

int posix_fallocate64(int fd, off_t offset, off_t len) {
    REAL(posix_fallocate64, int, int, off_t, off_t);
    if (disk_full(fd)) {
        return ENOSPC;
    }
    return real_posix_fallocate64(fd, offset, len);
}

int fsync(int fd) {
    REAL(fsync, int, int);
    slow_sync(fd);
    /* A full disk can fail the flush of dirty pages, as ext4/xfs report it. */
    FULL_OR(fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    slow_sync(fd);
    FULL_OR(fd);
    return real_fdatasync(fd);
}
