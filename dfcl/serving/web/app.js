// The detection page: one upload to POST /v1/detect, then the verdict, how sure it is and its
// evidence; and the model card from GET /v1/model (what the model learned, when, and what it
// scored on methods it had not learned yet). Plain JS, no libraries: the page must work offline.
// A verdict is shown only from a 2xx answer that has one; every other answer is an error with the
// server's reason. What the page says never claims more than was measured: an uncalibrated model
// says so, a face unlike anything learned is flagged, a resemblance is a hint, not proof.
"use strict";
const $ = (id) => document.getElementById(id);
let limits = null;
let token = sessionStorage.getItem("dfcl-token") || "";

const HEADLINES = { fake: "Likely forged", real: "No sign of forgery found", uncertain: "Uncertain: the model cannot tell" };
const COLOURS = { fake: "#c00", real: "#080", uncertain: "#d80" };
// The server ends the reason of a novel face with this; the page shows it as its own note instead.
const NOVEL_SUFFIX = "; this face is unlike";

function authorized() { return token ? { Authorization: "Bearer " + token } : {}; }

// The answer's JSON, or for a body that is not JSON (a proxy's or uvicorn's own page) its first line.
async function answer(r) {
  const text = await r.text();
  try { return JSON.parse(text); } catch (e) { return { error: text.split("\n")[0].slice(0, 200) || r.statusText }; }
}

function reason(r, body) {
  return `${body.error || "no reason given"} (HTTP ${r.status})`;
}

// A number for people: "-" for what was not measured (null, NaN).
const finite = (x) => typeof x === "number" && Number.isFinite(x);

function num(x, digits = 2) {
  return finite(x) ? x.toFixed(digits) : "-";
}

function percent(x) {
  return finite(x) ? `${Math.round(x * 100)}%` : "-";
}

function sentence(text) {
  const t = String(text).trim();
  return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".");
}

function askToken(message) {
  $("token-why").textContent = message;
  show("token-box", true);
}

async function loadModel() {
  let r, body;
  try {
    r = await fetch("/v1/model", { headers: authorized() });
    body = await answer(r);
  } catch (e) {
    $("model").textContent = "The server did not answer: " + e;
    return;
  }
  if (r.status === 401) { $("model").textContent = "This server needs an access token."; askToken(body.error); return; }
  if (!r.ok) { $("model").textContent = "No model to answer yet: " + reason(r, body); return; }
  show("token-box", false);
  limits = body.limits;
  if (limits && limits.allowed_types) $("file").accept = limits.allowed_types.join(",");
  $("model").textContent = `Answered by ${body.name || body.uri} version ${body.version} (${body.alias}), ` +
    `${body.architecture || "detector"}, trained on ${(body.methods || []).length} forgery methods.`;
  renderCard(body);
}

function show(id, on) { $(id).hidden = !on; }

// The band in words: P(fake) below lo is answered real, at or above hi fake, between uncertain.
function bandWords(band, precision, measuredOn) {
  const [lo, hi] = band;
  const often = finite(precision) ? `right at least ${percent(precision)} of the time` : "right as often as it promises";
  const where = measuredOn || "on validation faces of the methods it learned";
  if (hi >= 1 && lo <= 0) return `every face is answered uncertain: no cut of P(fake) gave fake or real answers ${often} ${where}`;
  const fake = hi >= 1 ? "never answered fake" : `answered fake at or above ${num(hi)}`;
  const real = lo <= 0 ? "never real" : `real below ${num(lo)}`;
  return `${fake}, ${real}, uncertain between; the cuts were chosen so that fake and real answers were ${often} ${where}` +
    (hi >= 1 || lo <= 0 ? "; on a side where no cut reached that, it gives no answers" : "");
}

// The model card: what the model learned and when, its test AUC on each method, and what it
// scored on methods before it learned them: the number to expect on a new kind of forgery.
function renderCard(m) {
  if (!m) return;
  const cal = m.calibrated
    ? `Its P(fake) is calibrated: ${bandWords(m.band || [m.threshold, m.threshold], m.precision, m.measured_on)}.`
    : `This model is not calibrated: its P(fake) is the raw output, answered fake at or above ${num(m.threshold)}, ` +
      "so how sure its verdicts are was not measured.";
  // A model that learned only the demo's drawn faces was never measured on a real photo.
  $("card-calibration").textContent = (m.synthetic_only
    ? "Warning: this model learned only synthetic demo faces (drawn, not photographed); on real photos and videos " +
      "it was never measured, and its answers there mean nothing. " : "") + cal;
  const learned = m.learned || [];
  $("learned").tBodies[0].replaceChildren(...learned.map((l) => {
    const tr = document.createElement("tr");
    for (const text of [l.method, l.learned_at ? String(l.learned_at).slice(0, 10) : "-",
                        num(l.test_auc, 3), num(l.auc_before_learning, 3)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  show("learned", learned.length > 0);
  $("learned-none").textContent = learned.length ? "" :
    `Learned methods: ${(m.methods || []).join(", ") || "none recorded"}; when each was learned and its AUC were not recorded for this version.`;
  show("learned-none", !learned.length);
  $("unlearned").textContent = finite(m.auc_on_unlearned)
    ? `On methods it had not learned yet it scored AUC ${num(m.auc_on_unlearned, 3)} on average: expect about that on a new kind of forgery.`
    : "Its AUC on methods it had not learned yet was not measured: the test AUCs above are for methods it learned " +
      "and say little about a new kind of forgery.";
  const s = m.measured || {}, parts = [];
  if (finite(s.test_coverage)) {
    parts.push(`answered ${percent(s.test_coverage)} of the faces fake or real (the rest uncertain)` +
      (finite(s.test_answered_accuracy) ? `, and ${percent(s.test_answered_accuracy)} of those answers were right` : ""));
  }
  if (finite(s.test_ece)) {
    parts.push(`its calibration error (ECE) was ${num(s.test_ece, 3)}` +
      (finite(s.test_ece_raw) ? ` (${num(s.test_ece_raw, 3)} before calibration)` : ""));
  }
  if (finite(s.test_attribution_accuracy)) {
    parts.push(`it named the right method for ${percent(s.test_attribution_accuracy)} of the forged faces`);
  }
  // The same on sets it never trained on (trust.unseen_sets), beside the learned ones: where the promise holds.
  const unseen = Object.entries(m.measured_unseen || {}).filter(([, u]) => finite(u.test_coverage)).map(([name, u]) =>
    `${name}: answered ${percent(u.test_coverage)}, ${percent(u.test_answered_accuracy)} of those right, ` +
    `${percent(u.test_real_called_fake)} of its real faces answered fake`);
  const foreign = m.foreign_reals || [];
  $("measured").textContent = (parts.length ? `On test faces of the methods it learned it ${parts.join("; ")}.` : "") +
    (unseen.length ? ` On sets it never trained on: ${unseen.join("; ")}.` : "") +
    (foreign.length ? ` Its "fake" answers are checked against real photos of ${foreign.join(", ")}, so those are not unseen.` : "");
  show("measured", parts.length + unseen.length > 0);
  // The legend says what the numbers mean for this model.
  $("legend-p").textContent = m.calibrated
    ? "The model's probability that the face is forged, rescaled on validation faces so that 0.8 meant forged about 8 times in 10 there."
    : "The model's raw output: this model is not calibrated, so P(fake) is a score, not a measured probability.";
  $("legend-uncertain").textContent = "P(fake) lies between the two cuts where the model's fake and real answers were right " +
    (finite(m.precision) ? `at least ${percent(m.precision)} of the time` : "as often as it promises") + ", so it gives neither; " +
    "or the face is unlike the faces of its answer the model learned, or cut off at the edge of the picture, " +
    "where that figure was never measured.";
  show("card", true);
}

async function detect(file) {
  show("error", false);
  show("result", false);
  if (limits && file.size > limits.max_upload_mb * 1048576) {
    return fail(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${limits.max_upload_mb} MB.`);
  }
  clear();
  $("verdict").textContent = "Checking " + file.name + "…";
  show("result", true);
  const form = new FormData();
  form.append("file", file);
  const query = `?explain=${$("explain").checked}&crop=${$("crop").checked}`;
  let r, body;
  try {
    r = await fetch("/v1/detect" + query, { method: "POST", body: form, headers: authorized() });
    body = await answer(r);
  } catch (e) {
    return fail("The server did not answer: " + e);
  }
  if (r.status === 401) askToken(body.error);
  if (!r.ok || !Object.hasOwn(HEADLINES, String(body.verdict)) || typeof body.p_fake !== "number") {
    return fail(`Could not check ${file.name}: ${reason(r, body)}`);
  }
  render(file, body);
}

function fail(message) {
  show("result", false);
  clear();
  $("error").textContent = message;
  show("error", true);
}

// Nothing of the last answer stays on the page.
function clear() {
  $("verdict").textContent = "";
  $("verdict").dataset.verdict = "";
  for (const id of ["reason", "summary", "band", "resembles", "deciding-why", "evidence-title", "answered-by"]) $(id).textContent = "";
  for (const id of ["reason", "band", "novel", "resembles", "photo", "timeline-box", "deciding", "evidence-title"]) show(id, false);
  $("deciding-frames").replaceChildren();
  $("evidence").replaceChildren();
}

function render(file, r) {
  const v = $("verdict");
  v.dataset.verdict = r.verdict;
  v.textContent = HEADLINES[r.verdict];
  if (r.reason) {
    $("reason").textContent = "Why: " + sentence(r.reason.split(NOVEL_SUFFIX)[0]);
    show("reason", true);
  }
  const faces = (r.faces || []).length, scored = (r.frames || []).filter((f) => f.p_fake !== null).length;
  $("summary").textContent = `${r.calibrated ? "Calibrated P(fake)" : "P(fake)"} ${r.p_fake.toFixed(3)} for this ${r.kind}` +
    (r.kind === "video" ? `: ${scored} of ${(r.frames || []).length} sampled frames with a face, ${r.aggregate} over frames.`
                        : `, ${faces} face${faces === 1 ? "" : "s"}.`);
  const m = r.model || {};
  $("band").textContent = r.calibrated
    ? sentence(bandWords(r.band || [r.threshold, r.threshold], m.precision, r.measured_on || m.measured_on))
    : `This model is not calibrated: P(fake) is its raw output, answered fake at or above ${num(r.threshold, 3)} ` +
      "and real below, so how sure it is was not measured.";
  show("band", true);
  show("novel", r.novel === true);
  if (r.resembles && r.resembles.method) {
    const s = r.resembles;
    const how = s.frames ? `${Math.round(s.similarity * s.frames)} of the ${s.frames} frames answered fake resemble it most`
                         : `similarity ${num(s.similarity)}`;
    $("resembles").textContent = `Resembles ${s.method} (${how}): the learned forgery method nearest to this face ` +
      "in the model's feature space; a hint, not proof of which tool made it.";
    show("resembles", true);
  }
  $("answered-by").textContent = `Model: ${m.name || m.uri} version ${m.version} (${m.alias}); ${r.seconds} s.`;
  $("answered-by").dataset.version = m.version;
  renderCard(m);
  if (r.kind === "photo" || r.kind === "face crop") drawPhoto(file, r);
  const decided = r.kind === "video" && r.frames ? renderDeciding(r) : new Set();
  if (r.kind === "video" && r.frames) drawTimeline(r, decided);
  renderEvidence(r, decided);
}

function verdictOf(f, r) {
  return f.verdict || (f.p_fake >= r.threshold ? "fake" : "real");
}

function clock(t) {
  return `${num(t, 2)} s`;
}

// A video's frames that decided its verdict: those answered as the video was (the most decided
// first); for "uncertain", the frames on each side (or, when every frame is uncertain on its own,
// the most and least suspicious). Returns their frame numbers.
function renderDeciding(r) {
  const scored = r.frames.filter((f) => f.p_fake !== null);
  const by = (v) => scored.filter((f) => verdictOf(f, r) === v);
  const high = (fs) => [...fs].sort((a, b) => b.p_fake - a.p_fake), low = (fs) => [...fs].sort((a, b) => a.p_fake - b.p_fake);
  const fakes = high(by("fake")), reals = low(by("real")), unsure = by("uncertain");
  let groups, why;
  if (r.verdict === "fake") {
    groups = [["answered fake", fakes]];
    why = `${fakes.length} of the ${scored.length} frames with a face are answered fake on their own; the most suspicious:`;
  } else if (r.verdict === "real") {
    groups = [["answered real", reals]];
    why = `${reals.length} of the ${scored.length} frames with a face are answered real on their own; the clearest:`;
  } else if (fakes.length || reals.length) {
    groups = [["answered fake", fakes], ["answered real", reals]];
    why = `The frames on each side: ${fakes.length} answered fake, ${reals.length} answered real and ` +
      `${unsure.length} uncertain on their own, of ${scored.length} frames with a face.`;
  } else {
    const ends = high(scored);
    groups = [["uncertain", ends.length > 1 ? [ends[0], ends[ends.length - 1]] : ends]];
    why = `Every one of the ${scored.length} frames with a face is uncertain on its own; the most and the least suspicious:`;
  }
  const decided = new Set(), items = [], shown = 5;
  for (const [label, fs] of groups) {
    for (const f of fs.slice(0, shown)) {
      decided.add(f.frame);
      const li = document.createElement("li");
      li.dataset.verdict = verdictOf(f, r);
      li.textContent = `${clock(f.time_s)} (frame ${f.frame}): P(fake) ${num(f.p_fake)}, ${label}`;
      items.push(li);
    }
    if (fs.length > shown) {
      const li = document.createElement("li");
      li.textContent = `and ${fs.length - shown} more ${label}`;
      items.push(li);
    }
  }
  $("deciding-why").textContent = why;
  $("deciding-frames").replaceChildren(...items);
  show("deciding", scored.length > 0);
  return decided;
}

function renderEvidence(r, decided) {
  const times = new Map((r.frames || []).map((f) => [f.frame, f.time_s]));
  const ev = r.evidence || [];
  ev.sort((a, b) => decided.has(b.frame) - decided.has(a.frame));  // the deciding frames first
  $("evidence").replaceChildren(...ev.map((e) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = e.image;
    img.alt = "heatmap " + e.name;
    const cap = document.createElement("figcaption");
    const video = r.kind === "video" && e.frame !== null && e.frame !== undefined;
    cap.textContent = (video ? `frame ${e.frame} at ${clock(times.get(e.frame))}` : e.name) + `: P(fake) ${num(e.p_fake)}`;
    if (video && decided.has(e.frame)) { fig.className = "decided"; cap.textContent += ", decided the verdict"; }
    fig.append(img);
    if (e.mask) { // a model with a mask head: the region it predicts as forged, beside Grad-CAM
      const mask = document.createElement("img");
      mask.src = e.mask;
      mask.alt = "predicted forged region " + e.name;
      mask.className = "mask";
      fig.append(mask);
      cap.textContent += "; left: Grad-CAM, right: predicted forged region";
    }
    fig.append(cap);
    return fig;
  }));
  if (ev.length) {
    $("evidence-title").textContent = r.kind === "video"
      ? "Where the model looked (Grad-CAM) in the sampled frames with the highest P(fake); outlined: frames that decided the verdict."
      : "Where the model looked (Grad-CAM) in each face.";
    show("evidence-title", true);
  }
}

function drawPhoto(file, r) {
  const img = new Image();
  img.onload = () => {
    const c = $("photo");
    const scale = Math.min(1, 720 / img.width);
    c.width = img.width * scale;
    c.height = img.height * scale;
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0, c.width, c.height);
    g.lineWidth = 3;
    g.font = "16px system-ui";
    for (const f of r.faces || []) {
      const [x1, y1, x2, y2] = f.box.map((x) => x * scale);
      g.strokeStyle = g.fillStyle = COLOURS[verdictOf(f, r)] || "#888";
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      g.fillText(f.p_fake.toFixed(2), x1 + 4, Math.max(16, y1 - 4));
    }
    show("photo", true);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
}

function drawTimeline(r, decided) {
  const c = $("timeline"), g = c.getContext("2d");
  // Little room above the plot: the curve starts right under the answer (no blank band).
  const pad = 30, top = 8, w = c.width - 2 * pad, h = c.height - top - 22;
  const tmax = Math.max(...r.frames.map((f) => f.time_s), 1e-6);
  const x = (t) => pad + (t / tmax) * w, y = (p) => top + (1 - Math.min(1, Math.max(0, p))) * h;
  const [lo, hi] = r.calibrated && r.band ? r.band : [r.threshold, r.threshold];
  g.clearRect(0, 0, c.width, c.height);
  if (hi > lo) { // the uncertain band
    g.fillStyle = "rgba(221, 136, 0, 0.15)";
    g.fillRect(pad, y(hi), w, y(lo) - y(hi));
  }
  g.strokeStyle = "#888";
  g.strokeRect(pad, top, w, h);
  g.fillStyle = "#444";
  g.font = "11px system-ui";
  g.fillText("1", 8, top + 8);
  g.fillText("0", 8, top + h + 4);
  g.fillText(`${tmax.toFixed(1)} s`, pad + w - 24, top + h + 16);
  g.setLineDash([5, 4]);
  g.strokeStyle = "#c00";
  g.beginPath(); g.moveTo(pad, y(r.threshold)); g.lineTo(pad + w, y(r.threshold)); g.stroke();
  g.setLineDash([]);
  g.strokeStyle = "#06c";
  g.beginPath();
  let started = false;
  for (const f of r.frames) {
    if (f.p_fake === null) { started = false; continue; }
    if (started) g.lineTo(x(f.time_s), y(f.p_fake)); else g.moveTo(x(f.time_s), y(f.p_fake));
    started = true;
  }
  g.stroke();
  for (const f of r.frames) {
    if (f.p_fake === null) continue;
    g.fillStyle = COLOURS[verdictOf(f, r)] || "#06c";
    g.fillRect(x(f.time_s) - 2, y(f.p_fake) - 2, 4, 4);
    if (decided.has(f.frame)) { // the frames that decided the verdict, ringed
      g.strokeStyle = g.fillStyle;
      g.lineWidth = 2;
      g.beginPath(); g.arc(x(f.time_s), y(f.p_fake), 6, 0, 2 * Math.PI); g.stroke();
      g.lineWidth = 1;
    }
  }
  $("timeline-caption").textContent = "P(fake) of each sampled frame, coloured by its own answer; the dashed line is the " +
    "model's threshold" + (hi > lo ? ", the shaded band where it answers uncertain" : "") +
    "; ringed: the frames that decided the verdict.";
  show("timeline-box", true);
}

const drop = $("drop");
$("file").addEventListener("change", (e) => e.target.files[0] && detect(e.target.files[0]));
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) detect(e.dataTransfer.files[0]);
});
$("token-box").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem("dfcl-token", token);
  loadModel();
});
loadModel();
