/* Runs a kiln ahead-of-time object: reads the input tensor from a .npy file
 * (float32, C order, the model's input shape) or a raw float32 file, runs
 * the model and prints the top-5 logits.
 *
 * usage: main [INPUT|-] [RUNS] [OUTPUT.raw|-] [THREADS]
 *   INPUT   .npy or raw float32 file ("-" or absent: a fixed pattern)
 *   RUNS    times to run (for timing; default 1)
 *   OUTPUT  write the whole output tensor here as raw float32
 *   THREADS run through the parallel entry point on model.h's default
 *           pthread pool of this many threads (default 1: the serial
 *           entry point); the output must then equal the serial call's
 *           bit for bit, or main fails
 *
 * It prints the median and minimum time per run (ms) and the top-5 logits.
 *
 * It calls the checked entry point, kiln_<name>_run_sized, after checking
 * that each of its error codes comes back for the mistake it names (and
 * that the output is then untouched); the scratch is filled with garbage,
 * not zeros, because the object needs no initialised scratch. Built by the
 * Makefile beside this file, which compiles the model with `kiln compile`
 * and passes -DKILN_MODEL_HEADER="model.h" -DKILN_NAME=<name>. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KILN_PTHREAD_POOL /* the header's default parallel-for */
#include KILN_MODEL_HEADER

#define CAT3(a, b, c) a##b##c
#define SYM(name, suffix) CAT3(kiln_, name, suffix)
#define MAC3(a, b, c) a##b##c
#define MAC(name, suffix) MAC3(KILN_, name, suffix)

static long read_input(const char *path, float *dst, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    unsigned char magic[8];
    size_t got = fread(magic, 1, 8, f);
    if (got == 8 && memcmp(magic, "\x93NUMPY", 6) == 0) {
        /* .npy: header length (u16 for v1, u32 for v2/v3), then the dict */
        unsigned long hlen;
        if (magic[6] == 1) {
            unsigned char b[2];
            if (fread(b, 1, 2, f) != 2) goto bad;
            hlen = b[0] | (b[1] << 8);
        } else {
            unsigned char b[4];
            if (fread(b, 1, 4, f) != 4) goto bad;
            hlen = b[0] | (b[1] << 8) | ((unsigned long)b[2] << 16) | ((unsigned long)b[3] << 24);
        }
        char *h = malloc(hlen + 1);
        if (!h || fread(h, 1, hlen, f) != hlen) goto bad;
        h[hlen] = 0;
        if (!strstr(h, "'<f4'") || strstr(h, "'fortran_order': True")) {
            fprintf(stderr, "%s: need a little-endian float32 C-order array: %s\n", path, h);
            free(h);
            fclose(f);
            return -1;
        }
        free(h);
    } else {
        rewind(f); /* raw float32 */
    }
    got = fread(dst, sizeof(float), n, f);
    fclose(f);
    if (got != n) {
        fprintf(stderr, "%s: expected %zu floats, read %zu\n", path, n, got);
        return -1;
    }
    return (long)got;
bad:
    fprintf(stderr, "%s: truncated .npy header\n", path);
    fclose(f);
    return -1;
}

#define RUN_SIZED SYM(KILN_NAME, _run_sized)
#define RUN_SIZED_PARALLEL SYM(KILN_NAME, _run_sized_parallel)

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
#define CODE(suffix) MAC(KILN_UPPER, suffix)

/* Each mistake gets its own code and leaves the output as it was. */
static int check_errors(const float *in, size_t n_in, float *out, size_t n_out,
                        unsigned char *scratch, size_t sb) {
    struct {
        const char *what;
        int got, want;
    } cases[] = {
        {"NULL input", RUN_SIZED(NULL, n_in, out, n_out, scratch, sb), CODE(_ERR_NULL)},
        {"short input", RUN_SIZED(in, n_in - 1, out, n_out, scratch, sb), CODE(_ERR_INPUT_SIZE)},
        {"long output", RUN_SIZED(in, n_in, out, n_out + 1, scratch, sb), CODE(_ERR_OUTPUT_SIZE)},
        {"small scratch", RUN_SIZED(in, n_in, out, n_out, scratch, sb - 1), CODE(_ERR_SCRATCH_SIZE)},
        {"misaligned scratch", RUN_SIZED(in, n_in, out, n_out, scratch + 4, sb), CODE(_ERR_ALIGN)},
        {"output in scratch", RUN_SIZED(in, n_in, (float *)scratch, n_out, scratch, sb),
         CODE(_ERR_OVERLAP)},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        if (cases[c].got != cases[c].want) {
            fprintf(stderr, "%s: returned %d (%s), expected %d\n", cases[c].what, cases[c].got,
                    SYM(KILN_NAME, _strerror)(cases[c].got), cases[c].want);
            return -1;
        }
    }
    for (size_t i = 0; i < n_out; i++) {
        if (out[i] != -7.0f) {
            fprintf(stderr, "a refused call wrote output[%zu]\n", i);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    const size_t n_in = MAC(KILN_UPPER, _INPUT_ELEMS);
    const size_t n_out = MAC(KILN_UPPER, _OUTPUT_ELEMS);
    float *in = aligned_alloc(64, (n_in * 4 + 63) / 64 * 64);
    float *out = aligned_alloc(64, (n_out * 4 + 63) / 64 * 64);
    size_t sb = SYM(KILN_NAME, _scratch_bytes)();
    void *scratch = aligned_alloc(64, (sb + 63) / 64 * 64);
    if (!in || !out || !scratch) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* garbage, not zeros: the object must not read scratch it did not write */
    memset(scratch, 0xA5, sb);
    if (argc > 1 && strcmp(argv[1], "-") != 0) {
        if (read_input(argv[1], in, n_in) < 0) return 1;
    } else {
        for (size_t i = 0; i < n_in; i++) in[i] = (float)((i * 7919) % 1000) / 500.0f - 1.0f;
    }
    for (size_t i = 0; i < n_out; i++) out[i] = -7.0f;
    if (check_errors(in, n_in, out, n_out, scratch, sb) != 0) return 3;
    int runs = argc > 2 ? atoi(argv[2]) : 1;
    if (runs < 1) runs = 1;
    int threads = argc > 4 ? atoi(argv[4]) : 1;
    /* with threads: the serial call's output, to compare bit for bit */
    float *serial = NULL;
    kiln_pthread_pool *pool = NULL;
    if (threads > 1) {
        serial = malloc(n_out * sizeof(float));
        pool = kiln_pthread_pool_create(threads);
        if (!serial || !pool) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        int rc = RUN_SIZED(in, n_in, serial, n_out, scratch, sb);
        if (rc != CODE(_OK)) {
            fprintf(stderr, "serial run failed (%d: %s)\n", rc, SYM(KILN_NAME, _strerror)(rc));
            return 1;
        }
        /* the parallel call must write every element itself */
        memset(scratch, 0xA5, sb);
    }
    double *ms = malloc((size_t)runs * sizeof(double));
    if (!ms) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (int r = 0; r < runs; r++) {
        /* the checked entry point: a clear error, not SIGILL, on a CPU
         * without the object's features, nor out-of-bounds accesses */
        double t0 = now_ms();
        int rc = threads > 1 ? RUN_SIZED_PARALLEL(in, n_in, out, n_out, scratch, sb,
                                                  kiln_pthread_pool_parallel_for, pool)
                             : RUN_SIZED(in, n_in, out, n_out, scratch, sb);
        ms[r] = now_ms() - t0;
        if (rc != CODE(_OK)) {
            fprintf(stderr, "run failed (%d: %s)\n", rc, SYM(KILN_NAME, _strerror)(rc));
            return 1;
        }
        if (serial && memcmp(serial, out, n_out * sizeof(float)) != 0) {
            for (size_t i = 0; i < n_out; i++) {
                if (memcmp(&serial[i], &out[i], sizeof(float)) != 0) {
                    fprintf(stderr, "run %d on %d threads: output[%zu] = %.9g, serial %.9g\n", r,
                            threads, i, out[i], serial[i]);
                    break;
                }
            }
            return 4;
        }
    }
    qsort(ms, (size_t)runs, sizeof(double), cmp_double);
    printf("%d run(s) on %d thread(s): median %.3f ms, min %.3f ms\n", runs, threads, ms[runs / 2],
           ms[0]);
    free(ms);
    kiln_pthread_pool_destroy(pool);
    free(serial);
    if (argc > 3 && strcmp(argv[3], "-") != 0) { /* the whole output, raw float32, for tests */
        FILE *f = fopen(argv[3], "wb");
        if (!f || fwrite(out, sizeof(float), n_out, f) != n_out || fclose(f) != 0) {
            perror(argv[3]);
            return 1;
        }
    }
    /* top-5 (ties: lower index first), as `kiln run` prints them */
    int best[5] = {-1, -1, -1, -1, -1};
    for (size_t i = 0; i < n_out; i++) {
        for (int k = 0; k < 5; k++) {
            if (best[k] < 0 || out[i] > out[best[k]]) {
                for (int j = 4; j > k; j--) best[j] = best[j - 1];
                best[k] = (int)i;
                break;
            }
        }
    }
    printf("top-5 of %zu:\n", n_out);
    for (int k = 0; k < 5 && best[k] >= 0; k++)
        printf("  %d. index %5d  value %.6f\n", k + 1, best[k], out[best[k]]);
    free(in);
    free(out);
    free(scratch);
    return 0;
}
