"""``faultlab lab scenarios|run`` and ``faultlab demo``: the scenario catalogue, lab runs and their verdicts.

Mounted by ``faultlab/cli/__init__.py`` (``app.add_typer(lab_app, name="lab")``, ``app.command("demo")(demo)``). Thin: parse
options, call :mod:`faultlab.lab.runner`, print with rich, write the reports of :mod:`faultlab.lab.report`.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from faultlab.cli._common import failing
from faultlab.cli._hep import HepIdOption, HepOption, HepPasswordOption, hep_target, open_sender, send_case
from faultlab.cli._lab_external import _external_settings, _own_pbx, _run_external
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from faultlab import library
from faultlab.faults import ProfileError, load_profile
from faultlab.lab.deadlines import DeadlineError, advisories, apply_deadlines, load_config, parse_deadlines
from faultlab.lab.device.logic import BEHAVIOURS
from faultlab.lab.report import to_json, to_junit
from faultlab.lab.guided import needs_push_gateway
from faultlab.lab.runner import Case, needs_embedded_pbx, run_case, transports_for
from faultlab.lab.scenario import Scenario, ScenarioError, list_scenarios, load_scenario, scenario_entries
from faultlab.lab.scenario_set import override
from faultlab.lab.watchdog import DEFAULT_LIMIT, SAMPLE
from faultlab.addr import format_hostport

app = typer.Typer(help="Lab runs: the scenario catalogue, and runs that give a pass/fail verdict per check.",
                  add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

_BEHAVIOURS = ", ".join(BEHAVIOURS)
_CHECK_TITLES = {"ends-right": "1 end", "early-answer": "2 early", "cancel-push": "3 cancel", "invariants": "inv",
                 "sip-duties": "sip", "push-side": "push"}


_fail = failing("faultlab lab")
# the options of `lab run` for --device external (and --push-listen for --pbx HOST:PORT), in their order
_EXTERNAL_OPTIONS = ("listen", "push_listen", "apns_url", "apns_key", "apns_key_id", "apns_team_id", "events_listen",
                     "user", "register_timeout", "pause")


@app.command("scenarios")
def scenarios(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each scenario's faults, script and "
                                          "expectations.")] = False,
) -> None:
    """List the scenario catalogue: id, slug, transports, expected end, deadline and where each comes from (the
    built-in catalogue or a team library: faultlab --library DIR, FAULTLAB_PATH)."""
    try:
        entries = scenario_entries()
    except ScenarioError as exc:
        _fail(str(exc))
    if not entries:
        _fail(f"no scenarios found; looked in: {library.where('scenarios')}")
    table = Table(show_lines=verbose)
    origins = {id(e): e.origin + (f" (replaces {', '.join(e.hides)})" if e.hides else "") for e in entries}
    for column in ("id", "slug", "title", "transports", "expected end", "deadline", "checks"):
        table.add_column(column)
    table.add_column("from", no_wrap=True, min_width=max(map(len, origins.values())))  # a path, never cut
    for entry in entries:
        s = entry.item
        checks = ["1"] + (["2"] if s.early_answer else []) + (["3"] if s.cancel_push_check else [])
        title = s.title
        if verbose:
            title += f"\n[dim]faults: {s.faults.name if s.faults else 'none'}; {_script(s)}[/dim]"
        origin = origins[id(entry)]
        table.add_row(s.id, s.slug, title, ",".join(s.transports), " or ".join(s.end) or "none",
                      "; ".join(f"{b.after} + {b.within:g} s" + (f" ({b.deadline})" if b.deadline else "")
                                for b in s.by) or "-", ",".join(checks), origin)
    # printed to a file or pipe, the table is as wide as the columns need, the library paths included
    widest = max(map(len, origins.values()))
    (Console() if sys.stdout.isatty() else Console(width=140 + widest)).print(table)
    for entry in entries:
        if entry.hides:
            typer.echo(f"note: {entry.item.id} {entry.item.slug} from {entry.origin} replaces the "
                       f"{' and '.join(entry.hides)} scenario of the same id or slug", err=True)
    typer.echo(f"{len(entries)} scenarios. Run one with: faultlab lab run --scenario {entries[0].item.id}")


def _script(s: Scenario) -> str:
    parts = []
    if s.answer_at is not None:
        parts.append(f"answer at {s.answer_at:g} s")
    if s.decline_at is not None:
        parts.append(f"decline at {s.decline_at:g} s")
    if s.cancel_at is not None:
        parts.append(f"caller cancels at {s.cancel_at:g} s")
    if s.elsewhere is not None:
        parts.append(f"{s.elsewhere} elsewhere {s.elsewhere_at:g} s after 180")
    if s.hang_up_after is not None and (s.answer_at is not None):
        parts.append(f"hang up {s.hang_up_after:g} s after 200")
    if s.call_again:
        parts.append("the caller calls again")
    parts += needs_push_gateway(s)  # the push gateway's faults and the PBX's push settings
    return ", ".join(parts) or "no user action"


def _parse_sets(sets: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set {item!r}: write KEY=VALUE, e.g. --set expect.end=failed or --set device.invite_deadline=3s")
        out.append((key.strip(), value.strip()))
    return out


def execute(
    scenario_names: list[str], profile_names: list[str], transports: list[str], *, device: str, behaviour: str | None,
    pbx: str, seed: int | None, virtual: bool | None, network: str, sets: list[str], junit: Path | None,
    pbx_tls_port: int | None = None, pbx_ca: Path | None = None,
    json_path: Path | None, trace_dir: Path | None, quiet: bool, title: str = "faultlab lab run",
    external: dict | None = None, watchdog: int = DEFAULT_LIMIT, deadlines: list[str] | None = None,
    hep: tuple | None = None,
) -> int:
    """Run the matrix and print the table; the exit code (0: every check passed, 1: some failed).

    ``virtual``: None when not given (virtual time for the reference device). ``external``: the options of
    ``--device external`` (listen, push_listen, events_listen, user, apns_url, apns_key, apns_key_id, apns_team_id,
    register_timeout, pause), None or empty values when not given. ``deadlines``: the ``--deadline`` values (the
    app's declared deadlines, over those of ``faultlab.toml``). ``hep``: --hep's (target, id, password) or None."""
    err = Console(stderr=True)
    sender = _hep_sender(hep, err)
    external_settings, virtual, own_pbx = _mode(device, pbx, virtual, external or {}, behaviour=behaviour,
                                                network=network, transports=transports, pbx_tls_port=pbx_tls_port,
                                                pbx_ca=pbx_ca)
    if watchdog and watchdog < 2 * SAMPLE:
        _fail(f"--watchdog {watchdog}: give at least {2 * SAMPLE} scheduler rounds, or 0 to switch it off")
    chosen, profiles = _chosen(scenario_names, profile_names, sets, err)
    declared = _declared(deadlines or [])
    chosen = [apply_deadlines(s, declared) for s in chosen]
    if seed is None:
        seed = random.randrange(2**31)
    skipped = []
    if own_pbx is not None:
        skipped = [(s.id, needs_embedded_pbx(s)) for s in chosen if needs_embedded_pbx(s)]
        for sid, why in skipped:
            err.print(f"{sid} skipped: {why}")
        chosen = [s for s in chosen if not needs_embedded_pbx(s)]
        if not transports:
            transports = own_pbx_transports(pbx_tls_port)
            err.print(f"PBX {pbx}: over {', '.join(transports)}"
                      + ("" if "tls" in transports else " (give --pbx-tls-port for TLS too)"))
    todo = [(s, p, t) for s in chosen for p in profiles for t in transports_for(s, transports)]
    if not todo and external_settings is None:
        if not chosen:
            _fail("nothing to run: every chosen scenario needs the embedded PBX (see above)")
        _fail("nothing to run: none of the chosen scenarios applies to --transport " + ",".join(transports))
    clock = "virtual time" if virtual else "real time"
    net = "external" if external_settings is not None else network or ("memory" if virtual else "loopback")
    begun = time.perf_counter()
    if external_settings is not None:
        todo_external = [(s, p) for s in chosen for p in profiles]
        err.print(f"{title}: {len(todo_external)} cases, seed {seed}, real time, external device "
                  f"{external_settings.user} (the device's own transport)")
        external_settings.seed = seed
        cases = _run_external(external_settings, todo_external, trace_dir, err, quiet=quiet, hep=sender)
    else:
        on = ",".join(transports) if transports else "every transport each scenario applies to; -t narrows"
        err.print(f"{title}: {len(todo)} cases ({on}), seed {seed}, {clock} on {net}, reference device"
                  + (f" with behaviour {behaviour}" if behaviour else "")
                  + (f", PBX {pbx} (pushes to {format_hostport(*own_pbx['push_listen'])})" if own_pbx else ""))
        cases = _run_reference(todo, err, quiet=quiet, seed=seed, behaviour=behaviour, virtual=virtual,
                               network=network, trace_dir=trace_dir, own_pbx=own_pbx, watchdog=watchdog,
                               hep=sender)
    _close(sender)
    wall = time.perf_counter() - begun
    _print_table(cases, _console())
    failed = [c for c in cases if not c.passed]
    lab_seconds = sum(r.duration for c in cases for r in c.runs)
    summary = (f"{len(cases) - len(failed)}/{len(cases)} cases passed in {wall:.1f} s "
               f"({lab_seconds:.0f} s of lab time, {clock}); seed {seed}")
    _console().print(("[green]PASS[/green] " if not failed else "[red]FAIL[/red] ") + summary)
    if declared:
        _console().print("declared deadlines: " + ", ".join(f"{k} {v:g} s" for k, v in declared.items()),
                         highlight=False)
    for line in advisories(declared):
        _console().print(f"[yellow]{line}[/yellow]", highlight=False, soft_wrap=True)
    settings = {"scenarios": [s.id for s in chosen], "profiles": [p.name if p else "none" for p in profiles],
                "transports": transports or "every transport of each scenario", "device": device, "behaviour": behaviour,
                "pbx": pbx, "seed": seed, "virtual_time": virtual, "network": net, "set": sets, "watchdog": watchdog,
                "wall_seconds": round(wall, 3), "lab_seconds": round(lab_seconds, 3),
                "skipped": [{"scenario": sid, "why": why} for sid, why in skipped],
                "deadlines": declared, "advisories": advisories(declared)}
    _write_reports(cases, settings, external_settings, json_path=json_path, junit=junit, trace_dir=trace_dir,
                   title=title, err=err)
    return 0 if not failed else 1


def _close(sender) -> None:
    if sender is not None:
        sender.close()


def _hep_sender(hep: tuple | None, err: Console):
    """The HEP sender of --hep (target, capture id, password), None without it; its warnings in yellow."""
    if hep is None or hep[0] is None:
        return None
    return open_sender(*hep, warn=lambda text: err.print(f"[yellow]{text}[/yellow]", highlight=False))


def _declared(deadlines: list[str]) -> dict[str, float]:
    """The app's declared deadlines: ``faultlab.toml``'s ``[deadlines]``, then each ``--deadline``."""
    try:
        declared = load_config()
        for value in deadlines:
            declared.update(parse_deadlines(value))
    except DeadlineError as exc:
        _fail(str(exc))
    return declared


def own_pbx_transports(tls_port: int | None) -> list[str]:
    """The transports a PBX of one's own is tried on when ``--transport`` is not given: UDP and TCP, and TLS
    only when ``--pbx-tls-port`` says where it listens (many PBXes have no TLS listener)."""
    return ["udp", "tcp"] + (["tls"] if tls_port is not None else [])


def _mode(device: str, pbx: str, virtual: bool | None, external: dict, *, behaviour: str | None, network: str,
          transports: list[str], pbx_tls_port: int | None, pbx_ca: Path | None) -> tuple:
    """(external lab settings or None, virtual time or not, ``run_case``'s keywords for a PBX of the user's own or
    None), from the options; fails on options that do not go together."""
    external_settings = None
    if device == "external":
        external_settings = _external_settings(external, virtual=virtual, behaviour=behaviour,
                                               network=network, transports=transports)
        virtual = False
    elif device != "reference":
        _fail(f"--device {device!r}: use reference or external")
    else:
        allowed = {"push_listen"} if pbx != "embedded" else set()
        given = [name for name, value in external.items() if value and name not in allowed]
        if given:
            _fail(f"--{given[0].replace('_', '-')} only with --device external (a real device); the reference "
                  "device runs in a lab of its own per run")
        if pbx != "embedded" and virtual:
            _fail("--pbx HOST:PORT runs in real time: a PBX of your own does not follow faultlab's virtual clock "
                  "(drop --virtual-time)")
        virtual = (pbx == "embedded") if virtual is None else virtual
    own_pbx = None
    if pbx != "embedded":
        if device == "external":
            _fail("--device external with --pbx HOST:PORT is not available: a real device runs against the embedded "
                  "PBX (the lab needs its bindings and push notes); use --pbx embedded")
        own_pbx = _own_pbx(pbx, external.get("push_listen"), pbx_tls_port, pbx_ca)
    if behaviour is not None and behaviour not in BEHAVIOURS:
        _fail(f"--behaviour {behaviour!r}: use one of {_BEHAVIOURS}")
    for t in transports:
        if t not in ("udp", "tcp", "tls"):
            _fail(f"--transport {t!r}: use udp, tcp or tls")
    if network not in ("", "memory", "loopback"):
        _fail(f"--network {network!r}: use memory or loopback")
    if network == "memory" and not virtual:
        _fail("--network memory needs virtual time (drop --real-time)")
    return external_settings, virtual, own_pbx


def _chosen(scenario_names: list[str], profile_names: list[str], sets: list[str], err: Console) -> tuple:
    """The scenarios (with the --set overrides) and the profiles to run ([None] for none); notes on stderr for
    entries of a team library that replace built-in ones."""
    try:
        chosen = [load_scenario(n) for n in scenario_names] if scenario_names else list_scenarios()
        replaced = {e.item.id: e for e in scenario_entries() if e.hides and any(e.item is s for s in chosen)}
        for key, value in _parse_sets(sets):
            only, sep, field_key = key.partition(":")  # "S04:call.cancel_at": that scenario only
            if sep and not any(only.upper() == s.id.upper() for s in chosen):
                _fail(f"--set {key}={value}: {only} is not among the chosen scenarios")
            chosen = [override(s, field_key, value) if sep and only.upper() == s.id.upper() else
                      s if sep else override(s, key, value) for s in chosen]
    except ScenarioError as exc:
        _fail(str(exc))
    if not chosen:
        _fail(f"no scenarios found; looked in: {library.where('scenarios')}")
    try:
        profiles = [load_profile(p) for p in profile_names] or [None]
        sources = library.files("profiles") if profile_names else []
    except (ProfileError, library.LibraryError) as exc:
        _fail(str(exc))
    for e in replaced.values():  # a team's entry used in place of a built-in one: say so (see lab scenarios)
        err.print(f"note: {e.item.id} {e.item.slug} from {e.origin} replaces the {' and '.join(e.hides)} scenario",
                  highlight=False, soft_wrap=True)
    for p in filter(None, profiles):
        used = next((s.origin for s in sources if str(s.path) == p.source), None)  # None: a file given by path
        hidden = [s.origin for s in sources if s.path.stem == p.name and str(s.path) != p.source]
        if used is not None and hidden:
            err.print(f"note: profile {p.name} from {used} replaces the {' and '.join(hidden)} profile",
                      highlight=False, soft_wrap=True)
    return chosen, profiles


def _run_reference(todo: list, err: Console, *, quiet: bool, own_pbx: dict | None, hep=None,
                   **options) -> list[Case]:
    """Run each (scenario, profile, transport) with the reference device, with a progress bar on stderr; each
    case's runs to the HEP sender ``hep`` when it has run."""
    cases: list[Case] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=quiet) as progress:
        task = progress.add_task("running", total=len(todo))
        for scenario, profile, transport in todo:
            progress.update(task, description=f"{scenario.id} {profile.name if profile else 'none'} {transport}")
            cases.append(run_case(scenario, profile, transport=transport, **options, **(own_pbx or {})))
            if hep is not None:
                send_case(hep, cases[-1])
            progress.advance(task)
    return cases


def _write_reports(cases: list[Case], settings: dict, external_settings, *, json_path: Path | None,
                   junit: Path | None, trace_dir: Path | None, title: str, err: Console) -> None:
    """The JSON and JUnit reports asked for, and where the traces are."""
    if external_settings is not None:
        settings["external"] = {"listen": [str(e) for e in external_settings.listen],
                                "push_listen": format_hostport(*external_settings.push_listen),
                                "events_listen": format_hostport(*external_settings.events_listen),
                                "user": external_settings.user, "apns_url": external_settings.apns_url}
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(to_json(cases, settings), indent=2) + "\n")
        err.print(f"JSON report: {json_path}")
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_bytes(to_junit(cases, name=title))
        err.print(f"JUnit report: {junit}")
    if trace_dir is not None:
        err.print(f"traces: {trace_dir}/ (faultlab trace ladder FILE, faultlab trace pcap FILE -o FILE.pcap)")


def _console() -> Console:
    return Console() if sys.stdout.isatty() else Console(width=140)


def _print_table(cases: list[Case], console: Console) -> None:
    """One row per case: a column per check (pass / FAIL / - when it does not apply), the end, the key times."""
    table = Table(title="verdicts (1 end: ends right, in time; 2 early: waits on an early answer; 3 cancel: no "
                  "cancel-push dependence; inv: invariants; sip: the SIP the device owes; push: the PBX's side of "
                  "push; times in s after the push)", box=box.SIMPLE_HEAD)
    for column in ("scenario", "profile", "transport"):
        table.add_column(column, no_wrap=True)
    for check in _CHECK_TITLES:
        table.add_column(_CHECK_TITLES[check], justify="center", no_wrap=True, min_width=8)
    for column in ("end", "tR", "tI"):
        table.add_column(column, justify="right", no_wrap=True)
    for case in cases:
        results = {c.check: c for c in case.checks}
        cells = []
        for check in _CHECK_TITLES:
            r = results.get(check)
            cells.append("-" if r is None else "[green]pass[/green]" if r.passed else "[red]FAIL[/red]")
        times = case.times()
        run = case.runs[0]
        end = next((e for e in run.events if e.kind == "device" and e.call_id == run.call_id
                    and e.detail.get("event") == "ended"), None)
        end_text = f"{end.detail.get('reason')} {times['end']:.2f}" if end is not None and "end" in times else "none"
        table.add_row(f"{case.scenario.id} {case.scenario.slug}", case.profile_name, case.transport, *cells,
                      end_text, *(f"{times[k]:.2f}" if k in times else "-" for k in ("register-ok", "invite")))
    console.print(table)
    for case in cases:
        for check in case.checks:
            if not check.passed:
                console.print(f"[red]FAIL[/red] {case.scenario.id} {case.scenario.slug} / {case.profile_name} / "
                              f"{case.transport} / {check.check}: {check.message}", highlight=False)
                for line in check.evidence:
                    console.print(f"    {line}", highlight=False)


# the app's own deadlines (faultlab.lab.deadlines)
_DeadlineOption = Annotated[list[str], typer.Option(
    "--deadline", metavar="NAME=DURATION,...", help="The app's own deadlines, given to the reference device and used "
    "by the checks instead of the reference's (register=8s, invite=5s, total=15s, ring=45s), e.g. "
    "invite=4.5s,register=8s; also \\[deadlines] in ./faultlab.toml. A value outside the recommended range gets an "
    "advisory line.")]


_ScenarioOption = Annotated[list[str], typer.Option(
    "--scenario", "-s", help="A scenario by id (S04), slug or TOML file; repeat for more. Default: the whole "
                             "catalogue (faultlab lab scenarios).")]
_ProfileOption = Annotated[list[str], typer.Option(
    "--profile", "-p", help="A fault profile (library name or file) applied on top of each scenario's own faults; "
                            "repeat for a matrix scenarios x profiles. Default: none.")]


@app.command("run")
def run(
    scenario: _ScenarioOption = [],
    profile: _ProfileOption = [],
    transport: Annotated[list[str], typer.Option("--transport", "-t", help="udp, tcp or tls; repeat for more. "
                                                  "Default: every transport each scenario applies to.")] = [],
    device: Annotated[str, typer.Option(help="reference: faultlab's reference device (simulated iOS app), in a lab "
                                        "of its own per run. external: a real, instrumented device that "
                                        "registers through faultlab and posts its device events (real time; "
                                        "see --listen ... --pause and docs/lab-runs.md).")] = "reference",
    behaviour: Annotated[Optional[str], typer.Option(help=f"Run the reference device with one of its known-bad "
                                                     f"behaviours: {_BEHAVIOURS}.")] = None,
    pbx: Annotated[str, typer.Option(help="embedded: faultlab's PBX (registrar with RFC 8599 push), or HOST:PORT: "
                                     "a PBX of your own (UDP and TCP on PORT, TLS on --pbx-tls-port) that sends its "
                                     "RFC 8599 pushes to faultlab's push gateway on --push-listen; real time only; "
                                     "scenarios that script a second device are skipped.")] = "embedded",
    pbx_tls_port: Annotated[Optional[int], typer.Option(help="--pbx HOST:PORT: its TLS port (default PORT + 1); without --transport, TLS runs only when this is given.")]
        = None,
    pbx_ca: Annotated[Optional[Path], typer.Option(help="--pbx HOST:PORT: CA file to verify its TLS certificate "
                                                   "(default: the system's CAs).", dir_okay=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of every random choice (faultlab's faults); printed "
                                                "and in the reports. Default: a random one.")] = None,
    virtual_time: Annotated[Optional[bool], typer.Option("--virtual-time/--real-time", help="Virtual time "
                                                         "(trio's mock clock: a 30-second call in milliseconds) or "
                                                         "the real clock. Default: virtual time; --device "
                                                         "external is real time only.",
                                                         show_default=False)] = None,
    network: Annotated[str, typer.Option(help="memory (in-process network, virtual time only) or loopback (real "
                                         "sockets on 127.0.0.1). Default: memory in virtual time, loopback in "
                                         "real time.")] = "",
    set_: Annotated[list[str], typer.Option("--set", help="Override a scenario field for this run, KEY=VALUE, for "
                                            "every chosen scenario, or ID:KEY=VALUE for one: expect.end=failed, "
                                            "expect.by=register-ok+5s,push+15s, S04:device.invite_deadline=3s, "
                                            "call.cancel_at=2s, pbx.hold=6s ...")] = [],
    deadline: _DeadlineOption = [],
    junit: Annotated[Optional[Path], typer.Option(help="Write a JUnit XML report here.")] = None,
    json_: Annotated[Optional[Path], typer.Option("--json", help="Write a JSON report here.")] = None,
    trace_dir: Annotated[Optional[Path], typer.Option(help="Write each run's timeline as JSONL here "
                                                      "(faultlab trace ladder / pcap read them).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    watchdog: Annotated[int, typer.Option(metavar="ROUNDS", help="Virtual time: a run whose clock stops advancing "
                                          "for this many scheduler rounds (an actor looping at one instant) fails "
                                          "with the instant, the busy tasks and the last events, instead of "
                                          "hanging. 0: off.")] = DEFAULT_LIMIT,
    listen: Annotated[list[str], typer.Option("--listen", metavar="TRANSPORT:HOST:PORT", help="--device external: "
                                              "faultlab's relay, where the device sends its SIP (in front of the "
                                              "embedded PBX); repeat for more. Default: udp:0.0.0.0:5060.")] = [],
    push_listen: Annotated[Optional[str], typer.Option("--push-listen", metavar="HOST:PORT", help="--device "
                                                       "external or --pbx HOST:PORT: the APNs-compatible push "
                                                       "gateway the PBX pushes through. Default (external): "
                                                       "0.0.0.0:2197.")] = None,
    apns_url: Annotated[Optional[str], typer.Option("--apns-url", metavar="URL", help="--device external: relay "
                                                    "pushes to this APNs (e.g. https://api.sandbox.push.apple.com); "
                                                    "without it pushes go only to devices reading the gateway's "
                                                    "stream /devices/<token>/pushes.")] = None,
    apns_key: Annotated[Optional[Path], typer.Option("--apns-key", metavar="FILE", dir_okay=False, help="--apns-url: "
                                                     "the team's APNs auth key (.p8, EC P-256); with --apns-key-id "
                                                     "and --apns-team-id the push gateway signs the pushes it "
                                                     "relays (authorization: bearer <JWT>), which Apple needs: the "
                                                     "embedded PBX sends no authorization.")] = None,
    apns_key_id: Annotated[Optional[str], typer.Option("--apns-key-id", metavar="KEYID", help="--apns-key: its Key "
                                                       "ID (10 characters).")] = None,
    apns_team_id: Annotated[Optional[str], typer.Option("--apns-team-id", metavar="TEAMID", help="--apns-key: the "
                                                        "Team ID (10 characters).")] = None,
    events_listen: Annotated[Optional[str], typer.Option("--events-listen", metavar="HOST:PORT", help="--device "
                                                         "external: the event collector the app posts its device "
                                                         "events to (POST /events). Default: 0.0.0.0:8090.")] = None,
    user: Annotated[Optional[str], typer.Option("--user", help="--device external: the user whose device is "
                                                "called (sip:USER@lab.test). Default: alice.")] = None,
    register_timeout: Annotated[Optional[str], typer.Option("--register-timeout", metavar="DURATION",
                                                            help="--device external: how long to wait for the "
                                                            "device to register. Default: 120s.")] = None,
    pause: Annotated[Optional[str], typer.Option("--pause", metavar="DURATION", help="--device external: the "
                                                 "pause between calls. Default: 5s.")] = None,
    hep: HepOption = None,
    hep_id: HepIdOption = 1,
    hep_password: HepPasswordOption = None,
) -> None:
    """Run scenarios x profiles in a lab of its own and print a verdict per check (exit 0: every check passed)."""
    raise typer.Exit(execute(scenario, profile, transport, **_execute_options(locals())))


def _execute_options(options: dict) -> dict:
    """:func:`execute`'s keywords from the options of ``lab run`` (by name)."""
    out = {name: options[name] for name in ("device", "behaviour", "pbx", "seed", "pbx_tls_port", "pbx_ca", "network",
                                            "junit", "trace_dir", "quiet", "watchdog")}
    out["hep"] = (hep_target(options["hep"], options["hep_id"], options["hep_password"]), options["hep_id"],
                  options["hep_password"])
    out.update(virtual=options["virtual_time"], sets=options["set_"], json_path=options["json_"],
               deadlines=options["deadline"], external={name: options[name] for name in _EXTERNAL_OPTIONS})
    return out


def demo(
    behaviour: Annotated[Optional[str], typer.Option(help=f"Show how a known-bad device fails: {_BEHAVIOURS}.")]
        = None,
    real_time: Annotated[bool, typer.Option("--real-time", help="Run on the real clock over loopback sockets "
                                            "(several minutes) instead of virtual time.")] = False,
    trace_dir: Annotated[Optional[Path], typer.Option(help="Also write each run's timeline as JSONL here.")] = None,
) -> None:
    """Run the whole scenario catalogue against the embedded PBX and the reference device (no root, nothing
    outside this process in virtual time) and print the verdicts."""
    code = execute([], [], [], device="reference", behaviour=behaviour, pbx="embedded", seed=1, virtual=not real_time,
                   network="loopback" if real_time else "", sets=[], junit=None, json_path=None, trace_dir=trace_dir,
                   quiet=not sys.stderr.isatty(), title="faultlab demo")
    if code == 0 and behaviour is None:
        typer.echo("Next: faultlab demo --behaviour depends-on-cancel-push (a device that fails), "
                   "faultlab lab scenarios, faultlab lab run --help.")
    raise typer.Exit(code)
