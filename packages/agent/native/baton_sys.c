/*
 * baton_sys: the few system calls the agent needs that Node does not expose.
 *
 * - fcntl record locks on a byte range, non-blocking, as open-file-description (OFD) locks where
 *   the kernel has them and classic POSIX locks otherwise. OFD locks belong to the open file
 *   description, so closing some other descriptor of the same file cannot drop them (the trap of
 *   libvirt seed 000), and they survive execve() while the descriptor stays open.
 * - close-on-exec control, for the re-exec that keeps every lock held (libvirt seed 001).
 * - SO_PEERCRED, to know which pid and uid sit behind a local socket connection.
 * - waitpid of one child, without blocking: after a re-exec Node no longer knows the children an
 *   earlier image spawned (the sim VMs), so those that exit would stay zombies for the agent's life.
 *
 * Every call is synchronous: a non-blocking F_SETLK costs about a microsecond, far less than a
 * hop through libuv's thread pool. Failures return -errno instead of throwing, so the caller maps
 * EAGAIN/EACCES to RESOURCE_BUSY without exception overhead on the contended path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(call)                                                      \
  do {                                                                   \
    if ((call) != napi_ok) {                                             \
      napi_throw_error(env, "BATON_SYS", "N-API call failed: " #call);   \
      return NULL;                                                       \
    }                                                                    \
  } while (0)

static napi_value make_int(napi_env env, int64_t v) {
  napi_value out;
  napi_create_int64(env, v, &out);
  return out;
}

static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) {
    napi_throw_type_error(env, "BATON_SYS", "missing arguments");
    return -1;
  }
  return 0;
}

static int get_i64(napi_env env, napi_value v, int64_t *out) {
  if (napi_get_value_int64(env, v, out) != napi_ok) {
    napi_throw_type_error(env, "BATON_SYS", "expected an integer");
    return -1;
  }
  return 0;
}

/* kind: 0 = unlock, 1 = shared (F_RDLCK), 2 = exclusive (F_WRLCK). */
static short lock_type(int64_t kind) {
  return kind == 2 ? F_WRLCK : kind == 1 ? F_RDLCK : F_UNLCK;
}

/* setlk(fd, kind, start, len, ofd) -> 0 or -errno */
static napi_value setlk(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  int64_t fd, kind, start, len;
  bool ofd;
  if (get_args(env, info, 5, argv) || get_i64(env, argv[0], &fd) || get_i64(env, argv[1], &kind) ||
      get_i64(env, argv[2], &start) || get_i64(env, argv[3], &len))
    return NULL;
  CHECK(napi_get_value_bool(env, argv[4], &ofd));
  struct flock fl;
  memset(&fl, 0, sizeof fl); /* l_pid must be 0 for OFD locks */
  fl.l_type = lock_type(kind);
  fl.l_whence = SEEK_SET;
  fl.l_start = (off_t)start;
  fl.l_len = (off_t)len;
  int rc = fcntl((int)fd, ofd ? F_OFD_SETLK : F_SETLK, &fl);
  return make_int(env, rc == 0 ? 0 : -errno);
}

/* setCloexec(fd, on) -> 0 or -errno */
static napi_value set_cloexec(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int64_t fd;
  bool on;
  if (get_args(env, info, 2, argv) || get_i64(env, argv[0], &fd)) return NULL;
  CHECK(napi_get_value_bool(env, argv[1], &on));
  int flags = fcntl((int)fd, F_GETFD);
  if (flags < 0) return make_int(env, -errno);
  flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  return make_int(env, fcntl((int)fd, F_SETFD, flags) == 0 ? 0 : -errno);
}

/* peerCred(fd) -> [pid, uid, gid] or -errno */
static napi_value peer_cred(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t fd;
  if (get_args(env, info, 1, argv) || get_i64(env, argv[0], &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt((int)fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return make_int(env, -errno);
  napi_value out;
  CHECK(napi_create_array_with_length(env, 3, &out));
  CHECK(napi_set_element(env, out, 0, make_int(env, cred.pid)));
  CHECK(napi_set_element(env, out, 1, make_int(env, cred.uid)));
  CHECK(napi_set_element(env, out, 2, make_int(env, cred.gid)));
  return out;
}

/* reapExited(pid) -> pid once reaped, 0 while it runs, or -errno (ECHILD: not this process's child) */
static napi_value reap_exited(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int64_t pid;
  if (get_args(env, info, 1, argv) || get_i64(env, argv[0], &pid)) return NULL;
  int status;
  pid_t rc = waitpid((pid_t)pid, &status, WNOHANG);
  return make_int(env, rc >= 0 ? rc : -errno);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"setlk", NULL, setlk, NULL, NULL, NULL, napi_default, NULL},
      {"setCloexec", NULL, set_cloexec, NULL, NULL, NULL, napi_default, NULL},
      {"peerCred", NULL, peer_cred, NULL, NULL, NULL, napi_default, NULL},
      {"reapExited", NULL, reap_exited, NULL, NULL, NULL, napi_default, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
