/* The job types blockjobd knows. Each is one file in jobs/ that defines its
 * struct job_driver and a struct job_type_def naming the function that
 * registers its QMP command(s); job_types.c lists them. */
#ifndef JOBS_JOB_TYPES_H
#define JOBS_JOB_TYPES_H

struct job_type_def {
    const char *name;       /* QEMU's JobType name */
    void (*qmp_init)(void); /* schema and handlers of its commands */
};

/* Registers every job type's commands (called by job_qmp_init). */
void job_types_init(void);

#endif
