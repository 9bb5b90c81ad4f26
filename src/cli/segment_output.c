/* cli/segment_output.c: the batch output pipeline (cli/segment_output.h): publish each image's
 * labels into a shared-memory segment, spawn a bounded number of `gpuseg save` processes with
 * posix_spawn and reap them with waitpid (collecting each one's stderr through a pipe), and
 * remove every segment on the way out -- also when this process is interrupted by SIGINT,
 * SIGTERM or SIGHUP, through a registry of live segments that the signal handler walks. */
#define _GNU_SOURCE /* strsignal */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "segment_output.h"

extern char **environ;

/* ---- the registry of live segments, shared with the signal handler -------------------------
 * A slot is PUBLISHING from the moment its name is chosen until a saver owns the segment (or,
 * with shm_only, until it is handed to the caller), SAVING while its saver runs. Slots are
 * changed only with the handled signals blocked, so the handler never sees half a slot. The
 * handler uses only async-signal-safe calls (unlink on the /dev/shm path, close, waitpid, raise).
 */
enum { SLOT_FREE = 0, SLOT_PUBLISHING = 1, SLOT_SAVING = 2 };
#define N_SLOTS (SEGMENT_OUTPUT_MAX_IN_FLIGHT + 1u)
#define SHM_DIR "/dev/shm"

typedef struct {
    volatile sig_atomic_t state;
    pid_t pid;
    int errfd; /* read end of the saver's stderr pipe, -1 when closed */
    char name[GPUSEG_SHM_NAME_MAX];
    char path[GPUSEG_SHM_NAME_MAX + sizeof SHM_DIR]; /* /dev/shm/gpuseg-... */
    /* not used by the handler: */
    char err[512]; /* first bytes of the saver's stderr */
    size_t err_len;
    char *image, *out; /* for messages */
} slot;

static slot g_slots[N_SLOTS];
static int g_active; /* a pipeline exists */
static const int g_sigs[3] = {SIGINT, SIGTERM, SIGHUP};
static struct sigaction g_old[3];
static int g_installed[3];

struct segment_output {
    segment_output_opts opts;
    char exe[PATH_MAX];
    char prefix[GPUSEG_SHM_NAME_MAX];
    char timeout[32];
    unsigned running;  /* slots in SAVING */
    unsigned failures; /* failed saves so far */
};

static volatile sig_atomic_t g_cancel_mode; /* cancel_on_signal */
static volatile sig_atomic_t g_caught;      /* the signal that cancelled, 0: none */
static gpuseg_ctx *g_cancel_ctx;

static void on_signal(int sig) {
    if (g_cancel_mode && !g_caught && sig != SIGHUP) {
        g_caught = sig; /* the caller stops at its next check and cleans up */
        if (g_cancel_ctx)
            gpuseg_ctx_cancel(g_cancel_ctx, 1); /* async-signal-safe */
        return;
    }
    /* From here on the same signal ends the process at once. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, NULL);
    /* Segments no saver owns yet: nobody else will remove them. */
    for (unsigned i = 0; i < N_SLOTS; i++)
        if (g_slots[i].state == SLOT_PUBLISHING)
            unlink(g_slots[i].path);
    /* Savers own theirs: let them finish the file (they remove the segment on success), then
     * remove what a failed one left. Closing our pipe ends first means a saver writing its
     * error line cannot block on a full pipe; it dies of SIGPIPE instead and we clean up. */
    for (unsigned i = 0; i < N_SLOTS; i++)
        if (g_slots[i].state == SLOT_SAVING && g_slots[i].errfd >= 0)
            close(g_slots[i].errfd);
    for (unsigned i = 0; i < N_SLOTS; i++) {
        if (g_slots[i].state != SLOT_SAVING)
            continue;
        int status;
        while (waitpid(g_slots[i].pid, &status, 0) < 0 && errno == EINTR)
            ;
        unlink(g_slots[i].path); /* ENOENT after a successful save; the saver is gone either way */
    }
    /* The default action is back and SA_NODEFER leaves sig unblocked: this ends the process
     * the way the signal would have, so the parent sees "killed by SIGTERM". */
    raise(sig);
}

static void block_signals(sigset_t *old) {
    sigset_t s;
    sigemptyset(&s);
    for (int i = 0; i < 3; i++)
        sigaddset(&s, g_sigs[i]);
    sigprocmask(SIG_BLOCK, &s, old);
}

static void restore_signals(const sigset_t *old) {
    sigprocmask(SIG_SETMASK, old, NULL);
}

static void slot_set(slot *s, int state) {
    sigset_t old;
    block_signals(&old);
    s->state = state;
    restore_signals(&old);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static const char *sig_name(int sig) {
    switch (sig) {
    case SIGKILL:
        return "SIGKILL";
    case SIGTERM:
        return "SIGTERM";
    case SIGINT:
        return "SIGINT";
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGABRT:
        return "SIGABRT";
    case SIGPIPE:
        return "SIGPIPE";
    case SIGHUP:
        return "SIGHUP";
    default:
        return strsignal(sig);
    }
}

/* ---- create / free ------------------------------------------------------------------------ */

gpuseg_status segment_output_create(const segment_output_opts *opts, segment_output **out) {
    cli_clear_error();
    if (!opts || !out)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "segment_output_create: NULL argument");
    *out = NULL;
    if (g_active)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT,
                             "segment output: only one pipeline may exist at a time");
    if (opts->max_in_flight > SEGMENT_OUTPUT_MAX_IN_FLIGHT)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT,
                             "segment output: at most %u savers in flight, not %u",
                             SEGMENT_OUTPUT_MAX_IN_FLIGHT, opts->max_in_flight);
    char probe[GPUSEG_SHM_NAME_MAX];
    if (opts->name_prefix && gpuseg_shm_random_name(opts->name_prefix, probe) != GPUSEG_OK)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "segment output: name prefix %s",
                             gpuseg_last_error());
    segment_output *o = calloc(1, sizeof *o);
    if (!o)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "segment output: out of memory");
    o->opts = *opts;
    if (opts->gpuseg_exe) {
        if (strlen(opts->gpuseg_exe) >= sizeof o->exe) {
            free(o);
            return cli_set_error(GPUSEG_INVALID_ARGUMENT, "segment output: saver path too long");
        }
        snprintf(o->exe, sizeof o->exe, "%s", opts->gpuseg_exe);
    } else {
        /* Resolved now: the file behind /proc/self/exe stays the same for the whole batch even
         * if the installed gpuseg is replaced meanwhile. */
        ssize_t n = readlink("/proc/self/exe", o->exe, sizeof o->exe - 1);
        if (n <= 0 || (size_t)n >= sizeof o->exe - 1) {
            free(o);
            return cli_set_error(GPUSEG_IO, "/proc/self/exe: cannot resolve: %s",
                                 n < 0 ? strerror(errno) : "too long");
        }
        o->exe[n] = '\0';
    }
    o->opts.gpuseg_exe = o->exe;
    snprintf(o->prefix, sizeof o->prefix, "%s", opts->name_prefix ? opts->name_prefix : "/gpuseg-");
    o->opts.name_prefix = o->prefix;
    snprintf(o->timeout, sizeof o->timeout, "%.17g",
             opts->save_timeout_s > 0 ? opts->save_timeout_s : 10.0);
    for (unsigned i = 0; i < N_SLOTS; i++) {
        memset(&g_slots[i], 0, sizeof g_slots[i]);
        g_slots[i].errfd = -1;
    }
    g_cancel_ctx = opts->cancel_ctx;
    g_caught = 0;
    g_cancel_mode = opts->cancel_on_signal;
    for (int i = 0; i < 3; i++) {
        g_installed[i] = 0;
        if (sigaction(g_sigs[i], NULL, &g_old[i]) != 0 || g_old[i].sa_handler == SIG_IGN)
            continue; /* ignored (nohup, background shell): keep ignoring */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (int k = 0; k < 3; k++)
            if (k != i)
                sigaddset(&sa.sa_mask, g_sigs[k]);
        /* A second signal of the same kind while we wait for savers kills at once (the
         * handler restores the default action first). */
        sa.sa_flags = SA_NODEFER;
        if (sigaction(g_sigs[i], &sa, NULL) == 0)
            g_installed[i] = 1;
    }
    g_active = 1;
    *out = o;
    return GPUSEG_OK;
}

/* ---- reaping ------------------------------------------------------------------------------ */

/* The saver of slot s has exited with wait status `status`: report a failure, remove what it
 * left, free the slot. */
static void finish_slot(segment_output *o, slot *s, int status) {
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok) {
        char why[600];
        if (WIFSIGNALED(status)) {
            snprintf(why, sizeof why, "killed by signal %d (%s)", WTERMSIG(status),
                     sig_name(WTERMSIG(status)));
        } else {
            s->err[s->err_len < sizeof s->err ? s->err_len : sizeof s->err - 1] = '\0';
            char *msg = s->err;
            if (strncmp(msg, "gpuseg: ", 8) == 0)
                msg += 8;
            msg[strcspn(msg, "\n")] = '\0';
            if (*msg)
                snprintf(why, sizeof why, "%s", msg);
            else
                snprintf(why, sizeof why, "the saver exited with status %d",
                         WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        }
        cli_error("saving %s to %s failed: %s", s->image, s->out, why);
        o->failures++;
    }
    /* A failed saver leaves the segment (for inspection, in `save` alone); here nobody would
     * look at it. After a success it is normally gone already (NOT_FOUND). */
    gpuseg_shm_unlink(s->name);
    if (s->errfd >= 0)
        close(s->errfd);
    s->errfd = -1;
    free(s->image);
    free(s->out);
    s->image = s->out = NULL;
    slot_set(s, SLOT_FREE);
    o->running--;
}

/* Waits until one saver has exited (until `which` has, when not NULL) and finishes it. Reads
 * the savers' stderr meanwhile so that none blocks on a full pipe; a saver's end of file means
 * it exited (its pipe end is not shared: every other descriptor is close-on-exec). */
static void wait_one(segment_output *o, const slot *which) {
    for (;;) {
        struct pollfd pf[N_SLOTS];
        slot *ps[N_SLOTS];
        nfds_t n = 0;
        for (unsigned i = 0; i < N_SLOTS; i++) {
            slot *s = &g_slots[i];
            if (s->state != SLOT_SAVING)
                continue;
            if (s->errfd < 0) { /* its pipe is already at end of file */
                int status;
                while (waitpid(s->pid, &status, 0) < 0 && errno == EINTR)
                    ;
                finish_slot(o, s, status);
                if (!which || which == s)
                    return;
                continue;
            }
            pf[n].fd = s->errfd;
            pf[n].events = POLLIN;
            pf[n].revents = 0;
            ps[n++] = s;
        }
        if (n == 0)
            return;
        if (poll(pf, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            /* Cannot happen with valid descriptors; fall back to plain waiting. */
            for (nfds_t k = 0; k < n; k++) {
                close(ps[k]->errfd);
                ps[k]->errfd = -1;
            }
            continue;
        }
        for (nfds_t k = 0; k < n; k++) {
            if (!pf[k].revents)
                continue;
            slot *s = ps[k];
            char buf[512];
            ssize_t r = read(s->errfd, buf, sizeof buf);
            if (r < 0 && errno == EINTR)
                continue;
            if (r > 0) {
                size_t room = sizeof s->err - 1 - s->err_len;
                size_t take = (size_t)r < room ? (size_t)r : room;
                memcpy(s->err + s->err_len, buf, take);
                s->err_len += take;
                continue;
            }
            close(s->errfd); /* end of file (or an error): the saver is exiting */
            s->errfd = -1;
        }
    }
}

/* ---- submit ------------------------------------------------------------------------------- */

/* Starts `gpuseg save` for slot s (segment published and closed). */
static gpuseg_status spawn_saver(segment_output *o, slot *s, const char *json_extra) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return cli_set_error(GPUSEG_IO, "%s: cannot create a pipe for the saver: %s", s->image,
                             strerror(errno));
    char *argv[12 + CLI_LIMITS_MAX_ARGS], limits[3][24];
    int a = 0;
    argv[a++] = o->exe;
    argv[a++] = (char *)"save";
    argv[a++] = (char *)"--shm";
    argv[a++] = s->name;
    argv[a++] = (char *)"-o";
    argv[a++] = s->out;
    argv[a++] = (char *)"--unlink";
    argv[a++] = (char *)"--timeout";
    argv[a++] = o->timeout;
    if (json_extra) {
        argv[a++] = (char *)"--meta";
        argv[a++] = (char *)json_extra;
    }
    cli_limits_args(argv, &a, limits); /* --max-pixels ... --allow-special-output, when given */
    argv[a] = NULL;

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2); /* dup2 clears close-on-exec */
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    /* Own process group: a terminal's Ctrl-C goes to us, and we let savers finish instead of
     * leaving half-written temporary files (see on_signal). */
    posix_spawnattr_setpgroup(&at, 0);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);

    /* Signals stay blocked from the spawn until the slot says SAVING, so that the handler
     * either unlinks the segment (no saver yet) or waits for the saver -- never neither. */
    sigset_t old;
    block_signals(&old);
    pid_t pid;
    int rc = posix_spawn(&pid, o->exe, &fa, &at, argv, environ);
    if (rc == 0) {
        s->pid = pid;
        s->errfd = fds[0];
        s->err_len = 0;
        s->state = SLOT_SAVING;
        o->running++;
    }
    restore_signals(&old);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(fds[1]);
    if (rc != 0) {
        close(fds[0]);
        gpuseg_shm_unlink(s->name); /* before the message: unlink clears the last error */
        return cli_set_error(GPUSEG_IO, "%s: cannot start the saver %s: %s", s->image, o->exe,
                             strerror(rc));
    }
    return GPUSEG_OK;
}

/* Prints the shm_only line: the segment's JSON (gpuseg_shm_json) plus "image" and the members of
 * json_extra, or only the name. */
static gpuseg_status print_line(segment_output *o, const gpuseg_shm_info *info, const char *image,
                                const json_t *extra) {
    if (!o->opts.json) {
        printf("%s\n", info->name);
        fflush(stdout);
        return GPUSEG_OK;
    }
    char text[1024];
    gpuseg_status st = gpuseg_shm_json(info, text, sizeof text);
    if (st != GPUSEG_OK)
        return cli_set_error(st, "%s: %s", image, gpuseg_last_error());
    json_t *line = json_loads(text, 0, NULL);
    if (!line || json_object_set_new(line, "image", cli_json_str(image)) != 0 ||
        (extra && json_object_update(line, (json_t *)extra) != 0)) {
        json_decref(line);
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", image);
    }
    return cli_json_print(line, JSON_COMPACT) == 0
               ? GPUSEG_OK
               : cli_set_error(GPUSEG_IO, "%s: cannot print its JSON line", image);
}

/* The arguments of submit, checked; *extra is json_extra parsed (NULL when there is none). */
static gpuseg_status check_submit(const segment_output *o, gpuseg_ctx *ctx, const char *image_path,
                                  const char *out_path, cl_mem labels,
                                  const gpuseg_image *host_labels, uint32_t H, uint32_t W,
                                  gpuseg_dtype dtype, const char *json_extra, json_t **extra) {
    *extra = NULL;
    if (!o || !image_path || (!out_path && !o->opts.shm_only) || (!labels && !host_labels) ||
        (labels && !ctx))
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "segment_output_submit: bad arguments");
    if (dtype != GPUSEG_DTYPE_U16 && dtype != GPUSEG_DTYPE_U32)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "%s: labels must be uint16 or uint32",
                             image_path);
    if (!labels &&
        (host_labels->height != H || host_labels->width != W || host_labels->dtype != dtype ||
         host_labels->pages < 1 || host_labels->channels != 1))
        return cli_set_error(GPUSEG_INVALID_ARGUMENT,
                             "%s: the host labels are not %s pages of %u x %u", image_path,
                             gpuseg_dtype_name(dtype), H, W);
    if (!json_extra)
        return GPUSEG_OK;
    char what[PATH_MAX + 32];
    snprintf(what, sizeof what, "%s: the metadata", image_path);
    if (strlen(json_extra) > SEGMENT_OUTPUT_MAX_EXTRA)
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "%s is over %u bytes", what,
                             SEGMENT_OUTPUT_MAX_EXTRA);
    *extra = cli_json_object(what, json_extra);
    return *extra ? GPUSEG_OK : GPUSEG_INVALID_ARGUMENT;
}

/* Frees slot s (not SAVING) again. */
static void slot_release(slot *s) {
    free(s->image);
    free(s->out);
    s->image = s->out = NULL;
    slot_set(s, SLOT_FREE);
}

gpuseg_status segment_output_submit(segment_output *o, gpuseg_ctx *ctx, const char *image_path,
                                    const char *out_path, cl_mem labels,
                                    const gpuseg_image *host_labels, uint32_t H, uint32_t W,
                                    gpuseg_dtype dtype, uint64_t n_masks, double diameter,
                                    const char *json_extra) {
    cli_clear_error();
    json_t *extra = NULL;
    gpuseg_status st = check_submit(o, ctx, image_path, out_path, labels, host_labels, H, W, dtype,
                                    json_extra, &extra);
    if (st != GPUSEG_OK)
        return st;
    /* Room for one more saver (serial mode: none runs here). */
    unsigned limit = o->opts.max_in_flight ? o->opts.max_in_flight : 1;
    while (o->running >= limit)
        wait_one(o, NULL);
    slot *s = NULL;
    for (unsigned i = 0; i < N_SLOTS && !s; i++)
        if (g_slots[i].state == SLOT_FREE)
            s = &g_slots[i];
    if (!s) {
        json_decref(extra);
        return cli_set_error(GPUSEG_INTERNAL, "segment output: no free slot");
    }
    if ((st = gpuseg_shm_random_name(o->prefix, s->name)) != GPUSEG_OK) {
        json_decref(extra);
        return cli_set_error(st, "%s", gpuseg_last_error());
    }
    snprintf(s->path, sizeof s->path, SHM_DIR "%s", s->name);
    s->image = strdup(image_path);
    s->out = strdup(out_path ? out_path : "");
    if (!s->image || !s->out) {
        st = cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", image_path);
        goto fail;
    }
    /* Registered before it exists, so that a signal during creation removes it too. */
    slot_set(s, SLOT_PUBLISHING);
    gpuseg_shm *seg = NULL;
    gpuseg_shm_publish_params pp = {o->opts.test_stall_ms};
    if (labels) {
        const uint64_t shape[2] = {H, W};
        st = gpuseg_shm_create_from_buffer_ex(ctx, s->name, labels, dtype, 2, shape, n_masks,
                                              diameter, &pp, &seg);
    } else {
        st = gpuseg_shm_create_labels_ex(s->name, host_labels, n_masks, diameter, &pp, &seg);
    }
    if (st != GPUSEG_OK) { /* nothing left behind by either call */
        cli_set_error(st, "%s: %s", image_path, gpuseg_last_error());
        goto fail;
    }
    if (o->opts.shm_only) {
        st = print_line(o, gpuseg_shm_get_info(seg), image_path, extra);
        gpuseg_shm_free(seg);
        if (st != GPUSEG_OK) { /* its message is recorded (cli_set_error) */
            gpuseg_shm_unlink(s->name);
            goto fail;
        }
        json_decref(extra);
        slot_release(s); /* the segment is the caller's now */
        return GPUSEG_OK;
    }
    gpuseg_shm_free(seg);               /* the mapping; the segment stays for the saver */
    st = spawn_saver(o, s, json_extra); /* on failure it has removed the segment */
    if (st != GPUSEG_OK)
        goto fail;
    json_decref(extra);
    if (o->opts.max_in_flight == 0)
        wait_one(o, s);
    return GPUSEG_OK;
fail:
    json_decref(extra);
    slot_release(s);
    return st;
}

int segment_output_signal(const segment_output *o) {
    return o ? (int)g_caught : 0;
}

unsigned segment_output_finish(segment_output *o) {
    if (!o)
        return 0;
    while (o->running > 0)
        wait_one(o, NULL);
    return o->failures;
}

void segment_output_free(segment_output *o) {
    if (!o)
        return;
    segment_output_finish(o);
    for (int i = 0; i < 3; i++)
        if (g_installed[i])
            sigaction(g_sigs[i], &g_old[i], NULL);
    g_cancel_mode = 0;
    g_cancel_ctx = NULL;
    g_active = 0;
    free(o);
}
