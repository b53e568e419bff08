"""The provider registry: built-ins, aliases, real entry points, errors."""
from __future__ import annotations

import logging
import sys
import textwrap

import pytest

from opchat_magic.errors import OpchatError
from opchat_magic.providers import registry
from opchat_magic.providers.base import AsyncGeneratorProvider
from opchat_magic.providers.registry import (
    ProviderLoadError,
    UnknownProviderError,
    available,
    get_provider,
    providers_table,
    register,
    unregister,
)


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.refresh()
    yield
    registry.refresh()


def test_builtins_resolve_to_their_classes():
    from opchat_magic.providers.openai_compat import OpenAICompatible

    assert get_provider("openai") is OpenAICompatible
    assert get_provider("OpenAI") is OpenAICompatible  # names are case-insensitive
    assert get_provider(" openai ") is OpenAICompatible
    assert get_provider(OpenAICompatible) is OpenAICompatible  # a class passes through


def test_opchatgpts_builtin():
    from opchat_magic.providers.opchatgpts import Opchatgpts  # a failed import is a failure, not a skip

    assert get_provider("opchatgpts") is Opchatgpts


@pytest.mark.parametrize(
    "name, url",
    [
        ("ollama", "http://127.0.0.1:11434/v1"),
        ("llamacpp", "http://127.0.0.1:8080/v1"),
        ("lmstudio", "http://127.0.0.1:1234/v1"),
        ("vllm", "http://127.0.0.1:8000/v1"),
    ],
)
def test_aliases_are_openai_compatible_with_their_default_urls(name, url, monkeypatch):
    from opchat_magic.providers.openai_compat import OpenAICompatible

    for var in ("OPCHAT_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    cls = get_provider(name)
    assert issubclass(cls, OpenAICompatible) and cls is not OpenAICompatible
    assert cls.resolve_base_url() == url
    info = {i.name: i for i in available()}[name]
    assert info.url == url and info.base_url == url
    assert info.working and info.supports_stream and info.supports_message_history
    # env still overrides the alias default, and a kwarg overrides env
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert cls.resolve_base_url() == "http://127.0.0.1:9/v1"
    assert cls.resolve_base_url("http://127.0.0.1:7/v1/") == "http://127.0.0.1:7/v1"


def test_other_spellings_resolve():
    from opchat_magic.providers.openai_compat import LlamaCpp, LMStudio, OpenAICompatible

    assert get_provider("llama.cpp") is LlamaCpp and get_provider("LM-Studio") is LMStudio
    assert get_provider("openai-compatible") is OpenAICompatible
    assert "llama.cpp" not in registry.names()


def test_unknown_provider_lists_known_names():
    with pytest.raises(UnknownProviderError) as info:
        get_provider("nope-not-here")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, OpchatError)
    text = str(err)
    assert text.startswith("Unknown provider 'nope-not-here'")  # not wrapped in quotes like KeyError
    for name in ("openai", "ollama", "vllm", "llamacpp", "lmstudio", "opchatgpts"):
        assert name in text
    assert err.known == sorted(err.known)


class _Mine(AsyncGeneratorProvider):
    working = True
    url = "http://127.0.0.1:1/mine"

    @classmethod
    async def _stream(cls, model, messages, proxy, reply, **kwargs):
        yield "mine"
        reply.complete = True


def test_register_and_unregister():
    register("Mine", _Mine)
    try:
        assert get_provider("mine") is _Mine
        info = {i.name: i for i in available()}["mine"]
        assert info.cls is _Mine and info.source == "registered" and info.url == "http://127.0.0.1:1/mine"
        assert "| mine |" in providers_table()
        with pytest.raises(ValueError):
            register("mine", _Mine, replace=False)
        with pytest.raises(TypeError):
            register("bad", object)  # type: ignore[arg-type]
        # register() wins over a built-in name
        register("openai", _Mine)
        assert get_provider("openai") is _Mine
        unregister("openai")
        assert get_provider("openai") is not _Mine
    finally:
        unregister("mine")
        unregister("openai")
    with pytest.raises(UnknownProviderError):
        get_provider("mine")


def _make_dist(root, dist_name: str, entry_points: str, modules: dict) -> None:
    """A real installed distribution: a .dist-info with METADATA and entry_points.txt."""
    info = root / f"{dist_name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for name, source in modules.items():
        (root / name).write_text(textwrap.dedent(source))


PLUGIN_SOURCE = '''
from opchat_magic.providers.base import AsyncGeneratorProvider


class EchoPlugin(AsyncGeneratorProvider):
    """A third-party provider found through its entry point."""

    url = "http://127.0.0.1:5/plugin"
    working = True
    supports_message_history = True
    default_model = "plugin-model"

    @classmethod
    async def _stream(cls, model, messages, proxy, reply, **kwargs):
        yield "plugin says: " + messages[-1]["content"]
        reply.complete = True
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    _make_dist(
        tmp_path,
        "opchat_test_plugin",
        """
        [opchat_magic.providers]
        echoplugin = opchat_test_plugin_mod:EchoPlugin
        brokenplugin = opchat_test_plugin_missing_mod:Nothing
        notaprovider = opchat_test_plugin_mod:NOT_A_CLASS
        openai = opchat_test_plugin_mod:EchoPlugin
        """,
        {"opchat_test_plugin_mod.py": PLUGIN_SOURCE + "\nNOT_A_CLASS = 42\n"},
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    yield tmp_path
    for mod in ("opchat_test_plugin_mod",):
        sys.modules.pop(mod, None)


async def test_entry_point_plugin_is_found_loaded_and_streams(plugin_dir):
    assert "opchat_test_plugin_mod" not in sys.modules  # listed names do not import it
    assert "echoplugin" in registry.names()
    assert "opchat_test_plugin_mod" not in sys.modules
    cls = get_provider("echoplugin")
    assert cls.__name__ == "EchoPlugin" and cls.__module__ == "opchat_test_plugin_mod"
    stream = cls.create_async_generator("", [{"role": "user", "content": "hi"}])
    assert [t async for t in stream] == ["plugin says: hi"]
    assert stream.reply.complete
    info = {i.name: i for i in available()}["echoplugin"]
    assert info.source == "entry point (opchat_test_plugin 1.2.3)"
    assert info.default_model == "plugin-model" and info.url == "http://127.0.0.1:5/plugin"


def test_entry_point_cannot_replace_a_builtin(plugin_dir, caplog):
    from opchat_magic.providers.openai_compat import OpenAICompatible

    with caplog.at_level(logging.WARNING, logger="opchat_magic.providers.registry"):
        registry.refresh()
        assert get_provider("openai") is OpenAICompatible
    assert any("built-in provider name" in r.getMessage() for r in caplog.records)


def test_broken_entry_points_are_reported_not_fatal(plugin_dir):
    infos = {i.name: i for i in available()}  # does not raise
    broken = infos["brokenplugin"]
    assert broken.cls is None and broken.broken and not broken.working
    assert "ModuleNotFoundError" in broken.error and "opchat_test_plugin_missing_mod" in broken.error
    assert infos["notaprovider"].broken and "not a subclass" in infos["notaprovider"].error
    assert infos["echoplugin"].cls is not None  # the good one still works
    with pytest.raises(ProviderLoadError) as err:
        get_provider("brokenplugin")
    assert isinstance(err.value, ImportError) and isinstance(err.value, OpchatError)
    text = str(err.value)
    assert "'brokenplugin'" in text and "opchat_test_plugin_missing_mod:Nothing" in text
    assert "opchat_test_plugin 1.2.3" in text
    table = providers_table()
    assert "| brokenplugin |" in table and "**broken**" in table
    assert "- **brokenplugin**: ModuleNotFoundError" in table


def test_providers_table_is_markdown(monkeypatch):
    monkeypatch.delenv("OPCHAT_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    table = providers_table()
    lines = table.strip().splitlines()
    assert lines[0].startswith("| name | class | working |")
    assert set(lines[1].replace("|", "")) == {"-"}
    columns = lines[0].count("|")
    rows = [l for l in lines[2:] if l.startswith("| ")]
    assert all(r.count("|") - r.count("\\|") == columns for r in rows)
    by_name = {r.split("|")[1].strip(): r for r in rows}
    assert "http://127.0.0.1:11434/v1" in by_name["ollama"]
    assert "opchat_magic.providers.openai_compat.OpenAICompatible" in by_name["openai"]
    assert list(by_name) == sorted(by_name)
