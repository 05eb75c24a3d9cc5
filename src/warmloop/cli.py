"""`warmloop serve | bench | demo | doctor`. Every `serve` flag is also read from a
WARMLOOP_* environment variable."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from warmloop.config import Config, describe

# `warmloop bench|demo|doctor`: their modules define add_arguments(parser) and run(args)
TOOLS = (
    ("bench", "run an agent workload in several modes; table, JSON and plots",
     "warmloop.bench.cli"),
    ("demo", "run a small agent over WebSocket and HTTP on the embedded model", "warmloop.demo"),
    ("doctor", "check the CPU, the engine build and the model; run a short decode",
     "warmloop.doctor"),
    ("fleet", "HAProxy config for a fleet of workers, or a whole fleet here", "warmloop.fleet.cli"),
)  # fmt: skip


class Parser:
    """The CLI: `serve`'s flags are generated from `Config`'s fields; the tools add their own."""

    def __init__(self, command: str | None = None) -> None:
        """`command` is the subcommand about to run (only its tool module is imported)."""
        self.parser = argparse.ArgumentParser(prog="warmloop", description=__doc__)
        sub = self.parser.add_subparsers(dest="command", required=True)
        serve = sub.add_parser(
            "serve",
            help="serve the Responses API (HTTP + WebSocket mode)",
            description="Serve the Responses API. Each flag --x-y is also WARMLOOP_X_Y.",
        )
        self._settings: CliSettingsSource[Config] = CliSettingsSource(Config, root_parser=serve)
        for name, help_text, module_name in TOOLS:
            tool = sub.add_parser(
                name, help=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
            )
            if name == command:  # import a tool (openai, rich, ...) only when it runs
                module = importlib.import_module(module_name)
                tool.description = module.__doc__
                module.add_arguments(tool)

    def parse(self, argv: list[str]) -> argparse.Namespace:
        return self.parser.parse_args(argv)

    def config(self, args: argparse.Namespace) -> Config:
        """The server's settings: flags, then WARMLOOP_* variables, then defaults."""
        try:
            return Config(_cli_settings_source=self._settings(parsed_args=args))
        except ValidationError as exc:
            raise SystemExit(f"warmloop: {describe(exc)}") from None


def serve(config: Config) -> None:
    from warmloop.doctor import SelfTestFailed, self_test
    from warmloop.engine.cpu import CpuVariantError, choose_here
    from warmloop.launcher import server

    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not config.api_key and config.api_keys_file is None:
        print(
            "warmloop: WARNING: no --api-key given; the server is open to anyone who can reach it",
            file=sys.stderr,
        )
    if config.chat_template_file is not None:  # a template that does not compile: say so
        from jinja2 import TemplateError

        from warmloop.serving.chat_template import ChatTemplate

        try:
            ChatTemplate(config.chat_template_file.read_text(encoding="utf-8"))
        except (TemplateError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None)  # a syntax error knows its line
            where = f" (line {line})" if line else ""
            raise SystemExit(
                f"warmloop: --chat-template-file {config.chat_template_file}{where}: {exc}"
            ) from None
    try:  # a variant that does not exist or cannot run here: say so before anything loads
        choose_here(config.cpu_variant)
    except CpuVariantError as exc:
        raise SystemExit(f"warmloop: {exc}") from None
    if config.self_test:
        # Before listening: an engine build this CPU cannot run dies here, in a child,
        # with one clear message, instead of killing the server on the first request.
        try:
            self_test(config.model_path(), threads=config.threads, cpu_variant=config.cpu_variant)
        except SelfTestFailed as exc:
            raise SystemExit(f"warmloop: {exc}") from None
    server(config).run()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cli = Parser(argv[0] if argv else None)
    args = cli.parse(argv)
    if args.command == "serve":
        serve(cli.config(args))
        return
    module = importlib.import_module(dict((n, m) for n, _, m in TOOLS)[args.command])
    try:
        module.run(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"warmloop {args.command}: {exc}") from exc


if __name__ == "__main__":
    main()
