/* QMP commands of the job room: block-stream, block-job-*, job-*,
 * query-block-jobs, query-jobs (schema and handlers). */
#ifndef JOBS_JOB_QMP_H
#define JOBS_JOB_QMP_H

/* Declares every command and event of the job room with qmp_schema_add()
 * and binds the handlers. Call once after qmp_core_init(). */
void job_qmp_init(void);

/* block-stream (jobs/stream.c): schema and handler. */
void stream_qmp_init(void);

#endif
