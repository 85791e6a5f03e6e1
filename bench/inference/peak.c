/* FP32 multiply-add peak of one core: independent FMA chains in registers, no memory.
 * The inference benchmark compiles this (cc -O2 -march=native) and runs one copy per
 * thread at once, to say how close each runtime's convolutions come to the hardware. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#elif defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#else
#error "needs FMA (x86-64 with AVX2/FMA or AVX-512)"
#endif

#define CHAINS 12

int main(void) {
    vec acc[CHAINS];
    const vec b = SET1(1.0000001f), c = SET1(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = SET1((float)i);
    const long n = 100000000L;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
        for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], b, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    float out[LANES], sum = 0;
    for (int i = 0; i < CHAINS; i++) {
        STORE(out, acc[i]);
        sum += out[0];
    }
    /* the sum keeps the loop from being optimised away; the figure is GFLOP/s */
    printf("%.2f %g\n", (double)n * CHAINS * LANES * 2 / dt / 1e9, (double)sum);
    return 0;
}
