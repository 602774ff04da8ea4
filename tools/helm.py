"""A helm-shaped command line over the real Helm engine.

helm-python-sdk binds libhelm_c (Helm's Go SDK behind a C ABI); this script gives it the
command-line shape tests and people expect from `helm`:

    tools/helm install NAME CHART [-n NS] [--create-namespace] [-f FILE]... [--set k=v]...
    tools/helm upgrade NAME CHART [same flags] [--install] [--reuse-values] [--reset-values]
    tools/helm rollback NAME [REVISION]
    tools/helm uninstall NAME [--keep-history] [--ignore-not-found]
    tools/helm template [NAME] CHART [-f FILE]... [--set k=v]... [-s templates/x.yaml]...
    tools/helm lint CHART [-f FILE]... [--set k=v]... [--strict]
    tools/helm status NAME [-o table|json|yaml]
    tools/helm history NAME [-o table|json|yaml] [--max N]
    tools/helm list [-A] [-o table|json|yaml]
    tools/helm get values|manifest|notes NAME [--all]
    tools/helm version

Cluster flags (every command that talks to a cluster): --kubeconfig PATH, --kube-context CTX,
-n/--namespace NS (default: $HELM_NAMESPACE or "default").

Failures print `Error: <Helm's message>` on stderr and exit 1, like helm.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from typing import Any, NoReturn

try:
    import helm_python as helm
except ImportError as exc:  # pragma: no cover - environment problem, not a code path
    sys.stderr.write(
        f"Error: helm-python-sdk is not importable ({exc}); run `make deps` to create .venv\n"
    )
    sys.exit(127)

try:
    import yaml
except ImportError:  # pyyaml is only needed for `-o yaml`
    yaml = None  # type: ignore[assignment]


class UsageError(Exception):
    """Bad command-line input detected before Helm is called."""


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"Error: {message.rstrip()}\n")
    sys.exit(1)


# --- values: -f / --set composition, with Helm's precedence ---------------------------------


def merge_maps(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's `mergeMaps` (pkg/cli/values): maps merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_maps(out[key], value)
        else:
            out[key] = value
    return out


def read_values_file(path: str) -> dict[str, Any]:
    if path == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise UsageError(f"open {path}: {exc.strerror}") from exc
    try:
        parsed = helm.values_from_yaml(text)
    except helm.HelmError as exc:
        raise UsageError(f"failed to parse {path}: {exc}") from exc
    return parsed or {}


def collect_values(args: argparse.Namespace) -> dict[str, Any]:
    """Compose user values in Helm's order: files, --set-json, --set, --set-string, --set-file."""
    values: dict[str, Any] = {}
    for path in args.values or []:
        values = merge_maps(values, read_values_file(path))
    parsers = (
        ("set_json", helm.parse_set_json),
        ("set", helm.parse_set_string),
        ("set_string", helm.parse_set_string_values),
        ("set_file", helm.parse_set_file),
        ("set_literal", helm.parse_set_literal),
    )
    for attr, parse in parsers:
        for expression in getattr(args, attr, None) or []:
            try:
                values = merge_maps(values, parse(expression))
            except helm.HelmError as exc:
                raise UsageError(f"failed parsing --{attr.replace('_', '-')} data: {exc}") from exc
    return values


# --- small helpers --------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")


def parse_duration(text: str) -> int:
    """Go duration (`5m0s`, `90s`, `1h`) or bare seconds → whole seconds."""
    if text.isdigit():
        return int(text)
    total = 0.0
    pos = 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        pos = match.end()
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    if pos != len(text) or not text:
        raise UsageError(f'invalid duration "{text}"')
    return max(1, int(total))


def namespace_of(args: argparse.Namespace) -> str:
    return args.namespace or os.environ.get("HELM_NAMESPACE") or "default"


def make_config(args: argparse.Namespace) -> helm.Config:
    return helm.Config(
        kubeconfig_path=args.kubeconfig,
        kube_context=args.kube_context,
        namespace=namespace_of(args),
    )


def format_time(stamp: str | None) -> str:
    """`2026-01-02T03:04:05Z` → helm's `Fri Jan  2 03:04:05 2026` (ANSIC)."""
    if not stamp:
        return ""
    try:
        parsed = time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return stamp
    return time.strftime("%a %b %e %H:%M:%S %Y", parsed)


def emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=None, sort_keys=True))
    elif output == "yaml":
        if yaml is None:
            fail("-o yaml needs pyyaml in the venv; run `make deps`")
        sys.stdout.write(yaml.safe_dump(data, sort_keys=True))
    else:
        raise AssertionError(output)


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        print("\t".join(cells).rstrip())


def print_release(release: dict[str, Any], show_notes: bool = True) -> None:
    print(f"NAME: {release.get('name', '')}")
    print(f"LAST DEPLOYED: {format_time(release.get('deployed_at'))}")
    print(f"NAMESPACE: {release.get('namespace', '')}")
    print(f"STATUS: {release.get('status', '')}")
    print(f"REVISION: {release.get('revision', '')}")
    if release.get("description"):
        print(f"DESCRIPTION: {release['description']}")
    print("TEST SUITE: None")
    notes = release.get("notes")
    if show_notes and notes:
        print("NOTES:")
        sys.stdout.write(notes if notes.endswith("\n") else notes + "\n")


# --- commands -------------------------------------------------------------------------------


def cmd_install(args: argparse.Namespace) -> None:
    helm.validate_release_name(args.name)
    values = collect_values(args)
    with make_config(args) as cfg:
        try:
            release = cfg.install(
                args.chart,
                args.name,
                values,
                namespace=namespace_of(args),
                create_namespace=args.create_namespace,
                wait=args.wait,
                timeout=parse_duration(args.timeout) if args.timeout else None,
                dry_run=args.dry_run,
                description=args.description,
                rollback_on_failure=args.atomic,
            )
        except helm.HelmError as exc:
            fail(f"INSTALLATION FAILED: {exc}")
    if args.output != "table":
        emit(release, args.output)
        return
    print_release(release)


def cmd_upgrade(args: argparse.Namespace) -> None:
    values = collect_values(args)
    with make_config(args) as cfg:
        if args.install:
            try:
                cfg.status(args.name)
            except helm.HelmNotFoundError:
                print(f'Release "{args.name}" does not exist. Installing it now.')
                cmd_install(args)
                return
            except helm.HelmError:
                pass  # let the upgrade report the real problem
        try:
            release = cfg.upgrade(
                args.chart,
                args.name,
                values,
                namespace=namespace_of(args),
                wait=args.wait,
                timeout=parse_duration(args.timeout) if args.timeout else None,
                dry_run=args.dry_run,
                reuse_values=args.reuse_values,
                reset_values=args.reset_values,
                description=args.description,
                rollback_on_failure=args.atomic,
            )
        except helm.HelmError as exc:
            fail(f"UPGRADE FAILED: {exc}")
    if args.output != "table":
        emit(release, args.output)
        return
    print(f'Release "{args.name}" has been upgraded. Happy Helming!')
    print_release(release)


def cmd_rollback(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        try:
            cfg.rollback(
                args.name,
                version=args.revision or None,
                wait=args.wait,
                timeout=parse_duration(args.timeout) if args.timeout else None,
            )
        except helm.HelmError as exc:
            fail(str(exc))
    print("Rollback was a success! Happy Helming!")


def cmd_uninstall(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        for name in args.names:
            try:
                result = cfg.uninstall(
                    name,
                    keep_history=args.keep_history,
                    ignore_not_found=args.ignore_not_found,
                    wait=args.wait,
                    timeout=parse_duration(args.timeout) if args.timeout else None,
                )
            except helm.HelmError as exc:
                fail(f"uninstall: {exc}")
            info = result.get("info") if isinstance(result, dict) else None
            if info:
                print(info)
            print(f'release "{name}" uninstalled')


# A kubeconfig that can never reach anything: `template` is client-only, and this guarantees
# that a stray KUBECONFIG in the environment is never contacted.
_OFFLINE_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: offline, cluster: {server: "https://127.0.0.1:1"}}]
contexts: [{name: offline, context: {cluster: offline, user: offline}}]
current-context: offline
users: [{name: offline, user: {}}]
"""


def split_manifest(manifest: str) -> list[tuple[str, str]]:
    """Split helm's `---\\n# Source: path\\n...` stream into (source, document) pairs."""
    docs: list[tuple[str, str]] = []
    for chunk in re.split(r"^---\s*$", manifest, flags=re.MULTILINE):
        body = chunk.strip("\n")
        if not body.strip():
            continue
        match = re.match(r"# Source: (\S+)", body)
        docs.append((match.group(1) if match else "", body))
    return docs


def cmd_template(args: argparse.Namespace) -> None:
    if args.chart is None:
        args.name, args.chart = "release-name", args.name
    helm.validate_release_name(args.name)
    values = collect_values(args)
    with helm.Config(kubeconfig_content=_OFFLINE_KUBECONFIG, namespace=namespace_of(args)) as cfg:
        try:
            release = cfg.install(
                args.chart,
                args.name,
                values,
                namespace=namespace_of(args),
                dry_run="client",
            )
        except helm.HelmError as exc:
            fail(str(exc))
    docs = split_manifest(release.get("manifest", ""))
    if args.show_only:
        wanted = set()
        for selector in args.show_only:
            matched = [d for d in docs if d[0] == selector or d[0].endswith("/" + selector)]
            if not matched:
                fail(f"could not find template {selector} in chart")
            wanted.update(id(d) for d in matched)
        docs = [d for d in docs if id(d) in wanted]
    for _, body in docs:
        sys.stdout.write("---\n" + body + "\n")


def cmd_lint(args: argparse.Namespace) -> None:
    values = collect_values(args)
    failed = 0
    for chart in args.charts:
        print(f"==> Linting {chart}")
        try:
            report = helm.lint(
                chart,
                values,
                strict=args.strict or None,
                namespace=args.namespace,
                kube_version=args.kube_version,
            )
        except helm.HelmError as exc:
            print(f"[ERROR] {exc}")
            failed += 1
            print()
            continue
        names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
        worst = 0
        for message in report.get("messages", []):
            severity = int(message.get("severity", 0))
            worst = max(worst, severity)
            if args.quiet and severity < 2:
                continue
            text = str(message.get("error", "")).rstrip()
            print(f"[{names.get(severity, 'UNKNOWN')}] {message.get('path', '')}: {text}")
        if report.get("errors") or worst >= 3 or (args.strict and worst >= 2):
            failed += 1
        print()
    summary = f"{len(args.charts)} chart(s) linted, {failed} chart(s) failed"
    if failed:
        fail(summary)
    print(summary)


def cmd_status(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        try:
            release = cfg.status(args.name, revision=args.revision)
        except helm.HelmError as exc:
            fail(str(exc))
    if args.output != "table":
        emit({k: v for k, v in release.items() if k != "manifest"}, args.output)
        return
    print_release(release, show_notes=True)


def cmd_history(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        try:
            revisions = cfg.history(args.name, max_revisions=args.max)
        except helm.HelmError as exc:
            fail(str(exc))
    revisions = sorted(revisions, key=lambda r: int(r.get("revision", 0)))
    # Summaries carry no description ("Install complete", "Rollback to 1"); the stored
    # release does.
    with make_config(args) as cfg:
        for r in revisions:
            if not r.get("description"):
                try:
                    info = cfg.get_all(args.name, revision=int(r["revision"])).get("info", {})
                    r["description"] = info.get("description", "")
                except (helm.HelmError, KeyError, ValueError):
                    pass
    if args.output != "table":
        emit([{k: v for k, v in r.items() if k != "manifest"} for r in revisions], args.output)
        return
    rows = [["REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION", "DESCRIPTION"]]
    for r in revisions:
        chart = f"{r.get('chart_name', '')}-{r.get('chart_version', '')}"
        rows.append(
            [
                str(r.get("revision", "")),
                format_time(r.get("deployed_at")),
                str(r.get("status", "")),
                chart,
                str(r.get("app_version", "")),
                str(r.get("description", "")),
            ]
        )
    print_table(rows)


def cmd_list(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        try:
            releases = cfg.list(all_states=args.all, all_namespaces=args.all_namespaces)
        except helm.HelmError as exc:
            fail(str(exc))
    if args.output != "table":
        emit([{k: v for k, v in r.items() if k != "manifest"} for r in releases], args.output)
        return
    rows = [["NAME", "NAMESPACE", "REVISION", "UPDATED", "STATUS", "CHART", "APP VERSION"]]
    for r in releases:
        rows.append(
            [
                str(r.get("name", "")),
                str(r.get("namespace", "")),
                str(r.get("revision", "")),
                format_time(r.get("deployed_at")),
                str(r.get("status", "")),
                f"{r.get('chart_name', '')}-{r.get('chart_version', '')}",
                str(r.get("app_version", "")),
            ]
        )
    print_table(rows)


def cmd_get(args: argparse.Namespace) -> None:
    with make_config(args) as cfg:
        try:
            if args.what == "values":
                data = cfg.get_values(args.name, all_values=args.all, revision=args.revision)
                if args.output == "json":
                    emit(data, "json")
                else:
                    print("COMPUTED VALUES:" if args.all else "USER-SUPPLIED VALUES:")
                    emit(data, "yaml")
                return
            release = cfg.status(args.name, revision=args.revision)
        except helm.HelmError as exc:
            fail(str(exc))
    if args.what == "manifest":
        sys.stdout.write(release.get("manifest", ""))
    else:
        sys.stdout.write(release.get("notes", "") or "")


def cmd_version(_args: argparse.Namespace) -> None:
    print(
        f'version.BuildInfo{{Version:"{helm.helm_sdk_version()}", '
        f'HelmC:"{helm.helm_c_version()}", SDK:"helm-python-sdk {helm.__version__}"}}'
    )


# --- argument parsing -----------------------------------------------------------------------


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--kubeconfig", default=None)  # unset: $KUBECONFIG, ~/.kube/config
    p.add_argument("--kube-context", default=None)


def add_values_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--values", action="append", metavar="FILE")
    p.add_argument("--set", action="append", metavar="K=V")
    p.add_argument("--set-string", action="append", metavar="K=V")
    p.add_argument("--set-json", action="append", metavar="K=JSON")
    p.add_argument("--set-file", action="append", metavar="K=PATH")
    p.add_argument("--set-literal", action="append", metavar="K=V")


def add_release_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", nargs="?", const="watcher", default=None, metavar="STRATEGY")
    p.add_argument("--timeout", default=None, metavar="DURATION")
    p.add_argument(
        "--dry-run", nargs="?", const="client", default=None, choices=["client", "server", "none"]
    )
    p.add_argument("--description", default=None)
    p.add_argument("--atomic", "--rollback-on-failure", dest="atomic", action="store_true")
    p.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helm", description="helm-shaped CLI over helm-python-sdk (the real Helm engine)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("install", help="install a chart")
    p.add_argument("name")
    p.add_argument("chart")
    p.add_argument("--create-namespace", action="store_true")
    add_cluster_flags(p)
    add_values_flags(p)
    add_release_flags(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("upgrade", help="upgrade a release")
    p.add_argument("name")
    p.add_argument("chart")
    p.add_argument("-i", "--install", action="store_true")
    p.add_argument("--create-namespace", action="store_true")
    p.add_argument("--reuse-values", action="store_true")
    p.add_argument("--reset-values", action="store_true")
    add_cluster_flags(p)
    add_values_flags(p)
    add_release_flags(p)
    p.set_defaults(func=cmd_upgrade)

    p = sub.add_parser("rollback", help="roll a release back to a revision")
    p.add_argument("name")
    p.add_argument("revision", nargs="?", type=int, default=0)
    p.add_argument("--wait", nargs="?", const="watcher", default=None)
    p.add_argument("--timeout", default=None)
    add_cluster_flags(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("uninstall", aliases=["delete", "del", "un"], help="uninstall a release")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--keep-history", action="store_true")
    p.add_argument("--ignore-not-found", action="store_true")
    p.add_argument("--wait", nargs="?", const="watcher", default=None)
    p.add_argument("--timeout", default=None)
    add_cluster_flags(p)
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("template", help="render a chart locally and print the YAML")
    p.add_argument("name")
    p.add_argument("chart", nargs="?")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("-s", "--show-only", action="append", metavar="TEMPLATE")
    p.add_argument("--include-crds", action="store_true", help="accepted; CRDs are templates here")
    # Accepted like helm does; `template` never contacts a cluster.
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--kube-context", default=None)
    p.add_argument("--create-namespace", action="store_true")
    add_values_flags(p)
    p.set_defaults(func=cmd_template)

    p = sub.add_parser("lint", help="lint a chart")
    p.add_argument("charts", nargs="*", default=["."], metavar="CHART")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("-n", "--namespace", default=None)
    p.add_argument("--kube-version", default=None)
    add_values_flags(p)
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("status", help="show a release's status")
    p.add_argument("name")
    p.add_argument("--revision", type=int, default=None)
    p.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])
    add_cluster_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("history", aliases=["hist"], help="show a release's revisions")
    p.add_argument("name")
    p.add_argument("--max", type=int, default=None)
    p.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])
    add_cluster_flags(p)
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("list", aliases=["ls"], help="list releases")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", default="table", choices=["table", "json", "yaml"])
    add_cluster_flags(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("get", help="get values, manifest or notes of a release")
    p.add_argument("what", choices=["values", "manifest", "notes"])
    p.add_argument("name")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("--revision", type=int, default=None)
    p.add_argument("-o", "--output", default="yaml", choices=["json", "yaml"])
    add_cluster_flags(p)
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("version", help="print the Helm engine version")
    p.set_defaults(func=cmd_version)
    return parser


def main(argv: list[str]) -> int:
    # Behave like a CLI in a pipeline (`tools/helm template ... | head`): die quietly on EPIPE.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UsageError as exc:
        fail(str(exc))
    except helm.HelmError as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
