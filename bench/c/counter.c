/* The reload counter written by hand in C, as a careful programmer would without a library:
 * the session id from the cookie (or 24 fresh random bytes), the session's file opened and
 * locked (flock), the count read, incremented and written back, the cookie sent.
 *
 * Built twice: saving in place (pwrite over the old count: fast, but a kill or a power cut in
 * the middle of the write can tear it) and, with -DRENAME, saving by a temporary file renamed
 * over the old one (atomic, and a new inode per save). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <unistd.h>

static int valid(const char *id) {
    if (strlen(id) != 48) return 0;
    for (int i = 0; i < 48; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return 0;
    return 1;
}

int main(void) {
    const char *dir = getenv("PSOSessionFileLoader_Path");
    if (!dir) dir = "/tmp";
    char id[49] = {0};
    const char *cookie = getenv("HTTP_COOKIE");
    const char *found = cookie ? strstr(cookie, "counter=") : NULL;
    if (found) {
        strncpy(id, found + 8, 48);
        if (!valid(id)) id[0] = 0;
    }
    if (!id[0]) {
        unsigned char raw[24];
        if (getrandom(raw, sizeof raw, 0) != sizeof raw) return 1;
        for (int i = 0; i < 24; i++) sprintf(id + 2 * i, "%02x", raw[i]);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/counter.%s", dir, id);
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) return 1;
    unsigned long n = 0;
    char buf[32] = {0};
    if (pread(fd, buf, sizeof buf - 1, 0) > 0) n = strtoul(buf, NULL, 10);
    n++;
    int len = snprintf(buf, sizeof buf, "%lu", n);
#ifdef RENAME
    char temp[4200];
    snprintf(temp, sizeof temp, "%s.%d.tmp", path, getpid());
    int t = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (t < 0 || write(t, buf, len) != len || rename(temp, path) != 0) return 1;
    close(t);
#else
    if (pwrite(fd, buf, len, 0) != len) return 1;
#endif
    close(fd);
    printf("Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
           "Set-Cookie: counter=%s; HttpOnly; SameSite=Lax; Path=/\r\n\r\n"
           "Hello World! ~ You reloaded: %lu times ~ Try Reload !", id, n);
    return 0;
}
