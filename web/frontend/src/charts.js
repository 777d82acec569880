// ECharts, tree-shaken to what the dashboard draws; loaded only by the chart pages.
import * as echarts from "echarts/core";
import { BarChart, CustomChart, GaugeChart, GraphChart, LineChart } from "echarts/charts";
import {
  DataZoomComponent, GridComponent, LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent,
} from "echarts/components";
import { CanvasRenderer, SVGRenderer } from "echarts/renderers";

echarts.use([BarChart, CustomChart, GaugeChart, GraphChart, LineChart, DataZoomComponent, GridComponent,
  LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent, CanvasRenderer, SVGRenderer]);

export { echarts };

export { STATUS_COLORS } from "./colors.js";

/** A chart on ``el``; ``renderer: "svg"`` where the page (and its tests) must measure the text
 * the chart draws (the SLA gauge's tick labels). */
export function chartOn(el, { renderer = "canvas" } = {}) {
  const chart = echarts.getInstanceByDom(el) || echarts.init(el, null, { renderer });
  const resize = () => chart.resize();
  window.addEventListener("resize", resize);
  chart.__cfResize = resize;
  return chart;
}

export function dispose(chart) {
  if (!chart) return;
  window.removeEventListener("resize", chart.__cfResize);
  chart.dispose();
}
