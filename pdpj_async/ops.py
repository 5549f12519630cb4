"""Operator commands over jobs and webhook deliveries, as an admin would see them in the API."""

from __future__ import annotations

import argparse
from typing import Any
from uuid import UUID

import asyncpg

from . import cnj
from .config import Config, public_url
from .jobs import JobService, webhook_on_final
from .keys import ApiKey
from .queue.table import Queue
from .webhooks import outbox

# The operator acts with an admin's view of every job.
OPERATOR = ApiKey(id=0, name="operator", role="admin")


def _service(pool: asyncpg.Pool, config: Config) -> JobService:
    hook = webhook_on_final(config)
    return JobService(pool, Queue(pool, config.queue, "cli"), on_job_final=hook)


async def run_jobs(args: argparse.Namespace, config: Config, pool: asyncpg.Pool) -> Any:
    """`jobs list|show|retry|cancel`: what the API's job routes give an admin."""
    service = _service(pool, config)
    base = public_url(config)
    if args.jobs_command == "list":
        process = cnj.parse(args.process) if args.process else None
        return await service.list(
            OPERATOR, base, status=args.status, process=process, limit=args.limit
        )
    job_id = UUID(args.job_id)
    if args.jobs_command == "show":
        view = await service.get(OPERATOR, job_id, base)
        deliveries = await outbox.deliveries_for_job(pool, job_id)
        return {"job": view, "deliveries": deliveries}
    if args.jobs_command == "retry":
        return await service.retry(OPERATOR, job_id, base)
    return await service.cancel(OPERATOR, job_id, base)


async def run_deliveries(args: argparse.Namespace, config: Config, pool: asyncpg.Pool) -> Any:
    """`deliveries redeliver ID`: a fresh round of attempts with the same webhook-id."""
    return await outbox.redeliver(pool, args.delivery_id)


def add_parsers(sub: Any) -> None:
    """The `jobs` and `deliveries` subcommands."""
    jobs = sub.add_parser("jobs", help="inspect and act on jobs (as an admin)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    listing = jobs_sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--status", choices=["pending", "processing", "completed", "failed",
                                              "cancelled"])  # fmt: skip
    listing.add_argument("--process", help="a CNJ number")
    listing.add_argument("--limit", type=int, default=50)
    for name, text in (("show", "a job with its deliveries"), ("retry", "queue failed documents"),
                       ("cancel", "cancel an active job")):  # fmt: skip
        parser = jobs_sub.add_parser(name, help=text)
        parser.add_argument("job_id")
    deliveries = sub.add_parser("deliveries", help="webhook deliveries")
    deliveries_sub = deliveries.add_subparsers(dest="deliveries_command", required=True)
    redeliver = deliveries_sub.add_parser("redeliver", help="send a webhook again")
    redeliver.add_argument("delivery_id")
