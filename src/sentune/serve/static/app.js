// The sentune web page: POST the text to /predict and draw the answer of the model's task:
// single-label: one bar per class, the best highlighted; multi-label: one bar per label with its decision
// threshold marked, every label at or above it highlighted; regression: the predicted value.
// With "Highlight words" on, the text also goes to /explain and each word is shaded by its attribution.
"use strict";

const $ = (id) => document.getElementById(id);
let meta = { task: "single_label" };

// API key: asked for once when the server needs one (metadata.auth or a 401), kept in sessionStorage.
function askForKey() {
  $("keybox").hidden = false;
  $("key").value = sessionStorage.getItem("sentune-key") || "";
  $("key").focus();
}

function authHeaders() {
  const key = $("key").value.trim();
  if (key) sessionStorage.setItem("sentune-key", key);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// /metadata needs the key like every API route (deny by default): a 401 asks for it, and entering it loads it.
async function loadMetadata() {
  try {
    const response = await fetch("/metadata", { headers: authHeaders() });
    if (response.status === 401) {
      $("model").textContent = "this server needs an API key";
      askForKey();
      return;
    }
    meta = await response.json();
    const task = meta.task && meta.task !== "single_label" ? ` · ${meta.task.replace("_", "-")}` : "";
    $("model").textContent = `${meta.model} · ${meta.backend}${task} · labels: ${meta.labels.join(", ")}`;
  } catch (e) {
    $("model").textContent = "model information unavailable";
  }
}

function barRow(name, prob, chosen, threshold) {
  const row = document.createElement("div");
  row.className = "bar" + (chosen ? " best" : "");
  row.dataset.label = name;
  const pct = (100 * prob).toFixed(1);
  row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
  row.querySelector(".name").textContent = name;
  row.querySelector(".fill").style.width = `${pct}%`;
  row.querySelector(".value").textContent = `${pct}%`;
  if (threshold !== undefined) {
    // the decision threshold of this label, drawn on the track
    const mark = document.createElement("span");
    mark.className = "threshold";
    mark.style.left = `${100 * threshold}%`;
    mark.title = `threshold ${(100 * threshold).toFixed(0)}%`;
    row.dataset.threshold = String(threshold);
    row.querySelector(".track").appendChild(mark);
  }
  return row;
}

function drawBars(prediction) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, prob] of Object.entries(prediction.probs)) {
    bars.appendChild(barRow(name, prob, name === prediction.label));
  }
}

function drawLabels(prediction) {
  const chosen = new Set(prediction.labels.map((l) => l.label));
  const names = prediction.labels.map((l) => l.label);
  $("label").textContent = names.length ? names.join(", ") : "none above its threshold";
  $("score").textContent = names.length ? `(${names.length} of ${Object.keys(prediction.probs).length} labels)` : "";
  const bars = $("bars");
  bars.replaceChildren();
  const sorted = Object.entries(prediction.probs).sort((a, b) => b[1] - a[1]);
  for (const [name, prob] of sorted) {
    bars.appendChild(barRow(name, prob, chosen.has(name), (meta.thresholds || {})[name] ?? 0.5));
  }
}

function drawValue(prediction) {
  $("label").textContent = prediction.value.toPrecision(4);
  $("score").textContent = "(predicted value)";
  $("bars").replaceChildren();
  const scale = meta.label_scale;
  if (scale && scale.std > 0) {
    // the value on the training targets' scale: mean ± 3 standard deviations
    const low = scale.mean - 3 * scale.std, high = scale.mean + 3 * scale.std;
    const share = Math.min(1, Math.max(0, (prediction.value - low) / (high - low)));
    const row = barRow("value", share, true);
    row.querySelector(".value").textContent = prediction.value.toPrecision(4);
    row.title = `scale ${low.toPrecision(3)} … ${high.toPrecision(3)}`;
    $("bars").appendChild(row);
  }
}

async function post(path, payload) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify(payload),
  });
  const body = await response.json();
  if (response.status === 401) {
    sessionStorage.removeItem("sentune-key");
    askForKey();
  }
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

// Strength 1..4 relative to the strongest word of this text; under 10 % is left unshaded.
function strength(score, scale) {
  const share = scale > 0 ? Math.abs(score) / scale : 0;
  return share < 0.1 ? 0 : Math.min(4, 1 + Math.floor(share * 4));
}

function drawWords(explanation) {
  const words = $("words");
  words.replaceChildren();
  const scale = Math.max(0, ...explanation.scores.filter((s) => s !== null).map(Math.abs));
  explanation.words.forEach((word, i) => {
    const score = explanation.scores[i];
    const span = document.createElement("span");
    span.textContent = word;
    if (score === null) {
      span.className = "word unseen";
      span.title = `${word}: not read by the model (truncated)`;
    } else {
      const level = strength(score, scale);
      const sign = score > 0 ? "for" : "against";
      span.className = level ? `word ${sign} s${level}` : "word";
      span.dataset.score = score.toFixed(4);
      span.title = `${word}: ${score >= 0 ? "+" : ""}${score.toFixed(3)} (${score >= 0 ? "supports" : "opposes"} ${explanation.label})`;
    }
    words.append(span, " ");
  });
  $("explained-label").textContent = explanation.label;
  $("explain-note").textContent = `integrated gradients: the scores add up to ${(explanation.value - explanation.baseline_value).toFixed(3)}, ` +
    `the change of the ${explanation.label} logit from an all-padding baseline (convergence delta ${explanation.delta.toFixed(4)})`;
  $("explanation").hidden = false;
}

async function explain(text) {
  const body = await post("/explain", { text });
  drawWords(body.explanations[0]);
}

async function predict(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("predict").disabled = true;
  $("error").hidden = true;
  $("explanation").hidden = true;
  try {
    const prediction = (await post("/predict", { text })).predictions[0];
    if (Array.isArray(prediction.labels)) {
      $("caption").textContent = "Predicted labels:";
      drawLabels(prediction);
    } else if (typeof prediction.value === "number") {
      $("caption").textContent = "Predicted value:";
      drawValue(prediction);
    } else {
      $("label").textContent = prediction.label;
      $("score").textContent = `(${(100 * prediction.score).toFixed(1)}%)`;
      drawBars(prediction);
    }
    // a long text read by a windowed model: say how much of it the model read, and in how many pieces
    const n = prediction.windows || 1;
    $("windows").textContent = n > 1 ? `· read in ${n} windows` : "";
    $("result").hidden = false;
    if ($("highlight").checked) await explain(text);
  } catch (e) {
    $("error").textContent = `error: ${e.message}`;
    $("error").hidden = false;
  } finally {
    $("predict").disabled = false;
  }
}

$("form").addEventListener("submit", predict);
$("highlight").addEventListener("change", () => {
  if (!$("highlight").checked) $("explanation").hidden = true;
  else if (!$("result").hidden) $("form").requestSubmit();
});
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
});
$("key").addEventListener("change", loadMetadata);
loadMetadata();
