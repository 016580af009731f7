/*
 * sock-diag: who owns the client end of a local TCP connection, asked of the kernel by
 * its exact 4-tuple (NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY without NLM_F_DUMP). The
 * kernel answers from one hash lookup, where reading /proc/net/tcp walks every bucket of
 * the TCP hash tables (milliseconds of CPU, whatever the number of sockets). `ss` uses the
 * same interface; it needs no privilege.
 *
 * A Node-API addon with one function:
 *   lookup(family: 4 | 6, src: Uint8Array, sport, dst: Uint8Array, dport)
 *     -> [errno, uid, inode]
 * where src/dst are the client socket's own (local) and peer addresses, 4 or 16 bytes in
 * network order, and errno is 0 when the socket was found (ENOENT when no socket has that
 * 4-tuple). It never blocks: the kernel answers inside sendto(), and the reply is read
 * with MSG_DONTWAIT.
 *
 * No Node headers are needed to build it: the few Node-API functions it calls are
 * declared below as node_api.h declares them (a stable C ABI), and resolved from the node
 * binary when it is loaded. Build: scripts/build-native.mjs (run by `npm install`).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <linux/inet_diag.h>

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status; /* an enum in node_api.h; napi_ok is 0 */
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);
typedef void (*napi_finalize)(napi_env env, void *data, void *hint);
typedef int napi_typedarray_type; /* napi_uint8_array is 1 */
#define NAPI_UINT8_ARRAY 1
#define NAPI_AUTO_LENGTH SIZE_MAX

extern napi_status napi_get_cb_info(napi_env, napi_callback_info, size_t *, napi_value *, napi_value *, void **);
extern napi_status napi_get_value_uint32(napi_env, napi_value, uint32_t *);
extern napi_status napi_get_typedarray_info(napi_env, napi_value, napi_typedarray_type *, size_t *, void **, napi_value *, size_t *);
extern napi_status napi_create_uint32(napi_env, uint32_t, napi_value *);
extern napi_status napi_create_int32(napi_env, int32_t, napi_value *);
extern napi_status napi_create_array_with_length(napi_env, size_t, napi_value *);
extern napi_status napi_set_element(napi_env, napi_value, uint32_t, napi_value);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);
extern napi_status napi_set_instance_data(napi_env, void *, napi_finalize, void *);
extern napi_status napi_throw_type_error(napi_env, const char *, const char *);

/* One netlink socket per Node environment (main thread or worker), opened on first use. */
struct diag {
  int fd;
  uint32_t seq;
};

static void diag_close(napi_env env, void *data, void *hint) {
  struct diag *d = data;
  (void)env;
  (void)hint;
  if (d->fd >= 0) close(d->fd);
  free(d);
}

static int diag_open(struct diag *d) {
  if (d->fd >= 0) return 0;
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) return errno;
  d->fd = fd;
  return 0;
}

/* Asks for the one socket with this 4-tuple; fills uid and inode. Returns 0 or an errno. */
static int diag_lookup(struct diag *d, int family, const uint8_t *src, uint16_t sport,
                       const uint8_t *dst, uint16_t dport, uint32_t *uid, uint32_t *inode) {
  int err = diag_open(d);
  if (err != 0) return err;

  struct {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
  } msg;
  memset(&msg, 0, sizeof msg);
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = ++d->seq;
  msg.req.sdiag_family = (uint8_t)family;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = ~0u;
  msg.req.id.idiag_sport = htons(sport);
  msg.req.id.idiag_dport = htons(dport);
  size_t len = family == AF_INET ? 4 : 16;
  memcpy(msg.req.id.idiag_src, src, len);
  memcpy(msg.req.id.idiag_dst, dst, len);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(d->fd, &msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return errno;

  /* Aligned for the headers; an answer without extensions is under 200 bytes. */
  uint32_t buf[2048];
  for (;;) {
    ssize_t n = recv(d->fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? ETIMEDOUT : errno;
    int left = (int)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      /* A reply to an earlier request that gave up (cannot happen today: the kernel
         answers inside sendto) is skipped, never taken for this one. */
      if (h->nlmsg_seq != d->seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return EPROTO;
        const struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error == 0 ? EPROTO : -e->error;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return EPROTO;
      const struct inet_diag_msg *m = NLMSG_DATA(h);
      /* The kernel looked the socket up by these fields; check it answered for them. */
      if (m->id.idiag_sport != msg.req.id.idiag_sport || m->id.idiag_dport != msg.req.id.idiag_dport) return EPROTO;
      *uid = m->idiag_uid;
      *inode = m->idiag_inode;
      return 0;
    }
  }
}

static napi_value fail(napi_env env, const char *what) {
  napi_throw_type_error(env, "ERR_INVALID_ARG", what);
  return NULL;
}

static int address_arg(napi_env env, napi_value v, size_t want, const uint8_t **out) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  napi_value ab;
  size_t offset;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &offset) != 0) return -1;
  if (type != NAPI_UINT8_ARRAY || length != want) return -1;
  *out = data;
  return 0;
}

static napi_value js_lookup(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  void *data;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, &data) != 0 || argc != 5) return fail(env, "lookup(family, src, sport, dst, dport)");
  uint32_t family, sport, dport;
  if (napi_get_value_uint32(env, argv[0], &family) != 0 || (family != 4 && family != 6)) return fail(env, "family must be 4 or 6");
  if (napi_get_value_uint32(env, argv[2], &sport) != 0 || sport > 65535) return fail(env, "sport must be a port");
  if (napi_get_value_uint32(env, argv[4], &dport) != 0 || dport > 65535) return fail(env, "dport must be a port");
  size_t len = family == 4 ? 4 : 16;
  const uint8_t *src, *dst;
  if (address_arg(env, argv[1], len, &src) != 0 || address_arg(env, argv[3], len, &dst) != 0) return fail(env, "src and dst must be Uint8Arrays of the family's address length");

  uint32_t uid = 0, inode = 0;
  int err = diag_lookup(data, family == 4 ? AF_INET : AF_INET6, src, (uint16_t)sport, dst, (uint16_t)dport, &uid, &inode);

  napi_value out, v;
  napi_create_array_with_length(env, 3, &out);
  napi_create_int32(env, err, &v);
  napi_set_element(env, out, 0, v);
  napi_create_uint32(env, uid, &v);
  napi_set_element(env, out, 1, v);
  napi_create_uint32(env, inode, &v);
  napi_set_element(env, out, 2, v);
  return out;
}

__attribute__((visibility("default"))) int32_t node_api_module_get_api_version_v1(void) { return 8; }

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  struct diag *d = malloc(sizeof *d);
  if (d == NULL) return NULL;
  d->fd = -1;
  d->seq = 0;
  if (napi_set_instance_data(env, d, diag_close, NULL) != 0) {
    free(d);
    return NULL;
  }
  napi_value fn;
  if (napi_create_function(env, "lookup", NAPI_AUTO_LENGTH, js_lookup, d, &fn) != 0) return NULL;
  if (napi_set_named_property(env, exports, "lookup", fn) != 0) return NULL;
  return exports;
}
