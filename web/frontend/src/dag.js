// The DAG of a definition as plain SVG: steps laid out in layers (longest path from a root),
// each step's live status as its colour, an arrowhead on every edge, and a legend. Click a step
// to open it in the timeline. (ECharts' graph drew arrowheads under the node boxes for some
// edges and had no legend; an SVG the page owns can be checked by tests.)
import { api } from "./api.js";
import { STATUS_COLORS } from "./colors.js";
import { esc } from "./util.js";

const W = 172; // node box
const H = 44;
const GAP_X = 64;
const GAP_Y = 22;
const PAD = 12;
const FONT = 13; // px: node text stays readable at 100 % zoom
const MAX_CHARS = 21;
const LIGHT = new Set(["PENDING", "SKIPPED", "COMPENSATING", "COMPENSATED"]); // dark text on these

const short = (s) => (s.length > MAX_CHARS ? `${s.slice(0, MAX_CHARS - 1)}…` : s);

/** Node positions: x by layer, y by order within the layer. */
export function layout(g) {
  const perLayer = new Map();
  const pos = new Map();
  g.nodes.forEach((n, i) => {
    const k = perLayer.get(n.layer) || 0;
    perLayer.set(n.layer, k + 1);
    pos.set(n.id, { x: PAD + n.layer * (W + GAP_X), y: PAD + k * (H + GAP_Y), number: i + 1, node: n });
  });
  const layers = Math.max(1, ...[...perLayer.keys()].map((l) => l + 1));
  const widest = Math.max(1, ...perLayer.values());
  return { pos, width: 2 * PAD + layers * W + (layers - 1) * GAP_X, height: 2 * PAD + widest * H + (widest - 1) * GAP_Y };
}

function edgePath(a, b) {
  // From the source's right edge to the target's left edge (the arrowhead's tip on its border).
  const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2;
  const mid = (x1 + x2) / 2;
  return `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
}

function tip(n) {
  return [`${n.name}`, `${n.plugin}.${n.method}`, n.status, n.when ? `when ${n.when}` : "", n.join === "any" ? "join: any" : "",
    n.compensate ? "has a compensation" : "", n.critical ? "" : "non-critical",
    n.map ? `mapped: ${Object.entries(n.map.counts || {}).map(([k, v]) => `${v} ${k}`).join(", ") || "not expanded"} of ${n.map.total}` : ""].filter(Boolean).join("\n");
}

export function dagSvg(g) {
  const { pos, width, height } = layout(g);
  const edges = g.edges.filter((e) => pos.has(e.source) && pos.has(e.target)).map((e) => {
    const a = pos.get(e.source), b = pos.get(e.target);
    return `<path class="dag-edge kind-${esc(e.kind)}" data-source="${esc(e.source)}" data-target="${esc(e.target)}" d="${edgePath(a, b)}"
      fill="none" stroke="#7d8590" stroke-width="1.6" ${e.kind === "order" ? `stroke-dasharray="5 4"` : ""} marker-end="url(#dag-arrow)"><title>${esc(e.source)} → ${esc(e.target)}${e.kind === "order" ? " (order only)" : ""}</title></path>`;
  }).join("");
  const nodes = [...pos.values()].map(({ x, y, number, node: n }) => {
    const fill = STATUS_COLORS[n.status] || STATUS_COLORS.PENDING;
    const ink = LIGHT.has(n.status) ? "#1d2330" : "#fff";
    return `<g class="dag-node${n.map ? " mapped" : ""}" data-step="${esc(n.id)}" data-items="${n.map ? n.map.total : ""}" data-number="${number}" data-status="${esc(n.status)}" tabindex="0" role="button">
      <title>${esc(tip(n))}</title>
      <rect x="${x}" y="${y}" width="${W}" height="${H}" rx="7" fill="${fill}" stroke="${n.compensate ? "#a88a00" : "#4b5563"}"
        stroke-width="${n.compensate ? 3 : 1.2}" ${n.critical ? "" : `stroke-dasharray="5 3"`}/>
      <text x="${x + W / 2}" y="${y + 18}" text-anchor="middle" font-size="${FONT}" font-weight="600" fill="${ink}">${esc(short(n.name))}</text>
      <text x="${x + W / 2}" y="${y + 34}" text-anchor="middle" font-size="${FONT - 1}" fill="${ink}">${esc(n.status.toLowerCase())}${n.join === "any" ? " · any" : ""}${n.map ? ` · ${(n.map.counts?.COMPLETED || 0).toLocaleString()}/${n.map.total.toLocaleString()}` : ""}</text>
    </g>`;
  }).join("");
  return `<svg class="dag-svg" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
    <defs><marker id="dag-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse">
      <path d="M0,0 L10,5 L0,10 z" fill="#5b636e"/></marker></defs>
    <g class="dag-edges">${edges}</g><g class="dag-nodes">${nodes}</g></svg>`;
}

export function dagLegend(g) {
  const seen = [...new Set(g.nodes.map((n) => n.status))];
  const statuses = seen.map((s) => `<span class="key"><i class="swatch" style="background:${STATUS_COLORS[s] || STATUS_COLORS.PENDING}"></i>${esc(s)}</span>`).join("");
  const edgeKey = (dash, label) => `<span class="key"><svg width="34" height="10" aria-hidden="true"><line x1="1" y1="5" x2="25" y2="5" stroke="#7d8590" stroke-width="1.6" ${dash ? `stroke-dasharray="5 4"` : ""}/><path d="M24,1 L32,5 L24,9 z" fill="#5b636e"/></svg>${label}</span>`;
  return `<div class="dag-legend" role="note">${statuses}
    ${edgeKey(false, "depends on")}${g.edges.some((e) => e.kind === "order") ? edgeKey(true, "runs after (sequential order)") : ""}
    <span class="key"><i class="swatch comp"></i>thick gold border: has a compensation</span>
    <span class="key"><i class="swatch noncrit"></i>dashed border: non-critical</span></div>`;
}

/** Draw ``g`` into ``el`` (legend and SVG); ``onStep(id, number)`` on a click or Enter. */
export function drawDag(el, g, onStep) {
  el.classList.add("dag");
  el.innerHTML = `${dagLegend(g)}<div class="dag-scroll">${dagSvg(g)}</div>`;
  if (onStep && !el.dataset.bound) {
    el.dataset.bound = "1";
    const open = (ev) => {
      const n = ev.target.closest(".dag-node");
      if (n && el.__cfOnStep) el.__cfOnStep(n.dataset.step, Number(n.dataset.number));
    };
    el.addEventListener("click", open);
    el.addEventListener("keydown", (ev) => { if (ev.key === "Enter") open(ev); });
  }
  el.__cfOnStep = onStep;
  el.dataset.rendered = String(g.nodes.length);
}

export async function mount(el, runId, openStep) {
  async function refresh() {
    drawDag(el, await api(`/runs/${runId}/graph`), openStep);
  }
  await refresh();
  return { refresh, dispose: () => { el.innerHTML = ""; delete el.dataset.rendered; } };
}
