"""Run machinery every step shares: the run folder's layout (:mod:`.paths`), atomic file I/O
(:mod:`.files`), copies between host and device that do not wait (:mod:`.transfer`), devices
and torchrun process groups (:mod:`.dist`) and the training skeleton (:mod:`.training`:
seeding, schedule, checkpoints, log)."""
