/* Bytes-per-second budget (see ratelimit.h). */
#include "jobs/ratelimit.h"

#define NS_PER_S 1000000000ULL

void ratelimit_init(struct ratelimit *rl)
{
    rl->speed = 0;
    rl->next = 0;
    rl->started = 0;
}

/* bytes * 1e9 / speed without overflowing for large byte counts. */
static uint64_t bytes_to_ns(uint64_t bytes, uint64_t speed)
{
    unsigned __int128 ns = (unsigned __int128)bytes * NS_PER_S / speed;

    return ns > UINT64_MAX / 2 ? UINT64_MAX / 2 : (uint64_t)ns;
}

void ratelimit_set_speed(struct ratelimit *rl, uint64_t speed, uint64_t now)
{
    if (!rl->started) {
        rl->started = 1;
        rl->next = now;
    } else if (rl->next > now && rl->speed && speed) {
        unsigned __int128 debt_bytes =
            (unsigned __int128)(rl->next - now) * rl->speed / NS_PER_S;
        rl->next = now + bytes_to_ns((uint64_t)debt_bytes, speed);
    } else if (rl->next > now) {
        rl->next = now; /* to or from unlimited: no debt carried over */
    }
    rl->speed = speed;
}

uint64_t ratelimit_delay(const struct ratelimit *rl, uint64_t now)
{
    if (!rl->speed || !rl->started || rl->next <= now) {
        return 0;
    }
    return rl->next - now;
}

void ratelimit_account(struct ratelimit *rl, uint64_t bytes, uint64_t now)
{
    if (!rl->speed) {
        return;
    }
    if (!rl->started) {
        rl->started = 1;
        rl->next = now;
    }
    /* Idle time earns at most one slice of credit. */
    if (rl->next + RATELIMIT_SLICE_NS < now) {
        rl->next = now - RATELIMIT_SLICE_NS;
    }
    rl->next += bytes_to_ns(bytes, rl->speed);
}
