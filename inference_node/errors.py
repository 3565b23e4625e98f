"""The inference node's errors, each carrying the gRPC status it is answered with.

    InferenceError
    ├── BadRequest        INVALID_ARGUMENT   empty messages, unknown role, bad schema, not an image
    ├── UnknownModel      NOT_FOUND          a model the catalog does not have
    ├── LoadFailed        FAILED_PRECONDITION in the catalog, but its folder would not load
    ├── WouldNotFit       RESOURCE_EXHAUSTED the numbers: needed, committed, budget
    ├── QueueFull         RESOURCE_EXHAUSTED the admission queue is at its limit
    ├── QueueTimeout      DEADLINE_EXCEEDED  waited past the deadline for memory
    ├── Unavailable       UNAVAILABLE        draining, or system memory under the floor
    └── Cancelled         CANCELLED          the client went away

The server maps these to status codes in one place (`server.py`); messages are for people:
they name the thing, the number and what to do.
"""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    code = grpc.StatusCode.INTERNAL


class BadRequest(InferenceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownModel(InferenceError):
    code = grpc.StatusCode.NOT_FOUND


class LoadFailed(InferenceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class WouldNotFit(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueFull(InferenceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class QueueTimeout(InferenceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(InferenceError):
    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(InferenceError):
    code = grpc.StatusCode.CANCELLED
