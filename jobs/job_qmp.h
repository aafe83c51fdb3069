/* QMP commands of the job room: block-job-*, job-*, query-block-jobs,
 * query-jobs (schema and handlers), and through job_types.c every job
 * type's own commands (block-stream, ...). */
#ifndef JOBS_JOB_QMP_H
#define JOBS_JOB_QMP_H

#include <jansson.h>

#include "protocol/error.h"
#include "protocol/qmp.h"

/* Declares every command and event of the job room with qmp_schema_add()
 * and binds the handlers, the job types' too. Call once after
 * qmp_core_init(). */
void job_qmp_init(void);

#endif
