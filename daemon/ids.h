/* User and group names, read straight from /etc/passwd and /etc/group.
 *
 * The daemon is linked statically (idle RSS, issue 6), and a static glibc's
 * getpwnam()/getgrnam()/getpwuid_r() load the NSS modules nsswitch.conf
 * names ("systemd", "sss", ...) at run time. Those are built against the
 * shared libc and crash the static program (getgrnam() of an unknown name
 * segfaulted), so the daemon never calls NSS: names are looked up in the two
 * files only, and a name known only to another source (LDAP, systemd's
 * dynamic users) has to be given as a number. */
#ifndef DAEMON_IDS_H
#define DAEMON_IDS_H

#include <pwd.h>
#include <stddef.h>
#include <sys/types.h>

#define IDS_PASSWD "/etc/passwd"
#define IDS_GROUP  "/etc/group"

/* `arg` is a number (decimal digits only, below 2^32 - 1) or a name listed
 * in `file` ("name:password:id:...", as in passwd(5) and group(5); the first
 * line with that name wins, lines starting with '#' and malformed lines are
 * skipped). Returns 0 with *out set, or -1 when `arg` is neither a number
 * nor a name in the file (also when the file cannot be read). */
int ids_parse(const char *file, const char *arg, unsigned *out);

/* getpwuid_r(3) over the passwd file `file` (fgetpwent_r(3), no NSS): 0 with
 * *result = pwd when `uid` is listed (strings in `buf`), 0 with *result =
 * NULL when it is not, an errno value otherwise (ERANGE: `buf` too small,
 * call again with a larger one). */
int ids_getpwuid_r(const char *file, uid_t uid, struct passwd *pwd, char *buf,
                   size_t buflen, struct passwd **result);

/* ids_getpwuid_r() over /etc/passwd. The static link routes libuv's use of
 * getpwuid_r() (uv_os_get_passwd, in libuv's core object, so always linked)
 * here with -Wl,--wrap=getpwuid_r: glibc's NSS version is never linked. */
int __wrap_getpwuid_r(uid_t uid, struct passwd *pwd, char *buf, size_t buflen,
                      struct passwd **result);

#endif
