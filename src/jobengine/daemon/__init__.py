"""The daemon: scheduler, claimer, one actor per job, leases, the reaper."""
