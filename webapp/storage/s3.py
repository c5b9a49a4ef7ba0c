"""The S3-compatible backend (AWS S3, MinIO, Cloudflare R2, Ceph…) through boto3.

Credentials and region come from the standard AWS_* variables (or an instance role); a non-AWS
endpoint from S3_ENDPOINT_URL, addressed path-style (what MinIO and most S3 clones expect).
One client per process (created lazily, again after a fork): boto3 clients are thread-safe
and keep a connection pool, so greenlets and the AI-call threads share it."""
import os
import threading

from flask import Response

from .base import Store, StoreError, check_key


class S3Store(Store):
    kind = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url or None
        self._client, self._pid = None, None
        self._lock = threading.Lock()
        self.ident = f"s3://{bucket}/{self.prefix}"

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    import boto3
                    from botocore.config import Config
                    cfg = Config(retries={"max_attempts": 4, "mode": "standard"}, max_pool_connections=50,
                                 connect_timeout=5, read_timeout=30,
                                 s3={"addressing_style": "path" if self.endpoint_url else "auto"})
                    self._client = boto3.session.Session().client("s3", endpoint_url=self.endpoint_url, config=cfg)
                    self._pid = os.getpid()
        return self._client

    def _k(self, key):
        return self.prefix + check_key(key)

    def _call(self, what, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StoreError(f"object storage {what} failed: {code or e}") from e
        except BotoCoreError as e:
            raise StoreError(f"object storage {what} failed: {e}") from e

    def put(self, key, data, content_type="application/octet-stream"):
        self._call("put", self.client.put_object, Key=self._k(key), Body=data, ContentType=content_type)

    def get(self, key):
        res = self._call("get", self.client.get_object, Key=self._k(key))
        return None if res is None else res["Body"].read()

    def list(self, prefix, start_after=None):
        check_key(prefix.rstrip("/"))
        kw = {"Prefix": self.prefix + prefix}
        if start_after:
            kw["StartAfter"] = self.prefix + start_after
        out = []
        while True:
            res = self._call("list", self.client.list_objects_v2, **kw) or {}
            out.extend(o["Key"][len(self.prefix):] for o in res.get("Contents", ()))
            if not res.get("IsTruncated"):
                return out
            kw["ContinuationToken"] = res["NextContinuationToken"]
            kw.pop("StartAfter", None)

    def delete(self, keys):
        keys = [self._k(k) for k in keys]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            out = self._call("delete", self.client.delete_objects,
                             Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}) or {}
            if out.get("Errors"):
                raise StoreError(f"object storage delete failed for {len(out['Errors'])} objects")

    def delete_prefix(self, prefix, dry_run=False):
        check_key(prefix.rstrip("/"))
        kw = {"Prefix": self.prefix + prefix}
        count = size = 0
        while True:
            res = self._call("list", self.client.list_objects_v2, **kw) or {}
            objs = res.get("Contents", [])
            count += len(objs)
            size += sum(o.get("Size", 0) for o in objs)
            if objs and not dry_run:  # a listing page is at most 1000 keys: one delete call
                out = self._call("delete", self.client.delete_objects,
                                 Delete={"Objects": [{"Key": o["Key"]} for o in objs], "Quiet": True}) or {}
                if out.get("Errors"):
                    raise StoreError(f"object storage delete failed for {len(out['Errors'])} objects")
            if not res.get("IsTruncated"):
                return count, size
            if dry_run:
                kw["ContinuationToken"] = res["NextContinuationToken"]

    def response(self, key, mimetype, max_age=0, download_name=None):
        # Streamed through the web process (after the caller's tenancy check): the bucket
        # stays private and no URL to it ever leaves the server.
        res = self._call("get", self.client.get_object, Key=self._k(key))
        if res is None:
            return None
        body = res["Body"]

        def chunks():
            try:
                yield from body.iter_chunks(64 * 1024)
            finally:
                body.close()
        headers = {"Content-Length": str(res["ContentLength"])}
        if res.get("ETag"):
            headers["ETag"] = res["ETag"]
        if download_name:
            headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
        resp = Response(chunks(), mimetype=mimetype, headers=headers, direct_passthrough=True)
        resp.cache_control.private = True
        resp.cache_control.max_age = max_age
        return resp
