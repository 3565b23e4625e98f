"""`agent-node bridge`: the inference node as an OpenAI chat-completions endpoint on loopback.

Requests go through the one gRPC client (and its managed tunnel), so prompts and code never
leave the building. Two halves, along one seam:

    OpenAI translation   request.py  a chat-completions body, checked, as a pb.ChatRequest
                         reply.py    the node's event stream as a completion or SSE chunks
                         errors.py   every error as an HTTP status and OpenAI's error shape
    the app              app.py      the routes, over `Client` (fallback chain, hints, tunnel)
                         guard.py    the token, the Host header (DNS rebinding), body size
                         serve.py    uvicorn on loopback, `agent-node bridge`
"""

from agent_node.bridge.app import create_app
from agent_node.bridge.serve import BridgeServer, check_host, main

__all__ = ["BridgeServer", "check_host", "create_app", "main"]
