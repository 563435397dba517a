"""``sim.rtl.source_key`` refuses to key a build on sources that changed after this process
imported them (the design it would elaborate is the imported, old code)."""

import importlib.util
import sys
import uuid

import pytest

from sim.rtl import BUILD, source_key


def test_source_key_refuses_a_module_edited_after_import():
    folder = BUILD.parent / "key_test"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"mod_{uuid.uuid4().hex}.py"
    path.write_text("X = 1\n")
    try:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[path.stem] = mod
        key = source_key("a", paths=[path])
        assert key == source_key("a", paths=[path])
        path.write_text("X = 2\n")
        with pytest.raises(RuntimeError, match="changed after this process imported it"):
            source_key("a", paths=[path])
    finally:
        sys.modules.pop(path.stem, None)
        path.unlink()
