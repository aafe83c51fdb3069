/* QMP errors: a class from QEMU's QapiErrorClass and a human-readable text.
 *
 * Functions that can fail in a way a QMP client must see take a
 * `struct qmp_error *err` and fill it; they also return NULL or a negative
 * errno so callers can test the result without looking at `err`.
 */
#ifndef PROTOCOL_ERROR_H
#define PROTOCOL_ERROR_H

#include <stdbool.h>

enum qmp_error_class {
    QMP_ERROR_NONE = 0,
    QMP_ERROR_GENERIC,
    QMP_ERROR_COMMAND_NOT_FOUND,
    QMP_ERROR_DEVICE_NOT_ACTIVE,
    QMP_ERROR_DEVICE_NOT_FOUND,
    QMP_ERROR_KVM_MISSING_CAP,
};

struct qmp_error {
    enum qmp_error_class cls;
    char *desc; /* malloc'd; NULL while no error is set */
};

#define QMP_ERROR_INIT                                                         \
    {                                                                          \
        QMP_ERROR_NONE, NULL                                                   \
    }

/* Sets the error unless one is already set (the first error wins). */
void qmp_error_set(struct qmp_error *err, enum qmp_error_class cls,
                   const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Same, class GenericError. */
void qmp_error_setg(struct qmp_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefixes an already set error's text: "prefix: old text". */
void qmp_error_prepend(struct qmp_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
bool qmp_error_is_set(const struct qmp_error *err);
void qmp_error_clear(struct qmp_error *err);
/* QEMU's spelling of the class: "GenericError", "CommandNotFound", ... */
const char *qmp_error_class_name(enum qmp_error_class cls);

#endif
