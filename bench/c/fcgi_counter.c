/* The reload counter as a FastCGI application in C with libfcgi, written by hand: what a
 * careful programmer does without a session library. One request at a time per process (run
 * several with spawn-fcgi -F); the session is a file locked with flock, read and written in
 * place. */
#include <fcgiapp.h>
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
    FCGX_Request request;
    FCGX_Init();
    FCGX_InitRequest(&request, 0, 0);
    while (FCGX_Accept_r(&request) >= 0) {
        char id[49] = {0};
        const char *cookie = FCGX_GetParam("HTTP_COOKIE", request.envp);
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
        unsigned long n = 0;
        int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 && flock(fd, LOCK_EX) == 0) {
            char buf[32] = {0};
            if (pread(fd, buf, sizeof buf - 1, 0) > 0) n = strtoul(buf, NULL, 10);
            n++;
            int len = snprintf(buf, sizeof buf, "%lu", n);
            if (pwrite(fd, buf, len, 0) != len) n = 0;
        }
        if (fd >= 0) close(fd);
        char body[128];
        int len = snprintf(body, sizeof body, "Hello World! ~ You reloaded: %lu times ~ Try Reload !", n);
        FCGX_FPrintF(request.out,
                     "Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                     "Content-Length: %d\r\n"
                     "Set-Cookie: counter=%s; HttpOnly; SameSite=Lax; Path=/\r\n\r\n%s",
                     len, id, body);
        FCGX_Finish_r(&request);
    }
    return 0;
}
