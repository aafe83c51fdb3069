/* blockdev-create: the job type `create` (jobs/create.c). */
#ifndef JOBS_CREATE_H
#define JOBS_CREATE_H

#include "jobs/job_types.h"

extern const struct job_type_def create_job_type;

#endif
