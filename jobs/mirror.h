/* blockdev-mirror (jobs/mirror.c): a root node copied into another node
 * while in use, READY, then job-complete pivots to the copy. */
#ifndef JOBS_MIRROR_H
#define JOBS_MIRROR_H

#include "jobs/job_types.h"

/* The job type (job_types.c): registers blockdev-mirror. */
extern const struct job_type_def mirror_job_type;

#endif
