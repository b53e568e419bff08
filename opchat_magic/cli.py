"""The ``opchat-magic`` command. One subcommand for now: ``serve``.

``opchat-magic serve`` runs the local chat server in the foreground, prints
where it listens and how to point the magic at it, and stops cleanly on
Ctrl+C or SIGTERM. Imports of the server happen inside the command, so
``opchat-magic --help`` stays fast.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

SERVE_DESCRIPTION = """\
Run the local chat server: an echo server, not a model. It speaks the AI Engine
chatbot protocol and the OpenAI chat-completions API the way the real servers
do, and its replies are deterministic: "Echo: <your message>" and "This
conversation has N messages." (N = the messages it received). Use it offline,
for demos and as a test peer; for a real model see the README (Ollama, llama.cpp)."""

# The [[...]] directives of opchat_magic/server/replies.py, for users.
SERVE_EPILOG = """\
directives (write them anywhere in a message; they are removed from the echo):
  [[words:N]]     a Markdown reply of exactly N words (headings, lists, code)
  [[chunks:N]]    exactly N chunks of such text
  [[chunk:K]]     K characters per chunk for this request
  [[delay:S]]     S seconds between chunks for this request (0 allowed)
  [[html]]        a hostile reply (script, onerror image, javascript: link)
  [[fault:NAME]]  inject fault NAME into this request (see --list-faults)
  [[huge:N]]      size in bytes of the huge_line fault's event
  [[say:B64]]     reply with exactly this text: URL-safe base64 of its UTF-8, unpadded

example message: Show me a long answer. [[words:300]] [[delay:0.05]]
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opchat-magic", description="Streaming chat models in Jupyter.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser(
        "serve",
        help="run the local AI Engine + OpenAI-compatible server",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; anything else is reachable from the network)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--delay", type=float, default=0.02, help="seconds between streamed chunks (default 0.02)")
    serve.add_argument("--chunk-size", type=int, default=5, help="characters per chunk (default 5)")
    serve.add_argument("--api-key-env", metavar="VAR", help="require this environment variable's value as the OpenAI Bearer key")
    serve.add_argument("--require-nonce", action="store_true", help="AI Engine submit needs the X-WP-Nonce from start_session")
    serve.add_argument("--input-limit", type=int, default=512, metavar="N",
                       help="longest AI Engine message in characters, as the chatbot's textInputMaxLength (default 512; 0: none)")
    serve.add_argument("--plain-permalinks", action="store_true",
                       help="answer like a WordPress site without pretty permalinks (only /?rest_route=/... works)")
    serve.add_argument("--bot-id", action="append", dest="bot_ids", metavar="ID", help="accepted AI Engine botId (repeatable; default: default)")
    serve.add_argument("--fault", metavar="NAME", help="inject this fault into every chat request (see --list-faults)")
    serve.add_argument("--fault-delay", type=float, default=3.0, help="seconds for the stall/slow_first_byte faults (default 3)")
    serve.add_argument("--max-body", type=int, default=1 << 20, help="request body limit in bytes (default 1 MiB)")
    serve.add_argument("--list-faults", action="store_true", help="list the fault names and exit")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _serve(args: argparse.Namespace) -> int:
    from .server import FAULTS, LocalServer, is_loopback

    if args.list_faults:
        for name in sorted(FAULTS):
            print(f"{name:18} {' '.join(FAULTS[name].doc.split())}")
        return 0
    if args.fault is not None and args.fault not in FAULTS:
        print(f"opchat-magic: unknown fault {args.fault!r}; see --list-faults", file=sys.stderr)
        return 2
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"opchat-magic: environment variable {args.api_key_env} is not set or empty", file=sys.stderr)
            return 2
    if not is_loopback(args.host):
        print(
            f"WARNING: binding {args.host}: the server is reachable from other machines, and it answers "
            "anyone (admin endpoints included). Use --host 127.0.0.1 unless you mean it.",
            file=sys.stderr,
        )
    try:
        server = LocalServer(
            args.host,
            args.port,
            delay=args.delay,
            chunk_size=args.chunk_size,
            bot_ids=args.bot_ids or ("default",),
            require_nonce=args.require_nonce,
            input_limit=args.input_limit,
            plain_permalinks=args.plain_permalinks,
            api_key=api_key,
            max_body=args.max_body,
            fault=args.fault,
            fault_delay=args.fault_delay,
        )
    except ValueError as exc:
        print(f"opchat-magic: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(server, args))
    except KeyboardInterrupt:  # platforms without loop signal handlers
        pass
    except OSError as exc:  # the port is taken, the address is not ours
        print(f"opchat-magic: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print("opchat-magic: stopped", flush=True)
    return 0


async def _run(server, args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
            pass
    await server.astart()
    try:
        print(_banner(server, args), flush=True)
        await stop.wait()
    finally:
        await server.astop()


def _banner(server, args: argparse.Namespace) -> str:
    lines = [
        f"opchat-magic local server listening on {server.url}",
        f"  AI Engine endpoint: {server.submit_url}" + ("  (X-WP-Nonce required)" if args.require_nonce else ""),
        f"  OpenAI base URL:    {server.openai_base_url}  (model {server.config.model})"
        + (f"  (Bearer key from ${args.api_key_env})" if args.api_key_env else ""),
    ]
    if args.fault:
        lines.append(f"  injecting fault:    {args.fault} on every chat request")
    lines += [
        "Point the magic at it:",
        "  %load_ext opchat_magic",
        f"  %config OpchatMagics.url = '{server.url}'",
        "Press Ctrl+C to stop.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
