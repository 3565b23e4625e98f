"""The wire contract: generated stubs for proto/inference.proto. Imports no mlx.

    from inference_node.api import pb, rpc
    stub = rpc.InferenceStub(channel)
    stub.Chat(pb.ChatRequest(...), timeout=30)
"""

from . import inference_pb2 as pb
from . import inference_pb2_grpc as rpc

__all__ = ["pb", "rpc"]
