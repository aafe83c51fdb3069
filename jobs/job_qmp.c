/* QMP handlers for block-job-*, job-* and the job queries. */
#include "jobs/job_qmp.h"

#include <jansson.h>
#include <stdlib.h>

#include "backends/bdev.h"
#include "jobs/blockjob.h"
#include "jobs/job.h"
#include "jobs/job_cmd.h"
#include "jobs/job_int.h"
#include "jobs/job_types.h"
#include "protocol/qmp.h"

static const char job_schema[] =
    "["
    "{'enum': 'JobType', 'data': ['commit', 'stream', 'mirror', 'backup',"
    " 'create', 'amend', 'snapshot-load', 'snapshot-save',"
    " 'snapshot-delete']},"
    "{'enum': 'JobStatus', 'data': ['undefined', 'created', 'running',"
    " 'paused', 'ready', 'standby', 'waiting', 'pending', 'aborting',"
    " 'concluded', 'null']},"
    "{'enum': 'BlockDeviceIoStatus', 'data': ['ok', 'failed', 'nospace']},"
    "{'enum': 'BlockdevOnError', 'data': ['report', 'ignore', 'enospc',"
    " 'stop', 'auto']},"
    "{'enum': 'IoOperationType', 'data': ['read', 'write']},"
    "{'enum': 'BlockErrorAction', 'data': ['ignore', 'report', 'stop']},"
    "{'struct': 'BlockJobInfo', 'data': {'type': 'str', 'device': 'str',"
    " 'len': 'int', 'offset': 'int', 'busy': 'bool', 'paused': 'bool',"
    " 'speed': 'int', 'io-status': 'BlockDeviceIoStatus', 'ready': 'bool',"
    " 'status': 'JobStatus', 'auto-finalize': 'bool', 'auto-dismiss': 'bool',"
    " '*error': 'str'}},"
    "{'struct': 'JobInfo', 'data': {'id': 'str', 'type': 'JobType',"
    " 'status': 'JobStatus', 'current-progress': 'int',"
    " 'total-progress': 'int', '*error': 'str'}},"
    "{'command': 'query-block-jobs', 'returns': ['BlockJobInfo']},"
    "{'command': 'block-job-set-speed', 'data': {'device': 'str',"
    " 'speed': 'int'}},"
    "{'command': 'block-job-cancel', 'data': {'device': 'str',"
    " '*force': 'bool'}},"
    "{'command': 'block-job-pause', 'data': {'device': 'str'}},"
    "{'command': 'block-job-resume', 'data': {'device': 'str'}},"
    "{'command': 'block-job-complete', 'data': {'device': 'str'}},"
    "{'command': 'block-job-dismiss', 'data': {'id': 'str'}},"
    "{'command': 'block-job-finalize', 'data': {'id': 'str'}},"
    "{'command': 'job-pause', 'data': {'id': 'str'}},"
    "{'command': 'job-resume', 'data': {'id': 'str'}},"
    "{'command': 'job-cancel', 'data': {'id': 'str'}},"
    "{'command': 'job-complete', 'data': {'id': 'str'}},"
    "{'command': 'job-dismiss', 'data': {'id': 'str'}},"
    "{'command': 'job-finalize', 'data': {'id': 'str'}},"
    "{'command': 'query-jobs', 'returns': ['JobInfo']},"
    "{'event': 'JOB_STATUS_CHANGE', 'data': {'id': 'str',"
    " 'status': 'JobStatus'}},"
    "{'event': 'BLOCK_JOB_COMPLETED', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int',"
    " '*error': 'str'}},"
    "{'event': 'BLOCK_JOB_CANCELLED', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int'}},"
    "{'event': 'BLOCK_JOB_ERROR', 'data': {'device': 'str',"
    " 'operation': 'IoOperationType', 'action': 'BlockErrorAction'}},"
    "{'event': 'BLOCK_JOB_READY', 'data': {'type': 'JobType',"
    " 'device': 'str', 'len': 'int', 'offset': 'int', 'speed': 'int'}},"
    "{'event': 'BLOCK_JOB_PENDING', 'data': {'type': 'JobType',"
    " 'id': 'str'}}"
    "]";

/* block-job-*: by job id, DeviceNotActive when unknown. */
static struct job *find_block_job(json_t *args, const char *member,
                                  struct qmp_error *err)
{
    const char *id = json_string_value(json_object_get(args, member));
    struct job *job = id ? job_find(id) : NULL;

    if (!job || !job->drv->is_block_job) {
        qmp_error_set(err, QMP_ERROR_DEVICE_NOT_ACTIVE,
                      "Block job '%s' not found", id ? id : "");
        return NULL;
    }
    return job;
}

/* job-*: any job, GenericError when unknown. */
static struct job *find_job(json_t *args, struct qmp_error *err)
{
    const char *id = json_string_value(json_object_get(args, "id"));
    struct job *job = id ? job_find(id) : NULL;

    if (!job) {
        qmp_error_setg(err, "Job not found");
    }
    return job;
}

#define JOB_HANDLER(name, lookup, body)                                        \
    static json_t *name(json_t *args, struct qmp_session *s,                   \
                        struct qmp_error *err)                                 \
    {                                                                          \
        struct job *job = lookup;                                              \
                                                                               \
        if (!job) {                                                            \
            return NULL;                                                       \
        }                                                                      \
        if (job_cmd_wait_settled(job, name, args, s)) {                        \
            return NULL;                                                       \
        }                                                                      \
        unsigned wake_seq = job->wake_seq;                                     \
                                                                               \
        job_ref(job); /* the verb may dismiss it */                            \
        body;                                                                  \
        return job_cmd_verb_reply(job, wake_seq, s, err);                      \
    }

static void block_job_cancel(struct job *job, json_t *args,
                             struct qmp_error *err)
{
    bool force = json_is_true(json_object_get(args, "force"));

    if (job->user_paused && !force) {
        qmp_error_setg(err, "The block job for device '%s' is currently paused",
                       job->id);
        return;
    }
    job_user_cancel(job, force, err);
}

JOB_HANDLER(qmp_block_job_set_speed, find_block_job(args, "device", err),
            blockjob_set_speed(
                job,
                (int64_t)json_integer_value(json_object_get(args, "speed")),
                err))
JOB_HANDLER(qmp_block_job_cancel, find_block_job(args, "device", err),
            block_job_cancel(job, args, err))
JOB_HANDLER(qmp_block_job_pause, find_block_job(args, "device", err),
            job_user_pause(job, err))
JOB_HANDLER(qmp_block_job_resume, find_block_job(args, "device", err),
            job_user_resume(job, err))
JOB_HANDLER(qmp_block_job_complete, find_block_job(args, "device", err),
            job_complete(job, err))
JOB_HANDLER(qmp_block_job_dismiss, find_block_job(args, "id", err),
            job_dismiss(job, err))
JOB_HANDLER(qmp_block_job_finalize, find_block_job(args, "id", err),
            job_finalize(job, err))
JOB_HANDLER(qmp_job_pause, find_job(args, err), job_user_pause(job, err))
JOB_HANDLER(qmp_job_resume, find_job(args, err), job_user_resume(job, err))
/* job-cancel is always a forced cancel, without the paused check. */
JOB_HANDLER(qmp_job_cancel, find_job(args, err),
            job_user_cancel(job, true, err))
JOB_HANDLER(qmp_job_complete, find_job(args, err), job_complete(job, err))
JOB_HANDLER(qmp_job_dismiss, find_job(args, err), job_dismiss(job, err))
JOB_HANDLER(qmp_job_finalize, find_job(args, err), job_finalize(job, err))

static json_t *qmp_query_block_jobs(json_t *args, struct qmp_session *s,
                                    struct qmp_error *err)
{
    json_t *list = json_array();

    (void)args;
    (void)s;
    (void)err;
    for (struct job *j = job_first(); j; j = job_next(j)) {
        if (j->drv->is_block_job) {
            json_array_append_new(list, blockjob_info(j));
        }
    }
    return list;
}

static json_t *qmp_query_jobs(json_t *args, struct qmp_session *s,
                              struct qmp_error *err)
{
    json_t *list = json_array();

    (void)args;
    (void)s;
    (void)err;
    for (struct job *j = job_first(); j; j = job_next(j)) {
        json_array_append_new(list, job_info(j));
    }
    return list;
}

void job_qmp_init(void)
{
    qmp_schema_add(job_schema);
    qmp_command_register("query-block-jobs", qmp_query_block_jobs);
    qmp_command_register("block-job-set-speed", qmp_block_job_set_speed);
    qmp_command_register("block-job-cancel", qmp_block_job_cancel);
    qmp_command_register("block-job-pause", qmp_block_job_pause);
    qmp_command_register("block-job-resume", qmp_block_job_resume);
    qmp_command_register("block-job-complete", qmp_block_job_complete);
    qmp_command_register("block-job-dismiss", qmp_block_job_dismiss);
    qmp_command_register("block-job-finalize", qmp_block_job_finalize);
    qmp_command_register("job-pause", qmp_job_pause);
    qmp_command_register("job-resume", qmp_job_resume);
    qmp_command_register("job-cancel", qmp_job_cancel);
    qmp_command_register("job-complete", qmp_job_complete);
    qmp_command_register("job-dismiss", qmp_job_dismiss);
    qmp_command_register("job-finalize", qmp_job_finalize);
    qmp_command_register("query-jobs", qmp_query_jobs);
    job_types_init();
}
