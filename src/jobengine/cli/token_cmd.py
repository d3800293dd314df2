"""`jobengine token new NAME --scope read|write`: a fresh API token, shown once."""

from __future__ import annotations

import argparse

from jobengine.api.tokens import check_token_name, hash_token, new_token

EXAMPLE = """\
example:
  jobengine token new ops --scope write
  # then put the printed [http.tokens.ops] lines in the config file and restart;
  curl -H "Authorization: Bearer <token>" http://127.0.0.1:8080/v1/jobs

Only the token's SHA-256 goes in the config; the token itself is printed once
and stored nowhere.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `token` command."""
    p = sub.add_parser(
        "token", help="create an API bearer token",
        description="Create an API bearer token with a scope.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    new = actions.add_parser(
        "new", help="print a fresh token and the config lines for it",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    new.add_argument("name", help="the token's name in the config (A-Z a-z 0-9 _ -)")
    new.add_argument("--scope", choices=["read", "write"], default="read",
                     help="read, or write (which implies read); default read")
    new.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the token once, and the config lines holding only its hash."""
    name = check_token_name(args.name)
    token = new_token()
    print(f"token (shown only now, keep it secret): {token}")
    print()
    print("add to the config file:")
    print(f"[http.tokens.{name}]")
    print(f'sha256 = "{hash_token(token)}"')
    print(f'scopes = ["{args.scope}"]')
    return 0
