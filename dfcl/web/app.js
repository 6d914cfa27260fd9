// The detection page: one upload to POST /v1/detect, then the verdict and its evidence.
// Plain JS, no libraries: the page must work offline. A verdict is shown only from a 2xx answer
// that has one; every other answer is an error with the server's reason.
"use strict";
const $ = (id) => document.getElementById(id);
let limits = null;
let token = sessionStorage.getItem("dfcl-token") || "";

function authorized() { return token ? { Authorization: "Bearer " + token } : {}; }

// The answer's JSON, or for a body that is not JSON (a proxy's or uvicorn's own page) its first line.
async function answer(r) {
  const text = await r.text();
  try { return JSON.parse(text); } catch (e) { return { error: text.split("\n")[0].slice(0, 200) || r.statusText }; }
}

function reason(r, body) {
  return `${body.error || "no reason given"} (HTTP ${r.status})`;
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
  if (limits.allowed_types) $("file").accept = limits.allowed_types.join(",");
  $("model").textContent = `Answered by ${body.name || body.uri} version ${body.version} (${body.alias}), ` +
    `${body.architecture || "detector"}, trained on ${body.methods.length} forgery methods.`;
}

function show(id, on) { $(id).hidden = !on; }

async function detect(file) {
  show("error", false);
  show("result", false);
  if (limits && file.size > limits.max_upload_mb * 1048576) {
    return fail(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB; the limit is ${limits.max_upload_mb} MB.`);
  }
  $("summary").textContent = "";
  $("verdict").textContent = "Checking " + file.name + "…";
  $("verdict").dataset.verdict = "";
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
  if (!r.ok || (body.verdict !== "fake" && body.verdict !== "real")) {
    return fail(`Could not check ${file.name}: ${reason(r, body)}`);
  }
  render(file, body);
}

function fail(message) {
  show("result", false);
  $("error").textContent = message;
  show("error", true);
}

function render(file, r) {
  const v = $("verdict");
  v.dataset.verdict = r.verdict;
  v.textContent = r.verdict === "fake" ? "Likely forged" : "No sign of forgery found";
  const faces = (r.faces || []).length;
  $("summary").textContent = `P(fake) ${r.p_fake.toFixed(3)} (threshold ${r.threshold.toFixed(3)}) for this ${r.kind}` +
    (r.kind === "video" ? `, ${faces} of ${r.frames.length} sampled frames with a face, ${r.aggregate} over frames.`
                        : `, ${faces} face${faces === 1 ? "" : "s"}.`);
  const m = r.model || {};
  $("answered-by").textContent = `Model: ${m.name || m.uri} version ${m.version} (${m.alias}); ${r.seconds} s.`;
  $("answered-by").dataset.version = m.version;
  show("photo", false);
  show("timeline-box", false);
  if (r.kind === "photo" || r.kind === "face crop") drawPhoto(file, r);
  if (r.kind === "video" && r.frames) drawTimeline(r);
  const ev = $("evidence");
  ev.replaceChildren(...(r.evidence || []).map((e) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = e.image;
    img.alt = "heatmap " + e.name;
    const cap = document.createElement("figcaption");
    cap.textContent = `${e.name}: P(fake) ${e.p_fake.toFixed(2)}`;
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
      g.strokeStyle = g.fillStyle = f.p_fake >= r.threshold ? "#d00" : "#0a0";
      g.strokeRect(x1, y1, x2 - x1, y2 - y1);
      g.fillText(f.p_fake.toFixed(2), x1 + 4, Math.max(16, y1 - 4));
    }
    show("photo", true);
    URL.revokeObjectURL(img.src);
  };
  img.src = URL.createObjectURL(file);
}

function drawTimeline(r) {
  const c = $("timeline"), g = c.getContext("2d");
  const pad = 30, w = c.width - 2 * pad, h = c.height - 2 * pad;
  const tmax = Math.max(...r.frames.map((f) => f.time_s), 1e-6);
  const x = (t) => pad + (t / tmax) * w, y = (p) => pad + (1 - p) * h;
  g.clearRect(0, 0, c.width, c.height);
  g.strokeStyle = "#888";
  g.strokeRect(pad, pad, w, h);
  g.fillStyle = "#444";
  g.font = "11px system-ui";
  g.fillText("1", 8, pad + 4);
  g.fillText("0", 8, pad + h + 4);
  g.fillText(`${tmax.toFixed(1)} s`, pad + w - 24, pad + h + 16);
  g.setLineDash([5, 4]);
  g.strokeStyle = "#d00";
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
  g.fillStyle = "#06c";
  for (const f of r.frames) if (f.p_fake !== null) g.fillRect(x(f.time_s) - 2, y(f.p_fake) - 2, 4, 4);
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
