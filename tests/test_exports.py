"""The SDK's public surface is explicit, and importing it loads no server code."""

import subprocess
import sys

import shoal


def test_all_is_exactly_the_public_names() -> None:
    code = "import shoal; print(sorted(n for n in dir(shoal) if not n.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    public = set(eval(out)) - {"v1"}
    assert set(shoal.__all__) - {"__version__"} == public


def test_error_classes_carry_their_codes() -> None:
    import grpc

    assert shoal.InvalidArgument("x").code == grpc.StatusCode.INVALID_ARGUMENT
    assert shoal.NotFound("x").code == grpc.StatusCode.NOT_FOUND
    assert shoal.AlreadyExists("x").code == grpc.StatusCode.ALREADY_EXISTS
    assert shoal.Unavailable("x").code == grpc.StatusCode.UNAVAILABLE
    assert all(
        issubclass(getattr(shoal, n), shoal.ShoalError)
        for n in shoal.__all__
        if n[0].isupper()
        and n.endswith(
            (
                "Argument",
                "Found",
                "Exists",
                "Precondition",
                "Exhausted",
                "Unavailable",
                "Exceeded",
                "Unauthenticated",
                "Denied",
                "Internal",
            )
        )
    )


def test_import_shoal_loads_no_server_code() -> None:
    code = "import sys, shoal; print([m for m in sys.modules if m.startswith(('shoal.shard', 'shoal.coordinator'))])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
