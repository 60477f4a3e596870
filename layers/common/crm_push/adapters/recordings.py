"""Presigned GET URLs for recordings in S3 or an S3-compatible store (MinIO)."""

from __future__ import annotations

import threading
from typing import Any

from crm_push.recording import Presigner


def make_presigner(endpoint_url: str | None, ttl_seconds: int, session: Any = None, client: Any = None) -> Presigner:
    """A (bucket, key) -> URL function; SigV4 and path-style so MinIO accepts it too.

    The S3 client is made on first use: most calls carry a public token link
    and never need it, so cold starts do not pay for it.
    """
    lock = threading.Lock()
    holder: list[Any] = [client] if client is not None else []

    def s3() -> Any:
        if not holder:
            with lock:
                if not holder:
                    import boto3
                    from botocore.config import Config

                    holder.append(
                        (session or boto3.session.Session()).client(
                            "s3",
                            endpoint_url=endpoint_url,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
                        )
                    )
        return holder[0]

    def presign(bucket: str, key: str) -> str:
        url: str = s3().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_seconds
        )
        return url

    return presign
