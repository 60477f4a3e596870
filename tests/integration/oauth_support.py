"""Helpers for the OAuth tests: the Authlib server in a subprocess, RSA keys, a KMS key, token sources.

Not a test module: ``test_oauth_*.py`` import it, and ``oauth_environment.py``
(one execution environment per OS process) builds its token source with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from crm_push.adapters.crm_http import CrmHttpSender
from crm_push.oauth.cache import SharedTokenCache
from crm_push.oauth.provider import TokenSource
from crm_push.oauth.rotation import AwsRefreshTokenStore

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"


class OAuthServer:
    """``scripts/oauth_server.py`` (Authlib) in its own process on 127.0.0.1."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.url = ""
        self._process: subprocess.Popen[str] | None = None
        self._config_file = ""

    def __enter__(self) -> OAuthServer:
        handle, self._config_file = tempfile.mkstemp(suffix=".json")
        with os.fdopen(handle, "w") as out:
            json.dump(self.config, out)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "scripts.oauth_server", "--config", self._config_file],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.startswith("READY "):
            self.__exit__()
            raise RuntimeError("the OAuth server did not start")
        self.url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        if self._config_file:
            Path(self._config_file).unlink(missing_ok=True)

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    @property
    def crm_url(self) -> str:
        return f"{self.url}/crm/records"

    def _post(self, path: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/admin/stats", timeout=5) as response:
            stats: dict[str, Any] = json.loads(response.read())
            return stats

    def revoke(self, access_token: str | None = None) -> None:
        self._post("/admin/revoke", {} if access_token is None else {"access_token": access_token})

    def fail(self, **failure: Any) -> None:
        self._post("/admin/fail", failure)


def rsa_pems() -> tuple[str, str]:
    """A fresh 2048-bit RSA key pair as PEM (private PKCS#8, public SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def create_kms_key(moto_endpoint: str) -> str:
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_endpoint)
    key_id: str = kms.create_key(Description="post-call-push OAuth token cache (test)")["KeyMetadata"]["KeyId"]
    return key_id


def make_token_source(
    *,
    dynamodb_endpoint: str | None,
    moto_endpoint: str,
    state_table: str | None,
    kms_key_id: str | None,
    bots_table: str | None = None,
    **options: Any,
) -> TokenSource:
    """A token source wired as the function would wire it, against the local stack."""
    cache = None
    if state_table and kms_key_id and dynamodb_endpoint:
        cache = SharedTokenCache(
            boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint),
            state_table,
            boto3.client("kms", region_name=REGION, endpoint_url=moto_endpoint),
            kms_key_id,
        )
    store = AwsRefreshTokenStore(
        secretsmanager=boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto_endpoint),
        ssm=boto3.client("ssm", region_name=REGION, endpoint_url=moto_endpoint),
        dynamodb=boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint)
        if dynamodb_endpoint
        else None,
        bots_table=bots_table,
    )
    return TokenSource(
        CrmHttpSender(allow_private_networks=True),
        cache=cache,
        refresh_tokens=store,
        allow_private_networks=True,
        **options,
    )


def wait_until(epoch: float) -> None:
    delay = epoch - time.time()
    if delay > 0:
        time.sleep(delay)
