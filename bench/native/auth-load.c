/*
 * Native load client for bench/auth.ts: many bots, each with its own identity and its own
 * mutual-TLS connection, one request at a time, so that the client takes little of the two
 * cores the auth server runs on (the bench's Node client costs about what the server does
 * per request). Compiled by the bench with cc.
 *
 *   auth-load keepalive PORT SECONDS DIR BOTS PATH BODY_FILE [FIRST]
 *       POSTs BODY_FILE's bytes to PATH over and over on each bot's kept-alive connection.
 *   auth-load renew PORT SECONDS DIR BOTS HEARTBEAT_FILE [FIRST]
 *       Renews over and over, as the bench's "renew (new conn each)" row: a new P-256 key,
 *       POST /v1/renew on the connection of the identity held, then a new connection with
 *       the new identity and the heartbeat (HEARTBEAT_FILE) that confirms it; that
 *       connection is the one the next renewal goes out on. One operation is both requests.
 *
 * DIR holds ca.pem (the auth service's TLS CA) and id-0.pem … , each a bot's private key and
 * certificate, written there by the bench (a private 0600 bench directory: OpenSSL reads
 * files). Bot i starts as id-(FIRST+i).pem (FIRST: 0). Every connection checks the server's
 * certificate against ca.pem and its name against memid-auth, as the agent does. New keys
 * and certificates stay in memory. A thread per bot, blocking I/O.
 *
 * Prints "start" once every bot is connected (the bench starts the server's CPU clock
 * there), then one line of key=value pairs: count, errors, seconds, rate, p50_us, p99_us.
 * An answer other than 200 is an error, and that bot stops, as in the Node client.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
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
#define ANSWER_MAX (64 * 1024)

static int renewing;
static int port;
static double seconds;
static const char *dir;
static int first;
static const char *path;
static char body[16 * 1024];
static size_t body_len;
static pthread_barrier_t ready;
static double deadline;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

struct bot {
  int index;
  SSL_CTX *ctx; /* the CA and the server-name check; each connection brings its identity */
  X509 *cert;
  EVP_PKEY *key;
  SSL *ssl;
  int fd;
  struct latencies *stats;
};

static void hang_up(struct bot *b) {
  if (b->ssl == NULL) return;
  SSL_free(b->ssl);
  close(b->fd);
  b->ssl = NULL;
}

/* A new connection presenting the bot's current identity; 0 once the handshake is done. */
static int dial(struct bot *b) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  b->fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(b->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  b->ssl = SSL_new(b->ctx);
  if (connect(b->fd, (struct sockaddr *)&a, sizeof a) != 0) return -1;
  if (SSL_use_certificate(b->ssl, b->cert) != 1 || SSL_use_PrivateKey(b->ssl, b->key) != 1) return -1;
  SSL_set_tlsext_host_name(b->ssl, SERVER_NAME);
  SSL_set1_host(b->ssl, SERVER_NAME);
  SSL_set_fd(b->ssl, b->fd);
  return SSL_connect(b->ssl) == 1 ? 0 : -1;
}

static int load_identity(struct bot *b) {
  char file[4096];
  snprintf(file, sizeof file, "%s/id-%d.pem", dir, first + b->index);
  FILE *f = fopen(file, "r");
  if (f == NULL) return -1;
  b->key = PEM_read_PrivateKey(f, NULL, NULL, NULL);
  b->cert = PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  b->ctx = SSL_CTX_new(TLS_client_method());
  snprintf(file, sizeof file, "%s/ca.pem", dir);
  if (b->key == NULL || b->cert == NULL || SSL_CTX_load_verify_locations(b->ctx, file, NULL) != 1) return -1;
  SSL_CTX_set_verify(b->ctx, SSL_VERIFY_PEER, NULL);
  return 0;
}

/*
 * POSTs `payload` to `target` and reads the answer, Content-Length framed, into `answer`
 * (NUL-terminated); returns the status code, or -1 (closed, malformed, too long).
 */
static int post(struct bot *b, const char *target, const char *payload, size_t n, char *answer) {
  char head[512];
  int h = snprintf(head, sizeof head, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n", target, SERVER_NAME, n);
  char *req = malloc((size_t)h + n);
  memcpy(req, head, (size_t)h);
  memcpy(req + h, payload, n);
  int w = SSL_write(b->ssl, req, h + (int)n);
  free(req);
  if (w != h + (int)n) return -1;
  size_t got = 0;
  char *end = NULL;
  while (end == NULL) {
    if (got == ANSWER_MAX - 1) return -1;
    int r = SSL_read(b->ssl, answer + got, (int)(ANSWER_MAX - 1 - got));
    if (r <= 0) return -1;
    got += (size_t)r;
    answer[got] = 0;
    end = strstr(answer, "\r\n\r\n");
  }
  int status = 0;
  if (sscanf(answer, "HTTP/1.1 %d", &status) != 1) return -1;
  size_t length = 0;
  int framed = 0;
  for (char *line = strstr(answer, "\r\n"); line != NULL && line < end; line = strstr(line + 2, "\r\n")) {
    if (strncasecmp(line + 2, "content-length:", 15) == 0) {
      length = strtoul(line + 17, NULL, 10);
      framed = 1;
    }
  }
  size_t start = (size_t)(end + 4 - answer);
  if (!framed || start + length >= ANSWER_MAX) return -1;
  while (got < start + length) {
    int r = SSL_read(b->ssl, answer + got, (int)(start + length - got));
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  memmove(answer, answer + start, length);
  answer[length] = 0;
  return status;
}

/* The value of a JSON string member of `json` (only the \n and \" escapes a PEM answer has), or NULL. */
static char *json_string(const char *json, const char *name) {
  char key[64];
  snprintf(key, sizeof key, "\"%s\":\"", name);
  const char *p = strstr(json, key);
  if (p == NULL) return NULL;
  p += strlen(key);
  char *out = malloc(strlen(p) + 1), *o = out;
  for (; *p && *p != '"'; p++) {
    if (*p == '\\' && p[1] == 'n') *o++ = '\n', p++;
    else if (*p == '\\' && p[1] != 0) *o++ = *++p;
    else *o++ = *p;
  }
  *o = 0;
  return out;
}

/* One renewal: new key, renew on the held connection, heartbeat on a new one with the new identity. */
static int renew_once(struct bot *b, char *answer) {
  EVP_PKEY *key = EVP_EC_gen("P-256");
  BIO *pub = BIO_new(BIO_s_mem());
  PEM_write_bio_PUBKEY(pub, key);
  char *pem;
  long pem_len = BIO_get_mem_data(pub, &pem);
  char payload[1024];
  size_t n = 0;
  n += (size_t)snprintf(payload, sizeof payload, "{\"publicKey\":\"");
  for (long i = 0; i < pem_len && n < sizeof payload - 32; i++) {
    if (pem[i] == '\n') payload[n++] = '\\', payload[n++] = 'n';
    else payload[n++] = pem[i];
  }
  n += (size_t)snprintf(payload + n, sizeof payload - n, "\",\"ttl\":\"1h\"}");
  BIO_free(pub);
  int status = post(b, "/v1/renew", payload, n, answer);
  char *cert_pem = status == 200 ? json_string(answer, "certificate") : NULL;
  X509 *cert = NULL;
  if (cert_pem != NULL) {
    BIO *in = BIO_new_mem_buf(cert_pem, -1);
    cert = PEM_read_bio_X509(in, NULL, NULL, NULL);
    BIO_free(in);
    free(cert_pem);
  }
  if (cert == NULL) {
    EVP_PKEY_free(key);
    return status == 200 ? -1 : status;
  }
  hang_up(b);
  X509_free(b->cert);
  EVP_PKEY_free(b->key);
  b->cert = cert;
  b->key = key;
  if (dial(b) != 0) return -1;
  return post(b, "/v1/heartbeat", body, body_len, answer);
}

static void *bot_loop(void *arg) {
  struct bot *b = arg;
  if (load_identity(b) != 0 || dial(b) != 0) {
    ERR_print_errors_fp(stderr);
    fprintf(stderr, "bot %d: cannot connect\n", b->index);
    exit(1);
  }
  pthread_barrier_wait(&ready);
  pthread_barrier_wait(&ready);
  char *answer = malloc(ANSWER_MAX);
  while (now() < deadline) {
    double t0 = now();
    int status = renewing ? renew_once(b, answer) : post(b, path, body, body_len, answer);
    if (status != 200) {
      if (b->stats->errors++ == 0) fprintf(stderr, "bot %d: %s %d\n", b->index, status < 0 ? "bad answer or closed" : "status", status);
      break;
    }
    latencies_add(b->stats, now() - t0);
  }
  free(answer);
  return NULL;
}

int main(int argc, char **argv) {
  renewing = argc >= 2 && strcmp(argv[1], "renew") == 0;
  int args = renewing ? 7 : 8;
  if (argc < 2 || (!renewing && strcmp(argv[1], "keepalive") != 0) || (argc != args && argc != args + 1)) {
    fprintf(stderr, "usage: auth-load keepalive PORT SECONDS DIR BOTS PATH BODY_FILE [FIRST]\n"
                    "       auth-load renew PORT SECONDS DIR BOTS HEARTBEAT_FILE [FIRST]\n");
    return 2;
  }
  port = atoi(argv[2]);
  seconds = atof(argv[3]);
  dir = argv[4];
  int n = atoi(argv[5]);
  path = renewing ? NULL : argv[6];
  FILE *f = fopen(argv[args - 1], "rb");
  first = argc == args + 1 ? atoi(argv[args]) : 0;
  if (f == NULL || n < 1 || port < 1 || seconds <= 0) {
    fprintf(stderr, "auth-load: bad arguments\n");
    return 2;
  }
  body_len = fread(body, 1, sizeof body, f);
  fclose(f);

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
