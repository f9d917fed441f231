// The console: a client of the platform's own API. Nothing from a response is ever parsed as
// HTML (textContent only), and the API key lives in this tab's sessionStorage alone.
"use strict";

const BASE = location.pathname.replace(/\/console\/?$/, "");  // the platform's route prefix
const KEY_STORE = "rayserve-platform-api-key";
const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);

let models = [];                 // /v1/models cards
const lastCounts = new Map();    // model -> {total, at}: requests/min between two refreshes
let refreshTimer = null;

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function authHeaders(extra = {}) {
  return apiKey() ? {...extra, Authorization: `Bearer ${apiKey()}`} : {...extra};
}

async function errorMessage(response) {
  const text = await response.text();
  try {
    const error = JSON.parse(text).error;  // OpenAI shape {"error": {"message"}}; /v2 {"error": "..."}
    return `${response.status}: ${typeof error === "string" ? error : error.message}`;
  } catch {
    return `${response.status}: ${text || response.statusText}`;
  }
}

async function api(path, options = {}) {
  const response = await fetch(BASE + path, {...options, headers: authHeaders(options.headers)});
  if (!response.ok) throw new ApiError(response.status, await errorMessage(response));
  return response;
}

async function postJson(path, body) {
  return api(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

// ---- login, tabs, pickers -------------------------------------------------------------------

function show(id, visible) { $(id).hidden = !visible; }

function showLogin(message) {
  show("login", true); show("tabs", false); show("logout", false);
  document.querySelectorAll(".tab").forEach((tab) => { tab.hidden = true; });
  $("login-error").textContent = message || "";
  clearInterval(refreshTimer);
}

function openTab(name) {
  document.querySelectorAll(".tab").forEach((tab) => { tab.hidden = tab.id !== `tab-${name}`; });
  document.querySelectorAll("#tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
}

async function loadModels() {
  const response = await fetch(`${BASE}/v1/models`, {headers: authHeaders()});
  if (response.status === 401) {
    showLogin(apiKey() ? "That key was refused." : "");
    return;
  }
  if (!response.ok) {
    showLogin(await errorMessage(response));
    return;
  }
  models = (await response.json()).data;
  show("login", false); show("tabs", true); show("logout", Boolean(apiKey()));
  fillPickers();
  openTab(document.querySelector("#tabs button.active").dataset.tab);
  await refreshStatus();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(refreshStatus, REFRESH_MS);
}

function option(select, value, label) {
  const element = document.createElement("option");
  element.value = value;
  element.textContent = label ?? value;
  select.append(element);
}

function fillPickers() {
  document.querySelectorAll("select[data-capability]").forEach((select) => {
    const wanted = select.dataset.capability.split(" ");
    select.replaceChildren();
    models.filter((m) => !m.parent && m.capabilities.some((c) => wanted.includes(c)))
      .forEach((m) => option(select, m.id));
  });
  fillVariants();
  fillPipelineInputs();
}

function fillVariants() {
  const select = $("chat-variant");
  select.replaceChildren();
  option(select, "", "(base model)");
  models.filter((m) => m.parent === $("chat-model").value).forEach((m) => option(select, m.id, m.id.split(":")[1]));
}

function card(id) { return models.find((m) => m.id === id); }

// ---- the platform ---------------------------------------------------------------------------

async function refreshStatus() {
  let ready;
  try {
    const response = await fetch(`${BASE}/ready`, {headers: authHeaders()});
    if (response.status === 401) return showLogin("The key is no longer accepted.");
    ready = await response.json();  // 503 while a model is not ready: same body
  } catch (error) {
    $("platform-summary").textContent = `cannot reach the platform: ${error.message}`;
    return;
  }
  const states = ready.models || {};
  const pipelines = ready.pipelines || {};
  const rows = models.filter((m) => !m.parent).map((m) => statusRow(m, states[m.id] || pipelines[m.id] || {}));
  $("models-table").tBodies[0].replaceChildren(...rows);
  const nodes = new Set(Object.values(states).map((s) => s.placement?.node_id).filter(Boolean));
  const readyCount = Object.values(states).filter((s) => s.ready).length;
  $("platform-summary").textContent =
    `${readyCount} of ${Object.keys(states).length} models ready on ${nodes.size} node(s); status: ${ready.status}` +
    (ready.config_file ? `; config: ${ready.config_file}` : "");
}

function statusRow(model, state) {
  const placement = state.placement || {};
  const variants = models.filter((m) => m.parent === model.id).map((m) => m.id.split(":")[1]);
  const cells = [
    model.id, model.type, model.capabilities.join(", "),
    state.phase_detail ? `${state.phase || "?"}: ${state.phase_detail}` : (state.phase || "?"),
    state.replicas ? `${state.replicas.running}/${state.replicas.target}` : "",
    placement.node_id ? placement.node_id.slice(0, 12) : "",
    placement.gpu_ids?.length ? `${placement.gpu_ids.join(", ")} (share ${placement.gpu_share})` : "-",
    String(state.unfinished_requests ?? state.requests_in_flight ?? ""),
    requestRate(model.id, state.requests_total),
    variants.join(", "),
    typeof state.prefix_cache_hit_rate === "number" ? `${(state.prefix_cache_hit_rate * 100).toFixed(1)}%` : "",
  ];
  const row = document.createElement("tr");
  row.dataset.model = model.id;
  row.dataset.phase = state.phase || "";
  for (const text of cells) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

function requestRate(modelId, total) {
  if (typeof total !== "number") return "";
  const now = Date.now();
  const last = lastCounts.get(modelId);
  lastCounts.set(modelId, {total, at: now});
  if (!last || total < last.total || now === last.at) return "";  // first look, or another replica answered
  return ((total - last.total) * 60000 / (now - last.at)).toFixed(1);
}

// ---- the equivalent calls -------------------------------------------------------------------

const ORIGIN = () => `${location.origin}${BASE}`;
const AUTH_LINE = () => (apiKey() ? ` \\\n  -H "Authorization: Bearer $API_KEY"` : "");
const shellQuote = (text) => `'${text.replace(/'/g, "'\\''")}'`;

// files: body field -> file name, sent as base64 of the file (read where the command runs)
function curlJson(path, body, files = {}) {
  let data = shellQuote(JSON.stringify({...body, ...files}));
  for (const [field, name] of Object.entries(files)) {
    data = data.replace(`"${field}":${JSON.stringify(name)}`, () => `"${field}":"'"$(base64 -w0 ${shellQuote(name)})"'"`);
  }
  return `curl -s ${ORIGIN()}${path}${AUTH_LINE()} \\\n  -H 'Content-Type: application/json' \\\n  -d ${data}`;
}

function httpxCode(path, body, files = {}) {
  const reads = Object.entries(files).map(([field, name]) =>
    `body["${field}"] = base64.b64encode(open(${JSON.stringify(name)}, "rb").read()).decode()\n`).join("");
  const headers = apiKey() ? `,\n                  headers={"Authorization": "Bearer " + os.environ["API_KEY"]}` : "";
  return `import ${reads ? "base64, " : ""}os, httpx\nbody = ${JSON.stringify(body)}\n${reads}` +
    `print(httpx.post("${ORIGIN()}${path}", json=body, timeout=300${headers}).json())`;
}

function openaiClient() {
  return `import os, openai\nclient = openai.OpenAI(base_url="${ORIGIN()}/v1", api_key=${apiKey() ? 'os.environ["API_KEY"]' : '"unused"'})\n`;
}

function showCode(id, ...parts) { $(id).textContent = parts.join("\n\n# ---- Python ----\n"); }

function b64Bytes(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function tritonCode(model, inputName, fileName, outputs) {
  return `import os, numpy as np, tritonclient.http as triton\n` +
    `client = triton.InferenceServerClient("${location.host}")\n` +
    `data = triton.InferInput("${inputName}", [1], "BYTES")\n` +
    `data.set_data_from_numpy(np.array([open("${fileName}", "rb").read()], dtype=np.object_), binary_data=True)\n` +
    `result = client.infer("${model}", [data]${apiKey() ? ', headers={"Authorization": "Bearer " + os.environ["API_KEY"]}' : ""})\n` +
    outputs.map((name) => `print(result.as_numpy("${name}"))`).join("\n");
}

// ---- playgrounds ----------------------------------------------------------------------------

async function guarded(errorId, work) {
  $(errorId).textContent = "";
  try {
    await work();
  } catch (error) {
    $(errorId).textContent = error.message;
    if (error.status === 401) showLogin("The key is no longer accepted.");
  }
}

let chatHistory = [];

async function sendChat() {
  const variant = $("chat-variant").value;
  const model = variant || $("chat-model").value;
  const system = $("chat-system").value.trim();
  chatHistory.push({role: "user", content: $("chat-input").value});
  const messages = [...(system ? [{role: "system", content: system}] : []), ...chatHistory];
  const body = {model, messages, temperature: Number($("chat-temperature").value),
                max_tokens: Number($("chat-max-tokens").value), stream: true};
  showCode("chat-code", curlJson("/v1/chat/completions", body),
    `${openaiClient()}for chunk in client.chat.completions.create(model="${model}", stream=True, ` +
    `max_tokens=${body.max_tokens}, temperature=${body.temperature},\n        messages=${JSON.stringify(messages)}):\n` +
    `    print(chunk.choices[0].delta.content or "", end="")`);
  transcriptLine("user", chatHistory.at(-1).content);
  const answer = transcriptLine("assistant", "");
  const response = await postJson("/v1/chat/completions", body);
  let text = "";
  for await (const event of serverSentEvents(response)) {
    if (event.error) throw new ApiError(event.error.code || 500, event.error.message);
    text += event.choices?.[0]?.delta?.content ?? "";
    answer.textContent = text;
  }
  answer.classList.add("done");
  chatHistory.push({role: "assistant", content: text});
}

function transcriptLine(role, text) {
  const line = document.createElement("p");
  line.className = `turn ${role}`;
  line.textContent = text;
  $("chat-transcript").append(line);
  return line;
}

async function* serverSentEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function sendCompletion() {
  const body = {model: $("completions-model").value, prompt: $("completions-input").value,
                max_tokens: Number($("completions-max-tokens").value)};
  showCode("completions-code", curlJson("/v1/completions", body),
    `${openaiClient()}print(client.completions.create(model="${body.model}", prompt=${JSON.stringify(body.prompt)}, ` +
    `max_tokens=${body.max_tokens}).choices[0].text)`);
  const answer = await (await postJson("/v1/completions", body)).json();
  $("completions-output").textContent = body.prompt + answer.choices[0].text;
}

const lines = (text) => text.split("\n").map((t) => t.trim()).filter(Boolean);

async function sendEmbeddings() {
  const texts = lines($("embeddings-input").value);
  const body = {model: $("embeddings-model").value, input: texts};
  showCode("embeddings-code", curlJson("/v1/embeddings", body),
    `${openaiClient()}vectors = [d.embedding for d in client.embeddings.create(model="${body.model}", ` +
    `input=${JSON.stringify(texts)}).data]`);
  const vectors = (await (await postJson("/v1/embeddings", body)).json()).data.map((d) => d.embedding);
  const table = $("embeddings-matrix");
  table.replaceChildren(tableRow(["cosine", ...texts.map((_, i) => `#${i + 1}`)], "th"));
  vectors.forEach((a, i) => table.append(tableRow([`#${i + 1} ${texts[i]}`, ...vectors.map((b) => cosine(a, b).toFixed(3))])));
}

async function sendRerank() {
  const documents = lines($("rerank-input").value);
  const topN = Number($("rerank-top-n").value);
  const body = {model: $("rerank-model").value, query: $("rerank-query").value, documents, ...(topN ? {top_n: topN} : {})};
  showCode("rerank-code", curlJson("/v1/rerank", body), httpxCode("/v1/rerank", body));
  const answer = await (await postJson("/v1/rerank", body)).json();
  const ranked = [...answer.results].sort((a, b) => b.relevance_score - a.relevance_score);
  const table = $("rerank-results");
  table.replaceChildren(tableRow(["rank", "score", "document"], "th"));
  ranked.forEach((r, i) => table.append(tableRow([String(i + 1), r.relevance_score.toFixed(4), `#${r.index + 1} ${documents[r.index]}`])));
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

function tableRow(cells, tag = "td") {
  const row = document.createElement("tr");
  for (const text of cells) {
    const cell = document.createElement(tag);
    cell.textContent = text;
    row.append(cell);
  }
  return row;
}

let recorded = null;   // the last microphone recording, a File
let recorder = null;

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({audio: true});
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    recorded = new File(chunks, "recording.webm", {type: recorder.mimeType || "audio/webm"});
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    $("transcribe-record").textContent = "Record";
  };
  recorder.start();
  $("transcribe-record").textContent = "Stop";
}

async function sendTranscription() {
  const file = $("transcribe-file").files[0] || recorded;
  if (!file) throw new Error("choose an audio file or record one");
  const model = $("transcribe-model").value;
  const form = new FormData();
  form.append("model", model);
  form.append("file", file, file.name);
  form.append("response_format", "verbose_json");
  form.append("timestamp_granularities[]", "segment");
  showCode("transcribe-code",
    `curl -s ${ORIGIN()}/v1/audio/transcriptions${AUTH_LINE()} \\\n  -F model=${model} -F file=@${file.name} ` +
    `-F response_format=verbose_json -F 'timestamp_granularities[]=segment'`,
    `${openaiClient()}with open("${file.name}", "rb") as audio:\n` +
    `    print(client.audio.transcriptions.create(model="${model}", file=audio, response_format="verbose_json"))`);
  const answer = await (await api("/v1/audio/transcriptions", {method: "POST", body: form})).json();
  $("transcribe-text").textContent = answer.text;
  const table = $("transcribe-segments");
  table.replaceChildren(tableRow(["start (s)", "end (s)", "text"], "th"));
  (answer.segments || []).forEach((s) => table.append(tableRow([s.start.toFixed(2), s.end.toFixed(2), s.text])));
}

async function sendSpeech() {
  const body = {model: $("speech-model").value, input: $("speech-input").value,
                voice: $("speech-voice").value, response_format: $("speech-format").value};
  showCode("speech-code", curlJson("/v1/audio/speech", body) + ` -o speech.${body.response_format}`,
    `${openaiClient()}client.audio.speech.create(model="${body.model}", input=${JSON.stringify(body.input)}, ` +
    `voice="${body.voice}", response_format="${body.response_format}").write_to_file("speech.${body.response_format}")`);
  const audio = await (await postJson("/v1/audio/speech", body)).blob();
  const player = $("speech-audio");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(audio);
}

let droppedImage = null;

async function sendImage() {
  const file = $("image-file").files[0] || droppedImage;
  if (!file) throw new Error("choose or drop an image");
  const model = $("image-model").value;
  const capabilities = card(model).capabilities;
  const parameters = capabilities.includes("zero-shot-image-classification")
    ? {candidate_labels: $("image-labels").value.split(",").map((l) => l.trim()).filter(Boolean)}
    : capabilities.includes("image-classification") ? {top_k: 5} : {};
  const names = {"object-detection": ["detections"], "image-to-text": ["captions"],
                 "image-feature-extraction": ["embeddings"]}[capabilities[0]] || ["labels", "scores"];
  const outputs = await infer(model, "image", file, parameters, "image-code", names);
  const bitmap = await createImageBitmap(file);
  const canvas = $("image-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0);
  const table = $("image-results");
  table.replaceChildren();
  if (outputs.labels) {
    table.append(tableRow(["label", "score"], "th"));
    outputs.labels.data.forEach((label, i) => table.append(tableRow([label, outputs.scores.data[i].toFixed(4)])));
  }
  if (outputs.detections) {
    const detections = JSON.parse(outputs.detections.data[0]);
    table.append(tableRow(["label", "score", "box"], "th"));
    context.lineWidth = 2 * Math.max(1, Math.round(canvas.width / 400));  // even, on whole pixels: crisp
    context.strokeStyle = "#e4572e";
    canvas.dataset.boxes = String(detections.length);
    for (const d of detections) {
      const [x0, y0, x1, y1] = [d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax].map(Math.round);
      context.strokeRect(x0, y0, x1 - x0, y1 - y0);
      table.append(tableRow([d.label, d.score.toFixed(4), `${d.box.xmin},${d.box.ymin} - ${d.box.xmax},${d.box.ymax}`]));
    }
  }
  if (outputs.captions) {
    table.append(tableRow(["caption"], "th"));
    outputs.captions.data.forEach((caption) => table.append(tableRow([caption])));
  }
  if (outputs.embeddings) table.append(tableRow([`an embedding of ${outputs.embeddings.shape.at(-1)} dimensions`]));
}

async function sendVideo() {
  const file = $("video-file").files[0];
  if (!file) throw new Error("choose a video clip");
  const outputs = await infer($("video-model").value, "video", file, {top_k: 5}, "video-code", ["labels", "scores"]);
  const table = $("video-results");
  table.replaceChildren(tableRow(["label", "score"], "th"));
  outputs.labels.data.forEach((label, i) => table.append(tableRow([label, outputs.scores.data[i].toFixed(4)])));
}

const MEDIA_INPUTS = ["audio", "image"];  // a pipeline's inputs sent as base64 of a file

function fillPipelineInputs() {
  const pipeline = card($("pipelines-model").value);
  const inputs = pipeline?.inputs || [];
  document.querySelectorAll("#tab-pipelines [data-input]").forEach((label) => { label.hidden = !inputs.includes(label.dataset.input); });
  $("pipelines-flow").textContent = pipeline
    ? `${pipeline.steps.map((s) => `${s.task} (${s.model})`).join(" → ")}; takes ${inputs.join(", ")}`
    : "no pipeline is configured";
}

async function sendPipeline() {
  const pipeline = card($("pipelines-model").value);
  if (!pipeline) throw new Error("no pipeline to run");
  const body = {model: pipeline.id};
  const files = {};
  for (const input of pipeline.inputs) {
    if (MEDIA_INPUTS.includes(input)) {
      files[input] = $(`pipelines-${input}`).files[0];
      if (!files[input]) throw new Error(`${pipeline.id} takes ${input}: choose a file`);
    } else {
      body[input] = input === "documents" ? lines($("pipelines-documents").value) : $("pipelines-text").value;
    }
  }
  const names = Object.fromEntries(Object.entries(files).map(([input, file]) => [input, file.name]));
  showCode("pipelines-code", curlJson("/v1/pipelines", body, names), httpxCode("/v1/pipelines", body, names));
  for (const [input, file] of Object.entries(files)) body[input] = b64Bytes(await file.arrayBuffer());
  showPipelineResult(await (await postJson("/v1/pipelines", body)).json());
}

function showPipelineResult(result) {
  const output = result.output;
  $("pipelines-output").textContent = output.text ?? "";
  const player = $("pipelines-player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.hidden = !output.audio;
  if (output.audio) {
    const bytes = Uint8Array.from(atob(output.audio), (c) => c.charCodeAt(0));
    player.src = URL.createObjectURL(new Blob([bytes], {type: `audio/${output.audio_format}`}));
  } else {
    player.removeAttribute("src");
  }
  const table = $("pipelines-steps");
  table.replaceChildren(tableRow(["step", "task", "model", "ms", "output"], "th"));
  result.steps.forEach((s, i) => table.append(tableRow([String(i + 1), s.task, s.model, s.latency_ms.toFixed(1), stepOutput(s.output)])));
}

function stepOutput(output) {
  return Object.entries(output).filter(([name]) => name !== "audio_format").map(([name, value]) => (name === "audio"
    ? `audio: ${(value.length * 3 / 4 / 1024).toFixed(1)} KiB of ${output.audio_format}`
    : `${name}: ${value}`)).join("\n");
}

async function infer(model, inputName, file, parameters, codeId, outputNames) {
  const body = {inputs: [{name: inputName, shape: [1], datatype: "BYTES", data: [b64Bytes(await file.arrayBuffer())]}],
                parameters};
  const shown = {...body, inputs: [{...body.inputs[0], data: [`<base64 of ${file.name}>`]}]};
  showCode(codeId, curlJson(`/v2/models/${model}/infer`, shown), tritonCode(model, inputName, file.name, outputNames));
  const answer = await (await postJson(`/v2/models/${encodeURIComponent(model)}/infer`, body)).json();
  return Object.fromEntries(answer.outputs.map((output) => [output.name, output]));
}

// ---- wiring ---------------------------------------------------------------------------------

function onClick(id, errorId, work) {
  $(id).addEventListener("click", (event) => {
    event.preventDefault();
    $(id).disabled = true;
    guarded(errorId, work).finally(() => { $(id).disabled = false; });
  });
}

function addErrorAndCallPanes() {
  // every playground ends with its error line and "the call" (its equivalent curl and Python)
  document.querySelectorAll(".playground").forEach((section) => {
    const name = section.id.replace("tab-", "");
    const error = document.createElement("p");
    error.id = `${name}-error`;
    error.className = "error";
    const details = document.createElement("details");
    details.open = true;
    const summary = document.createElement("summary");
    summary.textContent = "the call";
    const code = document.createElement("pre");
    code.id = `${name}-code`;
    code.className = "code";
    details.append(summary, code);
    section.append(error, details);
  });
}

function start() {
  addErrorAndCallPanes();
  document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => openTab(b.dataset.tab)));
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value);
    $("api-key").value = "";
    loadModels();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); location.reload(); });
  $("chat-model").addEventListener("change", () => { fillVariants(); chatHistory = []; $("chat-transcript").replaceChildren(); });
  onClick("chat-send", "chat-error", sendChat);
  onClick("completions-send", "completions-error", sendCompletion);
  onClick("embeddings-send", "embeddings-error", sendEmbeddings);
  onClick("rerank-send", "rerank-error", sendRerank);
  onClick("transcribe-record", "transcribe-error", toggleRecording);
  onClick("transcribe-send", "transcribe-error", sendTranscription);
  onClick("speech-send", "speech-error", sendSpeech);
  onClick("image-send", "image-error", sendImage);
  onClick("video-send", "video-error", sendVideo);
  onClick("pipelines-send", "pipelines-error", sendPipeline);
  $("pipelines-model").addEventListener("change", fillPipelineInputs);
  const drop = $("image-drop");
  drop.addEventListener("dragover", (event) => event.preventDefault());
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    droppedImage = event.dataTransfer.files[0] || null;
    drop.textContent = droppedImage ? droppedImage.name : "drop an image here";
  });
  loadModels().catch((error) => showLogin(`cannot reach the platform: ${error.message}`));
}

start();
