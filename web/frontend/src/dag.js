// The DAG of the run's definition, laid out in layers (longest path from a root), with each
// step's live status as its colour. Click a step to open it in the timeline.
import { api } from "./api.js";
import { chartOn, dispose, STATUS_COLORS } from "./charts.js";
import { esc } from "./util.js";

export function dagOption(g) {
  const perLayer = new Map();
  const nodes = g.nodes.map((n, i) => {
    const k = perLayer.get(n.layer) || 0;
    perLayer.set(n.layer, k + 1);
    return {
      id: n.id, name: n.id, x: n.layer * 200, y: k * 70, number: i + 1, node: n,
      symbol: "roundRect", symbolSize: [150, 36],
      itemStyle: { color: STATUS_COLORS[n.status] || "#b8bec8", borderColor: n.compensate ? "#d9b310" : "#555",
        borderWidth: n.compensate ? 3 : 1, borderType: n.critical ? "solid" : "dashed" },
      label: { show: true, color: "#fff", fontSize: 11, width: 140, overflow: "truncate" },
    };
  });
  return {
    animation: false,
    tooltip: { formatter: (p) => (p.dataType === "node"
      ? `<b>${esc(p.data.node.name)}</b><br>${esc(p.data.node.plugin)}.${esc(p.data.node.method)}<br>${esc(p.data.node.status)}` +
        `${p.data.node.when ? `<br>when ${esc(p.data.node.when)}` : ""}${p.data.node.join === "any" ? "<br>join: any" : ""}`
      : `${esc(p.data.source)} → ${esc(p.data.target)}`) },
    series: [{
      type: "graph", layout: "none", roam: true, data: nodes,
      links: g.edges.map((e) => ({ source: e.source, target: e.target, lineStyle: { type: e.kind === "order" ? "dashed" : "solid" } })),
      edgeSymbol: ["none", "arrow"], edgeSymbolSize: 8, lineStyle: { color: "#888", width: 1.5, curveness: 0.1 },
    }],
  };
}

export async function mount(el, runId, openStep) {
  const chart = chartOn(el);
  async function refresh() {
    const g = await api(`/runs/${runId}/graph`);
    const layers = Math.max(1, ...g.nodes.map((n) => n.layer + 1));
    const widest = Math.max(1, ...Object.values(g.nodes.reduce((m, n) => ({ ...m, [n.layer]: (m[n.layer] || 0) + 1 }), {})));
    el.style.height = `${Math.min(2400, 120 + widest * 70)}px`;
    void layers;
    chart.resize();
    chart.setOption(dagOption(g), true);
    el.dataset.rendered = String(g.nodes.length);
  }
  chart.on("click", (p) => { if (p.dataType === "node") openStep(p.data.id, p.data.number); });
  await refresh();
  return { refresh, dispose: () => dispose(chart) };
}
