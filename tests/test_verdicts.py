"""Claims are generated from the tests of implicit_reg.stats: verdict, numbers and tally."""

import json

import numpy as np
import pytest

from implicit_reg.report.report import (
    NOT_TESTED,
    Claim,
    Report,
    Untested,
    attempt,
    brief,
    tally,
    write_index,
)
from implicit_reg.stats import equivalence_test, paired_test, peak_test


def test_a_claims_verdict_and_numbers_come_from_its_test():
    a, b = np.array([3.0, 5.0, 4.0, 6.0]), np.array([1.0, 2.0, 3.0, 3.5])
    result = paired_test(a, b)
    c = Claim("a beats b", "Paper 2020", (result,), context="a and b per seed")
    assert c.verdict == result.verdict == "reproduced" and c.reproduced is True
    assert c.ours.startswith("a and b per seed; ") and result.sentence() in c.ours
    flipped = Claim("b beats a", "Paper 2020", (paired_test(b, a),))
    assert (
        flipped.verdict == "not reproduced" and flipped.row()["reproduces?"] == "**not reproduced**"
    )


def test_every_part_must_hold_and_a_missing_test_says_why():
    yes, maybe = (
        paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]),
        paired_test([1.0, 2.0, 0.5], [1.1, 1.5, 0.9]),
    )
    assert maybe.verdict == "inconclusive"
    assert Claim("both", "p", (yes, maybe)).verdict == "inconclusive"
    one_seed = attempt(paired_test, [1.0], [0.5])
    assert isinstance(one_seed, Untested) and "2 seeds" in one_seed.reason
    c = Claim("needs seeds", "p", (yes, one_seed))
    assert c.verdict == NOT_TESTED and "not tested: a test over seeds" in c.ours
    u = Claim("not a test of the paper", "p", untested="the paper is about the mean iterate")
    assert u.verdict == NOT_TESTED and u.ours == "the paper is about the mean iterate."
    with pytest.raises(ValueError, match="give its tests"):
        Claim("nothing", "p")
    with pytest.raises(TypeError, match="result of implicit_reg.stats"):
        Claim("a bool is not a test", "p", (True,))


def test_an_inconclusive_claim_states_the_detectable_effect():
    c = Claim("small effect", "p", (paired_test([0.1, -0.2, 0.3], [0.0, 0.0, 0.0]),))
    assert c.verdict == "inconclusive" and "could detect" in c.ours


def test_the_tally_counts_effects_not_sentences():
    yes = paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    records = [
        Claim("rise", "p", (yes,), effect="bump").record(),
        Claim("the same rise, said again", "p", (yes,), effect="bump").record(),
        Claim("other", "p", untested="no runs").record(),
    ]
    counts = tally(records)
    assert counts["effects"] == 2 and counts["reproduced"] == 1 and counts[NOT_TESTED] == 1


def test_brief_gives_the_effect_and_its_interval():
    r = paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0])
    assert brief(r).startswith("2 [") and brief(r).endswith("]")
    v = np.array([[0.1, 0.9, 0.2], [0.2, 1.0, 0.1], [0.15, 0.95, 0.15]])
    assert brief(peak_test(v, at=1)).startswith("rise ")
    eq = equivalence_test([2.01, 1.99, 2.0], [2.0, 2.0, 2.0], margin=0.1)
    assert eq.verdict == "reproduced" and "[" in brief(eq)


def test_report_writes_verdicts_tally_and_headline_rows(tmp_path):
    out = tmp_path / "x"
    report = Report("x", "X: a thing", "smoke", out, {"a": 1}, "paper")
    report.add_claim("rises", "paper", paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]), headline=True)
    report.add_claim("falls", "paper", untested="not run")
    report.write()
    text = report.path.read_text()
    assert "| rises | paper |" in text and "| reproduced |" in text and "| not tested |" in text
    assert "Distinct effects reproduced: 1/2 (1 not tested)." in text
    summary = json.loads((out / "summary.json").read_text())
    assert [c["verdict"] for c in summary["claims"]] == ["reproduced", NOT_TESTED]
    index = write_index(tmp_path).read_text()
    assert index.startswith("# What the reproductions show")
    assert "| reproduced | rises: 2 [" in index and "1/2 (1 not tested)" in index


def test_why_section_reads_each_answer_from_the_reports(tmp_path):
    out = tmp_path / "x"
    report = Report("x", "X: a thing", "smoke", out, {"a": 1}, "paper")
    report.add_claim("rises", "paper", paired_test([3.0, 5.0, 4.0], [1.0, 2.0, 3.0]), headline=True)
    report.add_claim("falls", "paper", paired_test([1.0, 2.0, 3.0], [3.0, 5.0, 4.0]))
    report.write()
    (tmp_path / "WHY.toml").write_text(
        '[[question]]\nask = "Does it rise?"\n'
        'claims = [{experiment = "x", claim = "rises"}, {experiment = "x", claim = "falls"}]\n'
    )
    index = write_index(tmp_path).read_text()
    why = index.index("## What explains double descent here")
    assert index.startswith("# What the reproductions show") and why < index.index("| phenomenon")
    assert "**Does it rise?**" in index
    assert "- [x](x/report.md), reproduced: rises: 2 [" in index
    assert "- [x](x/report.md), **not reproduced**: falls: -2 [" in index
    (tmp_path / "WHY.toml").write_text(
        '[[question]]\nask = "?"\nclaims = [{experiment = "x", claim = "renamed"}]\n'
    )
    with pytest.raises(ValueError, match="makes no claim 'renamed'"):
        write_index(tmp_path)
