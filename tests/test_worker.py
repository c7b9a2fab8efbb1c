"""The long-lived ClientApp worker survives a revoked task token (no network: Flower's retry invoker only)."""

from __future__ import annotations

import httpx
import pytest

from rmmfed.client.worker import task_retry_invoker


def _status_error(code: int) -> httpx.HTTPStatusError:
    req = httpx.Request("POST", "http://127.0.0.1:1/v1/runtime/pull-object")
    return httpx.HTTPStatusError(str(code), request=req, response=httpx.Response(code, request=req, text="{}"))


def test_a_refused_task_token_ends_the_task_not_the_worker():
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = task_retry_invoker(make_simple_http_retry_invoker())
    calls = []

    def pull():
        calls.append(1)
        raise _status_error(401)

    # Flower's own invoker would SIGINT this process here (and pytest with it); ours raises in the caller.
    with pytest.raises(httpx.HTTPStatusError) as err:
        invoker.invoke(pull)
    assert err.value.response.status_code == 401 and len(calls) == 1


def test_transient_server_errors_are_still_retried():
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = task_retry_invoker(make_simple_http_retry_invoker())
    assert invoker.should_giveup(_status_error(503)) is False
    assert invoker.should_giveup(_status_error(401)) is True
