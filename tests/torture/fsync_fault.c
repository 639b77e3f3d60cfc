/* LD_PRELOAD shim for storage-fault tests: fsync/fdatasync on a SQLite WAL file ("-wal")
 * can be made slow or made to fail with EIO, controlled from outside the process through
 * files in the directory named by BETSTREAM_FAULT_DIR:
 *   delay_ms  an integer: sleep that long before each WAL sync (absent or 0: no delay)
 *   eio       present: the next WAL sync syncs, then reports EIO (the file is consumed)
 * The real sync always runs first, so a reported failure may still be durable: the
 * worst case for a database, which must then neither lose nor double the batch. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int is_wal(int fd) {
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 4) return 0;
    path[n] = '\0';
    return strcmp(path + n - 4, "-wal") == 0;
}

static int fault(int fd, int rc) {
    const char *dir = getenv("BETSTREAM_FAULT_DIR");
    char file[PATH_MAX];
    if (dir == NULL || !is_wal(fd)) return rc;
    snprintf(file, sizeof file, "%s/delay_ms", dir);
    FILE *f = fopen(file, "r");
    if (f != NULL) {
        long ms = 0;
        if (fscanf(f, "%ld", &ms) == 1 && ms > 0) {
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        fclose(f);
    }
    snprintf(file, sizeof file, "%s/eio", dir);
    if (rc == 0 && unlink(file) == 0) {
        errno = EIO;
        return -1;
    }
    return rc;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return fault(fd, real(fd));
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return fault(fd, real(fd));
}
