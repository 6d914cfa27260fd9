"""What a person is shown of a verdict: the model card every answer carries, how sure the answer
is and why (dfcl.measure.trust's band in words), each face's row, and the CLI's table and CSV. Shared by
`dfcl detect`, the REST API and the web page (through the API's JSON)."""
from __future__ import annotations

from dfcl.serving.detector import Detector


def model_card(detector: Detector) -> dict:
    """Which model answered and what to expect of it: what every result carries. `learned`: each
    learned method with when it was learned, its test AUC and its AUC just before it was learned;
    `auc_on_unlearned`: the mean of the latter, what its AUC was on methods it had not learned yet."""
    info, trust = detector.info, detector.trust
    return {"name": info.get("name"), "version": info.get("version"), "alias": info.get("alias"),
            "uri": info.get("uri"), "architecture": info.get("architecture"),
            "image_size": detector.image_size, "threshold": round(detector.shown_threshold, 4),
            "methods": list(info.get("methods") or []), "learned": list(info.get("learned") or []),
            "auc_on_unlearned": info.get("auc_forward_transfer"),
            "calibrated": calibrated(detector), "band": band_of(detector),
            "precision": None if trust is None else trust.precision,
            "measured_on": None if trust is None else trust.population(),
            "measured": {} if trust is None else {k: v for k, v in trust.report.items() if k.startswith("test_")},
            # the same figures on the test faces of sets it never trained on (trust.unseen_sets)
            "measured_unseen": {} if trust is None else trust.report.get("unseen", {}),
            # real photos of other kinds a "fake" answer is checked against (trust.foreign_reals): no
            # longer unseen for this model
            "foreign_reals": [] if trust is None else list(trust.foreign),
            "synthetic_only": synthetic_only(info.get("learned") or [])}


SYNTHETIC_NOTE = ("this model learned only synthetic demo faces (drawn, not photographed: `dfcl demo`); on real "
                  "photos and videos it was never measured, and its answers there mean nothing")


def synthetic_only(learned: list[dict]) -> bool:
    """Did the model learn nothing but synthetic data (the demo's)? Then no figure it carries says
    anything about a real photo, and every answer says so."""
    return bool(learned) and all(entry.get("synthetic") for entry in learned)


def calibrated(detector: Detector) -> bool:
    """Is the P(fake) shown calibrated? (A trust fit on one-class validation faces keeps the identity.)"""
    return detector.trust is not None and detector.trust.calibrated


def band_of(detector: Detector, measured_at: int | None = None) -> list[float]:
    """[lo, hi]: P(fake) below lo is answered real, at or above hi fake, between uncertain; for a
    small face, the band of the size it was answered at."""
    lo, hi = detector.trust.band_at(measured_at) if detector.trust is not None else (detector.threshold,) * 2
    return [round(lo, 4), round(min(hi, 1.0), 4)]


def measured_on(detector: Detector, measured_at: int | None = None) -> str | None:
    """Where the band's promise was measured, in words (None: nothing was measured)."""
    return None if detector.trust is None else detector.trust.population(measured_at)


NOVEL_NOTE = ("this face is unlike the forgeries and real faces the model has learned: treat the verdict with care")


def reason_for(detector: Detector, verdict: str, p: float, why: str | None = None,
               measured_at: int | None = None) -> str:
    """Why `verdict`, in words a person can weigh: where the promise was measured (for a small
    face, `measured_at`: at its size), and for an answer withheld (`why`), what about the face is
    unfamiliar; from a model that learned only synthetic faces, that too."""
    reason = _reason(detector, verdict, p, why, measured_at)
    return f"{reason}; {SYNTHETIC_NOTE}" if synthetic_only(detector.info.get("learned") or []) else reason


def _reason(detector: Detector, verdict: str, p: float, why: str | None, measured_at: int | None) -> str:
    t = detector.trust
    if why:
        return (f"no answer: {why}, so its P(fake) {p:.2f} promises nothing (the model's figures were measured "
                f"{t.population() if t is not None else 'on the faces it learned'}, not on faces like this)")
    if t is None:
        return (f"P(fake) {p:.2f} against the model's threshold {detector.threshold:.2f}; this model has no "
                "calibration (a file, or a version registered before it), so how sure it is was not measured")
    lo, hi = t.band_at(measured_at)
    where = t.population(measured_at)
    if verdict == "uncertain":
        return (f"P(fake) {p:.2f} lies between {lo:.2f} and {min(hi, 1):.2f}, where the model's answers were right "
                f"less than {t.precision:.0%} of the time {where}")
    side = f"at or above {hi:.2f}" if verdict == "fake" else f"below {lo:.2f}"
    checked = f" more than real photos of {', '.join(t.foreign)}" if verdict == "fake" and t.foreign else ""
    return (f"P(fake) {p:.2f} is {side}, where '{verdict}' answers were right at least {t.precision:.0%} of the "
            f"time {where}, and the face resembles the {verdict} faces it learned{checked}; on kinds of "
            "faces it never saw that figure was not measured")


def face_evidence(judged: dict) -> dict:
    """A face's row: its P(fake) and answer, and novelty and attribution where the model has them."""
    out = {"p_fake": round(judged["p_fake"], 4), "verdict": judged["verdict"]}
    return out | {k: judged[k] for k in ("novelty", "novel", "resembles", "withheld", "why") if k in judged}


def table(rows: list[dict]) -> str:
    """One line per file: verdict, calibrated P(fake), faces, novelty, the method a fake
    resembles, and why it could not be scored or why its answer was withheld; then what the
    answers mean."""
    import pandas as pd

    from dfcl.logs import text_table

    def resembles(r):
        return f"{r['resembles']['method']} ({r['resembles']['similarity']:.2f})" if r.get("resembles") else ""

    frame = pd.DataFrame([{"file": r["file"], "kind": r["kind"], "verdict": r["verdict"],
                           "P(fake)": "" if r["p_fake"] is None else f"{r['p_fake']:.3f}",
                           "faces": len(r.get("faces", [])), "novel": {True: "yes", False: "no"}.get(r.get("novel"), ""),
                           "resembles": resembles(r), "note": r.get("error") or r.get("why") or ""} for r in rows])
    lines = [text_table(frame, ["note"])]
    answered = [r for r in rows if r["verdict"] != "error"]
    if answered:
        m = answered[0]["model"]
        if m.get("synthetic_only"):
            lines.append(f"warning: {SYNTHETIC_NOTE}.")
        if m["calibrated"]:
            lo, hi = m["band"]
            lines.append(f"fake: P(fake) >= {hi:.2f}, real: < {lo:.2f}, uncertain between, or where the face is unlike "
                         f"the learned faces of its answer: answers right at least {m['precision']:.0%} of the time "
                         f"{m['measured_on']}. novel: unlike the faces it learned.")
            sizes = {r["measured_at"]: r["band"] for r in answered if r.get("measured_at")}
            if sizes:  # files answered on faces cut from fewer pixels than the model's input
                lines.append("smaller faces, by the band measured on validation faces shrunk to their size: " + "; ".join(
                    f"{side} px: fake >= {hi:.2f}, real < {lo:.2f}" for side, (lo, hi) in sorted(sizes.items(), reverse=True))
                    + ".")
        else:
            lines.append(f"this model is not calibrated: P(fake) is raw, fake at or above {m['threshold']:.2f}")
    return "\n".join(lines)


def csv_rows(rows: list[dict]) -> list[dict]:
    """One flat row per file; faces, the timeline and the model card as JSON strings."""
    import json

    flat = []
    for r in rows:
        m = r["model"]
        flat.append({"file": r["file"], "kind": r["kind"], "verdict": r["verdict"], "p_fake": r["p_fake"],
                     "threshold": r["threshold"], "reason": r.get("reason") or "", "novel": r.get("novel"),
                     "resembles": (r.get("resembles") or {}).get("method", ""),
                     "faces": len(r.get("faces", [])), "error": r.get("error", ""),
                     "model_name": m["name"], "model_version": m["version"], "model_alias": m["alias"],
                     "model_uri": m["uri"], "face_boxes": json.dumps(r.get("faces", [])),
                     "timeline": json.dumps(r.get("frames", [])), "seconds": r["seconds"]})
    return flat
