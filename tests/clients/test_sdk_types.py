"""The SDK's response types (clients/python/tunedock/types.py, which must stay importable with
msgspec alone) read the server's answers field for field: each has exactly the fields of the
server's type of the same name (contracts/schema.py), so a field the server adds is a failure
here until the SDK has it too. `object` is a constant tag the SDK leaves out."""

from __future__ import annotations

import inspect

import msgspec

from service.contracts import graders
from service.contracts import schema as s
from tunedock import types as sdk

SERVER_NAME = {"Model": "ModelInfo"}  # the SDK's name -> the server's
CONSTANT = {"object"}


def _fields(cls: type) -> set[str]:
    return {f.name for f in msgspec.structs.fields(cls)} - CONSTANT


def test_every_sdk_type_has_the_servers_fields() -> None:
    drift = {}
    for name, cls in vars(sdk).items():
        if not (inspect.isclass(cls) and issubclass(cls, msgspec.Struct) and cls.__module__ == sdk.__name__):
            continue
        server = getattr(s, SERVER_NAME.get(name, name), None) or getattr(graders, name, None)
        assert server is not None, f"the SDK's {name} has no server type"
        if _fields(cls) != _fields(server):
            drift[name] = {"sdk only": sorted(_fields(cls) - _fields(server)),
                           "server only": sorted(_fields(server) - _fields(cls))}
    assert drift == {}
