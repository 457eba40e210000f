"""The one message of a unary call that is registered as request-streaming, so that it is admitted (token,
slot) from its headers before its body is buffered, then given a deadline to arrive whole."""

from __future__ import annotations

import asyncio
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from hark.serving.errors import Refusal

M = TypeVar("M", bound=Message)


async def read_whole(context: grpc.aio.ServicerContext, message_type: type[M], timeout_s: float) -> M:
    """The call's one ``message_type`` request, read within ``timeout_s``; a clear refusal otherwise."""
    name = message_type.DESCRIPTOR.full_name
    try:
        async with asyncio.timeout(timeout_s):
            request = await context.read()
    except TimeoutError:
        raise Refusal(
            "DEADLINE_EXCEEDED", f"the request did not arrive whole within {timeout_s:g} s; send the clip at once"
        ) from None
    except DecodeError:
        raise Refusal("INVALID_ARGUMENT", f"the request is not a valid {name} (malformed protobuf)") from None
    if request is grpc.aio.EOF or not isinstance(request, message_type):
        raise Refusal("INVALID_ARGUMENT", f"the call ended before its {name} was sent")
    return request
