"""Presigned download URLs per second: ours (pdpj_async.presign) vs botocore, in one run.

    .venv/bin/python bench/presign.py [--urls 20000] [--out bench/results/presign.json]

A status response lists up to 1,000 documents, each with a fresh URL; this measures what
that costs. botocore is measured through the same aiobotocore client the daemon uses
(generate_presigned_url), and through plain boto3 for reference. No network is used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from pdpj_async.config import StorageConfig
from pdpj_async.storage import content_disposition
from pdpj_async.storage.s3 import S3Storage

RESULTS = Path(__file__).parent / "results" / "presign.json"
NAME = "Petição inicial.pdf"


def keys(n: int) -> list[str]:
    """Realistic object keys."""
    return [
        f"processos/0001234562024826{i % 10000:04d}/documentos/{i:08x}-7b4d-4e2a-9c1f/{NAME}"
        for i in range(n)
    ]


def rate(n: int, seconds: float) -> dict[str, float]:
    return {"urls_per_s": round(n / seconds), "us_per_url": round(seconds / n * 1e6, 2)}


def timed(fn: Callable[[str], object], ks: list[str]) -> float:
    started = time.perf_counter()
    for k in ks:
        fn(k)
    return time.perf_counter() - started


async def timed_async(fn: Callable[[str], Awaitable[object]], ks: list[str]) -> float:
    started = time.perf_counter()
    for k in ks:
        await fn(k)
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls", type=int, default=20000)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the result file")
    args = parser.parse_args()
    n = args.urls
    config = StorageConfig(
        backend="s3",
        bucket="pdpj-documents",
        region="sa-east-1",
        access_key_id="AKIDEXAMPLE",
        secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    )
    storage = await S3Storage.open(config, max_pool_connections=10)
    client = storage.client
    bucket, ttl = config.bucket, config.url_ttl_s
    disposition = content_disposition(NAME)
    boto = boto3.client(
        "s3",
        region_name=config.region,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        config=BotoConfig(signature_version="s3v4"),
    )
    ks = keys(n)
    # Warm up caches on both sides (endpoint rules, signing key).
    for k in ks[:200]:
        storage.download_url(k, filename=NAME)
        boto.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": k})

    ours_plain = timed(lambda k: storage.download_url(k), ks)
    ours_named = timed(lambda k: storage.download_url(k, filename=NAME), ks)
    # Worst case for the name caches: every document has a name (and key) of its own.
    distinct = [(k + "x", f"Documento {i} - Petição.pdf") for i, k in enumerate(ks)]
    started = time.perf_counter()
    for k, name in distinct:
        storage.download_url(k, filename=name)
    ours_distinct = time.perf_counter() - started
    slow = ks[: max(1000, n // 10)]
    aio_named = await timed_async(
        lambda k: client.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": k, "ResponseContentDisposition": disposition},
            ExpiresIn=ttl,
        ),
        slow,
    )
    boto_named = timed(
        lambda k: boto.generate_presigned_url(
            "get_object",
            Params={"Bucket": bucket, "Key": k, "ResponseContentDisposition": disposition},
            ExpiresIn=ttl,
        ),
        slow,
    )
    await storage.close()

    results = {
        "ours": rate(n, ours_plain),
        "ours_with_filename": rate(n, ours_named),
        "ours_with_distinct_filenames": rate(n, ours_distinct),
        "aiobotocore_with_filename": rate(len(slow), aio_named),
        "boto3_with_filename": rate(len(slow), boto_named),
    }
    worst = results["ours_with_distinct_filenames"]["us_per_url"]
    usual = results["ours_with_filename"]["us_per_url"]
    for ref in ("aiobotocore", "boto3"):
        theirs = results[f"{ref}_with_filename"]["us_per_url"]
        results[f"speedup_vs_{ref}"] = {
            "distinct_names_x": round(theirs / worst, 1),
            "repeated_names_x": round(theirs / usual, 1),
        }
    # 1,000 URLs at N microseconds each take N milliseconds.
    results["status_of_1000_documents_ms"] = {
        "ours_distinct_names": worst,
        "aiobotocore": results["aiobotocore_with_filename"]["us_per_url"],
    }
    meta = {"urls": n, "python": platform.python_version(), "machine": platform.machine()}
    save({"meta": meta, "results": results}, args.out)
    print(json.dumps(results, indent=2))


def save(report: dict[str, Any], out: Path) -> None:
    """Write the result file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
