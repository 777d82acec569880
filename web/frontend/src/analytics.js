// Analytics: SLA compliance gauge, failure rate and durations by workflow, runs per hour,
// slowest steps and the steps that retry most.
import { api } from "./api.js";
import { chartOn, echarts } from "./charts.js";
import { $, $$, boot, duration, esc, toast } from "./util.js";

let period = boot.period || "24h";
const charts = {};

function chart(id, opts) {
  return (charts[id] ||= chartOn(document.getElementById(id), opts));
}

function render(a) {
  const pct = (v) => (v == null ? "–" : `${v}%`);
  $("#kpis").innerHTML = [
    ["Runs", a.runs], ["Ended", a.ended], ["Failure rate", pct(a.failure_rate)],
    ["SLA compliance", pct(a.sla_compliance.percent)], ["Retry rate", pct(a.retry_rate.overall)],
  ].map(([k, v]) => `<div class="card kpi"><span>${esc(k)}</span><b data-kpi="${esc(k)}">${esc(v)}</b></div>`).join("");
  // SVG, so the page's text can be measured; the caption is HTML under the gauge (drawn inside it,
  // it overlapped the tick labels).
  chart("chart-sla", { renderer: "svg" }).setOption({
    series: [{ type: "gauge", min: 0, max: 100, radius: "88%", center: ["50%", "55%"], progress: { show: true, width: 14 },
      axisLine: { lineStyle: { width: 14 } }, axisLabel: { distance: 20, fontSize: 11 }, title: { show: false },
      detail: { formatter: a.sla_compliance.percent == null ? "n/a" : "{value}%", fontSize: 22, offsetCenter: [0, "45%"] },
      data: [{ value: a.sla_compliance.percent ?? 0 }] }],
  }, true);
  $("#sla-caption").textContent = `${a.sla_compliance.met} met · ${a.sla_compliance.breached} breached`;
  const wfs = a.by_workflow.map((w) => w.workflow);
  chart("chart-failures").setOption({
    tooltip: {}, grid: { left: 120, right: 20, top: 10, bottom: 30 },
    xAxis: { type: "value", max: 100, axisLabel: { formatter: "{value}%" } },
    yAxis: { type: "category", data: wfs },
    series: [{ type: "bar", data: a.by_workflow.map((w) => w.failure_rate ?? 0), itemStyle: { color: "#d64545" } }],
  }, true);
  chart("chart-durations").setOption({
    tooltip: { valueFormatter: (v) => duration(v) }, legend: { top: 0 }, grid: { left: 120, right: 20, top: 30, bottom: 30 },
    xAxis: { type: "value", axisLabel: { formatter: (v) => duration(v) } }, yAxis: { type: "category", data: wfs },
    series: [
      { name: "average", type: "bar", data: a.by_workflow.map((w) => w.avg_duration ?? 0) },
      { name: "p95", type: "bar", data: a.by_workflow.map((w) => w.p95_duration ?? 0) },
    ],
  }, true);
  const hourLabel = (ts) => new Date(ts * 1000).toLocaleString([], { month: "numeric", day: "numeric", hour: "2-digit" });
  chart("chart-hourly").setOption({
    tooltip: { trigger: "axis" }, grid: { left: 40, right: 20, top: 10, bottom: 30 },
    xAxis: { type: "category", data: a.runs_per_hour.map((h) => hourLabel(h.hour)) }, yAxis: { type: "value", minInterval: 1 },
    series: [{ type: "bar", barMaxWidth: 40, data: a.runs_per_hour.map((h) => h.runs) }],
  }, true);
  $("#slowest").innerHTML = `<tr><th>#</th><th>Step</th><th>Workflow</th><th>Avg</th><th>Runs</th></tr>` +
    (a.slowest_steps.map((s, i) => `<tr><td>${i + 1}</td><td>${esc(s.step)}</td><td>${esc(s.workflow)}</td><td>${duration(s.avg_duration)}</td><td>${s.occurrences}</td></tr>`).join("") ||
      `<tr><td colspan="5" class="muted">no completed steps in this period</td></tr>`);
  $("#retries").innerHTML = `<tr><th>Step</th><th>Workflow</th><th>Retry rate</th><th>Runs</th></tr>` +
    (a.retry_rate.top_steps.map((s) => `<tr><td>${esc(s.step)}</td><td>${esc(s.workflow)}</td><td>${pct(s.retry_rate)}</td><td>${s.occurrences}</td></tr>`).join("") ||
      `<tr><td colspan="4" class="muted">no retries in this period</td></tr>`);
  document.body.dataset.loaded = String(Date.now());
}

async function load() {
  for (const b of $$("#periods button")) b.classList.toggle("on", b.dataset.period === period);
  try { render(await api("/analytics", { query: { period } })); } catch (err) { toast(err.message, "error"); }
}

export async function init() {
  void echarts;
  for (const b of $$("#periods button")) {
    b.addEventListener("click", () => { period = b.dataset.period; history.replaceState(null, "", `/analytics?period=${period}`); load(); });
  }
  await load();
  setInterval(load, 30000);
}
