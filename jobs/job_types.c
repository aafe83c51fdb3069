/* The list of job types: a new one is one file in jobs/ plus a line here. */
#include "jobs/job_types.h"

#include <stddef.h>

#include "jobs/create.h"
#include "jobs/mirror.h"
#include "jobs/stream.h"

static const struct job_type_def *const job_types[] = {
    &stream_job_type,
    &create_job_type,
    &mirror_job_type,
};

void job_types_init(void)
{
    for (size_t i = 0; i < sizeof(job_types) / sizeof(job_types[0]); i++) {
        job_types[i]->qmp_init();
    }
}
