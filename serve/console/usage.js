// The console's usage tab (admin keys only): /admin/usage as charts of tokens per key and per
// model over time (Chart.js, vendored: console/chart.umd.min.js), a table of totals, and a CSV.
"use strict";

const USAGE_RANGES = {day: {hours: 24, period: "hour"}, month: {hours: 24 * 30, period: "day"}};
const usageCharts = {};

function usageQuery(groupBy, extra = {}) {
  const range = USAGE_RANGES[$("usage-range").value];
  const from = new Date(Date.now() - range.hours * 3600 * 1000).toISOString();
  return new URLSearchParams({from, group_by: groupBy, ...extra}).toString();
}

async function usageRows(groupBy) {
  return (await (await api(`/admin/usage?${usageQuery(groupBy)}`)).json()).data;
}

function drawUsage(canvasId, rows, series, period) {
  // one line per key (or model): its total tokens in each period
  const periods = [...new Set(rows.map((r) => r[period]))].sort();
  const names = [...new Set(rows.map((r) => r[series]))].sort();
  const datasets = names.map((name) => ({
    label: name || "(no key)",
    data: periods.map((p) => rows.filter((r) => r[series] === name && r[period] === p)
      .reduce((sum, r) => sum + r.total_tokens, 0)),
  }));
  if (usageCharts[canvasId]) usageCharts[canvasId].destroy();
  usageCharts[canvasId] = new Chart($(canvasId), {
    type: "line",
    data: {labels: periods.map((p) => p.replace("T", " ").replace(":00:00Z", "h").replace(" 00h", "")), datasets},
    options: {animation: false, scales: {y: {beginAtZero: true, title: {display: true, text: "tokens"}}}},
  });
}

async function loadUsage() {
  const period = USAGE_RANGES[$("usage-range").value].period;
  const [byKey, byModel, totals] = await Promise.all([
    usageRows(`key,${period}`), usageRows(`model,${period}`), usageRows("key,model"),
  ]);
  drawUsage("usage-by-key", byKey, "key", period);
  drawUsage("usage-by-model", byModel, "model", period);
  const table = $("usage-totals");
  table.replaceChildren(tableRow(["key", "model", "requests", "errors", "prompt tokens", "completion tokens"], "th"));
  totals.forEach((r) => table.append(tableRow([r.key || "(no key)", r.model || "-", r.requests, r.errors, r.prompt_tokens, r.completion_tokens])));
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
