"""The server plumbing: health starts NOT_SERVING and follows `set_serving`."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shoal._server import add_standard_services, aio_server, bind, set_serving

SERVICE = "shoal.v1.Test"


def test_health_is_not_serving_until_said_otherwise() -> None:
    async def body() -> None:
        server = aio_server()
        address = bind(server, "127.0.0.1:0")
        health = add_standard_services(server, [SERVICE])
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = health_pb2_grpc.HealthStub(channel)

                async def status(service: str) -> int:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                    return int(reply.status)

                assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
                await set_serving(health, [SERVICE], True)
                assert await status("") == health_pb2.HealthCheckResponse.SERVING
                assert await status(SERVICE) == health_pb2.HealthCheckResponse.SERVING
                await set_serving(health, [SERVICE], False)
                assert await status("") == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            await server.stop(None)

    asyncio.run(body())
