/* The least a CGI program does: print a response. The baseline every ratio starts from. */
#include <stdio.h>

int main(void) {
    fputs("Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
          "Hello World!", stdout);
    return 0;
}
