"""The service on the wire: request parsing, errors with reasons, reflection v1 and v1alpha.

- Requests are parsed by us, not by grpcio: bytes that are not a valid request (a string field
  holding invalid UTF-8, a broken wire format) get INVALID_ARGUMENT naming the field, where
  grpcio would answer INTERNAL "Exception deserializing request!".
- Every error leaves through `abort`: the status code, a message for people (bounded, so no
  trailer nears gRPC's metadata limits) and a `google.rpc.ErrorInfo` with the reason and its
  numbers for programs (`inference_node.api.reasons`). An exception that is not an
  InferenceError is a bug: it is logged with its traceback and answered INTERNAL.
- Server reflection is served as v1 (what current grpcurl, grpcui and Postman speak) and as
  v1alpha (what older tools speak); grpcio-reflection ships v1alpha only, and the two differ
  only in their package name, so one servicer answers both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from inference_node.api import pb
from inference_node.api import reasons as R
from inference_node.errors import BadRequest, InferenceError

log = logging.getLogger("inference_node.server")

SERVICE = pb.DESCRIPTOR.services_by_name["Inference"]
SERVICE_NAME = SERVICE.full_name
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
MAX_MESSAGE_CHARS = 2000  # a person's message; the trailer carries it twice (status + details)


# ---------------------------------------------------------------- errors


def abort(context: grpc.ServicerContext, error: InferenceError) -> None:
    """End the call with `error`'s code, message and reason (raises, as context.abort does)."""
    message = R.truncate(str(error), MAX_MESSAGE_CHARS)
    log.info("%s %s: %s", error.code.name, error.reason, message)
    context.abort_with_status(R.to_status(error.code, message, error.detail))


def internal(e: BaseException) -> InferenceError:
    return InferenceError(
        f"the inference node failed on this request ({type(e).__name__}: "
        f"{R.truncate(str(e), 300)}); this is a bug: the node keeps serving, and its log has "
        "the traceback to report", reason=R.INTERNAL_ERROR, error_type=type(e).__name__)


# ---------------------------------------------------------------- parsing


@dataclass
class Malformed:
    """What a request deserializer returns for bytes that are not a valid request."""

    message_type: str
    field: str  # the path of a string field holding invalid UTF-8, or ""

    def error(self) -> BadRequest:
        if self.field:
            return BadRequest(
                f"{self.field} is not valid UTF-8; protobuf strings must be UTF-8: encode the "
                "text as UTF-8 (or send binary data in a bytes field)",
                reason=R.MALFORMED_REQUEST, message_type=self.message_type, field=self.field,
                expected="UTF-8 text")
        return BadRequest(
            f"the request is not a valid {self.message_type}: its bytes do not parse as that "
            "message; send it with the stubs generated from proto/inference.proto",
            reason=R.MALFORMED_REQUEST, message_type=self.message_type,
            expected=f"a serialized {self.message_type}")


def parser(cls: Any) -> Callable[[bytes], Any]:
    """A request deserializer that returns `Malformed` instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception:  # noqa: BLE001 - DecodeError, or the C parser's own errors
            try:
                field = invalid_utf8_field(data, cls.DESCRIPTOR)
            except Exception:  # noqa: BLE001 - naming the field is a courtesy; never fail it
                log.exception("could not find the bad field in a malformed request")
                field = ""
            return Malformed(cls.DESCRIPTOR.full_name, field)

    return parse


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def invalid_utf8_field(data: bytes, desc: descriptor.Descriptor, prefix: str = "") -> str:
    """The path of the first string field in `data` holding invalid UTF-8 ("" if none)."""
    seen: dict[int, int] = {}
    at = 0
    try:
        while at < len(data):
            key, at = _varint(data, at)
            number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, at = _varint(data, at)
            elif wire_type in (1, 5):
                at += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                size, at = _varint(data, at)
                chunk, at = data[at:at + size], at + size
                fd = desc.fields_by_number.get(number)
                if fd is None:
                    continue
                index = seen.get(number, 0)
                seen[number] = index + 1
                path = f"{prefix}{fd.name}" + (f"[{index}]" if fd.is_repeated else "")
                if fd.type == descriptor.FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return path
                elif fd.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
                    found = invalid_utf8_field(chunk, fd.message_type, path + ".")
                    if found:
                        return found
            else:
                return ""
    except ValueError:
        return ""
    return ""


# ---------------------------------------------------------------- the service


def add_inference_service(servicer: Any, server: grpc.Server) -> None:
    """Register `servicer`'s methods with our parsing and error handling around each."""
    handlers = {}
    for method in SERVICE.methods:
        request_cls = getattr(pb, method.input_type.name)
        response_cls = getattr(pb, method.output_type.name)
        behavior = getattr(servicer, method.name)
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        wrap = _streaming if method.server_streaming else _unary
        handlers[method.name] = make(
            wrap(behavior), request_deserializer=parser(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _unary(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return behavior(request, context)
        except InferenceError as e:
            abort(context, e)
        except Exception as e:
            if context.code() is not None:  # grpc's own abort already ended the call
                raise
            log.exception("unexpected error in %s", getattr(behavior, "__name__", "a call"))
            abort(context, internal(e))

    return handle


def _streaming(behavior: Callable[[Any, Any], Iterator[Any]]
               ) -> Callable[[Any, Any], Iterator[Any]]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            if isinstance(request, Malformed):
                raise request.error()
            yield from behavior(request, context)
        except InferenceError as e:
            abort(context, e)
        except Exception as e:
            if context.code() is not None:
                raise
            log.exception("unexpected error in %s", getattr(behavior, "__name__", "a stream"))
            abort(context, internal(e))

    return handle


# ---------------------------------------------------------------- reflection


def enable_reflection(server: grpc.Server, service_names: tuple[str, ...]) -> None:
    """Serve reflection v1 and v1alpha for `service_names` (and for reflection itself)."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

    _add_v1_descriptor(reflection_pb2.DESCRIPTOR)
    names = (*service_names, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1 = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": v1}),))


def _add_v1_descriptor(v1alpha: descriptor.FileDescriptor) -> None:
    """grpc/reflection/v1/reflection.proto in the default pool, so reflection can describe its
    own v1 service: v1alpha's file with the package renamed (the messages are the same)."""
    pool = descriptor_pool.Default()
    name = "grpc/reflection/v1/reflection.proto"
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = name, "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for f in message.field:
            if f.type_name:
                f.type_name = f.type_name.replace(old, new)
    for service in proto.service:
        for m in service.method:
            m.input_type = m.input_type.replace(old, new)
            m.output_type = m.output_type.replace(old, new)
    pool.AddSerializedFile(proto.SerializeToString())
