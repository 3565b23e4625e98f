"""What both nodes share and neither owns: small, importable without mlx, grpc-free at import.

    studio_common.tomlconf   strict TOML -> dataclass loading (unknown keys name the key and file)
    studio_common.paths      $STUDIO_CODER_HOME, the one environment override both nodes read
    studio_common.channel    gRPC channel options (message limits, keepalive) for both ends
    studio_common.net        loopback checks and free ports
    studio_common.json_bounds  how long a reply matching a JSON schema can be

It imports nothing from `inference_node` or `agent_node`; both import it. The wire contract (the
generated stubs and the ErrorInfo reasons) stays on its own in `inference_node.api`.
"""
