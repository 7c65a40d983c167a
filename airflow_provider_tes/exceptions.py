"""Errors raised by the TES provider.

Every error is an :class:`~airflow.exceptions.AirflowException`, so Airflow treats it as
a task failure (and retries the task when the DAG asks for retries)::

    TesError
    ├── TesConfigurationError          bad operator argument or connection, nothing was sent
    ├── TesRequestError                a request failed; carries method, URL and status
    │   ├── TesAuthError               401/403: wrong or missing credential, never retried
    │   ├── TesNotFoundError           404: no such task
    │   ├── TesBadRequestError         other 4xx: the server's own message is included
    │   ├── TesServerUnavailableError  transport errors, timeouts, 429, 5xx after all retries
    │   │   ├── TesAmbiguousCreateError  a create that may or may not have reached the server
    │   │   └── TesRequestTimeoutError   a request ran past its deadline (``timeout``), body included
    │   └── TesMalformedResponseError  the answer is not the TES JSON it should be
    │       └── TesResponseLimitError  an answer past a bound of the connection
    │           ├── TesResponseTooLargeError  a body over ``max_response_bytes``
    │           └── TesListingTooLongError    over ``max_pages`` pages, or pages repeated
    ├── TesStagingError                an input could not be staged to object storage
    ├── ObjectStoreError               object storage failed: unreachable, refused, unreadable
    │   ├── ObjectNotFoundError        no such object
    │   └── ObjectContentMismatchError  the bytes sent are not the bytes the key names; nothing stored
    └── TesTaskFailedError             the TES task ended in a state other than COMPLETE
        ├── TesTaskPreemptedError      PREEMPTED with no preemption budget left
        ├── TesDeadlineExceededError   the task ran past its deadline and was canceled
        └── TesStartupTimeoutError     QUEUED/INITIALIZING past ``startup_timeout``; canceled

Messages name the request URL but never a credential: the hook builds them from the URL
and status only, and the URL never carries userinfo.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException


class TesError(AirflowException):
    """Base of every error raised by the TES provider."""


class TesConfigurationError(TesError, ValueError):
    """An operator argument or connection setting is invalid; nothing was sent."""


class TesRequestError(TesError):
    def __init__(self, message: str, *, method: str = "", url: str = "", status_code: int | None = None):
        self.method = method
        self.url = url
        super().__init__(message)
        self.http_status: int | None = status_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.method, self.url, self.http_status))


def _rebuild(
    cls: type[TesRequestError], message: str, method: str, url: str, status_code: int | None
) -> TesRequestError:
    return cls(message, method=method, url=url, status_code=status_code)


class TesAuthError(TesRequestError):
    pass


class TesNotFoundError(TesRequestError):
    pass


class TesBadRequestError(TesRequestError):
    pass


class TesServerUnavailableError(TesRequestError):
    pass


class TesAmbiguousCreateError(TesServerUnavailableError):
    """A create request failed in a way that leaves open whether the server made the task."""


class TesRequestTimeoutError(TesServerUnavailableError):
    """The request, its whole answer included, took longer than the connection's ``timeout``."""


class TesMalformedResponseError(TesRequestError):
    pass


class TesResponseLimitError(TesMalformedResponseError):
    """An answer went past a bound of the connection; a poller treats it like a failed poll."""


class TesResponseTooLargeError(TesResponseLimitError):
    """The answer's body is larger than the connection's ``max_response_bytes``."""


class TesListingTooLongError(TesResponseLimitError):
    """A listing took more than ``max_pages`` pages, or the server sent pages or tokens again."""


class TesStagingError(TesError):
    pass


class TesTaskFailedError(TesError):
    def __init__(self, message: str, *, task_id: str | None = None, state: str | None = None):
        self.task_id = task_id
        self.state = state
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),), {"task_id": self.task_id, "state": self.state})


class TesTaskPreemptedError(TesTaskFailedError):
    pass


class TesDeadlineExceededError(TesTaskFailedError):
    pass


class TesStartupTimeoutError(TesTaskFailedError):
    pass


class ObjectStoreError(TesError):
    """A call to object storage failed: unreachable, refused, or the object cannot be read."""


class ObjectNotFoundError(ObjectStoreError):
    """The object does not exist."""


class ObjectContentMismatchError(ObjectStoreError):
    """The bytes read for an upload do not hash to the digest the object is named by; nothing was stored."""
