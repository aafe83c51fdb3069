#include "daemon/events.h"

#include <stdlib.h>
#include <string.h>

#include "daemon/client.h"
#include "daemon/log.h"
#include "daemon/notify.h"
#include "protocol/json.h"

static const char *str(json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));

    return v ? v : "?";
}

/* One log line per event an operator cares about; every status change at
 * debug level. */
static void log_event(const char *name, json_t *data)
{
    if (!strcmp(name, "JOB_STATUS_CHANGE")) {
        const char *st = str(data, "status");

        log_msg(!strcmp(st, "created") ? LOG_LVL_INFO : LOG_LVL_DEBUG,
                "job %s: %s", str(data, "id"),
                !strcmp(st, "created") ? "created" : st);
    } else if (!strcmp(name, "BLOCK_JOB_COMPLETED")) {
        json_t *error = json_object_get(data, "error");

        if (error) {
            log_msg(LOG_LVL_WARNING, "job %s (%s): failed: %s",
                    str(data, "device"), str(data, "type"),
                    json_string_value(error) ? json_string_value(error) : "?");
        } else {
            log_msg(
                LOG_LVL_INFO, "job %s (%s): completed, %lld bytes",
                str(data, "device"), str(data, "type"),
                (long long)json_integer_value(json_object_get(data, "offset")));
        }
    } else if (!strcmp(name, "BLOCK_JOB_CANCELLED")) {
        log_msg(LOG_LVL_INFO, "job %s (%s): cancelled at %lld of %lld bytes",
                str(data, "device"), str(data, "type"),
                (long long)json_integer_value(json_object_get(data, "offset")),
                (long long)json_integer_value(json_object_get(data, "len")));
    } else if (!strcmp(name, "BLOCK_JOB_ERROR")) {
        log_msg(LOG_LVL_WARNING, "job %s: %s error, action %s",
                str(data, "device"), str(data, "operation"),
                str(data, "action"));
    } else if (!strcmp(name, "BLOCK_JOB_READY")) {
        log_msg(LOG_LVL_INFO, "job %s (%s): ready", str(data, "device"),
                str(data, "type"));
    } else if (!strcmp(name, "SHUTDOWN")) {
        log_msg(LOG_LVL_DEBUG, "SHUTDOWN event sent");
    }
}

void events_sink(void *opaque, const char *line, size_t len)
{
    const char *errdesc = NULL;
    char *text;
    json_t *ev;

    (void)opaque;
    client_broadcast(line, len);
    /* Only job events are decoded again: cheap filter on the encoded
     * text, which protocol/ writes as "event": "NAME". */
    if (!memmem(line, len, "\"event\": \"JOB_", 14) &&
        !memmem(line, len, "\"event\": \"BLOCK_JOB_", 20) &&
        !memmem(line, len, "\"event\": \"SHUTDOWN\"", 19)) {
        return;
    }
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
        len--;
    }
    text = strndup(line, len);
    if (!text) {
        return;
    }
    ev = qmp_json_parse(text, &errdesc);
    free(text);
    if (ev) {
        log_event(str(ev, "event"), json_object_get(ev, "data"));
        json_decref(ev);
    }
    notify_status_update();
}
