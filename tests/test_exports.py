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


def _loaded_by(setup: str) -> set[str]:
    """The modules a fresh interpreter holds after running `setup`."""
    code = f"import sys; {setup}; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(eval(out))


def test_import_shoal_is_client_only() -> None:
    def server_side(modules: set[str]) -> set[str]:
        prefixes = ("grpc_health", "grpc_reflection", "shoal._server", "shoal.coordinator", "shoal.shard")
        return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}

    # `import grpc` itself imports the bare grpc_health and grpc_reflection packages (to alias them as
    # grpc.health and grpc.reflection): nothing of them beyond that may come with `import shoal`.
    baseline = server_side(_loaded_by("import grpc"))
    assert baseline <= {"grpc_health", "grpc_reflection"}
    assert server_side(_loaded_by("import shoal")) == baseline
    assert server_side(_loaded_by("import shoal; shoal.Client; shoal.AsyncClient")) == baseline
    assert "shoal._server" in _loaded_by("import shoal._server")  # the check can see it when it is there


def test_import_shoal_loads_no_integration() -> None:
    integrations = ("langchain_core", "llama_index", "shoal.langchain", "shoal.llama_index")

    def of(modules: set[str]) -> set[str]:
        return {m for m in modules if any(m == p or m.startswith(p + ".") for p in integrations)}

    assert of(_loaded_by("import shoal; shoal.Client; shoal.AsyncClient")) == set()
    assert "langchain_core" in _loaded_by("import shoal.langchain")  # the check can see one when it is there
