/* shm/shm_list.c: finding gpuseg segments in /dev/shm, telling whether their producer still
 * runs (pid plus start time from /proc, so that a recycled pid is not mistaken for the
 * producer), and removing those that nobody will ever finish or consume. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm_internal.h"

/* Where Linux (glibc) keeps POSIX shared-memory objects. */
#define SHM_DIR "/dev/shm"
/* A segment without a readable header older than this is taken as left by a producer that
 * died between shm_open and writing the header (creation takes microseconds). */
#define HEADERLESS_AGE_S 60

uint64_t gpuseg__proc_start_time(int64_t pid, bool *zombie) {
    if (zombie)
        *zombie = false;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* "pid (comm) S ppid ...": comm may hold spaces and parentheses, so parse after the last
     * ')'. Field 3 is the state, field 22 the start time. */
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return 0;
    p += 2;
    if (zombie && (*p == 'Z' || *p == 'X'))
        *zombie = true;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return 0;
        p++;
    }
    return strtoull(p, NULL, 10);
}

int gpuseg__shm_producer_alive(int64_t pid, uint64_t start) {
    if (pid <= 0 || pid > INT32_MAX)
        return -1;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    bool zombie = false;
    uint64_t now_start = gpuseg__proc_start_time(pid, &zombie);
    if (zombie)
        return 0; /* killed but not yet reaped: it will never write again */
    if (now_start == 0) {
        /* /proc unreadable, or the process just exited: ask kill() once more */
        return kill((pid_t)pid, 0) != 0 && errno == ESRCH ? 0 : 1;
    }
    return start != 0 && now_start != start ? 0 : 1;
}

static gpuseg_status check_prefix(const char *prefix, char *out) {
    if (!prefix)
        prefix = GPUSEG__SHM_PREFIX;
    const char *s = prefix[0] == '/' ? prefix + 1 : prefix;
    if (strncmp(s, "gpuseg-", 7) != 0 || strlen(s) + 2 > GPUSEG_SHM_NAME_MAX || strchr(s, '/'))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm: prefix '%.200s' does not start with /gpuseg-", prefix);
    snprintf(out, GPUSEG_SHM_NAME_MAX, "/%s", s);
    return GPUSEG_OK;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const gpuseg_shm_entry *)a)->name, ((const gpuseg_shm_entry *)b)->name);
}

/* Fills e from the file /dev/shm/<d_name>; false when it is not a regular file. */
static bool read_entry(int dirfd, const char *d_name, gpuseg_shm_entry *e) {
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "/%s", d_name);
    e->producer_alive = -1;
    struct stat sb;
    if (fstatat(dirfd, d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
        return false;
    e->segment_bytes = (uint64_t)sb.st_size;
    e->uid = (uint32_t)sb.st_uid;
    e->mtime_s = (int64_t)sb.st_mtime;
    int fd = openat(dirfd, d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return true; /* another user's segment: name, size and owner only */
    unsigned char hdr[GPUSEG_SHM_HEADER_SIZE];
    ssize_t n = sb.st_size >= (off_t)sizeof hdr ? pread(fd, hdr, sizeof hdr, 0) : 0;
    close(fd);
    if (n != (ssize_t)sizeof hdr || memcmp(hdr, GPUSEG_SHM_MAGIC, 8) != 0)
        return true;
    /* The pid and start time sit at fixed offsets in every version, so liveness is known even
     * when the rest of the header does not validate. */
    int64_t pid = (int64_t)gpuseg__ld64(hdr + GPUSEG__SHM_OFF_PID);
    e->producer_alive = gpuseg__shm_producer_alive(pid, gpuseg__ld64(hdr + GPUSEG__SHM_OFF_START));
    e->header_valid = gpuseg__shm_decode(e->name, hdr, e->segment_bytes, &e->info) == GPUSEG_OK;
    snprintf(e->info.name, sizeof e->info.name, "%s", e->name);
    e->info.segment_bytes = e->segment_bytes;
    if (!e->header_valid)
        e->info.producer_pid = pid;
    return true;
}

gpuseg_status gpuseg_shm_list(const char *prefix, gpuseg_shm_entry **entries, size_t *n) {
    gpuseg__clear_error(NULL);
    if (!entries || !n)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_list: NULL argument");
    *entries = NULL;
    *n = 0;
    char pre[GPUSEG_SHM_NAME_MAX];
    gpuseg_status st = check_prefix(prefix, pre);
    if (st != GPUSEG_OK)
        return st;
    DIR *dir = opendir(SHM_DIR);
    if (!dir)
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: cannot list: %s", SHM_DIR, strerror(errno));
    gpuseg_shm_entry *list = NULL;
    size_t count = 0, cap = 0;
    size_t plen = strlen(pre + 1);
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        if (strncmp(d->d_name, pre + 1, plen) != 0 || strlen(d->d_name) + 2 > GPUSEG_SHM_NAME_MAX)
            continue;
        if (count == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            gpuseg_shm_entry *nl = realloc(list, ncap * sizeof *nl);
            if (!nl) {
                free(list);
                closedir(dir);
                return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", SHM_DIR);
            }
            list = nl;
            cap = ncap;
        }
        if (read_entry(dirfd(dir), d->d_name, &list[count]))
            count++;
    }
    closedir(dir);
    if (count)
        qsort(list, count, sizeof *list, by_name);
    else {
        free(list);
        list = NULL;
    }
    gpuseg__clear_error(NULL); /* headers that did not decode are reported per entry */
    *entries = list;
    *n = count;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_clean(const char *prefix, size_t *removed) {
    gpuseg__clear_error(NULL);
    if (removed)
        *removed = 0;
    gpuseg_shm_entry *list = NULL;
    size_t n = 0, count = 0;
    gpuseg_status st = gpuseg_shm_list(prefix, &list, &n);
    if (st != GPUSEG_OK)
        return st;
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        const gpuseg_shm_entry *e = &list[i];
        if (e->uid != (uint32_t)geteuid())
            continue;
        bool gone = e->producer_alive == 0 ||
                    (e->producer_alive < 0 && (int64_t)now - e->mtime_s > HEADERLESS_AGE_S);
        if (!gone)
            continue;
        if (shm_unlink(e->name) == 0)
            count++;
        else if (errno != ENOENT) { /* ENOENT: someone else removed it meanwhile */
            st = gpuseg__fail(NULL, GPUSEG_IO, "shm %s: cannot remove: %s", e->name,
                              strerror(errno));
            break;
        }
    }
    free(list);
    if (removed)
        *removed = count;
    return st;
}
