/*
 * standin: starts, feeds and stops test/support/localapi_standin.py for C tests.
 *
 * The stand-in is a child process in a private temp dir. Start-up synchronises on the
 * ready file the stand-in writes once its socket is listening: a poll with a deadline
 * that also notices the child dying early, so a broken python fails the test fast
 * instead of hanging it. The child is told our pid (--owner-pid) and exits when we are
 * gone, even if the test crashed before standin_stop().
 */
#include "standin.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef WP_SOURCE_DIR
#error "WP_SOURCE_DIR must be defined by the build"
#endif

#define STANDIN_SCRIPT WP_SOURCE_DIR "/test/support/localapi_standin.py"
#define STANDIN_START_MS 20000 /* python start-up on a loaded 2-core box */
#define STANDIN_STOP_MS 5000
#define STANDIN_ZERO_KEY "0000000000000000000000000000000000000000000000000000000000000000"

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

const char *standin_path(const standin *s, const char *name, char *buf, unsigned long bufsz)
{
    snprintf(buf, bufsz, "%s/%s", s->dir, name);
    return buf;
}

static int write_file_atomic(const char *dir, const char *path, const char *text)
{
    char tmp[160];
    snprintf(tmp, sizeof(tmp), "%s/.state.XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        perror("standin: mkstemp");
        return -1;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("standin: write state");
            close(fd);
            unlink(tmp);
            return -1;
        }
        off += (size_t)n;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        perror("standin: replace state");
        unlink(tmp);
        return -1;
    }
    return 0;
}

int standin_write_state(const standin *s, const char *json)
{
    return write_file_atomic(s->dir, s->state_path, json ? json : "");
}

static pid_t spawn(const standin *s, const char *ready_path)
{
    int logfd = open(s->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) {
        perror("standin: open log");
        return -1;
    }
    char owner[32];
    snprintf(owner, sizeof(owner), "%ld", (long)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        dup2(logfd, STDOUT_FILENO);
        dup2(logfd, STDERR_FILENO);
        execlp("python3", "python3", STANDIN_SCRIPT, "--socket", s->socket_path, "--state",
               s->state_path, "--ready-file", ready_path, "--owner-pid", owner, (char *)NULL);
        _exit(127);
    }
    close(logfd);
    if (pid < 0)
        perror("standin: fork");
    return pid;
}

/* Bounded poll for the ready file; fails early if the child exits. */
static int wait_ready(standin *s, const char *ready_path)
{
    long long deadline = mono_ms() + STANDIN_START_MS;
    struct stat st;
    while (mono_ms() < deadline) {
        if (stat(ready_path, &st) == 0)
            return 0;
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            fprintf(stderr, "standin: exited during start-up (status %d); log: %s\n", status,
                    s->log_path);
            s->pid = 0;
            return -1;
        }
        nap_ms(10);
    }
    fprintf(stderr, "standin: not ready after %d ms; log: %s\n", STANDIN_START_MS, s->log_path);
    return -1;
}

int standin_start(standin *s, const char *initial_state)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "/tmp/wp-standin.XXXXXX");
    if (!mkdtemp(s->dir)) {
        perror("standin: mkdtemp");
        s->dir[0] = '\0';
        return -1;
    }
    standin_path(s, "localapi.sock", s->socket_path, sizeof(s->socket_path));
    standin_path(s, "state.json", s->state_path, sizeof(s->state_path));
    standin_path(s, "standin.log", s->log_path, sizeof(s->log_path));
    char ready[128];
    standin_path(s, "ready", ready, sizeof(ready));

    if (standin_write_state(s, initial_state ? initial_state : "{\"identities\": []}") != 0)
        goto fail;
    s->pid = spawn(s, ready);
    if (s->pid <= 0) {
        s->pid = 0;
        goto fail;
    }
    if (wait_ready(s, ready) != 0)
        goto fail;
    return 0;
fail:
    standin_stop(s);
    return -1;
}

static void stop_child(standin *s)
{
    if (s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    long long deadline = mono_ms() + STANDIN_STOP_MS;
    int status;
    while (waitpid(s->pid, &status, WNOHANG) == 0) {
        if (mono_ms() >= deadline) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, &status, 0);
            break;
        }
        nap_ms(10);
    }
    s->pid = 0;
}

int standin_restart(standin *s)
{
    stop_child(s);
    char ready[128];
    standin_path(s, "ready", ready, sizeof(ready));
    if (unlink(ready) != 0 && errno != ENOENT) {
        perror("standin: unlink ready");
        return -1;
    }
    s->pid = spawn(s, ready);
    if (s->pid <= 0) {
        s->pid = 0;
        return -1;
    }
    return wait_ready(s, ready);
}

int standin_log_count(const standin *s, const char *needle)
{
    FILE *f = fopen(s->log_path, "r");
    if (!f)
        return -1;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

void standin_stop(standin *s)
{
    stop_child(s);
    if (s->dir[0]) {
        if (getenv("WP_STANDIN_KEEP") == NULL)
            nftw(s->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
        else
            fprintf(stderr, "standin: kept %s\n", s->dir);
        s->dir[0] = '\0';
    }
}

/* "alice-laptop.tail1234.ts.net." -> "alice-laptop" */
static char *first_label(const char *fqdn)
{
    size_t n = strcspn(fqdn, ".");
    return strndup(fqdn, n);
}

static json_t *load_or_null(const char *text, int want_array)
{
    if (!text)
        return json_null();
    json_t *v = json_loads(text, 0, NULL);
    if (!v || (want_array ? !json_is_array(v) : !json_is_object(v))) {
        json_decref(v);
        return NULL;
    }
    return v;
}

char *standin_whois_json(const char *login, const char *node_name, const char *stable_id,
                         const char *tags_json, const char *capmap_json)
{
    json_t *tags = load_or_null(tags_json, 1);
    json_t *capmap = load_or_null(capmap_json, 0);
    char *label = node_name ? first_label(node_name) : NULL;
    char *out = NULL;
    if (login && node_name && stable_id && tags && capmap && label) {
        int tagged = strcmp(login, "tagged-devices") == 0;
        json_t *node = json_pack(
            "{s:I, s:s, s:s, s:I, s:s, s:s, s:[s], s:[s], s:O, s:b, s:s, s:s}", "ID",
            (json_int_t)12345, "StableID", stable_id, "Name", node_name, "User",
            (json_int_t)(tagged ? 1 : 7), "Key", "nodekey:" STANDIN_ZERO_KEY, "KeyExpiry",
            "0001-01-01T00:00:00Z", "Addresses", "100.64.0.1/32", "AllowedIPs", "100.64.0.1/32",
            "Tags", tags, "Online", 1, "ComputedName", label, "ComputedNameWithHost", label);
        if (node && json_is_null(tags))
            json_object_del(node, "Tags"); /* omitempty, as tailcfg.Node encodes it */
        json_t *doc = json_pack("{s:o?, s:{s:I, s:s, s:s, s:s, s:[]}, s:O}", "Node", node,
                                "UserProfile", "ID", (json_int_t)(tagged ? 1 : 7), "LoginName",
                                login, "DisplayName", tagged ? "Tagged Devices" : login,
                                "ProfilePicURL", "", "Roles", "CapMap", capmap);
        if (doc)
            out = json_dumps(doc, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
        json_decref(doc);
    }
    json_decref(tags);
    json_decref(capmap);
    free(label);
    return out;
}

int standin_set_identity(const standin *s, const char *match, const char *login,
                         const char *node_name, const char *capmap_json)
{
    char *whois = standin_whois_json(login, node_name, "nStandin1CNTRL", NULL, capmap_json);
    if (!whois)
        return -1;
    json_t *w = json_loads(whois, 0, NULL);
    free(whois);
    json_t *doc =
        w ? json_pack("{s:[{s:s, s:o}]}", "identities", "match", match, "whois", w) : NULL;
    char *text = doc ? json_dumps(doc, JSON_PRESERVE_ORDER) : NULL;
    json_decref(doc);
    int rc = text ? standin_write_state(s, text) : -1;
    free(text);
    return rc;
}
