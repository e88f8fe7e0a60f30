"""``report.sarif``: SARIF 2.1.0 for code-scanning systems (GitHub, GitLab, Azure).

Mapping, chosen so the alert list mirrors the report and the gate:

* one **rule** per secret format present (``scrubber/credit_card``; pattern specs
  get ``scrubber/pattern-<hash>`` since rule ids must be plain), plus
  ``scrubber/tokenizer-leak`` for vocabulary entries;
* one **result** per canary, per finding and per tokenizer finding, whatever its
  exposure, so a scrub that worked shows up as alerts dropping to ``note``;
* **level** from :func:`scrubber.measure.memorized.level`, the memorization rule the
  report's ``memorized`` column uses: ``error`` for gate offenders (or, when no gate is
  set, for memorized items: significant against the scan's false-alarm bound and
  extracted or 20+ bits, so a recited 4-digit PIN at 13.3 bits is an error), ``warning``
  from 10 bits, ``note`` below;
* the location is logical (the model has no lines): ``name`` is the item id,
  ``fullyQualifiedName`` is ``<model path>/<id>``; a tokenizer result adds one
  logical location ``tokenizer/<token id>`` per vocabulary entry it names; a physical location naming the
  model directory is added because some viewers drop results without one.

Messages carry the value exactly as the report holds it (masked unless revealed).
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from scrubber.measure.memorized import canary_memorized, level
from scrubber.report.schema import CanaryReport, FindingReport, Report, TokenizerFinding

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
TOKENIZER_RULE = "scrubber/tokenizer-leak"
_FALLBACK_URI = "https://pypi.org/project/scrubber/"
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")


def information_uri() -> str:
    """The project's home page from package metadata, else its package index page."""
    try:
        meta = metadata.metadata("scrubber")
    except metadata.PackageNotFoundError:
        return _FALLBACK_URI
    for entry in meta.get_all("Project-URL") or []:
        _, _, url = entry.partition(", ")
        if url.startswith("https://"):
            return url
    home = meta.get("Home-page")
    return home if home and home.startswith("https://") else _FALLBACK_URI


def rule_id(fmt: str) -> str:
    if _PLAIN.match(fmt):
        return f"scrubber/{fmt}"
    return "scrubber/pattern-" + hashlib.sha256(fmt.encode()).hexdigest()[:10]


def _rule(rid: str, fmt: str | None) -> dict[str, Any]:
    if fmt is None:
        short = "Tokenizer vocabulary holds pieces of a secret"
        full = ("The checkpoint's tokenizer learned pieces of a secret as vocabulary entries or merges. "
                "Scrubbing the weights leaves them in every released copy.")
        fix = ("Retrain the tokenizer on the cleaned corpus, or drop the leaking tokens "
               "(scrubber's opt-in token removal) and re-release the tokenizer.")
    else:
        short = f"Model memorized a secret of format {fmt}"
        full = (f"A value of format {fmt} is exposed: the model ranks it far above random values of the "
                "same format (Secret Sharer exposure, in bits; the maximum is log2 of the format's size).")
        fix = ("Run `scrubber scrub` on the model with this canary (or the file from "
               "`scrubber scan --emit-canaries`), rotate the secret, and remove it from the training data.")
    return {
        "id": rid,
        "name": "TokenizerLeak" if fmt is None else "MemorizedSecret",
        "shortDescription": {"text": short},
        "fullDescription": {"text": full},
        "help": {"text": fix, "markdown": fix},
        "helpUri": information_uri(),
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["security", "privacy", "memorization"], "format": fmt},
    }


def _artifact_uri(path: str) -> str:
    """A URI for the model directory: ``file://`` when absolute, else a relative reference."""
    p = PurePath(path)
    return p.as_uri() if p.is_absolute() else quote(p.as_posix())


def _location(report: Report, item_id: str, kind: str) -> dict[str, Any]:
    return {
        "physicalLocation": {"artifactLocation": {"uri": _artifact_uri(report.model.path)}},
        "logicalLocations": [{
            "name": item_id,
            "fullyQualifiedName": f"{report.model.path.rstrip('/')}/{item_id}",
            "kind": kind,
        }],
    }


def _fingerprint(report: Report, kind: str, item_id: str) -> dict[str, str]:
    """Stable across runs so code scanning tracks one alert per item (no secret in it)."""
    key = f"{report.model.path}\0{kind}\0{item_id}"
    return {"scrubberItem/v1": hashlib.sha256(key.encode()).hexdigest()}


def _canary_result(r: Report, c: CanaryReport, rules: dict[str, int], memorized: bool) -> dict[str, Any]:
    cur = c.current()
    when = "after scrub" if c.after is not None else "in the input model"
    text = (f"Canary {c.id!r} ({c.format}, secret {c.secret}) has exposure {cur.exposure:.1f} bits {when} "
            f"({cur.exposure_method}; max {c.max_exposure:.1f}); greedy extraction: "
            f"{'yes' if cur.extracted else 'no'}.")
    if c.after is not None:
        text += f" Before the scrub: {c.before.exposure:.1f} bits."
    props = {"kind": "canary", "format": c.format, "repetitions": c.repetitions, "maxExposure": c.max_exposure,
             "exposure": cur.exposure, "exposureMethod": cur.exposure_method, "ciLow": cur.ci_low,
             "ciHigh": cur.ci_high, "extracted": cur.extracted, "exposureBefore": c.before.exposure,
             "exposureAfter": c.after.exposure if c.after else None}
    props["memorized"] = memorized
    text += f" {'Memorized' if memorized else 'Not judged memorized'}."
    return _result(r, rule_id(c.format), rules, level(memorized, cur.exposure, c.id, r.gate), text, c.id,
                   "canary", props)


def _finding_result(r: Report, f: FindingReport, rules: dict[str, int]) -> dict[str, Any]:
    m = f.exposure
    where = (f"found {f.occurrences or 'some'} time(s) in --data, measured after its context {f.prompt!r}"
             if f.source == "data" else f"sampled from prompt {f.prompt!r}")
    text = (f"Possible memorized secret {f.value} ({f.format}, detector {f.detector}) {where}: exposure {m.exposure:.1f} bits ({m.exposure_method}); "
            f"{'memorized' if f.memorized else 'not judged memorized'}.")
    props = {"kind": "finding", "format": f.format, "detector": f.detector, "exposure": m.exposure,
             "exposureMethod": m.exposure_method, "ciLow": m.ci_low, "ciHigh": m.ci_high,
             "maxExposure": f.max_exposure, "extracted": m.extracted, "memorized": f.memorized,
             "zlibRatio": f.zlib_ratio, "perplexity": f.perplexity}
    return _result(r, rule_id(f.format), rules, level(f.memorized, m.exposure, f.id, r.gate), text, f.id,
                   "finding", props)


def _tokenizer_result(r: Report, t: TokenizerFinding, rules: dict[str, int]) -> dict[str, Any]:
    lvl = "error" if r.gate is not None and t.id in r.gate.offenders else ("warning" if t.flagged else "note")
    if t.kind == "vocabulary":
        text = (f"Tokenizer entry {t.value} looks like a secret ({t.detector or 'secret-shaped'})"
                + (f": {t.evidence}" if t.evidence else "") + ".")
    else:
        text = (f"Tokenizer holds pieces {t.value or '(none)'} of {t.canary_id or t.id!r}"
                + (f" ({t.format})" if t.format else "") + (f": {t.evidence}" if t.evidence else "") + ".")
    if t.flagged:
        text += " Retrain the tokenizer on the cleaned corpus, or drop these entries (token ids kept)."
    props = {"kind": "tokenizer", "findingKind": t.kind, "canaryId": t.canary_id, "format": t.format,
             "detector": t.detector, "tokenIds": t.token_ids, "flagged": t.flagged, "pValue": t.p_value,
             "score": t.score, "coveredChars": t.covered_chars, "secretChars": t.secret_chars,
             "nTokens": t.n_tokens, "longestPiece": t.longest_piece}
    res = _result(r, TOKENIZER_RULE, rules, lvl, text, t.id, "tokenizer", props)
    # One logical location per vocabulary entry, 'tokenizer/<token id>', after the finding's own.
    base = r.model.path.rstrip("/")
    res["locations"][0]["logicalLocations"] += [
        {"name": f"tokenizer/{tid}", "fullyQualifiedName": f"{base}/tokenizer/{tid}", "kind": "member"}
        for tid in t.token_ids
    ]
    return res


def _result(r: Report, rid: str, rules: dict[str, int], lvl: str, text: str, item_id: str, kind: str,
            props: dict[str, Any]) -> dict[str, Any]:
    return {
        "ruleId": rid,
        "ruleIndex": rules[rid],
        "level": lvl,
        "message": {"text": text},
        "locations": [_location(r, item_id, "member")],
        "partialFingerprints": _fingerprint(r, kind, item_id),
        "properties": props,
    }


def build_sarif(report: Report) -> dict[str, Any]:
    """The SARIF log as a dict (see the module docstring for the mapping)."""
    r = report
    formats = list(dict.fromkeys([c.format for c in r.canaries] + [f.format for f in r.findings]))
    rule_list = [_rule(rule_id(fmt), fmt) for fmt in formats] + [_rule(TOKENIZER_RULE, None)]
    index = {rule["id"]: i for i, rule in enumerate(rule_list)}
    memorized = canary_memorized(r)  # once: the rule's test count spans all canaries
    results = [_canary_result(r, c, index, memorized[c.id]) for c in r.canaries]
    results += [_finding_result(r, f, index) for f in r.findings]
    if r.tokenizer is not None:
        results += [_tokenizer_result(r, t, index) for t in r.tokenizer.findings]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "scrubber",
                "version": r.tool.version,
                "informationUri": information_uri(),
                "rules": rule_list,
            }},
            "invocations": [{"executionSuccessful": True}],
            "results": results,
            "properties": {
                "command": r.command, "model": r.model.path, "reportSchemaVersion": r.schema_version,
                "revealed": r.revealed, "created": r.created.isoformat(),
                "gate": r.gate.model_dump() if r.gate else None,
            },
        }],
    }


def render_sarif(report: Report) -> str:
    return json.dumps(build_sarif(report), indent=2, ensure_ascii=False) + "\n"
