"""The work queue: the job table (claim, fence, retry, release) and the worker pool over it."""
