/* Unit tests for daemon/ids.c: user and group ids by number or by name from
 * passwd(5)/group(5) files, without NSS (the daemon is linked statically),
 * and the getpwuid_r() that replaces glibc's in the static link. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/ids.h"

static char path[] = "/tmp/blockjobd-test-ids.XXXXXX";

static void write_file(const char *text)
{
    FILE *f = fopen(path, "w");

    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    int fd = mkstemp(path);

    (void)state;
    if (fd < 0) {
        return -1;
    }
    close(fd);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(path);
    return 0;
}

static unsigned parse_ok(const char *arg)
{
    unsigned id = 12345;

    assert_int_equal(ids_parse(path, arg, &id), 0);
    return id;
}

static void parse_fails(const char *arg)
{
    unsigned id = 12345;

    assert_int_equal(ids_parse(path, arg, &id), -1);
    assert_int_equal(id, 12345);
}

/* Numbers are taken as they are, without reading the file; (unsigned)-1
 * ("no change" to chown) and anything that is not all digits are refused.
 * A name cannot start with a digit. */
static void test_numbers(void **state)
{
    (void)state;
    write_file("4343:x:7:\n");
    assert_int_equal(parse_ok("0"), 0);
    assert_int_equal(parse_ok("4343"), 4343);
    assert_int_equal(parse_ok("007"), 7);
    assert_int_equal(parse_ok("4294967294"), 4294967294U);
    parse_fails("4294967295");
    parse_fails("99999999999999999999999");
    parse_fails("12x");
    parse_fails("1 ");
    parse_fails("");
    parse_fails("-1");
    parse_fails("+1");
}

/* group(5) lines: the first line with the name wins; comments, malformed
 * lines and lines whose id is not a number are skipped; names match whole
 * (a prefix or an extension of a name is another name). */
static void test_names(void **state)
{
    (void)state;
    write_file("root:x:0:\n"
               "# blockjobd:x:1:\n"
               "blockjob:x:2:\n"
               "blockjobd-ro:x:3:\n"
               "broken:x\n"
               "noid:x::\n"
               "badid:x:12a:\n"
               "hugeid:x:4294967295:\n"
               "blockjobd:x:998:alice,bob\n"
               "blockjobd:x:999:\n"
               "  spaced:x:55:\n"
               "lastline:*:77");
    assert_int_equal(parse_ok("root"), 0);
    assert_int_equal(parse_ok("blockjobd"), 998);
    assert_int_equal(parse_ok("blockjob"), 2);
    assert_int_equal(parse_ok("blockjobd-ro"), 3);
    assert_int_equal(parse_ok("spaced"), 55);
    assert_int_equal(parse_ok("lastline"), 77);
    parse_fails("blockjo");
    parse_fails("broken");
    parse_fails("noid");
    parse_fails("badid");
    parse_fails("hugeid");
    parse_fails("# blockjobd");
    parse_fails("nosuchgroup");
    parse_fails("root:x");
    parse_fails("x:0");
}

/* A group line is as long as its member list: no fixed-size buffer. */
static void test_long_line(void **state)
{
    size_t n = 200000;
    char *text = malloc(n + 64);

    (void)state;
    assert_non_null(text);
    strcpy(text, "big:x:4242:");
    memset(text + strlen(text), 'm', n);
    strcpy(text + strlen("big:x:4242:") + n, "\nafter:x:4343:\n");
    write_file(text);
    free(text);
    assert_int_equal(parse_ok("big"), 4242);
    assert_int_equal(parse_ok("after"), 4343);
}

/* An unreadable file means "not known" for names; numbers still work. */
static void test_missing_file(void **state)
{
    unsigned id = 1;

    (void)state;
    assert_int_equal(ids_parse("/nonexistent/group", "root", &id), -1);
    assert_int_equal(ids_parse("/nonexistent/group", "42", &id), 0);
    assert_int_equal(id, 42);
}

/* getpwuid_r(3)'s contract: found, not found (0 and NULL), ERANGE when the
 * buffer is too small (libuv then retries with a larger one). */
static void test_getpwuid_r(void **state)
{
    struct passwd pw, *res;
    char buf[256], tiny[8];

    (void)state;
    write_file("root:x:0:0:root:/root:/bin/bash\n"
               "blockjobd:x:998:997:blockjobd QMP:/var/lib/blockjobd:"
               "/usr/sbin/nologin\n");
    assert_int_equal(ids_getpwuid_r(path, 998, &pw, buf, sizeof(buf), &res), 0);
    assert_ptr_equal(res, &pw);
    assert_string_equal(pw.pw_name, "blockjobd");
    assert_int_equal(pw.pw_gid, 997);
    assert_string_equal(pw.pw_dir, "/var/lib/blockjobd");
    assert_string_equal(pw.pw_shell, "/usr/sbin/nologin");

    assert_int_equal(ids_getpwuid_r(path, 0, &pw, buf, sizeof(buf), &res), 0);
    assert_ptr_equal(res, &pw);
    assert_string_equal(pw.pw_name, "root");

    res = &pw;
    assert_int_equal(ids_getpwuid_r(path, 4242, &pw, buf, sizeof(buf), &res),
                     0);
    assert_null(res);

    res = &pw;
    assert_int_equal(ids_getpwuid_r(path, 998, &pw, tiny, sizeof(tiny), &res),
                     ERANGE);
    assert_null(res);

    res = &pw;
    assert_int_not_equal(
        ids_getpwuid_r("/nonexistent/passwd", 0, &pw, buf, sizeof(buf), &res),
        0);
    assert_null(res);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_numbers),    cmocka_unit_test(test_names),
        cmocka_unit_test(test_long_line),  cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_getpwuid_r),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}
