// The sentune web page: POST the text to /predict and draw one bar per class.
"use strict";

const $ = (id) => document.getElementById(id);

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

async function loadMetadata() {
  try {
    const meta = await (await fetch("/metadata")).json();
    $("model").textContent = `${meta.model} · ${meta.backend} · labels: ${meta.labels.join(", ")}`;
    if (meta.auth) askForKey();
  } catch (e) {
    $("model").textContent = "model information unavailable";
  }
}

function drawBars(prediction) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, prob] of Object.entries(prediction.probs)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === prediction.label ? " best" : "");
    row.dataset.label = name;
    const pct = (100 * prob).toFixed(1);
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    row.querySelector(".name").textContent = name;
    row.querySelector(".fill").style.width = `${pct}%`;
    row.querySelector(".value").textContent = `${pct}%`;
    bars.appendChild(row);
  }
}

async function predict(event) {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  $("predict").disabled = true;
  $("error").hidden = true;
  try {
    const response = await fetch("/predict", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ text }),
    });
    const body = await response.json();
    if (response.status === 401) {
      sessionStorage.removeItem("sentune-key");
      askForKey();
    }
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    const prediction = body.predictions[0];
    $("label").textContent = prediction.label;
    $("score").textContent = `(${(100 * prediction.score).toFixed(1)}%)`;
    drawBars(prediction);
    $("result").hidden = false;
  } catch (e) {
    $("error").textContent = `error: ${e.message}`;
    $("error").hidden = false;
  } finally {
    $("predict").disabled = false;
  }
}

$("form").addEventListener("submit", predict);
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("form").requestSubmit();
});
loadMetadata();
