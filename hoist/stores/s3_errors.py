"""What boto3's exceptions mean for hoist: the S3 store's error translation.

S3 and the servers that speak its API report a failure as an error code and an
HTTP status; these decide whether hoist retries (a transient error, a lost
connection) or gives up at once with advice (credentials, a missing bucket).
"""

from __future__ import annotations

import botocore.exceptions as boto_errors
from botocore.parsers import ResponseParserError

from hoist.errors import (
    ContainerNotFoundError,
    HoistError,
    ObjectNotFoundError,
    PermanentStoreError,
    StoreAuthError,
    StoreConnectionError,
    StoreThrottledError,
    TransientStoreError,
)

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
    }
)
"""Error codes that mean the credentials are missing, wrong or not allowed."""

THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestThrottled",
    }
)
"""Error codes that ask for fewer requests: the fleet backs off together on these."""

TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "InternalError",
        "ServiceUnavailable",
        "BadDigest",
        "InvalidDigest",
        "XAmzContentChecksumMismatch",
    }
)
"""Error codes worth another attempt: throttling, server trouble, bytes damaged on the way."""

_CONNECTION_ERRORS = (
    boto_errors.EndpointConnectionError,
    boto_errors.ConnectTimeoutError,
    boto_errors.ConnectionClosedError,
    boto_errors.ReadTimeoutError,
    boto_errors.ResponseStreamingError,
    ConnectionError,
    TimeoutError,
)


def translate_s3_error(
    exc: Exception, *, bucket: str, where: str, endpoint: str, for_object: bool
) -> HoistError | None:
    """The hoist error for a boto3 exception, or None for one that is not the store's.

    Parameters:
        exc: what boto3 raised.
        bucket: the store's bucket.
        where: the URI the request was about, for the message.
        endpoint: the server, for the message (``"AWS S3"`` for AWS).
        for_object: whether the request was about one object; a 404 without one
            means the bucket is missing.

    Example:
        >>> from botocore.exceptions import ClientError
        >>> exc = ClientError(
        ...     {"Error": {"Code": "SlowDown", "Message": "Slow down"},
        ...      "ResponseMetadata": {"HTTPStatusCode": 503}},
        ...     "PutObject",
        ... )
        >>> error = translate_s3_error(
        ...     exc, bucket="ckpts", where="s3://ckpts/ep1.pt", endpoint="AWS S3", for_object=True
        ... )
        >>> type(error).__name__, str(error).split(";")[0]
        ('StoreThrottledError', 'AWS S3 answered 503 SlowDown for s3://ckpts/ep1.pt: Slow down')
    """
    if isinstance(exc, boto_errors.NoCredentialsError):
        # Raised in whichever process uses the store: a worker uploading (whose
        # environment is the one it was started with, not the training job's), or
        # a command or program downloading.
        return StoreAuthError(
            f"no AWS credentials for {where}: this process found none; set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) where it runs, or "
            "pass aws_access_key_id/aws_secret_access_key in the store's arguments (a "
            "logger's travel sealed with the fleet key). For uploads that is the workers: "
            "a worker uses the environment it was started with, so restart them (`hoist "
            "down` then `hoist up` for the embedded cluster)"
        )
    if isinstance(exc, boto_errors.ClientError):
        return _translate_client_error(exc, bucket, where, endpoint, for_object)
    if isinstance(exc, (ResponseParserError, KeyError)):
        # An answer boto3 cannot read as S3, or one without the fields every S3
        # answer has (a web server's page: 200 and no ETag). The same request
        # gets the same answer, so retrying for minutes would only hide it.
        what = f"its answer lacks {exc}" if isinstance(exc, KeyError) else str(exc)[:300]
        return PermanentStoreError(
            f"{endpoint} does not answer as an S3 server for {where}; check endpoint_url "
            f"(scheme, host, port, path): {what}"
        )
    if isinstance(exc, _CONNECTION_ERRORS):
        return StoreConnectionError(f"cannot reach {endpoint} for {where}: {exc}")
    return None


def http_status(exc: boto_errors.ClientError) -> int:
    """The HTTP status of an S3 error answer, 0 if it came without one.

    Example:
        >>> http_status(boto_errors.ClientError(
        ...     {"Error": {"Code": "PreconditionFailed"},
        ...      "ResponseMetadata": {"HTTPStatusCode": 412}}, "PutObject"))
        412
    """
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _translate_client_error(
    exc: boto_errors.ClientError, bucket: str, where: str, endpoint: str, for_object: bool
) -> HoistError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = http_status(exc)
    detail = error.get("Message") or code
    if code == "NoSuchBucket" or (not for_object and status == 404):
        return ContainerNotFoundError(
            f"bucket {bucket!r} does not exist at {endpoint}; create it or fix the name"
        )
    if code in AUTH_CODES or status in (401, 403):
        return StoreAuthError(
            f"access to {where} was denied ({detail}); check the credentials and that "
            "they may read and write this bucket"
        )
    if code == "NoSuchUpload":
        # AWS answers a retried CompleteMultipartUpload whose first answer
        # was lost this way; the next attempt finds the object (or writes it).
        return TransientStoreError(
            f"{endpoint} no longer knows the multipart upload of {where} ({detail})"
        )
    if code in ("NoSuchKey", "NotFound") or status == 404:
        return ObjectNotFoundError(f"{where} does not exist")
    # A HEAD's answer has no body, so its code is only the status: a bare 503 from S3.
    if code in THROTTLING_CODES or status == 429 or (status == 503 and code in ("", "503")):
        return StoreThrottledError(
            f"{endpoint} answered {status} {code} for {where}: {detail}; the fleet lowers "
            "its concurrency toward this store"
        )
    if code in TRANSIENT_CODES or status >= 500:
        return TransientStoreError(f"{endpoint} answered {status} {code} for {where}: {detail}")
    return PermanentStoreError(f"{endpoint} refused {where}: {status} {code}: {detail}")
