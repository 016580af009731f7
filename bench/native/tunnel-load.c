/*
 * Native load client (and plaintext echo server) for bench/db-tunnel.ts, so that the
 * client is never what limits the tunnel under test. Compiled by the bench with cc.
 *
 *   tunnel-load echo PORT                      echo server on 127.0.0.1:PORT, a thread per connection
 *   tunnel-load conn PORT THREADS SECONDS      connect, 64 B round trip, close, in a loop per thread
 *   tunnel-load bulk PORT SECONDS              one connection, send and read back (echo) as fast as possible
 *   tunnel-load ping PORT COUNT                one connection, 64 B ping-pong
 *
 * With MEMID_TLS_CA, MEMID_TLS_CERT and MEMID_TLS_KEY set, conn/bulk/ping speak TLS
 * themselves with that client certificate (the direct-to-upstream limit). Every mode
 * prints one line of key=value pairs.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "latencies.h"

static int port;
static double seconds;
static SSL_CTX *ctx;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

struct conn {
  int fd;
  SSL *ssl;
};

static int dial(struct conn *c) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  c->ssl = NULL;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  if (ctx) {
    c->ssl = SSL_new(ctx);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) {
      ERR_print_errors_fp(stderr);
      return -1;
    }
  }
  return 0;
}

static ssize_t cwrite(struct conn *c, const void *b, size_t n) {
  if (c->ssl) return SSL_write(c->ssl, b, (int)n);
  return write(c->fd, b, n);
}

static ssize_t cread(struct conn *c, void *b, size_t n) {
  if (c->ssl) return SSL_read(c->ssl, b, (int)n);
  return read(c->fd, b, n);
}

static int read_full(struct conn *c, char *b, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = cread(c, b + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

static void hang_up(struct conn *c) {
  if (c->ssl) {
    SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
  }
  close(c->fd);
}

/* ---- echo server ---- */
static void *echo_one(void *arg) {
  int fd = (int)(long)arg;
  char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) break;
    ssize_t off = 0;
    while (off < r) {
      ssize_t w = write(fd, buf + off, (size_t)(r - off));
      if (w <= 0) goto out;
      off += w;
    }
  }
out:
  close(fd);
  return NULL;
}

static int echo_server(void) {
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
  if (listen(s, 4096) != 0) die("listen");
  printf("listening=1\n");
  fflush(stdout);
  for (;;) {
    int fd = accept(s, NULL, NULL);
    if (fd < 0) continue;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    pthread_create(&t, &at, echo_one, (void *)(long)fd);
  }
  return 0;
}

/* ---- new connections ---- */
static void *conn_loop(void *arg) {
  struct latencies *st = arg;
  char msg[64], back[64];
  memset(msg, 'm', sizeof msg);
  double until = now() + seconds;
  while (now() < until) {
    double t0 = now();
    struct conn c;
    if (dial(&c) != 0 || cwrite(&c, msg, sizeof msg) != sizeof msg || read_full(&c, back, sizeof back) != 0) {
      st->errors++;
      hang_up(&c);
      continue;
    }
    hang_up(&c);
    latencies_add(st, now() - t0);
  }
  return NULL;
}

static int conn_mode(int threads) {
  pthread_t t[256];
  struct latencies st[256];
  memset(st, 0, sizeof st);
  double t0 = now();
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, conn_loop, &st[i]);
  size_t n = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    n += st[i].n;
  }
  size_t errors = latencies_report(st, threads, now() - t0);
  return errors > n / 100 ? 1 : 0;
}

/* ---- bulk ---- */
static struct conn bulk_conn;
static volatile int bulk_done;

static void *bulk_writer(void *arg) {
  (void)arg;
  static char buf[256 * 1024];
  memset(buf, 'b', sizeof buf);
  double until = now() + seconds;
  size_t *sent = malloc(sizeof(size_t));
  *sent = 0;
  while (now() < until) {
    ssize_t w = cwrite(&bulk_conn, buf, sizeof buf);
    if (w <= 0) break;
    *sent += (size_t)w;
  }
  shutdown(bulk_conn.fd, SHUT_WR);
  return sent;
}

static int bulk_mode(void) {
  if (ctx) {
    /* One SSL object must not be driven from two threads: TLS bulk uses the same loop in turns. */
    fprintf(stderr, "bulk over TLS is not supported by this client\n");
    return 2;
  }
  if (dial(&bulk_conn) != 0) die("connect");
  pthread_t w;
  double t0 = now();
  pthread_create(&w, NULL, bulk_writer, NULL);
  static char buf[256 * 1024];
  size_t got = 0;
  for (;;) {
    ssize_t r = cread(&bulk_conn, buf, sizeof buf);
    if (r <= 0) break;
    got += (size_t)r;
  }
  double elapsed = now() - t0;
  size_t *sent;
  pthread_join(w, (void **)&sent);
  hang_up(&bulk_conn);
  printf("sent=%zu received=%zu seconds=%.3f mb_s=%.1f\n", *sent, got, elapsed, got / 1e6 / elapsed);
  return got == *sent ? 0 : 1;
}

/* ---- ping-pong ---- */
static int ping_mode(int count) {
  struct conn c;
  if (dial(&c) != 0) die("connect");
  char msg[64], back[64];
  memset(msg, 'p', sizeof msg);
  double *lat = malloc((size_t)count * sizeof(double));
  for (int i = 0; i < count; i++) {
    double t0 = now();
    if (cwrite(&c, msg, sizeof msg) != sizeof msg || read_full(&c, back, sizeof back) != 0) die("ping");
    lat[i] = now() - t0;
  }
  hang_up(&c);
  qsort(lat, (size_t)count, sizeof(double), cmp);
  printf("count=%d p50_us=%.1f p99_us=%.1f\n", count, pct(lat, (size_t)count, 0.5) * 1e6, pct(lat, (size_t)count, 0.99) * 1e6);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: tunnel-load echo|conn|bulk|ping PORT ...\n");
    return 2;
  }
  port = atoi(argv[2]);
  const char *ca = getenv("MEMID_TLS_CA"), *cert = getenv("MEMID_TLS_CERT"), *key = getenv("MEMID_TLS_KEY");
  if (ca && cert && key && strcmp(argv[1], "echo") != 0) {
    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 || SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
      ERR_print_errors_fp(stderr);
      return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  }
  if (strcmp(argv[1], "echo") == 0) return echo_server();
  if (strcmp(argv[1], "conn") == 0 && argc >= 5) {
    seconds = atof(argv[4]);
    return conn_mode(atoi(argv[3]) > 256 ? 256 : atoi(argv[3]));
  }
  if (strcmp(argv[1], "bulk") == 0 && argc >= 4) {
    seconds = atof(argv[3]);
    return bulk_mode();
  }
  if (strcmp(argv[1], "ping") == 0 && argc >= 4) return ping_mode(atoi(argv[3]));
  fprintf(stderr, "bad arguments\n");
  return 2;
}
