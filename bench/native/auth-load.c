/*
 * Native keep-alive load client for bench/auth.ts: many bots, each on its own mutual-TLS
 * connection with its own identity, sending one API request after another, so that the
 * client, not the auth server, is not what takes the two cores (the bench's Node client
 * costs about what the server does per request). Compiled by the bench with cc.
 *
 *   auth-load PORT SECONDS DIR CONNECTIONS PATH BODY_FILE [FIRST]
 *
 * DIR holds ca.pem (the auth service's TLS CA) and id-0.pem … id-(CONNECTIONS-1).pem, each
 * a bot's private key and certificate, written there by the bench (a private 0600 bench
 * directory: OpenSSL reads files). Connection i presents id-(FIRST+i).pem (FIRST: 0), checks the server's
 * certificate against ca.pem and its name against memid-auth (as the agent does), then
 * POSTs BODY_FILE's bytes to PATH over and over, with HTTP/1.1 keep-alive, one request
 * at a time, for SECONDS. A thread per connection (blocking I/O).
 *
 * Prints "start" once every connection is up (the bench starts the server's CPU clock
 * there), then one line of key=value pairs: count, errors, seconds, rate, p50_us, p99_us.
 * A response other than 200 is an error, and that bot stops, as in the Node client.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "latencies.h"

#define SERVER_NAME "memid-auth"

static int port;
static double seconds;
static const char *dir;
static int first;
static char *request;
static size_t request_len;
static pthread_barrier_t ready;
static double deadline;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

struct bot {
  int index;
  SSL_CTX *ctx;
  SSL *ssl;
  int fd;
  struct latencies *stats;
};

static int connect_bot(struct bot *b) {
  char file[4096];
  b->ctx = SSL_CTX_new(TLS_client_method());
  snprintf(file, sizeof file, "%s/ca.pem", dir);
  if (SSL_CTX_load_verify_locations(b->ctx, file, NULL) != 1) return -1;
  snprintf(file, sizeof file, "%s/id-%d.pem", dir, first + b->index);
  if (SSL_CTX_use_certificate_chain_file(b->ctx, file) != 1 || SSL_CTX_use_PrivateKey_file(b->ctx, file, SSL_FILETYPE_PEM) != 1) return -1;
  SSL_CTX_set_verify(b->ctx, SSL_VERIFY_PEER, NULL);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  b->fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(b->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(b->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  b->ssl = SSL_new(b->ctx);
  SSL_set_tlsext_host_name(b->ssl, SERVER_NAME);
  SSL_set1_host(b->ssl, SERVER_NAME);
  SSL_set_fd(b->ssl, b->fd);
  return SSL_connect(b->ssl) == 1 ? 0 : -1;
}

/* Reads one response; returns its status code, or -1 (closed, malformed, not Content-Length framed). */
static int read_response(struct bot *b, char *buf, size_t size) {
  size_t got = 0;
  char *end = NULL;
  while (end == NULL) {
    if (got == size - 1) return -1;
    int r = SSL_read(b->ssl, buf + got, (int)(size - 1 - got));
    if (r <= 0) return -1;
    got += (size_t)r;
    buf[got] = 0;
    end = strstr(buf, "\r\n\r\n");
  }
  int status = 0;
  if (sscanf(buf, "HTTP/1.1 %d", &status) != 1) return -1;
  size_t length = 0;
  int framed = 0;
  for (char *line = strstr(buf, "\r\n"); line != NULL && line < end; line = strstr(line + 2, "\r\n")) {
    if (strncasecmp(line + 2, "content-length:", 15) == 0) {
      length = strtoul(line + 17, NULL, 10);
      framed = 1;
    }
  }
  if (!framed) return -1;
  size_t have = got - (size_t)(end + 4 - buf);
  while (have < length) {
    char skip[16384];
    size_t want = length - have < sizeof skip ? length - have : sizeof skip;
    int r = SSL_read(b->ssl, skip, (int)want);
    if (r <= 0) return -1;
    have += (size_t)r;
  }
  return have == length ? status : -1;
}

static void *bot_loop(void *arg) {
  struct bot *b = arg;
  if (connect_bot(b) != 0) {
    ERR_print_errors_fp(stderr);
    fprintf(stderr, "bot %d: cannot connect\n", b->index);
    exit(1);
  }
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&ready);
  static __thread char buf[65536];
  while (now() < deadline) {
    double t0 = now();
    if (SSL_write(b->ssl, request, (int)request_len) != (int)request_len) {
      b->stats->errors++;
      break;
    }
    int status = read_response(b, buf, sizeof buf);
    if (status != 200) {
      if (b->stats->errors++ == 0) fprintf(stderr, "bot %d: %s %d\n", b->index, status < 0 ? "bad response or closed" : "status", status);
      break;
    }
    latencies_add(b->stats, now() - t0);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 7 && argc != 8) {
    fprintf(stderr, "usage: auth-load PORT SECONDS DIR CONNECTIONS PATH BODY_FILE [FIRST]\n");
    return 2;
  }
  port = atoi(argv[1]);
  seconds = atof(argv[2]);
  dir = argv[3];
  int n = atoi(argv[4]);
  const char *path = argv[5];
  first = argc == 8 ? atoi(argv[7]) : 0;
  FILE *f = fopen(argv[6], "rb");
  if (f == NULL || n < 1 || port < 1 || seconds <= 0) {
    fprintf(stderr, "auth-load: bad arguments\n");
    return 2;
  }
  char body[65536];
  size_t body_len = fread(body, 1, sizeof body, f);
  fclose(f);
  request = malloc(body_len + 512);
  request_len = (size_t)snprintf(request, 512, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", path, SERVER_NAME, body_len);
  memcpy(request + request_len, body, body_len);
  request_len += body_len;

  struct bot *bots = calloc((size_t)n, sizeof *bots);
  struct latencies *stats = calloc((size_t)n, sizeof *stats);
  pthread_t *t = calloc((size_t)n, sizeof *t);
  pthread_barrier_init(&ready, NULL, (unsigned)n + 1);
  pthread_attr_t at;
  pthread_attr_init(&at);
  pthread_attr_setstacksize(&at, 256 * 1024);
  for (int i = 0; i < n; i++) {
    bots[i].index = i;
    bots[i].stats = &stats[i];
    pthread_create(&t[i], &at, bot_loop, &bots[i]);
  }
  pthread_barrier_wait(&ready);
  printf("start\n");
  fflush(stdout);
  double t0 = now();
  deadline = t0 + seconds;
  pthread_barrier_wait(&ready);
  for (int i = 0; i < n; i++) pthread_join(t[i], NULL);
  latencies_report(stats, n, now() - t0);
  return 0;
}
