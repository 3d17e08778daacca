"""``diffpo gateway``: an OpenAI-compatible endpoint that aligns any upstream chat model's answers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from diffpo_integrations.cli._common import fail
from diffpo_integrations.server.flags import read_api_key_file

__all__ = ["config_from_args", "register", "run"]

_CLIENT_KEY_ENV = "DIFFPO_GATEWAY_API_KEY"


def register(sub: Any) -> None:
    """Add the ``gateway`` subcommand."""
    parser = sub.add_parser(
        "gateway",
        help="serve an OpenAI-compatible endpoint that aligns an upstream model's answers",
        description=(
            "Forward each /v1/chat/completions and /v1/responses request to the upstream, align its answer with the DiffPO "
            "aligner, and answer in OpenAI's format. Clients change only their base URL."
        ),
    )
    parser.add_argument(
        "--upstream", required=True, help="the upstream's OpenAI base URL, e.g. http://127.0.0.1:8081/v1"
    )
    parser.add_argument(
        "--upstream-api",
        choices=["chat_completions", "responses"],
        default="chat_completions",
        help="what /v1/responses calls upstream: its chat completions (default), or its own /v1/responses",
    )
    parser.add_argument(
        "--aligner-url",
        action="append",
        dest="aligner_urls",
        help="aligner server; repeat for a pool of replicas (default $DIFFPO_ALIGNER_URL or http://127.0.0.1:8080)",
    )
    parser.add_argument("--template", help="aligner chat template: gemma, llama3, chatml, smollm2 or a tokenizer path")
    parser.add_argument("--keep-prefix-tokens", type=int, default=6, help="draft tokens kept verbatim (default 6)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=256, help="aligner tokens when a request sets no max_tokens (default 256)"
    )
    parser.add_argument("--prompt-mode", choices=["official", "clean"], default="official")
    parser.add_argument(
        "--fail-policy",
        choices=["open", "closed"],
        default="open",
        help="open: answer the draft, flagged, when alignment fails; closed: answer an error (default open)",
    )
    parser.add_argument(
        "--stream-policy",
        choices=["full_draft", "early"],
        default="full_draft",
        help="early: start aligning once the kept prefix has arrived and stop the upstream (default full_draft)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        help=f"key clients must send (visible in the process list: prefer --api-key-file or ${_CLIENT_KEY_ENV})",
    )
    keys.add_argument("--api-key-file", type=Path, help="file holding the key clients must send")
    parser.add_argument(
        "--upstream-api-key-env", metavar="NAME", help="environment variable holding the upstream's API key"
    )
    parser.add_argument(
        "--forward-authorization",
        action="store_true",
        help="send each client's own Authorization header upstream (not with --api-key)",
    )
    parser.add_argument(
        "--upstream-timeout",
        type=float,
        default=300.0,
        help="seconds for the upstream's whole answer; a stream's for each event (default 300)",
    )
    parser.add_argument(
        "--max-upstream-body",
        type=int,
        default=32 * 1024 * 1024,
        metavar="BYTES",
        help="bytes an upstream answer (or a whole stream) may have; past it a 502 (default 33554432, 32 MiB)",
    )
    parser.add_argument(
        "--upstream-proxy",
        metavar="URL",
        help="forward proxy for both legs, instead of HTTPS_PROXY/HTTP_PROXY/ALL_PROXY (loopback and NO_PROXY go direct)",
    )
    parser.add_argument(
        "--no-upstream-proxy-env",
        action="store_true",
        help="ignore HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY on both legs",
    )
    parser.add_argument(
        "--upstream-ca-bundle",
        metavar="PATH",
        help="PEM file of CAs trusted for an HTTPS upstream, besides the system's",
    )
    parser.add_argument(
        "--aligner-ca-bundle", metavar="PATH", help="PEM file of CAs trusted for HTTPS aligners, besides the system's"
    )
    parser.add_argument("--aligner-timeout", type=float, default=120.0, help="seconds for one alignment (default 120)")
    parser.add_argument("--max-concurrent-requests", type=int, default=64, help="requests handled at once (default 64)")
    parser.add_argument("--max-waiting", type=int, default=256, help="further requests queued before 429 (default 256)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(run=run)


def _client_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file is not None:
        return read_api_key_file(args.api_key_file)
    return args.api_key or os.environ.get(_CLIENT_KEY_ENV) or None


def _secret(value: str | None) -> Any:
    from pydantic import SecretStr

    return SecretStr(value) if value else None


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`GatewayConfig` the flags describe.

    Raises:
        SystemExit: the upstream key's environment variable is not set.
    """
    from diffpo_integrations.backends.tgi import default_aligner_url
    from diffpo_integrations.gateway.config import GatewayConfig

    upstream_key = None
    if args.upstream_api_key_env:
        upstream_key = os.environ.get(args.upstream_api_key_env)
        if not upstream_key:
            raise SystemExit(fail(f"--upstream-api-key-env {args.upstream_api_key_env}: that variable is not set"))
    aligner_urls = args.aligner_urls or [default_aligner_url()]
    return GatewayConfig(
        upstream=args.upstream,
        upstream_api=args.upstream_api,
        aligner_urls=aligner_urls,
        template=args.template,
        keep_prefix_tokens=args.keep_prefix_tokens,
        max_new_tokens=args.max_new_tokens,
        prompt_mode=args.prompt_mode,
        fail_policy=args.fail_policy,
        stream_policy=args.stream_policy,
        host=args.host,
        port=args.port,
        api_key=_secret(_client_key(args)),
        upstream_api_key=_secret(upstream_key),
        forward_authorization=args.forward_authorization,
        upstream_timeout=args.upstream_timeout,
        max_upstream_body=args.max_upstream_body,
        upstream_proxy=args.upstream_proxy,
        proxy_env=not args.no_upstream_proxy_env,
        upstream_ca_bundle=args.upstream_ca_bundle,
        aligner_ca_bundle=args.aligner_ca_bundle,
        aligner_timeout=args.aligner_timeout,
        max_concurrent_requests=args.max_concurrent_requests,
        max_waiting=args.max_waiting,
        log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``diffpo gateway`` until interrupted."""
    from pydantic import ValidationError

    try:
        from diffpo_integrations.gateway import run_gateway
    except ImportError as exc:
        return fail(f"diffpo gateway needs the gateway extra: pip install 'diffpo-integrations[gateway]' ({exc})")
    if args.api_key is not None:
        print(
            f"diffpo: warning: --api-key shows the key in the process list; prefer --api-key-file or ${_CLIENT_KEY_ENV}",
            file=sys.stderr,
        )
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        return fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    except ValueError as exc:  # an unreadable or empty key file
        return fail(str(exc))
    run_gateway(config)
    return 0
