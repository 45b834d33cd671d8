#include <ctype.h>
#include <stdio.h>
#include "greet.h"

int main(void) {
    for (const char *p = greeting(); *p; p++) putchar(toupper((unsigned char)*p));
    putchar('\n');
    return 0;
}
