/* The QAPI-style schema behind dispatch and introspection (internal to
 * protocol/; other rooms use qmp_schema_add() from qmp.h). */
#ifndef PROTOCOL_SCHEMA_H
#define PROTOCOL_SCHEMA_H

#include <jansson.h>
#include <stdbool.h>

#include "protocol/error.h"

/* Adds definitions (see qmp_schema_add). */
void schema_add(const char *qapi);
/* Forgets every definition. */
void schema_reset(void);
bool schema_has_command(const char *name);
/* Validates a command's argument object (never NULL) against its declared
 * argument type, with QEMU's error texts. Returns 0 or -EINVAL. */
int schema_check_args(const char *command, json_t *args, struct qmp_error *err);
/* Names of all declared commands, in declaration order (new reference). */
json_t *schema_command_names(void);
/* query-qmp-schema's return value: SchemaInfo for every command, event and
 * type they use (new reference). */
json_t *schema_introspect(void);

#endif
