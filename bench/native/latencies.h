/*
 * What both native load clients (tunnel-load.c, auth-load.c) keep per thread, and the
 * summary line they print: count, errors, seconds, rate, p50_us, p99_us.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct latencies {
  double *lat; /* seconds, one per operation that succeeded */
  size_t n, cap, errors;
};

static void latencies_add(struct latencies *l, double seconds) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 4096;
    l->lat = realloc(l->lat, l->cap * sizeof(double));
  }
  l->lat[l->n++] = seconds;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *xs, size_t n, double p) {
  if (n == 0) return 0;
  size_t i = (size_t)(p * (double)(n - 1));
  return xs[i];
}

/* Merges the threads' samples and prints the summary line; returns the errors. */
static size_t latencies_report(struct latencies *each, int threads, double elapsed) {
  size_t n = 0, errors = 0;
  for (int i = 0; i < threads; i++) {
    n += each[i].n;
    errors += each[i].errors;
  }
  double *all = malloc((n ? n : 1) * sizeof(double));
  size_t k = 0;
  for (int i = 0; i < threads; i++) {
    memcpy(all + k, each[i].lat, each[i].n * sizeof(double));
    k += each[i].n;
  }
  qsort(all, n, sizeof(double), cmp);
  printf("count=%zu errors=%zu seconds=%.3f rate=%.1f p50_us=%.0f p99_us=%.0f\n", n, errors, elapsed, n / elapsed,
         pct(all, n, 0.5) * 1e6, pct(all, n, 0.99) * 1e6);
  fflush(stdout);
  free(all);
  return errors;
}
