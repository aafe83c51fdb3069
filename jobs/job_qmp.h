/* QMP commands of the job room: block-stream, block-job-*, job-*,
 * query-block-jobs, query-jobs (schema and handlers). */
#ifndef JOBS_JOB_QMP_H
#define JOBS_JOB_QMP_H

#include <jansson.h>

#include "protocol/error.h"
#include "protocol/qmp.h"

/* Declares every command and event of the job room with qmp_schema_add()
 * and binds the handlers. Call once after qmp_core_init(). */
void job_qmp_init(void);

/* block-stream (jobs/stream.c): schema and handler. */
void stream_qmp_init(void);

struct qmp_session;
/* The end of a handler whose command may have started a job's ending
 * (job_id: that job, or NULL) or begun drained sections: the reply
 * qemu-storage-daemon sends only after them. Returns `ret` (or NULL with
 * `err` as the caller set it) to send now, or defers the reply (then NULL
 * with `err` left clear, see qmp_session_defer). s NULL: returns ret. */
json_t *job_qmp_reply_after(struct qmp_session *s, const char *job_id,
                            json_t *ret, struct qmp_error *err);
/* Runs handler fn(args, s, err) with every job held (job_hold), once no
 * job has a request in flight or an ending under way and no drained
 * section is open: at once if so, else later (the reply deferred; fn then
 * runs without a session, and its reply waits for the job named by the
 * "job-id" argument to settle and for the drains to be over). For handlers
 * that change the graph several times in a row (block-stream). */
json_t *job_qmp_run_quiet(qmp_command_fn *fn, json_t *args,
                          struct qmp_session *s, struct qmp_error *err);

#endif
