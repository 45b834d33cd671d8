#include <stdio.h>

int main(void) {
    printf("Hello from vorpalfs!\n");
    return 0;
}
