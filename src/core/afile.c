/* core/afile.c: the one path by which gpuseg writes files (labels, .npy, the program cache, the
 * conv choice cache): a temporary file created with O_EXCL in the target's folder, written with
 * every error checked, fsync'ed, renamed over the target, and the folder fsync'ed. Targets that
 * are symlinks or special files are refused unless the caller allows them; write errors name
 * the file and say "disk full" when that is what they mean. */
#define _DEFAULT_SOURCE /* realpath (XSI) */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/internal.h"

static const char ALLOW_HINT[] = "--allow-special-output / GPUSEG_ALLOW_SPECIAL_OUTPUT=1";

gpuseg_status gpuseg__fail_write(gpuseg_ctx *ctx, const char *path, const char *what, int e) {
    if (e == ENOSPC || e == EDQUOT || e == EFBIG)
        return gpuseg__fail(ctx, GPUSEG_IO, "%s: disk full (%s)", path, strerror(e));
    return gpuseg__fail(ctx,
                        e == EACCES || e == EPERM || e == EROFS ? GPUSEG_PERMISSION : GPUSEG_IO,
                        "%s: %s: %s", path, what, e ? strerror(e) : "no progress");
}

static const char *kind_name(mode_t m) {
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISCHR(m))
        return "a character device";
    if (S_ISBLK(m))
        return "a block device";
    if (S_ISSOCK(m))
        return "a socket";
    return "not a regular file";
}

/* Six characters that make the temporary name unique with O_EXCL retries: process id, a
 * process-wide counter and the clock, mixed (splitmix64). */
static void tmp_suffix(char out[7]) {
    static atomic_uint counter;
    static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)getpid() << 32 ^ (uint64_t)atomic_fetch_add(&counter, 1) << 20 ^
                 (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 40;
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    for (int i = 0; i < 6; i++) {
        out[i] = digits[x % 36];
        x /= 36;
    }
    out[6] = '\0';
}

/* Stale temporaries. A writer killed mid-write (SIGKILL, power loss) leaves TARGET.tmp-XXXXXX
 * behind. Every writer holds an exclusive flock() on its temporary from just after creating it
 * until it is renamed or removed; the kernel drops the lock when the writer dies. Before
 * creating its own temporary, a writer of TARGET removes the temporaries of TARGET only: names
 * that are exactly the target's name + ".tmp-" + 6 characters of [A-Za-z0-9] (mkstemp's
 * alphabet, which covers ours), regular files (not followed through symlinks) of this user,
 * not modified for GPUSEG__STALE_TMP_AGE_S seconds, whose lock can be taken without waiting
 * (no live writer holds it) and whose name still refers to the locked file. Concurrent writers
 * of the same target therefore never remove each other's temporaries (each holds its lock),
 * and a file system without flock() support (the lock fails) keeps every temporary. Best
 * effort: nothing here fails a write. The cost is one read of the target's folder per file. */
#define GPUSEG__STALE_TMP_AGE_S 60

static bool tmp_name_of(const char *name, const char *base, size_t blen) {
    if (strncmp(name, base, blen) != 0 || strncmp(name + blen, ".tmp-", 5) != 0)
        return false;
    const char *s = name + blen + 5;
    for (int i = 0; i < 6; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return false;
    }
    return s[6] == '\0';
}

static void remove_stale_temps(const char *target) {
    const char *slash = strrchr(target, '/');
    const char *base = slash ? slash + 1 : target;
    char dir[PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == target)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - target) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - target), target);
    else
        return;
    const size_t blen = strlen(base);
    DIR *d = opendir(dir);
    if (!d)
        return;
    const int dfd = dirfd(d);
    const time_t now = time(NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!tmp_name_of(e->d_name, base, blen))
            continue;
        int fd = openat(dfd, e->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
            continue;
        struct stat a, b;
        if (fstat(fd, &a) == 0 && S_ISREG(a.st_mode) && a.st_uid == geteuid() &&
            now - a.st_mtime >= GPUSEG__STALE_TMP_AGE_S && flock(fd, LOCK_EX | LOCK_NB) == 0 &&
            fstatat(dfd, e->d_name, &b, AT_SYMLINK_NOFOLLOW) == 0 && b.st_ino == a.st_ino &&
            b.st_dev == a.st_dev)
            (void)unlinkat(dfd, e->d_name, 0);
        close(fd);
    }
    closedir(d);
}

static gpuseg_status open_direct(gpuseg__afile *af) {
    /* The caller asked for it: a FIFO blocks here until a reader opens it, as a shell
     * redirection would. No O_TRUNC: devices ignore it and it is not ours to truncate. */
    af->fd = open(af->target, O_WRONLY | O_CLOEXEC | O_NOCTTY);
    if (af->fd < 0)
        return gpuseg__fail_write(af->ctx, af->path, "cannot open", errno);
    af->direct = true;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__afile_open_ex(gpuseg_ctx *ctx, const char *path, unsigned flags,
                                    gpuseg__afile *af) {
    af->path = path;
    af->target = NULL;
    af->tmp = NULL;
    af->fd = -1;
    af->direct = false;
    af->ctx = ctx;
    if (!path || !*path)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "output path is empty");
    const bool allow = (gpuseg__write_flags(flags) & GPUSEG_WRITE_ALLOW_SPECIAL) != 0;
    struct stat sb;
    bool exists = lstat(path, &sb) == 0;
    if (!exists && errno != ENOENT)
        return gpuseg__fail_write(ctx, path, "cannot check the output path", errno);
    if (exists && S_ISLNK(sb.st_mode)) {
        if (!allow)
            return gpuseg__fail(ctx, GPUSEG_PERMISSION,
                                "%s: is a symbolic link; refusing to write through it (allow "
                                "with %s)",
                                path, ALLOW_HINT);
        /* Replace what the link points to, atomically in that folder, and keep the link. */
        af->target = realpath(path, NULL);
        if (!af->target)
            return gpuseg__fail_write(ctx, path, "cannot resolve the symbolic link", errno);
        exists = stat(af->target, &sb) == 0;
        if (!exists && errno != ENOENT) {
            int e = errno;
            gpuseg__afile_abort(af);
            return gpuseg__fail_write(ctx, path, "cannot check the link's destination", e);
        }
    } else {
        af->target = strdup(path);
        if (!af->target)
            return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    if (exists && S_ISDIR(sb.st_mode)) {
        gpuseg__afile_abort(af);
        return gpuseg__fail(ctx, GPUSEG_IO, "%s: is a directory; give a file name", path);
    }
    if (exists && !S_ISREG(sb.st_mode)) {
        if (!allow) {
            gpuseg__afile_abort(af);
            return gpuseg__fail(ctx, GPUSEG_PERMISSION,
                                "%s: is %s; refusing to write to it (allow with %s)", path,
                                kind_name(sb.st_mode), ALLOW_HINT);
        }
        gpuseg_status st = open_direct(af);
        if (st != GPUSEG_OK)
            gpuseg__afile_abort(af);
        return st;
    }
    /* The temporary file lives in the target's folder so that rename() is atomic. O_EXCL never
     * follows or reuses an existing name; 0666 lets the umask decide the permissions, as for any
     * file a program creates. Read-write because libtiff reads back earlier pages' directories
     * while it appends the next page. */
    size_t tlen = strlen(af->target) + 16;
    af->tmp = malloc(tlen);
    if (!af->tmp) {
        gpuseg__afile_abort(af);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    remove_stale_temps(af->target);
    int e = 0;
    for (int tries = 0; tries < 100; tries++) {
        char sfx[7];
        tmp_suffix(sfx);
        snprintf(af->tmp, tlen, "%s.tmp-%s", af->target, sfx);
        af->fd = open(af->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0666);
        if (af->fd >= 0) {
            (void)flock(af->fd, LOCK_EX | LOCK_NB); /* "a live writer": see remove_stale_temps */
            return GPUSEG_OK;
        }
        e = errno;
        if (e != EEXIST)
            break;
    }
    free(af->tmp);
    af->tmp = NULL; /* nothing was created: abort must not unlink someone else's file */
    gpuseg__afile_abort(af);
    return gpuseg__fail_write(ctx, path, "cannot create a temporary file next to it", e);
}

gpuseg_status gpuseg__afile_open(const char *path, gpuseg__afile *af) {
    return gpuseg__afile_open_ex(NULL, path, 0, af);
}

gpuseg_status gpuseg__afile_write(gpuseg__afile *af, const void *data, size_t n) {
    const unsigned char *p = data;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(af->fd, p, chunk);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) /* 0 for a regular file means no room was made: report it as such */
            return gpuseg__fail_write(af->ctx, af->path, "write failed", w < 0 ? errno : ENOSPC);
        p += w;
        n -= (size_t)w;
    }
    return GPUSEG_OK;
}

void gpuseg__afile_abort(gpuseg__afile *af) {
    if (af->fd >= 0)
        close(af->fd);
    af->fd = -1;
    if (af->tmp) {
        unlink(af->tmp);
        free(af->tmp);
    }
    af->tmp = NULL;
    free(af->target);
    af->target = NULL;
}

gpuseg_status gpuseg__afile_finish(gpuseg__afile *af) {
    /* fsync reports the errors that delayed allocation and network file systems keep until
     * then; devices and pipes do not support it (EINVAL, EROFS), which is not a failure. */
    if (fsync(af->fd) != 0 && !(af->direct && (errno == EINVAL || errno == EROFS))) {
        int e = errno;
        gpuseg__afile_abort(af);
        return gpuseg__fail_write(af->ctx, af->path, "write failed", e);
    }
    int r = close(af->fd);
    af->fd = -1;
    if (r != 0 && errno != EINTR) {
        int e = errno;
        gpuseg__afile_abort(af);
        return gpuseg__fail_write(af->ctx, af->path, "write failed", e);
    }
    return GPUSEG_OK;
}

/* Makes the rename durable; best effort, since not every file system lets a folder be
 * fsync'ed and the data itself is already safe. */
static void sync_folder(const char *file) {
    const char *slash = strrchr(file, '/');
    char dir[PATH_MAX];
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == file)
        snprintf(dir, sizeof dir, "/");
    else if ((size_t)(slash - file) < sizeof dir)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - file), file);
    else
        return;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
}

gpuseg_status gpuseg__afile_rename(gpuseg__afile *af) {
    if (af->direct) {
        free(af->target);
        af->target = NULL;
        return GPUSEG_OK;
    }
    if (rename(af->tmp, af->target) != 0) {
        int e = errno;
        gpuseg__afile_abort(af);
        return gpuseg__fail_write(af->ctx, af->path, "cannot rename the temporary file", e);
    }
    sync_folder(af->target);
    free(af->tmp);
    af->tmp = NULL;
    free(af->target);
    af->target = NULL;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__afile_commit(gpuseg__afile *af) {
    gpuseg_status st = gpuseg__afile_finish(af);
    if (st != GPUSEG_OK)
        return st;
    return gpuseg__afile_rename(af);
}
