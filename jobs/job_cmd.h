/* When the reply of a job command goes out. qemu-storage-daemon does some
 * work before it answers a command (a job's ending, drained sections, the
 * run of a woken job's coroutine up to its next yield); these helpers hold
 * our reply back until the same point. Shared by job_qmp.c (verbs) and the
 * job types' own commands (block-stream, ...); they call nothing back. */
#ifndef JOBS_JOB_CMD_H
#define JOBS_JOB_CMD_H

#include <jansson.h>
#include <stdbool.h>

#include "jobs/job.h"
#include "protocol/error.h"
#include "protocol/qmp.h"

struct qmp_session;

/* The end of a handler whose command may have started a job's ending
 * (job_id: that job, or NULL) or begun drained sections: the reply
 * qemu-storage-daemon sends only after them. Returns `ret` (or NULL with
 * `err` as the caller set it) to send now, or defers the reply (then NULL
 * with `err` left clear, see qmp_session_defer). s NULL: returns ret. */
json_t *job_cmd_reply_after(struct qmp_session *s, const char *job_id,
                            json_t *ret, struct qmp_error *err);
/* Runs handler fn(args, s, err) with every job held (job_hold), once no
 * job has a request in flight or an ending under way and no drained
 * section is open: at once if so, else later (the reply deferred; fn then
 * runs without a session, and its reply waits for the job named by the
 * "job-id" argument to settle and for the drains to be over). For handlers
 * that change the graph several times in a row (block-stream). */
json_t *job_cmd_run_quiet(qmp_command_fn *fn, json_t *args,
                          struct qmp_session *s, struct qmp_error *err);
/* A command about a job that is settling: defers the reply and runs
 * fn(args, NULL, ...) again once it settled (true); false: go on now. */
bool job_cmd_wait_settled(struct job *job, qmp_command_fn *fn, json_t *args,
                          struct qmp_session *s);
/* The reply of a verb applied to `job` (the caller took a reference, which
 * this drops): if the verb woke the job (its wake count is no longer
 * wake_seq), once the job reached its next yield point; then, or at once,
 * as job_cmd_reply_after. */
json_t *job_cmd_verb_reply(struct job *job, unsigned wake_seq,
                           struct qmp_session *s, struct qmp_error *err);

#endif
