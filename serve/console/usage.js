// The console's usage tab (admin keys only): /admin/usage as charts of tokens (or requests, or
// media) per key and per model over time (Chart.js, vendored: console/chart.umd.min.js), a table
// of totals, and a CSV.
"use strict";

const USAGE_RANGES = {day: {hours: 24, period: "hour"}, month: {hours: 24 * 30, period: "day"}};
// what the charts may draw: the ledger's columns, as /admin/usage names them
const USAGE_MEASURES = {
  total_tokens: "tokens", requests: "requests", audio_in_s: "audio seconds in",
  audio_out_s: "audio seconds out", images: "images", video_s: "video seconds",
};
const usageCharts = {};

function usageQuery(groupBy, extra = {}) {
  const range = USAGE_RANGES[$("usage-range").value];
  const from = new Date(Date.now() - range.hours * 3600 * 1000).toISOString();
  return new URLSearchParams({from, group_by: groupBy, ...extra}).toString();
}

async function usageRows(groupBy) {
  return (await (await api(`/admin/usage?${usageQuery(groupBy)}`)).json()).data;
}

function drawUsage(canvasId, rows, series, period, measure) {
  // one line per key (or model): its measure (tokens, by default) in each period
  const periods = [...new Set(rows.map((r) => r[period]))].sort();
  const names = [...new Set(rows.map((r) => r[series]))].sort();
  const datasets = names.map((name) => ({
    label: name || "(no key)",
    data: periods.map((p) => rows.filter((r) => r[series] === name && r[period] === p)
      .reduce((sum, r) => sum + r[measure], 0)),
  }));
  if (usageCharts[canvasId]) usageCharts[canvasId].destroy();
  usageCharts[canvasId] = new Chart($(canvasId), {
    type: "line",
    data: {labels: periods.map((p) => p.replace("T", " ").replace(":00:00Z", "h").replace(" 00h", "")), datasets},
    options: {animation: false, scales: {y: {beginAtZero: true, title: {display: true, text: USAGE_MEASURES[measure]}}}},
  });
}

async function loadUsage() {
  const period = USAGE_RANGES[$("usage-range").value].period;
  const [byKey, byModel, totals] = await Promise.all([
    usageRows(`key,${period}`), usageRows(`model,${period}`), usageRows("key,model"),
  ]);
  const measure = $("usage-measure").value;
  drawUsage("usage-by-key", byKey, "key", period, measure);
  drawUsage("usage-by-model", byModel, "model", period, measure);
  document.querySelectorAll(".usage-measure-name").forEach((e) => { e.textContent = USAGE_MEASURES[measure]; });
  const table = $("usage-totals");
  table.replaceChildren(tableRow(["key", "model", "requests", "errors", "prompt tokens", "completion tokens",
    "audio s in", "audio s out", "images", "video s"], "th"));
  totals.forEach((r) => table.append(tableRow([r.key || "(no key)", r.model || "-", r.requests, r.errors,
    r.prompt_tokens, r.completion_tokens, r.audio_in_s, r.audio_out_s, r.images, r.video_s])));
  $("usage-code").textContent = `curl ${ORIGIN()}/admin/usage?${usageQuery("key,model", {format: "csv"})}${AUTH_LINE()}`;
}

async function downloadUsageCsv() {
  const response = await api(`/admin/usage?${usageQuery("key,model,endpoint", {format: "csv"})}`);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await response.blob());
  link.download = "usage.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

onClick("usage-load", "usage-error", loadUsage);
onClick("usage-csv", "usage-error", downloadUsageCsv);
