// The Gantt chart: one bar per step attempt (and per compensation) on a time axis from the run's
// start, coloured by status; parallel steps overlap; the SLA target is a dashed line.
import { api } from "./api.js";
import { chartOn, dispose, STATUS_COLORS } from "./charts.js";
import { duration, esc } from "./util.js";

/** The rows: one per step; a mapped step's items (bars with `item_of`) under it when expanded. */
function rowsOf(t) {
  const items = new Map(); // mapped step -> its item ids in index order
  for (const b of t.bars) if (b.item_of) (items.get(b.item_of) || items.set(b.item_of, new Set()).get(b.item_of)).add(b.step);
  const rows = [];
  for (const s of t.steps) {
    const open = items.get(s.id);
    const label = s.map ? `${s.number}. ${s.id} ${open ? "▾" : "▸"} ${s.map.total} items` : `${s.number}. ${s.id}`;
    rows.push({ id: s.id, label });
    const idx = (id) => Number(id.slice(id.lastIndexOf("[") + 1, -1));
    for (const id of [...(open || [])].sort((a, b) => idx(a) - idx(b))) rows.push({ id, label: `   ${id.slice(id.lastIndexOf("["))}` });
  }
  return rows;
}

function option(t) {
  const origin = t.run.created_at;
  const steps = rowsOf(t);
  const rowOf = new Map(steps.map((s, i) => [s.id, i]));
  const end = (b) => (b.end ?? t.now) - origin;
  const data = t.bars.map((b) => ({
    value: [rowOf.get(b.step) ?? 0, b.start - origin, end(b), b.kind === "compensation" ? 1 : 0],
    bar: b,
    itemStyle: { color: b.kind === "compensation" ? STATUS_COLORS.COMPENSATING : (STATUS_COLORS[b.status] || "#888"),
      opacity: b.kind === "items" ? 0.75 : 1 },
  }));
  const target = t.run.sla.target || 0;
  const dataEnd = Math.max(1, ...data.map((d) => d.value[2]));
  const axisMax = Math.max(dataEnd, target) * 1.05;
  // An SLA far past the bars (a 2-minute target, a run 3 s in) would shrink every bar to a sliver:
  // open on the bars and leave the SLA line one drag of the slider away, saying so.
  const view = target > dataEnd * 2 ? Math.min(axisMax, dataEnd * 1.15) : axisMax;
  const sla = target ? [{ xAxis: target, name: "SLA" }] : [];
  const zoom = { xAxisIndex: 0, filterMode: "none", startValue: 0, endValue: view };
  const labels = steps.map((s) => s.label);
  const opt = {
    animation: false,
    grid: { left: 190, right: 40, top: 30, bottom: 50 },
    tooltip: {
      formatter: (p) => {
        const b = p.data.bar;
        if (b.kind === "items") {
          return `<b>${esc(b.step)}</b>: ${b.item_count} item attempts, ${esc(b.status)}<br>${duration(b.duration ?? (t.now - b.start))}` +
            `${b.end == null ? " (items still running)" : ""}<br><small>click: show or hide its items</small>`;
        }
        return `<b>${esc(b.step)}</b> ${b.kind === "compensation" ? "(compensation)" : `attempt ${b.attempt ?? "?"}`}<br>` +
          `${esc(b.status)} · ${duration(b.duration ?? (t.now - b.start))}${b.end == null ? " (still running)" : ""}<br>` +
          `${b.worker ? `worker ${esc(b.worker)}<br>` : ""}${b.error ? `<span style="color:#d64545">${esc(b.error)}</span>` : ""}`;
      },
    },
    dataZoom: [{ type: "inside", ...zoom }, { type: "slider", ...zoom, height: 18, bottom: 8 }],
    title: view < target ? {
      text: `SLA ${duration(target)} is past the right edge: drag the slider's right handle to see it`,
      right: 40, top: 4, textStyle: { color: "#d64545", fontSize: 11, fontWeight: "normal" },
    } : undefined,
    xAxis: { type: "value", min: 0, max: axisMax, axisLabel: { formatter: (v) => duration(v) }, splitLine: { show: true } },
    yAxis: { type: "category", data: labels, inverse: true, axisLabel: { width: 170, overflow: "truncate" } },
    series: [{
      type: "custom",
      encode: { x: [1, 2], y: 0 },
      data,
      renderItem: (params, api_) => {
        const row = api_.value(0);
        const a = api_.coord([api_.value(1), row]);
        const b = api_.coord([api_.value(2), row]);
        const comp = api_.value(3) === 1;
        const h = api_.size([0, 1])[1] * (comp ? 0.35 : 0.6);
        const y = a[1] - h / 2 + (comp ? h * 0.9 : 0);
        const rect = { x: a[0], y, width: Math.max(2, b[0] - a[0]), height: h };
        return { type: "rect", shape: rect, style: api_.style() };
      },
      label: {
        show: true, position: "right", fontSize: 10,
        formatter: (p) => {
          const bar = p.data.bar;
          if (bar.kind === "compensation") return "rollback";
          if (bar.kind === "items") return `${bar.item_count} items`;
          if (bar.status === "RETRYING") return `retry ${bar.attempt}`;
          if (bar.end == null) return "running";
          return "";
        },
      },
      markLine: sla.length ? { symbol: "none", lineStyle: { type: "dashed", color: "#d64545" },
        label: { formatter: `SLA ${duration(t.run.sla.target)}`, position: "insideEndTop" }, data: sla } : undefined,
    }],
  };
  return { opt, view: { end: view, axisMax, sla: target, slaInView: Boolean(target) && target <= view } };
}

export async function mount(el, runId, openStep) {
  const chart = chartOn(el);
  let timeline = null;
  let zoomed = null; // the window the user chose: kept across refreshes
  chart.on("datazoom", () => {
    const z = chart.getOption().dataZoom?.[0];
    if (z && z.startValue != null && z.endValue != null) zoomed = { startValue: z.startValue, endValue: z.endValue };
  });
  let expand = null; // the mapped step whose items have their own rows (one at a time)
  async function refresh() {
    const started = performance.now();
    timeline = await api(`/runs/${runId}/timeline`, { query: { expand } });
    const rows = Math.max(8, rowsOf(timeline).length);
    el.style.height = `${Math.min(20000, 80 + rows * 26)}px`;
    chart.resize();
    const fetched = performance.now();
    const { opt, view } = option(timeline);
    if (zoomed) opt.dataZoom = opt.dataZoom.map((z) => ({ ...z, ...zoomed }));
    chart.setOption(opt, true);
    // Painted: two animation frames after the synchronous update.
    await new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
    window.__cfGantt = { fetchMs: fetched - started, renderMs: performance.now() - fetched, bars: timeline.bars.length,
      ...view, zoomed: Boolean(zoomed), expand };
    el.dataset.rendered = String(timeline.bars.length);
  }
  chart.on("click", (p) => {
    const bar = p.data?.bar;
    if (bar?.kind === "items") { expand = expand === bar.step ? null : bar.step; refresh(); return; }
    if (bar?.item_of) { openStep(bar.item_of, bar.number); return; }
    if (bar) openStep(bar.step, bar.number);
  });
  await refresh();
  return { refresh, dispose: () => dispose(chart) };
}
