"""The step search and the pass rule of the SIPp benchmarks (``bench/stepsearch.py``), and the
register benchmark's reading of SIPp's screens: pure functions, no SIPp needed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # register_bench imports stepsearch by its plain name
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


stepsearch = load("stepsearch")


def threshold_trial(capacity: int, tried: list[int]):  # type: ignore[no-untyped-def]
    def trial(rate: int) -> object:
        tried.append(rate)
        return stepsearch.Trial(rate, rate <= capacity, "" if rate <= capacity else "over")

    return trial


@pytest.mark.parametrize("capacity", [1, 730, 1000, 2250, 17000, 23999])
def test_search_finds_the_capacity_within_the_resolution(capacity: int) -> None:
    tried: list[int] = []
    found = stepsearch.step_search(
        threshold_trial(capacity, tried), start=1000, max_rate=24000, max_steps=20, resolution=0.1
    )
    assert found.rate <= capacity  # never a rate that failed
    assert found.failed_at is not None and found.failed_at > capacity
    assert found.failed_at - found.rate <= max(1, 0.1 * found.failed_at)
    assert len(tried) == len(found.trials) <= 20
    assert all(t.passed == (t.rate <= capacity) for t in found.trials)


def test_search_stops_at_the_step_limit_and_at_max_rate() -> None:
    tried: list[int] = []
    found = stepsearch.step_search(threshold_trial(5000, tried), start=1000, max_rate=24000, max_steps=3)
    assert tried == [1000, 2000, 4000] and found.rate == 4000 and found.failed_at is None
    assert "step limit" in found.stopped
    tried.clear()
    found = stepsearch.step_search(threshold_trial(10**6, tried), start=1000, max_rate=3000)
    assert tried == [1000, 2000, 3000] and found.rate == 3000
    assert "passed" in found.stopped


def test_nothing_passes() -> None:
    found = stepsearch.step_search(
        threshold_trial(0, []), start=100, max_rate=1000, max_steps=20, min_rate=1
    )
    assert found.rate == 0 and found.failed_at == 1 and "even 1/s failed" in found.stopped


def test_verdict() -> None:
    rule = stepsearch.Criteria(schedule=0.95, retransmissions=0.001)
    clean = dict(
        offered=1000, achieved=990.0, calls=8000, ok=8000, failed=0, retransmissions=16,
        timeouts=0, unexpected=0, sent=16000, criteria=rule,
    )  # fmt: skip
    assert stepsearch.sipp_verdict(**clean) == ""
    assert "17 retransmissions" in stepsearch.sipp_verdict(**{**clean, "retransmissions": 17})
    assert "SIPp reached 940/s" in stepsearch.sipp_verdict(**{**clean, "achieved": 940.0})
    assert "1 of 8000 failed" in stepsearch.sipp_verdict(**{**clean, "ok": 7999, "failed": 1})
    assert "2 timeouts" in stepsearch.sipp_verdict(**{**clean, "timeouts": 2})
    assert "unexpected" in stepsearch.sipp_verdict(**{**clean, "unexpected": 1})


SCREEN = """\
------------------------------ Scenario Screen -------- [1-9]: Change Screen --
                                 Messages  Retrans   Timeout   Unexpected-Msg
    REGISTER ---------->  B-RTD1 6000      12        0
         401 <----------  E-RTD1 5990      0         0         3
    REGISTER ---------->  B-RTD2 5990      7         1
         200 <----------  E-RTD2 5980      0         0         0
------------------------------ Test Terminated --------------------------------
  Call Rate              |    0.000 cps              | 1992.032 cps
  Successful call        |        0                  |     5980
  Failed call            |        0                  |       20
"""


def test_register_bench_reads_sipp_screens_with_rtd_marks(tmp_path: Path) -> None:
    bench = load("register_bench")
    load_ = bench.Load("t", 1, offered=2000.0, calls=6000)
    bench.parse_sipp_output(SCREEN, load_)
    assert (load_.ok, load_.failed, load_.achieved) == (5980, 20, 1992.032)
    assert [s[1] for s in load_.steps] == [6000, 5990, 5990, 5980]
    assert (load_.retransmissions, load_.timeouts, load_.unexpected, load_.sent) == (19, 1, 3, 11990)
    assert "20 of 6000 failed" in load_.verdict(stepsearch.Criteria())
    load_.errors = {"unexpected 503 (call aborted)": 20, "retransmission timeout (call aborted)": 1}
    assert "[SIPp: 20 x unexpected 503 (call aborted), 1 x retransmission" in load_.verdict(
        stepsearch.Criteria()
    )
    (tmp_path / "reg_1_rtt.csv").write_text(
        "Date_ms;response_time_ms;rtd_no\n" + "".join(f"1;{i % 10};1\n" for i in range(100)) + "1;40;2\n"
    )
    rtt = bench.read_rtt(tmp_path, tmp_path / "reg.xml", bench.RTDS)
    assert rtt["401"]["p50"] == 5 and rtt["401"]["p99"] == 9 and rtt["200"]["count"] == 1
    assert not list(tmp_path.glob("*_rtt.csv"))  # read once, removed


#: the shape of shared/peer/register-auth.xml (REGISTER, 401, REGISTER with credentials, 200)
PEER_SCENARIO = """\
<scenario name="register-auth">
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[field1] SIP/2.0
      CSeq: 1 REGISTER
    ]]>
  </send>
  <recv response="401" auth="true" />
  <send retrans="500">
    <![CDATA[
      REGISTER sip:[field1] SIP/2.0
      CSeq: 2 REGISTER
      [field2]
    ]]>
  </send>
  <recv response="200" />
</scenario>
"""


def test_rtd_scenario_keeps_the_peers_messages(tmp_path: Path) -> None:
    bench = load("register_bench")
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / bench.SCENARIO).write_text(PEER_SCENARIO)
    marked = bench.rtd_scenario(peer, tmp_path).read_text()
    for attribute in (' start_rtd="1"', ' start_rtd="2"', ' rtd="1"', ' rtd="2"'):
        assert marked.count(attribute) == 1
    strip = marked.replace(' start_rtd="1"', "").replace(' start_rtd="2"', "")
    strip = strip.replace(' rtd="1"', "").replace(' rtd="2"', "")
    assert strip == PEER_SCENARIO
    (peer / bench.SCENARIO).write_text(PEER_SCENARIO.replace('<recv response="401" auth="true" />', ""))
    with pytest.raises(RuntimeError, match="not the two-REGISTER scenario"):
        bench.rtd_scenario(peer, tmp_path)


def test_register_bench_reports_the_median_cpu_trial_or_a_failed_one() -> None:
    bench = load("register_bench")

    def trial(cpu: float, ok: int = 1000, note: str = "") -> object:
        return bench.Load("imscore-memory", 0, ok=ok, server_cpu=cpu, note=note)

    low, middle, high = trial(0.25), trial(0.30), trial(0.40)
    assert bench.median_load([high, low, middle]) is middle
    # per registration, not per trial: 0.5 s over 2,000 registrations is the cheapest here
    cheap = trial(0.5, ok=2000)
    assert bench.median_load([middle, cheap, high]) is middle
    assert bench.median_load([low, high]) is low  # the lower middle of an even count
    failed = trial(0.1, note="did not pass: 3 failed")
    assert bench.median_load([low, failed, middle]) is failed
    assert bench.median_load([middle]) is middle


def test_register_bench_refuses_no_cpu_trial(capsys: pytest.CaptureFixture[str]) -> None:
    bench = load("register_bench")
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--cpu-trials", "0"])
    assert stopped.value.code == 2
    assert "--cpu-trials: expected at least 1, got 0" in capsys.readouterr().err
