// The page talks to the same API as any client: GET /v1/adapters, POST /v1/ask, POST /v1/caption.
"use strict";

const $ = (id) => document.getElementById(id);
let adapters = [];
let media = null;

// One preview per kind of media, keyed by the MIME type's first part.
const PREVIEWS = {
  image(file) {
    const img = document.createElement("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    return img;
  },
  audio(file) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = URL.createObjectURL(file);
    return audio;
  },
  video(file) {
    const video = document.createElement("video");
    video.controls = true;
    video.muted = true;
    video.src = URL.createObjectURL(file);
    return video;
  },
};

function selected() {
  return adapters.find((a) => a.name === $("adapter").value);
}

function refreshControls() {
  const adapter = selected();
  const does = (task) => adapter && (adapter.task === task || adapter.task === "multitask");
  $("question").disabled = !does("vqa");
  $("ask").disabled = !does("vqa") || !media || !$("question").value.trim();
  $("caption").disabled = !does("caption") || !media;
  $("adapter-info").textContent = adapter
    ? `${adapter.task} · ${adapter.modality} · LM ${adapter.lm} · encoder ${adapter.encoder} · ` +
      `${(adapter.size_bytes / 1024).toFixed(0)} KB adapter`
    : "";
}

function choose(file) {
  media = file;
  const preview = $("preview");
  preview.replaceChildren();
  const kind = file.type.split("/")[0];
  if (PREVIEWS[kind]) {
    preview.append(PREVIEWS[kind](file));
  } else {
    preview.textContent = `${file.name} (no preview)`;
  }
  refreshControls();
}

async function loadAdapters() {
  const response = await fetch("/v1/adapters");
  adapters = await response.json();
  $("adapter").replaceChildren(...adapters.map((a) => new Option(`${a.name} (${a.task})`, a.name)));
  refreshControls();
}

function showError(message) {
  $("answer").textContent = "";
  $("timing").textContent = "";
  $("error").textContent = message;
}

async function submit(verb) {
  const form = new FormData();
  form.append("adapter", $("adapter").value);
  form.append("media", media, media.name);
  if (verb === "ask") form.append("question", $("question").value);
  for (const [field, input] of [["max_new_tokens", "max-new-tokens"], ["num_beams", "num-beams"]]) {
    if ($(input).value) form.append(field, $(input).value);
  }
  $("ask").disabled = $("caption").disabled = true;
  $("error").textContent = "";
  $("answer").textContent = "…";
  try {
    const response = await fetch(`/v1/${verb}`, { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      showError(`${response.status}: ${body.error}`);
      return;
    }
    const t = body.timings;
    $("answer").textContent = body.answer || "(empty answer)";
    $("timing").textContent =
      `${t.total_ms.toFixed(0)} ms (queue ${t.queue_ms.toFixed(0)}, encode ${t.encode_ms.toFixed(0)}, ` +
      `generate ${t.generate_ms.toFixed(0)} ms; batch of ${body.batch_size})`;
  } catch (error) {
    showError(`request failed: ${error}`);
  } finally {
    refreshControls();
  }
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) choose(event.dataTransfer.files[0]);
  });
  $("media").addEventListener("change", () => {
    if ($("media").files.length) choose($("media").files[0]);
  });
  $("adapter").addEventListener("change", refreshControls);
  $("question").addEventListener("input", refreshControls);
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!$("ask").disabled) submit("ask");
  });
  $("caption").addEventListener("click", () => submit("caption"));
  loadAdapters().catch((error) => showError(`cannot list adapters: ${error}`));
}

setUp();
