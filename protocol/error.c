#include "protocol/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 1, 0))) static char *vformat(const char *fmt,
                                                           va_list ap)
{
    char *s = NULL;

    if (vasprintf(&s, fmt, ap) < 0) {
        abort();
    }
    return s;
}

void qmp_error_set(struct qmp_error *err, enum qmp_error_class cls,
                   const char *fmt, ...)
{
    va_list ap;

    if (!err || err->cls != QMP_ERROR_NONE) {
        return;
    }
    va_start(ap, fmt);
    err->desc = vformat(fmt, ap);
    va_end(ap);
    err->cls = cls;
}

void qmp_error_setg(struct qmp_error *err, const char *fmt, ...)
{
    va_list ap;

    if (!err || err->cls != QMP_ERROR_NONE) {
        return;
    }
    va_start(ap, fmt);
    err->desc = vformat(fmt, ap);
    va_end(ap);
    err->cls = QMP_ERROR_GENERIC;
}

void qmp_error_prepend(struct qmp_error *err, const char *fmt, ...)
{
    va_list ap;
    char *prefix, *joined;

    if (!err || err->cls == QMP_ERROR_NONE) {
        return;
    }
    va_start(ap, fmt);
    prefix = vformat(fmt, ap);
    va_end(ap);
    if (asprintf(&joined, "%s%s", prefix, err->desc) < 0) {
        abort();
    }
    free(prefix);
    free(err->desc);
    err->desc = joined;
}

bool qmp_error_is_set(const struct qmp_error *err)
{
    return err && err->cls != QMP_ERROR_NONE;
}

void qmp_error_clear(struct qmp_error *err)
{
    free(err->desc);
    err->desc = NULL;
    err->cls = QMP_ERROR_NONE;
}

const char *qmp_error_class_name(enum qmp_error_class cls)
{
    switch (cls) {
    case QMP_ERROR_COMMAND_NOT_FOUND:
        return "CommandNotFound";
    case QMP_ERROR_DEVICE_NOT_ACTIVE:
        return "DeviceNotActive";
    case QMP_ERROR_DEVICE_NOT_FOUND:
        return "DeviceNotFound";
    case QMP_ERROR_KVM_MISSING_CAP:
        return "KVMMissingCap";
    case QMP_ERROR_NONE:
    case QMP_ERROR_GENERIC:
        break;
    }
    return "GenericError";
}
