"""faultlab's pytest plugin: faultlab's relay, its lab and its scenario catalogue as fixtures in your own tests.

Installing faultlab enables it (the ``pytest11`` entry point ``faultlab``; ``-p no:faultlab`` turns it off).
See docs/pytest-plugin.md for a worked example. The fixtures:

* ``faultlab_proxy`` (async tests): ``async with faultlab_proxy("udp:127.0.0.1:5060", profile="lossy-wifi") as
  proxy:`` runs faultlab's relay in the test's ``trio.run`` in front of that upstream and gives the running
  :class:`faultlab.proxy.Proxy` (``proxy.bound["udp"]``, ``proxy.activate(...)``, ``proxy.release()``,
  ``proxy.events``); leaving the block stops it;
* ``faultlab_lab`` (async tests): ``async with faultlab_lab("tcp") as lab:`` is
  :func:`faultlab.lab.stack.open_lab_stack` on the in-memory network, with a lab CA in a temporary directory for
  TLS; use pytest-trio's ``autojump_clock`` fixture for virtual time;
* ``faultlab_scenario`` (sync tests): ``faultlab_scenario("S04", "lossy-wifi")`` runs a catalogue scenario on
  every transport it applies to (:func:`faultlab.lab.runner.run_case` per transport, each its own ``trio.run``)
  and returns a :class:`ScenarioResult`, whose :meth:`~ScenarioResult.assert_passed` fails with the checks'
  messages and evidence.

``--faultlab-seed N`` (or ``random``) sets the fixtures' default seed (0 otherwise); the pytest header shows it and
a failed test that used a fixture lists the seeds it ran with. ``--faultlab-transport udp,tcp`` narrows the
transports ``faultlab_scenario`` plays by default (every one the scenario applies to otherwise).

The plugin loads in every pytest run of a project that has faultlab installed, so importing it costs nothing but
this module: trio and faultlab's modules are imported inside the fixtures.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

import pytest

if TYPE_CHECKING:
    from faultlab.faults import Profile
    from faultlab.lab.checks import CheckResult
    from faultlab.lab.runner import Case
    from faultlab.lab.stack import LabStack
    from faultlab.addr import Endpoint
    from faultlab.proxy import Proxy

__all__ = ["ScenarioResult"]

_SEED = pytest.StashKey[int]()
_TRANSPORTS = pytest.StashKey[tuple[str, ...]]()  # --faultlab-transport: () for every one
_CONFDIR = pytest.StashKey[Path]()
_USED = pytest.StashKey[list[str]]()  # on a test item: what its faultlab fixtures ran with


# ---------------------------------------------------------------------------------------------- hooks


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faultlab", "faultlab fixtures (faultlab_proxy, faultlab_lab, faultlab_scenario)")
    group.addoption("--faultlab-seed", metavar="N", default=None,
                    help="Default seed of faultlab's fixtures: an integer, or 'random' for one drawn for this "
                         "session and shown in the header. Default: 0.")
    group.addoption("--faultlab-transport", metavar="LIST", action="append", default=[],
                    help="The transports faultlab_scenario plays each scenario on when the test names none: udp, tcp, "
                         "tls, comma-separated or repeated. Default: every transport the scenario applies to.")


def pytest_configure(config: pytest.Config) -> None:
    value = config.getoption("faultlab_seed", None)
    if value is None:
        seed = 0
    elif value == "random":
        seed = random.SystemRandom().randrange(2**32)
    else:
        try:
            seed = int(value)
        except ValueError:
            raise pytest.UsageError(f"--faultlab-seed {value!r}: give an integer or 'random'") from None
    config.stash[_SEED] = seed
    wanted = tuple(t.strip() for item in config.getoption("faultlab_transport", None) or [] for t in item.split(",")
                   if t.strip())
    bad = [t for t in wanted if t not in ("udp", "tcp", "tls")]
    if bad:
        raise pytest.UsageError(f"--faultlab-transport {bad[0]!r}: use udp, tcp or tls (comma-separated)")
    config.stash[_TRANSPORTS] = wanted


def pytest_report_header(config: pytest.Config) -> str:
    wanted = config.stash.get(_TRANSPORTS, ())
    return (f"faultlab: default seed {config.stash[_SEED]} (--faultlab-seed)"
            + (f", transports {','.join(wanted)} (--faultlab-transport)" if wanted else ""))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    used = item.stash.get(_USED, None)
    if used and report.failed:
        report.sections.append(("faultlab", "\n".join(used)))
    return report


def _seed(request: pytest.FixtureRequest, seed: int | None, what: str) -> int:
    """The seed a fixture runs with (``seed``, or the session's default), noted for the test's failure report."""
    if seed is None:
        seed = request.config.stash[_SEED]
        note = f"seed {seed}, the session default (--faultlab-seed {seed} runs it again)"
    else:
        note = f"seed {seed}"
    request.node.stash.setdefault(_USED, []).append(f"{what}: {note}")
    return seed


def _profile(profile: str | Path | Profile | None) -> Profile | None:
    if profile is None:
        return None
    from faultlab.faults import Profile, load_profile

    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, (str, Path)):
        return load_profile(profile)
    raise TypeError(f"profile: a library name, a TOML path or a faultlab.faults.Profile, not {profile!r}")


def _profile_label(profile: Profile | None) -> str:
    return "none" if profile is None else profile.name


def _lab_confdir(config: pytest.Config, factory: pytest.TempPathFactory) -> Path:
    """One lab CA directory per session (the CA is made on first use, by the first TLS lab)."""
    if _CONFDIR not in config.stash:
        config.stash[_CONFDIR] = factory.mktemp("faultlab-lab-ca")
    return config.stash[_CONFDIR]


# ---------------------------------------------------------------------------------------------- faultlab_proxy


def _endpoints(spec: str | Endpoint | Sequence[str | Endpoint]) -> list[Endpoint]:
    from faultlab.addr import parse_endpoint

    items = [spec] if isinstance(spec, str) or not isinstance(spec, Sequence) else list(spec)
    return [parse_endpoint(item) if isinstance(item, str) else item for item in items]


@pytest.fixture
def faultlab_proxy(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Start faultlab's relay in this test's ``trio.run``, in front of an upstream you name (async tests).

    ::

        async with faultlab_proxy(f"udp:127.0.0.1:{port}", profile="lossy-wifi", seed=3) as proxy:
            await sock.sendto(data, proxy.bound["udp"])
            ...
            assert [e for e in proxy.events if e.kind == "dropped"]

    ``upstream``: ``"TRANSPORT:HOST:PORT"`` (or a :class:`faultlab.addr.Endpoint`), or a list of them, one per
    transport. ``listen``: where faultlab listens (default: the upstream's transport on 127.0.0.1, port 0; read
    the port from ``proxy.bound[transport]``). ``profile``: a library name, a TOML path or a
    :class:`faultlab.faults.Profile` (default: none, a faithful relay); switch later with ``proxy.activate(...)``.
    ``seed``: default ``--faultlab-seed``. ``timeline``: a :class:`faultlab.lab.timeline.Timeline` to write the
    relay's events to (default: its own, ``proxy.events``). Other keywords go to
    :class:`faultlab.proxy.ProxyConfig` (``record_route``, ``trace_path``, ``quiet``, ``api``...).
    Leaving the block stops the relay; start as many as the test needs.
    """

    @asynccontextmanager
    async def start(upstream: str | Endpoint | Sequence[str | Endpoint], *,
                    profile: str | Path | Profile | None = None, seed: int | None = None,
                    listen: str | Endpoint | Sequence[str | Endpoint] | None = None, timeline: Any = None,
                    **config: Any) -> AsyncIterator[Proxy]:
        import trio

        from faultlab.addr import Endpoint
        from faultlab.api.run import serve_proxy_with_api
        from faultlab.proxy import ProxyConfig

        upstreams = _endpoints(upstream)
        if listen is None:
            listens = [Endpoint(ep.transport, "::1" if ":" in ep.host else "127.0.0.1", 0) for ep in upstreams]
        else:
            listens = _endpoints(listen)
        loaded = _profile(profile)
        seed = _seed(request, seed, f"faultlab_proxy({', '.join(map(str, upstreams))}, "
                                    f"profile {_profile_label(loaded)})")
        if timeline is not None:
            config.setdefault("trace", timeline.trace)
            config.setdefault("trace_t0", timeline.t0)
        async with trio.open_nursery() as nursery:
            proxy = await nursery.start(serve_proxy_with_api, ProxyConfig(listen=listens, upstream=upstreams,
                                                                          profile=loaded, seed=seed, **config))
            try:
                yield proxy
            finally:
                nursery.cancel_scope.cancel()

    return start


# ---------------------------------------------------------------------------------------------- faultlab_lab


@pytest.fixture
def faultlab_lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """Start the whole lab (:func:`faultlab.lab.stack.open_lab_stack`) in this test's ``trio.run`` (async tests).

    ::

        async def test_call(faultlab_lab, autojump_clock):
            async with faultlab_lab("tcp", device_config=DeviceConfig(answer_after=1.0)) as lab:
                result = await lab.call(hang_up_after=2.0)
            assert result.final == 200 and result.ended == "remoteEnded"

    Push gateway, embedded PBX, faultlab's relay, the reference device and the caller, on one shared timeline
    (``lab.timeline.events``). Defaults: ``network="memory"`` (no sockets; the memory network then serves every
    socket of the rest of this test), ``seed`` from ``--faultlab-seed``, a lab CA made once per session in a
    temporary directory (``confdir``, used for TLS). ``profile``: a library name, a TOML path or a
    :class:`faultlab.faults.Profile`, active from the start (the device's first REGISTER meets it too); to fault
    only the call, ``lab.proxy.activate(profile)`` later. Other keywords go to ``open_lab_stack``.

    Time: without a mock clock the lab runs in real time (a 30-second scenario takes 30 seconds); request
    pytest-trio's ``autojump_clock`` fixture and it runs in virtual time, in milliseconds.
    """

    @asynccontextmanager
    async def open_lab(transport: str = "udp", *, profile: str | Path | Profile | None = None,
                       seed: int | None = None, network: str = "memory", confdir: Path | None = None,
                       **options: Any) -> AsyncIterator[LabStack]:
        from faultlab.lab.stack import open_lab_stack

        loaded = _profile(profile)
        seed = _seed(request, seed, f"faultlab_lab({transport}, profile {_profile_label(loaded)})")
        if confdir is None and transport == "tls":
            confdir = _lab_confdir(request.config, tmp_path_factory)
        async with open_lab_stack(transport, profile=loaded, seed=seed, network=network, confdir=confdir,
                                  **options) as lab:
            yield lab

    return open_lab


# ---------------------------------------------------------------------------------------------- faultlab_scenario


def _transports(scenario: Any, asked: str | Sequence[str] | None, narrowed: Sequence[str]) -> list[str]:
    """The transports ``faultlab_scenario`` plays: those asked for, else those of ``--faultlab-transport`` the
    scenario applies to, else every one it applies to. ValueError for one it does not apply to."""
    if asked:
        wanted = [asked] if isinstance(asked, str) else list(asked)
        bad = [t for t in wanted if t not in scenario.transports]
        if bad:
            raise ValueError(f"{scenario.id} applies to {', '.join(scenario.transports)}, not {bad[0]}")
        return wanted
    from faultlab.lab.runner import transports_for

    chosen = transports_for(scenario, narrowed)
    if not chosen:
        pytest.skip(f"{scenario.id} applies to {', '.join(scenario.transports)}, none of --faultlab-transport "
                    f"{','.join(narrowed)}")
    return chosen


@dataclass
class ScenarioResult:
    """One catalogue scenario's verdicts, one :class:`faultlab.lab.runner.Case` per transport played, for a test
    to assert on."""

    cases: list[Case]
    seed: int
    behaviour: str | None
    profile_arg: str | None  # how ``faultlab lab run -p`` names the profile (None: no profile)
    trace_dir: Path | None

    @property
    def case(self) -> Case:
        """The first transport's case (:attr:`cases` has one per transport)."""
        return self.cases[0]

    @property
    def transports(self) -> list[str]:
        return [c.transport for c in self.cases]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)

    @property
    def checks(self) -> list[CheckResult]:
        """Every check of every transport, in order (``result.on("tcp").checks`` for one)."""
        return [r for c in self.cases for r in c.checks]

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.checks if not r.passed]

    def on(self, transport: str) -> ScenarioResult:
        """The verdicts of one transport."""
        cases = [c for c in self.cases if c.transport == transport]
        if not cases:
            raise KeyError(f"{transport!r}: this scenario ran on {', '.join(self.transports)}")
        return ScenarioResult(cases, self.seed, self.behaviour, self.profile_arg, self.trace_dir)

    def check(self, name: str) -> CheckResult:
        """The result of one check by name (``ends-right``, ``early-answer``, ``cancel-push``, ``invariants``,
        ``sip-duties``): on the first transport where it failed, else on the first transport."""
        found = [r for r in self.checks if r.check == name]
        if not found:
            raise KeyError(f"{name!r}: this case ran {', '.join(dict.fromkeys(c.check for c in self.checks))}")
        return next((r for r in found if not r.passed), found[0])

    def explain(self) -> str:
        """Per transport: every check's verdict and message, the evidence of each failed one, and how to run the
        case again."""
        return "\n".join(self._explain(case) for case in self.cases)

    def _explain(self, case: Case) -> str:
        scenario = case.scenario
        verdict = "passed" if case.passed else "FAILED"
        lines = [f"{scenario.id} {scenario.slug} x {case.profile_name} over {case.transport} (seed {self.seed}"
                 + (f", behaviour {self.behaviour}" if self.behaviour else "") + f"): {verdict}"]
        for result in case.checks:
            lines.append(f"  {'ok  ' if result.passed else 'FAIL'} {result.check}: {result.message}")
            if not result.passed:
                lines.extend(f"         {line}" for line in result.evidence)
        traces = [run.trace_path for run in case.runs if run.trace_path]
        if traces:
            lines.append("timelines (faultlab trace ladder FILE): " + ", ".join(traces))
        again = f"faultlab lab run -s {scenario.id} -t {case.transport} --seed {self.seed}"
        if self.profile_arg is not None:
            again += f" -p {self.profile_arg}"
        if self.behaviour:
            again += f" --behaviour {self.behaviour}"
        lines.append(f"again: {again}")
        return "\n".join(lines)

    def assert_passed(self) -> None:
        """Fail the test, with :meth:`explain` as the message, unless every check passed."""
        if not self.passed:
            pytest.fail(self.explain(), pytrace=False)


@pytest.fixture
def faultlab_scenario(request: pytest.FixtureRequest,
                      tmp_path_factory: pytest.TempPathFactory) -> Callable[..., ScenarioResult]:
    """Run a catalogue scenario against the reference device and return its verdicts (sync tests only).

    ::

        def test_s04_on_wifi(faultlab_scenario):
            faultlab_scenario("S04", "lossy-wifi").assert_passed()

    ``scenario``: an id (``S04``), slug or TOML path (:func:`faultlab.lab.scenario.load_scenario`), or a loaded
    :class:`~faultlab.lab.scenario.Scenario`. ``profile``: a library name, a TOML path or a
    :class:`faultlab.faults.Profile`, merged with the scenario's own faults. ``transport``: one (``"tcp"``) or a
    list; default every transport the scenario applies to (narrowed by ``--faultlab-transport``); ``seed``: default ``--faultlab-seed``; ``behaviour``: one of the reference device's
    known-bad behaviours. Other keywords go to :func:`faultlab.lab.runner.run_case` (``virtual=False`` for the
    real clock on loopback). Each run's timeline is written as JSONL to a temporary directory, named in
    :meth:`ScenarioResult.explain`.

    ``run_case`` starts a ``trio.run`` of its own (virtual time, in-memory network), so call this from a plain
    ``def`` test, not an ``async def`` one.
    """

    def run(scenario: Any, profile: str | Path | Profile | None = None, *,
            transport: str | Sequence[str] | None = None,
            seed: int | None = None, behaviour: str | None = None, **options: Any) -> ScenarioResult:
        import trio

        from faultlab.lab.runner import run_case
        from faultlab.lab.scenario import Scenario, load_scenario

        if trio.lowlevel.in_trio_run():
            raise RuntimeError("faultlab_scenario runs a trio.run of its own: use it from a sync test "
                               "(def test_...), not an async one")
        loaded_scenario = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
        loaded = _profile(profile)
        transports = _transports(loaded_scenario, transport, request.config.stash.get(_TRANSPORTS, ()))
        seed = _seed(request, seed, f"faultlab_scenario({loaded_scenario.id}, profile {_profile_label(loaded)}, "
                                    f"{','.join(transports)})")
        if "tls" in transports and options.get("confdir") is None:
            options["confdir"] = _lab_confdir(request.config, tmp_path_factory)
        if "trace_dir" not in options:
            options["trace_dir"] = tmp_path_factory.mktemp(f"faultlab-{loaded_scenario.id}")
        cases = [run_case(loaded_scenario, loaded, transport=t, seed=seed, behaviour=behaviour, **options)
                 for t in transports]
        if isinstance(profile, (str, Path)):
            profile_arg = str(profile)
        else:
            profile_arg = None if loaded is None else loaded.name
        return ScenarioResult(cases, seed, behaviour, profile_arg, options.get("trace_dir"))

    return run
