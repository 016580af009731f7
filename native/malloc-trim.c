/*
 * malloc-trim: hands the C heap's free pages back to the kernel (glibc's malloc_trim(0)).
 *
 * A renewal replaces every credential's key, certificate and TLS contexts, which OpenSSL
 * allocates with malloc in whichever thread built them (the main thread and each data-plane
 * worker). Freed, that memory goes back to glibc's per-thread arenas but mostly not to the
 * kernel: free chunks between live ones are kept, so the agent's resident size settles
 * ~25-30 MB higher after renewals (bench/agent.ts, --workers 4). malloc_trim(0) releases
 * the free pages of every arena (madvise), whatever their place in the heap.
 *
 * A Node-API addon with one function, trim() -> boolean (whether memory was released;
 * false where the C library has no malloc_trim). Like sock-diag.c it needs no Node headers.
 * Build: scripts/build-native.mjs (run by `npm install`).
 */
#include <stdint.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

typedef struct napi_env__ *napi_env;
typedef struct napi_value__ *napi_value;
typedef struct napi_callback_info__ *napi_callback_info;
typedef int napi_status;
typedef napi_value (*napi_callback)(napi_env env, napi_callback_info info);
#define NAPI_AUTO_LENGTH ((size_t)-1)

extern napi_status napi_get_boolean(napi_env, int, napi_value *);
extern napi_status napi_create_function(napi_env, const char *, size_t, napi_callback, void *, napi_value *);
extern napi_status napi_set_named_property(napi_env, napi_value, const char *, napi_value);

static napi_value js_trim(napi_env env, napi_callback_info info) {
  (void)info;
  int released = 0;
#if defined(__GLIBC__)
  released = malloc_trim(0);
#endif
  napi_value out;
  if (napi_get_boolean(env, released != 0, &out) != 0) return NULL;
  return out;
}

__attribute__((visibility("default"))) int32_t node_api_module_get_api_version_v1(void) { return 8; }

__attribute__((visibility("default"))) napi_value napi_register_module_v1(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "trim", NAPI_AUTO_LENGTH, js_trim, NULL, &fn) != 0) return NULL;
  if (napi_set_named_property(env, exports, "trim", fn) != 0) return NULL;
  return exports;
}
